"""The pod-level truth table for one port and protocol, as the Kubernetes e2e netpol
tests (and cyclonus) print it: rows are sources, columns destinations, `.` allowed,
`X` blocked.

    -       x/a     x/b     y/a
    x/a     .       X       .
    x/b     .       .       .
    y/a     X       X       .

A pod's connection to itself is always `.` (loopback never meets a policy; the
e2e tests ignore that diagonal).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api.objects import Pod
from .engine import PolicyEngine


@dataclass
class Matrix:
    names: list[str]                # ns/pod, rows and columns alike
    port: int
    protocol: str
    allowed: list[list[bool]]       # allowed[from][to]

    def get(self, src: str, dst: str) -> bool:
        return self.allowed[self.names.index(src)][self.names.index(dst)]

    def text(self) -> str:
        lines = ["\t".join(["-"] + self.names)]
        for name, row in zip(self.names, self.allowed):
            lines.append("\t".join([name] + ["." if v else "X" for v in row]))
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"port": self.port, "protocol": self.protocol, "pods": self.names,
                "allowed": {src: [dst for dst, v in zip(self.names, row) if v]
                            for src, row in zip(self.names, self.allowed)}}


def reachability(engine: PolicyEngine, pods: list[Pod], port: int, protocol: str = "TCP") -> Matrix:
    """Who may connect to whom on `port`/`protocol`, pod by pod (computed per class pair)."""
    protocol = protocol.upper()
    pods = sorted(pods, key=lambda p: (p.namespace, p.name))
    cache: dict[tuple, bool] = {}
    rows = []
    for src in pods:
        s = engine.class_of(src)
        row = []
        for dst in pods:
            if src is dst:
                row.append(True)
                continue
            d = engine.class_of(dst)
            same_node = bool(src.node_name) and src.node_name == dst.node_name
            key = (s.index, d.index, same_node and s.node_traffic)
            if key not in cache:
                cache[key] = engine.class_connections(s, d, same_node).contains(protocol, port)
            row.append(cache[key])
        rows.append(row)
    return Matrix([p.key for p in pods], port, protocol, rows)
