"""calico beyond the guide's chapter: calico-ipam's blocks, the CNI operations, the
IPIP / VXLAN / CrossSubnet modes (routes, devices, traces with replies), masquerade
options and IPv6."""

import ipaddress
import subprocess

import pytest

import podnet.cni
from podnet.cluster import Cluster
from podnet.cni.base import node_conflist, pod_cni_env
from podnet.cni.calico import veth_name_for_workload
from podnet.cni.calico_ipam import Block, CalicoIPAM, dataplane_datastore, pod_handle
from podnet.cni.spec import invoke
from podnet.dataplane import build_dataplane
from podnet.errors import AllocationError, InputError
from podnet.linux import render
from podnet.linux.state import DataplaneState, Netns

from conftest import GUIDE_LAB, run_podnet
from helpers import (CONTROL, WORKER, WORKER2, assert_hops, guide_inputs, hops, host_veth, lab_name, tshoot,
                     wait_clean, walk, walk_one)

ip, net = ipaddress.ip_address, ipaddress.ip_network

RACKS = """
apiVersion: podnet.dev/v1alpha1
kind: PodnetConfig
cni: {plugin: calico, mode: MODE}
nodeNetwork:
  subnets:
  - {name: rack2, subnet: 172.19.0.0/16, nodes: [k8s-guide-worker2]}
"""


def lab(mode="bgp", *extra):
    return build_dataplane(Cluster.load([GUIDE_LAB, *extra], cni="calico", cni_mode=mode))


def web(dp, node):
    return next(p for p in dp.cluster.pods if p.name.startswith("web-") and p.node_name == node)


TUNNEL_HOPS = ("route", "neigh", "xmit", "ipip", "vxlan")


# ============================================================================ names

def test_veth_name_is_sha1_of_namespace_dot_pod():
    """The same digest `echo -n ns.pod | sha1sum | cut -b -11` gives (microk8s' calico scripts)."""
    out = subprocess.run("printf %s default.net-tshoot-4lgv2 | sha1sum", shell=True, capture_output=True,
                         text=True, check=True).stdout
    assert veth_name_for_workload("default", "net-tshoot-4lgv2") == "cali" + out[:11]
    assert len(veth_name_for_workload("kube-system", "a" * 200)) == 15       # fits IFNAMSIZ


# ============================================================================ calico-ipam

def test_blocks_are_claimed_in_pool_order_and_hand_out_their_first_free_address():
    cluster = Cluster.load([GUIDE_LAB], cni="calico")
    ipam = cluster.ipam
    assert isinstance(ipam, CalicoIPAM)
    # the first node to need an address gets the pool's first /26 (the control plane: coredns)
    assert [(str(b.cidr), b.host) for b in sorted(ipam.blocks.values(), key=lambda b: b.cidr)] == [
        ("10.244.0.0/26", CONTROL), ("10.244.0.64/26", WORKER), ("10.244.0.128/26", WORKER2)]
    for node in cluster.nodes:
        block = ipam.affine_blocks(node.name)[0]
        local = sorted(p.pod_ip for p in cluster.pods_on(node.name) if not p.host_network)
        assert local == [block.cidr.network_address + i for i in range(len(local))]
    # `podnet get pods -o wide --cni calico` shows them
    out = run_podnet("get", "pods", "-o", "wide", "--cni", "calico", check=True).stdout
    assert f" {tshoot_ip(cluster, WORKER)} " in out and "10.244.0.64 " in out


def tshoot_ip(cluster, node):
    return next(p.pod_ip for p in cluster.pods if p.name.startswith("net-tshoot-") and p.node_name == node)


def test_a_released_address_goes_to_the_end_of_the_block():
    block = Block.new(net("10.244.0.0/30"), "n1")
    got = [block.take(h) for h in ("a", "b", "c")]
    assert got == [ip("10.244.0.0"), ip("10.244.0.1"), ip("10.244.0.2")]
    block.release(ip("10.244.0.0"))
    assert block.take("d") == ip("10.244.0.3") and block.take("e") == ip("10.244.0.0")
    assert block.take("f") is None


FILL = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: fill, namespace: default}
spec:
  replicas: REPLICAS
  selector: {matchLabels: {app: fill}}
  template:
    metadata: {labels: {app: fill}}
    spec:
      nodeSelector: {kubernetes.io/hostname: k8s-guide-worker2}
      containers: [{name: c, image: x}]
---
apiVersion: podnet.dev/v1alpha1
kind: PodnetConfig
podSubnet: 10.244.0.0/27
nodeCIDRMaskSize: 29
cni: {plugin: calico, options: {blockSize: 30}}
"""


def test_a_full_node_claims_more_blocks_then_borrows_and_peers_route_the_borrowed_address(manifest):
    """A /27 pool in /30 blocks: worker2's 25 pods take six blocks, then borrow from the
    worker's block; BIRD on worker2 exports the borrowed /32, so peers route it to worker2."""
    dp = build_dataplane(Cluster.load([GUIDE_LAB, manifest("fill.yaml", FILL.replace("REPLICAS", "23"))]))
    ds = dp.cluster.ipam
    assert len(ds.affine_blocks(WORKER2)) == 6 and len(ds.affine_blocks(WORKER)) == 1
    worker_block = ds.affine_blocks(WORKER)[0].cidr
    borrowed = [p for p in dp.cluster.pods_on(WORKER2) if p.key in dp.pod_ns and p.pod_ip in worker_block]
    assert len(borrowed) == 1
    b = borrowed[0].pod_ip
    w2 = dp.cluster.node(WORKER2).internal_ip
    routes = render.ip_route(dp.node_netns(CONTROL)).splitlines()
    assert f"{b} via {w2} dev eth0 proto bird" in routes
    assert f"{worker_block} via {dp.cluster.node(WORKER).internal_ip} dev eth0 proto bird" in routes
    # the block's owner has the blackhole, and the more specific route to the borrower over it
    routes = render.ip_route(dp.node_netns(WORKER)).splitlines()
    assert f"blackhole {worker_block} proto bird" in routes and f"{b} via {w2} dev eth0 proto bird" in routes
    branch = walk_one(dp, f"pod/{tshoot(dp, WORKER).name}", f"pod/{borrowed[0].name}", "icmp", reply=False)
    assert branch.forward.outcome.result == "answered" and branch.forward.outcome.ns == dp.pod_ns[borrowed[0].key]


def test_an_exhausted_pool_is_an_error_naming_the_pod(manifest):
    with pytest.raises(AllocationError, match=r"Pod default/fill-.*status\.podIPs.*no free IPv4 address in the "
                                              r"Calico IP pool\(s\) 10\.244\.0\.0/27"):
        Cluster.load([GUIDE_LAB, manifest("fill.yaml", FILL.replace("REPLICAS", "26"))])


def test_block_size_is_checked(manifest):
    path = manifest("c.yaml", "apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n"
                              "cni: {plugin: calico, options: {blockSize: 8}}\n")
    with pytest.raises(InputError, match=r"PodnetConfig: cni\.options\.blockSize: IP pool 10\.244\.0\.0/16: "
                                         r"block size 8 must be"):
        Cluster.load([GUIDE_LAB, path])


RECORDED = """
apiVersion: v1
kind: Pod
metadata: {name: recorded, namespace: default}
spec: {nodeName: k8s-guide-worker, containers: [{name: c}]}
status: {podIP: 10.244.3.7, phase: Running}
---
apiVersion: v1
kind: Pod
metadata: {name: borrower, namespace: default}
spec: {nodeName: k8s-guide-worker2, containers: [{name: c}]}
status: {podIP: 10.244.3.9, phase: Running}
"""


def test_recorded_pod_ips_are_honoured(manifest):
    """A dump's pod IPs: the block of the first claims it for the pod's node, the worker's
    new pods fill that block around it; an address in another node's block is borrowed."""
    dp = lab("bgp", manifest("p.yaml", RECORDED))
    ds = dp.cluster.ipam
    assert [str(b.cidr) for b in ds.affine_blocks(WORKER)] == ["10.244.3.0/26"]
    new = sorted(p.pod_ip for p in dp.cluster.pods_on(WORKER) if p.key in dp.pod_ns and p.name != "recorded")
    assert new == [ip("10.244.3.0"), ip("10.244.3.1")]
    rec, bor = dp.cluster.pod("recorded"), dp.cluster.pod("borrower")
    assert [str(a) for a in dp.netns_of_pod(rec).links["eth0"].addresses] == ["10.244.3.7/32"]
    assert ds.ips_of(pod_handle(rec)) == [ip("10.244.3.7")]
    routes = render.ip_route(dp.node_netns(CONTROL)).splitlines()
    assert "10.244.3.0/26 via 172.18.0.3 dev eth0 proto bird" in routes
    assert "10.244.3.9 via 172.18.0.4 dev eth0 proto bird" in routes
    assert walk_one(dp, f"pod/{tshoot(dp, CONTROL).name}", "pod/borrower", "icmp", reply=False).forward.outcome.ns == \
        dp.pod_ns[bor.key]


def test_a_recorded_address_used_twice_is_an_error(manifest):
    path = manifest("p.yaml", RECORDED.replace("10.244.3.9", "10.244.3.7"))
    with pytest.raises(AllocationError, match=r"Pod default/borrower: status\.podIPs: address 10\.244\.3\.7 is "
                                              r"already assigned to k8s-pod-network\."):
        Cluster.load([GUIDE_LAB, path], cni="calico")


# ============================================================================ the CNI operations

def test_every_pod_passes_cni_check_and_del_releases_in_the_dataplane_only():
    dp = lab()
    for pod in dp.cluster.pods:
        if pod.key in dp.pod_ns:
            ctx = dp.contexts[pod.node_name]
            conflist = node_conflist(ctx)
            conflist.cni_version = "1.0.0"
            invoke(conflist, "CHECK", pod_cni_env(pod, dp.state.netns(dp.pod_ns[pod.key])), dp.state, ctx)
    pod = web(dp, WORKER)
    ctx, pod_ns = dp.contexts[WORKER], dp.state.netns(dp.pod_ns[pod.key])
    veth = host_veth(dp, pod)
    solution = podnet.cni.solution_for(dp.cluster.config)
    solution.runtime_del(ctx, pod, pod_ns)
    assert veth not in ctx.ns.links and f"{pod.pod_ip} dev" not in render.ip_route(ctx.ns)
    assert dataplane_datastore(dp).ips_of(pod_handle(pod)) == []
    assert dp.cluster.ipam.ips_of(pod_handle(pod)) == [pod.pod_ip]        # the cluster is not touched
    # a new sandbox gets the block's next unallocated address (the freed one went to the end)
    result = solution.runtime_add(ctx, pod, pod_ns, pin_ips=False)
    assert [str(i.address) for i in result.ips] == [f"{pod.pod_ip + 1}/32"]
    assert result.interfaces[0].name == veth and result.interfaces[0].mac == "ee:ee:ee:ee:ee:ee"


HOSTPORT = """
apiVersion: v1
kind: Pod
metadata: {name: hp, namespace: default}
spec:
  nodeName: k8s-guide-worker
  containers: [{name: web, image: nginx, ports: [{containerPort: 80, hostPort: 8080}]}]
"""


def test_host_ports_go_through_the_chained_portmap(manifest):
    dp = lab("bgp", manifest("hp.yaml", HOSTPORT))
    pod = dp.cluster.pod("hp")
    assert f"-j DNAT --to-destination {pod.pod_ip}:80" in dp.node_netns(WORKER).iptables
    branch = walk_one(dp, f"pod/{tshoot(dp, WORKER2).name}", f"{dp.cluster.node(WORKER).internal_ip}:8080")
    assert branch.forward.outcome.ns == dp.pod_ns[pod.key] and branch.reply.outcome.delivered


def test_calico_ipam_outside_a_cluster_uses_the_configured_pools():
    state = DataplaneState()
    host = state.add_netns(Netns("node1", kind="node", node="node1"))
    state.add_netns(Netns("pod1", kind="pod"))
    conf = {"cniVersion": "1.0.0", "name": "k8s-pod-network", "plugins": [
        {"type": "calico", "nodename": "node1", "ipam": {"type": "calico-ipam", "ipv4_pools": ["192.168.0.0/24"]}}]}
    env = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/pod1", "CNI_IFNAME": "eth0",
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p", "CNI_PATH": "/opt/cni/bin"}
    result = invoke(conf, "ADD", env, state, host)
    assert [str(i.address) for i in result.ips] == ["192.168.0.0/32"]
    assert "192.168.0.0 dev " + veth_name_for_workload("ns", "p") + " scope link" in render.ip_route(host)


# ============================================================================ modes

def test_ipip_mode_tunl0_and_routes():
    dp = lab("ipip")
    ds = dp.cluster.ipam
    for node in dp.cluster.nodes:
        ns = dp.node_netns(node.name)
        block = ds.affine_blocks(node.name)[0].cidr
        tunl0 = ns.links["tunl0"]
        # the tunnel address is the first one calico-node assigns, before any pod
        assert tunl0.kind == "ipip" and tunl0.mtu == 1480
        assert [str(a) for a in tunl0.addresses] == [f"{block.network_address}/32"]
        routes = render.ip_route(ns).splitlines()
        assert f"blackhole {block} proto bird" in routes
        for peer in dp.cluster.nodes:
            if peer.name != node.name:
                pb = ds.affine_blocks(peer.name)[0].cidr
                assert f"{pb} via {peer.internal_ip} dev tunl0 proto bird onlink" in routes
        assert '-A cali-POSTROUTING -o tunl0 -m comment --comment "cali:' in ns.iptables
        assert "-m addrtype ! --src-type LOCAL --limit-iface-out -m addrtype --src-type LOCAL -j MASQUERADE" \
            in ns.iptables
    # the pods' MTU leaves room for the outer header
    pod = tshoot(dp, WORKER)
    assert dp.netns_of_pod(pod).links["eth0"].mtu == 1480


def test_ipip_walk_and_reply():
    dp = lab("ipip")
    a, b = tshoot(dp, WORKER), web(dp, WORKER2)
    w, w2 = dp.cluster.node(WORKER), dp.cluster.node(WORKER2)
    na, nb = dp.pod_ns[a.key], dp.pod_ns[b.key]
    va, vb = host_veth(dp, a), host_veth(dp, b)
    branch = walk_one(dp, f"pod/{a.name}", f"pod/{b.name}:80")
    assert branch.forward.outcome.ns == nb and branch.forward.outcome.result == "delivered"
    assert_hops(hops(branch.forward, TUNNEL_HOPS), [
        (na, "route", f"via 169.254.1.1 dev eth0 src {a.pod_ip}"),
        (na, "neigh", "169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy_arp"),
        (na, "xmit", f"-> {va} in {WORKER}"),
        (WORKER, "route", f"forward: {b.pod_ip} from {a.pod_ip} via {w2.internal_ip} dev tunl0"),
        (WORKER, "ipip", f"tunl0: encapsulate IP-in-IP {w.internal_ip} -> {w2.internal_ip}"),
        (WORKER, "route", f"{w2.internal_ip} dev eth0"),
        (WORKER, "neigh", f"{w2.internal_ip} is-at"),
        (WORKER, "xmit", f"onto L2 segment kind -> {WORKER2} eth0"),
        (WORKER2, "route", f"local {w2.internal_ip}"),
        (WORKER2, "ipip", f"IP-in-IP from {w.internal_ip}: decapsulated by tunl0"),
        (WORKER2, "route", f"forward: {b.pod_ip} from {a.pod_ip} dev {vb} iif tunl0"),
        (WORKER2, "neigh", f"who-has {b.pod_ip} on {vb}"),
        (WORKER2, "xmit", f"out {vb} (veth) -> eth0 in {nb}"),
        (nb, "route", f"local {b.pod_ip}"),
    ])
    assert branch.reply.outcome.delivered and branch.reply.outcome.ns == na
    back = hops(branch.reply, TUNNEL_HOPS)
    assert back[1][1] == "neigh" and "proxy_arp" in back[1][2]
    assert (WORKER2, "ipip", f"tunl0: encapsulate IP-in-IP {w2.internal_ip} -> {w.internal_ip}") in back


def test_vxlan_mode_device_neighbours_fdb_and_routes():
    dp = lab("vxlan")
    ds = dp.cluster.ipam
    for node in dp.cluster.nodes:
        ns = dp.node_netns(node.name)
        block = ds.affine_blocks(node.name)[0].cidr
        vx = ns.links["vxlan.calico"]
        assert (vx.vxlan.vni, vx.vxlan.dstport, vx.vxlan.local, vx.vxlan.dev, vx.vxlan.learning, vx.mtu) == \
            (4096, 4789, node.internal_ip, "eth0", False, 1450)
        assert [str(a) for a in vx.addresses] == [f"{block.network_address}/32"]
        routes = render.ip_route(ns).splitlines()
        assert f"blackhole {block} proto 80" in routes
        neigh, fdb = render.ip_neigh(ns).splitlines(), render.bridge_fdb(ns).splitlines()
        for peer in dp.cluster.nodes:
            if peer.name == node.name:
                continue
            pvx = dp.node_netns(peer.name).links["vxlan.calico"]
            tip = pvx.addresses[0].ip
            pb = ds.affine_blocks(peer.name)[0].cidr
            assert f"{pb} via {tip} dev vxlan.calico proto 80 onlink" in routes
            assert f"{tip} dev vxlan.calico lladdr {pvx.mac} PERMANENT" in neigh
            assert f"{pvx.mac} dev vxlan.calico dst {peer.internal_ip} self permanent" in fdb
        assert not any("proto bird" in r for r in routes)
    assert dp.netns_of_pod(tshoot(dp, WORKER)).links["eth0"].mtu == 1450


def test_vxlan_walk_and_reply():
    dp = lab("vxlan")
    a, b = tshoot(dp, WORKER), web(dp, WORKER2)
    w, w2 = dp.cluster.node(WORKER), dp.cluster.node(WORKER2)
    na, nb = dp.pod_ns[a.key], dp.pod_ns[b.key]
    va, vb = host_veth(dp, a), host_veth(dp, b)
    peer_vx = dp.node_netns(WORKER2).links["vxlan.calico"]
    branch = walk_one(dp, f"pod/{a.name}", f"pod/{b.name}:80")
    assert_hops(hops(branch.forward, TUNNEL_HOPS), [
        (na, "route", f"via 169.254.1.1 dev eth0 src {a.pod_ip}"),
        (na, "neigh", "169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy_arp"),
        (na, "xmit", f"-> {va} in {WORKER}"),
        (WORKER, "route", f"via {peer_vx.addresses[0].ip} dev vxlan.calico"),
        (WORKER, "neigh", f"{peer_vx.addresses[0].ip} dev vxlan.calico lladdr {peer_vx.mac} PERMANENT"),
        (WORKER, "vxlan", f"fdb {peer_vx.mac} dev vxlan.calico dst {w2.internal_ip} self permanent; "
                          f"encapsulate VNI 4096"),
        (WORKER, "route", f"{w2.internal_ip} dev eth0"),
        (WORKER, "neigh", f"{w2.internal_ip} is-at"),
        (WORKER, "xmit", f"onto L2 segment kind -> {WORKER2} eth0"),
        (WORKER2, "route", f"local {w2.internal_ip}"),
        (WORKER2, "vxlan", "UDP 4789 VNI 4096: decapsulated by vxlan.calico"),
        (WORKER2, "route", f"forward: {b.pod_ip} from {a.pod_ip} dev {vb} iif vxlan.calico"),
        (WORKER2, "neigh", f"who-has {b.pod_ip} on {vb}"),
        (WORKER2, "xmit", f"out {vb} (veth) -> eth0 in {nb}"),
        (nb, "route", f"local {b.pod_ip}"),
    ])
    assert branch.forward.outcome.ns == nb and branch.reply.outcome.delivered and branch.reply.outcome.ns == na
    own_vx = dp.node_netns(WORKER).links["vxlan.calico"]
    assert any(t == f"{own_vx.addresses[0].ip} dev vxlan.calico lladdr {own_vx.mac} PERMANENT"
               for ns, s, t in hops(branch.reply, TUNNEL_HOPS) if ns == WORKER2)


def test_node_to_a_pod_behind_vxlan_is_masqueraded_once():
    """Node -> ClusterIP -> a pod on another node: the source is the node's tunnel address
    (the kernel picks it for vxlan.calico); kube-proxy's 0x4000 mark stays on the sending
    node, so the receiving node does not masquerade the decapsulated packet again."""
    dp = lab("vxlan")
    remote = web(dp, WORKER2)
    tunnel = dp.node_netns(WORKER).links["vxlan.calico"].addresses[0].ip
    result = walk(dp, f"node/{WORKER}", "svc/web:80")
    branch = next(b for b in result.branches if b.forward.outcome.ns == dp.pod_ns[remote.key])
    assert branch.forward.outcome.packet.src == tunnel
    assert not [h for h in branch.forward.hops if h.ns == WORKER2 and h.stage == "nat"]
    assert branch.reply.outcome.delivered


@pytest.mark.parametrize("mode,device", [("ipip-crosssubnet", "tunl0"), ("vxlan-crosssubnet", "vxlan.calico")])
def test_cross_subnet_encapsulates_only_across_subnets(manifest, mode, device):
    dp = build_dataplane(Cluster.load([GUIDE_LAB, manifest("racks.yaml", RACKS.replace("MODE", mode))]))
    ds = dp.cluster.ipam
    cp, w2 = dp.cluster.node(CONTROL), dp.cluster.node(WORKER2)
    assert str(w2.internal_ip).startswith("172.19.")
    proto = "bird" if mode.startswith("ipip") else "80"
    routes = render.ip_route(dp.node_netns(WORKER)).splitlines()
    cp_block, w2_block = ds.affine_blocks(CONTROL)[0].cidr, ds.affine_blocks(WORKER2)[0].cidr
    assert f"{cp_block} via {cp.internal_ip} dev eth0 proto {proto}" in routes          # same subnet: direct
    via = w2.internal_ip if device == "tunl0" else dp.node_netns(WORKER2).links[device].addresses[0].ip
    assert f"{w2_block} via {via} dev {device} proto {proto} onlink" in routes          # other subnet: tunnel
    a, b = tshoot(dp, WORKER), web(dp, WORKER2)
    branch = walk_one(dp, f"pod/{a.name}", f"pod/{b.name}:80")
    assert branch.forward.outcome.ns == dp.pod_ns[b.key] and branch.reply.outcome.delivered
    encap = [h for h in branch.forward.hops if h.stage in ("ipip", "vxlan") and h.ns == WORKER]
    assert len(encap) == 1
    # the router between the subnets forwards the tunnel packet without NAT
    assert not [h for h in branch.forward.hops if h.ns == "gateway" and h.stage == "nat"]
    decap = [h for h in branch.forward.hops if h.stage in ("ipip", "vxlan") and h.ns == WORKER2]
    assert decap and "decapsulated" in decap[0].text
    # to the control plane (same subnet) nothing is encapsulated
    branch = walk_one(dp, f"pod/{a.name}", f"pod/{tshoot(dp, CONTROL).name}", "icmp", reply=False)
    assert branch.forward.outcome.result == "answered"
    assert not [h for h in branch.forward.hops if h.stage in ("ipip", "vxlan")]


def test_bgp_across_subnets_goes_to_the_router(manifest):
    """Plain BGP: BIRD resolves a peer in another subnet through the router, which knows no pod
    routes; that is what CrossSubnet encapsulation is for."""
    dp = build_dataplane(Cluster.load([GUIDE_LAB, manifest("racks.yaml", RACKS.replace("MODE", "bgp"))]))
    block = dp.cluster.ipam.affine_blocks(WORKER2)[0].cidr
    assert f"{block} via 172.18.0.1 dev eth0 proto bird" in render.ip_route(dp.node_netns(WORKER)).splitlines()
    branch = walk_one(dp, f"pod/{tshoot(dp, WORKER).name}", f"pod/{web(dp, WORKER2).name}:80", reply=False)
    assert not branch.forward.outcome.delivered


# ============================================================================ masquerade, IPv6

def test_nat_outgoing_off_keeps_pod_sources(manifest):
    path = manifest("c.yaml", "apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n"
                              "cni: {plugin: calico, options: {natOutgoing: false}}\n")
    dp = build_dataplane(Cluster.load([GUIDE_LAB, path]))
    ns = dp.node_netns(WORKER)
    assert "add cali40masq-ipam-pools" not in ns.ipsets and "add cali40all-ipam-pools 10.244.0.0/16" in ns.ipsets
    assert "-A cali-nat-outgoing" not in ns.iptables
    pod = tshoot(dp, WORKER)
    branch = walk_one(dp, f"pod/{pod.name}", "1.1.1.1:443", reply=False)
    assert not [h for h in branch.forward.hops if h.ns == WORKER and h.stage == "nat"]


def test_dual_stack_pods_get_both_families(manifest):
    kind = manifest("kind.yaml", (GUIDE_LAB / "kind.yaml").read_text().replace(
        "name: k8s-guide\n", "name: k8s-guide\nnetworking: {ipFamily: dual}\n"))
    dp = build_dataplane(Cluster.load([kind, GUIDE_LAB / "tshoot.yaml", GUIDE_LAB / "web.yaml"], cni="calico"))
    a, b = tshoot(dp, WORKER), web(dp, WORKER2)
    ns = dp.netns_of_pod(a)
    v6 = next(x for x in a.pod_ips if x.version == 6)
    assert f"{v6}/128" in [str(x) for x in ns.links["eth0"].addresses]
    assert "default via fe80::ecee:eeff:feee:eeee dev eth0 metric 1024" in render.ip_route(ns, family=6).splitlines()
    block6 = next(bk.cidr for bk in dp.cluster.ipam.affine_blocks(WORKER2) if bk.cidr.version == 6)
    assert block6.prefixlen == 122
    w2 = dp.cluster.node(WORKER2).internal_ip_of(6)
    assert f"{block6} via {w2} dev eth0 proto bird metric 1024" in \
        render.ip_route(dp.node_netns(WORKER), family=6).splitlines()
    b6 = next(x for x in b.pod_ips if x.version == 6)
    branch = walk_one(dp, f"pod/{a.name}", f"[{b6}]:80")
    assert branch.forward.outcome.ns == dp.pod_ns[b.key] and branch.reply.outcome.delivered
    assert "fe80::ecee:eeff:feee:eeee is-at ee:ee:ee:ee:ee:ee" in hops(branch.forward, TUNNEL_HOPS)[1][2]


# ============================================================================ for real (root, netns)

def _lab_up(name, tmp_path, mode):
    from podnet.lab.lab import Lab
    lab = Lab(name)
    lab.up([str(guide_inputs(tmp_path / "in"))], cni="calico", cni_mode=mode, proxy_mode="iptables")
    return lab


@pytest.mark.netns
def test_for_real_the_kernel_answers_169_254_1_1_and_carries_vxlan(tmp_path):
    """The kernel does what the model says: the pod's ARP for 169.254.1.1 is answered by proxy
    ARP with ee:ee:ee:ee:ee:ee, and a request crosses vxlan.calico to a pod on another node."""
    from podnet.lab import client
    from podnet.lab.lab import Lab
    name = lab_name("c")
    lab = Lab(name)
    try:
        lab = _lab_up(name, tmp_path, "vxlan")
        _, dp = lab.render(lab.record["inputs"], lab.record["overrides"])
        a, b = tshoot(dp, WORKER), web(dp, WORKER2)
        pod_ns = lab.kname(dp.pod_ns[a.key])
        r = client.request(pod_ns, str(b.pod_ip), 80, http=True)
        assert (r.status, r.server, r.client) == ("ok", b.key, str(a.pod_ip)), r
        neigh = subprocess.run(["ip", "netns", "exec", pod_ns, "ip", "neigh", "show", "169.254.1.1"],
                               capture_output=True, text=True, timeout=30).stdout
        assert neigh.startswith("169.254.1.1 dev eth0 lladdr ee:ee:ee:ee:ee:ee"), neigh
        routes = subprocess.run(["ip", "netns", "exec", lab.kname(WORKER), "ip", "route"],
                                capture_output=True, text=True, timeout=30).stdout
        block = dp.cluster.ipam.affine_blocks(WORKER)[0].cidr
        assert f"blackhole {block} proto 80" in routes
        assert f"{b.pod_ip} " not in routes and "dev vxlan.calico proto 80 onlink" in routes
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []


@pytest.mark.netns
def test_for_real_ipip_needs_the_ipip_link_type(tmp_path):
    """On a kernel without ipip the lab refuses calico's IPIP modes with a message that says so,
    and leaves nothing behind (skipped where the kernel has ipip)."""
    from podnet.lab.apply import LabError
    from podnet.lab.lab import Lab
    name = lab_name("i")
    lab = Lab(name)
    try:
        try:
            lab = _lab_up(name, tmp_path, "ipip")
        except LabError as e:
            assert "this kernel lacks the ipip link type" in str(e) and "calico bgp or vxlan" in str(e)
            assert wait_clean(name, 5) == []
            return
        pytest.skip("this kernel has the ipip link type")
    finally:
        if lab.exists():
            lab.down()
