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
from typing import Iterator, Optional

from ..api.objects import Node, Pod
from ..errors import AllocationError


@dataclass
class HostLocalRange:
    """One host-local range: subnet, gateway, rangeStart..rangeEnd, allocations.

    The defaults and checks are host-local's `Range.Canonicalize`
    (plugins/ipam/host-local/backend/allocator/range.go): the gateway defaults to
    the subnet's first address, rangeStart to .1, rangeEnd to the last address
    (IPv4: the one before broadcast). `allocated`/`last_reserved` are the control
    plane's bookkeeping; the CNI plugin keeps the same facts in its dataDir files.
    """
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

    @classmethod
    def parse(cls, subnet: str, gateway: Optional[str] = None, range_start: Optional[str] = None,
              range_end: Optional[str] = None) -> "HostLocalRange":
        """A range from host-local's JSON fields, checked as `Range.Canonicalize` does.

        Raises ValueError with host-local's own message."""
        try:
            iface = ipaddress.ip_interface(subnet)
        except ValueError:
            raise ValueError(f"invalid CIDR address: {subnet}") from None
        net = iface.network
        if net.prefixlen > net.max_prefixlen - 2:
            raise ValueError(f"Network {iface} too small to allocate from")
        if iface.ip != net.network_address:
            raise ValueError(f"Network has host bits set. For a subnet mask of length {net.prefixlen} "
                             f"the network address is {net.network_address}")
        rng = cls(net)
        if gateway is not None:
            gw = _parse_ip(gateway)
            if gw.version != net.version or gw not in net:
                raise ValueError(f"gateway {gw} not in network {net}")
            rng.gateway = gw
        start = _parse_ip(range_start) if range_start is not None else None
        end = _parse_ip(range_end) if range_end is not None else None
        if start is not None:               # checked against the configured end, if any
            rng._check_in_range(start, None, end)
            rng.range_start = start
        if end is not None:
            rng._check_in_range(end, rng.range_start, None)
            rng.range_end = end
        return rng

    def _check_in_range(self, ip, lower=None, upper=None) -> None:
        """Range.IPInRange: the error host-local reports for an address outside the range."""
        if ip.version != self.subnet.version:
            raise ValueError(f"IP {ip} is not the same protocol as subnet {self.subnet}")
        if ip not in self.subnet:
            raise ValueError(f"{ip} not in network {self.subnet}")
        if lower is not None and ip < lower:
            raise ValueError(f"{ip} is in network {self.subnet} but before start {lower}")
        if upper is not None and ip > upper:
            raise ValueError(f"{ip} is in network {self.subnet} but after end {upper}")

    def contains(self, ip) -> bool:
        return ip.version == self.subnet.version and ip in self.subnet \
            and self.range_start <= ip <= self.range_end

    def overlaps(self, other: "HostLocalRange") -> bool:
        if self.subnet.version != other.subnet.version:
            return False
        return (self.contains(other.range_start) or self.contains(other.range_end)
                or other.contains(self.range_start) or other.contains(self.range_end))

    def __str__(self) -> str:
        return f"{self.range_start}-{self.range_end}"

    def reserve(self, ip, owner: str) -> None:
        self.allocated[ip] = owner
        self.last_reserved = ip

    def release(self, ip) -> None:
        self.allocated.pop(ip, None)

    def next_free(self, owner: str):
        for ip, _ in round_robin([self], self.last_reserved):
            if ip in self.allocated:
                continue
            self.reserve(ip, owner)
            return ip
        return None


def _parse_ip(text: str):
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"invalid IP address: {text}") from None


def check_range_set(ranges: list[HostLocalRange]) -> None:
    """RangeSet.Canonicalize: one family, no overlaps (ValueError with host-local's message)."""
    if not ranges:
        raise ValueError("empty range set")
    if len({r.subnet.version for r in ranges}) > 1:
        raise ValueError("mixed address families")
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            if a.overlaps(b):
                raise ValueError(f"subnets {a} and {b} overlap")


def range_set_text(ranges: list[HostLocalRange]) -> str:
    """RangeSet.String(): `start-end` of each range, comma-separated."""
    return ",".join(str(r) for r in ranges)


def round_robin(ranges: list[HostLocalRange], last_reserved=None) -> Iterator[tuple]:
    """host-local's allocation order over a range set (allocator.go `RangeIter`).

    Yields (ip, range) for every candidate address once: starting after
    `last_reserved` when a range of the set contains it (else at the first
    range's start), moving on to the next range's start after a range's end,
    wrapping around, skipping each range's gateway. Callers take the first
    candidate that is free: that is round-robin allocation, so a crash-looping
    pod does not get the same address back until the whole set has been used.
    """
    idx, cur = 0, None
    if last_reserved is not None:
        for i, r in enumerate(ranges):
            if r.contains(last_reserved):
                idx, cur = i, last_reserved
                break
    start = None
    while True:
        r = ranges[idx]
        if cur is None:
            cur = r.range_start
        elif cur == r.range_end:
            idx = (idx + 1) % len(ranges)
            r = ranges[idx]
            cur = r.range_start
        else:
            cur = cur + 1
        if start is None:
            start = cur
        elif cur == start:
            return
        if cur == r.gateway:
            continue
        yield cur, r


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


# CNI plugin -> its IPAM: a PodIPAM subclass or "module:Class" (imported on first use)
IPAM_BY_CNI: dict[str, type[PodIPAM] | str] = {
    "calico": "podnet.cni.calico_ipam:CalicoIPAM",
    "weave": "podnet.cni.weave:WeaveIPAM",
}


def ipam_for(cfg, nodes=()) -> PodIPAM:
    """The IPAM the cluster's CNI uses (host-local unless a CNI registers its own).

    `nodes` are the cluster's nodes, for IPAMs that split a range among all of them
    up front (weave's ring); they are given to the IPAM as its `nodes`."""
    target = IPAM_BY_CNI.get(cfg.cni.plugin, PodIPAM)
    if isinstance(target, str):
        import importlib
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    ipam = target(cfg)
    if nodes:
        ipam.nodes = list(nodes)
    return ipam
