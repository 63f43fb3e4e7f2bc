"""Nodes: what kind creates, their addresses on the underlay, and node IPAM.

- kind mode: one Node per entry of the kind config, named and labelled as kind
  and kubeadm do (the control-plane NoSchedule taint, removed by kind on a
  cluster without workers), addresses from the docker network in creation order.
- dump mode: the Node objects of the dump; with none, the nodes that pods name
  (their hostIP is the node's InternalIP).
- node IPAM: kube-controller-manager's range allocator: the cluster CIDR cut
  into /nodeCIDRMaskSize blocks handed out in node order; recorded ones kept.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from ..api.objects import Node, ObjectMeta, Pod, Taint
from ..config import ClusterConfig
from ..errors import AllocationError, InputError
from .naming import uid_for

CONTROL_PLANE_TAINT = Taint("node-role.kubernetes.io/control-plane", "NoSchedule")


def kind_nodes(cfg: ClusterConfig, recorded: dict[str, Node]) -> list[Node]:
    has_workers = any(n.role == "worker" for n in cfg.nodes)
    nodes = []
    for nd in cfg.nodes:
        if nd.name in recorded:
            nodes.append(recorded[nd.name])
            continue
        labels = {
            "beta.kubernetes.io/arch": "amd64", "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64", "kubernetes.io/hostname": nd.name,
            "kubernetes.io/os": "linux",
        }
        taints = []
        if nd.role == "control-plane":
            labels["node-role.kubernetes.io/control-plane"] = ""
            labels["node.kubernetes.io/exclude-from-external-load-balancers"] = ""
            if has_workers:
                taints.append(CONTROL_PLANE_TAINT)
        labels.update(nd.labels)
        meta = ObjectMeta(nd.name, labels=labels, uid=uid_for("Node", "", nd.name))
        node = Node(meta, taints=taints, provider_id=f"kind://docker/{cfg.name}/{nd.name}")
        if nd.address is not None:
            node.addresses.append(("InternalIP", str(nd.address)))
        nodes.append(node)
    extra = [n for name, n in recorded.items() if name not in {nd.name for nd in cfg.nodes}]
    return nodes + extra


def inferred_nodes(pods: Iterable[Pod]) -> list[Node]:
    """Nodes named by the pods of a dump that has no Node objects."""
    seen: dict[str, Node] = {}
    for pod in pods:
        name = pod.node_name
        if not name or name in seen:
            if name and pod.host_ip is not None and not seen[name].addresses:
                seen[name].addresses.append(("InternalIP", str(pod.host_ip)))
            continue
        meta = ObjectMeta(name, labels={"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                          uid=uid_for("Node", "", name))
        node = Node(meta)
        if pod.host_ip is not None:
            node.addresses.append(("InternalIP", str(pod.host_ip)))
        seen[name] = node
    return list(seen.values())


def subnet_of_node(cfg: ClusterConfig, name: str) -> int:
    """Index of the underlay subnet a node is attached to."""
    for i, sub in enumerate(cfg.underlay):
        if name in sub.nodes:
            return i
    return 0


def assign_node_addresses(cfg: ClusterConfig, nodes: list[Node]) -> None:
    """InternalIPs on the underlay (kind's docker network: .2, .3, ... in creation order)."""
    families = cfg.families
    used: set = set()
    for node in nodes:
        for ip in node.internal_ips:
            if ip in used:
                raise InputError(f"InternalIP {ip} is already used by another node",
                                 obj=f"Node {node.name}", field="status.addresses")
            used.add(ip)
    for sub in cfg.underlay:
        used.add(sub.gateway)
    cursors: dict = {}
    for node in nodes:
        have = {ip.version for ip in node.internal_ips}
        for family in families:
            if family in have:
                continue
            if family == 4:
                sub = cfg.underlay[subnet_of_node(cfg, node.name)]
                if sub.cidr.version != 4:
                    continue
                key, net = sub.name, sub.cidr
            else:
                if cfg.underlay_v6 is None:
                    continue
                key, net = "v6", cfg.underlay_v6
            cursor = cursors.get(key, int(net.network_address) + 1)
            while True:
                cursor += 1
                candidate = ipaddress.ip_address(cursor)
                if candidate not in net or candidate == net.broadcast_address:
                    raise AllocationError(f"no free address left in node subnet {net}",
                                          obj=f"Node {node.name}")
                if candidate not in used:
                    break
            cursors[key] = cursor
            used.add(candidate)
            node.addresses.append(("InternalIP", str(candidate)))
        if not any(t == "Hostname" for t, _ in node.addresses):
            node.addresses.append(("Hostname", node.name))
    # keep InternalIPs in the cluster's family order (primary family first)
    for node in nodes:
        order = {fam: i for i, fam in enumerate(families)}
        internal = sorted((a for a in node.addresses if a[0] == "InternalIP"),
                          key=lambda a: order.get(ipaddress.ip_address(a[1]).version, 9))
        others = [a for a in node.addresses if a[0] != "InternalIP"]
        node.addresses = internal + others


class NodeIPAM:
    """The range allocator: one podCIDR per family per node, in node order."""

    def __init__(self, cfg: ClusterConfig):
        self.cfg = cfg
        self.used: dict[int, set] = {4: set(), 6: set()}
        self.cursor: dict[int, int] = {4: 0, 6: 0}

    def reserve(self, node: Node) -> None:
        for cidr in node.pod_cidrs:
            if cidr in self.used[cidr.version]:
                raise InputError(f"podCIDR {cidr} is already assigned to another node",
                                 obj=f"Node {node.name}", field="spec.podCIDRs")
            self.used[cidr.version].add(cidr)

    def allocate(self, node: Node) -> None:
        have = {c.version for c in node.pod_cidrs}
        for subnet in self.cfg.pod_subnets:
            fam = subnet.version
            if fam in have:
                continue
            mask = self.cfg.node_mask(fam)
            if mask < subnet.prefixlen:
                raise InputError(f"nodeCIDRMaskSize /{mask} is larger than the pod subnet {subnet}",
                                 obj="PodnetConfig", field="nodeCIDRMaskSize")
            count = 1 << (mask - subnet.prefixlen)
            size = 1 << (subnet.max_prefixlen - mask)
            base = int(subnet.network_address)
            while self.cursor[fam] < count:
                block = ipaddress.ip_network((base + self.cursor[fam] * size, mask))
                self.cursor[fam] += 1
                if block not in self.used[fam]:
                    self.used[fam].add(block)
                    node.pod_cidrs.append(block)
                    break
            else:
                raise AllocationError(f"no podCIDR left in {subnet} (/{mask} per node)",
                                      obj=f"Node {node.name}", field="spec.podCIDRs")
        order = {n.version: i for i, n in enumerate(self.cfg.pod_subnets)}
        node.pod_cidrs.sort(key=lambda c: order.get(c.version, 9))
