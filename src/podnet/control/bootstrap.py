"""What a fresh kind (kubeadm) cluster already has before the user applies anything.

Namespaces default, kube-system, kube-public, kube-node-lease, local-path-storage;
`default/kubernetes` (the first service IP, 443 -> the control planes' 6443);
`kube-system/kube-dns` (the tenth service IP; 53/UDP, 53/TCP, 9153/TCP) served
by two coredns pods; the control-plane static pods; the service proxy and CNI
daemons on every node; kind's local-path-provisioner.

These are ordinary manifests, parsed by the same code as the user's.
"""

from __future__ import annotations

import ipaddress

from ..api.fields import Fields
from ..api.objects import Endpoints, EndpointSlice, Namespace, Pod, Service, Workload
from ..config import ClusterConfig

SOURCE = "<kind bootstrap>"
SYSTEM_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system", "local-path-storage")
TOLERATE_CONTROL_PLANE = {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
                          "effect": "NoSchedule"}

# (namespace, deployment) whose pods kind schedules while the control plane is the only node
PINNED_TO_CONTROL_PLANE = {("kube-system", "coredns"), ("local-path-storage", "local-path-provisioner")}

CNI_DAEMONSETS = {
    "kindnet": ("kindnet", {"app": "kindnet", "k8s-app": "kindnet", "tier": "node"}, "docker.io/kindest/kindnetd"),
    "flannel": ("kube-flannel-ds", {"app": "flannel", "k8s-app": "flannel", "tier": "node"}, "docker.io/flannel/flannel"),
    "calico": ("calico-node", {"k8s-app": "calico-node"}, "docker.io/calico/node"),
    "weave": ("weave-net", {"name": "weave-net"}, "weaveworks/weave-kube"),
}


def nth_ip(cidr, n: int):
    return ipaddress.ip_address(int(cidr.network_address) + n)


def _parse(cls, doc):
    return cls.from_manifest(Fields(doc, file=None, obj=f"{doc['kind']} {doc['metadata'].get('namespace', '')}/{doc['metadata']['name']}"))


def _daemonset(name: str, labels: dict, image: str, tolerations: list, exclude_nodes=()) -> dict:
    spec: dict = {"hostNetwork": True, "tolerations": tolerations,
                  "nodeSelector": {"kubernetes.io/os": "linux"},
                  "priorityClassName": "system-node-critical",
                  "containers": [{"name": name.split("-ds")[0], "image": image}]}
    if exclude_nodes:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": list(exclude_nodes)}]}]}}}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "kube-system", "labels": dict(labels)},
            "spec": {"selector": {"matchLabels": dict(labels)},
                     "template": {"metadata": {"labels": dict(labels)}, "spec": spec}}}


def bootstrap_objects(cfg: ClusterConfig, control_plane_ips: list) -> dict:
    """The objects of a fresh cluster, keyed by kind."""
    out: dict[str, list] = {"Namespace": [], "Service": [], "Endpoints": [], "EndpointSlice": [],
                            "Workload": [], "Pod": []}
    for ns in SYSTEM_NAMESPACES:
        out["Namespace"].append(_parse(Namespace, {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": ns}}))
    svc_cidr = cfg.service_subnet
    out["Service"].append(_parse(Service, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kubernetes", "namespace": "default",
                     "labels": {"component": "apiserver", "provider": "kubernetes"}},
        "spec": {"clusterIP": str(nth_ip(svc_cidr, 1)), "type": "ClusterIP",
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]}}))
    api_ips = [ip for ip in control_plane_ips if ip.version == svc_cidr.version]
    if api_ips:
        out["Endpoints"].append(_parse(Endpoints, {
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": str(ip)} for ip in api_ips],
                         "ports": [{"name": "https", "port": cfg.api_server_port, "protocol": "TCP"}]}]}))
        out["EndpointSlice"].append(_parse(EndpointSlice, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "kubernetes"}},
            "addressType": "IPv4" if svc_cidr.version == 4 else "IPv6",
            "endpoints": [{"addresses": [str(ip)], "conditions": {"ready": True}} for ip in api_ips],
            "ports": [{"name": "https", "port": cfg.api_server_port, "protocol": "TCP"}]}))
    dns_labels = {"k8s-app": "kube-dns", "kubernetes.io/cluster-service": "true",
                  "kubernetes.io/name": "CoreDNS"}
    out["Service"].append(_parse(Service, {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": dns_labels,
                     "annotations": {"prometheus.io/port": "9153", "prometheus.io/scrape": "true"}},
        "spec": {"clusterIP": str(nth_ip(svc_cidr, 10)), "selector": {"k8s-app": "kube-dns"},
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                           {"name": "metrics", "port": 9153, "protocol": "TCP", "targetPort": 9153}]}}))
    out["Workload"].append(_parse(Workload, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                 "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}}, "spec": {
                     "priorityClassName": "system-cluster-critical",
                     "dnsPolicy": "Default",
                     "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                     TOLERATE_CONTROL_PLANE],
                     "containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.11.3",
                                     "args": ["-conf", "/etc/coredns/Corefile"],
                                     "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                               {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                                               {"containerPort": 9153, "name": "metrics", "protocol": "TCP"}]}]}}}}))
    out["Workload"].append(_parse(Workload, {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "local-path-provisioner", "namespace": "local-path-storage"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "local-path-provisioner"}},
                 "template": {"metadata": {"labels": {"app": "local-path-provisioner"}}, "spec": {
                     "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [TOLERATE_CONTROL_PLANE],
                     "containers": [{"name": "local-path-provisioner",
                                     "image": "docker.io/kindest/local-path-provisioner"}]}}}}))
    everywhere = [{"operator": "Exists"}]
    proxy = cfg.proxy
    if proxy.mode in ("iptables", "ipvs", "nftables", "userspace"):
        out["Workload"].append(_parse(Workload, _daemonset(
            "kube-proxy", {"k8s-app": "kube-proxy"}, "registry.k8s.io/kube-proxy", everywhere,
            proxy.disabled_on_nodes)))
    elif proxy.mode == "ebpf":
        out["Workload"].append(_parse(Workload, _daemonset(
            "cilium", {"k8s-app": "cilium"}, "quay.io/cilium/cilium", everywhere, proxy.disabled_on_nodes)))
    if cfg.cni.plugin in CNI_DAEMONSETS:
        name, labels, image = CNI_DAEMONSETS[cfg.cni.plugin]
        out["Workload"].append(_parse(Workload, _daemonset(
            name, labels, image, [{"operator": "Exists", "effect": "NoSchedule"}])))
    return out


def static_pods(node_name: str, node_ip) -> list[Pod]:
    """The control plane's static pods (mirror pods owned by their Node)."""
    pods = []
    for component in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        name = f"{component}-{node_name}"
        pods.append(_parse(Pod, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "kube-system",
                         "labels": {"component": component, "tier": "control-plane"},
                         "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": node_name,
                                              "controller": True}]},
            "spec": {"hostNetwork": True, "nodeName": node_name,
                     "priorityClassName": "system-node-critical",
                     "containers": [{"name": component, "image": f"registry.k8s.io/{component}"}]}}))
    return pods
