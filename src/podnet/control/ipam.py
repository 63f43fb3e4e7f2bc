"""Pod IPAM with the CNI host-local plugin's semantics.

Per node and family the range is the node's podCIDR; the gateway is the first
address (.1) and never handed out; allocation is round-robin: it continues
after the last reserved address and wraps, skipping addresses in use (that is
what host-local's `last_reserved_ip` file achieves). Recorded pod IPs are
reserved first. An exhausted range is an error naming the pod.

CNI solutions with their own IPAM (calico's blocks, weave's ring) subclass
`PodIPAM` in podnet.cni and are picked by the cluster's CNI plugin.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from ..api.objects import Node, Pod
from ..errors import AllocationError


@dataclass
class HostLocalRange:
    """One host-local range: subnet, gateway, rangeStart..rangeEnd, allocations."""
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    range_start: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    range_end: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    allocated: dict = field(default_factory=dict)   # ip -> owner id
    last_reserved: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None

    def __post_init__(self):
        net = self.subnet
        if self.gateway is None:
            self.gateway = net.network_address + 1
        if self.range_start is None:
            self.range_start = net.network_address + 1
        if self.range_end is None:
            # host-local never hands out the broadcast address (IPv4) or the last one
            self.range_end = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address

    def contains(self, ip) -> bool:
        return ip in self.subnet and self.range_start <= ip <= self.range_end

    def reserve(self, ip, owner: str) -> None:
        self.allocated[ip] = owner
        self.last_reserved = ip

    def release(self, ip) -> None:
        self.allocated.pop(ip, None)

    def next_free(self, owner: str):
        start, end = int(self.range_start), int(self.range_end)
        size = end - start + 1
        cursor = int(self.last_reserved) + 1 if self.last_reserved is not None else start
        for i in range(size):
            value = cursor + i
            if value > end:
                value = start + (value - end - 1)
            ip = ipaddress.ip_address(value)
            if ip == self.gateway or ip in self.allocated:
                continue
            self.reserve(ip, owner)
            return ip
        return None


class PodIPAM:
    """Base IPAM: host-local ranges from each node's podCIDRs."""

    name = "host-local"

    def __init__(self, cfg):
        self.cfg = cfg
        self.ranges: dict[tuple[str, int], HostLocalRange] = {}

    def range_for(self, node: Node, family: int) -> Optional[HostLocalRange]:
        key = (node.name, family)
        rng = self.ranges.get(key)
        if rng is None:
            cidr = next((c for c in node.pod_cidrs if c.version == family), None)
            if cidr is None:
                return None
            rng = HostLocalRange(cidr)
            self.ranges[key] = rng
        return rng

    def reserve(self, pod: Pod, node: Optional[Node]) -> None:
        """Keep a recorded pod IP (a dump's truth) out of the free pool."""
        if node is None:
            return
        for ip in pod.pod_ips:
            rng = self.range_for(node, ip.version)
            if rng is not None and ip in rng.subnet:
                if ip in rng.allocated and rng.allocated[ip] != pod.key:
                    raise AllocationError(f"pod IP {ip} is already used by pod {rng.allocated[ip]}",
                                          obj=f"Pod {pod.key}", field="status.podIPs")
                rng.allocated[ip] = pod.key

    def allocate(self, pod: Pod, node: Node) -> list:
        ips = []
        for family in self.cfg.families:
            rng = self.range_for(node, family)
            if rng is None:
                continue
            ip = rng.next_free(pod.key)
            if ip is None:
                raise AllocationError(
                    f"no free IP address in pod CIDR {rng.subnet} of node {node.name} "
                    f"(host-local range {rng.range_start}-{rng.range_end} exhausted)",
                    obj=f"Pod {pod.key}", field="status.podIPs")
            ips.append(ip)
        return ips

    def release(self, pod: Pod, node: Optional[Node]) -> None:
        if node is None:
            return
        for ip in pod.pod_ips:
            rng = self.range_for(node, ip.version)
            if rng is not None:
                rng.release(ip)


IPAM_BY_CNI: dict[str, type[PodIPAM]] = {}


def ipam_for(cfg) -> PodIPAM:
    """The IPAM the cluster's CNI uses (host-local unless a CNI registers its own)."""
    return IPAM_BY_CNI.get(cfg.cni.plugin, PodIPAM)(cfg)
