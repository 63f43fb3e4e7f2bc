"""The guide's calico chapter (reference/guide/cni-calico.md) on podnet's build of its lab:
the listings the chapter shows, reproduced, and "a day in the life of a packet" as
`podnet trace` walks it, with the reply.

The chapter's lab runs calico in BGP mode (BIRD routes, no encapsulation); the other
modes are in test_cni_calico.py.
"""

import ipaddress
import re

import pytest

from podnet.cluster import Cluster
from podnet.cni.calico import rule_hashes, FelixRule, veth_name_for_workload
from podnet.cni.spec import NetworkConfigList
from podnet.dataplane import build_dataplane
from podnet.linux import render
from podnet.linux.ipset import IpsetStore
from podnet.linux.routing import route_get

from conftest import GUIDE_LAB, REFERENCE
from helpers import CONTROL, WORKER, WORKER2, assert_hops, hops, host_veth, tshoot, walk, walk_one

CHAPTER = (REFERENCE / "guide" / "cni-calico.md").read_text()


@pytest.fixture(scope="module")
def lab():
    return build_dataplane(Cluster.load([GUIDE_LAB], cni="calico"))


def local_pods(dp, node: str):
    return sorted((p for p in dp.cluster.pods_on(node) if p.key in dp.pod_ns), key=lambda p: int(p.pod_ip))


def test_the_chapter_is_the_reference():
    assert "blackhole 10.244.190.0/24 proto bird" in CHAPTER and "cali:flqWnvo8yq4ULQLa" in CHAPTER


def test_felix_rule_hashes_are_the_chapters():
    """The chapter's `iptables -t nat -vnL` comments are Felix's rule hashes; podnet computes the same."""
    shown = dict(re.findall(r"(cali-[\w-]+) all -- .*?/\* cali:([\w-]{16}) \*/", CHAPTER))
    assert shown == {"cali-POSTROUTING": "O3lYWMrLQYEMJtB5", "cali-fip-snat": "Z-c7XtVd2Bq7s_hA",
                     "cali-nat-outgoing": "nYKhEzDlr11Jccal"}
    assert rule_hashes("POSTROUTING", [FelixRule(action="--jump cali-POSTROUTING")]) == [shown["cali-POSTROUTING"]]
    assert rule_hashes("cali-POSTROUTING", [FelixRule(action="--jump cali-fip-snat"),
                                            FelixRule(action="--jump cali-nat-outgoing")]) == \
        [shown["cali-fip-snat"], shown["cali-nat-outgoing"]]
    masq = re.search(r"MASQUERADE all .*?/\* cali:([\w-]{16}) \*/", CHAPTER)[1]
    assert rule_hashes("cali-nat-outgoing", [FelixRule(
        "-m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst",
        "--jump MASQUERADE --random-fully")]) == [masq]


def test_conflist_calico_ipam_portmap_bandwidth(lab):
    for node in lab.cluster.nodes:
        conf = NetworkConfigList.parse(lab.node_netns(node.name).files["/etc/cni/net.d/10-calico.conflist"])
        assert conf.name == "k8s-pod-network" and conf.types == ["calico", "portmap", "bandwidth"]
        assert conf.plugins[0]["ipam"] == {"type": "calico-ipam"} and conf.plugins[0]["nodename"] == node.name


def test_pod_ip_and_default_route(lab):
    """1. `ip -4 -br addr show dev eth0` is the pod IP as a /32; the default route points at 169.254.1.1."""
    for node in lab.cluster.nodes:
        pod = tshoot(lab, node.name)
        ns = lab.netns_of_pod(pod)
        eth0 = [l for l in render.ip_br_addr(ns, lab.state, family=4).splitlines() if l.startswith("eth0")]
        assert len(eth0) == 1 and re.fullmatch(rf"eth0@if\d+ +UP +{pod.pod_ip}/32", eth0[0])
        assert render.ip_route(ns).splitlines() == ["default via 169.254.1.1 dev eth0",
                                                    "169.254.1.1 dev eth0 scope link"]


def test_every_veth_answers_for_169_254_1_1_with_ee_ee(lab):
    """`ip neigh` in the pod: 169.254.1.1 is ee:ee:ee:ee:ee:ee, the MAC of every host-side veth,
    which has no IP and proxy_arp=1; its name is cali + sha1("<namespace>.<pod>")[:11]."""
    for node in lab.cluster.nodes:
        ns = lab.node_netns(node.name)
        for pod in local_pods(lab, node.name):
            name = host_veth(lab, pod)
            assert name == veth_name_for_workload(pod.namespace, pod.name) and re.fullmatch(r"cali[0-9a-f]{11}", name)
            link = ns.links[name]
            assert link.mac == "ee:ee:ee:ee:ee:ee" and not link.addresses
            assert ns.sysctls[f"net.ipv4.conf.{name}.proxy_arp"] == "1"
            assert ns.sysctls[f"net.ipv4.conf.{name}.forwarding"] == "1"
        veths = [l for l in render.ip_br_addr(ns, lab.state, family=4).splitlines() if l.startswith("cali")]
        assert veths and all(re.fullmatch(r"cali[0-9a-f]{11}@if\d+ +UP", l) for l in veths)


def test_node_routing_table(lab):
    """2. Per peer one BIRD route for its block via its node IP; the local block as a blackhole;
    a /32 scope-link route per local pod, listed before the blackhole when it holds the block's
    first address (as in the chapter's listing)."""
    ds = lab.cluster.ipam
    for node in lab.cluster.nodes:
        blocks = ds.affine_blocks(node.name)
        assert [b.cidr.prefixlen for b in blocks] == [26]
        own = blocks[0].cidr
        routes = [((own.network_address, -26), f"blackhole {own} proto bird")]
        for peer in lab.cluster.nodes:
            if peer.name != node.name:
                for b in ds.affine_blocks(peer.name):
                    routes.append(((b.cidr.network_address, -26), f"{b.cidr} via {peer.internal_ip} dev eth0 proto bird"))
        for p in local_pods(lab, node.name):
            assert p.pod_ip in own
            routes.append(((p.pod_ip, -32), f"{p.pod_ip} dev {host_veth(lab, p)} scope link"))
        expected = ["default via 172.18.0.1 dev eth0"] + [line for _, line in sorted(routes)] + \
                   [f"172.18.0.0/16 dev eth0 proto kernel scope link src {node.internal_ip}"]
        assert render.ip_route(lab.node_netns(node.name)).splitlines() == expected
    # the first pod of a block holds its .0, and its route comes first
    cp = render.ip_route(lab.node_netns(CONTROL)).splitlines()
    block = ds.affine_blocks(CONTROL)[0].cidr
    assert cp[1].startswith(f"{block.network_address} dev cali") and cp[2] == f"blackhole {block} proto bird"


def test_day_in_the_life_of_a_packet(lab):
    """Pod-1 (net-tshoot on the worker) pings Pod-3 (net-tshoot on the control plane)."""
    pod1, pod3 = tshoot(lab, WORKER), tshoot(lab, CONTROL)
    worker, control = lab.cluster.node(WORKER), lab.cluster.node(CONTROL)
    veth1, veth3 = host_veth(lab, pod1), host_veth(lab, pod3)
    ns1, ns3 = lab.pod_ns[pod1.key], lab.pod_ns[pod3.key]
    dst = pod3.pod_ip
    block3 = lab.cluster.ipam.affine_blocks(CONTROL)[0].cidr
    # 1. the pod's route lookup; 3. and 4. the nodes' fibmatch
    assert route_get(lab.netns_of_pod(pod1), dst).text() == f"{dst} via 169.254.1.1 dev eth0 src {pod1.pod_ip} uid 0"
    assert route_get(lab.node_netns(WORKER), dst).route is not None
    assert render.route_line(route_get(lab.node_netns(WORKER), dst).route) == \
        f"{block3} via {control.internal_ip} dev eth0 proto bird"
    assert render.route_line(route_get(lab.node_netns(CONTROL), dst).route) == f"{dst} dev {veth3} scope link"

    leg = walk_one(lab, f"pod/{pod1.name}", f"pod/{pod3.name}", "icmp").forward
    assert leg.outcome.result == "answered" and leg.outcome.ns == ns3
    pod3_mac = lab.netns_of_pod(pod3).links["eth0"].mac
    assert_hops(hops(leg), [
        (ns1, "route", f"{dst} via 169.254.1.1 dev eth0"),                                   # 1.
        (ns1, "neigh", f"169.254.1.1 is-at ee:ee:ee:ee:ee:ee (proxy_arp on {WORKER} {veth1}"),  # 2.
        (ns1, "xmit", f"out eth0 (veth) -> {veth1} in {WORKER}"),
        (WORKER, "route", f"via {control.internal_ip} dev eth0"),                            # 3.
        (WORKER, "neigh", f"{control.internal_ip} is-at"),
        (WORKER, "xmit", f"onto L2 segment kind -> {CONTROL} eth0"),
        (CONTROL, "route", f"{dst} from {pod1.pod_ip} dev {veth3}"),                         # 4.
        (CONTROL, "neigh", f"who-has {dst} on {veth3}? {dst} is-at {pod3_mac}"),
        (CONTROL, "xmit", f"out {veth3} (veth) -> eth0 in {ns3}"),
        (ns3, "route", f"local {dst}"),                                                      # 5.
    ])


def test_the_reply_comes_back_through_its_own_proxy_arp(lab):
    """A TCP connection Pod-1 -> a web pod on another node: the answer leaves the web pod via
    169.254.1.1 (proxy-ARP'd by its own cali veth) and takes the BIRD route back."""
    pod1 = tshoot(lab, WORKER)
    web = next(p for p in lab.cluster.pods if p.name.startswith("web-") and p.node_name == WORKER2)
    worker = lab.cluster.node(WORKER)
    branch = walk(lab, f"pod/{pod1.name}", f"pod/{web.name}:80").branches[0]
    assert branch.forward.outcome.result == "delivered" and branch.forward.outcome.ns == lab.pod_ns[web.key]
    back = hops(branch.reply)
    wns, vweb = lab.pod_ns[web.key], host_veth(lab, web)
    assert back[:4] == [
        (wns, "route", f"{pod1.pod_ip} via 169.254.1.1 dev eth0 src {web.pod_ip} uid 0"),
        (wns, "neigh", f"ARP: who-has 169.254.1.1 on eth0? 169.254.1.1 is-at ee:ee:ee:ee:ee:ee "
                       f"(proxy_arp on {WORKER2} {vweb} (route to 169.254.1.1 via eth0))"),
        (wns, "xmit", f"out eth0 (veth) -> {vweb} in {WORKER2}"),
        (WORKER2, "route", f"forward: {pod1.pod_ip} from {web.pod_ip} via {worker.internal_ip} dev eth0 iif {vweb}")]
    assert back[-1] == (lab.pod_ns[pod1.key], "route", f"local {pod1.pod_ip} from {web.pod_ip} dev lo iif eth0")
    assert branch.reply.outcome.delivered


def test_snat_for_traffic_leaving_the_cluster(lab):
    """SNAT in two stages: cali-POSTROUTING first in nat POSTROUTING, then cali-nat-outgoing
    MASQUERADEs sources in cali40masq-ipam-pools going outside cali40all-ipam-pools."""
    ns = lab.node_netns(CONTROL)
    lines = ns.iptables.splitlines()
    post = [l for l in lines if l.startswith("-A POSTROUTING ")]
    assert post[0] == '-A POSTROUTING -m comment --comment "cali:O3lYWMrLQYEMJtB5" -j cali-POSTROUTING'
    assert [l for l in lines if l.startswith("-A cali-POSTROUTING ")] == [
        '-A cali-POSTROUTING -m comment --comment "cali:Z-c7XtVd2Bq7s_hA" -j cali-fip-snat',
        '-A cali-POSTROUTING -m comment --comment "cali:nYKhEzDlr11Jccal" -j cali-nat-outgoing']
    assert [l for l in lines if l.startswith("-A cali-nat-outgoing ")] == [
        '-A cali-nat-outgoing -m comment --comment "cali:flqWnvo8yq4ULQLa" -m set --match-set cali40masq-ipam-pools '
        'src -m set ! --match-set cali40all-ipam-pools dst -j MASQUERADE --random-fully']
    sets = IpsetStore.parse(ns.ipsets)
    for name in ("cali40masq-ipam-pools", "cali40all-ipam-pools"):
        s = sets.sets[name]
        assert s.type == "hash:net" and [m.entry for m in s.members.values()] == ["10.244.0.0/16"]

    pod = tshoot(lab, WORKER)
    worker = lab.cluster.node(WORKER)
    branch = walk(lab, f"pod/{pod.name}", "1.1.1.1:443").branches[0]
    assert branch.forward.outcome.delivered and branch.reply.outcome.delivered
    masq = [h for h in branch.forward.hops if h.ns == WORKER and h.stage == "nat"]
    assert len(masq) == 1 and f"source {pod.pod_ip}:40000 -> {worker.internal_ip}:40000" in masq[0].text
    rule = [s for h in branch.forward.hops if h.ns == WORKER for s in h.steps if s.chain == "cali-nat-outgoing"]
    assert rule and "MASQUERADE" in rule[0].text
    # pod -> pod stays unNATed: the destination is in cali40all-ipam-pools
    other = tshoot(lab, CONTROL)
    leg = walk(lab, f"pod/{pod.name}", f"pod/{other.name}", "icmp", reply=False).branches[0].forward
    assert not [h for h in leg.hops if h.stage == "nat"] and leg.outcome.packet.src == pod.pod_ip


def test_intra_node_pod_to_pod_goes_through_the_node(lab):
    """No bridge: even a neighbour on the same node is reached via 169.254.1.1 and its /32 route."""
    a, b = local_pods(lab, WORKER2)[:2]
    assert route_get(lab.netns_of_pod(a), b.pod_ip).gateway == ipaddress.ip_address("169.254.1.1")
    assert render.route_line(route_get(lab.node_netns(WORKER2), b.pod_ip).route) == \
        f"{b.pod_ip} dev {host_veth(lab, b)} scope link"
