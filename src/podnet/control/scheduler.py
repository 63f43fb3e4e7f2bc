"""The scheduler: filters then a deterministic "least loaded, spread the owner" score.

Filters, as kube-scheduler's: nodeName, nodeSelector, required node affinity,
taints (NoSchedule/NoExecute must be tolerated), unschedulable nodes, the
kubelet's maxPods. Score: fewest pods of the same owner on the node (the
default topology spreading), then fewest pods, then node order.

Built for 150,000 pods on 5,000 nodes: nodes are kept in a heap per
eligibility class (pods from one template share one), so placing a pod costs
O(log nodes) instead of a scan.
"""

from __future__ import annotations

import heapq
from collections import defaultdict

from ..api.objects import Node, Pod, PodSpec
from ..errors import AllocationError

# Tolerations the DaemonSet controller adds to every daemon pod.
DAEMONSET_TOLERATED = {
    "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure", "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure", "node.kubernetes.io/unschedulable",
    "node.kubernetes.io/network-unavailable",
}


def eligible(spec: PodSpec, node: Node, daemonset: bool = False) -> bool:
    labels = node.meta.labels
    for k, v in spec.node_selector:
        if labels.get(k) != v:
            return False
    if spec.required_node_terms and not any(t.matches(node) for t in spec.required_node_terms):
        return False
    if node.unschedulable and not daemonset:
        return False
    for taint in node.taints:
        if taint.effect == "PreferNoSchedule":
            continue
        if daemonset and taint.key in DAEMONSET_TOLERATED:
            continue
        if not any(t.tolerates(taint) for t in spec.tolerations):
            return False
    return True


class Scheduler:
    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.order = {n.name: i for i, n in enumerate(nodes)}
        self.count: dict[str, int] = defaultdict(int)          # pods per node
        self.owner_count: dict[tuple, int] = defaultdict(int)  # (owner, node) -> pods
        self.heaps: dict[tuple, list] = {}

    def account(self, pod: Pod) -> None:
        """Count an already-placed pod."""
        self.count[pod.node_name] += 1
        self.owner_count[(_owner(pod), pod.node_name)] += 1

    def _heap(self, spec: PodSpec) -> list:
        key = spec.scheduling_key()
        heap = self.heaps.get(key)
        if heap is None:
            heap = [(self.count[n.name], self.order[n.name], n.name)
                    for n in self.nodes if eligible(spec, n)]
            heapq.heapify(heap)
            self.heaps[key] = heap
        return heap

    def place(self, pod: Pod) -> str:
        heap = self._heap(pod.spec)
        owner = _owner(pod)
        popped = []
        chosen = None
        best_fallback = None
        while heap:
            entry = heapq.heappop(heap)
            count, order, name = entry
            if count != self.count[name]:          # stale entry: re-queue with the real count
                heapq.heappush(heap, (self.count[name], order, name))
                continue
            if count >= self.nodes[order].max_pods:
                popped.append(entry)                # full; keep it out of this pick
                continue
            popped.append(entry)
            mine = self.owner_count[(owner, name)]
            if mine == 0:
                chosen = entry
                break
            if best_fallback is None or (mine, count, order) < best_fallback[0]:
                best_fallback = ((mine, count, order), entry)
        if chosen is None and best_fallback is not None:
            chosen = best_fallback[1]
        for entry in popped:
            if entry is not chosen:
                heapq.heappush(heap, entry)
        if chosen is None:
            raise AllocationError("no node can run this pod (check nodeSelector, affinity, "
                                  "tolerations and node capacity)", obj=f"Pod {pod.key}",
                                  field="spec.nodeName")
        name = chosen[2]
        pod.node_name = name
        self.account(pod)
        heapq.heappush(heap, (self.count[name], chosen[1], name))
        return name


def _owner(pod: Pod) -> tuple:
    ref = pod.meta.controller()
    return (pod.namespace, ref.kind, ref.name) if ref else (pod.namespace, "Pod", pod.name)
