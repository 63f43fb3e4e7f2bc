"""What the controllers decided before: the part of etcd a re-render must not change.

A real cluster never moves a running pod or renumbers it, and a Service keeps
its ClusterIP, NodePorts and LoadBalancer IP for life. podnet's controllers are
deterministic, but their choices depend on everything else in the inputs
(deleting one pod shifts host-local's round-robin for the pods after it), so a
long-lived cluster (the lab, after `lab apply`) records its decisions in a
document of its own and loads it with the manifests:

    apiVersion: podnet.dev/v1alpha1
    kind: Allocations
    pods:
      default/web-6d4777fb8c-bp7w6: {nodeName: k8s-guide-worker, podIPs: [10.244.1.3]}
    services:
      default/web: {clusterIPs: [10.107.164.13], nodePorts: {80/TCP: 30080},
                    healthCheckNodePort: 31000, loadBalancerIPs: [172.18.255.200]}

A recorded decision fills in only what an object does not already say, and only
where it still fits (the pod is still bound to that node; the Service is still
of a kind that has the address): objects that changed get fresh decisions.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ..api.fields import Fields

KIND = "Allocations"


@dataclass
class Allocations:
    pods: dict[str, dict] = field(default_factory=dict)
    services: dict[str, dict] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading and writing
    @classmethod
    def parse(cls, file: str, doc: dict) -> "Allocations":
        f = Fields(doc, file=file, obj=KIND)
        out = cls()
        for key, entry in (f.raw("pods", {}) or {}).items():
            e = Fields(entry or {}, file=file, obj=f"{KIND} pods[{key}]")
            out.pods[key] = {"nodeName": e.str("nodeName", ""),
                             "podIPs": [_ip(ip, file, key, "podIPs") for ip in e.raw("podIPs", []) or []]}
        for key, entry in (f.raw("services", {}) or {}).items():
            e = Fields(entry or {}, file=file, obj=f"{KIND} services[{key}]")
            out.services[key] = {
                "clusterIPs": [_ip(ip, file, key, "clusterIPs") for ip in e.raw("clusterIPs", []) or []],
                "nodePorts": {str(k): int(v) for k, v in (e.raw("nodePorts", {}) or {}).items()},
                "healthCheckNodePort": e.int("healthCheckNodePort", None),
                "loadBalancerIPs": [_ip(ip, file, key, "loadBalancerIPs")
                                    for ip in e.raw("loadBalancerIPs", []) or []]}
        return out

    def merge(self, other: "Allocations") -> None:
        self.pods.update(other.pods)
        self.services.update(other.services)

    @classmethod
    def of(cls, cluster) -> "Allocations":
        """The decisions a reconciled cluster holds."""
        out = cls()
        for pod in cluster.pods:
            if pod.node_name and pod.pod_ips and not pod.host_network:
                out.pods[pod.key] = {"nodeName": pod.node_name, "podIPs": list(pod.pod_ips)}
        for svc in cluster.services:
            if svc.type == "ExternalName":
                continue
            out.services[svc.key] = {
                "clusterIPs": list(svc.cluster_ips),
                "nodePorts": {_port_key(p): p.node_port for p in svc.ports if p.node_port},
                "healthCheckNodePort": svc.health_check_node_port,
                "loadBalancerIPs": list(svc.lb_ips)}
        return out

    def to_manifest(self) -> dict:
        def svc(e: dict) -> dict:
            d = {"clusterIPs": [str(ip) for ip in e["clusterIPs"]]}
            if e["nodePorts"]:
                d["nodePorts"] = dict(sorted(e["nodePorts"].items()))
            if e["healthCheckNodePort"]:
                d["healthCheckNodePort"] = e["healthCheckNodePort"]
            if e["loadBalancerIPs"]:
                d["loadBalancerIPs"] = [str(ip) for ip in e["loadBalancerIPs"]]
            return d
        return {"apiVersion": "podnet.dev/v1alpha1", "kind": KIND,
                "pods": {k: {"nodeName": e["nodeName"], "podIPs": [str(ip) for ip in e["podIPs"]]}
                         for k, e in sorted(self.pods.items())},
                "services": {k: svc(e) for k, e in sorted(self.services.items())}}

    # ------------------------------------------------------------------ honouring them
    def bind_pods(self, pods, nodes: dict) -> set[str]:
        """Before the scheduler: a recorded pod stays on its node, with its addresses.
        Returns the keys of the pods given their addresses here (the controllers' own
        decisions, unlike addresses a dump records)."""
        pinned = set()
        for pod in pods:
            rec = self.pods.get(pod.key)
            if rec is None or pod.host_network or pod.terminal or rec["nodeName"] not in nodes:
                continue
            if not pod.node_name:
                pod.node_name = rec["nodeName"]
            if pod.node_name == rec["nodeName"] and not pod.pod_ips:
                pod.pod_ips = list(rec["podIPs"])
                pinned.add(pod.key)
        return pinned

    def keep_service_addresses(self, services) -> None:
        """Before the Service allocators: a Service keeps its ClusterIPs, NodePorts, LB IPs."""
        for svc in services:
            rec = self.services.get(svc.key)
            if rec is None or svc.type == "ExternalName":
                continue
            if not svc.cluster_ips and not svc.headless:
                svc.cluster_ips = list(rec["clusterIPs"])
            if svc.has_node_ports:
                for p in svc.ports:
                    if p.node_port is None and _port_key(p) in rec["nodePorts"]:
                        p.node_port = rec["nodePorts"][_port_key(p)]
            if svc.external_policy_local and svc.type == "LoadBalancer" and not svc.health_check_node_port:
                svc.health_check_node_port = rec["healthCheckNodePort"]
            if svc.type == "LoadBalancer" and not svc.lb_ingress and svc.load_balancer_ip is None \
                    and not svc.load_balancer_class and rec["loadBalancerIPs"]:
                svc.lb_ingress = [{"ip": str(ip), "ipMode": "VIP"} for ip in rec["loadBalancerIPs"]]


def _port_key(p) -> str:
    return f"{p.port}/{p.protocol}"


def _ip(text, file: str, key: str, field_name: str):
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        from ..errors import InputError
        raise InputError(f"not an IP address: {text!r}", file=file, obj=f"{KIND} {key}", field=field_name) from None
