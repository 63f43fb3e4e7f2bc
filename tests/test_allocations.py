"""Recorded decisions (kind: Allocations): a re-render never moves or renumbers what runs."""

import shutil

import pytest
import yaml

from podnet.cluster import Cluster
from podnet.control.allocations import Allocations
from podnet.errors import InputError

from conftest import GUIDE_LAB

DEBUG = """
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: default}
spec:
  nodeName: k8s-guide-worker2
  containers: [{name: c, image: busybox}]
"""

SERVICES = """
apiVersion: v1
kind: Service
metadata: {name: %s, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80}]
"""


def inputs(tmp_path, extra=""):
    d = tmp_path / "in"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
    for f in GUIDE_LAB.glob("*.yaml"):
        shutil.copy(f, d / f.name)
    (d / "extra.yaml").write_text(extra)
    (tmp_path / "podnet.yaml").write_text(
        "apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n"
        "loadBalancer: {pools: ['172.18.255.200-172.18.255.250']}\n")
    return [str(d), str(tmp_path / "podnet.yaml")]


def record(tmp_path, cluster) -> str:
    path = tmp_path / "allocations.yaml"
    path.write_text(yaml.safe_dump(Allocations.of(cluster).to_manifest()))
    return str(path)


def ips(cluster):
    return {p.key: (p.node_name, p.pod_ips) for p in cluster.pods if not p.host_network}


def test_deleting_a_pod_renumbers_the_rest_without_a_record(tmp_path):
    """Why the record exists: host-local's order shifts when a pod goes."""
    before = Cluster.load(inputs(tmp_path, DEBUG))
    after = Cluster.load(inputs(tmp_path))
    moved = {k for k, v in ips(after).items() if ips(before)[k] != v}
    assert moved, "the guide lab no longer shows the renumbering this record prevents"


def test_with_the_record_running_pods_keep_node_and_ips(tmp_path):
    before = Cluster.load(inputs(tmp_path, DEBUG))
    rec = record(tmp_path, before)
    after = Cluster.load(inputs(tmp_path) + [rec])
    kept = ips(before)
    del kept["default/debug"]
    assert {k: v for k, v in ips(after).items() if k in kept} == kept
    # they are running and ready, so they are endpoints
    web = after.service("web")
    assert sorted(str(e.addresses[0]) for s in after.slices_of(web) for e in s.endpoints if e.ready) == \
        sorted(str(p.pod_ip) for p in after.pods if p.name.startswith("web-"))


def test_new_pods_get_free_addresses_beside_recorded_ones(tmp_path):
    before = Cluster.load(inputs(tmp_path))
    rec = record(tmp_path, before)
    d = inputs(tmp_path)
    web = (GUIDE_LAB / "web.yaml").read_text().replace("replicas: 2", "replicas: 6")
    (tmp_path / "in" / "web.yaml").write_text(web)
    after = Cluster.load(d + [rec])
    all_ips = [ip for p in after.pods if not p.host_network for ip in p.pod_ips]
    assert len(all_ips) == len(set(all_ips))
    for k, v in ips(before).items():
        assert ips(after)[k] == v


def test_services_keep_cluster_ip_node_port_and_lb_ip(tmp_path):
    before = Cluster.load(inputs(tmp_path, SERVICES % "b-lb"))
    rec = record(tmp_path, before)
    # a Service sorting before it would take its addresses without the record
    after = Cluster.load(inputs(tmp_path, SERVICES % "b-lb" + "---" + SERVICES % "a-lb") + [rec])
    b0, b1 = before.service("b-lb"), after.service("b-lb")
    assert (b1.cluster_ips, b1.ports[0].node_port, b1.lb_ips) == (b0.cluster_ips, b0.ports[0].node_port, b0.lb_ips)
    a = after.service("a-lb")
    assert a.lb_ips and a.lb_ips != b1.lb_ips and a.ports[0].node_port != b1.ports[0].node_port


def test_a_pod_bound_elsewhere_gets_a_fresh_decision(tmp_path):
    before = Cluster.load(inputs(tmp_path, DEBUG))
    rec = record(tmp_path, before)
    after = Cluster.load(inputs(tmp_path, DEBUG.replace("worker2", "worker")) + [rec])
    pod = after.pod("debug")
    assert pod.node_name == "k8s-guide-worker" and str(pod.pod_ip).startswith("10.244.1.")


def test_a_bad_address_in_the_record_names_file_and_field(tmp_path):
    bad = tmp_path / "alloc.yaml"
    bad.write_text("apiVersion: podnet.dev/v1alpha1\nkind: Allocations\n"
                   "pods: {default/x: {nodeName: n, podIPs: [10.0.0.300]}}\n")
    with pytest.raises(InputError) as e:
        Cluster.load(inputs(tmp_path) + [str(bad)])
    assert "alloc.yaml" in str(e.value) and "podIPs" in str(e.value) and "\n" not in str(e.value)
