"""Weave Net (weave-kube), as the guide's weave chapter shows it.

Connectivity: the `weave` Linux bridge on every node holds one address of the
single cluster-wide allocation range (IPALLOC_RANGE, 10.32.0.0/12 unless
`cni.options.ipallocRange` says otherwise), the one weave's `expose` takes
first. The runtime runs /etc/cni/net.d/10-weave.conflist (the `weave-net`
plugin, then portmap): the pod gets eth0 with its address and the range's
prefix (`10.32.0.0/12 dev eth0 proto kernel scope link`), a default route via
the bridge's address, and the node a `vethwepl<container id[:7]>` on the bridge.

Reachability ("bridged fastdp"): weave links the bridge to its Open vSwitch
datapath `datapath` with the veth pair vethwe-bridge@vethwe-datapath, and the
datapath to the other peers through its vxlan vport `vxlan-6784` (UDP 6784).
podnet has no ODP: `datapath` is a Linux bridge and `vxlan-6784` a kernel
VXLAN device (one VNI for the whole mesh, where ODP puts a per-peer-pair tunnel
id in it), so the simulator and the lab carry the same frames. What weave's
flood-and-learn converges to is written as static FDB entries: every pod's and
peer bridge's MAC on `weave` (behind vethwe-bridge when remote) and on
`datapath` (behind vxlan-6784 when remote), and on vxlan-6784 the node each MAC
lives on, plus one all-zero entry per peer for broadcasts (ARP). Learning is off
on the ports facing the overlay, so a broadcast that comes back round does not
move a MAC.

Relay: peers that cannot reach each other directly (`nodeNetwork.unreachable`)
reach each other through a peer that can reach both (the first such node in the
cluster's order), as weave's mesh routes around the gap with sleeve: the
sender's vxlan-6784 entries for the far peer's MACs point at the relay, the
relay's datapath sends them back out of vxlan-6784 (hairpin on that port only
on relay nodes) towards the far peer.

IPAM: weave's ring (ipam/ring): the range is split between the peers known at
consensus, CIDR-aligned halves by `subdivide`, peers sorted by peer name (a MAC
derived from the node name, or `cni.options.peerNames`); a node hands out the
lowest free address of its share (ipam/space), the range's network and
broadcast addresses excepted. The control plane's pod IPAM (`WeaveIPAM`) and
the weave router the plugin asks are the same allocator.

Masquerade: the WEAVE chain in nat POSTROUTING (weaver-no-masq-local ipset of
the node's own ranges first, then multicast RETURN and the two MASQUERADE rules
`weave expose` adds), and the filter FORWARD rules weave puts at the top (the
variant without weave-npc: NetworkPolicy is podnet.policy's business).
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Optional

from ..api.objects import Node, Pod
from ..control.ipam import PodIPAM
from ..dataplane.topology import container_id
from ..errors import AllocationError, InputError
from ..linux.state import FdbEntry, Link, Route, VxlanInfo, stable_mac
from .base import CNISolution
from .plugins import register
from .plugins.netlink import add_address, add_route, delete_link, link_set_up, set_sysctl, setup_veth
from .spec import Call, CNIError, Code, IPConfig, Plugin, Result, fail

DEFAULT_RANGE = "10.32.0.0/12"
BRIDGE = "weave"
DATAPATH = "datapath"
BRIDGE_IF = "vethwe-bridge"
DATAPATH_IF = "vethwe-datapath"
VXLAN_PORT = 6784
VXLAN_IF = f"vxlan-{VXLAN_PORT}"
VNI = 1                     # podnet's: fastdp's tunnel id names the peer pair instead
MTU = 1376                  # weave's default (GCE's 1460 minus VXLAN and ESP overhead)
VXLAN_OVERHEAD = 50         # ODP's vport has MTU 65535; a kernel VXLAN takes its underlay's less this
NO_MASQ_LOCAL = "weaver-no-masq-local"
EXPOSE = "weave:expose"     # the owner weave records for the bridge's address
ROUTER_STATE = "/run/podnet/weave-router.json"
ZERO_MAC = "00:00:00:00:00:00"
_PEER_NAME = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


# ----------------------------------------------------------------------------- the ring

def allocation_range(cfg) -> ipaddress.IPv4Network:
    text = str((cfg.cni.options or {}).get("ipallocRange", DEFAULT_RANGE))
    try:
        net = ipaddress.ip_network(text)
    except ValueError:
        raise InputError(f"not a CIDR: {text!r}", obj="PodnetConfig", field="cni.options.ipallocRange") from None
    if net.version != 4 or net.prefixlen > 30:
        raise InputError(f"weave allocates from an IPv4 range of at least 4 addresses, not {net}",
                         obj="PodnetConfig", field="cni.options.ipallocRange")
    return net


def peer_name(cfg, node: str) -> str:
    """The node's weave peer name: `cni.options.peerNames[node]`, else a MAC from its name."""
    names = (cfg.cni.options or {}).get("peerNames") or {}
    if not isinstance(names, dict):
        raise InputError("expected a map of node name to peer name", obj="PodnetConfig",
                         field="cni.options.peerNames")
    name = names.get(node)
    if name is None:
        return stable_mac("weave-peer", node)
    if not isinstance(name, str) or not _PEER_NAME.fullmatch(name.lower()):
        raise InputError(f"not a peer name (a MAC like 1a:32:cd:c3:1e:1d): {name!r}", obj="PodnetConfig",
                         field=f"cni.options.peerNames.{node}")
    return name.lower()


class WeaveRing:
    """The allocation range split among the peers as `Ring.ClaimForPeers` does it."""

    def __init__(self, cidr: ipaddress.IPv4Network, peers: list[tuple[str, str]]):
        """`peers`: (peer name, node name) pairs; consensus sorts them by peer name."""
        self.cidr = cidr
        self.start = int(cidr.network_address)
        self.end = int(cidr.broadcast_address) + 1
        self.peers = sorted(peers)
        tokens: list[tuple[int, str]] = []
        self._subdivide(self.start, self.end, [node for _, node in self.peers], tokens)
        tokens.sort()
        # each entry owns [its token, the next token): the ring's ranges
        self.ranges: dict[str, list[tuple[int, int]]] = {}
        for i, (token, node) in enumerate(tokens):
            nxt = tokens[i + 1][0] if i + 1 < len(tokens) else self.end
            self.ranges.setdefault(node, []).append((token, nxt))

    def _subdivide(self, lo: int, hi: int, peers: list[str], out: list) -> None:
        share = hi - lo
        if share == 0 or not peers:
            return
        if share == 1 or len(peers) == 1:
            out.append((lo, peers[0]))
            return
        mid = lo + share // 2
        self._subdivide(lo, mid, peers[:len(peers) // 2], out)
        self._subdivide(mid + share % 2, hi, peers[len(peers) // 2:], out)

    def owned(self, node: str) -> list[tuple[int, int]]:
        return self.ranges.get(node, [])

    def cidrs(self, node: str) -> list[ipaddress.IPv4Network]:
        """The node's ranges as CIDRs (address.NewCIDRs(Merge(ranges)))."""
        merged: list[list[int]] = []
        for lo, hi in sorted(self.owned(node)):
            if merged and merged[-1][1] == lo:
                merged[-1][1] = hi
            else:
                merged.append([lo, hi])
        out = []
        for lo, hi in merged:
            out += ipaddress.summarize_address_range(ipaddress.IPv4Address(lo), ipaddress.IPv4Address(hi - 1))
        return out

    def owner(self, ip) -> Optional[str]:
        value = int(ip)
        for node, ranges in self.ranges.items():
            if any(lo <= value < hi for lo, hi in ranges):
                return node
        return None

    def lowest_free(self, node: str, used, floor: int = 0) -> Optional[ipaddress.IPv4Address]:
        return lowest_free(self.cidr, self.owned(node), used, floor)


def lowest_free(cidr: ipaddress.IPv4Network, ranges, used, floor: int = 0) -> Optional[ipaddress.IPv4Address]:
    """space.Allocate over the subnet's host range: the lowest address of `ranges` ([lo, hi)
    integer pairs) not in `used`, never the network or broadcast address of `cidr`
    (`floor`: an address below which all are known to be used)."""
    first, last = max(int(cidr.network_address) + 1, floor), int(cidr.broadcast_address) - 1
    for lo, hi in sorted(ranges):
        value = max(lo, first)
        while value < min(hi, last + 1):
            ip = ipaddress.IPv4Address(value)
            if ip not in used:
                return ip
            value += 1
    return None


def ring_for(cfg, node_names: list[str]) -> WeaveRing:
    return WeaveRing(allocation_range(cfg), [(peer_name(cfg, n), n) for n in node_names])


class WeaveIPAM(PodIPAM):
    """The control plane's pod IPAM for weave: the ring, the bridge address first on every node."""

    name = "weave"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.ip_family != "ipv4":
            raise InputError(f"weave allocates IPv4 addresses only, the cluster is {cfg.ip_family}",
                             obj="Cluster", field="networking.ipFamily")
        self.cidr = allocation_range(cfg)
        self.used: dict = {}                     # ip -> owner (pod key or weave:expose/<node>)
        self.bridges: dict[str, ipaddress.IPv4Address] = {}
        self._ring: Optional[WeaveRing] = None
        self._node_names: list[str] = [n.name for n in cfg.nodes]
        self._floor: dict[str, int] = {}         # node -> every address below is taken

    # the cluster tells its IPAM its nodes (control.ipam.ipam_for); a kind config already lists them
    @property
    def nodes(self) -> list:
        return self._node_names

    @nodes.setter
    def nodes(self, nodes) -> None:
        names = [n if isinstance(n, str) else n.name for n in nodes]
        if names:
            self._node_names = names
            self._ring = None

    @property
    def ring(self) -> WeaveRing:
        if self._ring is None:
            self._ring = ring_for(self.cfg, self._node_names)
        return self._ring

    def _expose_all(self) -> None:
        """`weave expose` on every node (before its first pod), after the recorded addresses."""
        for name in self._node_names:
            if name not in self.bridges:
                ip = self.ring.lowest_free(name, self.used)
                if ip is None:
                    raise AllocationError(f"weave's ring leaves node {name} no address for its bridge",
                                          obj=f"Node {name}", field="weave")
                self.bridges[name] = ip
                self.used[ip] = f"{EXPOSE}/{name}"

    def bridge_ip(self, node: str) -> ipaddress.IPv4Address:
        self._expose_all()
        return self.bridges[node]

    def reserve(self, pod: Pod, node: Optional[Node]) -> None:
        for ip in pod.pod_ips:
            if ip.version != 4 or ip not in self.cidr:
                continue
            owner = self.used.get(ip)
            if owner is not None and owner != pod.key:
                raise AllocationError(f"pod IP {ip} is already used by {owner}", obj=f"Pod {pod.key}",
                                      field="status.podIPs")
            self.used[ip] = pod.key

    def allocate(self, pod: Pod, node: Node) -> list:
        self._expose_all()
        ip = self.ring.lowest_free(node.name, self.used, self._floor.get(node.name, 0))
        if ip is None:
            cidrs = ", ".join(map(str, self.ring.cidrs(node.name))) or "none"
            raise AllocationError(f"no free address in weave's ring for node {node.name} (its ranges: {cidrs})",
                                  obj=f"Pod {pod.key}", field="status.podIPs")
        self.used[ip] = pod.key
        self._floor[node.name] = int(ip) + 1
        return [ip]

    def release(self, pod: Pod, node: Optional[Node]) -> None:
        for ip in pod.pod_ips:
            if self.used.get(ip) == pod.key:
                del self.used[ip]
                self._floor.clear()


def cluster_ipam(cluster) -> WeaveIPAM:
    """The allocator the cluster used, or (another CNI's cluster) one replayed from its pods."""
    ipam = cluster.ipam
    if isinstance(ipam, WeaveIPAM):
        return ipam
    ipam = WeaveIPAM(cluster.config)
    ipam.nodes = cluster.nodes
    for pod in cluster.pods:
        if not pod.host_network:
            ipam.reserve(pod, cluster.find_node(pod.node_name))
    return ipam


# ----------------------------------------------------------------------------- the CNI plugin

def veth_names(cid: str) -> tuple[str, str]:
    """net.AttachContainer: "vethwepl" + the id cut to fit IFNAMSIZ, and its "vethwepg" peer."""
    short = cid[:15 - len("vethwepl")]
    return "vethwepl" + short, "vethwepg" + short


class WeaveNetPlugin(Plugin):
    """The `weave-net` CNI plugin (plugin/net/cni.go): weave's IPAM via the router, a veth on
    the bridge, the bridge's address as the gateway, a default route via it."""

    type = "weave-net"

    @staticmethod
    def _conf(call: Call) -> dict:
        conf = {"bridge": BRIDGE, **call.conf}
        if conf.get("isGateway"):
            raise fail("Gateway functionality not supported")
        if conf.get("ipMasq"):
            raise fail("IP Masquerading functionality not supported")
        return conf

    @staticmethod
    def _router(call: Call) -> dict:
        text = call.host.ns.files.get(ROUTER_STATE)
        if text is None:
            raise fail("unable to allocate IP address: Post \"http://127.0.0.1:6784/ip/"
                       f"{call.container_id}\": dial tcp 127.0.0.1:6784: connect: connection refused")
        return json.loads(text)

    def _allocate(self, call: Call, conf: dict) -> ipaddress.IPv4Interface:
        """The router's `POST /ip/<container id>`: the container's address if it has one,
        a claimed one (args.cni.ips) or the lowest free address of the node's ranges."""
        router = self._router(call)
        cidr = ipaddress.ip_network(router["range"])
        allocations: dict = router.setdefault("allocations", {})
        ip = allocations.get(call.container_id)
        requested = ((conf.get("args") or {}).get("cni") or {}).get("ips") if isinstance(conf.get("args"), dict) \
            else None
        used = {ipaddress.ip_address(v) for v in allocations.values()} | {ipaddress.ip_interface(router["bridge"]).ip}
        if requested:
            ip = str(ipaddress.ip_interface(requested[0]).ip)
            if ipaddress.ip_address(ip) in used and allocations.get(call.container_id) != ip:
                raise fail(f"unable to allocate IP address: address {ip} is already owned")
        if ip is None:
            free = lowest_free(cidr, [tuple(r) for r in router["ranges"]], used)
            if free is None:
                raise fail(f"unable to allocate IP address: no free address in {router['ranges']}")
            ip = str(free)
        allocations[call.container_id] = ip
        call.host.ns.files[ROUTER_STATE] = json.dumps(router, indent=2, sort_keys=True) + "\n"
        return ipaddress.ip_interface(f"{ip}/{cidr.prefixlen}")

    def add(self, call: Call) -> Result:
        conf = self._conf(call)
        host = call.host.ns
        br = host.links.get(conf["bridge"])
        if br is None or br.kind != "bridge":
            raise fail(f'bridge "{conf["bridge"]}" not present; did you launch weave?')
        if call.ipam.get("type"):
            ipam = call.delegate(call.ipam["type"], "ADD")
            address = ipam.ips[0].address
        else:
            address = self._allocate(call, conf)
        # findBridgeIP: the bridge's address in the pod's subnet, else its first one
        gw = next((a.ip for a in br.addresses if a.ip in address.network), None) or \
            (br.addresses[0].ip if br.addresses else None)
        if gw is None:
            raise fail(f'Bridge "{br.name}" has no IP addresses')
        sandbox = call.sandbox()
        name, _ = veth_names(call.container_id)
        mtu = int(conf.get("mtu") or 0) or br.mtu
        host_veth, cont = setup_veth(call, sandbox, mtu, host_name=name)
        host_veth.master = br.name
        host_veth.hairpin = bool(conf.get("hairpinMode"))
        host_veth.alias = f"weave {call.container_id[:12]}"
        # SetupGuest + setupRoutes: the address, and (no routes from IPAM) a default route via the
        # bridge, after a link-scope /32 to the bridge when it is outside the pod's subnet
        link_set_up(sandbox, cont)
        add_address(sandbox, cont, address)
        if gw not in address.network:
            add_route(sandbox, Route(ipaddress.ip_network(f"{gw}/32"), call.ifname, scope="link"))
        add_route(sandbox, Route(ipaddress.ip_network("0.0.0.0/0"), call.ifname, via=gw))
        set_sysctl(sandbox, f"net.ipv4.conf.{call.ifname}.arp_notify", "1")
        # weave's IPAM answers in the 0.2.0 shape, so the result carries no interfaces
        return Result(call.cni_version, ips=[IPConfig(address, gw)])

    def delete(self, call: Call) -> None:
        sandbox = call.sandbox_if_exists() if call.netns else None
        if sandbox is not None and call.ifname in sandbox.links:
            delete_link(call.state, sandbox, call.ifname)
        if call.ipam.get("type"):
            call.delegate(call.ipam["type"], "DEL")
            return
        text = call.host.ns.files.get(ROUTER_STATE)
        if text:
            router = json.loads(text)
            router.get("allocations", {}).pop(call.container_id, None)
            call.host.ns.files[ROUTER_STATE] = json.dumps(router, indent=2, sort_keys=True) + "\n"

    def check(self, call: Call) -> None:
        sandbox = call.sandbox()
        if call.ifname not in sandbox.links:
            raise CNIError(Code.INTERNAL, f'failed to find "{call.ifname}" in the container')


register(WeaveNetPlugin.type, WeaveNetPlugin)


# ----------------------------------------------------------------------------- the solution

def forward_rules(bridge: str = BRIDGE) -> list[str]:
    """ConfigureIPTables without weave-npc: the filter FORWARD rules weave keeps at the top."""
    return [f"-i {bridge} -o {bridge} -j ACCEPT",
            f"-o {bridge} -j WEAVE-EXPOSE",
            f"-i {bridge} ! -o {bridge} -j ACCEPT",
            f"-o {bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"]


def nat_rules(cidr) -> list[str]:
    """The WEAVE chain: no SNAT to local containers (NoMasqLocal), then exposeNAT's three rules."""
    return [f'-m set --match-set {NO_MASQ_LOCAL} dst -m comment --comment "Prevent SNAT to locally running '
            'containers" -j RETURN',
            f"-s {cidr} -d 224.0.0.0/4 -j RETURN",
            f"! -s {cidr} -d {cidr} -j MASQUERADE",
            f"-s {cidr} ! -d {cidr} -j MASQUERADE"]


CONTROL_PORT_RULE = ('-d 127.0.0.1/32 -p tcp -m tcp --dport 6784 -m addrtype ! --src-type LOCAL -m conntrack '
                     '! --ctstate RELATED,ESTABLISHED -m comment --comment "Block non-local access to Weave Net '
                     'control port" -j DROP')


def relays(cluster) -> dict[tuple[str, str], Optional[str]]:
    """(a, b) -> the node that carries a's traffic to b when they cannot reach each other
    directly: the first node in the cluster's order that reaches both (None: no such node)."""
    blocked = {frozenset(p) for p in cluster.config.unreachable}
    names = [n.name for n in cluster.nodes]
    out: dict[tuple[str, str], Optional[str]] = {}
    for pair in blocked:
        if len(pair) != 2 or not pair <= set(names):
            continue
        a, b = sorted(pair)
        via = next((n for n in names if n not in pair and frozenset((a, n)) not in blocked
                    and frozenset((b, n)) not in blocked), None)
        out[(a, b)] = out[(b, a)] = via
    return out


class Weave(CNISolution):
    name = "weave"
    conflist_name = "10-weave.conflist"

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.cni.mode == "sleeve":
            raise InputError("weave's sleeve overlay (encapsulation in the weave router, a userspace "
                             "process) is not modelled; use mode fastdp (partial connectivity is relayed "
                             "through a peer there too)", obj="PodnetConfig", field="cni.mode")
        self.cidr = allocation_range(cfg)
        # weave's default WEAVE_MTU; an explicit cni.mtu other than the 1500 default wins
        self.mtu = cfg.cni.mtu if cfg.cni.mtu != 1500 else MTU

    def conflist(self, ctx) -> dict:
        """What weave-kube's launch.sh writes."""
        return {"cniVersion": "0.3.0", "name": "weave", "plugins": [
            {"name": "weave", "type": "weave-net", "hairpinMode": True},
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}]}

    def setup_node(self, ctx) -> None:
        ipam = cluster_ipam(ctx.dp.cluster)
        node = ctx.node.name
        ring = ipam.ring
        ns = ctx.ns
        node_ip = ctx.node.internal_ip_of(4)
        relay_for = {k: v for k, v in relays(ctx.dp.cluster).items() if v == node}
        # the bridge, the datapath and the overlay port
        br = ns.add_link(Link(BRIDGE, "bridge", mtu=self.mtu))
        br.add_address(ipaddress.ip_interface(f"{ipam.bridge_ip(node)}/{self.cidr.prefixlen}"))
        # the ODP datapath only switches frames between its vports: it holds no address and
        # takes no part in ARP (as a Linux bridge, the stand-in would answer for the node's
        # addresses and draw a peer's replies away from the weave bridge)
        ns.add_link(Link(DATAPATH, "bridge", mtu=self.mtu, noarp=True))
        a, b = ctx.dp.state.connect_veth(ns, BRIDGE_IF, ns, DATAPATH_IF, mtu=self.mtu)
        a.master, a.learning = BRIDGE, False
        b.master = DATAPATH
        vx = ns.add_link(Link(VXLAN_IF, "vxlan", mtu=ns.links["eth0"].mtu - VXLAN_OVERHEAD, master=DATAPATH,
                              vxlan=VxlanInfo(VNI, local=node_ip, dstport=VXLAN_PORT, learning=False,
                                              dev="eth0")))
        vx.learning = False
        vx.hairpin = bool(relay_for)            # a relay sends frames back out towards the far peer
        ns.sysctls[f"net.ipv6.conf.{BRIDGE}.accept_ra"] = "0"
        # the router: its share of the ring, the addresses it already handed out
        owned = {container_id(p): str(p.pod_ip) for p in ctx.dp.cluster.pods_on(node)
                 if not p.host_network and p.pod_ip is not None and p.pod_ip in self.cidr and not p.terminal}
        ns.files[ROUTER_STATE] = json.dumps({
            "range": str(self.cidr), "peer": peer_name(self.cfg, node),
            "ranges": [list(r) for r in ring.owned(node)],
            "bridge": f"{ipam.bridge_ip(node)}/{self.cidr.prefixlen}", "allocations": owned},
            indent=2, sort_keys=True) + "\n"
        self.write_conflist(ctx)
        # iptables and the no-masq-local ipset
        v4 = ctx.iptables
        v4.chain("filter", "WEAVE-EXPOSE")
        for rule in forward_rules():
            v4.jump("filter", "FORWARD", rule, prepend=True)
        v4.append("filter", "WEAVE-EXPOSE", f"-d {self.cidr} -j ACCEPT")
        v4.append("filter", "INPUT", CONTROL_PORT_RULE)
        v4.chain("nat", "WEAVE")
        v4.jump("nat", "POSTROUTING", "-j WEAVE")
        for rule in nat_rules(self.cidr):
            v4.append("nat", "WEAVE", rule)
        ctx.ipsets.append(f"create {NO_MASQ_LOCAL} hash:net family inet hashsize 1024 maxelem 65536")
        ctx.ipsets += [f"add {NO_MASQ_LOCAL} {c}" for c in ring.cidrs(node)]

    def add_pod(self, ctx, pod, pod_ns) -> None:
        self.runtime_add(ctx, pod, pod_ns, pin_ips=False)

    def connect_nodes(self, dp) -> None:
        """The converged MAC tables: where every pod's and bridge's MAC lives."""
        cluster = dp.cluster
        cluster_cidr = self.cfg.pod_subnet_of(4)
        if cluster_cidr is not None and not self.cidr.subnet_of(cluster_cidr):
            dp.notes.append(f"weave: IPALLOC_RANGE {self.cidr} is outside kube-proxy's cluster CIDR {cluster_cidr}, "
                            f"so kube-proxy masquerades pod -> Service traffic (set podSubnet: {self.cidr}, or "
                            f"cni.options.ipallocRange to the podSubnet, to match them)")
        names = [n.name for n in cluster.nodes]
        stations: dict[str, list[tuple[str, str]]] = {n: [] for n in names}    # node -> [(mac, local port)]
        for n in names:
            ns = dp.node_netns(n)
            stations[n].append((ns.links[BRIDGE].mac, ""))
            for link in sorted(ns.links.values(), key=lambda l: l.name):
                if link.master == BRIDGE and link.name.startswith("vethwepl") and link.peer:
                    peer = dp.state.veth_peer(ns, link)
                    if peer is not None:
                        stations[n].append((peer[1].mac, link.name))
        hops = relays(cluster)
        ips = {n.name: n.internal_ip_of(4) for n in cluster.nodes}
        for n in names:
            ns = dp.node_netns(n)
            fdb: list[FdbEntry] = []
            for mac, port in stations[n]:
                if port:
                    fdb.append(FdbEntry(mac, port, master=BRIDGE, static=True))
                fdb.append(FdbEntry(mac, DATAPATH_IF, master=DATAPATH, static=True))
            for peer in names:
                if peer == n:
                    continue
                via = hops.get((n, peer), peer) if (n, peer) in hops else peer
                if via is None or ips.get(via) is None:
                    continue                       # cut off: weave has no path to that peer
                for mac, _ in stations[peer]:
                    fdb.append(FdbEntry(mac, BRIDGE_IF, master=BRIDGE, static=True))
                    fdb.append(FdbEntry(mac, VXLAN_IF, master=DATAPATH, static=True))
                    fdb.append(FdbEntry(mac, VXLAN_IF, dst=ips[via], self_=True, permanent=True))
            for peer in names:
                if peer != n and (n, peer) not in hops and ips.get(peer) is not None:
                    fdb.append(FdbEntry(ZERO_MAC, VXLAN_IF, dst=ips[peer], self_=True, permanent=True))
            ns.fdb += fdb
            ns.invalidate()
