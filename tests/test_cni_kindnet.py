"""kindnet through the CNI: the runtime's ADD/CHECK/DEL on a built cluster, hostPorts,
recorded pod IPs, and a solution built on the bridge plugin the way flannel would be."""

import ipaddress

import pytest

import podnet.cni
from podnet.cluster import Cluster
from podnet.cni.base import CNISolution, node_conflist, pod_capability_args, pod_cni_env
from podnet.cni.plugins.host_local import reserved_addresses
from podnet.cni.spec import CNIError, Code, cache_path, invoke
from podnet.dataplane import build_dataplane
from podnet.dataplane.topology import container_id
from podnet.linux import render
from podnet.linux.netfilter import Packet
from podnet.sim.walk import Walker

from conftest import GUIDE_LAB

ip = ipaddress.ip_address
WORKER = "k8s-guide-worker"

HOSTPORT_POD = """
apiVersion: v1
kind: Pod
metadata:
  name: hp
  namespace: default
  annotations: {kubernetes.io/ingress-bandwidth: 10M}
spec:
  nodeName: k8s-guide-worker
  containers:
  - name: web
    image: nginx
    ports:
    - {containerPort: 80, hostPort: 8080}
    - {containerPort: 53, hostPort: 5353, protocol: UDP}
"""


@pytest.fixture(scope="module")
def lab():
    return build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="none"))


def test_every_pod_passes_cni_check(lab):
    for pod in lab.cluster.pods:
        if pod.key not in lab.pod_ns:
            continue
        ctx = lab.contexts[pod.node_name]
        env = pod_cni_env(pod, lab.state.netns(lab.pod_ns[pod.key]))
        conflist = node_conflist(ctx)
        # kindnet writes a 0.3.1 list: CHECK came with 0.4.0
        with pytest.raises(CNIError) as e:
            invoke(conflist, "CHECK", env, lab.state, ctx)
        assert e.value.code == Code.INCOMPATIBLE_VERSION
        conflist.cni_version = "1.0.0"
        invoke(conflist, "CHECK", env, lab.state, ctx)
        assert cache_path("kindnet", container_id(pod), "eth0") in ctx.ns.files


def test_runtime_del_undoes_the_add():
    dp = build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="none"))
    pod = next(p for p in dp.cluster.pods_on(WORKER) if p.name.startswith("web-"))
    ctx, pod_ns = dp.contexts[WORKER], dp.state.netns(dp.pod_ns[pod.key])
    veth = pod_ns.links["eth0"].peer[1]
    solution = podnet.cni.solution_for(dp.cluster.config)
    solution.runtime_del(ctx, pod, pod_ns)
    assert veth not in ctx.ns.links and f"{pod.pod_ip} dev" not in render.ip_route(ctx.ns)
    assert str(pod.pod_ip) not in reserved_addresses(ctx.ns, "kindnet", "/run/cni-ipam-state")
    assert cache_path("kindnet", container_id(pod), "eth0") not in ctx.ns.files
    assert not pod_ns.links["lo"].up
    solution.runtime_del(ctx, pod, pod_ns)          # DEL twice is fine


def test_host_ports_get_portmap_rules(manifest):
    path = manifest("hp.yaml", HOSTPORT_POD)
    dp = build_dataplane(Cluster.load([GUIDE_LAB, path], proxy_mode="none"))
    pod = dp.cluster.pod("hp")
    text = dp.node_netns(WORKER).iptables
    assert f"-j DNAT --to-destination {pod.pod_ip}:80" in text
    assert f"-p udp -m udp --dport 5353 -j DNAT --to-destination {pod.pod_ip}:53" in text
    assert "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT" in text
    assert "CNI-HOSTPORT" not in dp.node_netns("k8s-guide-worker2").iptables
    assert pod_capability_args(pod) == {
        "portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                         {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}],
        "bandwidth": {"ingressRate": 10_000_000, "ingressBurst": 0xFFFFFFFF}}


def test_host_port_reaches_the_pod(manifest):
    pytest.importorskip("podnet.linux.iptables")
    path = manifest("hp.yaml", HOSTPORT_POD)
    dp = build_dataplane(Cluster.load([GUIDE_LAB, path], proxy_mode="none"))
    pod, node = dp.cluster.pod("hp"), dp.cluster.node(WORKER)
    client = next(p for p in dp.cluster.pods_on("k8s-guide-worker2") if p.name.startswith("net-tshoot"))
    outcome = Walker(dp.state).send(dp.pod_ns[client.key],
                                    Packet(ip("0.0.0.0"), node.internal_ip, "tcp", 40000, 8080))
    assert outcome.delivered and outcome.ns == dp.pod_ns[pod.key] and outcome.packet.dport == 80


def test_recorded_pod_ip_is_kept(manifest):
    path = manifest("p.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: recorded, namespace: default}
        spec: {nodeName: k8s-guide-worker, containers: [{name: c}]}
        status: {podIP: 10.244.1.77, phase: Running}
        """)
    dp = build_dataplane(Cluster.load([GUIDE_LAB, path], proxy_mode="none"))
    pod = dp.cluster.pod("recorded")
    assert str(pod.pod_ip) == "10.244.1.77"
    ns = dp.state.netns(dp.pod_ns[pod.key])
    assert [str(a) for a in ns.links["eth0"].addresses] == ["10.244.1.77/24"]
    owners = reserved_addresses(dp.node_netns(WORKER), "kindnet", "/run/cni-ipam-state")
    assert owners["10.244.1.77"] == container_id(pod)
    assert set(owners) == {str(p.pod_ip) for p in dp.cluster.pods_on(WORKER) if p.key in dp.pod_ns}


# ---------------------------------------------------------------- a solution on the bridge plugin

class BridgeSolution(CNISolution):
    """What flannel's CNI side amounts to: a bridge network with host-local over the node's PodCIDR."""
    name = "test-bridge"
    conflist_name = "10-bridge.conflist"

    def conflist(self, ctx):
        return {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
            {"type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": str(c)}] for c in ctx.node.pod_cidrs]}},
            {"type": "portmap", "capabilities": {"portMappings": True}}]}

    def setup_node(self, ctx):
        self.write_conflist(ctx)

    def add_pod(self, ctx, pod, pod_ns):
        self.runtime_add(ctx, pod, pod_ns)


def test_a_bridge_solution(monkeypatch):
    monkeypatch.setitem(podnet.cni.SOLUTIONS, "kindnet", f"{__name__}:BridgeSolution")
    dp = build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="none"))
    node = dp.cluster.node(WORKER)
    ns = dp.node_netns(WORKER)
    assert [str(a) for a in ns.links["cni0"].addresses] == [f"{node.pod_cidrs[0].network_address + 1}/24"]
    pods = [p for p in dp.cluster.pods_on(WORKER) if p.key in dp.pod_ns]
    for pod in pods:            # the control plane's addresses, handed out by host-local
        pod_ns = dp.state.netns(dp.pod_ns[pod.key])
        assert [str(a.ip) for a in pod_ns.links["eth0"].addresses] == [str(pod.pod_ip)]
        assert ns.links[pod_ns.links["eth0"].peer[1]].master == "cni0"
    outcome = Walker(dp.state).send(dp.pod_ns[pods[0].key], Packet(ip("0.0.0.0"), pods[1].pod_ip, "icmp",
                                                                   icmp_type=8))
    assert outcome.result == "answered" and outcome.ns == dp.pod_ns[pods[1].key]
