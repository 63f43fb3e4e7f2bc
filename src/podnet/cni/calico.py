"""Calico, as the guide's calico chapter shows it: the calico CNI plugin, calico-ipam,
Felix's routes and NAT rules, and BIRD's routes to the peers' blocks.

Connectivity (the CNI side): calico-node's install-cni writes
/etc/cni/net.d/10-calico.conflist (network "k8s-pod-network": the `calico`
plugin with calico-ipam, then portmap and bandwidth). For each sandbox the
`calico` plugin (cni-plugin pkg/dataplane/linux) makes a veth: eth0 in the pod
with the pod IP as a /32 (/128), `169.254.1.1 dev eth0 scope link` and
`default via 169.254.1.1 dev eth0` (IPv6: default via the host end's link-local
fe80::ecee:eeff:feee:eeee); the host end is named cali + 11 hex digits of
sha1("<namespace>.<pod>") (VethNameForWorkload), has the MAC ee:ee:ee:ee:ee:ee
and no address, and gets proxy_arp=1, neigh proxy_delay=0, forwarding=1 and
route_localnet=1, so the node answers the pod's ARP for 169.254.1.1 with its own
MAC; the node routes `<pod IP> dev caliXXXX scope link`.

Addresses come from calico-ipam's blocks (podnet.cni.calico_ipam): /26 blocks of
the pod subnet with affinity to a node.

Reachability (cni.mode):

* bgp: BIRD on every node advertises its blocks; peers install
  `<block> via <node IP> dev eth0 proto bird` (across underlay subnets the next hop
  is resolved recursively, via the subnet's router), and each node a
  `blackhole <block> proto bird` for its own blocks, under the pods' /32 routes.
* ipip: the same routes through tunl0 (an ipip device holding the node's tunnel
  address, MTU 1480): `<block> via <node IP> dev tunl0 proto bird onlink`.
* vxlan: Felix alone (no BGP): vxlan.calico (VNI 4096, UDP 4789, local = the
  node IP, MTU 1450, its own MAC, the tunnel address /32); for every peer the
  neighbour `<peer tunnel IP> lladdr <peer VTEP MAC> PERMANENT`, the FDB entry
  `<peer VTEP MAC> dst <peer node IP> self permanent` and
  `<block> via <peer tunnel IP> dev vxlan.calico proto 80 onlink`;
  the blackhole is Felix's too (`proto 80`).
* ipip-crosssubnet / vxlan-crosssubnet: encapsulate only to peers in another
  underlay subnet (nodeNetwork.subnets); peers in the node's own subnet are
  routed directly via eth0.

Masquerade (Felix): the ipsets cali40masq-ipam-pools (pools with natOutgoing) and
cali40all-ipam-pools (every pool), nat POSTROUTING -> cali-POSTROUTING ->
cali-fip-snat, cali-nat-outgoing (MASQUERADE pool sources leaving the pools,
--random-fully) and, in tunnel modes, a MASQUERADE of host traffic that leaves the
tunnel device with another local address. Rules carry Felix's "cali:<hash>"
comments, computed as Felix computes them (the guide's values come out).
Felix's filter chains (policy) are not rendered.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Optional

from ..control.nodes import subnet_of_node
from ..errors import InputError
from ..linux.state import FdbEntry, Link, Neighbour, Route, VxlanInfo, stable_mac
from .base import CNISolution
from .calico_ipam import NETWORK_NAME, CalicoIPAM, dataplane_datastore, tunnel_kind
from .plugins import register
from .plugins.netlink import (add_address, delete_link, host_prefix, link_set_up, set_sysctl, setup_veth)
from .spec import Call, Interface, Plugin, Result, fail

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = ipaddress.ip_address("169.254.1.1")
GATEWAY_V6 = ipaddress.ip_address("fe80::ecee:eeff:feee:eeee")     # EUI-64 link-local of ee:ee:ee:ee:ee:ee
IPIP_DEVICE = "tunl0"
VXLAN_DEVICE = {4: "vxlan.calico", 6: "vxlan-v6.calico"}
VXLAN_VNI = 4096
VXLAN_PORT = 4789
OVERHEAD = {("ipip", 4): 20, ("vxlan", 4): 50, ("vxlan", 6): 70}
FELIX_PROTO = "80"                  # dataplanedefs: the protocol number Felix's own routes carry
BIRD_PROTO = "bird"
IPV6_METRIC = 1024                  # the kernel's default metric for IPv6 routes
IPSET_PREFIX = {4: "cali40", 6: "cali60"}
HASH_LENGTH = 16


def veth_name_for_workload(namespace: str, pod: str, prefix: str = "cali") -> str:
    """VethNameForWorkload: the prefix and the first 11 hex digits of sha1("<namespace>.<pod>")."""
    return prefix + hashlib.sha1(f"{namespace}.{pod}".encode()).hexdigest()[:11]


# ============================================================================ Felix's iptables rules

@dataclass
class FelixRule:
    """One rule as Felix builds it: its match fragments (in Felix's render order, which
    iptables-save prints unchanged), an optional out-interface, the action."""
    match: str = ""
    action: str = ""                # "--jump X [options]"
    out_iface: str = ""

    def felix_text(self) -> str:
        """What Rule.RenderAppend writes after "-A <chain> HASH"."""
        parts = [f"--out-interface {self.out_iface}"] if self.out_iface else []
        if self.match:
            parts.append(self.match)
        if self.action:
            parts.append(self.action)
        return " ".join(parts)

    def save_text(self, rule_hash: str) -> str:
        """The rule as iptables-save prints it (interfaces first, then Felix's comment)."""
        parts = [f"-o {self.out_iface}"] if self.out_iface else []
        parts.append(f'-m comment --comment "cali:{rule_hash}"')
        if self.match:
            parts.append(self.match)
        if self.action:
            parts.append(self.action.replace("--jump ", "-j ", 1))
        return " ".join(parts)


def rule_hashes(chain: str, rules: list[FelixRule]) -> list[str]:
    """Chain.RuleHashes: sha224 chained over the chain name and each rendered rule,
    URL-safe base64, 16 characters."""
    digest = hashlib.sha224(chain.encode()).digest()
    out = []
    for rule in rules:
        s = hashlib.sha224()
        s.update(digest)
        s.update(f"-A {chain} HASH {rule.felix_text()}".encode())
        digest = s.digest()
        out.append(base64.urlsafe_b64encode(digest).decode().rstrip("=")[:HASH_LENGTH])
    return out


def program_chain(builder, table: str, chain: str, rules: list[FelixRule]) -> None:
    builder.chain(table, chain)
    for rule, h in zip(rules, rule_hashes(chain, rules)):
        builder.append(table, chain, rule.save_text(h))


def hook_chain(builder, table: str, builtin: str, target: str) -> None:
    """Felix's insert-mode hook: its jump at the top of the kernel chain."""
    rule = FelixRule(action=f"--jump {target}")
    builder.jump(table, builtin, rule.save_text(rule_hashes(builtin, [rule])[0]), prepend=True)


def ipset_text(name: str, family: int, members: list) -> str:
    """`ipset save` of a Felix hash:net set."""
    lines = [f"create {name} hash:net family {'inet' if family == 4 else 'inet6'} hashsize 1024 maxelem 1048576"]
    lines += [f"add {name} {m}" for m in members]
    return "\n".join(lines)


# ============================================================================ the CNI plugin

class CalicoPlugin(Plugin):
    """The `calico` binary (orchestrator k8s): a routed veth per pod, addresses from IPAM."""

    type = "calico"

    def add(self, call: Call) -> Result:
        args = call.load_args(["K8S_POD_NAMESPACE", "K8S_POD_NAME"])
        namespace, pod = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
        if not namespace or not pod:
            raise fail("calico: CNI_ARGS must name the pod (K8S_POD_NAMESPACE, K8S_POD_NAME)")
        return call.with_ipam(call.ipam_type(), lambda result: self._add(call, result, namespace, pod))

    def _add(self, call: Call, result: Result, namespace: str, pod: str) -> Result:
        if not result.ips:
            raise fail("calico: IPAM returned no IP addresses")
        host = call.host.ns
        sandbox = call.sandbox()
        name = veth_name_for_workload(namespace, pod)
        if name in host.links:                        # a stale veth of an earlier sandbox
            delete_link(call.state, host, name)
        mtu = int(call.conf.get("mtu") or 1500)
        host_veth, cont = setup_veth(call, sandbox, mtu, host_name=name)
        host_veth.mac = HOST_MAC
        link_set_up(sandbox, cont)
        families = sorted({ipc.version for ipc in result.ips})
        settings = call.conf.get("container_settings") or {}
        forwarding = "1" if isinstance(settings, dict) and settings.get("allow_ip_forwarding") else "0"
        if 4 in families:
            sandbox.add_route(Route(host_prefix(GATEWAY_V4), call.ifname, scope="link"))
            sandbox.add_route(Route(ipaddress.ip_network("0.0.0.0/0"), call.ifname, via=GATEWAY_V4))
            set_sysctl(sandbox, "net.ipv4.ip_forward", forwarding)
        if 6 in families:
            # the host end's link-local address (the kernel derives it from the MAC) is the next hop
            host_veth.add_address(f"{GATEWAY_V6}/64", "link")
            sandbox.add_route(Route(ipaddress.ip_network("::/0"), call.ifname, via=GATEWAY_V6, metric=IPV6_METRIC))
            for key in ("all", "default", "lo", call.ifname):
                set_sysctl(sandbox, f"net.ipv6.conf.{key}.disable_ipv6", "0")
            set_sysctl(sandbox, "net.ipv6.conf.all.forwarding", forwarding)
        for ipc in result.ips:
            ipc.address = ipaddress.ip_interface(f"{ipc.address.ip}/{ipc.address.ip.max_prefixlen}")
            add_address(sandbox, cont, ipc.address)
        if 4 in families:
            for key, value in ((f"net.ipv4.conf.{name}.route_localnet", "1"),
                               (f"net.ipv4.neigh.{name}.proxy_delay", "0"),
                               (f"net.ipv4.conf.{name}.proxy_arp", "1"),
                               (f"net.ipv4.conf.{name}.forwarding", "1")):
                set_sysctl(host, key, value)
        if 6 in families:
            for key, value in ((f"net.ipv6.conf.{name}.disable_ipv6", "0"), (f"net.ipv6.conf.{name}.proxy_ndp", "1"),
                               (f"net.ipv6.conf.{name}.forwarding", "1")):
                set_sysctl(host, key, value)
        set_sysctl(host, f"net.ipv6.conf.{name}.accept_ra", "0")
        for ipc in result.ips:                          # SetupRoutes
            dst = host_prefix(ipc.address.ip)
            if not any(r.dst == dst and r.dev == name and r.table == 254 for r in host.routes):
                host.add_route(Route(dst, name, scope="link") if dst.version == 4
                               else Route(dst, name, metric=IPV6_METRIC))
        result.interfaces = [Interface(name, HOST_MAC)]
        for ipc in result.ips:
            ipc.interface = None
        if call.dns.is_set():
            result.dns = call.dns
        sandbox.invalidate()
        host.invalidate()
        return result

    def delete(self, call: Call) -> None:
        call.delegate(call.ipam_type(), "DEL")
        sandbox = call.sandbox_if_exists() if call.netns else None
        if sandbox is not None:
            delete_link(call.state, sandbox, call.ifname)

    def check(self, call: Call) -> None:
        call.delegate(call.ipam_type(), "CHECK")
        prev = call.prev_result()
        if prev is None:
            raise fail("calico: Required prevResult missing")
        sandbox = call.sandbox()
        link = sandbox.links.get(call.ifname)
        if link is None:
            raise fail(f"calico: container interface {call.ifname} not found")
        for ipc in prev.ips:
            if not any(a.ip == ipc.address.ip for a in link.addresses):
                raise fail(f"calico: {ipc.address.ip} is not on {call.ifname}")


register("calico", CalicoPlugin)
register("calico-ipam", "podnet.cni.calico_ipam:CalicoIPAMPlugin")


# ============================================================================ calico-node (Felix, BIRD)

class Calico(CNISolution):
    name = "calico"
    conflist_name = "10-calico.conflist"

    @property
    def mode(self) -> str:
        return self.cfg.cni.mode or "bgp"

    @property
    def encap(self) -> Optional[str]:
        return tunnel_kind(self.mode)

    @property
    def cross_subnet(self) -> bool:
        return self.mode.endswith("-crosssubnet")

    def _options(self) -> dict:
        opts = dict(self.cfg.cni.options or {})
        nat = opts.get("natOutgoing", True)
        if not isinstance(nat, bool):
            raise InputError(f"expected true or false, got {nat!r}", obj="PodnetConfig", field="cni.options.natOutgoing")
        opts["natOutgoing"] = nat
        return opts

    def _encap_for(self, family: int) -> Optional[str]:
        """IPIP exists for IPv4 only; an IPv6 pool is routed natively in IPIP modes."""
        kind = self.encap
        return None if kind == "ipip" and family == 6 else kind

    @staticmethod
    def datastore(dp) -> CalicoIPAM:
        """The dataplane's Calico datastore (what calico-ipam hands out from)."""
        return dataplane_datastore(dp)

    def veth_mtu(self, ctx) -> int:
        """The pods' MTU: the configured MTU less the encapsulation's headroom (Calico's auto-MTU)."""
        family = 4 if self.cfg.pod_subnet_of(4) is not None else 6
        kind = self._encap_for(family)
        return self.cfg.cni.mtu - (OVERHEAD.get((kind, family), 0) if kind else 0)

    def conflist(self, ctx) -> dict:
        """calico-node's install-cni template (the manifests' cni_network_config)."""
        ipam = {"type": "calico-ipam"}
        if self.cfg.pod_subnet_of(6) is not None:
            ipam["assign_ipv6"] = "true"
            if self.cfg.pod_subnet_of(4) is None:
                ipam["assign_ipv4"] = "false"
        return {"name": NETWORK_NAME, "cniVersion": "0.3.1", "plugins": [
            {"type": "calico", "log_level": "info", "log_file_path": "/var/log/calico/cni/cni.log",
             "datastore_type": "kubernetes", "nodename": ctx.node.name, "mtu": self.veth_mtu(ctx),
             "ipam": ipam, "policy": {"type": "k8s"},
             "kubernetes": {"kubeconfig": "/etc/cni/net.d/calico-kubeconfig"}},
            {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
            {"type": "bandwidth", "capabilities": {"bandwidth": True}}]}

    # ------------------------------------------------------------ calico-node starts
    def setup_node(self, ctx) -> None:
        opts = self._options()
        ds = self.datastore(ctx.dp)
        ds.start(ctx.node)
        ns = ctx.ns
        eth0 = ns.links["eth0"]
        tunnels: dict[int, str] = {}
        for family in self.cfg.families:
            kind = self._encap_for(family)
            node_ip = ctx.node.internal_ip_of(family)
            tunnel_ip = ds.tunnel_address(ctx.node, family, kind) if kind else None
            if kind is None or node_ip is None or tunnel_ip is None:
                continue
            if kind == "ipip":
                # Felix configures the kernel's fallback device tunl0 (no local/remote: any peer)
                dev = ns.add_link(Link(IPIP_DEVICE, "ipip", mac="00:00:00:00", mtu=eth0.mtu - 20, noarp=True))
            else:
                name = VXLAN_DEVICE[family]
                dev = ns.add_link(Link(name, "vxlan", mac=stable_mac(ctx.node.name, name),
                                       mtu=eth0.mtu - OVERHEAD[("vxlan", family)],
                                       vxlan=VxlanInfo(VXLAN_VNI, local=node_ip, dstport=VXLAN_PORT,
                                                       learning=False, dev="eth0")))
            dev.add_address(ipaddress.ip_interface(f"{tunnel_ip}/{tunnel_ip.max_prefixlen}"))
            tunnels[family] = dev.name
        ns.invalidate()
        self.write_conflist(ctx)
        for family in self.cfg.families:
            self._nat_rules(ctx, family, tunnels.get(family), opts["natOutgoing"])

    def _nat_rules(self, ctx, family: int, tunnel: Optional[str], nat_outgoing: bool) -> None:
        """Felix's nat table: its hooks, cali-fip-*, cali-nat-outgoing, and the pools' ipsets."""
        builder = ctx.iptables if family == 4 else ctx.ip6tables
        pools = [str(p) for p in self.cfg.pod_subnets if p.version == family]
        masq_set, all_set = f"{IPSET_PREFIX[family]}masq-ipam-pools", f"{IPSET_PREFIX[family]}all-ipam-pools"
        ctx.ipsets.append(ipset_text(masq_set, family, pools if nat_outgoing else []))
        ctx.ipsets.append(ipset_text(all_set, family, pools))
        program_chain(builder, "nat", "cali-fip-dnat", [])
        program_chain(builder, "nat", "cali-fip-snat", [])
        program_chain(builder, "nat", "cali-PREROUTING", [FelixRule(action="--jump cali-fip-dnat")])
        program_chain(builder, "nat", "cali-OUTPUT", [FelixRule(action="--jump cali-fip-dnat")])
        post = [FelixRule(action="--jump cali-fip-snat"), FelixRule(action="--jump cali-nat-outgoing")]
        if tunnel:
            # host traffic leaving the tunnel with another local address gets the tunnel's
            post.append(FelixRule("-m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL",
                                  "--jump MASQUERADE --random-fully", tunnel))
        program_chain(builder, "nat", "cali-POSTROUTING", post)
        outgoing = []
        if nat_outgoing:
            outgoing.append(FelixRule(f"-m set --match-set {masq_set} src -m set ! --match-set {all_set} dst",
                                      "--jump MASQUERADE --random-fully"))
        program_chain(builder, "nat", "cali-nat-outgoing", outgoing)
        for builtin, target in (("PREROUTING", "cali-PREROUTING"), ("OUTPUT", "cali-OUTPUT"),
                                ("POSTROUTING", "cali-POSTROUTING")):
            hook_chain(builder, "nat", builtin, target)

    def add_pod(self, ctx, pod, pod_ns) -> None:
        self.runtime_add(ctx, pod, pod_ns)

    # ------------------------------------------------------------ BIRD (or Felix, for VXLAN)
    def connect_nodes(self, dp) -> None:
        cfg = self.cfg
        ds = self.datastore(dp)
        nodes = dp.cluster.nodes
        adverts = {node.name: self._advertised(dp, ds, node) for node in nodes}
        for node in nodes:
            ns = dp.node_netns(node.name)
            for family in cfg.families:
                kind = self._encap_for(family)
                proto = FELIX_PROTO if kind == "vxlan" else BIRD_PROTO
                metric = IPV6_METRIC if family == 6 else 0
                for block in ds.affine_blocks(node.name, family):
                    ns.add_route(Route(block.cidr, None, type="blackhole", proto=proto, metric=metric))
                node_ip = node.internal_ip_of(family)
                if node_ip is None:
                    continue
                vx = VXLAN_DEVICE[family] if kind == "vxlan" and VXLAN_DEVICE[family] in ns.links else None
                for peer in nodes:
                    peer_ip = peer.internal_ip_of(family)
                    if peer.name == node.name or peer_ip is None:
                        continue
                    same = subnet_of_node(cfg, peer.name) == subnet_of_node(cfg, node.name)
                    encap = kind is not None and not (self.cross_subnet and same)
                    peer_vx = dp.node_netns(peer.name).links.get(VXLAN_DEVICE[family]) if vx else None
                    if vx and peer_vx is not None:
                        # vxlanfdb: the peer's VTEP, for every peer (CrossSubnet ones too)
                        tunnel_ip = peer_vx.addresses[0].ip
                        ns.neighbours.append(Neighbour(tunnel_ip, vx, peer_vx.mac, "PERMANENT"))
                        ns.fdb.append(FdbEntry(peer_vx.mac, vx, dst=peer_ip, self_=True, permanent=True))
                    for prefix in adverts[peer.name].get(family, []):
                        if encap and kind == "ipip" and IPIP_DEVICE in ns.links:
                            route = Route(prefix, IPIP_DEVICE, via=peer_ip, proto=proto, onlink=True)
                        elif encap and vx and peer_vx is not None:
                            route = Route(prefix, vx, via=peer_vx.addresses[0].ip, proto=proto, onlink=True)
                        elif same:
                            route = Route(prefix, "eth0", via=peer_ip, proto=proto)
                        else:
                            # the BGP next hop is not on the node's segment: BIRD resolves it
                            # recursively, through the subnet's router
                            route = Route(prefix, "eth0", via=self._router(node, family), proto=proto)
                        route.metric = metric
                        ns.add_route(route)
            ns.invalidate()

    def _router(self, node, family: int):
        if family == 6:
            return self.cfg.underlay_v6.network_address + 1 if self.cfg.underlay_v6 else None
        return self.cfg.underlay[subnet_of_node(self.cfg, node.name)].gateway

    @staticmethod
    def _advertised(dp, ds: CalicoIPAM, node) -> dict[int, list]:
        """What the node's BIRD exports: its blocks, and /32s (/128s) of its pods' addresses
        that lie outside them (borrowed from another node's block, or outside the pools)."""
        out: dict[int, list] = {}
        own = {}
        for block in ds.affine_blocks(node.name):
            out.setdefault(block.cidr.version, []).append(block.cidr)
            own[block.cidr] = True
        for pod in dp.cluster.pods_on(node.name):
            if pod.key not in dp.pod_ns:
                continue
            for ip in pod.pod_ips:
                if not any(ip in b for b in own):
                    out.setdefault(ip.version, []).append(host_prefix(ip))
        return out
