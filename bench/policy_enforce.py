#!/usr/bin/env python3
"""NetworkPolicy enforcement at scale: kube-router's rules for bench/policy_scale.py's cluster.

The same inputs as bench/policy_scale.py (namespaces x 5 tiers x replicas pods, five
policies per namespace), spread over --nodes nodes. Prints the time to render the
policy rules for every node (podnet.policy.enforce, after the engine), the rule counts
(policy chains, per-pod chains and jumps, per node) and the ipset sizes, then the
time to walk connections from the busiest node (parsing the rules, then with them parsed).

    python bench/policy_enforce.py [--namespaces 40] [--replicas 5] [--nodes 12]
"""

from __future__ import annotations

import argparse
import ipaddress
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_scale import write_inputs  # noqa: E402
from podnet import Cluster  # noqa: E402
from podnet.dataplane import build_dataplane  # noqa: E402
from podnet.linux.netfilter import Packet  # noqa: E402
from podnet.policy import PolicyEngine, enforce  # noqa: E402
from podnet.policy.enforce import render_plans  # noqa: E402
from podnet.sim.trace import TraceRequest, trace  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--namespaces", type=int, default=40)
    ap.add_argument("--replicas", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=12)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_inputs(Path(tmp), args.namespaces, args.replicas, args.nodes)
        t0 = time.perf_counter()
        cluster = Cluster.load([tmp])
        t1 = time.perf_counter()
        engine = PolicyEngine(cluster)
        plans = render_plans(engine, [4])
        t2 = time.perf_counter()
        spent = []
        install = enforce.install_policy

        def timed(dp):
            start = time.perf_counter()
            install(dp)
            spent.append(time.perf_counter() - start)
        enforce.install_policy = timed       # build_dataplane looks it up when it runs
        dp = build_dataplane(cluster)
        enforce.install_policy = install
        t3 = time.perf_counter()
    pods = [p for p in cluster.pods if p.namespace.startswith("ns")]
    plan = plans[4]
    policy_rules = sum(len(r) for r in plan.chains.values())
    members = sum(len(s.entries) for s in plan.sets.values())
    print(f"{len(pods)} pods in {args.namespaces} namespaces, {len(engine.policies)} policies, "
          f"{len(engine.classes)} classes, {len(cluster.nodes)} nodes")
    print(f"load {t1 - t0:.2f} s; engine + policy chains {t2 - t1:.2f} s; the whole dataplane {t3 - t2:.2f} s, "
          f"of which the policy rules on every node {sum(spent):.2f} s")
    print(f"policy chains: {len(plan.chains)} with {policy_rules} rules (the same on every node); "
          f"ipsets: {len(plan.sets)} with {members} members")
    counts = []
    for node in cluster.nodes:
        text = dp.state.netns(node.name).iptables
        fw = sum(1 for line in text.splitlines() if line.startswith("-A KUBE-POD-FW-"))
        top = sum(1 for line in text.splitlines() if line.startswith("-A KUBE-ROUTER-"))
        local = sum(1 for p in cluster.pods_on(node.name) if not p.host_network)
        counts.append((local, fw, top))
    local, fw, top = max(counts)
    print(f"busiest node: {local} pods, {fw} KUBE-POD-FW rules, {top} KUBE-ROUTER-* rules")
    # walks from the busiest node; the first pass parses every node's rules and sets it meets
    node = max(cluster.nodes, key=lambda n: sum(1 for p in cluster.pods_on(n.name) if not p.host_network))
    srcs = [p for p in cluster.pods_on(node.name) if p.namespace.startswith("ns") and not p.host_network][:20]
    flows = [(src, dst) for src in srcs for dst in pods[:: max(1, len(pods) // 25)] if dst is not src]
    for label in ("first pass (parses the rules and ipsets)", "second pass"):
        t4 = time.perf_counter()
        for src, dst in flows:
            pkt = Packet(ipaddress.ip_address("0.0.0.0"), dst.pod_ip, "tcp", 40000, 5432)
            trace(dp.state, TraceRequest(dp.netns_of_pod(src).name, pkt, reply=False))
        t5 = time.perf_counter()
        print(f"{len(flows)} walks from that node, {label}: {t5 - t4:.2f} s "
              f"({(t5 - t4) / max(len(flows), 1) * 1000:.1f} ms each)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
