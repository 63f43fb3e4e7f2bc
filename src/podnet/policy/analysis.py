"""The allowed connections between workloads, as np-guard/netpol-analyzer lists them.

    result = connection_list(cluster)            # analyzer semantics, the inputs' own pods
    for c in result.connections:
        print(c)        # default/frontend[Deployment] => default/backend[Deployment] : TCP 9090

Peers are workloads and external address ranges:

- a pod belongs to the workload of its controller owner reference, followed up
  through the workloads of the inputs (pod -> ReplicaSet -> Deployment); an owner
  that is not among the inputs is named as the reference says (a dump's
  `ns/web-7d77fb55cc[ReplicaSet]`, `[Job]`); a pod without a controller, or owned
  by its Node (a static pod), is `[Pod]`; an owner reference without a kind
  names a `[Pod]` after the owner, as netpol-analyzer does;
- external peers are the atomic address ranges of the ipBlocks: sources are cut
  at the boundaries of ingress ipBlocks, destinations at those of egress
  ipBlocks, within 0.0.0.0/0 (and ::/0 when a policy mentions IPv6).

Workload lines are the union over their pods' classes; a workload's connection
to itself is not listed, nor are address-to-address pairs. Only pods from the
input files are reported unless `include_system` (kind-mode inputs also hold the
system pods of a fresh cluster, which netpol-analyzer never sees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

from ..api.objects import Pod
from . import addresses
from .engine import ANALYZER, PolicyEngine, Semantics
from .model import EGRESS, INGRESS
from .ports import Connections


@dataclass(frozen=True, order=True)
class Workload:
    namespace: str
    name: str
    kind: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}[{self.kind}]"


@dataclass(frozen=True)
class Connection:
    src: str
    dst: str
    connections: Connections

    def __str__(self) -> str:
        return f"{self.src} => {self.dst} : {self.connections}"

    def to_json(self) -> dict:
        return {"src": self.src, "dst": self.dst, "conn": str(self.connections)}


@dataclass
class ConnectionList:
    connections: list[Connection]
    workloads: list[Workload]                   # every workload of the report, sorted
    external: list[str] = field(default_factory=list)   # external peers that appear in a line
    warnings: list[str] = field(default_factory=list)
    semantics: str = ANALYZER.name


class Owners:
    """Names the workload a pod belongs to, following controller references through
    the workloads of the inputs."""

    def __init__(self, workloads):
        self._by_ref = {(w.namespace, w.kind, w.name): w for w in workloads}

    def workload_of(self, pod: Pod) -> Workload:
        ref = next((r for r in pod.meta.owner_refs if r.controller), None)
        if ref is None or ref.kind == "Node":
            return Workload(pod.namespace, pod.name, "Pod")
        if not ref.kind:
            return Workload(pod.namespace, ref.name, "Pod")
        kind, name = ref.kind, ref.name
        seen = set()
        while (pod.namespace, kind, name) in self._by_ref and (kind, name) not in seen:
            seen.add((kind, name))
            owner = self._by_ref[(pod.namespace, kind, name)]
            up = next((r for r in owner.meta.owner_refs if r.controller), None)
            if up is None or (pod.namespace, up.kind, up.name) not in self._by_ref:
                break
            kind, name = up.kind, up.name
        return Workload(pod.namespace, name, kind)


def pods_in_scope(cluster, include_system: bool = False) -> list[Pod]:
    """The pods an analysis reports: those of the input files (or every pod)."""
    return [p for p in cluster.pods if include_system or p.meta.source]


def connection_list(cluster, *, semantics: Union[str, Semantics] = ANALYZER,
                    include_system: bool = False,
                    engine: Optional[PolicyEngine] = None) -> ConnectionList:
    """Every allowed connection between the workloads of the cluster and external ranges."""
    engine = engine or PolicyEngine(cluster, semantics)
    owners = Owners(cluster.workloads)
    pods = pods_in_scope(cluster, include_system)
    class_workloads: dict[int, set[Workload]] = {}
    workload_classes: dict[Workload, set[int]] = {}
    for pod in pods:
        w = owners.workload_of(pod)
        cls = engine.class_of(pod)
        class_workloads.setdefault(cls.index, set()).add(w)
        workload_classes.setdefault(w, set()).add(cls.index)
    classes = [engine.classes[i] for i in sorted(class_workloads)]
    result = ConnectionList([], sorted(workload_classes), semantics=engine.semantics.name)
    if not classes:
        return result
    for w, idx in sorted(workload_classes.items()):
        first, *others = (engine.classes[i] for i in sorted(idx))
        if not all(engine.equivalent(first, other) for other in others):
            result.warnings.append(
                f"pods of {w} differ in labels or named ports that policies look at; "
                "its lines show what any of its pods may do")

    lines: dict[tuple[str, str], Connections] = {}

    def add(src: str, dst: str, conns: Connections) -> None:
        if conns and src != dst:
            old = lines.get((src, dst))
            lines[(src, dst)] = conns if old is None else old | conns

    names = {i: [str(w) for w in ws] for i, ws in class_workloads.items()}
    for (si, di), conns in engine.class_matrix(classes, classes).items():
        for w1 in names[si]:
            for w2 in names[di]:
                add(w1, w2, conns)

    for direction, ranges in external_ranges(engine).items():
        peers = [f"{addresses.format_range(r)}[External]" for r in ranges]
        for cls in classes:
            allowed = (engine.ingress_from_ranges(ranges, cls) if direction == INGRESS
                       else engine.egress_to_ranges(cls, ranges))
            names = [str(w) for w in class_workloads[cls.index]]
            for peer, conns in zip(peers, allowed):
                for name in names:
                    if direction == INGRESS:
                        add(peer, name, conns)
                    else:
                        add(name, peer, conns)

    result.connections = [Connection(s, d, c) for (s, d), c in sorted(lines.items())]
    result.external = sorted({c.src for c in result.connections if c.src.endswith("[External]")}
                             | {c.dst for c in result.connections if c.dst.endswith("[External]")})
    return result


def external_ranges(engine: PolicyEngine) -> dict[str, list[addresses.Range]]:
    """The external peers: ingress sources and egress destinations, as atomic ranges."""
    out = {}
    for direction in (INGRESS, EGRESS):
        blocks = [b.ranges for p in engine.policies for b in p.ip_blocks(direction)]
        out[direction] = addresses.atomic_ranges(blocks, engine.ip_versions)
    return out

