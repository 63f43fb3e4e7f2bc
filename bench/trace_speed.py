#!/usr/bin/env python3
"""How fast is one pod→ClusterIP trace through a big iptables node?

A node holds kube-proxy's iptables rules for 10,000 Services × 10 endpoints
(rendered by podnet's kube-proxy renderer, ~330k rules). A client pod and a
backend namespace (answering on every endpoint address) hang off the node.
For random Services, the script times one trace (one draw of the random
choices, `--seed`), and the trace of every outcome (10 branches), first with
the evaluator's dispatch indexes, then with a plain linear rule-by-rule
evaluation, in the same run, and prints medians and the ratio.

It also times the same trace on a node with only 10 Services: the walk's own
cost (routing, neighbours, conntrack, hop records), which no rule index can
remove. The linear evaluation's extra time divided by that floor bounds the
whole trace's speed-up.

    python bench/trace_speed.py [--services 10000] [--endpoints 10] [--samples 50]
"""

from __future__ import annotations

import argparse
import ipaddress
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from podnet.linux.iptables_builder import IptablesBuilder  # noqa: E402
from podnet.linux.netfilter import Packet  # noqa: E402
from podnet.linux.state import DataplaneState, Link, Listener, Netns, Route  # noqa: E402
from podnet.proxy import iptables as kp_iptables  # noqa: E402
from podnet.proxy.model import (EndpointInfo, ProxyNode, ProxyView, ServicePortInfo,  # noqa: E402
                                ServicePortName)
from podnet.sim.hooks import iptables_ruleset  # noqa: E402
from podnet.sim.trace import TraceRequest, trace  # noqa: E402

ip = ipaddress.ip_address
net = ipaddress.ip_network


def build_view(services: int, endpoints: int) -> tuple[ProxyView, list]:
    node = ProxyNode(name="bench-node", ips={4: ("172.18.0.2",)}, cluster_cidrs={4: "10.0.0.0/8"})
    svcs, eps, vips = {}, {}, []
    for i in range(services):
        vip = ip(int(ip("10.96.0.0")) + 16 + i)
        spn = ServicePortName(f"ns{i % 100}", f"svc{i}", "http", "TCP")
        svcs[spn] = ServicePortInfo(name=spn, cluster_ip=str(vip), port=80, protocol="TCP")
        base = int(ip("10.200.0.0")) + i * endpoints
        eps[spn] = [EndpointInfo(ip=str(ip(base + j)), port=8080, is_local=True) for j in range(endpoints)]
        vips.append(vip)
    view = ProxyView(node=node, family=4, services=svcs, endpoints=eps)
    return view, vips


def build_state(view: ProxyView) -> DataplaneState:
    state = DataplaneState()
    node = state.add_netns(Netns("bench-node", kind="node", node="bench-node"))
    node.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    node.add_link(Link("eth0")).add_address("172.18.0.2/16")
    node.sysctls["net.ipv4.ip_forward"] = "1"
    client = state.add_netns(Netns("client", kind="pod", node="bench-node", pod="default/client"))
    client.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    a, b = state.connect_veth(client, "eth0", node, "vethclient")
    a.add_address("10.244.0.2/24")
    b.add_address("10.244.0.1/32")
    client.add_route(Route(net("0.0.0.0/0"), "eth0", via=ip("10.244.0.1")))
    client.add_route(Route(net("10.244.0.1/32"), "eth0", scope="link"))
    node.add_route(Route(net("10.244.0.2/32"), "vethclient", scope="host"))
    # every endpoint address answers in one namespace (AnyIP), as if each were a pod
    backends = state.add_netns(Netns("backends", kind="pod", node="bench-node", pod="default/backends"))
    backends.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    c, d = state.connect_veth(backends, "eth0", node, "vethbackends")
    c.add_address("10.199.0.2/24")
    d.add_address("10.199.0.1/24")
    backends.add_route(Route(net("10.200.0.0/14"), "lo", table=255, type="local", scope="host"))
    backends.add_route(Route(net("0.0.0.0/0"), "eth0", via=ip("10.199.0.1")))
    backends.listeners.append(Listener("tcp", ip("0.0.0.0"), 8080, "backend"))
    node.add_route(Route(net("10.200.0.0/14"), "vethbackends", via=ip("10.199.0.2")))
    builder = IptablesBuilder()
    kp_iptables.render(view).apply(builder)
    node.iptables = builder.render()
    return state


def time_traces(state, vips, samples: int, seed: bool, rng: random.Random) -> list[float]:
    out = []
    for _ in range(samples):
        vip = rng.choice(vips)
        req = TraceRequest("client", Packet(ip("10.244.0.2"), vip, "tcp", 40000, 80), reply=False,
                           seed=rng.randrange(1 << 30) if seed else None)
        t0 = time.perf_counter()
        result = trace(state, req)
        out.append(time.perf_counter() - t0)
        assert result.branches[0].forward.outcome.result == "delivered", result.branches[0].forward.outcome
    return out


def time_prerouting(state, vips, samples: int, rng: random.Random) -> list[float]:
    """nat PREROUTING alone (kube-proxy's KUBE-SERVICES lookup), without the rest of the walk."""
    from podnet.linux.netfilter import ConnView, HookContext
    from podnet.sim.branches import fixed
    ruleset = iptables_ruleset(state.netns("bench-node"), 4)
    out = []
    for _ in range(samples):
        pkt = Packet(ip("10.244.0.2"), rng.choice(vips), "tcp", 40000, 80)
        ctx = HookContext("PREROUTING", pkt, ConnView(), in_iface="vethclient", choose=fixed())
        t0 = time.perf_counter()
        ruleset.evaluate("nat", "PREROUTING", ctx)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=10)
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    t0 = time.perf_counter()
    view, vips = build_view(args.services, args.endpoints)
    state = build_state(view)
    t1 = time.perf_counter()
    ruleset = iptables_ruleset(state.netns("bench-node"), 4)
    t2 = time.perf_counter()
    rules = sum(len(c.rules) for t in ruleset.tables.values() for c in t.chains.values())
    print(f"node: {args.services} services x {args.endpoints} endpoints; {rules} iptables rules "
          f"({len(state.netns('bench-node').iptables) / 1e6:.1f} MB); render {t1 - t0:.1f} s, parse {t2 - t1:.1f} s")
    rng = random.Random(7)
    time_traces(state, vips, 3, True, rng)                       # warm caches
    indexed_one = time_traces(state, vips, args.samples, True, rng)
    indexed_all = time_traces(state, vips, max(5, args.samples // 5), False, rng)
    pre_idx = time_prerouting(state, vips, args.samples * 10, rng)
    ruleset.indexing = False
    linear_one = time_traces(state, vips, max(5, args.samples // 5), True, rng)
    pre_lin = time_prerouting(state, vips, args.samples, rng)
    ruleset.indexing = True
    small_view, small_vips = build_view(10, args.endpoints)
    small = build_state(small_view)
    time_traces(small, small_vips, 3, True, rng)
    floor = statistics.median(time_traces(small, small_vips, args.samples, True, rng))
    m_idx, m_lin = statistics.median(indexed_one), statistics.median(linear_one)
    print(f"one pod->ClusterIP trace (one draw), indexed:   median {m_idx * 1e3:8.3f} ms")
    print(f"one pod->ClusterIP trace (one draw), linear:    median {m_lin * 1e3:8.3f} ms")
    print(f"speed-up over the linear baseline:              {m_lin / m_idx:8.1f} x")
    p_idx, p_lin = statistics.median(pre_idx), statistics.median(pre_lin)
    print(f"nat PREROUTING alone (KUBE-SERVICES), indexed:  median {p_idx * 1e3:8.3f} ms")
    print(f"nat PREROUTING alone (KUBE-SERVICES), linear:   median {p_lin * 1e3:8.3f} ms")
    print(f"speed-up of the rule evaluation:                {p_lin / p_idx:8.1f} x")
    print(f"the walk's own cost (same trace, 10 services): median {floor * 1e3:8.3f} ms")
    print(f"ceiling for the trace speed-up (linear / walk): {m_lin / floor:8.1f} x")
    print(f"all {args.endpoints} outcomes of a trace, indexed:       median "
          f"{statistics.median(indexed_all) * 1e3:8.3f} ms")


if __name__ == "__main__":
    main()
