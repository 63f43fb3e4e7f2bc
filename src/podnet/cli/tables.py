"""kubectl-style tables for `podnet get`.

Columns, headers and cell formats follow `kubectl get` (its printers in
k8s.io/kubernetes/pkg/printers/internalversion), so the output reads the same.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable, Optional

from ..api.objects import EndpointSlice, Node, Pod, Service, Workload
from ..cluster import Cluster

KUBERNETES_VERSION = "v1.33.1"


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    """kubectl's tabwriter: columns padded to the widest cell + 3 spaces."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [headers] + rows:
        cells = [cell.ljust(widths[i]) if i < len(row) - 1 else cell for i, cell in enumerate(row)]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


class AgeClock:
    """AGE relative to the newest creationTimestamp in the inputs (the time of the dump),
    so the same inputs always print the same table."""

    def __init__(self, cluster: Cluster):
        stamps = [_parse_ts(o.meta.creation_timestamp) for o in _all_objects(cluster)]
        stamps = [s for s in stamps if s]
        self.now = max(stamps) if stamps else None

    def age(self, obj) -> str:
        ts = _parse_ts(obj.meta.creation_timestamp)
        if ts is None or self.now is None:
            return "<unknown>"
        return human_duration((self.now - ts).total_seconds())


def _parse_ts(value: Optional[str]):
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """duration.HumanDuration as kubectl prints it."""
    s = int(seconds)
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = s // 3600
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if h < 24 * 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"


def _all_objects(cluster: Cluster):
    yield from cluster.namespaces.values()
    yield from cluster.nodes
    yield from cluster.pods
    yield from cluster.services
    yield from cluster.endpoint_slices
    yield from cluster.workloads
    for objs in cluster.others.values():
        yield from objs


# ----------------------------------------------------------------------- cells

def pod_ready(p: Pod) -> str:
    n = max(1, len(p.spec.containers))
    return f"{n if p.is_ready else 0}/{n}"


def service_external_ip(s: Service) -> str:
    if s.type == "ExternalName":
        return s.external_name
    ips = [str(ip) for ip in s.lb_ips] + [str(ip) for ip in s.external_ips]
    if s.type == "LoadBalancer" and not s.lb_ips:
        return ",".join(["<pending>"] + [str(ip) for ip in s.external_ips]) if s.external_ips else "<pending>"
    return ",".join(ips) if ips else "<none>"


def service_ports(s: Service) -> str:
    if not s.ports:
        return "<none>"
    return ",".join(f"{p.port}:{p.node_port}/{p.protocol}" if p.node_port else f"{p.port}/{p.protocol}"
                    for p in s.ports)


def service_cluster_ip(s: Service) -> str:
    if s.type == "ExternalName":
        return "<none>"
    if s.headless:
        return "None"
    return ",".join(str(ip) for ip in s.cluster_ips) or "<none>"


def slice_ports(es: EndpointSlice) -> str:
    if not es.ports:
        return "<unset>"
    return ",".join(str(p.port) if p.port is not None else "<unset>" for p in es.ports)


def slice_endpoints(es: EndpointSlice) -> str:
    addrs = [a for e in es.endpoints for a in e.addresses]
    if not addrs:
        return "<none>"
    if len(addrs) > 3:
        return ",".join(addrs[:3]) + f" + {len(addrs) - 3} more..."
    return ",".join(addrs)


def node_roles(n: Node) -> str:
    return ",".join(n.roles) or "<none>"


def selector_str(sel: Optional[dict]) -> str:
    if not sel:
        return "<none>"
    return ",".join(f"{k}={v}" for k, v in sorted(sel.items()))


# ----------------------------------------------------------------------- kinds

Row = Callable[[object], list[str]]


class KindTable:
    def __init__(self, name: str, aliases: tuple[str, ...], namespaced: bool,
                 items: Callable[[Cluster], list], headers: list[str], row: Callable,
                 wide_headers: list[str] = (), wide_row: Callable | None = None):
        self.name, self.aliases, self.namespaced = name, aliases, namespaced
        self.items, self.headers, self.row = items, headers, row
        self.wide_headers, self.wide_row = list(wide_headers), wide_row


def _workload_ready(c: Cluster, w: Workload) -> tuple[int, int]:
    pods = [p for p in c.pods if p.namespace == w.namespace and w.selector.matches(p.meta.labels)]
    ready = sum(1 for p in pods if p.is_ready)
    want = len(pods) if w.replicas is None else w.replicas
    return ready, want


def _workloads(kind: str):
    return lambda c: [w for w in c.workloads if w.kind == kind]


def _others(kind: str):
    return lambda c: c.objects(kind)


def _np_selector(o) -> str:
    sel = (o.spec or {}).get("podSelector") or {}
    labels = sel.get("matchLabels") or {}
    parts = [f"{k}={v}" for k, v in sorted(labels.items())]
    for e in sel.get("matchExpressions") or []:
        parts.append(f"{e.get('key')} {str(e.get('operator', '')).lower()} ({','.join(e.get('values') or [])})")
    return ",".join(parts) or "<none>"


def kind_tables() -> list[KindTable]:
    return [
        KindTable("pods", ("po", "pod", "pods"), True, lambda c: c.pods,
                  ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
                  lambda c, clock, p: [p.name, pod_ready(p), "Terminating" if p.terminating else p.phase,
                                       "0", clock.age(p)],
                  ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"],
                  lambda c, clock, p: [str(p.pod_ip) if p.pod_ip else "<none>", p.node_name or "<none>",
                                       "<none>", "<none>"]),
        KindTable("services", ("svc", "service", "services"), True, lambda c: c.services,
                  ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"],
                  lambda c, clock, s: [s.name, s.type, service_cluster_ip(s), service_external_ip(s),
                                       service_ports(s), clock.age(s)],
                  ["SELECTOR"], lambda c, clock, s: [selector_str(s.selector)]),
        KindTable("endpointslices", ("endpointslice", "endpointslices"), True,
                  lambda c: c.endpoint_slices,
                  ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"],
                  lambda c, clock, e: [e.meta.name, e.address_type, slice_ports(e), slice_endpoints(e),
                                       clock.age(e)]),
        KindTable("endpoints", ("ep", "endpoints"), True, lambda c: _endpoints_view(c),
                  ["NAME", "ENDPOINTS", "AGE"],
                  lambda c, clock, e: [e[0].name, e[1], clock.age(e[0])]),
        KindTable("nodes", ("no", "node", "nodes"), False, lambda c: c.nodes,
                  ["NAME", "STATUS", "ROLES", "AGE", "VERSION"],
                  lambda c, clock, n: [n.name, "Ready" + (",SchedulingDisabled" if n.unschedulable else ""),
                                       node_roles(n), clock.age(n), KUBERNETES_VERSION],
                  ["INTERNAL-IP", "EXTERNAL-IP", "POD-CIDR", "OS-IMAGE", "CONTAINER-RUNTIME"],
                  lambda c, clock, n: [",".join(str(i) for i in n.internal_ips) or "<none>",
                                       next((a for t, a in n.addresses if t == "ExternalIP"), "<none>"),
                                       ",".join(str(x) for x in n.pod_cidrs) or "<none>",
                                       "Debian GNU/Linux 12 (bookworm)", "containerd://2.1.1"]),
        KindTable("namespaces", ("ns", "namespace", "namespaces"), False,
                  lambda c: sorted(c.namespaces.values(), key=lambda n: n.meta.name),
                  ["NAME", "STATUS", "AGE"], lambda c, clock, n: [n.meta.name, "Active", clock.age(n)]),
        KindTable("deployments", ("deploy", "deployment", "deployments"), True, _workloads("Deployment"),
                  ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
                  lambda c, clock, w: (lambda r: [w.name, f"{r[0]}/{r[1]}", str(r[1]), str(r[0]),
                                                  clock.age(w)])(_workload_ready(c, w))),
        KindTable("replicasets", ("rs", "replicaset", "replicasets"), True, _workloads("ReplicaSet"),
                  ["NAME", "DESIRED", "CURRENT", "READY", "AGE"],
                  lambda c, clock, w: (lambda r: [w.name, str(r[1]), str(r[1]), str(r[0]),
                                                  clock.age(w)])(_workload_ready(c, w))),
        KindTable("statefulsets", ("sts", "statefulset", "statefulsets"), True, _workloads("StatefulSet"),
                  ["NAME", "READY", "AGE"],
                  lambda c, clock, w: (lambda r: [w.name, f"{r[0]}/{r[1]}", clock.age(w)])(_workload_ready(c, w))),
        KindTable("daemonsets", ("ds", "daemonset", "daemonsets"), True, _workloads("DaemonSet"),
                  ["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "NODE SELECTOR", "AGE"],
                  lambda c, clock, w: (lambda r: [w.name, str(r[1]), str(r[1]), str(r[0]), str(r[1]),
                                                  str(r[0]), selector_str(dict(w.template.spec.node_selector)),
                                                  clock.age(w)])(_workload_ready(c, w))),
        KindTable("networkpolicies", ("netpol", "networkpolicy", "networkpolicies"), True,
                  _others("NetworkPolicy"), ["NAME", "POD-SELECTOR", "AGE"],
                  lambda c, clock, o: [o.name, _np_selector(o), clock.age(o)]),
        KindTable("ingresses", ("ing", "ingress", "ingresses"), True, _others("Ingress"),
                  ["NAME", "CLASS", "HOSTS", "ADDRESS", "PORTS", "AGE"],
                  lambda c, clock, o: [o.name, (o.spec or {}).get("ingressClassName") or "<none>",
                                       ",".join(r.get("host", "*") for r in (o.spec or {}).get("rules") or []) or "*",
                                       "", "443" if (o.spec or {}).get("tls") else "80", clock.age(o)]),
        KindTable("ingressclasses", ("ingressclass", "ingressclasses"), False, _others("IngressClass"),
                  ["NAME", "CONTROLLER", "PARAMETERS", "AGE"],
                  lambda c, clock, o: [o.name, (o.spec or {}).get("controller", ""), "<none>", clock.age(o)]),
        KindTable("gatewayclasses", ("gc", "gatewayclass", "gatewayclasses"), False, _others("GatewayClass"),
                  ["NAME", "CONTROLLER", "ACCEPTED", "AGE"],
                  lambda c, clock, o: [o.name, (o.spec or {}).get("controllerName", ""), "Unknown", clock.age(o)]),
        KindTable("gateways", ("gtw", "gateway", "gateways"), True, _others("Gateway"),
                  ["NAME", "CLASS", "ADDRESS", "PROGRAMMED", "AGE"],
                  lambda c, clock, o: [o.name, (o.spec or {}).get("gatewayClassName", ""), "", "Unknown",
                                       clock.age(o)]),
        KindTable("httproutes", ("httproute", "httproutes"), True, _others("HTTPRoute"),
                  ["NAME", "HOSTNAMES", "AGE"],
                  lambda c, clock, o: [o.name, str((o.spec or {}).get("hostnames") or []), clock.age(o)]),
    ]


def _endpoints_view(c: Cluster) -> list:
    """v1 Endpoints as kubectl shows them, derived from the EndpointSlices."""
    out = []
    for svc in c.services:
        if svc.type == "ExternalName":
            continue
        addrs = []
        for es in c.slices_of(svc):
            for e in es.endpoints:
                if e.ready is False:
                    continue
                for a in e.addresses:
                    for p in es.ports:
                        if p.port is not None:
                            addrs.append(f"{a}:{p.port}" if ":" not in a else f"[{a}]:{p.port}")
        text = "<none>" if not addrs else (",".join(addrs[:3]) + (f" + {len(addrs) - 3} more..." if len(addrs) > 3 else ""))
        out.append((svc, text))
    return out


def find_kind(name: str) -> Optional[KindTable]:
    name = name.lower().split(".")[0]
    for t in kind_tables():
        if name in t.aliases:
            return t
    return None
