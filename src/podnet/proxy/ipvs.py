"""kube-proxy's IPVS mode (pkg/proxy/ipvs/proxier.go, ipset.go, netlink_linux.go).

    rules = render(proxy_view(cluster, "worker", 4))
    rules.services          # the IPVS table: one virtual server per ClusterIP, external IP,
                            # LoadBalancer IP and node address x NodePort, with its real servers
    rules.bind_addresses    # what kube-proxy binds to the kube-ipvs0 dummy device (/32, /128)
    rules.ipsets            # `ipset save` of its sets (KUBE-CLUSTER-IP, KUBE-LOOP-BACK, ...)
    rules.restore           # the iptables-restore payload around them (*nat, *filter)
    rules.jumps             # the rules it inserts into the built-in chains
    rules.sysctls           # what NewProxier sets (net.ipv4.vs.conntrack=1, ...)

Load balancing is IPVS's: kube-proxy binds every ClusterIP (and every external
and LoadBalancer IP the node does not already have) to kube-ipvs0, a dummy
device it never brings up. That makes them local addresses of the node (the
kernel adds a `local` route when an address is added, whatever the link's
state), so a Service's packet is routed to INPUT, where IPVS (hooked at
LOCAL_IN, and at LOCAL_OUT for the node's own connections) picks a real
server and rewrites the destination. iptables keeps only the rules IPVS
cannot do, each matching an ipset instead of one rule per Service: marking
for masquerade (off-cluster sources, NodePorts, external IPs), the hairpin
masquerade of a pod reaching itself (KUBE-LOOP-BACK), the LoadBalancer
source-range firewall, and the KUBE-IPVS-FILTER chain, which since
kubernetes#108460 rejects new connections to kube-ipvs0 addresses on ports
that are not a Service's: before it, a node's listener on 0.0.0.0 was
reachable on every ClusterIP (kubernetes#72236, the guide's caveat);
`host_filter=False` (PodnetConfig kubeProxy.ipvsHostFilter: false) renders
that older kube-proxy.

Endpoints per virtual server are the shared model's (model.categorize:
topology, traffic policies, terminating fallback), chosen as upstream's
syncEndpoint does: a ClusterIP uses the cluster endpoints (the local ones with
internalTrafficPolicy Local), external addresses the local ones with
externalTrafficPolicy Local, falling back to the cluster endpoints when the
node has none (kubernetes#97081: the pods of this node can still reach the
Service; an external client's reply comes back from the pod's address and is
dropped). Real servers have weight 1. An endpoint that is terminating but
still serving while ready ones exist is kept with weight 0: upstream's
graceful-termination manager quiesces a real server that leaves the set
instead of deleting it while connections to it drain, and a terminating
endpoint is one that is draining (podnet has no connection counts, so it keeps
it for as long as the EndpointSlice lists it). IPVS sends no new connection to
a weight-0 real server.

`IpvsProxier` keeps what the previous sync programmed: `sync(view)` recomputes
only the Services that changed (model.ChangeTracker) and reports in
`last_ops` the ipvsadm / ipset / ip commands that take the kernel from the
previous state to the new one, as upstream's syncService / syncEndpoint /
syncIPSetEntries only touch what differs.

Where upstream varies with the host: `--random-fully` off; the node's kernel
is taken to be >= 5.9, where kube-proxy leaves net.ipv4.vs.conn_reuse_mode as
it is (`kernel=` changes that); strictARP off.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from ..linux.state import IpvsRealServer, IpvsService
from .iptables import JumpRule, jump_rules
from .model import ChangeTracker, ProxyView, ServicePortInfo, ServicePortName

KUBE_IPVS0 = "kube-ipvs0"          # defaultDummyDevice
DEFAULT_SCHEDULER = "rr"
SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "mh")

# chains
KUBE_SERVICES = "KUBE-SERVICES"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"            # kubernetes#72236
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"    # kubernetes#119656

# ipsets (ipset.go) and their comments, which the iptables rules that match them carry
KUBE_LOOP_BACK = "KUBE-LOOP-BACK"
KUBE_CLUSTER_IP = "KUBE-CLUSTER-IP"
KUBE_EXTERNAL_IP = "KUBE-EXTERNAL-IP"
KUBE_EXTERNAL_IP_LOCAL = "KUBE-EXTERNAL-IP-LOCAL"
KUBE_LOAD_BALANCER_SET = "KUBE-LOAD-BALANCER"
KUBE_LOAD_BALANCER_FW = "KUBE-LOAD-BALANCER-FW"
KUBE_LOAD_BALANCER_LOCAL = "KUBE-LOAD-BALANCER-LOCAL"
KUBE_LOAD_BALANCER_SOURCE_IP = "KUBE-LOAD-BALANCER-SOURCE-IP"
KUBE_LOAD_BALANCER_SOURCE_CIDR = "KUBE-LOAD-BALANCER-SOURCE-CIDR"
KUBE_NODE_PORT_TCP = "KUBE-NODE-PORT-TCP"
KUBE_NODE_PORT_LOCAL_TCP = "KUBE-NODE-PORT-LOCAL-TCP"
KUBE_NODE_PORT_UDP = "KUBE-NODE-PORT-UDP"
KUBE_NODE_PORT_LOCAL_UDP = "KUBE-NODE-PORT-LOCAL-UDP"
KUBE_NODE_PORT_SCTP = "KUBE-NODE-PORT-SCTP-HASH"
KUBE_NODE_PORT_LOCAL_SCTP = "KUBE-NODE-PORT-LOCAL-SCTP-HASH"
KUBE_HEALTH_CHECK_NODE_PORT = "KUBE-HEALTH-CHECK-NODE-PORT"
KUBE_IPVS_IPS = "KUBE-IPVS-IPS"

# ipsetInfo, in upstream's order: (name, type, comment)
IPSET_INFO = [
    (KUBE_LOOP_BACK, "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose"),
    (KUBE_CLUSTER_IP, "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose"),
    (KUBE_EXTERNAL_IP, "hash:ip,port", "Kubernetes service external ip + port for masquerade and filter purpose"),
    (KUBE_EXTERNAL_IP_LOCAL, "hash:ip,port", "Kubernetes service external ip + port with externalTrafficPolicy=local"),
    (KUBE_LOAD_BALANCER_SET, "hash:ip,port", "Kubernetes service lb portal"),
    (KUBE_LOAD_BALANCER_FW, "hash:ip,port",
     "Kubernetes service load balancer ip + port for load balancer with sourceRange"),
    (KUBE_LOAD_BALANCER_LOCAL, "hash:ip,port",
     "Kubernetes service load balancer ip + port with externalTrafficPolicy=local"),
    (KUBE_LOAD_BALANCER_SOURCE_IP, "hash:ip,port,ip",
     "Kubernetes service load balancer ip + port + source IP for packet filter purpose"),
    (KUBE_LOAD_BALANCER_SOURCE_CIDR, "hash:ip,port,net",
     "Kubernetes service load balancer ip + port + source cidr for packet filter purpose"),
    (KUBE_NODE_PORT_TCP, "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
    (KUBE_NODE_PORT_LOCAL_TCP, "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local"),
    (KUBE_NODE_PORT_UDP, "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
    (KUBE_NODE_PORT_LOCAL_UDP, "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local"),
    (KUBE_NODE_PORT_SCTP, "hash:ip,port",
     "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
    (KUBE_NODE_PORT_LOCAL_SCTP, "hash:ip,port",
     "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'"),
    (KUBE_HEALTH_CHECK_NODE_PORT, "bitmap:port", "Kubernetes health check node port"),
    (KUBE_IPVS_IPS, "hash:ip", "Addresses on the ipvs interface"),
]
IPSET_COMMENT = {name: comment for name, _, comment in IPSET_INFO}

# ipsetWithIptablesChain: `-A <from> [-p proto] -m set --match-set <set> <flags> -j <to>`,
# written only when the set has members (the LOCAL sets before their non-local ones)
IPSET_WITH_IPTABLES_CHAIN = [
    (KUBE_LOOP_BACK, "nat", KUBE_POSTROUTING, "MASQUERADE", "dst,dst,src", ""),
    (KUBE_LOAD_BALANCER_SET, "nat", KUBE_SERVICES, KUBE_LOAD_BALANCER, "dst,dst", ""),
    (KUBE_LOAD_BALANCER_LOCAL, "nat", KUBE_LOAD_BALANCER, "RETURN", "dst,dst", ""),
    (KUBE_NODE_PORT_LOCAL_TCP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "tcp"),
    (KUBE_NODE_PORT_TCP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "tcp"),
    (KUBE_NODE_PORT_LOCAL_UDP, "nat", KUBE_NODE_PORT, "RETURN", "dst", "udp"),
    (KUBE_NODE_PORT_UDP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst", "udp"),
    (KUBE_NODE_PORT_LOCAL_SCTP, "nat", KUBE_NODE_PORT, "RETURN", "dst,dst", "sctp"),
    (KUBE_NODE_PORT_SCTP, "nat", KUBE_NODE_PORT, KUBE_MARK_MASQ, "dst,dst", "sctp"),
    (KUBE_LOAD_BALANCER_FW, "filter", KUBE_PROXY_FIREWALL, KUBE_SOURCE_RANGES_FIREWALL, "dst,dst", ""),
    (KUBE_LOAD_BALANCER_SOURCE_CIDR, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
    (KUBE_LOAD_BALANCER_SOURCE_IP, "filter", KUBE_SOURCE_RANGES_FIREWALL, "RETURN", "dst,dst,src", ""),
]

# iptablesChains
IPTABLES_CHAINS = [
    ("nat", KUBE_SERVICES), ("nat", KUBE_POSTROUTING), ("nat", KUBE_NODE_PORT),
    ("nat", KUBE_LOAD_BALANCER), ("nat", KUBE_MARK_MASQ),
    ("filter", KUBE_FORWARD), ("filter", KUBE_NODE_PORT), ("filter", KUBE_PROXY_FIREWALL),
    ("filter", KUBE_SOURCE_RANGES_FIREWALL), ("filter", KUBE_IPVS_FILTER), ("filter", KUBE_IPVS_OUT_FILTER),
]

# iptablesJumpChain: (table, dst, src, comment, extra args), each EnsureRule(Prepend)
IPTABLES_JUMP_CHAIN = [
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ""),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", ""),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", ""),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", KUBE_NODE_PORT, "INPUT", "kubernetes health check rules", ""),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kube-proxy firewall rules", ""),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kube-proxy firewall rules", ""),
    ("filter", KUBE_IPVS_FILTER, "INPUT", "kubernetes ipvs access filter", ""),
    ("filter", KUBE_IPVS_OUT_FILTER, "OUTPUT", "kubernetes ipvs access filter", ""),
]

# NewProxier's sysctls (proxyutil.EnsureSysctl)
SYSCTLS = {
    "net.ipv4.vs.conntrack": "1",                    # IPVS keeps conntrack entries: NAT and masquerade work
    "net.ipv4.vs.expire_nodest_conn": "1",           # drop connections to deleted real servers
    "net.ipv4.vs.expire_quiescent_template": "1",    # and persistence templates of weight-0 ones
    "net.ipv4.ip_forward": "1",
}
STRICT_ARP_SYSCTLS = {"net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}
CONN_REUSE_MIN_KERNEL = (4, 1)      # IPVSConnReuseModeMinSupportedKernelVersion
CONN_REUSE_FIXED_KERNEL = (5, 9)    # IPVSConnReuseModeFixedKernelVersion (kubernetes#93297)

# IP_VS_SVC_F_SCHED2, which kube-proxy sets for mh (utilipvs.FlagSourceHash), as ipvsadm names it
MH_SCHED_FLAGS = ("mh-port",)


@lru_cache(maxsize=1 << 18)
def _ip(text: str):
    """An address object, parsed the fast way and shared (a sync makes many real servers)."""
    if ":" not in text:
        return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big"))
    return ipaddress.IPv6Address(text)


def ipset_name(name: str, family: int) -> str:
    """NewIPSet: IPv6 sets are called KUBE-6-..., at most 31 characters."""
    if family == 6 and name.startswith("KUBE-"):
        return ("KUBE-6-" + name[5:])[:31]
    return name


def _hostport_entry(ip: str, protocol: str, port: int) -> str:
    """utilipset Entry.String() of hash:ip,port (IPv6 addresses are written bare)."""
    return f"{ip},{protocol}:{port}"


def node_address_set(view: ProxyView) -> list[str]:
    """GetAllLocalAddressesExcept(kube-ipvs0) through isValidForSet: the node's interface
    addresses of the proxier's family, without loopback and IPv6 link-local ones."""
    out = set()
    for text in view.node.interface_addresses(view.family):
        ip = ipaddress.ip_address(text)
        if ip.version != view.family or ip.is_loopback or (ip.version == 6 and ip.is_link_local):
            continue
        out.add(ip)
    return [str(ip) for ip in sorted(out)]


def node_port_ips(view: ProxyView, node_addresses: list[str]) -> list[str]:
    """The addresses NodePort virtual servers are made on: every node address with the
    default --nodeport-addresses, else the node's addresses in those CIDRs (never loopback)."""
    npa = view.node_port_addresses_of()
    if npa.match_all:
        return list(node_addresses)
    return [ip for ip in npa.get_node_ips(view.node.interface_addresses(view.family))
            if not ipaddress.ip_address(ip).is_loopback]


# ---------------------------------------------------------------------------
# per Service port
# ---------------------------------------------------------------------------

@dataclass
class ServiceState:
    """What one Service port contributes to a sync: its virtual servers, the addresses it
    binds to kube-ipvs0, its ipset entries, and the LB entries that must not be reached
    from the node itself (lbNoNodeAccessIPPortProtocolEntries)."""
    services: list[IpvsService] = field(default_factory=list)
    bind: list[str] = field(default_factory=list)
    entries: dict[str, list[str]] = field(default_factory=dict)
    no_node_access: list[tuple[str, str, int]] = field(default_factory=list)

    def add(self, set_name: str, entry: str) -> None:
        self.entries.setdefault(set_name, []).append(entry)


def real_servers(view: ProxyView, svc: ServicePortInfo, only_node_local: bool) -> list[IpvsRealServer]:
    """syncEndpoint's destinations of one virtual server: weight 1 for the endpoints it
    uses, weight 0 for serving-terminating ones it no longer sends new connections to."""
    cat = view.categorize(svc.name)
    if only_node_local:
        endpoints = cat.local if cat.local else cat.cluster
    else:
        endpoints = cat.cluster
    chosen = {ep.endpoint for ep in endpoints}
    local_only = only_node_local and bool(cat.local)
    out = []
    for ep in view.endpoints_of(svc.name):
        if ep.endpoint in chosen:
            weight = 1
        elif ep.serving and ep.terminating and (ep.is_local or not local_only):
            weight = 0          # quiesced while its connections drain (graceful termination)
        else:
            continue
        out.append(IpvsRealServer(_ip(ep.ip), ep.port, weight))
    return out


class IpvsProxier:
    """syncProxyRules of one single-family IPVS proxier, and the state it keeps between syncs."""

    def __init__(self, scheduler: str = DEFAULT_SCHEDULER, *, host_filter: bool = True,
                 strict_arp: bool = False, random_fully: bool = False, kernel: tuple = (6, 1)):
        self.scheduler = scheduler or DEFAULT_SCHEDULER     # "IPVS scheduler not specified, use rr"
        self.host_filter = host_filter
        self.strict_arp = strict_arp
        self.random_fully = random_fully
        self.kernel = tuple(kernel)
        self.changes = ChangeTracker()
        self.last_sync_full = False
        self._last: tuple = (None, None)
        self._states: dict[ServicePortName, ServiceState] = {}
        self._sorted: dict[str, tuple] = {}     # set name -> (members, sorted), reused while equal
        self._applied: Optional[IpvsProxyRules] = None

    def force_full_sync(self) -> None:
        self.changes.force_full_sync()

    def sysctls(self) -> dict[str, str]:
        out = dict(SYSCTLS)
        if CONN_REUSE_MIN_KERNEL <= self.kernel < CONN_REUSE_FIXED_KERNEL:
            out["net.ipv4.vs.conn_reuse_mode"] = "0"     # older kernels: avoid the reuse delay
        if self.strict_arp:
            out.update(STRICT_ARP_SYSCTLS)
        return out

    # -- the sync ---------------------------------------------------------------
    def sync(self, view: ProxyView) -> "IpvsProxyRules":
        full, changed = self.changes.update(view)
        self.last_sync_full = full
        node_addresses = node_address_set(view)
        np_ips = node_port_ips(view, node_addresses)
        states: dict[ServicePortName, ServiceState] = {}
        for spn, svc in view.services.items():
            state = None if full or spn.namespaced_name in changed else self._states.get(spn)
            if state is None:
                state = self._service_state(view, svc, node_addresses, np_ips)
            states[spn] = state
        self._states = states
        rules = self._assemble(view, states)
        self._last = (self._applied, rules)
        self._applied = rules
        return rules

    @property
    def last_ops(self) -> list[str]:
        """The kernel operations of the last sync (computed when asked for)."""
        before, after = self._last
        return after.ops_from(before) if after is not None else []

    def _virtual_server(self, protocol: str, address: str, port: int, svc: ServicePortInfo,
                        reals: list[IpvsRealServer]) -> IpvsService:
        vs = IpvsService(protocol, _ip(address), port, self.scheduler,
                         svc.sticky_max_age_seconds if svc.client_ip_affinity else None, list(reals))
        if self.scheduler == "mh":
            vs.sched_flags = MH_SCHED_FLAGS
        return vs

    def _service_state(self, view: ProxyView, svc: ServicePortInfo, node_addresses: list[str],
                       np_ips: list[str]) -> ServiceState:
        """The body of syncProxyRules' loop for one Service port."""
        family = view.family
        out = ServiceState()
        protocol = svc.protocol.lower()
        proto_upper = svc.protocol.upper()
        port = svc.port
        local_addrs = set(node_addresses)

        # Handle traffic that loops back to the originator with SNAT.
        for ep in view.endpoints_of(svc.name):
            if ep.is_local:
                out.add(ipset_name(KUBE_LOOP_BACK, family), f"{_hostport_entry(ep.ip, protocol, ep.port)},{ep.ip}")

        # Capture the clusterIP.
        out.add(ipset_name(KUBE_CLUSTER_IP, family), _hostport_entry(svc.cluster_ip, protocol, port))
        internal = real_servers(view, svc, svc.internal_policy_local)
        out.services.append(self._virtual_server(proto_upper, svc.cluster_ip, port, svc, internal))
        out.bind.append(svc.cluster_ip)

        external = None
        # Capture externalIPs.
        for eip in svc.external_ips:
            name = KUBE_EXTERNAL_IP_LOCAL if svc.external_policy_local else KUBE_EXTERNAL_IP
            out.add(ipset_name(name, family), _hostport_entry(eip, protocol, port))
            external = external if external is not None else real_servers(view, svc, svc.external_policy_local)
            out.services.append(self._virtual_server(proto_upper, eip, port, svc, external))
            if eip not in local_addrs:      # not on the dummy if another interface has it
                out.bind.append(eip)

        # Capture load-balancer ingress.
        for lbip in svc.load_balancer_vips:
            entry = _hostport_entry(lbip, protocol, port)
            out.add(ipset_name(KUBE_LOAD_BALANCER_SET, family), entry)
            if svc.external_policy_local:
                out.add(ipset_name(KUBE_LOAD_BALANCER_LOCAL, family), entry)
            if svc.load_balancer_source_ranges:
                out.add(ipset_name(KUBE_LOAD_BALANCER_FW, family), entry)
                allow_from_node = False
                node_ip = ipaddress.ip_address(view.node_ip) if view.node_ip else None
                for cidr in svc.load_balancer_source_ranges:
                    net = ipaddress.ip_network(cidr, strict=False)
                    out.add(ipset_name(KUBE_LOAD_BALANCER_SOURCE_CIDR, family), f"{entry},{net}")
                    if node_ip is not None and node_ip in net:
                        allow_from_node = True
                if allow_from_node:
                    # a VIP routed locally loops back with itself as the source
                    out.add(ipset_name(KUBE_LOAD_BALANCER_SOURCE_IP, family), f"{entry},{lbip}")
                else:
                    out.no_node_access.append((lbip, protocol, port))
            external = external if external is not None else real_servers(view, svc, svc.external_policy_local)
            out.services.append(self._virtual_server(proto_upper, lbip, port, svc, external))
            if lbip not in local_addrs:
                out.bind.append(lbip)

        # NodePorts: a virtual server on every node address.
        if svc.node_port and np_ips:
            if protocol == "sctp":
                entries = [_hostport_entry(ip, protocol, svc.node_port) for ip in np_ips]
                sets = (KUBE_NODE_PORT_SCTP, KUBE_NODE_PORT_LOCAL_SCTP)
            else:
                entries = [str(svc.node_port)]
                sets = ((KUBE_NODE_PORT_TCP, KUBE_NODE_PORT_LOCAL_TCP) if protocol == "tcp"
                        else (KUBE_NODE_PORT_UDP, KUBE_NODE_PORT_LOCAL_UDP))
            for entry in entries:
                out.add(ipset_name(sets[0], family), entry)
                if svc.external_policy_local:
                    out.add(ipset_name(sets[1], family), entry)
            external = external if external is not None else real_servers(view, svc, svc.external_policy_local)
            for ip in np_ips:
                out.services.append(self._virtual_server(proto_upper, ip, svc.node_port, svc, external))

        if svc.health_check_node_port:
            out.add(ipset_name(KUBE_HEALTH_CHECK_NODE_PORT, family), str(svc.health_check_node_port))
        return out

    # -- the iptables rules and the sets ------------------------------------------
    def _assemble(self, view: ProxyView, states: dict[ServicePortName, ServiceState]) -> "IpvsProxyRules":
        family = view.family
        members: dict[str, set[str]] = {ipset_name(name, family): set() for name, _, _ in IPSET_INFO}
        services: list[IpvsService] = []
        bind: set[str] = set()
        no_node_access: list[tuple[str, str, int]] = []
        for state in states.values():
            services.extend(state.services)
            bind.update(state.bind)
            for name, entries in state.entries.items():
                members[name].update(entries)
            no_node_access.extend(state.no_node_access)
        members[ipset_name(KUBE_IPVS_IPS, family)] = set(bind)
        if not self.host_filter:
            del members[ipset_name(KUBE_IPVS_IPS, family)]
        ipsets = ipset_save(members, family, self._sorted)
        restore = self._write_iptables_rules(view, members, no_node_access)
        jumps = jump_rules([j for j in IPTABLES_JUMP_CHAIN if self.host_filter or j[1] != KUBE_IPVS_FILTER])
        if self._sorted.get(KUBE_IPVS0, (None,))[0] != bind:
            self._sorted[KUBE_IPVS0] = (bind, sorted(bind, key=_ip))
        return IpvsProxyRules(restore=restore, jumps=jumps, ipsets=ipsets, services=services,
                              bind_addresses=self._sorted[KUBE_IPVS0][1],
                              sysctls=self.sysctls(), family=family, members=members, states=states)

    def _write_iptables_rules(self, view: ProxyView, members: dict[str, set[str]],
                              no_node_access: list[tuple[str, str, int]]) -> str:
        """writeIptablesRules (with createAndLinkKubeChain's chain lines)."""
        family = view.family
        mark = view.masquerade_mark
        n = lambda name: ipset_name(name, family)          # noqa: E731
        nonempty = lambda name: bool(members.get(n(name)))  # noqa: E731
        match = lambda name, flags: (f'-m comment --comment "{IPSET_COMMENT[name]}" '  # noqa: E731
                                     f"-m set --match-set {n(name)} {flags}")
        chains = [(t, c) for t, c in IPTABLES_CHAINS if self.host_filter or c != KUBE_IPVS_FILTER]
        nat_rules: list[str] = []
        filter_rules: list[str] = []

        # Dismiss connects to localhost early in the service chain.
        nat_rules.append(f"-A {KUBE_SERVICES} -s {'::1/128' if family == 6 else '127.0.0.0/8'} -j RETURN")
        for name, table, src, dst, flags, proto in IPSET_WITH_IPTABLES_CHAIN:
            if not nonempty(name):
                continue
            rule = f"-A {src}" + (f" -p {proto}" if proto else "") + f" {match(name, flags)} -j {dst}"
            (filter_rules if table == "filter" else nat_rules).append(rule)

        if nonempty(KUBE_CLUSTER_IP):
            head = f"-A {KUBE_SERVICES} {match(KUBE_CLUSTER_IP, '')}".rstrip()
            detector = view.local_detector
            if view.masquerade_all:
                nat_rules.append(f"{head} dst,dst -j {KUBE_MARK_MASQ}")
            elif detector.is_implemented:
                # masquerade off-cluster traffic to a VIP (a static route to the Service
                # range via any node may bounce off-node)
                nat_rules.append(f"{head} dst,dst {detector.if_not_local()} -j {KUBE_MARK_MASQ}")
            else:
                # the node's own connections to a VIP have the VIP as source (it is local)
                nat_rules.append(f"{head} src,dst -j {KUBE_MARK_MASQ}")

        def external_ip_rules(head: str) -> None:
            # traffic from off-machine (not from a bridge nor a local process), and traffic to
            # external IPs that are local addresses anyway (GCE LBs), stays with IPVS
            nat_rules.append(f"{head} -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT")
            nat_rules.append(f"{head} -m addrtype --dst-type LOCAL -j ACCEPT")

        if nonempty(KUBE_EXTERNAL_IP):
            head = f"-A {KUBE_SERVICES} {match(KUBE_EXTERNAL_IP, 'dst,dst')}"
            nat_rules.append(f"{head} -j {KUBE_MARK_MASQ}")
            external_ip_rules(head)
        if nonempty(KUBE_EXTERNAL_IP_LOCAL):
            external_ip_rules(f"-A {KUBE_SERVICES} {match(KUBE_EXTERNAL_IP_LOCAL, 'dst,dst')}")

        nat_rules.append(f"-A {KUBE_SERVICES} -m addrtype --dst-type LOCAL -j {KUBE_NODE_PORT}")
        nat_rules.append(f"-A {KUBE_LOAD_BALANCER} -j {KUBE_MARK_MASQ}")
        filter_rules.append(f"-A {KUBE_SOURCE_RANGES_FIREWALL} -j DROP")
        # the node's own connections to a LoadBalancer IP whose source ranges leave it out
        for ip, proto, port in no_node_access:
            filter_rules.append(f"-A {KUBE_IPVS_OUT_FILTER} -s {ip} -m ipvs --vaddr {ip} --vproto {proto} "
                                f"--vport {port} -j DROP")
        # acceptIPVSTraffic: nothing later in the nat chains may touch IPVS's traffic
        for name in (KUBE_CLUSTER_IP, KUBE_LOAD_BALANCER_SET):
            if nonempty(name):
                nat_rules.append(f"-A {KUBE_SERVICES} -m set --match-set {n(name)} dst,dst -j ACCEPT")

        filter_rules.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
                            f"-m mark --mark {mark}/{mark} -j ACCEPT")
        filter_rules.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
                            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")
        filter_rules.append(f"-A {KUBE_NODE_PORT} {match(KUBE_HEALTH_CHECK_NODE_PORT, 'dst')} -j ACCEPT")
        if self.host_filter:
            # kubernetes#72236: no access to the host's ports through a VIP
            for name, flags in ((KUBE_LOAD_BALANCER_SET, "dst,dst"), (KUBE_CLUSTER_IP, "dst,dst"),
                                (KUBE_EXTERNAL_IP, "dst,dst"), (KUBE_EXTERNAL_IP_LOCAL, "dst,dst"),
                                (KUBE_HEALTH_CHECK_NODE_PORT, "dst")):
                filter_rules.append(f"-A {KUBE_IPVS_FILTER} -m set --match-set {n(name)} {flags} -j RETURN")
            filter_rules.append(f"-A {KUBE_IPVS_FILTER} -m conntrack --ctstate NEW "
                                f"-m set --match-set {n(KUBE_IPVS_IPS)} dst -j REJECT")

        nat_rules.append(f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN")
        # clear the mark so a packet that re-traverses the stack is not masqueraded again
        nat_rules.append(f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}")
        nat_rules.append(f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
                         "-j MASQUERADE" + (" --random-fully" if self.random_fully else ""))
        nat_rules.append(f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}")

        nat_chains = [f":{c} - [0:0]" for t, c in chains if t == "nat"]
        filter_chains = [f":{c} - [0:0]" for t, c in chains if t == "filter"]
        return "\n".join(["*nat", *nat_chains, *nat_rules, "COMMIT",
                          "*filter", *filter_chains, *filter_rules, "COMMIT"]) + "\n"


# ---------------------------------------------------------------------------
# what a sync programs
# ---------------------------------------------------------------------------

def _entry_key(entry: str):
    """Members in address order, then protocol and port (ipset lists them in hash order)."""
    first, _, rest = entry.partition(",")
    if first.isdigit():
        return (1, int(first), entry)               # bitmap:port
    return (0, int(_ip(first)), rest)


def ipset_save(members: dict[str, set[str]], family: int, cache: Optional[dict] = None) -> str:
    """`ipset save` of kube-proxy's sets: created as utilipset's createSet makes them
    (hash types with family, hashsize 1024 and maxelem 65536; bitmap:port with range
    0-65535), every set whether it has members or not. `cache` keeps each set's sorted
    members for the next call."""
    cache = {} if cache is None else cache
    lines = []
    for base, set_type, _ in IPSET_INFO:
        name = ipset_name(base, family)
        if name not in members:
            continue
        if set_type == "bitmap:port":
            header = "range 0-65535"
        else:
            header = f"family {'inet6' if family == 6 else 'inet'} hashsize 1024 maxelem 65536"
        lines.append(f"create {name} {set_type} {header}")
        got = cache.get(name)
        if got is None or got[0] != members[name]:
            got = cache[name] = (members[name], [f"add {name} {e}" for e in sorted(members[name], key=_entry_key)])
        lines.extend(got[1])
    return "\n".join(lines) + "\n"


def _vs_key(vs: IpvsService) -> tuple:
    return (vs.protocol, vs.vip, vs.port)


PROTOCOL_FLAGS = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}


def _host(ip) -> str:
    return f"[{ip}]" if ip.version == 6 else str(ip)


def _vs_flag(vs: IpvsService) -> str:
    """`-t 10.96.0.1:443`: how ipvsadm names a virtual server."""
    return f"{PROTOCOL_FLAGS[vs.protocol]} {_host(vs.vip)}:{vs.port}"


def set_type(name: str) -> str:
    """The type of one of kube-proxy's sets, by its name in either family."""
    for base, kind, _ in IPSET_INFO:
        if name in (base, ipset_name(base, 6)):
            return kind
    raise KeyError(name)


@dataclass
class IpvsProxyRules:
    """What kube-proxy's IPVS mode programs on one node for one IP family."""
    restore: str
    jumps: list[JumpRule]
    ipsets: str
    services: list[IpvsService]
    bind_addresses: list[str]
    sysctls: dict[str, str]
    family: int = 4
    members: dict[str, set[str]] = field(default_factory=dict, repr=False)
    states: dict = field(default_factory=dict, repr=False)      # per Service port (ServiceState)

    def ipvsadm(self) -> str:
        """`ipvsadm -Ln` of the table."""
        from ..linux.render import ipvsadm_ln
        return ipvsadm_ln(self.services)

    def iptables_save(self) -> str:
        from ..linux.iptables_builder import IptablesBuilder
        builder = IptablesBuilder()
        self.apply_iptables(builder)
        return builder.render()

    def apply_iptables(self, builder) -> None:
        builder.add_restore(self.restore)
        for jump in self.jumps:
            jump.apply(builder)

    def apply(self, ctx) -> None:
        """Into a dataplane NodeContext: the dummy device and its addresses, the IPVS
        table, the sets, the iptables rules and the sysctls."""
        from ..linux.state import Link
        ns = ctx.ns
        dummy = ns.links.get(KUBE_IPVS0)
        if dummy is None:
            # EnsureDummyDevice: created, never set up (`state DOWN` in the guide)
            dummy = ns.add_link(Link(KUBE_IPVS0, "dummy", up=False))
        have = {str(a.ip) for a in dummy.addresses}
        for ip in self.bind_addresses:
            if ip not in have:
                dummy.add_address(f"{ip}/{128 if ':' in ip else 32}")
        ns.ipvs.extend(self.services)
        ctx.ipsets.append(self.ipsets.rstrip("\n"))
        self.apply_iptables(ctx.iptables if self.family == 4 else ctx.ip6tables)
        ns.sysctls.update(self.sysctls)
        ns.invalidate()

    def ops_from(self, before: Optional["IpvsProxyRules"]) -> list[str]:
        """The commands that turn `before` (None: a fresh node) into this state, in the order
        syncProxyRules issues them: dummy addresses, virtual and real servers (of the Service
        ports whose state changed), set entries, the iptables restore, then the addresses and
        virtual servers no longer used (cleanLegacyService)."""
        ops: list[str] = []
        old_bind = set(before.bind_addresses) if before else set()
        new_bind = set(self.bind_addresses)
        ops.extend(f"ip addr add {ip}/{128 if ':' in ip else 32} dev {KUBE_IPVS0}"
                   for ip in self.bind_addresses if ip not in old_bind)
        old_states = before.states if before else {}
        old_vs: dict[tuple, IpvsService] = {}
        new_vs: dict[tuple, IpvsService] = {}
        for spn in old_states.keys() | self.states.keys():
            old, new = old_states.get(spn), self.states.get(spn)
            if old is new:
                continue                    # the same state object: untouched by this sync
            for vs in (old.services if old else ()):
                old_vs[_vs_key(vs)] = vs
            for vs in (new.services if new else ()):
                new_vs[_vs_key(vs)] = vs
        for key in sorted(new_vs, key=_vs_sort):
            ops.extend(_vs_ops(old_vs.get(key), new_vs[key]))
        old_members = before.members if before else {}
        for name, entries in self.members.items():
            was = old_members.get(name)
            if was is None:
                ops.append(f"ipset create {name} {set_type(name)} -exist")
                was = set()
            ops.extend(f"ipset del {name} {e}" for e in sorted(was - entries, key=_entry_key))
            ops.extend(f"ipset add {name} {e} -exist" for e in sorted(entries - was, key=_entry_key))
        ops.append("iptables-restore --noflush --counters")
        ops.extend(f"ip addr del {ip}/{128 if ':' in ip else 32} dev {KUBE_IPVS0}"
                   for ip in sorted(old_bind - new_bind, key=_ip))
        ops.extend(f"ipvsadm -D {_vs_flag(old_vs[key])}"
                   for key in sorted(old_vs.keys() - new_vs.keys(), key=_vs_sort))
        return ops


def _vs_sort(key: tuple) -> tuple:
    return (key[0], key[1].version, int(key[1]), key[2])


def _vs_ops(prev: Optional[IpvsService], vs: IpvsService) -> list[str]:
    """syncService + syncEndpoint for one virtual server."""
    ops = []
    flag = _vs_flag(vs)
    spec = f"-s {vs.scheduler}" + (f" -b {','.join(vs.sched_flags)}" if vs.sched_flags else "") + \
        (f" -p {vs.persistent}" if vs.persistent else "")
    if prev is None:
        ops.append(f"ipvsadm -A {flag} {spec}")
    elif (prev.scheduler, prev.persistent, prev.sched_flags) != (vs.scheduler, vs.persistent, vs.sched_flags):
        ops.append(f"ipvsadm -E {flag} {spec}")
    old_rs = {(r.ip, r.port): r for r in prev.reals} if prev else {}
    for r in vs.reals:
        was = old_rs.pop((r.ip, r.port), None)
        if was is None:
            ops.append(f"ipvsadm -a {flag} -r {_host(r.ip)}:{r.port} -m -w {r.weight}")
        elif was.weight != r.weight:
            ops.append(f"ipvsadm -e {flag} -r {_host(r.ip)}:{r.port} -m -w {r.weight}")
    ops.extend(f"ipvsadm -d {flag} -r {_host(ip)}:{port}" for ip, port in sorted(old_rs))
    return ops


def render(view: ProxyView, scheduler: str = DEFAULT_SCHEDULER, *, host_filter: bool = True,
           strict_arp: bool = False) -> IpvsProxyRules:
    """kube-proxy's first (full) sync for this view."""
    return IpvsProxier(scheduler, host_filter=host_filter, strict_arp=strict_arp).sync(view)


def local_addresses(ns, family: int) -> tuple[str, ...]:
    """The addresses of a node's interfaces other than kube-ipvs0 (what kube-proxy lists with
    GetAllLocalAddressesExcept / the NodePort address lookup)."""
    out = []
    for link, addr in ns.addresses():
        if link.name != KUBE_IPVS0 and addr.ip.version == family and str(addr.ip) not in out:
            out.append(str(addr.ip))
    return tuple(out)


def install(ctx) -> None:
    """podnet.proxy.install's hook: kube-proxy's IPVS mode on one node of a dataplane,
    one proxier per IP family (NewDualStackProxier), sharing kube-ipvs0 and the IPVS table."""
    from .model import proxy_view
    pcfg = ctx.cfg.proxy
    for family in ctx.cfg.families:
        view = proxy_view(ctx.dp.cluster, ctx.node.name, family)
        view.node.addresses[family] = local_addresses(ctx.ns, family)
        proxier = IpvsProxier(pcfg.ipvs_scheduler, host_filter=pcfg.ipvs_host_filter)
        proxier.sync(view).apply(ctx)
