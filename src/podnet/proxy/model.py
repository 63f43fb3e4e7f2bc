"""What a service proxy sees: the input shared by every kube-proxy mode.

kube-proxy does not look at Services and EndpointSlices directly. Its change
trackers turn them into a `ServicePortMap` (one `ServicePort` per
Service port, pkg/proxy/serviceport.go) and an `EndpointsMap` (the endpoints
of each Service port, deduplicated across slices, pkg/proxy/endpointslicecache.go),
filtered to one IP family; each sync then splits a port's endpoints by traffic
policy and topology (pkg/proxy/topology.go CategorizeEndpoints). This module
is that layer, once, for all of podnet's proxies (iptables, nftables, IPVS,
eBPF, userspace):

    view = proxy_view(cluster, "k8s-guide-worker", family=4)
    for spn, svc in view.services.items():          # ServicePortName -> ServicePortInfo
        cat = view.categorize(spn)                   # cluster/local/all_reachable/has_any
        ...

`ProxyView` can also be built directly (benchmarks, unit tests): it is plain
data plus a few derived helpers (`local_detector`, `node_port_addresses_of`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple, Optional, Union

LABEL_TOPOLOGY_ZONE = "topology.kubernetes.io/zone"
LABEL_SERVICE_PROXY_NAME = "service.kubernetes.io/service-proxy-name"
LABEL_HEADLESS = "service.kubernetes.io/headless"
LABEL_SERVICE_NAME = "kubernetes.io/service-name"
ANNOTATION_TOPOLOGY_AWARE_HINTS = "service.kubernetes.io/topology-aware-hints"   # deprecated
ANNOTATION_TOPOLOGY_MODE = "service.kubernetes.io/topology-mode"

IPV4_ZERO_CIDR = "0.0.0.0/0"
IPV6_ZERO_CIDR = "::/0"


def join_host_port(ip: str, port: int) -> str:
    """net.JoinHostPort: `ip:port`, `[ip]:port` for IPv6."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def family_of(address: str) -> int:
    """4 or 6 for an address or CIDR string."""
    return 6 if ":" in address else 4


# ---------------------------------------------------------------------------
# Service ports and endpoints
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, order=True)
class ServicePortName:
    """pkg/proxy/types.go ServicePortName: NamespacedName + port name + protocol.

    `str()` is upstream's String(): `ns/name`, plus `:port` only when the port
    has a name (the protocol is not printed)."""
    namespace: str
    name: str
    port: str = ""
    protocol: str = "TCP"

    def __str__(self) -> str:
        base = f"{self.namespace}/{self.name}"
        return f"{base}:{self.port}" if self.port else base

    @property
    def namespaced_name(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(slots=True)
class ServicePortInfo:
    """One Service port as kube-proxy sees it (pkg/proxy/serviceport.go
    BaseServicePortInfo, filled by newBaseServiceInfo): addresses of one IP
    family only, LoadBalancer IPs only in VIP mode, health check node port only
    when the Service needs one (LoadBalancer with externalTrafficPolicy Local)."""
    name: ServicePortName
    cluster_ip: str
    port: int
    protocol: str = "TCP"                       # TCP | UDP | SCTP, as in the API
    target_port: Union[int, str, None] = None   # informational; endpoints carry the resolved port
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_vips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity: str = "None"              # None | ClientIP
    sticky_max_age_seconds: int = 0
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0
    hints_annotation: str = ""
    traffic_distribution: str = ""
    name_string: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.name_string = str(self.name)

    @property
    def client_ip_affinity(self) -> bool:
        return self.session_affinity == "ClientIP"

    @property
    def externally_accessible(self) -> bool:
        """ExternallyAccessible: reachable through a NodePort, external IP or LB VIP."""
        return bool(self.node_port or self.load_balancer_vips or self.external_ips)

    @property
    def uses_cluster_endpoints(self) -> bool:
        """UsesClusterEndpoints: Cluster internal policy, or any external access (even
        with externalTrafficPolicy Local, for the short-circuit of local traffic)."""
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        """UsesLocalEndpoints."""
        return self.internal_policy_local or (self.external_policy_local and self.externally_accessible)


@dataclass(slots=True)
class EndpointInfo:
    """One endpoint of a Service port (pkg/proxy/endpoint.go BaseEndpointInfo).

    `endpoint` (also `str()`) is upstream's String(): `ip:port`, `[ip]:port` for IPv6."""
    ip: str
    port: int
    is_local: bool = False
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    zone_hints: frozenset = frozenset()
    node_hints: frozenset = frozenset()
    node_name: str = field(default="", compare=False)
    zone: str = field(default="", compare=False)
    endpoint: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        self.endpoint = join_host_port(self.ip, self.port)

    def __str__(self) -> str:
        return self.endpoint


class CategorizedEndpoints(NamedTuple):
    cluster: list[EndpointInfo]         # used with Cluster traffic policy ([] if never used)
    local: list[EndpointInfo]           # used with Local traffic policy ([] if never used)
    all_reachable: list[EndpointInfo]   # union of the two: the endpoints this node may DNAT to
    has_any: bool                       # usable endpoints anywhere in the cluster


def _topology_mode(svc: ServicePortInfo, endpoints: list[EndpointInfo], node_name: str,
                   zone: str, prefer_same_node: bool) -> str:
    """topologyModeFromHints: "PreferSameNode" when every ready endpoint has a node
    hint and one names this node, else "PreferSameZone" when every ready endpoint
    has a zone hint and one names this node's zone, else "" (no topology)."""
    for_node = for_zone = False
    all_node = all_zone = True
    for ep in endpoints:
        if not ep.ready:
            continue
        if not ep.node_hints:
            all_node = False
        elif node_name in ep.node_hints:
            for_node = True
        if not ep.zone_hints:
            all_zone = False
        elif zone in ep.zone_hints:
            for_zone = True
    if prefer_same_node and all_node and for_node:
        return "PreferSameNode"
    if all_zone and for_zone:
        return "PreferSameZone"
    return ""


def _available_for_topology(ep: EndpointInfo, mode: str, node_name: str, zone: str) -> bool:
    """availableForTopology."""
    if mode == "":
        return True
    if mode == "PreferSameNode":
        return node_name in ep.node_hints
    if mode == "PreferSameZone":
        return zone in ep.zone_hints
    return False


def categorize_endpoints(endpoints: list[EndpointInfo], svc: ServicePortInfo, node_name: str,
                         node_labels: dict[str, str], *,
                         prefer_same_node: bool = True) -> CategorizedEndpoints:
    """pkg/proxy/topology.go CategorizeEndpoints.

    Cluster endpoints: the ready ones (restricted to this node's zone / this node
    when topology hints apply), falling back to serving-terminating endpoints
    (ignoring topology) when none is ready. Local endpoints: the local ready
    ones, else the local serving-terminating ones. `prefer_same_node` is the
    PreferSameTrafficDistribution feature gate (node hints). The union keeps the
    order of the input (sorted by endpoint string) where upstream's map makes
    it random."""
    cluster: list[EndpointInfo] = []
    local: list[EndpointInfo] = []
    has_any = False
    mode = ""
    if svc.uses_cluster_endpoints:
        zone = node_labels.get(LABEL_TOPOLOGY_ZONE, "")
        mode = _topology_mode(svc, endpoints, node_name, zone, prefer_same_node)
        if mode:
            cluster = [ep for ep in endpoints
                       if ep.ready and _available_for_topology(ep, mode, node_name, zone)]
        else:
            cluster = [ep for ep in endpoints if ep.ready]
        if not cluster:
            # no ready endpoint anywhere: fall back to terminating ones that still serve
            cluster = [ep for ep in endpoints if ep.serving and ep.terminating]
        has_any = bool(cluster)

    if not svc.uses_local_endpoints:
        return CategorizedEndpoints(cluster, local, cluster, has_any)

    local_ready = local_terminating = False
    for ep in endpoints:
        if ep.ready:
            has_any = True
            if ep.is_local:
                local_ready = True
        elif ep.serving and ep.terminating:
            has_any = True
            if ep.is_local:
                local_terminating = True
    use_terminating = False
    if local_ready:
        local = [ep for ep in endpoints if ep.is_local and ep.ready]
    elif local_terminating:
        use_terminating = True
        local = [ep for ep in endpoints if ep.is_local and ep.serving and ep.terminating]

    if not svc.uses_cluster_endpoints:
        return CategorizedEndpoints(cluster, local, local, has_any)
    if not mode and not use_terminating:
        # cluster holds every ready endpoint, local only ready ones: a superset
        return CategorizedEndpoints(cluster, local, cluster, has_any)
    merged = {ep.endpoint: ep for ep in cluster}
    for ep in local:
        merged[ep.endpoint] = ep
    return CategorizedEndpoints(cluster, local, [merged[k] for k in sorted(merged)], has_any)


# ---------------------------------------------------------------------------
# Node-level configuration
# ---------------------------------------------------------------------------

def _is_zero_cidr(cidr: str) -> bool:
    return cidr in (IPV4_ZERO_CIDR, IPV6_ZERO_CIDR)


class NodePortAddresses:
    """pkg/proxy/util/nodeport_addresses.go: the --nodeport-addresses CIDRs of one
    family (0.0.0.0/0 or ::/0 when none are given for it)."""

    def __init__(self, family: int, cidr_strings: Iterable[str]):
        self.family = family
        self.cidr_strings = [c for c in cidr_strings if family_of(c) == family] or \
            [IPV4_ZERO_CIDR if family == 4 else IPV6_ZERO_CIDR]
        self.cidrs: list = []
        self.contains_ipv4_loopback = False
        self.match_all = False
        loopback = ipaddress.ip_address("127.0.0.0")
        for text in self.cidr_strings:
            cidr = ipaddress.ip_network(text, strict=False)
            if cidr.version == 4 and (cidr.network_address.is_loopback or loopback in cidr):
                self.contains_ipv4_loopback = True
            if _is_zero_cidr(text):
                self.cidrs = [cidr]
                self.match_all = True
                break
            self.cidrs.append(cidr)

    def get_node_ips(self, addresses: Iterable[str]) -> list[str]:
        """GetNodeIPs: the node's interface addresses inside the CIDRs (deduplicated;
        sorted, where upstream's map order is random)."""
        out = set()
        for text in addresses:
            ip = ipaddress.ip_address(text)
            if any(ip in cidr for cidr in self.cidrs):
                out.add(ip)
        return [str(ip) for ip in sorted(out)]

    def __repr__(self) -> str:
        return f"NodePortAddresses({self.cidr_strings})"


@dataclass(frozen=True, slots=True)
class LocalTrafficDetector:
    """pkg/proxy/util/localdetector.go: DetectLocalByCIDR (`cidr` set) or the no-op
    detector (`cidr` None). "Local" means "from a pod of this cluster"."""
    family: int = 4
    cidr: Optional[str] = None

    @property
    def is_implemented(self) -> bool:
        return self.cidr is not None

    def if_local(self) -> str:
        return f"-s {self.cidr}"

    def if_not_local(self) -> str:
        return f"! -s {self.cidr}"

    def if_local_nft(self) -> str:
        return f"{'ip' if self.family == 4 else 'ip6'} saddr {self.cidr}"

    def if_not_local_nft(self) -> str:
        return f"{'ip' if self.family == 4 else 'ip6'} saddr != {self.cidr}"


@dataclass
class ProxyNode:
    """The node a proxy runs on: its name and labels (topology), its node IPs by
    family (InternalIP first), the addresses its interfaces carry (for
    --nodeport-addresses), and the cluster's pod CIDR per family, which is how
    kube-proxy's DetectLocalByCIDR tells pod traffic from the rest."""
    name: str
    ips: dict[int, tuple[str, ...]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    cluster_cidrs: dict[int, str] = field(default_factory=dict)
    addresses: dict[int, tuple[str, ...]] = field(default_factory=dict)

    @property
    def zone(self) -> str:
        return self.labels.get(LABEL_TOPOLOGY_ZONE, "")

    def node_ip(self, family: int) -> Optional[str]:
        ips = self.ips.get(family) or ()
        return ips[0] if ips else None

    def local_detector(self, family: int) -> LocalTrafficDetector:
        return LocalTrafficDetector(family, self.cluster_cidrs.get(family))

    def interface_addresses(self, family: int) -> tuple[str, ...]:
        if family in self.addresses:
            return self.addresses[family]
        loopback = "127.0.0.1" if family == 4 else "::1"
        return tuple(self.ips.get(family, ())) + (loopback,)


@dataclass
class ProxyView:
    """Everything one single-family proxier (kube-proxy runs one per family)
    renders from: the node, the Service ports, their endpoints, and the
    kube-proxy options. `services` and `endpoints` are ordered (by Service port
    name; endpoints by their `ip:port` string, as EndpointSliceCache sorts them)."""
    node: ProxyNode
    family: int = 4
    services: dict[ServicePortName, ServicePortInfo] = field(default_factory=dict)
    endpoints: dict[ServicePortName, list[EndpointInfo]] = field(default_factory=dict)
    masquerade_all: bool = False
    masquerade_bit: int = 14
    localhost_node_ports: bool = True
    node_port_addresses: tuple[str, ...] = ()   # --nodeport-addresses ("primary" expanded)
    service_cidrs: tuple[str, ...] = ()         # of this family (nftables cluster-ips-check)
    prefer_same_node_hints: bool = True         # PreferSameTrafficDistribution gate
    _categorized: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def masquerade_mark(self) -> str:
        """The mark as iptables-save and the upstream tests print it (0x4000)."""
        return hex(1 << self.masquerade_bit)

    @property
    def node_ip(self) -> Optional[str]:
        return self.node.node_ip(self.family)

    @property
    def local_detector(self) -> LocalTrafficDetector:
        return self.node.local_detector(self.family)

    def node_port_addresses_of(self) -> NodePortAddresses:
        return NodePortAddresses(self.family, self.node_port_addresses)

    def endpoints_of(self, spn: ServicePortName) -> list[EndpointInfo]:
        return self.endpoints.get(spn, [])

    def categorize(self, spn: ServicePortName) -> CategorizedEndpoints:
        cat = self._categorized.get(spn)
        if cat is None:
            cat = categorize_endpoints(self.endpoints.get(spn, []), self.services[spn],
                                       self.node.name, self.node.labels,
                                       prefer_same_node=self.prefer_same_node_hints)
            self._categorized[spn] = cat
        return cat

    @property
    def total_endpoints(self) -> int:
        """Endpoints of the Services in the view (syncProxyRules' totalEndpoints)."""
        return sum(len(self.endpoints.get(spn, ())) for spn in self.services)


# ---------------------------------------------------------------------------
# From a reconciled cluster
# ---------------------------------------------------------------------------

def service_port_infos(svc, family: int) -> list[ServicePortInfo]:
    """ServiceChangeTracker.serviceToServiceMap + newBaseServiceInfo for one Service:
    [] for ExternalName and headless Services and when the Service has no
    ClusterIP of this family."""
    if svc.type == "ExternalName" or svc.headless:
        return []
    cluster_ip = next((ip for ip in svc.cluster_ips if ip.version == family), None)
    if cluster_ip is None:
        return []
    external_policy_local = (svc.type in ("NodePort", "LoadBalancer")
                             and svc.external_traffic_policy == "Local")
    internal_policy_local = svc.internal_traffic_policy == "Local"
    affinity = svc.session_affinity or "None"
    sticky = svc.affinity_timeout if affinity == "ClientIP" else 0
    external_ips = tuple(str(ip) for ip in svc.external_ips if ip.version == family)
    source_ranges = tuple(str(c) for c in svc.load_balancer_source_ranges if c.version == family)
    vips = []
    for ing in svc.lb_ingress:
        ip = ing.get("ip")
        if not ip or (ing.get("ipMode") or "VIP") != "VIP":
            continue                        # Proxy-mode LBs are not programmed
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            continue
        if addr.version == family:
            vips.append(str(addr))
    needs_health_check = svc.type == "LoadBalancer" and external_policy_local
    hints = svc.meta.annotations.get(ANNOTATION_TOPOLOGY_AWARE_HINTS)
    if hints is None:
        hints = svc.meta.annotations.get(ANNOTATION_TOPOLOGY_MODE, "")
    out = []
    for p in svc.ports:
        out.append(ServicePortInfo(
            name=ServicePortName(svc.namespace, svc.name, p.name, p.protocol),
            cluster_ip=str(cluster_ip), port=p.port, protocol=p.protocol,
            target_port=p.target, node_port=p.node_port or 0,
            external_ips=external_ips, load_balancer_vips=tuple(vips),
            load_balancer_source_ranges=source_ranges,
            session_affinity=affinity, sticky_max_age_seconds=sticky,
            external_policy_local=external_policy_local,
            internal_policy_local=internal_policy_local,
            health_check_node_port=(svc.health_check_node_port or 0) if needs_health_check else 0,
            hints_annotation=hints, traffic_distribution=svc.traffic_distribution))
    return out


def _node_hints(slice_, index: int) -> frozenset:
    """hints.forNodes of endpoint `index`, read from the manifest (podnet's
    Endpoint keeps only zone hints)."""
    raw = slice_.raw or {}
    try:
        hints = (raw.get("endpoints") or [])[index].get("hints") or {}
        return frozenset(h.get("name", "") for h in hints.get("forNodes") or [] if h.get("name"))
    except (IndexError, AttributeError):
        return frozenset()


def endpoints_map(slices, family: int, node_name: str) -> dict[ServicePortName, list[EndpointInfo]]:
    """EndpointSliceCache.getEndpointsMap over all slices of one address type:
    endpoints grouped by Service port name (namespace, service-name label, port
    name, protocol), deduplicated by `ip:port` (a terminating duplicate never
    replaces another), sorted by that string. Slices without the service-name
    label or with the headless label (which kube-proxy's informer filters out)
    are ignored, as are ports without a number and endpoints without an address.
    Slices are read in (namespace, name) order, where upstream's order is a
    Go map's."""
    address_type = "IPv4" if family == 4 else "IPv6"
    sets: dict[ServicePortName, dict[str, EndpointInfo]] = {}
    for sl in sorted(slices, key=lambda s: (s.meta.namespace, s.meta.name)):
        if sl.address_type != address_type or LABEL_HEADLESS in sl.meta.labels:
            continue
        service = sl.meta.labels.get(LABEL_SERVICE_NAME, "")
        if not service:
            continue
        infos = []
        for i, ep in enumerate(sl.endpoints):
            if not ep.addresses:
                continue
            ip = str(ipaddress.ip_address(ep.addresses[0]))
            infos.append((ip, ep, i))
        for port in sl.ports:
            if not port.port:
                continue
            spn = ServicePortName(sl.meta.namespace, service, port.name, port.protocol or "TCP")
            found = sets.setdefault(spn, {})
            for ip, ep, i in infos:
                terminating = ep.terminating is True
                info = EndpointInfo(
                    ip=ip, port=port.port,
                    is_local=bool(node_name) and ep.node_name == node_name,
                    ready=ep.ready is None or ep.ready,
                    serving=ep.serving is None or ep.serving,
                    terminating=terminating,
                    zone_hints=frozenset(ep.hints_zones), node_hints=_node_hints(sl, i),
                    node_name=ep.node_name or "", zone=ep.zone or "")
                if info.endpoint not in found or not terminating:
                    found[info.endpoint] = info
    return {spn: [eps[k] for k in sorted(eps)] for spn, eps in sorted(sets.items()) if eps}


def proxy_node(cluster, node_name: str) -> ProxyNode:
    node = cluster.node(node_name)
    ips: dict[int, list[str]] = {4: [], 6: []}
    for kind in ("InternalIP", "ExternalIP"):
        for t, a in node.addresses:
            if t == kind:
                ip = ipaddress.ip_address(a)
                if str(ip) not in ips[ip.version]:
                    ips[ip.version].append(str(ip))
    cidrs = {}
    for fam in (4, 6):
        net = cluster.config.pod_subnet_of(fam)
        if net is not None:
            cidrs[fam] = str(net)
    return ProxyNode(name=node.name, ips={f: tuple(v) for f, v in ips.items() if v},
                     labels=dict(node.meta.labels), cluster_cidrs=cidrs)


def proxy_view(cluster, node_name: str, family: int = 4) -> ProxyView:
    """The ProxyView of one node and IP family of a reconciled cluster, with the
    cluster's kube-proxy options (PodnetConfig kubeProxy).

    Services labelled service.kubernetes.io/service-proxy-name belong to another
    proxy and are left out, as kube-proxy's informer does."""
    node = proxy_node(cluster, node_name)
    cfg = cluster.config
    pcfg = cfg.proxy
    services: dict[ServicePortName, ServicePortInfo] = {}
    for svc in cluster.services:
        if LABEL_SERVICE_PROXY_NAME in svc.meta.labels:
            continue
        for info in service_port_infos(svc, family):
            services[info.name] = info
    npa: list[str] = []
    for entry in pcfg.node_port_addresses:
        if entry == "primary":
            npa += [f"{ips[0]}/{32 if fam == 4 else 128}" for fam, ips in sorted(node.ips.items())]
        else:
            npa.append(entry)
    return ProxyView(
        node=node, family=family,
        services=dict(sorted(services.items())),
        endpoints=endpoints_map(cluster.endpoint_slices, family, node.name),
        masquerade_all=pcfg.masquerade_all, masquerade_bit=pcfg.masquerade_bit,
        localhost_node_ports=pcfg.localhost_node_ports,
        node_port_addresses=tuple(npa),
        service_cidrs=tuple(str(n) for n in cfg.service_subnets if n.version == family))


# ---------------------------------------------------------------------------
# Change tracking between syncs
# ---------------------------------------------------------------------------

class ChangeTracker:
    """What changed since the previous sync, as ServiceChangeTracker and
    EndpointsChangeTracker report it (ServicePortMap.Update's UpdatedServices,
    EndpointsMap.Update's UpdatedServices): the `ns/name` of every Service whose
    ports, or whose ports' endpoints, differ. A change of the node (labels, IPs)
    or of the proxy options asks for a full sync, as kube-proxy does on a node
    label change (and, for options, on restart).

    Views are snapshots: to change an endpoint, put a new EndpointInfo in a new
    list; objects are compared by value against the previous sync's."""

    def __init__(self) -> None:
        self.need_full_sync = True
        self._services: dict[str, list] = {}
        self._endpoints: dict[str, list] = {}
        self._global: Optional[tuple] = None

    def force_full_sync(self) -> None:
        self.need_full_sync = True

    @staticmethod
    def _global_key(view: ProxyView) -> tuple:
        node = view.node
        return (view.family, node.name, tuple(sorted(node.labels.items())),
                tuple(sorted(node.ips.items())), tuple(sorted(node.cluster_cidrs.items())),
                node.interface_addresses(view.family), view.masquerade_all, view.masquerade_bit,
                view.localhost_node_ports, view.node_port_addresses, view.service_cidrs,
                view.prefer_same_node_hints)

    def update(self, view: ProxyView) -> tuple[bool, set[str]]:
        """(full sync needed, changed Services) for this sync; remembers `view`."""
        services: dict[str, list] = {}
        for spn, info in view.services.items():
            services.setdefault(spn.namespaced_name, []).append(info)
        endpoints: dict[str, list] = {}
        for spn, eps in view.endpoints.items():
            endpoints.setdefault(spn.namespaced_name, []).append((spn, list(eps)))
        key = self._global_key(view)
        full = self.need_full_sync or key != self._global
        changed: set[str] = set()
        if not full:
            for old, new in ((self._services, services), (self._endpoints, endpoints)):
                changed.update(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        self._services, self._endpoints, self._global = services, endpoints, key
        self.need_full_sync = False
        return full, changed
