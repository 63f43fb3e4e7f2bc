"""Issue #7, part 3, for real: the three tiers in the lab, enforced by the kernel.

kube-router's rules (podnet.policy.enforce) are applied to the lab's nodes with
iptables-restore and ipset restore. fe -> be and be -> db connect on their ports,
fe -> db is REJECTed (icmp-port-unreachable: connect() fails at once with
ECONNREFUSED), pod to pod on the same node and across nodes, and through the
ClusterIPs; `podnet trace` predicts each outcome before the packet is sent.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from podnet.lab import client
from podnet.lab.lab import Lab
from podnet.linux.netfilter import Packet
from podnet.sim.trace import TraceRequest, trace

from conftest import ROOT
from helpers import lab_name, wait_clean
from test_policy_enforce import KIND, THREE_TIER_EXTRAS
from test_policy_semantics import THREE_TIERS

pytestmark = pytest.mark.netns

PREDICTED = {"delivered": "ok", "rejected": "refused", "dropped": "timeout"}


def predict(dp, src_netns: str, ip: str, port: int) -> set[str]:
    """What the simulator says the client will see, over every branch (Service endpoints)."""
    pkt = Packet(ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address(ip), "tcp", 40000, port)
    result = trace(dp.state, TraceRequest(src_netns, pkt, reply=False))
    return {PREDICTED[b.forward.outcome.result] for b in result.branches}


def test_three_tiers_in_the_lab(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "kind.yaml").write_text(KIND)
    (inputs / "shop.yaml").write_text(THREE_TIERS + THREE_TIER_EXTRAS)
    name = lab_name("pol")
    lab = Lab(name)
    try:
        lab.up([str(inputs)], proxy_mode="iptables")
        _, dp = lab.render(lab.record["inputs"], lab.record["overrides"])
        pods = {k: v for k, v in lab.record["pods"].items() if k.startswith("shop/")}
        tier = {k: k.split("/", 1)[1].split("-", 1)[0] for k in pods}
        wanted = {("fe", "be", 9090): "ok", ("be", "db", 5432): "ok", ("fe", "db", 5432): "refused"}
        seen = set()
        for src, s in sorted(pods.items()):
            for dst, d in sorted(pods.items()):
                port = {"be": 9090, "db": 5432}.get(tier[dst])
                expect = wanted.get((tier[src], tier[dst], port))
                if expect is None:
                    continue
                assert predict(dp, s["netns"], d["ips"][0], port) == {expect}, (src, dst)
                r = client.request(lab.kname(s["netns"]), d["ips"][0], port, timeout=2.0)
                assert r.status == expect, (src, dst, r)
                if expect == "ok":
                    assert (r.server, r.client) == (dst, s["ips"][0])     # no SNAT: the policy saw pod IPs
                seen.add((tier[src], tier[dst], s["node"] == d["node"]))
        assert {(a, b, same) for a, b, _ in wanted for same in (True, False)} <= seen

        # through the ClusterIPs: every endpoint the trace lists is allowed, or none is
        fe = next(v for k, v in sorted(pods.items()) if tier[k] == "fe")
        be = next(v for k, v in sorted(pods.items()) if tier[k] == "be")
        for src, svc, port, expect in ((fe, "be", 80, "ok"), (be, "db", 5432, "ok"), (fe, "db", 5432, "refused")):
            vip = str(dp.cluster.service(f"shop/{svc}").cluster_ip)
            assert predict(dp, src["netns"], vip, port) == {expect}
            backends = set()
            for _ in range(8):
                r = client.request(lab.kname(src["netns"]), vip, port, timeout=2.0)
                assert r.status == expect, (svc, r)
                backends.add(r.server)
            if expect == "ok":
                assert all(tier[b] == svc for b in backends)

        # `podnet trace` names the policy at the drop, for this very lab's inputs
        fe_key = next(k for k in sorted(pods) if tier[k] == "fe")
        out = subprocess.run([sys.executable, "-m", "podnet", "trace", *sum((["-f", p] for p in lab.record["inputs"]),
                              []), "--from", f"pod/{fe_key}", "--to", "svc/shop/db:5432", "-o", "json"],
                             capture_output=True, text=True, cwd=ROOT, timeout=60)
        assert out.returncode == 0, out.stderr
        doc = json.loads(out.stdout)
        assert {o["forward"]["result"] for o in doc["outcomes"]} == {"rejected"}
        assert all("run through nw policy fe-egress" in o["forward"]["reason"] for o in doc["outcomes"])

        # the kernel holds exactly the rendered rules and sets
        from podnet.lab.verify import verify
        report = verify(lab, state_only=True)
        assert report.ok, report.text()
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []
