"""DNSRecords built from reconciled clusters: the cluster definition's domain,
TTL and pods mode, dual-stack, endpoint readiness, PTRs, determinism."""

from __future__ import annotations

import dns.name
import dns.reversename
import dns.rcode
import dns.rdatatype as T
import pytest

from podnet import Cluster
from podnet.dns import DNSRecords

from conftest import GUIDE_LAB

DUAL = """
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
name: dual
networking: {ipFamily: dual}
nodes: [{role: control-plane}, {role: worker}]
---
apiVersion: podnet.dev/v1alpha1
kind: PodnetConfig
clusterDomain: k8s.example
dns: {ttl: 5, pods: verified}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: nginx, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {ipFamilyPolicy: PreferDualStack, selector: {app: web}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: web-hl, namespace: default}
spec: {clusterIP: None, ipFamilyPolicy: PreferDualStack, selector: {app: web},
       ports: [{name: http, port: 80}]}
"""

READINESS = """
apiVersion: v1
kind: Pod
metadata: {name: ready, namespace: default, labels: {app: db}}
spec: {containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.50, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: starting, namespace: default, labels: {app: db}}
spec: {containers: [{name: c, image: x}]}
status: {phase: Running, podIP: 10.244.1.51, conditions: [{type: Ready, status: "False"}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec: {clusterIP: None, selector: {app: db}, ports: [{name: sql, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: db-all, namespace: default}
spec: {clusterIP: None, publishNotReadyAddresses: true, selector: {app: db}, ports: [{name: sql, port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: default}
spec: {clusterIP: None, selector: {app: nothing}, ports: [{port: 1}]}
"""


def ask(records, qname, rdtype):
    return records.lookup(dns.name.from_text(qname), rdtype)


def addresses(answer):
    return sorted(rd.to_text() for r in answer.answer for rd in r if r.rdtype in (T.A, T.AAAA))


@pytest.fixture(scope="module")
def dual(tmp_path_factory):
    d = tmp_path_factory.mktemp("dual")
    (d / "all.yaml").write_text(DUAL)
    return Cluster.load([d])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("ready")
    (d / "db.yaml").write_text(READINESS)
    return Cluster.load([GUIDE_LAB, d])


def test_zone_ttl_and_pods_mode_come_from_the_cluster_definition(dual):
    r = DNSRecords.from_cluster(dual)
    assert r.zone.to_text() == "k8s.example." and r.ttl == 5 and r.pods_mode == "verified"
    a = ask(r, "web.default.svc.k8s.example", T.A)
    assert a.answer[0].ttl == 5
    assert ask(r, "web.default.svc.cluster.local", T.A) is None      # not our zone
    soa = ask(r, "k8s.example", T.SOA).answer[0]
    assert soa[0].minimum == 5 and soa.ttl == 5


def test_dual_stack(dual):
    r = DNSRecords.from_cluster(dual)
    web = dual.service("web")
    assert len(web.cluster_ips) == 2
    assert addresses(ask(r, "web.default.svc.k8s.example", T.A)) == [str(web.cluster_ips[0])]
    assert addresses(ask(r, "web.default.svc.k8s.example", T.AAAA)) == [str(web.cluster_ips[1])]
    pods = [p for p in dual.pods if p.name.startswith("web-")]
    v6 = sorted(str(p.ip_of(6)) for p in pods)
    assert addresses(ask(r, "web-hl.default.svc.k8s.example", T.AAAA)) == v6
    # endpoints and pods by their dashed IPv6
    p = pods[0]
    label = str(p.ip_of(6)).replace(":", "-")
    assert addresses(ask(r, f"{label}.web-hl.default.svc.k8s.example", T.AAAA)) == [str(p.ip_of(6))]
    assert addresses(ask(r, f"{label}.default.pod.k8s.example", T.AAAA)) == [str(p.ip_of(6))]
    # the reverse of both families
    ptr = ask(r, dns.reversename.from_address(str(web.cluster_ips[1])).to_text(), T.PTR)
    assert ptr.answer[0][0].target.to_text() == "web.default.svc.k8s.example."


def test_pods_verified_only_existing_pods(dual):
    r = DNSRecords.from_cluster(dual)
    p = next(p for p in dual.pods if p.name.startswith("web-"))
    ip = str(p.ip_of(4)).replace(".", "-")
    assert addresses(ask(r, f"{ip}.default.pod.k8s.example", T.A)) == [str(p.ip_of(4))]
    assert ask(r, f"{ip}.kube-system.pod.k8s.example", T.A).rcode == dns.rcode.NXDOMAIN
    assert ask(r, "10-1-2-3.default.pod.k8s.example", T.A).rcode == dns.rcode.NXDOMAIN
    insecure = DNSRecords.from_cluster(dual, pods_mode="insecure")
    assert addresses(ask(insecure, "10-1-2-3.default.pod.k8s.example", T.A)) == ["10.1.2.3"]
    disabled = DNSRecords.from_cluster(dual, pods_mode="disabled")
    assert ask(disabled, f"{ip}.default.pod.k8s.example", T.A).rcode == dns.rcode.NXDOMAIN


def test_headless_answers_ready_endpoints_only(lab):
    r = DNSRecords.from_cluster(lab)
    assert addresses(ask(r, "db.default.svc.cluster.local", T.A)) == ["10.244.1.50"]
    assert addresses(ask(r, "db-all.default.svc.cluster.local", T.A)) == ["10.244.1.50", "10.244.1.51"]
    assert ask(r, "10-244-1-51.db.default.svc.cluster.local", T.A).rcode == dns.rcode.NXDOMAIN
    # a headless Service without ready endpoints does not exist in DNS (as in CoreDNS)
    assert ask(r, "empty.default.svc.cluster.local", T.A).rcode == dns.rcode.NXDOMAIN


def test_ptr_precedence(lab):
    r = DNSRecords.from_cluster(lab)

    def ptr(ip):
        ans = ask(r, dns.reversename.from_address(ip).to_text(), T.PTR)
        return [rd.target.to_text() for rr in ans.answer for rd in rr] or dns.rcode.to_text(ans.rcode)
    # a ClusterIP names its Service
    assert ptr("10.96.0.1") == ["kubernetes.default.svc.cluster.local."]
    # an endpoint names itself under every Service it backs
    assert ptr("10.244.1.50") == ["10-244-1-50.db-all.default.svc.cluster.local.",
                                  "10-244-1-50.db.default.svc.cluster.local."]
    # a pod that backs no Service: its pod name (podnet's addition)
    assert ptr("10.244.1.51") == ["10-244-1-51.db-all.default.svc.cluster.local."]
    tshoot = next(p for p in lab.pods if p.name.startswith("net-tshoot-") and p.node_name.endswith("worker2"))
    dashed = str(tshoot.pod_ip).replace(".", "-")
    assert ptr(str(tshoot.pod_ip)) == [f"{dashed}.default.pod.cluster.local."]
    # hostNetwork pods share their node's IP: no pod PTR for it
    assert ptr("172.18.0.4") == "NXDOMAIN"
    assert ptr("192.0.2.1") == "NXDOMAIN"


def test_same_cluster_same_records(lab):
    a, b = DNSRecords.from_cluster(lab), DNSRecords.from_cluster(Cluster.load([GUIDE_LAB]))
    again = DNSRecords.from_cluster(lab)
    assert [x.to_text() for x in a.dump()] == [x.to_text() for x in again.dump()]
    assert a.serial == again.serial and a.serial != b.serial


def test_nameserver_is_the_kube_dns_clusterip(lab):
    r = DNSRecords.from_cluster(lab)
    assert addresses(ask(r, "ns.dns.cluster.local", T.A)) == ["10.96.0.10"]
    ns = ask(r, "cluster.local", T.NS)
    assert ns.answer[0][0].target.to_text() == "ns.dns.cluster.local."
    assert [rd.to_text() for r in ns.additional for rd in r] == ["10.96.0.10"]
