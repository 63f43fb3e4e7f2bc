"""Sets of allowed connections: per protocol, a set of port intervals.

    Connections.of("TCP", 8080, 8081) | Connections.of("UDP", 9090)   -> "TCP 8080-8081,UDP 9090"
    ALL_CONNECTIONS                                                     -> "All Connections"

Values are immutable and hashable. Their text is netpol-analyzer's: protocols in
alphabetical order (SCTP, TCP, UDP), each with its ports and port ranges in
ascending order, adjacent ranges merged; "All Connections" when every port of
every protocol is allowed, "No Connections" when nothing is.
"""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

PROTOCOLS = ("SCTP", "TCP", "UDP")          # alphabetical: the order they are printed in
MIN_PORT, MAX_PORT = 1, 65535

Interval = tuple[int, int]                  # inclusive


def merge_intervals(intervals: Iterable[Interval]) -> tuple[Interval, ...]:
    """Sorted, disjoint, with touching intervals joined: [(1,3),(4,5),(9,9)] -> ((1,5),(9,9))."""
    out: list[list[int]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return tuple((a, b) for a, b in out)


def intersect_intervals(a: tuple[Interval, ...], b: tuple[Interval, ...]) -> tuple[Interval, ...]:
    out, i, j = [], 0, 0
    while i < len(a) and j < len(b):
        start, end = max(a[i][0], b[j][0]), min(a[i][1], b[j][1])
        if start <= end:
            out.append((start, end))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return tuple(out)


def format_intervals(intervals: tuple[Interval, ...]) -> str:
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in intervals)


_FULL: tuple[Interval, ...] = ((MIN_PORT, MAX_PORT),)


class Connections:
    """An immutable set of (protocol, port) pairs."""

    __slots__ = ("_ports", "_hash")

    def __init__(self, ports: Optional[dict[str, tuple[Interval, ...]]] = None):
        # protocol -> merged intervals; protocols without ports are left out
        self._ports = {p: iv for p, iv in (ports or {}).items() if iv}
        self._hash: Optional[int] = None

    # -- construction ---------------------------------------------------------
    @classmethod
    def of(cls, protocol: str, start: int = MIN_PORT, end: Optional[int] = None) -> "Connections":
        """Ports start..end (one port when end is None) of one protocol."""
        return _canonical({protocol: ((start, start if end is None else end),)})

    @classmethod
    def all_ports(cls, protocol: str) -> "Connections":
        return _canonical({protocol: _FULL})

    # -- algebra --------------------------------------------------------------
    def __or__(self, other: "Connections") -> "Connections":
        if other is ALL_CONNECTIONS or self is ALL_CONNECTIONS:
            return ALL_CONNECTIONS
        if not other._ports:
            return self
        if not self._ports:
            return other
        out = dict(self._ports)
        for proto, iv in other._ports.items():
            out[proto] = merge_intervals(out.get(proto, ()) + iv)
        return _canonical(out)

    def __and__(self, other: "Connections") -> "Connections":
        if other is ALL_CONNECTIONS:
            return self
        if self is ALL_CONNECTIONS:
            return other
        out = {}
        for proto, iv in self._ports.items():
            if proto in other._ports:
                out[proto] = intersect_intervals(iv, other._ports[proto])
        return _canonical(out)

    @staticmethod
    def union(items: Iterable["Connections"]) -> "Connections":
        out = NO_CONNECTIONS
        for c in items:
            out = out | c
            if out is ALL_CONNECTIONS:
                break
        return out

    # -- queries --------------------------------------------------------------
    @property
    def is_all(self) -> bool:
        return len(self._ports) == len(PROTOCOLS) and all(iv == _FULL for iv in self._ports.values())

    @property
    def is_empty(self) -> bool:
        return not self._ports

    def __bool__(self) -> bool:
        return bool(self._ports)

    def contains(self, protocol: str, port: int) -> bool:
        for start, end in self._ports.get(protocol.upper(), ()):
            if start <= port <= end:
                return True
        return False

    def items(self) -> Iterator[tuple[str, tuple[Interval, ...]]]:
        """(protocol, intervals) in print order."""
        for proto in PROTOCOLS:
            if proto in self._ports:
                yield proto, self._ports[proto]

    def __eq__(self, other) -> bool:
        return isinstance(other, Connections) and self._ports == other._ports

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(tuple(sorted(self._ports.items())))
        return self._hash

    # -- text -----------------------------------------------------------------
    def __str__(self) -> str:
        if self.is_all:
            return "All Connections"
        if not self._ports:
            return "No Connections"
        return ",".join(sorted(f"{p} {format_intervals(iv)}" for p, iv in self._ports.items()))

    def __repr__(self) -> str:
        return f"Connections({self})"

    def to_json(self) -> dict:
        """{"TCP": [[8080, 8081]], ...}, or {"all": true}."""
        if self.is_all:
            return {"all": True}
        return {p: [list(i) for i in iv] for p, iv in self.items()}


def _canonical(ports: dict[str, tuple[Interval, ...]]) -> Connections:
    """The shared ALL / NONE singletons where the set is one of them."""
    ports = {p: iv for p, iv in ports.items() if iv}
    if not ports:
        return NO_CONNECTIONS
    if len(ports) == len(PROTOCOLS) and all(iv == _FULL for iv in ports.values()):
        return ALL_CONNECTIONS
    return Connections(ports)


NO_CONNECTIONS = Connections()
ALL_CONNECTIONS = Connections({p: _FULL for p in PROTOCOLS})
