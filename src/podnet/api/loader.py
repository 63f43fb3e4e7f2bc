"""Read manifests: files, directories, multi-document YAML, JSON, and List objects.

`load_manifests(paths)` returns a `Manifests` bag of typed objects plus the
cluster-definition documents (kind's Cluster config, podnet's PodnetConfig).
Kinds podnet does not model are skipped with a warning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import InputError
from .fields import Fields
from .objects import (Endpoints, EndpointSlice, GenericObject, Namespace, Node, Pod,
                      Service, Workload, parse_meta)

try:  # libyaml is an order of magnitude faster on big dumps
    _Loader = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")

# kind -> accepted apiVersions (the group matters; old dumps use extensions/v1beta1)
WORKLOAD_KINDS = ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "VirtualMachine")
KNOWN = {
    "Namespace": ("v1",),
    "Node": ("v1",),
    "Pod": ("v1",),
    "Service": ("v1",),
    "Endpoints": ("v1",),
    "EndpointSlice": ("discovery.k8s.io/v1", "discovery.k8s.io/v1beta1"),
    "Deployment": ("apps/v1", "apps/v1beta1", "apps/v1beta2", "extensions/v1beta1"),
    "ReplicaSet": ("apps/v1", "apps/v1beta2", "extensions/v1beta1"),
    "StatefulSet": ("apps/v1", "apps/v1beta1", "apps/v1beta2"),
    "DaemonSet": ("apps/v1", "apps/v1beta2", "extensions/v1beta1"),
    # KubeVirt: a VM runs in a virt-launcher pod that carries the template's labels
    "VirtualMachine": ("kubevirt.io/v1", "kubevirt.io/v1alpha3"),
    "NetworkPolicy": ("networking.k8s.io/v1", "extensions/v1beta1"),
    "Ingress": ("networking.k8s.io/v1", "networking.k8s.io/v1beta1", "extensions/v1beta1"),
    "IngressClass": ("networking.k8s.io/v1",),
    "GatewayClass": ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    "Gateway": ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    "HTTPRoute": ("gateway.networking.k8s.io/v1", "gateway.networking.k8s.io/v1beta1"),
    "Cluster": ("kind.x-k8s.io/v1alpha4",),
    "PodnetConfig": ("podnet.dev/v1alpha1",),
    "Allocations": ("podnet.dev/v1alpha1",),       # podnet.control.allocations
}
CLUSTER_SCOPED = ("Namespace", "Node", "IngressClass", "GatewayClass")


@dataclass
class Manifests:
    namespaces: list[Namespace] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    services: list[Service] = field(default_factory=list)
    endpoints: list[Endpoints] = field(default_factory=list)
    endpoint_slices: list[EndpointSlice] = field(default_factory=list)
    workloads: list[Workload] = field(default_factory=list)
    # kept as written, interpreted by their own packages
    others: dict[str, list[GenericObject]] = field(default_factory=dict)
    # cluster definition documents: (file, mapping)
    cluster_configs: list[tuple[str, dict]] = field(default_factory=list)
    podnet_configs: list[tuple[str, dict]] = field(default_factory=list)
    allocations: list[tuple[str, dict]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    def of_kind(self, kind: str) -> list[GenericObject]:
        return self.others.get(kind, [])


def iter_manifest_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            found = sorted(q for q in path.rglob("*")
                           if q.is_file() and q.suffix in MANIFEST_SUFFIXES
                           and not any(part.startswith(".") for part in q.relative_to(path).parts))
            files.extend(found)
        elif path.is_file() or str(p) == "-":
            files.append(path)
        else:
            raise InputError("no such file or directory", file=str(p))
    return files


def read_documents(path: Path) -> list[Any]:
    name = str(path)
    try:
        text = path.read_text() if name != "-" else os.sys.stdin.read()
    except OSError as e:
        raise InputError(e.strerror or str(e), file=name) from None
    except UnicodeDecodeError:
        raise InputError("not a text file", file=name) from None
    if path.suffix == ".json":
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as e:
            raise InputError(f"malformed JSON: {e.msg}", file=name,
                             field=f"line {e.lineno} column {e.colno}") from None
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else None
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"malformed YAML: {problem}", file=name, field=where) from None


def load_manifests(paths: Iterable[str | os.PathLike], bag: Manifests | None = None) -> Manifests:
    bag = bag or Manifests()
    paths = list(paths)
    named = {str(Path(p)) for p in paths}
    for given in paths:
        files = iter_manifest_files([given])
        if not files and Path(given).is_dir():
            bag.warnings.append(f"{given}: no {'/'.join(MANIFEST_SUFFIXES)} files in this directory")
        for path in files:
            bag.files.append(str(path))
            for index, doc in enumerate(read_documents(path)):
                if str(path) not in named and not (isinstance(doc, dict) and "kind" in doc):
                    # found by walking a directory: other tools' files live there too
                    bag.warnings.append(f"{path}: skipping document {index + 1} (not a Kubernetes object)")
                    continue
                _add_document(bag, doc, str(path), f"document {index + 1}")
    return bag


def _add_document(bag: Manifests, doc: Any, file: str, where: str) -> None:
    if not isinstance(doc, dict):
        raise InputError(f"expected a Kubernetes object (a mapping), got {type(doc).__name__}",
                         file=file, field=where)
    kind = doc.get("kind")
    api_version = doc.get("apiVersion")
    if not isinstance(kind, str) or not kind:
        raise InputError("missing 'kind'", file=file, field=where)
    if kind == "List" or (kind.endswith("List") and isinstance(doc.get("items"), list)):
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise InputError("items: expected a list", file=file, obj=kind)
        item_kind = kind[:-4] if kind != "List" else None
        for i, item in enumerate(items):
            if isinstance(item, dict) and item_kind and "kind" not in item:
                item = {**item, "kind": item_kind, "apiVersion": item.get("apiVersion", api_version)}
            _add_document(bag, item, file, f"{kind}.items[{i}]")
        return
    if kind not in KNOWN:
        bag.warnings.append(f"{file}: skipping {kind} {_name_of(doc)} (not a kind podnet models)")
        return
    if api_version not in KNOWN[kind]:
        # some older dumps omit apiVersion on list items; accept the kind's preferred one
        if api_version is None:
            api_version = KNOWN[kind][0]
        else:
            raise InputError(f"unsupported apiVersion {api_version!r} for {kind} "
                             f"(expected {' or '.join(KNOWN[kind])})",
                             file=file, obj=f"{kind} {_name_of(doc)}", field="apiVersion")
    if kind == "Cluster":
        bag.cluster_configs.append((file, doc))
        return
    if kind == "PodnetConfig":
        bag.podnet_configs.append((file, doc))
        return
    if kind == "Allocations":
        bag.allocations.append((file, doc))
        return
    obj_name = f"{kind} {_name_of(doc)}"
    f = Fields(doc, file=file, obj=obj_name, warnings=bag.warnings)
    if kind == "Namespace":
        bag.namespaces.append(Namespace.from_manifest(f))
    elif kind == "Node":
        bag.nodes.append(Node.from_manifest(f))
    elif kind == "Pod":
        bag.pods.append(Pod.from_manifest(f))
    elif kind == "Service":
        bag.services.append(Service.from_manifest(f))
    elif kind == "Endpoints":
        bag.endpoints.append(Endpoints.from_manifest(f))
    elif kind == "EndpointSlice":
        bag.endpoint_slices.append(EndpointSlice.from_manifest(f))
    elif kind in WORKLOAD_KINDS:
        bag.workloads.append(Workload.from_manifest(f))
    else:
        meta = parse_meta(f, namespaced=kind not in CLUSTER_SCOPED)
        spec = doc.get("spec") or {}
        if not isinstance(spec, dict):
            raise f.error("spec", "expected a mapping")
        bag.others.setdefault(kind, []).append(GenericObject(api_version, kind, meta, spec, doc))


def _name_of(doc: dict) -> str:
    meta = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    name = meta.get("name") or meta.get("generateName") or "<unnamed>"
    ns = meta.get("namespace")
    kind = doc.get("kind")
    if kind in CLUSTER_SCOPED or kind in ("Cluster", "PodnetConfig", "Allocations"):
        return str(name)
    return f"{ns or 'default'}/{name}"
