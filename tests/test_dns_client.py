"""The client side: resolv.conf per dnsPolicy, glibc's search algorithm, and the
`podnet dns resolve / resolv-conf / records` commands."""

from __future__ import annotations

import json

import dns.name
import dns.rcode
import dns.rdatatype
import pytest

from podnet import Cluster
from podnet.dns import resolv_conf, resolve_for_pod, resolve_sequence
from podnet.dns.client import Query, ResolvConf, format_lookup

from conftest import GUIDE_LAB, run_podnet
from test_dns_support import FakeUpstream

PODS = """
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Pod
metadata: {name: cf, namespace: apps}
spec: {containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: apps}
spec: {hostNetwork: true, nodeName: k8s-guide-worker, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: hostnet-cf, namespace: apps}
spec: {hostNetwork: true, dnsPolicy: ClusterFirstWithHostNet, nodeName: k8s-guide-worker,
       containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: dflt, namespace: apps}
spec: {dnsPolicy: Default, containers: [{name: c, image: x}]}
---
apiVersion: v1
kind: Pod
metadata: {name: none, namespace: apps}
spec:
  dnsPolicy: None
  dnsConfig:
    nameservers: [192.0.2.53]
    searches: [example.com]
    options: [{name: ndots, value: "2"}, {name: edns0}]
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: custom, namespace: apps}
spec:
  dnsConfig:
    nameservers: [10.96.0.10, 192.0.2.53, 192.0.2.54, 192.0.2.55]
    searches: [svc.cluster.local, corp.example]
    options: [{name: ndots, value: "2"}, {name: single-request}]
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: notld, namespace: apps}
spec:
  dnsConfig: {options: [{name: no-tld-query}]}
  containers: [{name: c, image: x}]
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("pods")
    (d / "pods.yaml").write_text(PODS)
    return Cluster.load([GUIDE_LAB, d])


@pytest.fixture(scope="module")
def upstream():
    with FakeUpstream({("tkng.io.", "A"): ["104.21.21.243", "172.67.201.112"],
                       ("a.b.c.d.e.f.", "A"): ["192.0.2.6"]}, ttl=300) as up:
        yield up


def pod(cluster, name):
    return cluster.pod(f"apps/{name}")


def tshoot(cluster):
    return next(p for p in cluster.pods if p.name.startswith("net-tshoot-"))


# ------------------------------------------------------------ resolv.conf

def test_cluster_first_is_the_guides_file(cluster):
    assert resolv_conf(tshoot(cluster), cluster).text() == (
        "search default.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\n"
        "options ndots:5\n")
    assert resolv_conf(pod(cluster, "cf"), cluster).search[0] == "apps.svc.cluster.local"


def test_host_network_and_default_use_the_nodes_resolver(cluster):
    node = "nameserver 172.18.0.1\noptions ndots:0\n"
    assert resolv_conf(pod(cluster, "hostnet"), cluster).text() == node
    assert resolv_conf(pod(cluster, "dflt"), cluster).text() == node
    assert resolv_conf(pod(cluster, "hostnet-cf"), cluster).text() == (
        "search apps.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 10.96.0.10\noptions ndots:5\n")


def test_none_takes_dns_config_only(cluster):
    assert resolv_conf(pod(cluster, "none"), cluster).text() == (
        "search example.com\nnameserver 192.0.2.53\noptions edns0 ndots:2\n")


def test_dns_config_is_merged(cluster):
    conf = resolv_conf(pod(cluster, "custom"), cluster)
    # nameservers and searches deduplicated, at most 3 nameservers; the pod's options win
    assert conf.nameservers == ["10.96.0.10", "192.0.2.53", "192.0.2.54"]
    assert conf.search == ["apps.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"]
    assert conf.options == ["ndots:2", "single-request"]
    assert conf.ndots == 2


def test_resolv_conf_parse_round_trip():
    text = "search a.example b.example\nnameserver 10.96.0.10\noptions ndots:5 attempts:2\n"
    conf = ResolvConf.parse("# comment\n" + text)
    assert conf.text() == text and conf.ndots == 5 and conf.option("attempts") == "2"


# ------------------------------------------------------- glibc's algorithm

def names(lookup):
    return [(q.name.to_text(), dns.rdatatype.to_text(q.rdtype), q.status) for q in lookup.queries]


def test_the_guides_external_lookup_costs_four_queries(cluster, upstream):
    lookup = resolve_for_pod(cluster, tshoot(cluster), "tkng.io", upstreams=[upstream.spec])
    assert names(lookup) == [
        ("tkng.io.default.svc.cluster.local.", "A", "NXDOMAIN"),
        ("tkng.io.svc.cluster.local.", "A", "NXDOMAIN"),
        ("tkng.io.cluster.local.", "A", "NXDOMAIN"),
        ("tkng.io.", "A", "NOERROR")]
    assert lookup.answered_by == 4
    assert sorted(rd.address for rd in lookup.queries[3].answer[0]) == ["104.21.21.243", "172.67.201.112"]


def test_with_autopath_one_query(cluster, upstream):
    lookup = resolve_for_pod(cluster, tshoot(cluster), "tkng.io", upstreams=[upstream.spec], autopath=True)
    assert names(lookup) == [("tkng.io.default.svc.cluster.local.", "A", "NOERROR")]
    q = lookup.queries[0]
    assert [r.rdtype for r in q.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert q.answer[0][0].target == dns.name.from_text("tkng.io.")
    assert [(n.to_text(), dns.rcode.to_text(rc)) for n, rc, _ in q.walk] == [
        ("tkng.io.default.svc.cluster.local.", "NXDOMAIN"), ("tkng.io.svc.cluster.local.", "NXDOMAIN"),
        ("tkng.io.cluster.local.", "NXDOMAIN"), ("tkng.io.", "NOERROR")]
    assert "autopath: the server tried" in format_lookup(lookup)


def test_without_upstream_the_last_query_is_marked_not_sent(cluster):
    lookup = resolve_for_pod(cluster, tshoot(cluster), "tkng.io")
    assert [s for _, _, s in names(lookup)] == ["NXDOMAIN"] * 3 + ["forwarded upstream (not sent)"]
    assert "not sent" in lookup.outcome


def test_cluster_names(cluster):
    p = tshoot(cluster)
    assert names(resolve_for_pod(cluster, p, "kubernetes")) == [
        ("kubernetes.default.svc.cluster.local.", "A", "NOERROR")]
    assert [n for n, _, _ in names(resolve_for_pod(cluster, p, "web.default"))] == [
        "web.default.default.svc.cluster.local.", "web.default.svc.cluster.local."]
    # getaddrinfo: A and AAAA for each candidate
    assert names(resolve_for_pod(cluster, p, "kubernetes", "ADDR")) == [
        ("kubernetes.default.svc.cluster.local.", "A", "NOERROR"),
        ("kubernetes.default.svc.cluster.local.", "AAAA", "NODATA")]
    # a pod of another namespace needs the namespace
    other = pod(cluster, "cf")
    assert [s for _, _, s in names(resolve_for_pod(cluster, other, "web.default"))] == ["NXDOMAIN", "NOERROR"]


def test_ndots_and_absolute_names(cluster, upstream):
    p = tshoot(cluster)
    # 5 dots: as is first
    assert names(resolve_for_pod(cluster, p, "a.b.c.d.e.f", upstreams=[upstream.spec])) == [
        ("a.b.c.d.e.f.", "A", "NOERROR")]
    # a trailing dot: as is, only
    assert names(resolve_for_pod(cluster, p, "nowhere.invalid.", upstreams=[upstream.spec])) == [
        ("nowhere.invalid.", "A", "NXDOMAIN")]
    # ndots:2 from dnsConfig
    lookup = resolve_for_pod(cluster, pod(cluster, "custom"), "tkng.io", upstreams=[upstream.spec])
    assert [n for n, _, _ in names(lookup)][:2] == ["tkng.io.apps.svc.cluster.local.", "tkng.io.svc.cluster.local."]
    assert len(lookup.queries) == 5 and lookup.answered_by == 5     # 4 search domains, then as is
    # no-tld-query: a single label is never asked as is
    lookup = resolve_for_pod(cluster, pod(cluster, "notld"), "nothere", upstreams=[upstream.spec])
    assert [n for n, _, _ in names(lookup)] == [
        "nothere.apps.svc.cluster.local.", "nothere.svc.cluster.local.", "nothere.cluster.local."]
    assert lookup.answered_by is None


def test_default_policy_asks_the_nodes_resolver(cluster, upstream):
    lookup = resolve_for_pod(cluster, pod(cluster, "dflt"), "tkng.io", upstreams=[upstream.spec])
    assert names(lookup) == [("tkng.io.", "A", "NOERROR")]         # ndots:0: as is first
    assert lookup.queries[0].source == "upstream"
    # the cluster's names do not resolve there
    lookup = resolve_for_pod(cluster, pod(cluster, "dflt"), "kubernetes", upstreams=[upstream.spec])
    assert lookup.answered_by is None


def stub(results):
    """An `ask` answering each name from {name: rcode}; NOERROR names have a record."""
    asked = []

    def ask(name, rdtype):
        asked.append(name.to_text())
        rcode = results.get(name.to_text(), dns.rcode.NXDOMAIN)
        answer = ["x"] if rcode == dns.rcode.NOERROR else []
        return Query(name, rdtype, rcode, answer)
    return ask, asked


def test_search_stops_on_refused_but_still_tries_the_name_as_is():
    conf = ResolvConf(["10.96.0.10"], ["a.example", "b.example", "c.example"], ["ndots:5"])
    ask, asked = stub({"x.a.example.": dns.rcode.SERVFAIL, "x.b.example.": dns.rcode.REFUSED})
    lookup = resolve_sequence("x", "A", conf, ask)
    assert asked == ["x.a.example.", "x.b.example.", "x."]     # SERVFAIL goes on, REFUSED stops
    assert lookup.answered_by is None


# ------------------------------------------------------------------ the CLI

def test_cli_resolv_conf_and_resolve():
    cluster = Cluster.load([GUIDE_LAB])
    p = tshoot(cluster).name
    out = run_podnet("dns", "resolv-conf", "--pod", p, check=True).stdout
    assert out == ("search default.svc.cluster.local svc.cluster.local cluster.local\n"
                   "nameserver 10.96.0.10\noptions ndots:5\n")
    proc = run_podnet("dns", "resolve", "--pod", p, "tkng.io")
    assert proc.returncode == 0
    lines = [line.split() for line in proc.stdout.splitlines() if line[:4].strip().isdigit()]
    assert [(w[0], w[2], w[3]) for w in lines] == [
        ("1", "tkng.io.default.svc.cluster.local.", "NXDOMAIN"),
        ("2", "tkng.io.svc.cluster.local.", "NXDOMAIN"),
        ("3", "tkng.io.cluster.local.", "NXDOMAIN"),
        ("4", "tkng.io.", "forwarded")]
    assert "4 queries to 10.96.0.10 (3 NXDOMAIN)" in proc.stdout
    data = json.loads(run_podnet("dns", "resolve", "--pod", p, "tkng.io", "--autopath", "-o", "json",
                                 check=True).stdout)
    assert len(data["queries"]) == 1 and len(data["queries"][0]["autopath"]) == 4


def test_cli_records_and_errors():
    out = run_podnet("dns", "records", check=True).stdout
    assert "kube-dns.kube-system.svc.cluster.local. 30 IN A 10.96.0.10" in out
    assert "10.0.96.10.in-addr.arpa. 30 IN PTR kube-dns.kube-system.svc.cluster.local." in out
    assert 'dns-version.cluster.local. 28800 IN TXT "1.1.0"' in out
    proc = run_podnet("dns", "resolve", "--pod", "nosuchpod", "web")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: no pod named 'nosuchpod'"
    proc = run_podnet("dns", "serve", "--listen", "nonsense")
    assert proc.returncode == 1 and proc.stderr.strip() == "error: --listen: not an IP:PORT: 'nonsense'"
