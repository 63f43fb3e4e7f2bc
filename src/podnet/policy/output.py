"""Connection lists in netpol-analyzer's output formats: txt, json, csv, md, dot."""

from __future__ import annotations

import csv
import io
import json

from .analysis import ConnectionList

FORMATS = ("txt", "json", "csv", "md", "dot")


def render(result: ConnectionList, fmt: str = "txt") -> str:
    """The list in one format, without a trailing newline."""
    try:
        return _RENDERERS[fmt](result)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})") from None


def _txt(result: ConnectionList) -> str:
    return "\n".join(str(c) for c in result.connections)


def _json(result: ConnectionList) -> str:
    return json.dumps([c.to_json() for c in result.connections], indent=2, ensure_ascii=False)


def _csv(result: ConnectionList) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["src", "dst", "conn"])
    for c in result.connections:
        writer.writerow([c.src, c.dst, str(c.connections)])
    return buf.getvalue().rstrip("\n")


def _md(result: ConnectionList) -> str:
    lines = ["| src | dst | conn |", "|-----|-----|------|"]
    lines += [f"| {c.src} | {c.dst} | {c.connections} |" for c in result.connections]
    return "\n".join(lines)


def _dot(result: ConnectionList) -> str:
    """A graph: one cluster per namespace with its workloads, address ranges outside, an
    edge per connection (graphviz: `dot -Tsvg`)."""
    lines = ["digraph {"]
    by_ns: dict[str, list[str]] = {}
    for w in result.workloads:
        by_ns.setdefault(w.namespace, []).append(
            f'\t\t"{w}" [label="{w.name}[{w.kind}]" color="blue" fontcolor="blue"]')
    for ns in sorted(by_ns):
        lines.append(f"\tsubgraph cluster_{ns.replace('-', '_').replace('.', '_')} {{")
        lines += sorted(by_ns[ns])
        lines += [f'\t\tlabel="{ns}"', "\t}"]
    for peer in result.external:
        lines.append(f'\t"{peer}" [label="{peer}" color="red2" fontcolor="red2"]')
    for c in result.connections:
        lines.append(f'\t"{c.src}" -> "{c.dst}" [label="{c.connections}" color="gold2" fontcolor="darkgreen"]')
    lines.append("}")
    return "\n".join(lines)


_RENDERERS = {"txt": _txt, "json": _json, "csv": _csv, "md": _md, "dot": _dot}
