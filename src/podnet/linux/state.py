"""The dataplane state: one plain structure in Linux's own vocabulary.

Renderers (CNI plugins, service proxies, policy) produce it; the simulator walks
packets through it; the lab applies it to real network namespaces; the snapshot
loader builds it from `ip -j`, `bridge -j fdb`, `iptables-save`, `nft -j` dumps.

Shape::

    DataplaneState
      namespaces: {name: Netns}      a node's root namespace, a pod sandbox, the
                                     underlay switch, the outside world...
      segments:   {name: Segment}    L2 segments joining physical NICs (the kind
                                     docker network, a cloud VPC subnet)

    Netns
      links, addresses (on links), routes (all tables), rules, neighbours,
      fdb, sysctls, iptables/ip6tables (iptables-save text + parsed),
      ipsets, nft (ruleset text + parsed), ipvs, conntrack, listeners, socket_lb

Field names follow iproute2's JSON output where one exists, so a snapshot
round-trips without a translation table.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, Iterator, NamedTuple, Optional, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

# Routing table ids and names as in /etc/iproute2/rt_tables.
TABLE_IDS = {"local": 255, "main": 254, "default": 253, "unspec": 0}
TABLE_NAMES = {v: k for k, v in TABLE_IDS.items()}


def table_id(table: int | str) -> int:
    if isinstance(table, int):
        return table
    if table in TABLE_IDS:
        return TABLE_IDS[table]
    return int(table)


def table_name(table: int) -> str:
    return TABLE_NAMES.get(table, str(table))


def stable_mac(*parts: str) -> str:
    """A deterministic, locally administered unicast MAC for a device."""
    digest = hashlib.sha256("/".join(parts).encode()).digest()
    first = (digest[0] & 0xFC) | 0x02  # locally administered, unicast
    return ":".join(f"{b:02x}" for b in (first, *digest[1:6]))


# ---------------------------------------------------------------------------
# Links and addresses
# ---------------------------------------------------------------------------

LINK_KINDS = ("loopback", "ether", "veth", "bridge", "vxlan", "dummy", "ipip", "tun")


@dataclass(slots=True)
class Address:
    """`ip addr` entry: an address with its prefix on a link."""
    interface: IPInterface          # e.g. ip_interface("10.244.1.1/32")
    scope: str = "global"           # global | link | host
    peer: Optional[IPAddress] = None

    @property
    def ip(self) -> IPAddress:
        return self.interface.ip

    @property
    def network(self) -> IPNetwork:
        return self.interface.network

    def __str__(self) -> str:
        return str(self.interface)


@dataclass(slots=True)
class VxlanInfo:
    vni: int
    local: Optional[IPAddress] = None
    dstport: int = 4789
    learning: bool = True
    dev: Optional[str] = None       # underlay device
    remote: Optional[IPAddress] = None  # fixed remote (point-to-point vxlan)


@dataclass(slots=True)
class TunnelInfo:
    """ipip / gre style tunnels."""
    local: Optional[IPAddress] = None
    remote: Optional[IPAddress] = None
    dev: Optional[str] = None


@dataclass(slots=True)
class Link:
    name: str
    kind: str = "ether"             # one of LINK_KINDS
    mac: Optional[str] = None
    mtu: int = 1500
    up: bool = True
    ifindex: int = 0
    master: Optional[str] = None    # bridge this link is a port of
    # veth: the peer end, as (netns name, ifname)
    peer: Optional[tuple[str, str]] = None
    # physical NIC: the L2 segment it is plugged into
    segment: Optional[str] = None
    vxlan: Optional[VxlanInfo] = None
    tunnel: Optional[TunnelInfo] = None
    addresses: list[Address] = field(default_factory=list)
    # bridge port options
    hairpin: bool = False
    learning: bool = True
    # bridge device options
    vlan_filtering: bool = False
    promisc: bool = False           # IFF_PROMISC: a bridge also passes forwarded frames up to the host
    noarp: bool = False
    alias: Optional[str] = None     # free text (e.g. which pod a veth serves)

    def add_address(self, cidr: str | IPInterface, scope: str = "global") -> Address:
        iface = ipaddress.ip_interface(cidr) if isinstance(cidr, str) else cidr
        addr = Address(iface, scope)
        self.addresses.append(addr)
        return addr


# ---------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------

ROUTE_TYPES = ("unicast", "local", "broadcast", "multicast", "blackhole",
               "unreachable", "prohibit", "throw", "anycast")


@dataclass(slots=True)
class Nexthop:
    via: Optional[IPAddress] = None
    dev: Optional[str] = None
    weight: int = 1
    onlink: bool = False


@dataclass(slots=True)
class Route:
    dst: IPNetwork                  # 0.0.0.0/0 for "default"
    dev: Optional[str] = None
    via: Optional[IPAddress] = None
    src: Optional[IPAddress] = None
    table: int = 254                # main
    type: str = "unicast"
    scope: str = "global"           # global | link | host
    proto: str = "boot"             # kernel | boot | static | bird | ...
    metric: int = 0
    onlink: bool = False
    nexthops: list[Nexthop] = field(default_factory=list)  # ECMP

    @property
    def family(self) -> int:
        return self.dst.version

    def paths(self) -> list[Nexthop]:
        """The route's nexthops; a single-path route is one Nexthop."""
        if self.nexthops:
            return self.nexthops
        return [Nexthop(self.via, self.dev, 1, self.onlink)]


@dataclass(slots=True)
class Rule:
    """`ip rule` entry."""
    priority: int
    table: int = 254
    action: str = "to_tbl"          # to_tbl | blackhole | unreachable | prohibit
    src: Optional[IPNetwork] = None
    dst: Optional[IPNetwork] = None
    iif: Optional[str] = None
    oif: Optional[str] = None
    fwmark: Optional[int] = None
    fwmask: Optional[int] = None
    invert: bool = False
    family: int = 4


def default_rules(family: int = 4) -> list[Rule]:
    return [Rule(0, 255, family=family), Rule(32766, 254, family=family),
            Rule(32767, 253, family=family)]


# ---------------------------------------------------------------------------
# Neighbours and forwarding databases
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class Neighbour:
    ip: IPAddress
    dev: str
    lladdr: Optional[str] = None
    state: str = "REACHABLE"        # PERMANENT | REACHABLE | STALE | NOARP | FAILED
    proxy: bool = False             # `ip neigh add proxy`


@dataclass(slots=True)
class FdbEntry:
    """`bridge fdb` entry: on a bridge (master) or on a VXLAN device (self, dst)."""
    mac: str
    dev: str                        # port (bridge) or vxlan device
    master: Optional[str] = None    # bridge, for `master` entries
    dst: Optional[IPAddress] = None # remote VTEP, for vxlan `self` entries
    vlan: Optional[int] = None
    self_: bool = False
    permanent: bool = False
    static: bool = False
    vni: Optional[int] = None


# ---------------------------------------------------------------------------
# Netfilter-adjacent tables kept as data
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class IpvsRealServer:
    ip: IPAddress
    port: int
    weight: int = 1
    method: str = "Masq"            # Masq | Route | Tunnel
    active_conns: int = 0           # for lc scheduling


@dataclass(slots=True)
class IpvsService:
    protocol: str                   # TCP | UDP | SCTP
    vip: IPAddress
    port: int
    scheduler: str = "rr"           # rr wrr lc wlc sh mh ...
    persistent: Optional[int] = None  # seconds (ClientIP session affinity)
    reals: list[IpvsRealServer] = field(default_factory=list)
    fwmark: Optional[int] = None
    sched_flags: tuple = ()         # scheduler flags as ipvsadm names them (mh-port, sh-fallback...)


@dataclass(slots=True)
class ConntrackEntry:
    """`conntrack -L` entry: the original tuple and the expected reply tuple."""
    proto: str
    orig_src: IPAddress
    orig_dst: IPAddress
    orig_sport: Optional[int]
    orig_dport: Optional[int]
    reply_src: IPAddress
    reply_dst: IPAddress
    reply_sport: Optional[int]
    reply_dport: Optional[int]
    state: str = ""                 # TCP state, e.g. ESTABLISHED
    mark: int = 0
    status: frozenset = frozenset()  # ASSURED, SEEN_REPLY, DNAT/SNAT derived
    zone: int = 0

    @property
    def dnat(self) -> bool:
        return self.reply_src != self.orig_dst or self.reply_sport != self.orig_dport

    @property
    def snat(self) -> bool:
        return self.reply_dst != self.orig_src or self.reply_dport != self.orig_sport


@dataclass(slots=True)
class Listener:
    """A socket bound in LISTEN (tcp/sctp) or bound (udp) state."""
    proto: str                      # tcp | udp | sctp
    ip: IPAddress                   # 0.0.0.0 / :: for any
    port: int
    owner: str = ""                 # e.g. "pod default/web-xyz container nginx"
    transparent: bool = False
    # a userspace proxy (kube-proxy's userspace mode): accepts and opens a new
    # connection to one of these backends, relaying the bytes
    relay_to: list[tuple[IPAddress, int]] = field(default_factory=list)
    relays: bool = False            # a relay even with no backends (it closes what it accepts)


@dataclass(slots=True)
class ArpResponder:
    """A userspace ARP responder (a packet socket on `dev`), as MetalLB's layer 2 speaker
    runs one: it answers who-has `ip` with `dev`'s MAC, whatever the kernel's routes say."""
    ip: IPAddress
    dev: str
    owner: str = ""


# eBPF service load-balancing (Cilium's kube-proxy replacement), as its BPF maps hold it.
LB_SCOPE_EXT = 0                    # LB_LOOKUP_SCOPE_EXT: the default scope, and traffic from outside
LB_SCOPE_INT = 1                    # LB_LOOKUP_SCOPE_INT: the in-cluster view of a two-scope service
IDENTITY_HOST = 1                   # reserved identities in cilium_ipcache
IDENTITY_REMOTE_NODE = 6


class LBKey(NamedTuple):
    """A key of cilium_lb4_services_v2 / lb6 (struct lb4_key): a frontend, the lookup
    scope, and the backend slot (0: the service's master entry)."""
    address: IPAddress
    dport: int
    proto: str                      # tcp | udp | sctp
    scope: int = LB_SCOPE_EXT
    backend_slot: int = 0


@dataclass(slots=True)
class LBService:
    """A value of cilium_lb4_services_v2 (struct lb4_service).

    The master entry (slot 0) has `count` backends, the service type and flags, and the
    session-affinity timeout (which Cilium keeps in the backend id's place); slots
    1..count each name one backend id of `SocketLB.backends`: maps hold fixed-size
    values, so a service's backends are spread over several keys."""
    backend_id: int = 0
    count: int = 0
    rev_nat_index: int = 0          # the service id; cilium_lb4_reverse_nat key
    svc_type: str = "ClusterIP"     # ClusterIP | NodePort | ExternalIPs | LoadBalancer (master only)
    # master only: ext-local, int-local, two-scopes, affinity, routable, source-range
    flags: frozenset = frozenset()
    affinity_timeout: int = 0


@dataclass(slots=True)
class LBBackend:
    """A value of cilium_lb4_backends_v3, keyed by backend id."""
    address: IPAddress
    port: int
    proto: str                      # tcp | udp | sctp
    state: str = "active"           # active | terminating


@dataclass(slots=True)
class SocketLB:
    """One node's eBPF load-balancer: the maps its cgroup (connect/sendmsg/recvmsg/
    getpeername) and tc (bpf_host from-netdev) programs read, plus what the agent
    knows for people (`names`)."""
    services: dict[LBKey, LBService] = field(default_factory=dict)        # cilium_lb{4,6}_services_v2
    backends: dict[int, LBBackend] = field(default_factory=dict)          # cilium_lb{4,6}_backends_v3
    rev_nat: dict[int, tuple[IPAddress, int]] = field(default_factory=dict)   # cilium_lb{4,6}_reverse_nat
    source_ranges: dict[int, list[IPNetwork]] = field(default_factory=dict)   # cilium_lb{4,6}_source_range
    ipcache: dict[IPAddress, int] = field(default_factory=dict)           # addresses with host/remote-node identity
    endpoints: set = field(default_factory=set)                           # cilium_lxc: this node's pod addresses
    nodeport_addrs: dict[int, IPAddress] = field(default_factory=dict)    # IPV4_NODEPORT: the SNAT address
    nodeport_range: tuple[int, int] = (30000, 32767)
    names: dict[int, str] = field(default_factory=dict)                   # service id -> ns/name:port


# ---------------------------------------------------------------------------
# Namespaces, segments, the whole state
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class Netns:
    name: str
    kind: str = "host"              # node | pod | underlay | external | host
    node: Optional[str] = None      # the Kubernetes node this namespace is on
    pod: Optional[str] = None       # ns/name for pod sandboxes
    links: dict[str, Link] = field(default_factory=dict)
    routes: list[Route] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=lambda: default_rules(4) + default_rules(6))
    neighbours: list[Neighbour] = field(default_factory=list)
    fdb: list[FdbEntry] = field(default_factory=list)
    sysctls: dict[str, str] = field(default_factory=dict)
    # netfilter, as the text the real tools read and write; parsed lazily
    iptables: str = ""              # iptables-save output (IPv4)
    ip6tables: str = ""
    ipsets: str = ""                # ipset save output
    nft: str = ""                   # nft list ruleset output
    ipvs: list[IpvsService] = field(default_factory=list)
    conntrack: list[ConntrackEntry] = field(default_factory=list)
    listeners: list[Listener] = field(default_factory=list)
    arp_responders: list[ArpResponder] = field(default_factory=list)
    socket_lb: Optional[SocketLB] = None
    # free-form facts renderers want to show (e.g. /run/flannel/subnet.env)
    files: dict[str, str] = field(default_factory=dict)
    # True for snapshots of real machines: `routes` already holds the routes the kernel
    # derives from addresses (table local, prefix routes), so they are not derived again
    routes_complete: bool = False
    _parsed: dict = field(default_factory=dict, repr=False)
    _next_ifindex: int = 1

    # -- building helpers -------------------------------------------------
    def add_link(self, link: Link) -> Link:
        if link.name in self.links:
            raise ValueError(f"{self.name}: link {link.name} already exists")
        if not link.ifindex:
            link.ifindex = self._next_ifindex
        self._next_ifindex = max(self._next_ifindex, link.ifindex) + 1
        if link.mac is None and link.kind != "loopback":
            link.mac = stable_mac(self.name, link.name)
        self.links[link.name] = link
        return link

    def add_route(self, route: Route) -> Route:
        self.routes.append(route)
        self.invalidate()
        return route

    def sysctl(self, key: str, default: str = "0") -> str:
        return self.sysctls.get(key, default)

    def sysctl_on(self, key: str) -> bool:
        return self.sysctl(key) not in ("0", "")

    def conf(self, ifname: str, key: str) -> bool:
        """net.ipv4.conf.<if>.<key>, taking `all` into account as the kernel does
        for boolean OR-ed flags (proxy_arp, forwarding-like keys)."""
        return (self.sysctl_on(f"net.ipv4.conf.{ifname}.{key}")
                or self.sysctl_on(f"net.ipv4.conf.all.{key}"))

    def rp_filter(self, ifname: str) -> int:
        """Effective rp_filter: max(conf.all, conf.<if>) as the kernel computes it."""
        return max(int(self.sysctl(f"net.ipv4.conf.all.rp_filter", "0")),
                   int(self.sysctl(f"net.ipv4.conf.{ifname}.rp_filter", "0")))

    # -- queries ----------------------------------------------------------
    def addresses(self) -> Iterator[tuple[Link, Address]]:
        for link in self.links.values():
            for addr in link.addresses:
                yield link, addr

    def link_by_index(self, ifindex: int) -> Optional[Link]:
        for link in self.links.values():
            if link.ifindex == ifindex:
                return link
        return None

    def invalidate(self) -> None:
        """Drop cached parses and indexes after the state was changed."""
        self._parsed.clear()

    def cached(self, key: str, build):
        value = self._parsed.get(key)
        if value is None:
            value = build()
            self._parsed[key] = value
        return value


@dataclass(slots=True)
class Segment:
    """An L2 segment (a switch) joining physical NICs of several namespaces."""
    name: str
    subnet: Optional[IPNetwork] = None
    mtu: int = 1500
    description: str = ""
    # NICs that cannot reach each other directly (the weave partial-connectivity demo)
    blocked_pairs: set = field(default_factory=set)  # {(ns_a, ns_b)} unordered


@dataclass(slots=True)
class DataplaneState:
    namespaces: dict[str, Netns] = field(default_factory=dict)
    segments: dict[str, Segment] = field(default_factory=dict)
    description: str = ""

    def add_netns(self, ns: Netns) -> Netns:
        if ns.name in self.namespaces:
            raise ValueError(f"namespace {ns.name} already exists")
        self.namespaces[ns.name] = ns
        return ns

    def netns(self, name: str) -> Netns:
        try:
            return self.namespaces[name]
        except KeyError:
            raise KeyError(f"no network namespace named {name!r}") from None

    def add_segment(self, seg: Segment) -> Segment:
        self.segments[seg.name] = seg
        return seg

    def segment_members(self, segment: str) -> Iterable[tuple[Netns, Link]]:
        for ns in self.namespaces.values():
            for link in ns.links.values():
                if link.segment == segment:
                    yield ns, link

    def veth_peer(self, ns: Netns, link: Link) -> Optional[tuple[Netns, Link]]:
        if link.peer is None:
            return None
        peer_ns = self.namespaces.get(link.peer[0])
        if peer_ns is None:
            return None
        peer = peer_ns.links.get(link.peer[1])
        return (peer_ns, peer) if peer else None

    def connect_veth(self, ns_a: Netns, name_a: str, ns_b: Netns, name_b: str,
                     mtu: int = 1500, mac_a: str | None = None,
                     mac_b: str | None = None) -> tuple[Link, Link]:
        a = ns_a.add_link(Link(name_a, "veth", mac=mac_a, mtu=mtu, peer=(ns_b.name, name_b)))
        b = ns_b.add_link(Link(name_b, "veth", mac=mac_b, mtu=mtu, peer=(ns_a.name, name_a)))
        return a, b
