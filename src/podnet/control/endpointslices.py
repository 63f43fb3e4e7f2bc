"""The EndpointSlice controller and the EndpointSlice mirroring controller.

For a Service with a selector: the pods of its namespace that match, have an IP
and are not terminal; conditions ready (Ready and not terminating, or always
with publishNotReadyAddresses), serving (Ready), terminating (being deleted);
named targetPorts resolved per pod (a pod without the named port is left out
of that port); endpoints grouped by their resolved port set, at most 100 per
slice, one address type per slice; hostname when the pod's hostname+subdomain
name this Service; nodeName and zone from the node.

For a Service without a selector: EndpointSlices the user supplied, else their
v1 Endpoints mirrored into slices (endpointslicemirroring-controller).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Optional

from ..api.objects import (Endpoint, EndpointPort, Endpoints, EndpointSlice, Node, ObjectMeta,
                           Pod, Service)
from .naming import random_suffix, uid_for

MAX_ENDPOINTS_PER_SLICE = 100
MANAGED_BY = "endpointslice-controller.k8s.io"
MIRROR_MANAGED_BY = "endpointslicemirroring-controller.k8s.io"


def resolve_target_port(svc_port, pod: Pod) -> Optional[int]:
    target = svc_port.target
    if isinstance(target, int):
        return target
    return pod.spec.port_by_name(target, svc_port.protocol)


def _slice_meta(svc: Service, name: str, managed_by: str) -> ObjectMeta:
    labels = {k: v for k, v in svc.meta.labels.items()}
    labels["kubernetes.io/service-name"] = svc.name
    labels["endpointslice.kubernetes.io/managed-by"] = managed_by
    if svc.headless:
        labels["service.kubernetes.io/headless"] = ""
    return ObjectMeta(name=name, namespace=svc.namespace, labels=labels,
                      uid=uid_for("EndpointSlice", svc.namespace, name),
                      generate_name=f"{svc.name}-")


def _slice_name(svc: Service, index: int, address_type: str) -> str:
    base = svc.name[:57]
    return f"{base}-{random_suffix(svc.namespace, svc.name, address_type, str(index))}"


def slices_for_service(svc: Service, pods: Iterable[Pod], nodes: dict[str, Node]) -> list[EndpointSlice]:
    if svc.selector is None or svc.type == "ExternalName":
        return []
    families = [ip.version for ip in svc.cluster_ips] or \
        ([4 if f == "IPv4" else 6 for f in svc.ip_families] or [4])
    if svc.headless and not svc.ip_families:
        families = sorted({ip.version for p in pods for ip in p.pod_ips}) or [4]
    out: list[EndpointSlice] = []
    for family in families:
        address_type = "IPv4" if family == 4 else "IPv6"
        groups: dict[tuple, list[Endpoint]] = defaultdict(list)
        for pod in sorted(pods, key=lambda p: p.name):
            ip = pod.ip_of(family)
            if ip is None or pod.terminal:
                continue
            ports = []
            for sp in svc.ports:
                port = resolve_target_port(sp, pod)
                if port is None:
                    continue
                ports.append(EndpointPort(port, sp.protocol, sp.name, sp.app_protocol))
            ready_pod = bool(pod.ready) and pod.phase == "Running"
            terminating = pod.terminating
            node = nodes.get(pod.node_name)
            hostname = pod.hostname if (pod.hostname and pod.subdomain == svc.name) else None
            ep = Endpoint(
                addresses=[str(ip)],
                ready=True if svc.publish_not_ready else (ready_pod and not terminating),
                serving=True if svc.publish_not_ready else ready_pod,
                terminating=terminating,
                hostname=hostname,
                node_name=pod.node_name or None,
                zone=node.zone if node else None,
                target_ref=("Pod", pod.namespace, pod.name),
            )
            groups[tuple(ports)].append(ep)
        index = 0
        for ports, endpoints in sorted(groups.items(), key=lambda kv: [(p.name, p.port) for p in kv[0]]):
            for start in range(0, len(endpoints), MAX_ENDPOINTS_PER_SLICE):
                meta = _slice_meta(svc, _slice_name(svc, index, address_type), MANAGED_BY)
                out.append(EndpointSlice(meta, address_type,
                                         endpoints[start:start + MAX_ENDPOINTS_PER_SLICE], list(ports)))
                index += 1
        if not groups and svc.ports is not None:
            # an empty slice still exists, so consumers know the Service has no endpoints
            meta = _slice_meta(svc, _slice_name(svc, 0, address_type), MANAGED_BY)
            out.append(EndpointSlice(meta, address_type, [],
                                     [EndpointPort(None, p.protocol, p.name, p.app_protocol)
                                      for p in svc.ports]))
    return out


def mirror_endpoints(svc: Service, ep: Endpoints) -> list[EndpointSlice]:
    """endpointslicemirroring-controller: v1 Endpoints of a selector-less Service -> slices."""
    if ep.meta.labels.get("endpointslice.kubernetes.io/skip-mirror") == "true":
        return []
    out = []
    for index, subset in enumerate(ep.subsets):
        by_type: dict[str, list[Endpoint]] = defaultdict(list)
        for ready, addrs in ((True, subset.addresses), (False, subset.not_ready)):
            for ip, hostname, node_name, ref in addrs:
                kind = "IPv6" if ":" in ip else "IPv4"
                by_type[kind].append(Endpoint([ip], ready=ready, serving=ready, terminating=False,
                                              hostname=hostname, node_name=node_name, target_ref=ref))
        for address_type, endpoints in sorted(by_type.items()):
            name = f"{ep.meta.name[:57]}-{random_suffix(ep.meta.namespace, ep.meta.name, address_type, str(index))}"
            meta = _slice_meta(svc, name, MIRROR_MANAGED_BY)
            meta.generate_name = f"{ep.meta.name}-"
            out.append(EndpointSlice(meta, address_type, endpoints, list(subset.ports)))
    return out
