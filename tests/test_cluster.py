"""Issue #2: the cluster model and the control plane."""

import ipaddress

import pytest

from podnet import Cluster, InputError
from podnet.cluster import example_path

from conftest import GUIDE_LAB, ORACLES, run_podnet

ip = ipaddress.ip_address
net = ipaddress.ip_network


@pytest.fixture(scope="module")
def lab():
    return Cluster.load([GUIDE_LAB])


# ---------------------------------------------------------------- the guide's lab

def test_guide_lab_nodes_and_pod_cidrs(lab):
    assert [n.name for n in lab.nodes] == ["k8s-guide-control-plane", "k8s-guide-worker", "k8s-guide-worker2"]
    assert [n.pod_cidrs for n in lab.nodes] == [[net("10.244.0.0/24")], [net("10.244.1.0/24")],
                                                 [net("10.244.2.0/24")]]
    # kind's docker network, creation order
    assert [str(n.internal_ip) for n in lab.nodes] == ["172.18.0.2", "172.18.0.3", "172.18.0.4"]
    assert lab.node("k8s-guide-control-plane").taints[0].key == "node-role.kubernetes.io/control-plane"


def test_guide_lab_services(lab):
    assert lab.service("kubernetes").cluster_ip == ip("10.96.0.1")
    dns = lab.service("kube-system/kube-dns")
    assert dns.cluster_ip == ip("10.96.0.10")
    assert [(p.name, p.port, p.protocol) for p in dns.ports] == [
        ("dns", 53, "UDP"), ("dns-tcp", 53, "TCP"), ("metrics", 9153, "TCP")]
    web = lab.service("web")
    assert web.cluster_ip in net("10.96.0.0/12")
    assert web.cluster_ip not in (ip("10.96.0.1"), ip("10.96.0.10"))


def test_guide_lab_web_pods_on_the_two_workers(lab):
    web = [p for p in lab.pods if p.meta.labels.get("app") == "web"]
    assert len(web) == 2
    assert sorted(p.node_name for p in web) == ["k8s-guide-worker", "k8s-guide-worker2"]
    for p in web:
        assert p.pod_ip in lab.node(p.node_name).pod_cidrs[0]
        # Deployment -> ReplicaSet -> pod, named with the pod-template hash
        rs_name = p.meta.owner_refs[0].name
        assert p.meta.owner_refs[0].kind == "ReplicaSet"
        assert rs_name.startswith("web-") and p.name.startswith(rs_name + "-")
        assert p.meta.labels["pod-template-hash"] == rs_name[len("web-"):]


def test_guide_lab_web_endpointslice(lab):
    web = lab.service("web")
    slices = lab.slices_of(web)
    assert len(slices) == 1
    es = slices[0]
    assert es.meta.labels["kubernetes.io/service-name"] == "web"
    assert [(p.port, p.protocol) for p in es.ports] == [(80, "TCP")]
    pods = {str(p.pod_ip): p for p in lab.pods if p.meta.labels.get("app") == "web"}
    assert sorted(a for e in es.endpoints for a in e.addresses) == sorted(pods)
    for e in es.endpoints:
        assert e.ready and e.serving and not e.terminating
        assert e.node_name == pods[e.addresses[0]].node_name


def test_guide_lab_net_tshoot_on_every_node(lab):
    tshoot = [p for p in lab.pods if p.name.startswith("net-tshoot-")]
    assert sorted(p.node_name for p in tshoot) == [n.name for n in lab.nodes]
    for p in tshoot:
        assert p.meta.owner_refs[0].kind == "DaemonSet"


def test_fresh_kind_cluster_objects(lab):
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= set(lab.namespaces)
    coredns = [p for p in lab.pods if p.name.startswith("coredns-")]
    assert len(coredns) == 2 and {p.node_name for p in coredns} == {"k8s-guide-control-plane"}
    # coredns starts first on the control plane: the first pod IPs of its range
    assert sorted(str(p.pod_ip) for p in coredns) == ["10.244.0.2", "10.244.0.3"]
    for daemon in ("kube-proxy-", "kindnet-"):
        pods = [p for p in lab.pods if p.name.startswith(daemon)]
        assert sorted(p.node_name for p in pods) == [n.name for n in lab.nodes]
        for p in pods:                       # hostNetwork: the node's IP
            assert p.pod_ip == lab.node(p.node_name).internal_ip
    k8s = lab.slices_of(lab.service("kubernetes"))[0]
    assert k8s.endpoints[0].addresses == ["172.18.0.2"] and k8s.ports[0].port == 6443
    dns_eps = sorted(a for e in lab.slices_of(lab.service("kube-system/kube-dns"))[0].endpoints
                     for a in e.addresses)
    assert dns_eps == ["10.244.0.2", "10.244.0.3"]


def test_deterministic(tmp_path):
    first = run_podnet("get", "pods", "-A", "-o", "yaml", "-f", str(GUIDE_LAB), check=True).stdout
    second = run_podnet("get", "pods", "-A", "-o", "yaml", "-f", str(GUIDE_LAB), check=True).stdout
    assert first == second
    svc1 = run_podnet("get", "svc", "-A", "-o", "json", "-f", str(GUIDE_LAB), check=True).stdout
    svc2 = run_podnet("get", "svc", "-A", "-o", "json", "-f", str(GUIDE_LAB), check=True).stdout
    assert svc1 == svc2


def test_adding_a_service_does_not_move_others(manifest):
    base = Cluster.load([GUIDE_LAB])
    extra = manifest("extra.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: another, namespace: default}
        spec: {selector: {app: nothing}, ports: [{port: 8080}]}
        """)
    more = Cluster.load([GUIDE_LAB, extra])
    assert more.service("web").cluster_ip == base.service("web").cluster_ip
    assert more.service("another").cluster_ip != more.service("web").cluster_ip
    assert more.slices_of(more.service("another"))[0].endpoints == []   # selecting nothing is fine


# ---------------------------------------------------------------- recorded state

def test_real_cluster_dump_keeps_recorded_ips():
    c = Cluster.load([ORACLES / "netpol" / "onlineboutique" / "input"])
    assert c.config.origin == "dump"
    pod = c.pod("default/adservice-77d5cd745d-t8mx4")
    assert pod.pod_ips == [ip("10.244.120.79")]
    assert pod.host_ip == ip("192.168.49.2")
    assert pod.node_name == "minikube"
    assert c.node("minikube").internal_ip == ip("192.168.49.2")
    # no fresh-cluster objects are invented for a dump
    assert not any(s.name == "kube-dns" for s in c.services)


def test_every_netpol_oracle_input_loads():
    for d in sorted((ORACLES / "netpol").glob("*/input")):
        c = Cluster.load([d])
        assert c.pods, d


def test_recorded_cluster_ip_node_port_and_pod_cidr_honoured(manifest):
    manifest("kind.yaml", """
        kind: Cluster
        apiVersion: kind.x-k8s.io/v1alpha4
        nodes: [{role: control-plane}, {role: worker}]
        """)
    manifest("objs.yaml", """
        apiVersion: v1
        kind: Node
        metadata: {name: kind-worker}
        spec: {podCIDR: 10.244.7.0/24}
        status: {addresses: [{type: InternalIP, address: 172.18.0.9}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: fixed}
        spec:
          type: NodePort
          clusterIP: 10.96.100.100
          selector: {app: x}
          ports: [{port: 80, nodePort: 30080}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: p, labels: {app: x}}
        spec: {nodeName: kind-worker, containers: [{name: c}]}
        status: {podIP: 10.244.7.77, phase: Running}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    assert c.node("kind-worker").pod_cidrs == [net("10.244.7.0/24")]
    assert c.node("kind-worker").internal_ip == ip("172.18.0.9")
    assert c.node("kind-control-plane").pod_cidrs == [net("10.244.0.0/24")]
    svc = c.service("fixed")
    assert svc.cluster_ip == ip("10.96.100.100") and svc.ports[0].node_port == 30080
    assert c.pod("p").pod_ip == ip("10.244.7.77")


# ---------------------------------------------------------------- controllers

def test_statefulset_headless_hostnames(manifest):
    manifest("sts.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: consul}
        spec:
          clusterIP: None
          selector: {app: consul}
          ports: [{name: http, port: 8500, targetPort: http}]
        ---
        apiVersion: apps/v1
        kind: StatefulSet
        metadata: {name: consul}
        spec:
          serviceName: consul
          replicas: 3
          selector: {matchLabels: {app: consul}}
          template:
            metadata: {labels: {app: consul}}
            spec:
              containers: [{name: consul, ports: [{name: http, containerPort: 8500}]}]
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    pods = sorted((p for p in c.pods if p.name.startswith("consul-")), key=lambda p: p.name)
    assert [p.name for p in pods] == ["consul-0", "consul-1", "consul-2"]
    assert all(p.hostname == p.name and p.subdomain == "consul" for p in pods)
    svc = c.service("consul")
    assert svc.headless and svc.cluster_ips == []
    es = c.slices_of(svc)[0]
    assert sorted(e.hostname for e in es.endpoints) == ["consul-0", "consul-1", "consul-2"]
    assert es.ports[0].port == 8500 and es.ports[0].name == "http"
    assert es.meta.labels["service.kubernetes.io/headless"] == ""


def test_named_target_port_resolved_per_pod(manifest):
    manifest("a.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: s}
        spec: {selector: {app: a}, ports: [{port: 80, targetPort: web}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: one, labels: {app: a}}
        spec: {containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: two, labels: {app: a}}
        spec: {containers: [{name: c, ports: [{name: web, containerPort: 9090}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: three, labels: {app: a}}
        spec: {containers: [{name: c}]}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    slices = c.slices_of(c.service("s"))
    by_port = {es.ports[0].port if es.ports else None: [e.target_ref[2] for e in es.endpoints] for es in slices}
    assert by_port == {8080: ["one"], 9090: ["two"], None: ["three"]}


def test_node_capacity_is_respected(manifest):
    manifest("d.yaml", """
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: many}
        spec:
          replicas: 111
          selector: {matchLabels: {app: m}}
          template:
            metadata: {labels: {app: m}}
            spec: {containers: [{name: c}]}
        """)
    with pytest.raises(InputError, match="no node can run this pod"):
        Cluster.load([manifest("x.yaml", "").parent])


def test_pods_of_a_dump_define_its_nodes(manifest):
    manifest("p.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: p}
        spec: {nodeName: node-a, containers: [{name: c}]}
        status: {hostIP: 192.0.2.7, podIP: 10.1.2.3}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    assert [n.name for n in c.nodes] == ["node-a"]
    assert c.node("node-a").internal_ip == ip("192.0.2.7")


def test_slices_hold_at_most_100_endpoints(manifest):
    manifest("d.yaml", """
        kind: Cluster
        apiVersion: kind.x-k8s.io/v1alpha4
        nodes: [{role: control-plane}, {role: worker}, {role: worker}]
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: big}
        spec:
          replicas: 210
          selector: {matchLabels: {app: big}}
          template:
            metadata: {labels: {app: big}}
            spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: big}
        spec: {selector: {app: big}, ports: [{port: 80}]}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    slices = c.slices_of(c.service("big"))
    assert [len(s.endpoints) for s in slices] == [100, 100, 10]
    per_node = {}
    for p in c.pods:
        if p.name.startswith("big-"):
            per_node[p.node_name] = per_node.get(p.node_name, 0) + 1
    assert per_node == {"kind-worker": 105, "kind-worker2": 105}     # spread evenly


def test_scheduler_honours_selector_affinity_taints_and_host_network(manifest):
    manifest("s.yaml", """
        kind: Cluster
        apiVersion: kind.x-k8s.io/v1alpha4
        nodes:
        - role: control-plane
        - role: worker
          labels: {disk: ssd}
        - role: worker
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: picky}
        spec: {nodeSelector: {disk: ssd}, containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: affine}
        spec:
          affinity:
            nodeAffinity:
              requiredDuringSchedulingIgnoredDuringExecution:
                nodeSelectorTerms:
                - matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [kind-worker2]}]
          containers: [{name: c}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: on-cp}
        spec:
          nodeSelector: {node-role.kubernetes.io/control-plane: ""}
          tolerations: [{key: node-role.kubernetes.io/control-plane, operator: Exists, effect: NoSchedule}]
          containers: [{name: c}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: hostnet}
        spec: {hostNetwork: true, nodeName: kind-worker, containers: [{name: c}]}
        ---
        apiVersion: apps/v1
        kind: DaemonSet
        metadata: {name: no-tolerations}
        spec:
          selector: {matchLabels: {app: d}}
          template:
            metadata: {labels: {app: d}}
            spec: {containers: [{name: c}]}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    assert c.pod("picky").node_name == "kind-worker"
    assert c.pod("affine").node_name == "kind-worker2"
    assert c.pod("on-cp").node_name == "kind-control-plane"
    assert c.pod("hostnet").pod_ip == c.node("kind-worker").internal_ip
    ds = sorted(p.node_name for p in c.pods if p.name.startswith("no-tolerations-"))
    assert ds == ["kind-worker", "kind-worker2"]      # the control-plane taint keeps it off


def test_single_node_kind_cluster_has_no_control_plane_taint():
    c = Cluster.load([example_path().replace("guide-lab", "guide-lab") + "/web.yaml"])
    assert [n.name for n in c.nodes] == ["kind-control-plane"]
    assert c.nodes[0].taints == []
    assert {p.node_name for p in c.pods} == {"kind-control-plane"}


def test_service_types_and_lb_pools(manifest):
    manifest("svc.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: lb}
        spec:
          type: LoadBalancer
          externalTrafficPolicy: Local
          selector: {app: x}
          ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: ext}
        spec: {type: ExternalName, externalName: example.test}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: np}
        spec: {type: NodePort, selector: {app: x}, ports: [{port: 53, protocol: UDP}, {name: t, port: 53, protocol: TCP}]}
        """)
    # the two ports of np need names
    with pytest.raises(InputError, match=r"every port needs a name"):
        Cluster.load([manifest("x.yaml", "").parent])
    manifest("svc.yaml", (manifest("x.yaml", "").parent / "svc.yaml").read_text().replace(
        "[{port: 53, protocol: UDP}, {name: t", "[{name: u, port: 53, protocol: UDP}, {name: t"))
    c = Cluster.load([manifest("x.yaml", "").parent])
    lb = c.service("lb")
    assert lb.lb_ips == [ip("172.18.255.200")]
    assert all(30000 <= p.node_port <= 32767 for p in lb.ports)
    assert lb.health_check_node_port and 30000 <= lb.health_check_node_port <= 32767
    ext = c.service("ext")
    assert ext.cluster_ips == [] and c.slices_of(ext) == []
    np_ = c.service("np")
    assert np_.ports[0].node_port == np_.ports[1].node_port      # TCP and UDP share a port
    ports = [p.node_port for s in c.services for p in s.ports if p.node_port] + [lb.health_check_node_port]
    assert len(set(ports)) == len(ports) - 1


def test_selectorless_service_mirrors_endpoints(manifest):
    manifest("e.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: db}
        spec: {ports: [{name: pg, port: 5432}]}
        ---
        apiVersion: v1
        kind: Endpoints
        metadata: {name: db}
        subsets:
        - addresses: [{ip: 192.0.2.10}]
          notReadyAddresses: [{ip: 192.0.2.11}]
          ports: [{name: pg, port: 5432}]
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    es = c.slices_of(c.service("db"))
    assert len(es) == 1
    assert es[0].managed_by == "endpointslicemirroring-controller.k8s.io"
    assert [(e.addresses[0], e.ready) for e in es[0].endpoints] == [("192.0.2.10", True), ("192.0.2.11", False)]


def test_publish_not_ready_and_terminating(manifest):
    manifest("p.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: s}
        spec: {selector: {app: a}, publishNotReadyAddresses: true, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: t}
        spec: {selector: {app: a}, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: notready, labels: {app: a}}
        spec: {containers: [{name: c}]}
        status: {phase: Running, conditions: [{type: Ready, status: "False"}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: going, labels: {app: a}, deletionTimestamp: "2024-01-01T00:00:00Z"}
        spec: {containers: [{name: c}]}
        status: {phase: Running, conditions: [{type: Ready, status: "True"}]}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    s = {e.target_ref[2]: e for e in c.slices_of(c.service("s"))[0].endpoints}
    t = {e.target_ref[2]: e for e in c.slices_of(c.service("t"))[0].endpoints}
    assert s["notready"].ready is True
    assert t["notready"].ready is False and t["notready"].serving is False
    assert t["going"].ready is False and t["going"].serving is True and t["going"].terminating is True


def test_dual_stack(manifest):
    manifest("k.yaml", """
        kind: Cluster
        apiVersion: kind.x-k8s.io/v1alpha4
        networking: {ipFamily: dual}
        nodes: [{role: control-plane}, {role: worker}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: both}
        spec: {ipFamilyPolicy: PreferDualStack, selector: {app: a}, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: a, labels: {app: a}}
        spec: {containers: [{name: c}]}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    assert [str(x) for x in c.node("kind-worker").pod_cidrs] == ["10.244.1.0/24", "fd00:10:244:1::/64"]
    assert [x.version for x in c.pod("a").pod_ips] == [4, 6]
    assert [x.version for x in c.service("both").cluster_ips] == [4, 6]
    assert sorted(es.address_type for es in c.slices_of(c.service("both"))) == ["IPv4", "IPv6"]


def test_list_objects_and_json(manifest):
    manifest("list.json", """
        {"apiVersion": "v1", "kind": "List", "items": [
          {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}},
          {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
           "spec": {"containers": [{"name": "c"}]}}]}
        """)
    manifest("other.yaml", """
        apiVersion: example.com/v1
        kind: Widget
        metadata: {name: w}
        """)
    c = Cluster.load([manifest("x.yaml", "").parent])
    assert c.namespaces["shop"].meta.labels == {"team": "a", "kubernetes.io/metadata.name": "shop"}
    assert c.pod("shop/p").pod_ip is not None
    assert any("skipping Widget" in w for w in c.warnings)


# ---------------------------------------------------------------- bad input

BAD = {
    "malformed YAML": ("bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: [unclosed\n",
                       r"bad\.yaml: .*malformed YAML"),
    "wrong field type": ("bad.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: eighty}]}
        """, r"bad\.yaml: Service default/web: spec\.ports\[0\]\.port: expected an integer, got 'eighty'"),
    "duplicate clusterIP": ("bad.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {clusterIP: 10.96.5.5, ports: [{port: 80}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b}
        spec: {clusterIP: 10.96.5.5, ports: [{port: 80}]}
        """, r"bad\.yaml: Service default/b: spec\.clusterIP: clusterIP 10\.96\.5\.5 is already allocated to Service default/a"),
    "out-of-range clusterIP": ("bad.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {clusterIP: 192.168.1.1, ports: [{port: 80}]}
        """, r"Service default/a: spec\.clusterIP: 192\.168\.1\.1 is not in the service CIDR"),
    "duplicate nodePort": ("bad.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {type: NodePort, ports: [{port: 80, nodePort: 30001}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: b}
        spec: {type: NodePort, ports: [{port: 80, nodePort: 30001}]}
        """, r"Service default/b: spec\.ports\[0\]\.nodePort: port 30001 is already allocated to Service default/a"),
    "unknown node": ("bad.yaml", """
        kind: Cluster
        apiVersion: kind.x-k8s.io/v1alpha4
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: lost}
        spec: {nodeName: nowhere, containers: [{name: c}]}
        """, r"bad\.yaml: Pod default/lost: spec\.nodeName: node 'nowhere' does not exist"),
    "exhausted pod CIDR": ("bad.yaml", """
        apiVersion: podnet.dev/v1alpha1
        kind: PodnetConfig
        nodeCIDRMaskSize: 29
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: many}
        spec:
          replicas: 9
          selector: {matchLabels: {app: m}}
          template:
            metadata: {labels: {app: m}}
            spec: {containers: [{name: c}]}
        """, r"Pod default/many-.*: status\.podIPs: no free IP address in pod CIDR 10\.244\.0\.0/29 of node kind-control-plane"),
    "two containers one port": ("bad.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: clash}
        spec:
          containers:
          - {name: a, ports: [{containerPort: 80}]}
          - {name: b, ports: [{containerPort: 80}]}
        """, r"Pod default/clash: spec\.containers\[1\]\.ports\[0\]\.containerPort: port 80/TCP is already used by container a"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_naming_file_object_field(case, tmp_path):
    name, text, pattern = BAD[case]
    import textwrap
    (tmp_path / name).write_text(textwrap.dedent(text).lstrip())
    proc = run_podnet("get", "pods", "-f", str(tmp_path))
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    import re
    assert re.search(pattern, err), err


def test_a_directory_without_manifests_is_said(tmp_path):
    """-f pointing at the wrong directory: the cluster is only kind's defaults, and a warning says why."""
    (tmp_path / "notes.txt").write_text("not a manifest\n")
    proc = run_podnet("get", "svc", "-A", "-f", str(tmp_path), check=True)
    assert proc.stderr.strip().splitlines() == [f"warning: {tmp_path}: no .yaml/.yml/.json files in this directory"]
    assert "kube-dns" in proc.stdout and "web" not in proc.stdout
    assert run_podnet("get", "svc", "-f", str(GUIDE_LAB), check=True).stderr == ""


def test_cli_get_tables():
    out = run_podnet("get", "pods", "-o", "wide", "-f", str(GUIDE_LAB), check=True).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE",
                                "NOMINATED", "NODE", "READINESS", "GATES"]
    assert any(l.startswith("web-") and "k8s-guide-worker" in l for l in lines)
    svc = run_podnet("get", "svc", "-A", "-f", str(GUIDE_LAB), check=True).stdout
    assert "kube-dns     ClusterIP   10.96.0.10" in svc
    assert "53/UDP,53/TCP,9153/TCP" in svc
    nodes = run_podnet("get", "nodes", "-o", "wide", "-f", str(GUIDE_LAB), check=True).stdout
    assert "172.18.0.3" in nodes and "10.244.1.0/24" in nodes
    es = run_podnet("get", "endpointslices", "-f", str(GUIDE_LAB), check=True).stdout
    assert "ADDRESSTYPE" in es and "IPv4" in es


@pytest.mark.parametrize("selector, names", [
    ("app=web", {"web"}), ("app==web", {"web"}), ("app", {"web"}),
    ("app!=web", {"net-tshoot"}), ("!app", {"net-tshoot"}),
    ("app in (web,db)", {"web"}), ("app notin (web)", {"net-tshoot"}),   # set-based: were never matched
    ("app in (db)", set()), ("app=web,!app", set()),
])
def test_cli_get_label_selectors(selector, names):
    out = run_podnet("get", "pods", "-o", "name", "-l", selector, check=True).stdout
    workload = {line: next(w for w in ("web", "net-tshoot") if line.startswith(f"pod/{w}-"))
                for line in out.splitlines()}
    assert set(workload.values()) == names


@pytest.mark.parametrize("selector", ["app in (b", "=x", "a>x", "app=web,,x", "app in (w b)"])
def test_cli_get_bad_label_selector_is_one_line(selector):
    proc = run_podnet("get", "pods", "-l", selector)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith("error: --selector: ")


def test_help_teaches():
    out = run_podnet("--help", check=True).stdout
    assert "podnet get pods" in out
    out = run_podnet("get", "--help", check=True).stdout
    assert "Examples" in out


def test_demo_shows_decisions_routes_and_a_packet_walk():
    """`podnet demo` (the README's first command): the control plane's tables, a worker's
    routes and one packet from a pod there to the web Service and back."""
    proc = run_podnet("demo", check=True)
    out = proc.stdout
    for heading in ("$ podnet get nodes -A -o wide", "$ podnet get pods -A -o wide", "$ podnet get services -A",
                    "$ podnet render routes --node k8s-guide-worker",
                    "$ podnet trace --from pod/net-tshoot-4lgv2 --to svc/web:80 --seed 1"):
        assert heading in out
    assert "10.244.2.0/24 via 172.18.0.4 dev eth0" in out
    assert "DNAT: destination 10.107.164.13:80 ->" in out
    assert "reply received by the client socket 10.244.1.2:40000, from 10.107.164.13:80" in out
