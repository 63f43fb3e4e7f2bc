"""The cluster-ip-routing question (tests/data/reference/talks/cluster-ip-routing-question.md):
"from a minion `telnet CLUSTER_IP PORT` connects ... from the master it does not. Why?"

No route anywhere knows the service range: a ClusterIP exists only in the rules a
service proxy writes on each node. The master there ran no kube-proxy, so its
packets to the ClusterIP follow the default route out of the cluster, where
nobody answers for a private address. `kubeProxy.disabledOnNodes: [control-plane]`
puts podnet's cluster in that state."""

from __future__ import annotations

import pytest

from podnet import Cluster
from podnet.dataplane import build_dataplane

from conftest import GUIDE_LAB, REFERENCE, run_podnet
from helpers import walk

CONFIG = """apiVersion: podnet.dev/v1alpha1
kind: PodnetConfig
kubeProxy: {disabledOnNodes: [control-plane]}
"""


def question_cluster(tmp_path, mode):
    (tmp_path / "podnet.yaml").write_text(CONFIG)
    return build_dataplane(Cluster.load([GUIDE_LAB, tmp_path / "podnet.yaml"], proxy_mode=mode))


def test_the_question_is_the_reference_text():
    text = (REFERENCE / "talks" / "cluster-ip-routing-question.md").read_text()
    assert "If I ssh into the master node" in text and "it does not connect" in text


@pytest.mark.parametrize("mode", ["iptables", "userspace"])
def test_cluster_ip_works_from_nodes_with_kube_proxy_only(tmp_path, mode):
    dp = question_cluster(tmp_path, mode)
    assert dp.proxy_nodes == {"k8s-guide-worker", "k8s-guide-worker2"}
    master = dp.state.netns("k8s-guide-control-plane")
    assert "KUBE-" not in master.iptables          # no service proxy rules at all
    assert "KUBE-" in dp.state.netns("k8s-guide-worker").iptables
    # kube-proxy's DaemonSet is not scheduled there either
    proxies = [p for p in dp.cluster.pods if p.name.startswith("kube-proxy-")]
    assert sorted(p.node_name for p in proxies) == ["k8s-guide-worker", "k8s-guide-worker2"]

    # "telnet 10.0.33.71 1321" from a minion connects, and the answer comes back
    for minion in ("k8s-guide-worker", "k8s-guide-worker2"):
        result = walk(dp, f"node/{minion}", "svc/web:80")
        assert result.branches and all(b.forward.outcome.delivered for b in result.branches)
        assert all(b.reply is not None and b.reply.outcome.delivered for b in result.branches)

    # from the master it does not: no route but the default one, no rule, nobody answers
    result = walk(dp, "node/k8s-guide-control-plane", "svc/web:80")
    assert len(result.branches) == 1
    fwd = result.branches[0].forward
    assert fwd.outcome.result == "dropped" and "blackhole" in fwd.outcome.reason
    vip = dp.cluster.service("web").cluster_ip
    first = fwd.hops[0]
    assert first.stage == "route" and f"{vip} via 172.18.0.1 dev eth0" in first.text
    assert not any(s.chain.startswith("KUBE-") for h in fwd.hops for s in h.steps)
    assert any(h.ns == "gateway" for h in fwd.hops)       # it left the cluster
    # the master's pods fare no better: their node has no rules either
    out = walk(dp, "pod/net-tshoot-4s4gm", "svc/web:80").branches[0].forward.outcome
    assert out.result == "dropped"


def test_cluster_ip_question_with_the_ebpf_agent_missing(tmp_path):
    dp = question_cluster(tmp_path, "ebpf")
    assert walk(dp, "node/k8s-guide-worker", "svc/web:80").branches[0].forward.outcome.delivered
    assert walk(dp, "node/k8s-guide-control-plane", "svc/web:80").branches[0].forward.outcome.result == \
        "dropped"


def test_cli(tmp_path):
    (tmp_path / "podnet.yaml").write_text(CONFIG)
    args = ["-f", str(GUIDE_LAB), "-f", str(tmp_path / "podnet.yaml"), "--to", "svc/web:80", "--no-reply"]
    ok = run_podnet("trace", "--from", "node/k8s-guide-worker", *args, check=True).stdout
    assert "=> delivered" in ok
    bad = run_podnet("trace", "--from", "node/k8s-guide-control-plane", *args, check=True).stdout
    assert "=> dropped" in bad and "=> delivered" not in bad


def test_disabled_on_nodes_names_must_exist(tmp_path):
    (tmp_path / "podnet.yaml").write_text(CONFIG.replace("control-plane", "k8s-guide-master"))
    proc = run_podnet("get", "nodes", "-f", str(GUIDE_LAB), "-f", str(tmp_path / "podnet.yaml"))
    assert proc.returncode != 0
    assert "disabledOnNodes[0]" in proc.stderr and "k8s-guide-master" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
