"""Service address allocation: ClusterIPs, NodePorts, health-check ports, LB IPs.

Like kube-apiserver's allocators, each range has a lower "static" band that
dynamic allocation avoids while the upper band has room, so addresses users
ask for (and kubeadm's 10.96.0.1 / 10.96.0.10) do not collide with dynamic
ones. Where the apiserver draws at random, podnet takes a stable hash of the
Service's name as the starting point, so adding one Service never moves
another: the same inputs always give the same addresses.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

from ..api.objects import Service
from ..config import ClusterConfig
from ..errors import AllocationError, InputError
from .naming import stable_offset


def _static_band(size: int, minimum: int, maximum: int) -> int:
    return min(max(minimum, size // 16), maximum)


class IPRangeAllocator:
    """One service CIDR (pkg/registry/core/service/ipallocator semantics)."""

    def __init__(self, cidr):
        self.cidr = cidr
        first = int(cidr.network_address) + 1             # the network address is never used
        last = int(cidr.broadcast_address) - (1 if cidr.version == 4 else 0)
        self.first, self.last = first, last
        self.size = max(0, last - first + 1)
        self.static = _static_band(self.size, 16, 256)
        self.used: dict[int, str] = {}

    def contains(self, ip) -> bool:
        return ip.version == self.cidr.version and self.first <= int(ip) <= self.last

    def claim(self, ip, owner: str) -> Optional[str]:
        """Take `ip` for `owner`; returns the current holder if someone else has it."""
        holder = self.used.get(int(ip))
        if holder is not None and holder != owner:
            return holder
        self.used[int(ip)] = owner
        return None

    def allocate(self, owner: str):
        dynamic = self.size - self.static
        bands = [(self.first + self.static, dynamic), (self.first, self.static)] if dynamic > 0 \
            else [(self.first, self.size)]
        for start, size in bands:
            offset = stable_offset(owner, size)
            for i in range(size):
                value = start + (offset + i) % size
                if value not in self.used:
                    self.used[value] = owner
                    return ipaddress.ip_address(value)
        return None


class PortAllocator:
    """The NodePort range (30000-32767 by default), same banding as IPs."""

    def __init__(self, lo: int, hi: int):
        self.lo, self.hi = lo, hi
        self.size = hi - lo + 1
        self.static = _static_band(self.size, 16, 128)
        self.used: dict[int, str] = {}

    def claim(self, port: int, owner: str) -> Optional[str]:
        holder = self.used.get(port)
        if holder is not None and holder != owner:
            return holder
        self.used[port] = owner
        return None

    def allocate(self, owner: str, key: str) -> Optional[int]:
        dynamic = self.size - self.static
        for start, size in ((self.lo + self.static, dynamic), (self.lo, self.static)):
            if size <= 0:
                continue
            offset = stable_offset(key, size)
            for i in range(size):
                port = start + (offset + i) % size
                if port not in self.used:
                    self.used[port] = owner
                    return port
        return None


class ServiceAllocators:
    def __init__(self, cfg: ClusterConfig):
        self.cfg = cfg
        self.ip = {n.version: IPRangeAllocator(n) for n in cfg.service_subnets}
        self.ports = PortAllocator(*cfg.node_port_range)
        self.lb_used: dict = {}
        self.warnings: list[str] = []

    # -- ClusterIPs -------------------------------------------------------------
    def families_for(self, svc: Service) -> list[int]:
        cluster = [n.version for n in self.cfg.service_subnets]
        if svc.ip_families:
            fams = [4 if f == "IPv4" else 6 for f in svc.ip_families]
        elif svc.cluster_ips:
            fams = [ip.version for ip in svc.cluster_ips]
        else:
            fams = [cluster[0]]
        policy = svc.ip_family_policy or ("SingleStack" if len(fams) == 1 else "RequireDualStack")
        if policy in ("PreferDualStack", "RequireDualStack") and len(cluster) == 2:
            for fam in cluster:
                if fam not in fams:
                    fams.append(fam)
        if policy == "RequireDualStack" and len(cluster) < 2:
            raise InputError("RequireDualStack on a single-stack cluster",
                             file=svc.meta.source or None, obj=f"Service {svc.key}",
                             field="spec.ipFamilyPolicy")
        for fam in fams:
            if fam not in self.ip:
                raise InputError(f"the cluster has no IPv{fam} service CIDR",
                                 file=svc.meta.source or None, obj=f"Service {svc.key}",
                                 field="spec.ipFamilies")
        return fams

    def claim_requested(self, svc: Service) -> None:
        """Honour the ClusterIPs a Service asks for (or a dump records)."""
        where = dict(file=svc.meta.source or None, obj=f"Service {svc.key}", field="spec.clusterIP")
        for ip in svc.cluster_ips:
            alloc = self.ip.get(ip.version)
            if alloc is None or not alloc.contains(ip):
                cidrs = ", ".join(str(n) for n in self.cfg.service_subnets)
                if self.cfg.service_subnet_explicit:
                    raise AllocationError(f"{ip} is not in the service CIDR ({cidrs})", **where)
                self.warnings.append(f"Service {svc.key}: clusterIP {ip} is outside {cidrs} "
                                     "(kept as recorded)")
                continue
            holder = alloc.claim(ip, svc.key)
            if holder:
                raise AllocationError(f"clusterIP {ip} is already allocated to Service {holder}", **where)

    def allocate_cluster_ips(self, svc: Service) -> None:
        if svc.type == "ExternalName" or svc.headless:
            return
        fams = self.families_for(svc)
        have = {ip.version for ip in svc.cluster_ips}
        for fam in fams:
            if fam in have:
                continue
            ip = self.ip[fam].allocate(svc.key)
            if ip is None:
                raise AllocationError(f"no free address left in service CIDR {self.ip[fam].cidr}",
                                      file=svc.meta.source or None, obj=f"Service {svc.key}",
                                      field="spec.clusterIP")
            svc.cluster_ips.append(ip)
        if not svc.ip_families:
            svc.ip_families = [f"IPv{ip.version}" for ip in svc.cluster_ips]
        if not svc.ip_family_policy:
            svc.ip_family_policy = "SingleStack" if len(svc.cluster_ips) == 1 else "RequireDualStack"

    # -- NodePorts ----------------------------------------------------------------
    def claim_node_ports(self, svc: Service) -> None:
        lo, hi = self.cfg.node_port_range
        for i, p in enumerate(svc.ports):
            if p.node_port is None:
                continue
            where = dict(file=svc.meta.source or None, obj=f"Service {svc.key}",
                         field=f"spec.ports[{i}].nodePort")
            if not svc.has_node_ports:
                if svc.type == "ClusterIP":
                    raise InputError("may not be set for type ClusterIP", **where)
                continue
            if not lo <= p.node_port <= hi:
                if self.cfg.origin == "kind":
                    raise AllocationError(f"{p.node_port} is outside the NodePort range {lo}-{hi}",
                                          **where)
                self.warnings.append(f"Service {svc.key}: nodePort {p.node_port} is outside "
                                     f"{lo}-{hi} (kept as recorded)")
            holder = self.ports.claim(p.node_port, svc.key)
            if holder:
                raise AllocationError(f"port {p.node_port} is already allocated to Service {holder}",
                                      **where)
        if svc.health_check_node_port:
            holder = self.ports.claim(svc.health_check_node_port, svc.key)
            if holder:
                raise AllocationError(
                    f"port {svc.health_check_node_port} is already allocated to Service {holder}",
                    file=svc.meta.source or None, obj=f"Service {svc.key}",
                    field="spec.healthCheckNodePort")

    def allocate_node_ports(self, svc: Service) -> None:
        if not svc.has_node_ports:
            return
        by_port: dict[int, int] = {}
        for p in svc.ports:
            if p.node_port is not None:
                by_port.setdefault(p.port, p.node_port)
        for p in svc.ports:
            if p.node_port is not None:
                continue
            # the same port number for TCP and UDP shares one nodePort (DNS style)
            if p.port in by_port:
                p.node_port = by_port[p.port]
                continue
            port = self.ports.allocate(svc.key, f"{svc.key}/{p.name or p.port}/{p.protocol}")
            if port is None:
                raise AllocationError(f"no free NodePort left in {self.ports.lo}-{self.ports.hi}",
                                      file=svc.meta.source or None, obj=f"Service {svc.key}",
                                      field="spec.ports.nodePort")
            p.node_port = port
            by_port[p.port] = port
        if svc.type == "LoadBalancer" and svc.external_policy_local and not svc.health_check_node_port:
            svc.health_check_node_port = self.ports.allocate(svc.key, f"{svc.key}/healthcheck")

    # -- LoadBalancer IPs -----------------------------------------------------------
    def claim_lb(self, svc: Service) -> None:
        for ip in svc.lb_ips:
            self.lb_used[ip] = svc.key

    def allocate_lb(self, svc: Service) -> None:
        if svc.type != "LoadBalancer" or svc.lb_ingress or svc.load_balancer_class:
            return
        if svc.load_balancer_ip is not None:
            holder = self.lb_used.get(svc.load_balancer_ip)
            if holder and holder != svc.key:
                raise AllocationError(f"{svc.load_balancer_ip} is already used by Service {holder}",
                                      file=svc.meta.source or None, obj=f"Service {svc.key}",
                                      field="spec.loadBalancerIP")
            self.lb_used[svc.load_balancer_ip] = svc.key
            svc.lb_ingress = [{"ip": str(svc.load_balancer_ip), "ipMode": "VIP"}]
            return
        for first, last in self.cfg.lb_pools:
            for value in range(int(first), int(last) + 1):
                ip = ipaddress.ip_address(value)
                if ip not in self.lb_used:
                    self.lb_used[ip] = svc.key
                    svc.lb_ingress = [{"ip": str(ip), "ipMode": "VIP"}]
                    return
        self.warnings.append(f"Service {svc.key}: no free LoadBalancer address; EXTERNAL-IP stays <pending>")


def reconcile_services(cfg: ClusterConfig, services: list[Service]) -> ServiceAllocators:
    """Honour what is requested first (input order), then fill in the rest (sorted by name)."""
    alloc = ServiceAllocators(cfg)
    for svc in services:
        if svc.type == "ExternalName":
            svc.cluster_ips = []
            continue
        alloc.claim_requested(svc)
        alloc.claim_node_ports(svc)
        alloc.claim_lb(svc)
    for svc in sorted(services, key=lambda s: (s.namespace, s.name)):
        alloc.allocate_cluster_ips(svc)
        alloc.allocate_node_ports(svc)
        alloc.allocate_lb(svc)
    return alloc
