"""kindnet (kind's default CNI), as the guide's kindnet chapter shows it.

Connectivity: kindnetd writes /etc/cni/net.d/10-kindnet.conflist (ptp with
host-local IPAM over the node's podCIDRs, then portmap) and the runtime runs it
for every sandbox: CNI ADD goes through podnet.cni.spec.invoke and the reference
plugins, so a pod gets eth0 with its /24 (/64), default and subnet routes via the
range's gateway .1, and the node a veth holding that .1/32 plus a /32 host route
to the pod; pods with hostPorts get portmap's CNI-HOSTPORT-* rules.
Reachability: kindnetd installs one route per peer node: its podCIDR via its
node IP (all nodes share one L2 segment).
Masquerade: the KIND-MASQ-AGENT chain, jumped to from nat POSTROUTING for
non-LOCAL destinations, leaves cluster-CIDR destinations alone and
MASQUERADEs the rest.
"""

from __future__ import annotations

from ..linux.state import Route
from .base import CNISolution

MASQ_JUMP = ('-m addrtype ! --dst-type LOCAL -m comment --comment "kind-masq-agent: ensure nat POSTROUTING '
             'directs all non-LOCAL destination traffic to our custom KIND-MASQ-AGENT chain" -j KIND-MASQ-AGENT')


class Kindnet(CNISolution):
    name = "kindnet"
    conflist_name = "10-kindnet.conflist"

    def conflist(self, ctx) -> dict:
        """kindnetd's cniConfigTemplate."""
        ranges = [[{"subnet": str(c)}] for c in ctx.node.pod_cidrs]
        routes = [{"dst": "0.0.0.0/0" if c.version == 4 else "::/0"} for c in ctx.node.pod_cidrs]
        return {"cniVersion": "0.3.1", "name": "kindnet", "plugins": [
            {"type": "ptp", "ipMasq": False,
             "ipam": {"type": "host-local", "dataDir": "/run/cni-ipam-state", "routes": routes, "ranges": ranges},
             "mtu": self.cfg.cni.mtu},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}

    def setup_node(self, ctx) -> None:
        self.write_conflist(ctx)
        for family, builder in ((4, ctx.iptables), (6, ctx.ip6tables)):
            subnet = self.cfg.pod_subnet_of(family)
            if subnet is None:
                continue
            builder.chain("nat", "KIND-MASQ-AGENT")
            builder.jump("nat", "POSTROUTING", MASQ_JUMP)
            builder.append("nat", "KIND-MASQ-AGENT", f'-d {subnet} -m comment --comment "kind-masq-agent: local '
                                                     'traffic is not subject to MASQUERADE" -j RETURN')
            builder.append("nat", "KIND-MASQ-AGENT", '-m comment --comment "kind-masq-agent: outbound traffic is '
                                                     'subject to MASQUERADE (must be last in chain)" -j MASQUERADE')

    def add_pod(self, ctx, pod, pod_ns) -> None:
        self.runtime_add(ctx, pod, pod_ns)

    def connect_nodes(self, dp) -> None:
        nodes = dp.cluster.nodes
        for node in nodes:
            ns = dp.node_netns(node.name)
            for peer in nodes:
                if peer.name == node.name:
                    continue
                for cidr in peer.pod_cidrs:
                    via = peer.internal_ip_of(cidr.version)
                    if via is not None:
                        ns.add_route(Route(cidr, "eth0", via=via))
