"""kube-proxy's IPVS mode in the lab (issue #5): where the kernel has IPVS, the guide's lab
with kube-proxy in ipvs mode answers on its ClusterIP from both web pods; where it has not,
`podnet lab up --proxy-mode ipvs` says so in one line and leaves nothing behind.

Every lab gets a random name and is removed in `finally`.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from podnet.lab import client, nsutil
from podnet.lab.lab import Lab, ipvs_available

from conftest import ROOT
from helpers import SPREAD_TRIES, guide_inputs, lab_name, leftovers, wait_clean

pytestmark = pytest.mark.netns


@pytest.mark.skipif(ipvs_available(), reason="this kernel has IPVS")
def test_lab_up_in_ipvs_mode_says_the_kernel_lacks_ipvs(tmp_path):
    name = lab_name("i")
    try:
        proc = subprocess.run([sys.executable, "-m", "podnet", "lab", "up", "-q", "--name", name,
                               "--proxy-mode", "ipvs", "-f", str(guide_inputs(tmp_path / "in"))],
                              capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        # one line the user can act on, no traceback
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "lacks IPVS" in lines[0] and "--ipvs-fallback iptables" in lines[0]
        assert leftovers(name) == []            # refused before anything was made
    finally:
        if Lab(name).exists():
            Lab(name).down()


@pytest.mark.skipif(not ipvs_available(), reason="this kernel lacks IPVS (no ip_vs module)")
def test_ipvs_mode_for_real_curl_reaches_both_web_pods(tmp_path):
    name = lab_name("i")
    lab = Lab(name)
    try:
        rec = lab.up([str(guide_inputs(tmp_path / "in"))], proxy_mode="ipvs")
        assert rec["proxy_mode"] == "ipvs"
        _, dp = lab.render(lab.record["inputs"], lab.record["overrides"])
        vip = str(dp.cluster.service("web").cluster_ip)
        worker = lab.kname("k8s-guide-worker")
        # what kube-proxy programmed is in the kernel: the IPVS table and kube-ipvs0
        table = nsutil.run_in(worker, ["ipvsadm", "-Ln"]).stdout
        assert f"TCP  {vip}:80 rr" in table
        assert vip in nsutil.run_in(worker, ["ip", "-br", "addr", "show", "kube-ipvs0"]).stdout
        webs = {k for k in rec["pods"] if k.split("/", 1)[1].startswith("web-")}
        tshoot = next(v for k, v in sorted(rec["pods"].items())
                      if "net-tshoot" in k and v["node"] == "k8s-guide-worker")
        seen = set()
        for _ in range(SPREAD_TRIES):
            r = client.request(lab.kname(tshoot["netns"]), vip, 80, http=True)
            assert r.status == "ok", r
            assert r.client == tshoot["ips"][0]          # pod -> ClusterIP: no SNAT
            seen.add(r.server)
            if seen == webs:
                break
        assert seen == webs
        # the node itself: masqueraded, answered
        r = client.request(worker, vip, 80, http=True)
        assert r.status == "ok" and r.server in webs
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []
