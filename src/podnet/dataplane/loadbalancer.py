"""How a LoadBalancer IP reaches a node: MetalLB's layer 2 mode, as kind clusters use it.

podnet's control plane hands out LoadBalancer IPs from `loadBalancer.pools`
(podnet.control.services), like MetalLB's controller. Getting packets for those
addresses to the cluster is the speaker's part: in layer 2 mode one node per
address answers ARP for it on the node network, so the underlay's router (the
docker host, `gateway`) delivers the packets to that node, where kube-proxy's
rules for the LB IP take over. Which node is elected is MetalLB's
`ShouldAnnounce` (speaker/layer2_controller.go):

- nothing is announced while the Service has no endpoint that can serve;
- eligible nodes: every node running a speaker (here: every node, except those
  labelled node.kubernetes.io/exclude-from-external-load-balancers, as kubeadm
  labels control planes); with externalTrafficPolicy Local only those of them
  with a ready endpoint of the Service;
- the winner is the first after sorting by sha256("<node>#<first LB IP>").

The speaker answers ARP in userspace (a packet socket on the node's NIC): the
model holds it as an ArpResponder on the winner's eth0, which the simulator
answers from and the lab runs (podnet.lab.agent). A proxy neighbour entry would
not do: the kernel answers those only for addresses routed out of another
device than the one the request came in on.
"""

from __future__ import annotations

import hashlib

from ..linux.state import ArpResponder

EXCLUDE_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"


def elected_node(cluster, svc, candidates: list[str]) -> str | None:
    """MetalLB layer 2: the node that announces `svc`'s LoadBalancer IPs, or None."""
    if not svc.lb_ips:
        return None
    nodes_with_ready = set()
    for s in cluster.slices_of(svc):
        for ep in s.endpoints:
            if ep.ready is not False and ep.node_name:
                nodes_with_ready.add(ep.node_name)
    if not nodes_with_ready:
        return None             # activeEndpointExists: nothing to announce
    available = [n for n in candidates
                 if not svc.external_policy_local or n in nodes_with_ready]
    if not available:
        return None
    first_ip = str(svc.lb_ips[0])
    return min(available, key=lambda n: hashlib.sha256(f"{n}#{first_ip}".encode()).digest())


def announce_load_balancers(dp) -> None:
    """Proxy-ARP entries on the elected node's underlay NIC for every LoadBalancer IP
    podnet allocated (addresses a cloud provider set in status are the cloud's business)."""
    cluster = dp.cluster
    speakers = [n.name for n in cluster.nodes if EXCLUDE_LABEL not in n.meta.labels]
    for svc in sorted(cluster.services, key=lambda s: s.key):
        if svc.type != "LoadBalancer" or svc.load_balancer_class:
            continue
        node = elected_node(cluster, svc, speakers)
        if node is None:
            continue
        ns = dp.node_netns(node)
        for ip in svc.lb_ips:
            if ip.version == 4 and _in_pools(cluster.config, ip) and \
                    not any(r.ip == ip for r in ns.arp_responders):
                ns.arp_responders.append(ArpResponder(ip, "eth0", f"MetalLB speaker for {svc.key}"))
        dp.notes.append(f"LoadBalancer {svc.key} {', '.join(map(str, svc.lb_ips))}: announced by {node} "
                        "(MetalLB layer 2)")


def _in_pools(cfg, ip) -> bool:
    return any(int(first) <= int(ip) <= int(last) for first, last in cfg.lb_pools
               if first.version == ip.version)
