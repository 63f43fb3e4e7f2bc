"""Kubernetes objects, as far as networking cares about them.

Each kind is a typed dataclass parsed from a manifest by `from_manifest`, which
validates field types and reports errors as "file: Kind ns/name: field: ...".
Objects keep the manifest they came from (`raw`) so `-o yaml` can print what
the user wrote plus what the controllers decided (`to_manifest`).

Controllers (podnet.control) fill in the fields a real cluster would decide:
Pod.node_name / pod_ips / host_ip, Service.cluster_ips / node ports / LB
ingress, Node.pod_cidrs / addresses, and create EndpointSlices.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from ..errors import InputError
from .fields import Fields

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

PROTOCOLS = ("TCP", "UDP", "SCTP")


# ---------------------------------------------------------------------------
# metadata and selectors
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class OwnerRef:
    kind: str
    name: str
    uid: str = ""
    controller: bool = False
    api_version: str = ""


@dataclass(slots=True)
class ObjectMeta:
    name: str
    namespace: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    uid: str = ""
    owner_refs: list[OwnerRef] = field(default_factory=list)
    creation_timestamp: Optional[str] = None
    deletion_timestamp: Optional[str] = None
    generate_name: str = ""
    source: str = ""                # file the object came from ("" = made by podnet)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def controller(self) -> Optional[OwnerRef]:
        for ref in self.owner_refs:
            if ref.controller:
                return ref
        return self.owner_refs[0] if self.owner_refs else None

    def to_manifest(self) -> dict:
        out: dict[str, Any] = {"name": self.name}
        if self.namespace:
            out["namespace"] = self.namespace
        if self.generate_name:
            out["generateName"] = self.generate_name
        if self.labels:
            out["labels"] = dict(self.labels)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.uid:
            out["uid"] = self.uid
        if self.creation_timestamp:
            out["creationTimestamp"] = self.creation_timestamp
        if self.deletion_timestamp:
            out["deletionTimestamp"] = self.deletion_timestamp
        if self.owner_refs:
            out["ownerReferences"] = [
                {k: v for k, v in (("apiVersion", r.api_version), ("kind", r.kind),
                                   ("name", r.name), ("uid", r.uid),
                                   ("controller", r.controller or None)) if v}
                for r in self.owner_refs]
        return out


def parse_meta(f: Fields, namespaced: bool, default_namespace: str = "default") -> ObjectMeta:
    m = f.dict("metadata")
    name = m.str("name")
    if not name:
        if m.str("generateName"):
            raise m.error("name", "objects with only generateName need a name in podnet inputs")
        raise m.error("name", "required field is missing")
    refs = []
    for r in m.dicts("ownerReferences"):
        kind = r.str("kind", "") or ""
        if not kind:
            r.warn("kind", "owner reference without a kind (the API server would reject it)")
        refs.append(OwnerRef(kind=kind, name=r.str("name", required=True),
                             uid=r.str("uid", "") or "", controller=bool(r.bool("controller", False)),
                             api_version=r.str("apiVersion", "") or ""))
    ts = m.raw("creationTimestamp")
    dts = m.raw("deletionTimestamp")
    return ObjectMeta(
        name=name,
        namespace=(m.str("namespace") or default_namespace) if namespaced else "",
        labels=m.str_map("labels"),
        annotations=m.str_map("annotations"),
        uid=m.str("uid", "") or "",
        owner_refs=refs,
        creation_timestamp=str(ts) if ts is not None else None,
        deletion_timestamp=str(dts) if dts is not None else None,
        generate_name=m.str("generateName", "") or "",
        source=f.file or "",
    )


@dataclass(slots=True, frozen=True)
class Requirement:
    key: str
    operator: str                   # In | NotIn | Exists | DoesNotExist | Gt | Lt
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        op = self.operator
        if op == "In":
            return labels.get(self.key) in self.values if self.key in labels else False
        if op == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if op == "Exists":
            return self.key in labels
        if op == "DoesNotExist":
            return self.key not in labels
        if op in ("Gt", "Lt"):
            try:
                have, want = int(labels[self.key]), int(self.values[0])
            except (KeyError, ValueError, IndexError):
                return False
            return have > want if op == "Gt" else have < want
        return False


SELECTOR_OPS = ("In", "NotIn", "Exists", "DoesNotExist")

_LABEL_KEY = r"[A-Za-z0-9][A-Za-z0-9._/-]*"
_LABEL_VALUE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)?")
# one requirement of a textual selector, and the comma after it
_SELECTOR_TERM = re.compile(rf"""\s*(?:
      !\s*(?P<nkey>{_LABEL_KEY})
    | (?P<key>{_LABEL_KEY})\s*(?:
          (?P<op>==|=|!=|>|<)\s*(?P<value>{_LABEL_VALUE.pattern})
        | \s(?P<setop>in|notin)\s*\((?P<values>[^()]*)\)
      )?
    )\s*(?:,|$)""", re.X)


@dataclass(slots=True, frozen=True)
class LabelSelector:
    """metav1.LabelSelector. `None` selectors are represented by Optional at use sites;
    an empty LabelSelector selects everything."""
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    @classmethod
    def parse(cls, f: Fields, ops: tuple[str, ...] = SELECTOR_OPS) -> "LabelSelector":
        labels = f.str_map("matchLabels")
        exprs = []
        for e in f.dicts("matchExpressions"):
            op = e.str("operator", required=True, choices=ops)
            values = tuple(e.strs("values"))
            if op in ("In", "NotIn") and not values:
                raise e.error("values", f"must be non-empty for operator {op}")
            if op in ("Exists", "DoesNotExist") and values:
                raise e.error("values", f"must be empty for operator {op}")
            exprs.append(Requirement(e.str("key", required=True), op, values))
        return cls(tuple(sorted(labels.items())), tuple(exprs))

    @classmethod
    def from_labels(cls, labels: dict[str, str]) -> "LabelSelector":
        return cls(tuple(sorted(labels.items())))

    @classmethod
    def from_text(cls, text: str, field: str = "--selector") -> "LabelSelector":
        """A selector as `kubectl get -l` takes it (apimachinery's labels.Parse): `k=v`, `k==v`,
        `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`, `k>1`, `k<1`, joined with commas."""
        labels, exprs, pos = [], [], 0
        while pos < len(text):
            m = _SELECTOR_TERM.match(text, pos)
            if m is None or not m.group(0).strip(" ,"):
                raise InputError(f"cannot parse the label selector {text!r} at {text[pos:]!r}", field=field)
            pos = m.end()
            key, op, value = m.group("key") or m.group("nkey"), m.group("op"), m.group("value")
            if m.group("nkey"):
                exprs.append(Requirement(key, "DoesNotExist"))
            elif op in ("=", "=="):
                labels.append((key, value))
            elif op == "!=":
                exprs.append(Requirement(key, "NotIn", (value,)))
            elif op in (">", "<"):
                if not value.isdigit():
                    raise InputError(f"{key}{op}{value}: {op} needs an integer", field=field)
                exprs.append(Requirement(key, "Gt" if op == ">" else "Lt", (value,)))
            elif m.group("setop"):
                values = tuple(v.strip() for v in m.group("values").split(","))
                if not all(_LABEL_VALUE.fullmatch(v) for v in values):
                    raise InputError(f"bad value in {m.group(0).strip(' ,')!r}", field=field)
                exprs.append(Requirement(key, "In" if m.group("setop") == "in" else "NotIn", values))
            else:
                exprs.append(Requirement(key, "Exists"))
        return cls(tuple(labels), tuple(exprs))

    def matches(self, labels: dict[str, str]) -> bool:
        for k, v in self.match_labels:
            if labels.get(k) != v:
                return False
        for req in self.match_expressions:
            if not req.matches(labels):
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def to_manifest(self) -> dict:
        out: dict[str, Any] = {}
        if self.match_labels:
            out["matchLabels"] = dict(self.match_labels)
        if self.match_expressions:
            out["matchExpressions"] = [
                {"key": r.key, "operator": r.operator, **({"values": list(r.values)} if r.values else {})}
                for r in self.match_expressions]
        return out

    def __str__(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("In", "NotIn"):
                parts.append(f"{r.key} {r.operator.lower()} ({','.join(r.values)})")
            elif r.operator == "Exists":
                parts.append(r.key)
            else:
                parts.append(f"!{r.key}")
        return ",".join(parts) or "<all>"


# ---------------------------------------------------------------------------
# Namespace, Node
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class Namespace:
    meta: ObjectMeta
    raw: Optional[dict] = None
    kind = "Namespace"

    @classmethod
    def from_manifest(cls, f: Fields) -> "Namespace":
        meta = parse_meta(f, namespaced=False)
        # the API server always sets this label
        meta.labels.setdefault("kubernetes.io/metadata.name", meta.name)
        return cls(meta, f.data)

    def to_manifest(self) -> dict:
        return {"apiVersion": "v1", "kind": "Namespace", "metadata": self.meta.to_manifest(),
                "status": {"phase": "Active"}}


@dataclass(slots=True, frozen=True)
class Taint:
    key: str
    effect: str                     # NoSchedule | PreferNoSchedule | NoExecute
    value: str = ""


@dataclass(slots=True)
class Node:
    meta: ObjectMeta
    pod_cidrs: list[IPNetwork] = field(default_factory=list)
    addresses: list[tuple[str, str]] = field(default_factory=list)  # (type, address)
    taints: list[Taint] = field(default_factory=list)
    unschedulable: bool = False
    max_pods: int = 110
    provider_id: str = ""
    raw: Optional[dict] = None
    kind = "Node"

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def internal_ips(self) -> list[IPAddress]:
        out = []
        for t, a in self.addresses:
            if t == "InternalIP":
                try:
                    out.append(ipaddress.ip_address(a))
                except ValueError:
                    pass
        return out

    @property
    def internal_ip(self) -> Optional[IPAddress]:
        ips = self.internal_ips
        return ips[0] if ips else None

    def internal_ip_of(self, family: int) -> Optional[IPAddress]:
        for ip in self.internal_ips:
            if ip.version == family:
                return ip
        return None

    @property
    def zone(self) -> Optional[str]:
        return self.meta.labels.get("topology.kubernetes.io/zone")

    @property
    def roles(self) -> list[str]:
        prefix = "node-role.kubernetes.io/"
        return sorted(k[len(prefix):] for k in self.meta.labels if k.startswith(prefix))

    @property
    def is_control_plane(self) -> bool:
        return any(r in ("control-plane", "master") for r in self.roles)

    @classmethod
    def from_manifest(cls, f: Fields) -> "Node":
        meta = parse_meta(f, namespaced=False)
        spec, status = f.dict("spec"), f.dict("status")
        cidrs = []
        for i, c in enumerate(spec.strs("podCIDRs")):
            cidrs.append(_cidr(spec, f"podCIDRs[{i}]", c))
        single = spec.str("podCIDR")
        if single and not cidrs:
            cidrs.append(_cidr(spec, "podCIDR", single))
        taints = [Taint(t.str("key", required=True),
                        t.str("effect", required=True,
                              choices=("NoSchedule", "PreferNoSchedule", "NoExecute")),
                        t.str("value", "") or "")
                  for t in spec.dicts("taints")]
        addresses = [(a.str("type", required=True), a.str("address", required=True))
                     for a in status.dicts("addresses")]
        for i, (t, a) in enumerate(addresses):
            if t in ("InternalIP", "ExternalIP"):
                try:
                    ipaddress.ip_address(a)
                except ValueError:
                    raise status.error(f"addresses[{i}].address", f"not an IP address: {a!r}") from None
        cap = status.dict("capacity").raw("pods")
        max_pods = int(cap) if isinstance(cap, (int, str)) and str(cap).isdigit() else 110
        meta.labels.setdefault("kubernetes.io/hostname", meta.name)
        return cls(meta, cidrs, addresses, taints, bool(spec.bool("unschedulable", False)),
                   max_pods, spec.str("providerID", "") or "", f.data)

    def to_manifest(self) -> dict:
        spec: dict[str, Any] = {}
        if self.pod_cidrs:
            spec["podCIDR"] = str(self.pod_cidrs[0])
            spec["podCIDRs"] = [str(c) for c in self.pod_cidrs]
        if self.provider_id:
            spec["providerID"] = self.provider_id
        if self.taints:
            spec["taints"] = [{"key": t.key, "effect": t.effect, **({"value": t.value} if t.value else {})}
                              for t in self.taints]
        if self.unschedulable:
            spec["unschedulable"] = True
        return {"apiVersion": "v1", "kind": "Node", "metadata": self.meta.to_manifest(),
                "spec": spec,
                "status": {"addresses": [{"type": t, "address": a} for t, a in self.addresses],
                           "capacity": {"pods": str(self.max_pods)}}}


def _cidr(f: Fields, key: str, value: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise f.error(key, f"not a CIDR: {value!r}") from None


# ---------------------------------------------------------------------------
# Pod
# ---------------------------------------------------------------------------

@dataclass(slots=True, frozen=True)
class ContainerPort:
    container_port: int
    protocol: str = "TCP"
    name: str = ""
    host_port: Optional[int] = None
    host_ip: str = ""


@dataclass(slots=True, frozen=True)
class Container:
    name: str
    image: str = ""
    ports: tuple[ContainerPort, ...] = ()
    command: tuple[str, ...] = ()


@dataclass(slots=True, frozen=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"         # Equal | Exists
    value: str = ""
    effect: str = ""                # "" = all effects

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(slots=True, frozen=True)
class NodeSelectorTerm:
    match_expressions: tuple[Requirement, ...] = ()
    match_fields: tuple[Requirement, ...] = ()   # only metadata.name

    def matches(self, node: Node) -> bool:
        if not self.match_expressions and not self.match_fields:
            return False            # an empty term matches nothing
        if not all(r.matches(node.meta.labels) for r in self.match_expressions):
            return False
        fields = {"metadata.name": node.name}
        return all(r.matches(fields) for r in self.match_fields)


@dataclass(slots=True, frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[tuple[str, Optional[str]], ...] = ()


@dataclass(slots=True, frozen=True)
class PodSpec:
    """The parts of a pod spec shared by every replica of a template."""
    containers: tuple[Container, ...] = ()
    init_containers: tuple[Container, ...] = ()
    host_network: bool = False
    hostname: str = ""
    subdomain: str = ""
    dns_policy: str = "ClusterFirst"
    dns_config: Optional[DNSConfig] = None
    node_selector: tuple[tuple[str, str], ...] = ()
    required_node_terms: tuple[NodeSelectorTerm, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    node_name: str = ""
    scheduler_name: str = "default-scheduler"
    priority_class: str = ""

    def all_ports(self) -> list[ContainerPort]:
        return [p for c in self.containers for p in c.ports]

    def port_by_name(self, name: str, protocol: str) -> Optional[int]:
        for c in self.containers:
            for p in c.ports:
                if p.name == name and p.protocol == protocol:
                    return p.container_port
        return None

    def scheduling_key(self) -> tuple:
        return (self.node_selector, self.required_node_terms, self.tolerations)


def _requirements(items: list[Fields], ops: tuple[str, ...]) -> tuple[Requirement, ...]:
    out = []
    for e in items:
        op = e.str("operator", required=True, choices=ops)
        out.append(Requirement(e.str("key", required=True), op, tuple(e.strs("values"))))
    return tuple(out)


def _container(c: Fields) -> Container:
    ports = []
    seen = set()
    for p in c.dicts("ports"):
        if not p.has("containerPort"):
            unknown = sorted(set(p.data) - {"name", "protocol", "hostPort", "hostIP"})
            p.warn("containerPort", "port without containerPort skipped"
                   + (f" (unknown fields: {', '.join(unknown)})" if unknown else ""))
            continue
        cp = p.int("containerPort", required=True, minimum=1, maximum=65535)
        proto = p.str("protocol", "TCP", choices=PROTOCOLS)
        ports.append(ContainerPort(cp, proto, p.str("name", "") or "",
                                   p.int("hostPort", minimum=1, maximum=65535),
                                   p.str("hostIP", "") or ""))
        seen.add((cp, proto))
    return Container(c.str("name", "") or "", c.str("image", "") or "", tuple(ports),
                     tuple(str(x) for x in c.list("command")))


def parse_pod_spec(spec: Fields) -> PodSpec:
    containers = tuple(_container(c) for c in spec.dicts("containers"))
    init = tuple(_container(c) for c in spec.dicts("initContainers"))
    # the sandbox model: all containers share one network namespace
    claimed: dict[tuple[int, str], str] = {}
    for i, c in enumerate(spec.dicts("containers")):
        for j, p in enumerate(c.dicts("ports")):
            if not p.has("containerPort"):
                continue
            key = (p.int("containerPort"), p.str("protocol", "TCP"))
            owner = c.str("name", "") or f"#{i}"
            if key in claimed and claimed[key] != owner:
                raise p.error("containerPort",
                              f"port {key[0]}/{key[1]} is already used by container "
                              f"{claimed[key]} in the same pod (containers share one network namespace)")
            claimed[key] = owner
    dns_cfg = None
    if spec.has("dnsConfig"):
        d = spec.dict("dnsConfig")
        dns_cfg = DNSConfig(tuple(d.strs("nameservers")), tuple(d.strs("searches")),
                            tuple((o.str("name", required=True), o.str("value"))
                                  for o in d.dicts("options")))
    terms: list[NodeSelectorTerm] = []
    req = spec.dict("affinity").dict("nodeAffinity").dict(
        "requiredDuringSchedulingIgnoredDuringExecution")
    node_ops = ("In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt")
    for t in req.dicts("nodeSelectorTerms"):
        terms.append(NodeSelectorTerm(_requirements(t.dicts("matchExpressions"), node_ops),
                                      _requirements(t.dicts("matchFields"), node_ops)))
    tolerations = tuple(
        Toleration(t.str("key", "") or "", t.str("operator", "Equal", choices=("Equal", "Exists")),
                   t.str("value", "") or "",
                   t.str("effect", "", choices=("", "NoSchedule", "PreferNoSchedule", "NoExecute")))
        for t in spec.dicts("tolerations"))
    return PodSpec(
        containers=containers, init_containers=init,
        host_network=bool(spec.bool("hostNetwork", False)),
        hostname=spec.str("hostname", "") or "",
        subdomain=spec.str("subdomain", "") or "",
        dns_policy=spec.str("dnsPolicy", "ClusterFirst",
                            choices=("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")),
        dns_config=dns_cfg,
        node_selector=tuple(sorted(spec.str_map("nodeSelector").items())),
        required_node_terms=tuple(terms),
        tolerations=tolerations,
        node_name=spec.str("nodeName", "") or "",
        scheduler_name=spec.str("schedulerName", "default-scheduler") or "default-scheduler",
        priority_class=spec.str("priorityClassName", "") or "",
    )


@dataclass(slots=True)
class Pod:
    meta: ObjectMeta
    spec: PodSpec
    node_name: str = ""
    hostname: str = ""              # effective (StatefulSet sets it per pod)
    subdomain: str = ""
    pod_ips: list[IPAddress] = field(default_factory=list)
    host_ip: Optional[IPAddress] = None
    phase: str = "Pending"
    ready: Optional[bool] = None    # the Ready condition; None = not recorded
    raw: Optional[dict] = None
    template: Optional[dict] = None  # pod template a controller expanded this pod from
    kind = "Pod"

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def host_network(self) -> bool:
        return self.spec.host_network

    @property
    def pod_ip(self) -> Optional[IPAddress]:
        return self.pod_ips[0] if self.pod_ips else None

    def ip_of(self, family: int) -> Optional[IPAddress]:
        for ip in self.pod_ips:
            if ip.version == family:
                return ip
        return None

    @property
    def terminating(self) -> bool:
        return self.meta.deletion_timestamp is not None

    @property
    def is_ready(self) -> bool:
        return bool(self.ready) and self.phase == "Running" and not self.terminating

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")

    @classmethod
    def from_manifest(cls, f: Fields) -> "Pod":
        meta = parse_meta(f, namespaced=True)
        specf = f.dict("spec")
        spec = parse_pod_spec(specf)
        status = f.dict("status")
        ips: list[IPAddress] = []
        for i, entry in enumerate(status.dicts("podIPs")):
            ip = entry.ip("ip", required=True)
            if ip not in ips:
                ips.append(ip)
        if not ips and status.has("podIP"):
            ips.append(status.ip("podIP"))
        ready = None
        for c in status.dicts("conditions"):
            if c.str("type") == "Ready":
                ready = c.str("status") == "True"
        phase = status.str("phase", "") or ""
        pod = cls(meta, spec, node_name=spec.node_name, hostname=spec.hostname,
                  subdomain=spec.subdomain, pod_ips=ips, host_ip=status.ip("hostIP"),
                  phase=phase or "Pending", ready=ready, raw=f.data)
        if not phase and ready is None:
            pod.phase = ""          # nothing recorded: the kubelet will decide
        return pod

    def to_manifest(self) -> dict:
        base = copy.deepcopy(self.raw) if self.raw else {}
        spec = base.get("spec") or copy.deepcopy((self.template or {}).get("spec") or {})
        if self.node_name:
            spec["nodeName"] = self.node_name
        if self.hostname:
            spec["hostname"] = self.hostname
        if self.subdomain:
            spec["subdomain"] = self.subdomain
        status = base.get("status") or {}
        status["phase"] = self.phase
        if self.host_ip is not None:
            status["hostIP"] = str(self.host_ip)
        if self.pod_ips:
            status["podIP"] = str(self.pod_ips[0])
            status["podIPs"] = [{"ip": str(ip)} for ip in self.pod_ips]
        if "conditions" not in status and self.ready is not None:
            status["conditions"] = [{"type": "Ready", "status": "True" if self.ready else "False"}]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": self.meta.to_manifest(),
                "spec": spec, "status": status}


# ---------------------------------------------------------------------------
# Service, Endpoints, EndpointSlice
# ---------------------------------------------------------------------------

SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")


@dataclass(slots=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    target_port: Union[int, str, None] = None   # None = same as port
    node_port: Optional[int] = None
    app_protocol: str = ""

    @property
    def target(self) -> Union[int, str]:
        return self.port if self.target_port is None else self.target_port


@dataclass(slots=True)
class Service:
    meta: ObjectMeta
    type: str = "ClusterIP"
    cluster_ips: list[IPAddress] = field(default_factory=list)
    headless: bool = False          # clusterIP: None
    ports: list[ServicePort] = field(default_factory=list)
    selector: Optional[dict[str, str]] = None   # None = selector-less
    external_ips: list[IPAddress] = field(default_factory=list)
    external_name: str = ""
    session_affinity: str = "None"  # None | ClientIP
    affinity_timeout: int = 10800
    external_traffic_policy: str = ""           # Cluster | Local ("" for ClusterIP)
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: Optional[int] = None
    load_balancer_ip: Optional[IPAddress] = None
    load_balancer_source_ranges: list[IPNetwork] = field(default_factory=list)
    load_balancer_class: str = ""
    allocate_lb_node_ports: bool = True
    ip_families: list[str] = field(default_factory=list)    # IPv4 / IPv6
    ip_family_policy: str = ""      # SingleStack | PreferDualStack | RequireDualStack
    publish_not_ready: bool = False
    lb_ingress: list[dict] = field(default_factory=list)    # status.loadBalancer.ingress
    traffic_distribution: str = ""
    requested_cluster_ips: bool = False         # the user asked for specific IPs
    raw: Optional[dict] = None
    kind = "Service"

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def key(self) -> str:
        return self.meta.key

    @property
    def cluster_ip(self) -> Optional[IPAddress]:
        return self.cluster_ips[0] if self.cluster_ips else None

    @property
    def lb_ips(self) -> list[IPAddress]:
        out = []
        for ing in self.lb_ingress:
            ip = ing.get("ip")
            if ip:
                try:
                    out.append(ipaddress.ip_address(ip))
                except ValueError:
                    pass
        return out

    @property
    def has_node_ports(self) -> bool:
        return self.type == "NodePort" or (self.type == "LoadBalancer" and self.allocate_lb_node_ports)

    @property
    def external_policy_local(self) -> bool:
        return self.external_traffic_policy == "Local" and self.type in ("NodePort", "LoadBalancer")

    @classmethod
    def from_manifest(cls, f: Fields) -> "Service":
        meta = parse_meta(f, namespaced=True)
        spec = f.dict("spec")
        stype = spec.str("type", "ClusterIP", choices=SERVICE_TYPES)
        svc = cls(meta, type=stype, raw=f.data)
        # cluster IPs
        ips_raw = spec.strs("clusterIPs")
        single = spec.str("clusterIP")
        if not ips_raw and single:
            ips_raw = [single]
        if ips_raw and ips_raw[0] == "None":
            svc.headless = True
        else:
            for i, v in enumerate(ips_raw):
                if v == "":
                    continue
                try:
                    svc.cluster_ips.append(ipaddress.ip_address(v))
                except ValueError:
                    key = f"clusterIPs[{i}]" if spec.has("clusterIPs") else "clusterIP"
                    raise spec.error(key, f"not an IP address: {v!r}") from None
            svc.requested_cluster_ips = bool(svc.cluster_ips)
        names = set()
        for p in spec.dicts("ports"):
            port = p.int("port", required=True, minimum=1, maximum=65535)
            proto = p.str("protocol", "TCP", choices=PROTOCOLS)
            name = p.str("name", "") or ""
            tp = p.int_or_str("targetPort")
            if isinstance(tp, int) and not 1 <= tp <= 65535:
                raise p.error("targetPort", f"must be between 1 and 65535, got {tp}")
            if name in names:
                raise p.error("name", f"duplicate port name {name!r}")
            names.add(name)
            svc.ports.append(ServicePort(port, proto, name, tp,
                                         p.int("nodePort", minimum=1, maximum=65535),
                                         p.str("appProtocol", "") or ""))
        if len(svc.ports) > 1 and "" in names:
            raise spec.error("ports", "every port needs a name when a Service has several")
        if spec.has("selector"):
            svc.selector = spec.str_map("selector") or None
        svc.external_ips = []
        for i, v in enumerate(spec.strs("externalIPs")):
            try:
                svc.external_ips.append(ipaddress.ip_address(v))
            except ValueError:
                raise spec.error(f"externalIPs[{i}]", f"not an IP address: {v!r}") from None
        svc.external_name = spec.str("externalName", "") or ""
        if stype == "ExternalName" and not svc.external_name:
            raise spec.error("externalName", "required for type ExternalName")
        svc.session_affinity = spec.str("sessionAffinity", "None", choices=("None", "ClientIP"))
        svc.affinity_timeout = spec.dict("sessionAffinityConfig").dict("clientIP").int(
            "timeoutSeconds", 10800, minimum=1, maximum=86400)
        svc.external_traffic_policy = spec.str(
            "externalTrafficPolicy", "Cluster" if stype in ("NodePort", "LoadBalancer") else "",
            choices=("Cluster", "Local", ""))
        svc.internal_traffic_policy = spec.str("internalTrafficPolicy", "Cluster",
                                               choices=("Cluster", "Local"))
        svc.health_check_node_port = spec.int("healthCheckNodePort", minimum=1, maximum=65535)
        svc.load_balancer_ip = spec.ip("loadBalancerIP")
        for i, v in enumerate(spec.strs("loadBalancerSourceRanges")):
            svc.load_balancer_source_ranges.append(_cidr(spec, f"loadBalancerSourceRanges[{i}]", v.strip()))
        svc.load_balancer_class = spec.str("loadBalancerClass", "") or ""
        svc.allocate_lb_node_ports = bool(spec.bool("allocateLoadBalancerNodePorts", True))
        svc.ip_families = spec.strs("ipFamilies")
        for i, fam in enumerate(svc.ip_families):
            if fam not in ("IPv4", "IPv6"):
                raise spec.error(f"ipFamilies[{i}]", f"must be IPv4 or IPv6, got {fam!r}")
        svc.ip_family_policy = spec.str("ipFamilyPolicy", "",
                                        choices=("", "SingleStack", "PreferDualStack", "RequireDualStack"))
        svc.publish_not_ready = bool(spec.bool("publishNotReadyAddresses", False))
        svc.traffic_distribution = spec.str("trafficDistribution", "") or ""
        lb = f.dict("status").dict("loadBalancer")
        svc.lb_ingress = [dict(i.data) for i in lb.dicts("ingress")]
        return svc

    def to_manifest(self) -> dict:
        base = copy.deepcopy(self.raw) if self.raw else {}
        spec = base.get("spec") or {}
        spec["type"] = self.type
        if self.type != "ExternalName":
            if self.headless:
                spec["clusterIP"] = "None"
                spec["clusterIPs"] = ["None"]
            elif self.cluster_ips:
                spec["clusterIP"] = str(self.cluster_ips[0])
                spec["clusterIPs"] = [str(ip) for ip in self.cluster_ips]
            if self.ip_families:
                spec["ipFamilies"] = list(self.ip_families)
            if self.ip_family_policy:
                spec["ipFamilyPolicy"] = self.ip_family_policy
        ports = []
        for p in self.ports:
            d: dict[str, Any] = {}
            if p.name:
                d["name"] = p.name
            d["protocol"] = p.protocol
            d["port"] = p.port
            d["targetPort"] = p.target
            if p.node_port:
                d["nodePort"] = p.node_port
            if p.app_protocol:
                d["appProtocol"] = p.app_protocol
            ports.append(d)
        if ports:
            spec["ports"] = ports
        if self.selector is not None:
            spec["selector"] = dict(self.selector)
        if self.health_check_node_port:
            spec["healthCheckNodePort"] = self.health_check_node_port
        if self.external_traffic_policy:
            spec["externalTrafficPolicy"] = self.external_traffic_policy
        spec.setdefault("sessionAffinity", self.session_affinity)
        status = {"loadBalancer": {"ingress": list(self.lb_ingress)} if self.lb_ingress else {}}
        return {"apiVersion": "v1", "kind": "Service", "metadata": self.meta.to_manifest(),
                "spec": spec, "status": status}


@dataclass(slots=True)
class Endpoint:
    addresses: list[str]
    ready: Optional[bool] = True
    serving: Optional[bool] = True
    terminating: Optional[bool] = False
    hostname: Optional[str] = None
    node_name: Optional[str] = None
    zone: Optional[str] = None
    target_ref: Optional[tuple[str, str, str]] = None   # (kind, namespace, name)
    hints_zones: tuple[str, ...] = ()

    def to_manifest(self) -> dict:
        cond = {}
        for key, val in (("ready", self.ready), ("serving", self.serving),
                         ("terminating", self.terminating)):
            if val is not None:
                cond[key] = val
        out: dict[str, Any] = {"addresses": list(self.addresses), "conditions": cond}
        if self.hostname:
            out["hostname"] = self.hostname
        if self.node_name:
            out["nodeName"] = self.node_name
        if self.zone:
            out["zone"] = self.zone
        if self.target_ref:
            kind, ns, name = self.target_ref
            out["targetRef"] = {"kind": kind, "namespace": ns, "name": name}
        if self.hints_zones:
            out["hints"] = {"forZones": [{"name": z} for z in self.hints_zones]}
        return out


@dataclass(slots=True, frozen=True)
class EndpointPort:
    port: Optional[int]
    protocol: str = "TCP"
    name: str = ""
    app_protocol: str = ""


@dataclass(slots=True)
class EndpointSlice:
    meta: ObjectMeta
    address_type: str = "IPv4"      # IPv4 | IPv6 | FQDN
    endpoints: list[Endpoint] = field(default_factory=list)
    ports: list[EndpointPort] = field(default_factory=list)
    raw: Optional[dict] = None
    kind = "EndpointSlice"

    @property
    def service_name(self) -> str:
        return self.meta.labels.get("kubernetes.io/service-name", "")

    @property
    def managed_by(self) -> str:
        return self.meta.labels.get("endpointslice.kubernetes.io/managed-by", "")

    @classmethod
    def from_manifest(cls, f: Fields) -> "EndpointSlice":
        meta = parse_meta(f, namespaced=True)
        at = f.str("addressType", required=True, choices=("IPv4", "IPv6", "FQDN"))
        eps = []
        for e in f.dicts("endpoints"):
            addrs = e.strs("addresses")
            if at != "FQDN":
                for i, a in enumerate(addrs):
                    try:
                        ipaddress.ip_address(a)
                    except ValueError:
                        raise e.error(f"addresses[{i}]", f"not an IP address: {a!r}") from None
            c = e.dict("conditions")
            ref = e.dict("targetRef")
            target = ((ref.str("kind", "Pod") or "Pod", ref.str("namespace", meta.namespace) or meta.namespace,
                       ref.str("name", "") or "") if ref.data else None)
            zones = tuple(z.str("name", "") or "" for z in e.dict("hints").dicts("forZones"))
            eps.append(Endpoint(addrs, c.bool("ready"), c.bool("serving"), c.bool("terminating"),
                                e.str("hostname"), e.str("nodeName"), e.str("zone"), target, zones))
        ports = [EndpointPort(p.int("port", minimum=1, maximum=65535),
                              p.str("protocol", "TCP", choices=PROTOCOLS), p.str("name", "") or "",
                              p.str("appProtocol", "") or "")
                 for p in f.dicts("ports")]
        return cls(meta, at, eps, ports, f.data)

    def to_manifest(self) -> dict:
        return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": self.meta.to_manifest(), "addressType": self.address_type,
                "endpoints": [e.to_manifest() for e in self.endpoints],
                "ports": [{k: v for k, v in (("name", p.name), ("protocol", p.protocol),
                                             ("port", p.port), ("appProtocol", p.app_protocol))
                           if v not in (None, "")} | ({"name": ""} if not p.name else {})
                          for p in self.ports]}


@dataclass(slots=True)
class EndpointsSubset:
    addresses: list[tuple[str, Optional[str], Optional[str], Optional[tuple]]]  # ip, hostname, nodeName, targetRef
    not_ready: list[tuple[str, Optional[str], Optional[str], Optional[tuple]]]
    ports: list[EndpointPort]


@dataclass(slots=True)
class Endpoints:
    """v1 Endpoints (user-supplied, for selector-less Services)."""
    meta: ObjectMeta
    subsets: list[EndpointsSubset] = field(default_factory=list)
    raw: Optional[dict] = None
    kind = "Endpoints"

    @classmethod
    def from_manifest(cls, f: Fields) -> "Endpoints":
        meta = parse_meta(f, namespaced=True)
        subsets = []
        for s in f.dicts("subsets"):
            def addrs(key):
                out = []
                for a in s.dicts(key):
                    ip = a.ip("ip", required=True)
                    ref = a.dict("targetRef")
                    target = ((ref.str("kind", "Pod"), ref.str("namespace", meta.namespace),
                               ref.str("name", "")) if ref.data else None)
                    out.append((str(ip), a.str("hostname"), a.str("nodeName"), target))
                return out
            ports = [EndpointPort(p.int("port", required=True, minimum=1, maximum=65535),
                                  p.str("protocol", "TCP", choices=PROTOCOLS), p.str("name", "") or "",
                                  p.str("appProtocol", "") or "")
                     for p in s.dicts("ports")]
            subsets.append(EndpointsSubset(addrs("addresses"), addrs("notReadyAddresses"), ports))
        return cls(meta, subsets, f.data)

    def to_manifest(self) -> dict:
        def addr(a):
            ip, host, node, ref = a
            d: dict[str, Any] = {"ip": ip}
            if host:
                d["hostname"] = host
            if node:
                d["nodeName"] = node
            if ref:
                d["targetRef"] = {"kind": ref[0], "namespace": ref[1], "name": ref[2]}
            return d
        return {"apiVersion": "v1", "kind": "Endpoints", "metadata": self.meta.to_manifest(),
                "subsets": [{"addresses": [addr(a) for a in s.addresses],
                             **({"notReadyAddresses": [addr(a) for a in s.not_ready]} if s.not_ready else {}),
                             "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol}
                                       if p.name else {"port": p.port, "protocol": p.protocol}
                                       for p in s.ports]}
                            for s in self.subsets]}


# ---------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class PodTemplate:
    labels: dict[str, str]
    annotations: dict[str, str]
    spec: PodSpec
    raw: dict                       # the template as written, for pod manifests


def parse_template(f: Fields) -> PodTemplate:
    t = f.dict("template")
    m = t.dict("metadata")
    return PodTemplate(m.str_map("labels"), m.str_map("annotations"),
                       parse_pod_spec(t.dict("spec")), t.data)


@dataclass(slots=True)
class Workload:
    """Deployment, ReplicaSet, StatefulSet or DaemonSet."""
    kind: str
    meta: ObjectMeta
    selector: LabelSelector
    template: PodTemplate
    replicas: Optional[int] = 1
    service_name: str = ""          # StatefulSet
    ordinals_start: int = 0         # StatefulSet spec.ordinals.start
    raw: Optional[dict] = None

    API_VERSION = "apps/v1"

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def key(self) -> str:
        return self.meta.key

    @classmethod
    def from_manifest(cls, f: Fields) -> "Workload":
        kind = f.str("kind")
        meta = parse_meta(f, namespaced=True)
        spec = f.dict("spec")
        template = parse_template(spec)
        if spec.has("selector"):
            selector = LabelSelector.parse(spec.dict("selector"))
        else:
            # extensions/v1beta1-era objects defaulted the selector to the template labels
            selector = LabelSelector.from_labels(template.labels)
        if not selector.matches(template.labels):
            raise spec.error("template.metadata.labels",
                             f"do not match the selector {selector}")
        # a VirtualMachine is one virt-launcher pod (treated as running, as netpol-analyzer does)
        replicas = None if kind == "DaemonSet" else (
            1 if kind == "VirtualMachine" else spec.int("replicas", 1, minimum=0))
        w = cls(kind, meta, selector, template, replicas, raw=f.data)
        if kind == "StatefulSet":
            w.service_name = spec.str("serviceName", "") or ""
            w.ordinals_start = spec.dict("ordinals").int("start", 0, minimum=0)
        return w

    def to_manifest(self) -> dict:
        base = copy.deepcopy(self.raw) if self.raw else {
            "apiVersion": self.API_VERSION, "kind": self.kind,
            "spec": {"selector": self.selector.to_manifest(), "template": copy.deepcopy(self.template.raw)}}
        base["apiVersion"] = base.get("apiVersion", self.API_VERSION)
        base["metadata"] = self.meta.to_manifest()
        if self.replicas is not None:
            base.setdefault("spec", {})["replicas"] = self.replicas
        return base


# ---------------------------------------------------------------------------
# Kinds podnet keeps as written and interprets in their own packages
# (NetworkPolicy in podnet.policy, Ingress and Gateway API in podnet.ingress)
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class GenericObject:
    api_version: str
    kind: str
    meta: ObjectMeta
    spec: dict
    raw: dict

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def namespace(self) -> str:
        return self.meta.namespace

    @property
    def key(self) -> str:
        return self.meta.key

    def fields(self) -> Fields:
        return Fields(self.raw, file=self.meta.source or None, obj=describe(self))

    def to_manifest(self) -> dict:
        return copy.deepcopy(self.raw)


def describe(obj: Any) -> str:
    """'Kind ns/name' as errors name an object."""
    return f"{obj.kind} {obj.meta.key}"
