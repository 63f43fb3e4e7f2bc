"""Issue #7, part 2: `podnet policy list` against np-guard/netpol-analyzer's own expected outputs.

Each folder of oracles/netpol holds the inputs of one netpol-analyzer test and the
connection list it expects. Only the connection lines (`src => dst : conns`) are
compared: some expected files carry trailers podnet does not produce (the
VirtualMachine case ends with a `Workload-to-Networks Mapping:` section about
KubeVirt user-defined networks), and some input folders hold files that are not
Kubernetes objects (onlineboutique/input/connlist_output.json, an earlier output),
which the loader skips with a warning.
"""

import json

import pytest

from podnet import Cluster
from podnet.policy import connection_list

from conftest import ORACLES, run_podnet

NETPOL = ORACLES / "netpol"
CASES = sorted(p.name for p in NETPOL.iterdir() if (p / "expected_connlist.txt").is_file())


def expected_lines(case: str) -> list[str]:
    text = (NETPOL / case / "expected_connlist.txt").read_text()
    return [line for line in text.splitlines() if " => " in line]


def test_every_oracle_folder_is_a_case():
    assert len(CASES) == 31


@pytest.mark.parametrize("case", CASES)
def test_connection_list_matches_netpol_analyzer(case):
    cluster = Cluster.load([NETPOL / case / "input"])
    got = [str(c) for c in connection_list(cluster).connections]
    assert got == expected_lines(case)


def test_cli_list_prints_the_same_lines():
    case = "onlineboutique_workloads"
    proc = run_podnet("policy", "list", "-f", str(NETPOL / case / "input"), check=True)
    assert proc.stdout.splitlines() == expected_lines(case)


def test_cli_list_output_formats():
    path = str(NETPOL / "netpol-analysis-example-minimal" / "input")
    lines = expected_lines("netpol-analysis-example-minimal")
    as_json = json.loads(run_podnet("policy", "list", "-f", path, "-o", "json", check=True).stdout)
    assert [f"{c['src']} => {c['dst']} : {c['conn']}" for c in as_json] == lines
    csv_rows = run_podnet("policy", "list", "-f", path, "-o", "csv", check=True).stdout.splitlines()
    assert csv_rows[0] == "src,dst,conn"
    assert csv_rows[1] == "0.0.0.0-255.255.255.255[External],default/frontend[Deployment],TCP 8080"
    md = run_podnet("policy", "list", "-f", path, "-o", "md", check=True).stdout.splitlines()
    assert md[:2] == ["| src | dst | conn |", "|-----|-----|------|"]
    assert md[2] == "| 0.0.0.0-255.255.255.255[External] | default/frontend[Deployment] | TCP 8080 |"
    dot = run_podnet("policy", "list", "-f", path, "-o", "dot", check=True).stdout
    assert dot.startswith("digraph {\n\tsubgraph cluster_default {")
    assert ('\t"default/frontend[Deployment]" -> "default/backend[Deployment]" '
            '[label="TCP 9090" color="gold2" fontcolor="darkgreen"]') in dot


def test_system_pods_are_left_out_unless_asked():
    # kind-mode inputs get a fresh cluster's coredns, kube-proxy, kindnet... which the
    # inputs do not mention and netpol-analyzer never reports
    cluster = Cluster.load([NETPOL / "netpol-analysis-example-minimal" / "input"])
    assert any(not p.meta.source for p in cluster.pods)
    default = connection_list(cluster)
    assert not any("kube-system" in str(c) for c in default.connections)
    everything = connection_list(cluster, include_system=True)
    assert any(c.src.startswith("kube-system/coredns-") and c.src.endswith("[ReplicaSet]")
               or c.src == "kube-system/coredns[Deployment]" for c in everything.connections)
    assert set(map(str, default.connections)) <= set(map(str, everything.connections))


def test_workload_names_follow_owners():
    # dump pods owned by a ReplicaSet the inputs lack keep the ReplicaSet's name; Jobs stay
    # Jobs; static pods (owned by their Node) and bare pods are [Pod]
    cluster = Cluster.load([NETPOL / "minikube_resources" / "input"])
    names = {str(w) for w in connection_list(cluster).workloads}
    assert "kube-system/coredns-64897985d[ReplicaSet]" in names
    assert "ingress-nginx/ingress-nginx-admission-create[Job]" in names
    assert "kube-system/etcd-minikube[Pod]" in names
    # podnet's own Deployment -> ReplicaSet -> Pod chain is reported as the Deployment
    vm = Cluster.load([NETPOL / "virtual_machines_example" / "input"])
    assert {str(w) for w in connection_list(vm).workloads} == {
        "default/cirrus-vm-1[VirtualMachine]", "default/fedora-vm-1[VirtualMachine]"}


def test_label_gap_inside_a_workload_is_reported():
    # pod-1 and pod-2 share an owner but differ in labels a policy selects on
    cluster = Cluster.load([NETPOL / "example_pods_w_same_owner_and_labels_gap_with_good_match_expression"
                            / "input"])
    result = connection_list(cluster)
    assert result.warnings == []        # the selector (app Exists) sees no difference
    assert [str(w) for w in result.workloads] == ["default/internal-security[Pod]", "default/pod-3[Pod]"]
