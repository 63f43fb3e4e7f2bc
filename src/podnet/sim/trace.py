"""Traces: a packet's every possible walk (with probabilities), its reply, explained.

    result = trace(state, TraceRequest(src_ns="pod/web", packet=Packet(...)))
    print(explain_text(state, result))

By default every outcome of the random choices on the way is listed with its
probability; `seed` follows one draw, `picks` forces given options.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Optional

from ..linux.netfilter import Packet
from ..linux.state import DataplaneState, Netns
from .branches import BranchLimitExceeded, Choice, Recorder, explore, fixed, seeded
from .runtime import Runtime
from .walk import Hop, Outcome, Walker, ep, header_changes, header_of, summary


@dataclass
class TraceRequest:
    src_ns: str                     # the namespace the packet starts in
    packet: Packet
    inject_iface: Optional[str] = None   # arriving on this interface instead of sent by a socket
    reply: bool = True
    seed: Optional[int] = None
    picks: Optional[dict[str, int]] = None
    label: str = ""                 # how the user named the source/destination
    max_branches: int = 256


@dataclass
class Leg:
    hops: list[Hop]
    outcome: Outcome


@dataclass
class TraceBranch:
    probability: float
    choices: list[Choice]
    forward: Leg
    reply: Optional[Leg] = None


@dataclass
class TraceResult:
    request: TraceRequest
    branches: list[TraceBranch] = field(default_factory=list)
    truncated: bool = False


def _run(state: DataplaneState, req: TraceRequest, chooser) -> tuple[Leg, Optional[Leg]]:
    runtime = Runtime(state, choose=chooser)
    walker = Walker(state, runtime)
    pkt = req.packet.copy()
    if req.inject_iface:
        outcome = walker.inject(req.src_ns, req.inject_iface, pkt)
        if req.packet.src is not None:
            runtime.client_sockets.setdefault((req.src_ns, pkt.proto, req.packet.src, req.packet.sport),
                                              (req.packet.dst, req.packet.dport))
    else:
        outcome = walker.send(req.src_ns, pkt)
    forward = Leg(walker.hops, outcome)
    reply = None
    if req.reply and outcome.result == "delivered" and outcome.listener is not None:
        back = Walker(state, runtime)
        result = back.reply(outcome)
        # a userspace proxy relays the answer on the client's own connection
        for relay_ns, relay_pkt in reversed(walker.relays):
            if not result.delivered:
                break
            back.hop(state.netns(relay_ns), "userspace", "the proxy relays the answer to the original client",
                     pkt=relay_pkt)
            result = back.answer(relay_ns, relay_pkt)
        reply = Leg(back.hops, result)
    return forward, reply


def trace(state: DataplaneState, req: TraceRequest) -> TraceResult:
    result = TraceResult(req)
    if req.seed is not None or req.picks is not None:
        chooser = Recorder(seeded(req.seed) if req.seed is not None else fixed(req.picks))
        forward, reply = _run(state, req, chooser)
        probability = 1.0
        for c in chooser.trail:
            probability *= c.probability
        result.branches.append(TraceBranch(probability, chooser.trail, forward, reply))
        return result
    try:
        branches = explore(lambda ch: _run(state, req, ch), limit=req.max_branches)
    except BranchLimitExceeded:
        result.truncated = True
        branches = []
        chooser = Recorder(fixed())
        forward, reply = _run(state, req, chooser)
        result.branches.append(TraceBranch(1.0, chooser.trail, forward, reply))
        return result
    for b in branches:
        forward, reply = b.result
        result.branches.append(TraceBranch(b.probability, b.choices, forward, reply))
    return result


# ---------------------------------------------------------------------------- output

def ns_title(state: DataplaneState, name: str) -> str:
    ns = state.namespaces.get(name)
    if ns is None:
        return name
    if ns.kind == "pod":
        return f"pod {ns.pod} (netns {ns.name}, node {ns.node})"
    if ns.kind == "node":
        return f"node {ns.name} (root netns)"
    return f"{ns.kind} {ns.name}"


FINAL_STAGES = ("delivered", "dropped", "rejected", "answered")


def _hop_lines(state: DataplaneState, hops: list[Hop], start: int = 0, number_from: int = 1) -> list[str]:
    lines = []
    current = None
    for i, h in enumerate(hops[start:], start=number_from + start):
        if h.stage in FINAL_STAGES:
            continue                # shown as the "=>" line
        if h.ns != current:
            current = h.ns
            lines.append(f"  {ns_title(state, h.ns)}")
        lines.append(f"  {i:>4}  {h.stage:<12} {h.text}")
        for s in h.steps:
            note = f"   [{s.note}]" if s.note else ""
            lines.append(f"{'':>8}{s.where():<34} {s.text}{note}")
        if h.packet and h.stage in ("recv", "nat", "conntrack", "socket-lb", "ipvs", "tc-ingress", "vxlan", "ipip",
                                    "mtu"):
            lines.append(f"{'':>20}packet: {h.packet}")
    return lines


def _same_prefix(a: list[Hop], b: list[Hop]) -> int:
    n = 0
    for x, y in zip(a, b):
        if (x.ns, x.stage, x.text, [s.text for s in x.steps]) != (y.ns, y.stage, y.text, [s.text for s in y.steps]):
            break
        n += 1
    return n


def outcome_line(o: Outcome) -> str:
    return f"{o.result}: {o.reason}"


def explain_text(state: DataplaneState, result: TraceResult, verbose: bool = True) -> str:
    req = result.request
    pkt = req.packet
    lines = [f"trace {pkt.proto} {ep(pkt.src, pkt.sport) if not pkt.src.is_unspecified else '(auto)'} -> "
             f"{ep(pkt.dst, pkt.dport)}" + (f"   {req.label}" if req.label else "")]
    n = len(result.branches)
    if result.truncated:
        lines.append(f"more than {req.max_branches} possible outcomes: showing the first choice at every "
                     "branch point (use --seed to draw one)")
    elif n > 1:
        lines.append(f"{n} possible outcomes:")
        for i, b in enumerate(result.branches, 1):
            # labels of iptables `statistic` / nft numgen branches say nothing; IPs and ports do
            via = ", ".join(c.label for c in b.choices
                            if c.label not in ("match", "no match") and not c.label.isdigit())
            lines.append(f"  [{i}] p={b.probability:.4f}  {outcome_line(b.forward.outcome)}"
                         + (f"   (via {via})" if via else ""))
    first = result.branches[0] if result.branches else None
    for i, b in enumerate(result.branches, 1):
        title = f"outcome {i} of {n}" + (f" (probability {b.probability:.4f})" if n > 1 or b.probability < 1 else "")
        lines.append("")
        lines.append(f"── {title} " + "─" * max(0, 60 - len(title)))
        start = 0
        if i > 1 and first is not None and not verbose:
            start = _same_prefix(first.forward.hops, b.forward.hops)
        elif i > 1 and first is not None:
            start = _same_prefix(first.forward.hops, b.forward.hops)
        if start:
            lines.append(f"  hops 1-{start}: as in outcome 1")
        lines += _hop_lines(state, b.forward.hops, start)
        lines.append(f"  => {outcome_line(b.forward.outcome)}")
        if b.reply is not None:
            lines.append("")
            lines.append("  reply:")
            lines += _hop_lines(state, b.reply.hops)
            lines.append(f"  => {outcome_line(b.reply.outcome)}")
    return "\n".join(lines)


def as_json(state: DataplaneState, result: TraceResult) -> dict:
    req = result.request
    def leg(l: Leg, before: Optional[tuple]) -> dict:
        o = l.outcome
        hops = []
        for h in l.hops:
            # what this hop changed in the header: against the last header a hop showed
            hops.append({**h.as_dict(), "changed": header_changes(before, h.header)})
            before = h.header or before
        return {"result": o.result, "reason": o.reason, "netns": o.ns, "node": o.node,
                "packet": summary(o.packet) if o.packet else None, "hops": hops}
    return {
        "request": {"from": req.src_ns, "packet": summary(req.packet), "label": req.label},
        "truncated": result.truncated,
        "outcomes": [{"probability": b.probability,
                      "choices": [{"key": c.key, "option": c.label, "probability": c.probability}
                                  for c in b.choices],
                      "forward": leg(b.forward, header_of(req.packet)),
                      "reply": leg(b.reply, b.reply.hops[0].header if b.reply.hops else None)
                      if b.reply else None}
                     for b in result.branches],
    }


def explain_json(state: DataplaneState, result: TraceResult) -> str:
    return json.dumps(as_json(state, result), indent=2)
