"""kubenet and cloud routes, as the guide's IaaS chapter shows them.

Connectivity: kubenet is the kubelet's own network plugin (pkg/kubelet/.../kubenet):
no daemon, no file in /etc/cni/net.d. For every sandbox it runs the `bridge`
reference plugin with host-local IPAM over the node's podCIDRs, from the
configuration it builds in memory (NET_CONFIG_TEMPLATE: bridge cbr0, isGateway,
no ipMasq, hairpinMode for `--hairpin-mode=hairpin-veth`, one range per podCIDR
with its .1 as gateway, default routes). So cbr0 holds the podCIDR's .1 and the
node has only `10.244.1.0/24 dev cbr0 proto kernel scope link src 10.244.1.1`
besides its default route. With the kubelet's default hairpin mode
(promiscuous-bridge) kubenet puts cbr0 into promiscuous mode instead (recorded
in /sys/class/net/cbr0/flags; the ebtables dedup rules are not modelled).

Masquerade: kubenet's one rule, `-A POSTROUTING ! -d NON_MASQUERADE_CIDR -m
comment --comment "kubenet: SNAT for outbound traffic from cluster" -m addrtype
! --dst-type LOCAL -j MASQUERADE`, where the kubelet's --non-masquerade-cidr is
10.0.0.0/8 unless `cni.options.nonMasqueradeCIDR` says otherwise; 0.0.0.0/0
turns it off, as kubenet does (the KubeCon talk's "pod -> internet: dropped!").

Reachability is not on the nodes but in the cloud's router, the topology's
`gateway` namespace, as the cloud controller manager programs it (cni.mode):

* cloud-routes, aks, aws: the VPC route table (AKS route table, AWS VPC route
  table): one `PODCIDR via NODE_IP proto static` route per node's podCIDR.
* gke: alias IP ranges. The VPC subnet has a secondary range (the cluster CIDR)
  and each node's NIC owns its podCIDR as an alias range, so the VPC delivers
  pod addresses to the node natively, without a route per node. podnet models
  that as an on-link route for the secondary range on the gateway
  (`10.244.0.0/16 dev br-kind scope link proto static`) and each node's NIC
  answering for its alias range (proxy_arp on eth0, proxy_delay 0): the gateway
  ARPs for a pod address and the node holding that range answers. IPv6 pod
  ranges get routes, as in cloud-routes.

The cloud's NAT translates only addresses it knows, the nodes': the gateway
drops traffic to the internet from any other source (chain CLOUD-NAT in its
filter FORWARD), so a pod's packet leaves the cluster only masqueraded to its
node's address.
"""

from __future__ import annotations

import ipaddress

from ..control.nodes import subnet_of_node
from ..dataplane import topology
from ..errors import InputError
from ..linux.iptables_builder import IptablesBuilder
from ..linux.state import Route
from .base import CNISolution
from .spec import NetworkConfigList

BRIDGE = "cbr0"
DEFAULT_NON_MASQUERADE_CIDR = "10.0.0.0/8"
MASQ_COMMENT = "kubenet: SNAT for outbound traffic from cluster"
HAIRPIN_MODES = ("promiscuous-bridge", "hairpin-veth", "none")
CLOUD_NAT = "CLOUD-NAT"


class Kubenet(CNISolution):
    name = "kubenet"

    def __init__(self, cfg):
        super().__init__(cfg)
        opts = cfg.cni.options or {}
        text = str(opts.get("nonMasqueradeCIDR", DEFAULT_NON_MASQUERADE_CIDR))
        try:
            self.non_masq = ipaddress.ip_network(text)
        except ValueError:
            raise InputError(f"not a CIDR: {text!r}", obj="PodnetConfig",
                             field="cni.options.nonMasqueradeCIDR") from None
        self.hairpin_mode = str(opts.get("hairpinMode", "promiscuous-bridge"))
        if self.hairpin_mode not in HAIRPIN_MODES:
            raise InputError(f"expected one of {', '.join(HAIRPIN_MODES)}, got {self.hairpin_mode!r}",
                             obj="PodnetConfig", field="cni.options.hairpinMode")

    # ------------------------------------------------------------------ the node
    def net_config(self, ctx) -> dict:
        """kubenet's NET_CONFIG_TEMPLATE for the node's podCIDRs (Event(POD_CIDR_CHANGE))."""
        ranges = [[{"subnet": str(c), "gateway": str(c.network_address + 1)}] for c in ctx.node.pod_cidrs]
        return {"cniVersion": "0.1.0", "name": "kubenet", "type": "bridge", "bridge": BRIDGE,
                "mtu": self.cfg.cni.mtu, "addIf": "eth0", "isGateway": True, "ipMasq": False,
                "hairpinMode": self.hairpin_mode == "hairpin-veth",
                "ipam": {"type": "host-local", "ranges": ranges,
                         "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]}}

    def setup_node(self, ctx) -> None:
        """Init: bridge-nf-call-iptables, and ensureMasqRule (unless the CIDR is everything)."""
        ctx.ns.sysctls["net.bridge.bridge-nf-call-iptables"] = "1"
        if self.non_masq.prefixlen != 0:
            builder = ctx.iptables if self.non_masq.version == 4 else ctx.ip6tables
            builder.jump("nat", "POSTROUTING", f'! -d {self.non_masq} -m comment --comment "{MASQ_COMMENT}" '
                                               '-m addrtype ! --dst-type LOCAL -j MASQUERADE')

    def add_pod(self, ctx, pod, pod_ns) -> None:
        if not ctx.node.pod_cidrs:
            from ..errors import PodnetError
            raise PodnetError(f"Kubenet cannot SetUpPod {pod.key}: node {ctx.node.name} has no podCIDR "
                              "(kubenet does not have netConfig)")
        conf = NetworkConfigList.parse(self.net_config(ctx), source=f"{ctx.node.name}:kubenet")
        self.runtime_add(ctx, pod, pod_ns, conflist=conf)
        if self.hairpin_mode == "promiscuous-bridge":
            # "Put the container bridge into promiscuous mode to force it to accept hairpin packets"
            ctx.ns.links[BRIDGE].promisc = True

    # ------------------------------------------------------------------ the cloud
    def connect_nodes(self, dp) -> None:
        gw = dp.state.netns(topology.GATEWAY)
        cfg = self.cfg
        alias = cfg.cni.mode == "gke"
        if alias:
            # the subnet's secondary range: on-link on the VPC, each NIC answering for its alias range
            for cidr in cfg.pod_subnets:
                if cidr.version == 4:
                    for sub in {cfg.underlay[subnet_of_node(cfg, n.name)].name for n in dp.cluster.nodes}:
                        gw.add_route(Route(cidr, f"br-{sub}"[:15], scope="link", proto="static"))
        for node in dp.cluster.nodes:
            nic = f"br-{cfg.underlay[subnet_of_node(cfg, node.name)].name}"[:15]
            for cidr in node.pod_cidrs:
                if alias and cidr.version == 4:
                    ns = dp.node_netns(node.name)
                    ns.sysctls["net.ipv4.conf.eth0.proxy_arp"] = "1"
                    ns.sysctls["net.ipv4.neigh.eth0.proxy_delay"] = "0"
                    continue
                via = node.internal_ip_of(cidr.version)
                if via is not None:
                    gw.add_route(Route(cidr, nic, via=via, proto="static"))
        # the cloud's NAT maps node addresses only: anything else is dropped on the way out
        builder = IptablesBuilder()
        if gw.iptables.strip():
            builder.add_restore(gw.iptables)
        builder.chain("filter", CLOUD_NAT)
        builder.jump("filter", "FORWARD", f"-o eth0 -j {CLOUD_NAT}")
        for sub in cfg.underlay:
            if sub.cidr.version == 4:
                builder.append("filter", CLOUD_NAT, f"-s {sub.cidr} -j RETURN")
        builder.append("filter", CLOUD_NAT, '-m comment --comment "the cloud NAT has an external address for '
                                            'the nodes only" -j DROP')
        gw.iptables = builder.render()
        gw.invalidate()
