"""Workload controllers: Deployment -> ReplicaSet -> Pods, StatefulSet, DaemonSet.

Each controller creates only what is missing: pods already present in the
inputs (a dump of a real cluster) and owned by the workload count towards its
replicas, and a Deployment that already owns a ReplicaSet does not get a new one.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..api.objects import LabelSelector, ObjectMeta, OwnerRef, Pod, PodTemplate, Workload
from .naming import pod_template_hash, random_suffix, uid_for


class PodIndex:
    """The pods that exist, by owner and by name, kept up to date as controllers add pods
    (a scan of every pod per workload would be quadratic at 150,000 pods)."""

    def __init__(self, pods: Iterable[Pod] = ()):
        self.owned: dict[tuple[str, str, str], list[Pod]] = {}
        self.names: set[tuple[str, str]] = set()
        for pod in pods:
            self.add(pod)

    def add(self, pod: Pod) -> None:
        self.names.add((pod.namespace, pod.name))
        for ref in pod.meta.owner_refs:
            self.owned.setdefault((pod.namespace, ref.kind, ref.name), []).append(pod)

    def owned_by(self, kind: str, name: str, namespace: str) -> list[Pod]:
        return self.owned.get((namespace, kind, name), [])


def _new_pod(owner: Workload, name: str, labels: dict[str, str], *, hostname: str = "",
             subdomain: str = "", node_name: str = "") -> Pod:
    t = owner.template
    meta = ObjectMeta(
        name=name, namespace=owner.namespace, labels=labels,
        annotations=dict(t.annotations),
        uid=uid_for("Pod", owner.namespace, name),
        owner_refs=[OwnerRef(owner.kind, owner.name,
                             owner.meta.uid or uid_for(owner.kind, owner.namespace, owner.name),
                             True, (owner.raw or {}).get("apiVersion", "apps/v1"))],
        generate_name=f"{owner.name}-" if owner.kind != "StatefulSet" else "",
        source=owner.meta.source,
    )
    return Pod(meta, t.spec, node_name=node_name or t.spec.node_name,
               hostname=hostname or t.spec.hostname, subdomain=subdomain or t.spec.subdomain,
               template=t.raw)


def expand_deployment(dep: Workload, owned_rs: set[tuple[str, str]]) -> Workload | None:
    """The ReplicaSet a Deployment controller creates, unless it already owns one.

    `owned_rs` holds (namespace, deployment) of Deployments that own a ReplicaSet."""
    if (dep.namespace, dep.name) in owned_rs:
        return None
    h = pod_template_hash(dep.template.raw)
    name = f"{dep.name}-{h}"
    labels = {**dep.template.labels, "pod-template-hash": h}
    meta = ObjectMeta(name=name, namespace=dep.namespace, labels=labels,
                      uid=uid_for("ReplicaSet", dep.namespace, name), source=dep.meta.source,
                      owner_refs=[OwnerRef("Deployment", dep.name,
                                           dep.meta.uid or uid_for("Deployment", dep.namespace, dep.name),
                                           True, "apps/v1")])
    template = PodTemplate(labels, dict(dep.template.annotations), dep.template.spec,
                           _with_labels(dep.template.raw, labels))
    selector = LabelSelector(tuple(sorted({**dict(dep.selector.match_labels),
                                           "pod-template-hash": h}.items())),
                             dep.selector.match_expressions)
    return Workload("ReplicaSet", meta, selector, template, dep.replicas)


def _with_labels(template_raw: dict, labels: dict[str, str]) -> dict:
    raw = dict(template_raw)
    md = dict(raw.get("metadata") or {})
    md["labels"] = dict(labels)
    raw["metadata"] = md
    return raw


def _free_name(index: PodIndex, namespace: str, base: str, seed: str) -> str:
    """base-xxxxx not yet taken (generateName retries on a clash, so do we)."""
    attempt = 0
    while True:
        name = f"{base}-{random_suffix(namespace, base, seed, str(attempt) if attempt else '')}"
        if (namespace, name) not in index.names:
            return name
        attempt += 1


def expand_replicaset(rs: Workload, index: PodIndex) -> list[Pod]:
    have = len(index.owned_by("ReplicaSet", rs.name, rs.namespace))
    out = []
    i = 0
    while have + len(out) < (rs.replicas or 0):
        name = _free_name(index, rs.namespace, rs.name, str(i))
        i += 1
        pod = _new_pod(rs, name, dict(rs.template.labels))
        index.add(pod)
        out.append(pod)
    return out


def expand_statefulset(sts: Workload, index: PodIndex) -> list[Pod]:
    existing = {p.name for p in index.owned_by("StatefulSet", sts.name, sts.namespace)}
    out = []
    for ordinal in range(sts.ordinals_start, sts.ordinals_start + (sts.replicas or 0)):
        name = f"{sts.name}-{ordinal}"
        if name in existing:
            continue
        labels = {**sts.template.labels,
                  "statefulset.kubernetes.io/pod-name": name,
                  "apps.kubernetes.io/pod-index": str(ordinal)}
        pod = _new_pod(sts, name, labels, hostname=name, subdomain=sts.service_name)
        index.add(pod)
        out.append(pod)
    return out


def expand_daemonset(ds: Workload, index: PodIndex, nodes: list,
                     eligible: Callable[..., bool]) -> list[Pod]:
    """One pod per node the DaemonSet's pods may run on (selector, affinity, taints)."""
    have = {p.node_name for p in index.owned_by("DaemonSet", ds.name, ds.namespace)}
    out = []
    for node in nodes:
        if node.name in have or not eligible(ds.template.spec, node, daemonset=True):
            continue
        name = _free_name(index, ds.namespace, ds.name, node.name)
        labels = {**ds.template.labels, "pod-template-generation": "1"}
        pod = _new_pod(ds, name, labels, node_name=node.name)
        index.add(pod)
        out.append(pod)
    return out


def expand_virtualmachine(vm: Workload, index: PodIndex) -> list[Pod]:
    """KubeVirt: the VM's virt-launcher pod, labelled with the VM template's labels."""
    if index.owned_by("VirtualMachine", vm.name, vm.namespace):
        return []
    name = _free_name(index, vm.namespace, f"virt-launcher-{vm.name}", vm.name)
    labels = {**vm.template.labels, "kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": vm.name}
    pod = _new_pod(vm, name, labels)
    index.add(pod)
    return [pod]
