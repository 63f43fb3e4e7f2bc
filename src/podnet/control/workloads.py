"""Workload controllers: Deployment -> ReplicaSet -> Pods, StatefulSet, DaemonSet.

Each controller creates only what is missing: pods already present in the
inputs (a dump of a real cluster) and owned by the workload count towards its
replicas, and a Deployment that already owns a ReplicaSet does not get a new one.
"""

from __future__ import annotations

from typing import Callable, Iterable

from ..api.objects import LabelSelector, ObjectMeta, OwnerRef, Pod, PodTemplate, Workload
from .naming import pod_template_hash, random_suffix, uid_for


def _owned_by(pods: Iterable[Pod], kind: str, name: str, namespace: str) -> list[Pod]:
    return [p for p in pods
            if p.namespace == namespace
            and any(r.kind == kind and r.name == name for r in p.meta.owner_refs)]


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


def expand_deployment(dep: Workload, existing_rs: list[Workload]) -> Workload | None:
    """The ReplicaSet a Deployment controller creates, unless it already owns one."""
    owned = [rs for rs in existing_rs if rs.namespace == dep.namespace
             and any(r.kind == "Deployment" and r.name == dep.name for r in rs.meta.owner_refs)]
    if owned:
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


def expand_replicaset(rs: Workload, pods: list[Pod]) -> list[Pod]:
    have = len(_owned_by(pods, "ReplicaSet", rs.name, rs.namespace))
    out = []
    i = 0
    taken = {p.name for p in pods}
    while have + len(out) < (rs.replicas or 0):
        name = f"{rs.name}-{random_suffix(rs.namespace, rs.name, str(i))}"
        i += 1
        if name in taken:
            continue
        taken.add(name)
        out.append(_new_pod(rs, name, dict(rs.template.labels)))
    return out


def expand_statefulset(sts: Workload, pods: list[Pod]) -> list[Pod]:
    existing = {p.name for p in _owned_by(pods, "StatefulSet", sts.name, sts.namespace)}
    out = []
    for ordinal in range(sts.ordinals_start, sts.ordinals_start + (sts.replicas or 0)):
        name = f"{sts.name}-{ordinal}"
        if name in existing:
            continue
        labels = {**sts.template.labels,
                  "statefulset.kubernetes.io/pod-name": name,
                  "apps.kubernetes.io/pod-index": str(ordinal)}
        out.append(_new_pod(sts, name, labels, hostname=name, subdomain=sts.service_name))
    return out


def expand_daemonset(ds: Workload, pods: list[Pod], nodes: list,
                     eligible: Callable[[object, object], bool]) -> list[Pod]:
    """One pod per node the DaemonSet's pods may run on (selector, affinity, taints)."""
    have = {p.node_name for p in _owned_by(pods, "DaemonSet", ds.name, ds.namespace)}
    out = []
    for node in nodes:
        if node.name in have or not eligible(ds.template.spec, node, daemonset=True):
            continue
        name = f"{ds.name}-{random_suffix(ds.namespace, ds.name, node.name)}"
        labels = {**ds.template.labels, "pod-template-generation": "1"}
        out.append(_new_pod(ds, name, labels, node_name=node.name))
    return out


def expand_virtualmachine(vm: Workload, pods: list[Pod]) -> list[Pod]:
    """KubeVirt: the VM's virt-launcher pod, labelled with the VM template's labels."""
    if _owned_by(pods, "VirtualMachine", vm.name, vm.namespace):
        return []
    name = f"virt-launcher-{vm.name}-{random_suffix(vm.namespace, vm.name)}"
    labels = {**vm.template.labels, "kubevirt.io": "virt-launcher", "vm.kubevirt.io/name": vm.name}
    return [_new_pod(vm, name, labels)]
