"""The guide's kindnet chapter (reference/guide/cni-kindnet.md) on podnet's build of its lab:
the shapes its commands show, and "a day in the life of a packet" as `podnet trace` walks it.
The lab runs kube-proxy in iptables mode.
"""

import ipaddress
import re

import pytest

from podnet.cluster import Cluster
from podnet.cni.spec import NetworkConfigList
from podnet.dataplane import build_dataplane
from podnet.linux import render
from podnet.linux.routing import route_get

from conftest import GUIDE_LAB, REFERENCE
from helpers import CONTROL, WORKER, WORKER2, assert_hops, hops, host_veth, tshoot, walk_one


@pytest.fixture(scope="module")
def lab():
    return build_dataplane(Cluster.load([GUIDE_LAB]))


def test_the_chapter_is_the_reference():
    text = (REFERENCE / "guide" / "cni-kindnet.md").read_text()
    assert "10.244.2.8 dev vetha1079faf scope host" in text and "local 10.244.0.5 dev lo" in text


def test_conflist_ptp_host_local_portmap(lab):
    for node in lab.cluster.nodes:
        ns = lab.node_netns(node.name)
        conf = NetworkConfigList.parse(ns.files["/etc/cni/net.d/10-kindnet.conflist"])
        assert conf.types == ["ptp", "portmap"] and conf.name == "kindnet"
        ptp = conf.plugins[0]
        assert ptp["ipam"]["type"] == "host-local"
        assert ptp["ipam"]["ranges"] == [[{"subnet": str(c)} for c in node.pod_cidrs]]
        assert conf.plugins[1]["capabilities"] == {"portMappings": True}


def test_pod_ip_and_default_route(lab):
    """1. Pod IP and default route: a /24 on eth0, everything via the first IP of the PodCIDR."""
    for node in lab.cluster.nodes:
        pod = tshoot(lab, node.name)
        ns = lab.netns_of_pod(pod)
        cidr = node.pod_cidrs[0]
        gw = cidr.network_address + 1
        eth0 = [line for line in render.ip_br_addr(ns, lab.state, family=4).splitlines() if line.startswith("eth0")]
        assert len(eth0) == 1 and re.fullmatch(rf"eth0@if\d+ +UP +{pod.pod_ip}/24", eth0[0])
        assert render.ip_route(ns).splitlines() == [
            f"default via {gw} dev eth0",
            f"{cidr} via {gw} dev eth0 src {pod.pod_ip}",
            f"{gw} dev eth0 scope link src {pod.pod_ip}"]


def test_node_routing_table(lab):
    """2. One /32 host route per local pod, one /24 per peer node via its node IP."""
    for node in lab.cluster.nodes:
        ns = lab.node_netns(node.name)
        local = sorted((p for p in lab.cluster.pods_on(node.name) if p.key in lab.pod_ns),
                       key=lambda p: int(p.pod_ip))
        assert local
        peers = sorted((n for n in lab.cluster.nodes if n.name != node.name), key=lambda n: n.pod_cidrs[0])
        routes = ([(p.pod_cidrs[0], f"{p.pod_cidrs[0]} via {p.internal_ip} dev eth0") for p in peers]
                  + [(ipaddress.ip_network(p.pod_ip), f"{p.pod_ip} dev {host_veth(lab, p)} scope host") for p in local])
        expected = ["default via 172.18.0.1 dev eth0"] + [line for _, line in sorted(routes)]
        shown = [line for line in render.ip_route(ns).splitlines() if "proto kernel" not in line]
        assert shown == expected
        assert all(re.fullmatch(r"veth[0-9a-f]{8}", host_veth(lab, p)) for p in local)


def test_every_host_veth_holds_the_gateway(lab):
    """3. PodCIDR gateway: `ip -br -4 addr show | grep veth` shows the node's .1/32 on every veth."""
    for node in lab.cluster.nodes:
        gw = node.pod_cidrs[0].network_address + 1
        veths = [line for line in render.ip_br_addr(lab.node_netns(node.name), lab.state, family=4).splitlines()
                 if line.startswith("veth")]
        assert veths and all(re.fullmatch(rf"veth[0-9a-f]{{8}}@if\d+ +UP +{gw}/32", line) for line in veths)


def test_host_local_state_matches_the_pods(lab):
    for node in lab.cluster.nodes:
        ns = lab.node_netns(node.name)
        files = {p.rsplit("/", 1)[1]: v for p, v in ns.files.items()
                 if p.startswith("/run/cni-ipam-state/kindnet/") and p.rsplit("/", 1)[1][0].isdigit()}
        local = [p for p in lab.cluster.pods_on(node.name) if p.key in lab.pod_ns]
        assert set(files) == {str(p.pod_ip) for p in local}


def test_day_in_the_life_of_a_packet(lab):
    """Pod-1 (net-tshoot on the worker) talks to Pod-3 (net-tshoot on the control plane)."""
    pod1, pod3 = tshoot(lab, WORKER), tshoot(lab, CONTROL)
    worker, control = lab.cluster.node(WORKER), lab.cluster.node(CONTROL)
    gw1 = worker.pod_cidrs[0].network_address + 1
    gw3 = control.pod_cidrs[0].network_address + 1
    veth3 = host_veth(lab, pod3)
    dst = pod3.pod_ip
    # the four `ip route get` of the chapter
    assert route_get(lab.netns_of_pod(pod1), dst).text() == f"{dst} via {gw1} dev eth0 src {pod1.pod_ip} uid 0"
    assert route_get(lab.node_netns(WORKER), dst).text() == \
        f"{dst} via {control.internal_ip} dev eth0 src {worker.internal_ip} uid 0"
    assert route_get(lab.node_netns(CONTROL), dst).text() == f"{dst} dev {veth3} src {gw3} uid 0"
    assert route_get(lab.netns_of_pod(pod3), dst).text() == f"local {dst} dev lo src {dst} uid 0"

    branch = walk_one(lab, f"pod/{pod1.name}", f"pod/{pod3.name}", "icmp")
    leg = branch.forward
    assert leg.outcome.result == "answered" and leg.outcome.ns == lab.pod_ns[pod3.key]
    assert_hops(hops(leg, ("route", "xmit")), [
        (lab.pod_ns[pod1.key], "route", f"{dst} via {gw1} dev eth0"),                       # 1. pod route via .1
        (lab.pod_ns[pod1.key], "xmit", f"out eth0 (veth) -> {host_veth(lab, pod1)} in {WORKER}"),
        (WORKER, "route", f"via {control.internal_ip} dev eth0"),                           # 2. the worker's route
        (WORKER, "xmit", f"onto L2 segment kind -> {CONTROL} eth0"),                        # 3. the kind bridge
        (CONTROL, "route", f"{dst} from {pod1.pod_ip} dev {veth3}"),                        # 4. to the pod's veth
        (CONTROL, "xmit", f"out {veth3} (veth) -> eth0 in {lab.pod_ns[pod3.key]}"),
        (lab.pod_ns[pod3.key], "route", f"local {dst}"),                                    # 5. local delivery
    ])
    # the reply comes back the same way
    assert branch.reply is None or branch.reply.outcome.delivered


def test_intra_node_pod_to_pod_goes_via_the_gateway(lab):
    """The chapter's note: even neighbours in the PodCIDR are reached through .1, no bridge, no ARP for peers."""
    pods = [p for p in lab.cluster.pods_on(WORKER2) if p.key in lab.pod_ns]
    a, b = pods[0], pods[1]
    gw = lab.cluster.node(WORKER2).pod_cidrs[0].network_address + 1
    assert route_get(lab.netns_of_pod(a), b.pod_ip).gateway == gw
    assert ipaddress.ip_address(gw) in lab.cluster.node(WORKER2).pod_cidrs[0]
