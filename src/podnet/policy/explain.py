"""A Verdict in words: every policy and rule that selects either side, which one
allows the connection, or why nothing does and where it is dropped."""

from __future__ import annotations

from typing import Optional

from .analysis import Owners
from .engine import SEMANTICS, DirectionDecision, Endpoint, Verdict
from .model import EGRESS


def _name(e: Endpoint, owners: Optional[Owners]) -> str:
    if e.pod is not None and owners is not None:
        return f"{e.label} ({owners.workload_of(e.pod)})"
    return e.label


def explain_text(v: Verdict, owners: Optional[Owners] = None) -> str:
    src, dst = _name(v.src, owners), _name(v.dst, owners)
    lines = [f"{src} -> {dst} {v.protocol}/{v.port}",
             f"semantics: {v.semantics} ({SEMANTICS[v.semantics].summary})", ""]
    for d in (v.egress, v.ingress):
        lines += _direction(d)
        lines.append("")
    lines.append(_verdict(v))
    return "\n".join(lines)


def _direction(d: DirectionDecision) -> list[str]:
    side = "Egress of" if d.direction == EGRESS else "Ingress of"
    lines = [f"{side} {d.subject.label}:"]
    if not d.applies:
        return lines + [f"  {d.note}"]
    for key in d.bystanders:
        lines.append(f"  selected by {key}, which does not isolate {d.direction} (policyTypes)")
    if not d.isolated:
        return lines + [f"  not isolated: {d.note}; everything allowed"]
    by_policy: dict[str, list] = {}
    for c in d.checks:
        by_policy.setdefault(c.ref.policy, []).append(c)
    for key in d.policies:
        lines.append(f"  isolated by {key}")
        checks = by_policy.get(key, [])
        if not checks:
            lines.append(f"    (no {d.direction} rules: allows no {d.direction})")
        for c in checks:
            mark = "ALLOWS" if c.allows else "no"
            lines.append(f"    {d.direction} rule #{c.ref.index + 1}: {c.rule.describe()}")
            lines.append(f"      {mark}: {c.why}")
    lines.append(f"  => {'allowed' if d.allowed else 'blocked'}: {d.note}")
    return lines


def _verdict(v: Verdict) -> str:
    if v.allowed:
        by = ", ".join(v.deciding)
        return "Verdict: ALLOWED" + (f" by {by}" if by else " (neither side is isolated)") + \
            "; replies of the connection are allowed too"
    if v.dropped_at == EGRESS:
        where = f"dropped on egress, as it leaves {v.src.label} ({', '.join(v.egress.policies)})"
        if not v.ingress.allowed:
            where += f"; ingress of {v.dst.label} would drop it too ({', '.join(v.ingress.policies)})"
    else:
        where = f"dropped on ingress, as it enters {v.dst.label} ({', '.join(v.ingress.policies)})"
    return f"Verdict: BLOCKED - {where}"


def explain_json(v: Verdict, owners: Optional[Owners] = None) -> dict:
    def endpoint(e: Endpoint) -> dict:
        out = {"kind": e.kind, "name": e.label}
        if e.ip is not None:
            out["ip"] = str(e.ip)
        if e.pod is not None and owners is not None:
            out["workload"] = str(owners.workload_of(e.pod))
        return out

    def direction(d: DirectionDecision) -> dict:
        return {"applies": d.applies, "isolated": d.isolated, "allowed": d.allowed, "note": d.note,
                "policies": list(d.policies), "selected_for_other_direction": list(d.bystanders),
                "rules": [{"rule": str(c.ref), "text": c.rule.describe(), "peer_matches": c.peer_ok,
                           "port_matches": c.port_ok, "allows": c.allows, "why": c.why}
                          for c in d.checks]}

    return {"src": endpoint(v.src), "dst": endpoint(v.dst), "port": v.port, "protocol": v.protocol,
            "semantics": v.semantics, "allowed": v.allowed, "dropped_at": v.dropped_at,
            "deciding": list(v.deciding), "egress": direction(v.egress),
            "ingress": direction(v.ingress)}
