"""The reconciled cluster: `Cluster.load(paths)`.

    cluster = Cluster.load(["lab/"])
    cluster.node("k8s-guide-worker").pod_cidrs      -> [IPv4Network('10.244.1.0/24')]
    cluster.service("web").cluster_ip               -> IPv4Address('10.96.x.y')
    cluster.slices_of(cluster.service("web"))       -> [EndpointSlice(...)]

Reconciliation runs the controllers a real cluster runs, in the order their
work depends on each other, and fills in only what the inputs do not record:

    nodes (kind config or dump) -> node addresses -> node IPAM (podCIDRs)
    -> bootstrap objects (a fresh kind cluster) -> workload controllers
    -> scheduler -> pod IPAM (+ hostNetwork, hostIP) -> kubelet status
    -> Service allocators -> EndpointSlice (+ mirroring) controllers
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Iterable, Optional

from .api.loader import Manifests, load_manifests
from .api.objects import (EndpointSlice, GenericObject, Namespace, Node, ObjectMeta, Pod, Service,
                          Workload)
from .config import CNI_MODES, CNI_PLUGINS, PROXY_MODES, ClusterConfig, build_config
from .control import bootstrap as boot
from .control.allocations import Allocations
from .control.endpointslices import mirror_endpoints, slices_for_service
from .control.ipam import ipam_for
from .control.nodes import NodeIPAM, assign_node_addresses, inferred_nodes, kind_nodes
from .control.scheduler import Scheduler, eligible
from .control.services import reconcile_services
from .control.workloads import (PodIndex, expand_daemonset, expand_deployment,
                                expand_replicaset, expand_statefulset, expand_virtualmachine)
from .errors import InputError


class Cluster:
    def __init__(self, config: ClusterConfig):
        self.config = config
        self.namespaces: dict[str, Namespace] = {}
        self.nodes: list[Node] = []
        self.pods: list[Pod] = []
        self.services: list[Service] = []
        self.endpoints: list = []
        self.endpoint_slices: list[EndpointSlice] = []
        self.workloads: list[Workload] = []
        self.others: dict[str, list[GenericObject]] = {}
        self.warnings: list[str] = []
        self.paths: list = []
        self.ipam = None
        self._node_by_name: dict[str, Node] = {}
        self._pod_by_key: dict[str, Pod] = {}
        self._svc_by_key: dict[str, Service] = {}
        self._slices_by_svc: dict[str, list[EndpointSlice]] = defaultdict(list)

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, paths: Iterable[str | os.PathLike], *, cni: Optional[str] = None,
             cni_mode: Optional[str] = None, proxy_mode: Optional[str] = None) -> "Cluster":
        """Load manifests (files, directories) and reconcile them into a cluster.

        `cni`, `cni_mode` and `proxy_mode` override the cluster definition (as
        `--cni` / `--proxy-mode` do): the CNI decides pod IPAM, so it is chosen
        before the controllers run."""
        paths = list(paths)
        cluster = cls.from_manifests(load_manifests(paths), cni=cni, cni_mode=cni_mode, proxy_mode=proxy_mode)
        cluster.paths = paths
        return cluster

    @classmethod
    def from_manifests(cls, bag: Manifests, *, cni: Optional[str] = None, cni_mode: Optional[str] = None,
                       proxy_mode: Optional[str] = None) -> "Cluster":
        cfg = build_config(bag)
        apply_overrides(cfg, cni, cni_mode, proxy_mode)
        cluster = cls(cfg)
        cluster.warnings.extend(bag.warnings)
        cluster._reconcile(bag)
        return cluster

    def with_overrides(self, cni: Optional[str] = None, proxy_mode: Optional[str] = None) -> "Cluster":
        """The same inputs with another CNI or service proxy (reloaded, so IPAM follows the CNI)."""
        if not self.paths:
            raise InputError("this cluster was not loaded from files; use Cluster.load(paths, cni=..., "
                             "proxy_mode=...) to change its CNI or proxy")
        return Cluster.load(self.paths, cni=cni or self.config.cni.plugin,
                            cni_mode=None if cni and cni != self.config.cni.plugin else self.config.cni.mode,
                            proxy_mode=proxy_mode or self.config.proxy.mode)

    @classmethod
    def example(cls, name: str = "guide-lab") -> "Cluster":
        return cls.load([example_path(name)])

    # ---------------------------------------------------------------- reconcile
    def _reconcile(self, bag: Manifests) -> None:
        cfg = self.config
        recorded_nodes = _unique(bag.nodes, "Node")
        if cfg.origin == "kind":
            self.nodes = kind_nodes(cfg, recorded_nodes)
        else:
            self.nodes = list(recorded_nodes.values()) or inferred_nodes(bag.pods)
        self._node_by_name = {n.name: n for n in self.nodes}
        assign_node_addresses(cfg, self.nodes)
        node_ipam = NodeIPAM(cfg)
        for node in self.nodes:
            node_ipam.reserve(node)
        for node in self.nodes:
            node_ipam.allocate(node)

        # what a fresh cluster has, unless the inputs already carry it
        pods: list[Pod] = []
        services, endpoints, slices, workloads, namespaces = [], [], [], [], []
        if cfg.bootstrap:
            cps = [n for n in self.nodes if n.is_control_plane]
            base = boot.bootstrap_objects(cfg, [ip for n in cps for ip in n.internal_ips])
            namespaces += base["Namespace"]
            services += base["Service"]
            endpoints += base["Endpoints"]
            slices += base["EndpointSlice"]
            workloads += base["Workload"]
            for cp in cps:
                pods += boot.static_pods(cp.name, cp.internal_ip)
        namespaces = _merge(namespaces, bag.namespaces)
        services = _merge(services, bag.services)
        endpoints = _merge(endpoints, bag.endpoints)
        slices = _merge(slices, bag.endpoint_slices)
        workloads = _merge(workloads, bag.workloads)
        pods = _merge(pods, bag.pods)
        self.others = {k: list(v) for k, v in bag.others.items()}

        # namespaces every object lives in exist (dumps often omit them)
        self.namespaces = {ns.meta.name: ns for ns in namespaces}
        for obj in [*pods, *services, *workloads, *endpoints, *slices,
                    *(o for objs in self.others.values() for o in objs)]:
            ns = obj.meta.namespace
            if ns and ns not in self.namespaces:
                self.namespaces[ns] = Namespace(ObjectMeta(ns, labels={"kubernetes.io/metadata.name": ns}))

        # workload controllers, in creation order (a Deployment's ReplicaSet right after it)
        owned_rs = {(w.namespace, r.name) for w in workloads if w.kind == "ReplicaSet"
                    for r in w.meta.owner_refs if r.kind == "Deployment"}
        expanded: list[Workload] = []
        for w in workloads:
            expanded.append(w)
            if w.kind == "Deployment":
                rs = expand_deployment(w, owned_rs)
                if rs is not None:
                    expanded.append(rs)
                    owned_rs.add((w.namespace, w.name))
        workloads = expanded
        control_plane = next((n for n in self.nodes if n.is_control_plane), None)
        index = PodIndex(pods)
        for w in workloads:
            if w.kind == "ReplicaSet":
                new = expand_replicaset(w, index)
                if cfg.bootstrap and control_plane and \
                        (w.namespace, _owner_name(w)) in boot.PINNED_TO_CONTROL_PLANE:
                    for p in new:
                        p.node_name = control_plane.name
                pods += new
            elif w.kind == "StatefulSet":
                pods += expand_statefulset(w, index)
            elif w.kind == "DaemonSet":
                pods += expand_daemonset(w, index, self.nodes, eligible)
            elif w.kind == "VirtualMachine":
                pods += expand_virtualmachine(w, index)
        self.workloads = workloads

        # what the controllers decided on an earlier pass (a long-lived cluster, the lab)
        allocations = Allocations()
        for file, doc in bag.allocations:
            allocations.merge(Allocations.parse(file, doc))
        pinned = allocations.bind_pods(pods, self._node_by_name)

        # scheduler
        _check_unique(pods, "Pod")
        scheduler = Scheduler(self.nodes)
        for pod in pods:
            if pod.node_name:
                if pod.node_name not in self._node_by_name:
                    raise InputError(f"node {pod.node_name!r} does not exist in the cluster",
                                     file=pod.meta.source or None, obj=f"Pod {pod.key}",
                                     field="spec.nodeName")
                scheduler.account(pod)
        for pod in pods:
            if not pod.node_name and not pod.terminal:
                scheduler.place(pod)

        # pod IPs: hostNetwork pods share the node's; recorded IPs are kept; the rest
        # come from the CNI's IPAM in creation order
        self.ipam = ipam_for(cfg, self.nodes)
        for pod in pods:
            node = self._node_by_name.get(pod.node_name)
            if pod.pod_ips and not pod.host_network:
                self.ipam.reserve(pod, node)
        for pod in pods:
            node = self._node_by_name.get(pod.node_name)
            if node is None:
                continue
            if pod.host_ip is None:
                pod.host_ip = node.internal_ip
            if pod.terminal or (pod.pod_ips and pod.key not in pinned):
                continue
            if not pod.pod_ips:
                pod.pod_ips = list(node.internal_ips) if pod.host_network else self.ipam.allocate(pod, node)
            if not pod.phase or pod.phase == "Pending":
                pod.phase = "Running"
            if pod.ready is None:
                pod.ready = True
        for pod in pods:
            if not pod.phase:
                pod.phase = "Running" if pod.node_name else "Pending"
            if pod.ready is None and pod.phase == "Running":
                pod.ready = True
        self.pods = pods
        self._pod_by_key = {p.key: p for p in pods}

        # services
        _check_unique(services, "Service")
        allocations.keep_service_addresses(services)
        alloc = reconcile_services(cfg, services)
        self.warnings.extend(alloc.warnings)
        self.services = services
        self._svc_by_key = {s.key: s for s in services}

        # endpoint slices
        self.endpoints = endpoints
        labels = LabelIndex(pods)
        recorded_slices: dict[str, list[EndpointSlice]] = defaultdict(list)
        for s in slices:
            recorded_slices[f"{s.meta.namespace}/{s.service_name}"].append(s)
        eps_by_key = {e.meta.key: e for e in endpoints}
        out_slices: list[EndpointSlice] = []
        for svc in services:
            if svc.key in recorded_slices:
                out_slices += recorded_slices.pop(svc.key)
                continue
            if svc.selector is not None:
                selected = labels.select(svc.namespace, svc.selector)
                out_slices += slices_for_service(svc, selected, self._node_by_name)
            elif svc.key in eps_by_key:
                out_slices += mirror_endpoints(svc, eps_by_key[svc.key])
        for rest in recorded_slices.values():     # slices of Services not in the inputs
            out_slices += rest
        self.endpoint_slices = out_slices
        self._slices_by_svc = defaultdict(list)
        for s in out_slices:
            self._slices_by_svc[f"{s.meta.namespace}/{s.service_name}"].append(s)

    # ------------------------------------------------------------------ queries
    def node(self, name: str) -> Node:
        try:
            return self._node_by_name[name]
        except KeyError:
            raise InputError(f"no node named {name!r}") from None

    def find_node(self, name: str) -> Optional[Node]:
        return self._node_by_name.get(name)

    def pod(self, name: str, namespace: Optional[str] = None) -> Pod:
        """A pod by `name`, `ns/name`, or an unambiguous name prefix (`net-tshoot` on a node...)."""
        if "/" in name and namespace is None:
            namespace, name = name.split("/", 1)
        if namespace is not None:
            pod = self._pod_by_key.get(f"{namespace}/{name}")
            if pod:
                return pod
        candidates = [p for p in self.pods if p.name == name and (namespace is None or p.namespace == namespace)]
        if not candidates:
            candidates = [p for p in self.pods if p.name.startswith(name)
                          and (namespace is None or p.namespace == namespace)]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise InputError(f"no pod named {name!r}" + (f" in namespace {namespace}" if namespace else ""))
        names = ", ".join(sorted(p.key for p in candidates)[:6])
        raise InputError(f"{name!r} names several pods ({names}); give the full name")

    def service(self, name: str, namespace: Optional[str] = None) -> Service:
        if "/" in name and namespace is None:
            namespace, name = name.split("/", 1)
        if namespace is not None:
            svc = self._svc_by_key.get(f"{namespace}/{name}")
            if svc is None:
                raise InputError(f"no service named {name!r} in namespace {namespace}")
            return svc
        candidates = [s for s in self.services if s.name == name]
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise InputError(f"no service named {name!r}")
        default = [s for s in candidates if s.namespace == "default"]
        if len(default) == 1:
            return default[0]
        raise InputError(f"{name!r} names services in several namespaces; use ns/name")

    def find_service(self, key: str) -> Optional[Service]:
        return self._svc_by_key.get(key)

    def slices_of(self, svc: Service) -> list[EndpointSlice]:
        return self._slices_by_svc.get(svc.key, [])

    def pods_on(self, node: str) -> list[Pod]:
        return [p for p in self.pods if p.node_name == node]

    def objects(self, kind: str) -> list:
        return self.others.get(kind, [])

    @property
    def control_plane_nodes(self) -> list[Node]:
        return [n for n in self.nodes if n.is_control_plane]


def apply_overrides(cfg: ClusterConfig, cni: Optional[str], cni_mode: Optional[str],
                    proxy_mode: Optional[str]) -> None:
    if cni:
        if cni not in CNI_PLUGINS:
            raise InputError(f"unknown CNI {cni!r} (known: {', '.join(CNI_PLUGINS)})", field="--cni")
        if cni != cfg.cni.plugin:
            cfg.cni.plugin, cfg.cni.mode = cni, CNI_MODES[cni][0]
    if cni_mode:
        if cni_mode not in CNI_MODES[cfg.cni.plugin]:
            raise InputError(f"{cfg.cni.plugin} has no mode {cni_mode!r} "
                             f"(modes: {', '.join(CNI_MODES[cfg.cni.plugin])})", field="--cni-mode")
        cfg.cni.mode = cni_mode
    if proxy_mode:
        if proxy_mode not in PROXY_MODES:
            raise InputError(f"unknown proxy mode {proxy_mode!r} (known: {', '.join(PROXY_MODES)})",
                             field="--proxy-mode")
        cfg.proxy.mode = proxy_mode


class LabelIndex:
    """Pods by (namespace, label, value): a Service's selector looks at the pods carrying
    its rarest label instead of every pod of the namespace."""

    def __init__(self, pods: Iterable[Pod]):
        self.by_label: dict[tuple[str, str, str], list[Pod]] = defaultdict(list)
        for pod in pods:
            for k, v in pod.meta.labels.items():
                self.by_label[(pod.namespace, k, v)].append(pod)

    def select(self, namespace: str, selector: dict[str, str]) -> list[Pod]:
        postings = [self.by_label.get((namespace, k, v), []) for k, v in selector.items()]
        if not postings:
            return []
        smallest = min(postings, key=len)
        return [p for p in smallest
                if all(p.meta.labels.get(k) == v for k, v in selector.items())]


def _owner_name(rs: Workload) -> str:
    ref = rs.meta.controller()
    return ref.name if ref else rs.name


def _unique(objs: list, kind: str) -> dict:
    out: dict = {}
    for o in objs:
        if o.meta.key in out:
            raise InputError("defined twice", file=o.meta.source or None,
                             obj=f"{kind} {o.meta.key}")
        out[o.meta.key] = o
    return out


def _check_unique(objs: list, kind: str) -> None:
    _unique(objs, kind)


def _merge(defaults: list, given: list) -> list:
    """The user's objects replace bootstrap objects of the same kind and name."""
    given_keys = {(getattr(o, "kind", ""), o.meta.key) for o in given}
    kept = [o for o in defaults if (getattr(o, "kind", ""), o.meta.key) not in given_keys]
    return kept + list(given)


def example_path(name: str = "guide-lab") -> str:
    here = os.path.join(os.path.dirname(__file__), "examples", name)
    if not os.path.isdir(here):
        raise InputError(f"no built-in example named {name!r}")
    return here
