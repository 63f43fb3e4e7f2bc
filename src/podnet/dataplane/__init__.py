"""A reconciled cluster rendered into dataplane state: every node and pod as Linux
would hold it once the CNI, the service proxy and the policy enforcer have run.

    dp = build_dataplane(cluster)                 # CNI and proxy mode from the cluster definition
    dp = build_dataplane(cluster, cni="flannel", proxy_mode="ipvs")
    dp.state.netns("k8s-guide-worker").routes     # what `ip route` shows on that node
    dp.pod_netns(pod)                             # a pod's sandbox namespace

Components, per node, in the order the real ones come up:
    topology (underlay, gateway, internet, node root namespaces, pod sandboxes)
    -> CNI solution: node setup, then CNI ADD for each pod, then the daemon's
       cross-node reachability (routes, FDB/neighbour entries, cloud routes)
    -> service proxy (kube-proxy iptables / nftables / ipvs, eBPF, userspace)
    -> NetworkPolicy enforcement
    -> each node's iptables-save / nft ruleset assembled from all of them
"""

from __future__ import annotations

from .base import Dataplane, NodeContext, build_dataplane, resolve_endpoints

__all__ = ["Dataplane", "NodeContext", "build_dataplane", "resolve_endpoints"]
