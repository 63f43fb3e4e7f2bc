"""flannel, as the guide's flannel chapter shows it: flanneld plus the flannel CNI meta-plugin.

Connectivity (the CNI side): kube-flannel writes /etc/cni/net.d/10-flannel.conflist
(network "cbr0": the `flannel` plugin with delegate {hairpinMode, isDefaultGateway},
then portmap). The `flannel` plugin (flannel-io/cni-plugin flannel.go and
flannel_linux.go) reads /run/flannel/subnet.env from the node and delegates to
`bridge`: name cni0, isGateway, ipMasq = !FLANNEL_IPMASQ (flanneld masquerades
itself), mtu = FLANNEL_MTU, host-local IPAM over FLANNEL_SUBNET with a route to
FLANNEL_NETWORK. The delegate configuration is kept in
/var/lib/cni/flannel/<container id> for DEL, as upstream does. So a pod gets eth0
with its /24 on cni0 (the bridge holding .1/24, made on the first ADD), a
default route and a route to the cluster network via .1.

Reachability (flanneld), per backend (cni.mode):

* vxlan (default): the VTEP flannel.1 (VNI 1, UDP 8472, local = the node IP on
  eth0, nolearning, MTU = eth0's - 50, its own MAC) holding the lease's .0/32;
  for every peer: `PEER_CIDR via PEER_CIDR.0 dev flannel.1 onlink`, the
  neighbour `PEER_CIDR.0 lladdr PEER_VTEP_MAC PERMANENT` and the FDB entry
  `PEER_VTEP_MAC dst PEER_NODE_IP self permanent` (flanneld learns the peers'
  VTEP MACs from their Nodes' flannel.alpha.coreos.com/backend-data annotations;
  here from the peers' rendered flannel.1). IPv6 the same with flannel-v6.1
  (MTU eth0's - 70).
* host-gw: `PEER_CIDR via PEER_NODE_IP dev eth0`; only peers on the node's own L2
  segment get one (flannel's host-gw needs direct L2 adjacency); MTU is eth0's.

subnet.env: FLANNEL_NETWORK, FLANNEL_SUBNET (the lease's first address with its
prefix), FLANNEL_IPV6_* for an IPv6 pod subnet, FLANNEL_MTU, FLANNEL_IPMASQ=true
(kube-flannel runs flanneld with --ip-masq).

Masquerade (pkg/trafficmngr/iptables masqRules, in that order): nat POSTROUTING
jumps to FLANNEL-POSTRTG, which RETURNs kube-proxy-marked packets (0x4000/0x4000),
pod subnet -> cluster network, cluster network -> pod subnet and
!cluster network -> pod subnet, then MASQUERADEs --random-fully cluster network
-> !224.0.0.0/4 (ff00::/8 for IPv6) and !cluster network -> cluster network.
Forwarding (forwardRules): filter FORWARD jumps to FLANNEL-FWD, which ACCEPTs from
and to the cluster network.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Optional

from ..errors import PodnetError
from ..linux.state import FdbEntry, Link, Neighbour, Route, VxlanInfo, stable_mac
from .base import CNISolution
from .plugins import register
from .plugins.host_local import DEFAULT_DATA_DIR, LAST_IP_PREFIX
from .spec import Call, CNIError, Code, Plugin, Result, fail

SUBNET_FILE = "/run/flannel/subnet.env"
DATA_DIR = "/var/lib/cni/flannel"
NETWORK_NAME = "cbr0"
VNI = 1
VXLAN_PORT = 8472                   # the kernel's (and flannel's) Linux default, not IANA's 4789
VXLAN_HEADROOM = {4: 50, 6: 70}     # what the kernel takes off the underlay MTU for a VXLAN device
KUBE_PROXY_MARK = "0x4000/0x4000"   # trafficmngr.KubeProxyMark: flannel hard-codes kube-proxy's default
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}
MASQ_COMMENT = '-m comment --comment "flanneld masq"'
FWD_COMMENT = '-m comment --comment "flanneld forward"'


def vtep_name(family: int) -> str:
    return f"flannel.{VNI}" if family == 4 else f"flannel-v6.{VNI}"


# ============================================================================ the CNI plugin

def parse_subnet_env(text: str, source: str = SUBNET_FILE) -> dict:
    """loadFlannelSubnetEnv: the networks (as networks: FLANNEL_SUBNET=10.244.1.1/24 is
    10.244.1.0/24), the MTU and ipmasq; an error names what is missing, as upstream's does."""
    env: dict = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        try:
            if key in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET"):
                env[key] = ipaddress.ip_network(value.strip(), strict=False)
            elif key == "FLANNEL_MTU":
                env[key] = int(value)
            elif key == "FLANNEL_IPMASQ":
                env[key] = value == "true"
        except ValueError:
            raise fail(f"{source}: invalid {key}: {value!r}") from None
    missing = []
    if "FLANNEL_NETWORK" not in env and "FLANNEL_IPV6_NETWORK" not in env:
        missing += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if "FLANNEL_SUBNET" not in env and "FLANNEL_IPV6_SUBNET" not in env:
        missing += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    missing += [k for k in ("FLANNEL_MTU", "FLANNEL_IPMASQ") if k not in env]
    if missing:
        raise fail(f"{source} is missing {', '.join(missing)}")
    return env


def _go_json(value) -> bytes:
    """What Go's json.Marshal of a map writes: keys sorted, no spaces."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


class FlannelPlugin(Plugin):
    """The `flannel` meta-plugin: subnet.env + its own configuration -> a delegate configuration."""
    type = "flannel"

    @staticmethod
    def _conf(call: Call) -> dict:
        conf = call.conf
        for key, kind in (("delegate", dict), ("ipam", dict), ("subnetFile", str), ("dataDir", str)):
            if key in conf and conf[key] is not None and not isinstance(conf[key], kind):
                raise CNIError(Code.DECODING_FAILURE, f"failed to load netconf: {key!r} must be a JSON "
                                                      f"{'object' if kind is dict else 'string'}")
        return {"subnetFile": conf.get("subnetFile") or SUBNET_FILE, "dataDir": conf.get("dataDir") or DATA_DIR,
                "delegate": dict(conf.get("delegate") or {}), "ipam": dict(conf.get("ipam") or {})}

    def add(self, call: Call) -> Result:
        conf = self._conf(call)
        text = call.host.ns.files.get(conf["subnetFile"])
        if text is None:
            raise fail(f"open {conf['subnetFile']}: no such file or directory")
        fenv = parse_subnet_env(text, conf["subnetFile"])
        delegate = conf["delegate"]
        if "type" in delegate and not isinstance(delegate["type"], str):
            raise fail("'delegate' dictionary, if present, must have (string) 'type' field")
        if "name" in delegate:
            raise fail("'delegate' dictionary must not have 'name' field, it'll be set by flannel")
        if "ipam" in delegate:
            raise fail("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
        if isinstance(call.conf.get("runtimeConfig"), dict):
            delegate["runtimeConfig"] = call.conf["runtimeConfig"]
        # doCmdAdd
        delegate["name"] = call.name
        delegate.setdefault("type", "bridge")
        delegate.setdefault("ipMasq", not fenv["FLANNEL_IPMASQ"])    # if flannel does not masquerade, the bridge does
        delegate.setdefault("mtu", fenv["FLANNEL_MTU"])
        if delegate["type"] == "bridge":
            delegate.setdefault("isGateway", True)
        if call.conf.get("cniVersion"):
            delegate["cniVersion"] = call.conf["cniVersion"]
        delegate["ipam"] = self._ipam(conf["ipam"], fenv)
        stdin = _go_json(delegate)
        # saveScratchNetConf: DEL reads back what ADD delegated
        call.host.ns.files[f"{conf['dataDir'].rstrip('/')}/{call.container_id}"] = stdin.decode()
        try:
            result = call.delegate(delegate["type"], "ADD", conf=json.loads(stdin))
        except CNIError as e:
            raise CNIError(e.code, f"failed to delegate add: {e.msg}", e.details) from None
        return result.with_version(call.cni_version)

    @staticmethod
    def _ipam(ipam: dict, fenv: dict) -> dict:
        """getDelegateIPAM: host-local unless given, one range per subnet.env subnet, the
        configured routes plus one to each flannel network."""
        ipam.setdefault("type", "host-local")
        ipam["ranges"] = [[{"subnet": str(fenv[k])}] for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET") if k in fenv]
        routes = ipam.get("routes") or []
        if not isinstance(routes, list):
            raise fail("failed to assemble Delegate IPAM: failed to read IPAM routes: ipam.routes is not a list")
        ipam["routes"] = list(routes) + [{"dst": str(fenv[k])} for k in ("FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK")
                                         if k in fenv]
        return ipam

    def delete(self, call: Call) -> None:
        conf = self._conf(call)
        path = f"{conf['dataDir'].rstrip('/')}/{call.container_id}"
        saved = call.host.ns.files.get(path)
        if saved is None:
            return                  # per the spec: nothing to clean up
        try:
            netconf = json.loads(saved)
        except json.JSONDecodeError:
            return                  # upstream leaves the interface to the next reboot
        call.delegate(netconf.get("type", "bridge"), "DEL", conf=netconf)
        call.host.ns.files.pop(path, None)

    def check(self, call: Call) -> None:
        pass                        # upstream's cmdCheck is a TODO that succeeds


register("flannel", FlannelPlugin)


# ============================================================================ flanneld and kube-flannel

class Flannel(CNISolution):
    name = "flannel"
    conflist_name = "10-flannel.conflist"

    @property
    def backend(self) -> str:
        return self.cfg.cni.mode or "vxlan"

    def conflist(self, ctx) -> dict:
        """kube-flannel.yml's cni-conf.json, which its install-cni init container copies."""
        return {"name": NETWORK_NAME, "cniVersion": "0.3.1", "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}

    def _families(self, ctx) -> list[int]:
        """The families flannel runs (EnableIPv4 / EnableIPv6): the cluster's pod subnets
        that the node has a lease (podCIDR) and an address in."""
        out = []
        for family in (4, 6):
            if self.cfg.pod_subnet_of(family) is None or self._lease(ctx.node, family) is None:
                continue
            if ctx.node.internal_ip_of(family) is None:
                continue
            out.append(family)
        return out

    @staticmethod
    def _lease(node, family: int):
        return next((c for c in node.pod_cidrs if c.version == family), None)

    def setup_node(self, ctx) -> None:
        ns = ctx.ns
        eth0 = ns.links["eth0"]
        families = self._families(ctx)
        mtu = eth0.mtu
        if self.backend == "vxlan":
            for family in families:
                lease = self._lease(ctx.node, family)
                dev = ns.add_link(Link(vtep_name(family), "vxlan", mac=stable_mac(ctx.node.name, vtep_name(family)),
                                       mtu=eth0.mtu - VXLAN_HEADROOM[family],
                                       vxlan=VxlanInfo(VNI, local=ctx.node.internal_ip_of(family),
                                                       dstport=VXLAN_PORT, learning=False, dev="eth0")))
                dev.add_address(ipaddress.ip_interface(f"{lease.network_address}/{lease.max_prefixlen}"))
            # FLANNEL_MTU is the backend network's MTU: the IPv4 VTEP's when IPv4 runs
            mtu = ns.links[vtep_name(families[0])].mtu if families else mtu
        ns.invalidate()
        ns.files[SUBNET_FILE] = self.subnet_env(ctx.node, families, mtu)
        self.write_conflist(ctx)
        for family in families:
            builder = ctx.iptables if family == 4 else ctx.ip6tables
            self._masq_rules(builder, self.cfg.pod_subnet_of(family), self._lease(ctx.node, family), family)
        for family in families:
            builder = ctx.iptables if family == 4 else ctx.ip6tables
            self._forward_rules(builder, self.cfg.pod_subnet_of(family))

    def subnet_env(self, node, families: list[int], mtu: int) -> str:
        lines = []
        for family, prefix in ((4, "FLANNEL"), (6, "FLANNEL_IPV6")):
            if family not in families:
                continue
            lease = self._lease(node, family)
            lines.append(f"{prefix}_NETWORK={self.cfg.pod_subnet_of(family)}")
            lines.append(f"{prefix}_SUBNET={lease.network_address + 1}/{lease.prefixlen}")
        lines += [f"FLANNEL_MTU={mtu}", "FLANNEL_IPMASQ=true"]
        return "\n".join(lines) + "\n"

    @staticmethod
    def _masq_rules(builder, cluster, pod, family: int) -> None:
        builder.chain("nat", "FLANNEL-POSTRTG")
        builder.jump("nat", "POSTROUTING", f"{MASQ_COMMENT} -j FLANNEL-POSTRTG")
        for rule in (f"-m mark --mark {KUBE_PROXY_MARK} {MASQ_COMMENT} -j RETURN",
                     f"-s {pod} -d {cluster} {MASQ_COMMENT} -j RETURN",
                     f"-s {cluster} -d {pod} {MASQ_COMMENT} -j RETURN",
                     f"! -s {cluster} -d {pod} {MASQ_COMMENT} -j RETURN",
                     f"-s {cluster} ! -d {MULTICAST[family]} {MASQ_COMMENT} -j MASQUERADE --random-fully",
                     f"! -s {cluster} -d {cluster} {MASQ_COMMENT} -j MASQUERADE --random-fully"):
            builder.append("nat", "FLANNEL-POSTRTG", rule)

    @staticmethod
    def _forward_rules(builder, cluster) -> None:
        builder.chain("filter", "FLANNEL-FWD")
        builder.jump("filter", "FORWARD", f"{FWD_COMMENT} -j FLANNEL-FWD")
        builder.append("filter", "FLANNEL-FWD", f"-s {cluster} {FWD_COMMENT} -j ACCEPT")
        builder.append("filter", "FLANNEL-FWD", f"-d {cluster} {FWD_COMMENT} -j ACCEPT")

    def add_pod(self, ctx, pod, pod_ns) -> None:
        result = self.runtime_add(ctx, pod, pod_ns, pin_ips=False)
        got = {ipc.address.ip for ipc in result.ips}
        if not pod.pod_ips or got == set(pod.pod_ips):
            return
        # A recorded address (a dump of a real cluster) that is not next in host-local's order:
        # kube-flannel's list declares no `ips` capability and the flannel plugin hands no `args`
        # on, so the runtime cannot ask for it. What made host-local pick it on the real node is
        # the node's allocation history, which a dump does not carry: that is reconstructed
        # (each range set's last reserved address just before the recorded one) and ADD rerun.
        self.runtime_del(ctx, pod, pod_ns)
        fenv = parse_subnet_env(ctx.ns.files[SUBNET_FILE])
        subnets = [fenv[k] for k in ("FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET") if k in fenv]
        for i, subnet in enumerate(subnets):
            for want in pod.pod_ips:
                if want.version == subnet.version and want in subnet:
                    ctx.ns.files[f"{DEFAULT_DATA_DIR}/{NETWORK_NAME}/{LAST_IP_PREFIX}{i}"] = str(want - 1)
        result = self.runtime_add(ctx, pod, pod_ns, pin_ips=False)
        got = {ipc.address.ip for ipc in result.ips}
        if got != set(pod.pod_ips):
            raise PodnetError(f"CNI ADD of pod {pod.key} on {ctx.node.name} gave {', '.join(sorted(map(str, got)))}, "
                              f"the control plane decided {', '.join(map(str, pod.pod_ips))}")

    def connect_nodes(self, dp) -> None:
        """What flanneld does for every lease it watches (one per peer node)."""
        from ..control.nodes import subnet_of_node
        cfg = self.cfg
        nodes = dp.cluster.nodes
        for node in nodes:
            ctx = dp.contexts[node.name]
            ns = ctx.ns
            families = self._families(ctx)
            for peer in nodes:
                if peer.name == node.name:
                    continue
                peer_ctx = dp.contexts[peer.name]
                for family in families:
                    cidr = self._lease(peer, family)
                    peer_ip = peer.internal_ip_of(family)
                    if cidr is None or peer_ip is None or family not in self._families(peer_ctx):
                        continue
                    if self.backend == "host-gw":
                        if subnet_of_node(cfg, peer.name) != subnet_of_node(cfg, node.name):
                            dp.notes.append(f"flannel host-gw: {node.name} has no route to {cidr} of {peer.name}: "
                                            "the nodes are not on one L2 segment")
                            continue
                        ns.add_route(Route(cidr, "eth0", via=peer_ip))
                        continue
                    dev = vtep_name(family)
                    peer_mac = self._vtep_mac(peer_ctx, family)
                    ns.add_route(Route(cidr, dev, via=cidr.network_address, onlink=True))
                    ns.neighbours.append(Neighbour(cidr.network_address, dev, peer_mac, "PERMANENT"))
                    ns.fdb.append(FdbEntry(peer_mac, dev, dst=peer_ip, self_=True, permanent=True))
            ns.invalidate()

    @staticmethod
    def _vtep_mac(ctx, family: int) -> Optional[str]:
        """The peer's VtepMAC, as its backend-data annotation publishes it."""
        return ctx.ns.links[vtep_name(family)].mac
