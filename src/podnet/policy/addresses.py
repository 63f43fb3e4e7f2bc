"""IP address ranges for ipBlocks and for the external peers of an analysis.

A range is (version, first, last) with the addresses as integers, inclusive.
An ipBlock (cidr minus its except list) is a tuple of ranges. The external
peers netpol-analyzer reports are the *atomic* ranges: the address space cut at
every boundary an ipBlock mentions, so that each ipBlock is a union of atomic
ranges and every address of an atomic range is treated alike by every policy.

    atomic_ranges([block("10.0.0.0/8")])  ->  0.0.0.0-9.255.255.255,
                                              10.0.0.0-10.255.255.255,
                                              11.0.0.0-255.255.255.255
"""

from __future__ import annotations

import bisect
import ipaddress
from typing import Iterable, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Range = tuple[int, int, int]                # (version, first, last)

MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}
UNIVERSE = {4: (4, 0, MAX[4]), 6: (6, 0, MAX[6])}


def network_range(net: IPNetwork) -> Range:
    return (net.version, int(net.network_address), int(net.broadcast_address))


def subtract(ranges: Iterable[Range], holes: Iterable[Range]) -> tuple[Range, ...]:
    """`ranges` minus `holes`, as sorted disjoint ranges."""
    out = sorted(ranges)
    for hv, hs, he in holes:
        nxt = []
        for v, s, e in out:
            if v != hv or he < s or hs > e:
                nxt.append((v, s, e))
                continue
            if s < hs:
                nxt.append((v, s, hs - 1))
            if he < e:
                nxt.append((v, he + 1, e))
        out = nxt
    return tuple(sorted(out))


def block_ranges(cidr: IPNetwork, excepts: Iterable[IPNetwork] = ()) -> tuple[Range, ...]:
    """The addresses of an ipBlock: its cidr without the except cidrs."""
    return subtract([network_range(cidr)], [network_range(e) for e in excepts])


def contains(ranges: Iterable[Range], ip: IPAddress) -> bool:
    value = int(ip)
    return any(v == ip.version and s <= value <= e for v, s, e in ranges)


def covered_slices(atomic: list[Range], block: Iterable[Range]) -> list[tuple[int, int]]:
    """[lo, hi) index slices of the sorted atomic ranges that lie inside `block`
    (whose boundaries are among the cuts of `atomic`)."""
    out = []
    for r in block:
        lo = bisect.bisect_left(atomic, (r[0], r[1], -1))
        hi = bisect.bisect_right(atomic, (r[0], r[2], MAX[r[0]] + 1))
        if lo < hi:
            out.append((lo, hi))
    return out


class Cuts:
    """The boundaries of a set of ranges, per IP version: where atomic ranges start."""

    def __init__(self, ranges: Iterable[Range], versions: Iterable[int] = (4,)):
        starts: dict[int, set[int]] = {v: {0} for v in versions}
        for v, s, e in ranges:
            bucket = starts.setdefault(v, {0})
            bucket.add(s)
            if e < MAX[v]:
                bucket.add(e + 1)
        self.starts = {v: sorted(b) for v, b in starts.items()}

    def atomic(self) -> list[Range]:
        """Every atomic range, IPv4 before IPv6, in address order."""
        out = []
        for v in sorted(self.starts):
            starts = self.starts[v]
            for i, s in enumerate(starts):
                out.append((v, s, starts[i + 1] - 1 if i + 1 < len(starts) else MAX[v]))
        return out

    def region(self, ip: IPAddress) -> tuple[int, int]:
        """(version, index of the atomic range holding `ip`): equal for addresses no ipBlock tells apart."""
        starts = self.starts.get(ip.version)
        if starts is None:
            return (ip.version, 0)
        return (ip.version, bisect.bisect_right(starts, int(ip)) - 1)


def atomic_ranges(blocks: Iterable[Iterable[Range]], versions: Iterable[int] = (4,)) -> list[Range]:
    return Cuts((r for b in blocks for r in b), versions).atomic()


def address(version: int, value: int) -> IPAddress:
    return ipaddress.IPv4Address(value) if version == 4 else ipaddress.IPv6Address(value)


def format_range(r: Range) -> str:
    """'10.0.0.0-10.255.255.255', as netpol-analyzer prints an IP peer."""
    v, s, e = r
    return f"{address(v, s)}-{address(v, e)}"


def range_cidrs(r: Range) -> list[IPNetwork]:
    """The CIDRs that exactly cover a range (for rule renderers)."""
    v, s, e = r
    return list(ipaddress.summarize_address_range(address(v, s), address(v, e)))
