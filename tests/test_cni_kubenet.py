"""kubenet and cloud routes (podnet.cni.kubenet): the guide's IaaS chapter in shape (cbr0, a node
routing table with nothing per peer, the routes in the cloud's router: route tables or GKE alias
ranges), the packet walks through the cloud router, and the KubeCon talk's pod -> internet example
(the cloud NAT knows node addresses only: dropped without masquerade, delivered with it); for real in
the lab too."""

import re

import pytest

from podnet.cluster import Cluster
from podnet.cni.kubenet import MASQ_COMMENT
from podnet.dataplane import build_dataplane
from podnet.errors import InputError
from podnet.linux import render

from conftest import GUIDE_LAB, REFERENCE
from helpers import WORKER, WORKER2, guide_inputs, lab_name, tshoot, walk, walk_one


def inputs(tmp_path, cni: str):
    return guide_inputs(tmp_path, config=f"cni: {cni}\n")


@pytest.fixture(scope="module", params=["cloud-routes", "aks", "aws", "gke"])
def cloud(request):
    return build_dataplane(Cluster.load([GUIDE_LAB], cni="kubenet", cni_mode=request.param))


def test_the_chapter_is_the_reference():
    text = (REFERENCE / "guide" / "cni-iaas.md").read_text()
    assert "10.224.1.0/24 dev cbr0 proto kernel scope link src 10.224.1.1" in text and "aliasIpRanges" in text


def test_node_interfaces_and_routes(cloud):
    """`ip -4 -br add show` and `ip route` on a node: cbr0 with the podCIDR's .1, nothing per peer."""
    for node in cloud.cluster.nodes:
        ns = cloud.node_netns(node.name)
        cidr = node.pod_cidrs[0]
        gw = cidr.network_address + 1
        addrs = render.ip_br_addr(ns, cloud.state, family=4).splitlines()
        assert [re.split(r" +", l)[0] for l in addrs if not l.startswith("veth")] == ["lo", "eth0", "cbr0"]
        assert re.fullmatch(rf"cbr0 +UP +{gw}/24", next(l for l in addrs if l.startswith("cbr0")))
        assert render.ip_route(ns).splitlines() == [
            "default via 172.18.0.1 dev eth0",
            f"{cidr} dev cbr0 proto kernel scope link src {gw}",
            f"172.18.0.0/16 dev eth0 proto kernel scope link src {node.internal_ip}"]
        # kubenet is the kubelet's plugin: no conflist on the node, host-local's state under its network
        assert not [p for p in ns.files if p.startswith("/etc/cni/net.d/")]
        local = {str(p.pod_ip) for p in cloud.cluster.pods_on(node.name) if p.key in cloud.pod_ns}
        assert {p.rsplit("/", 1)[1] for p in ns.files if p.startswith("/var/lib/cni/networks/kubenet/")
                and p.rsplit("/", 1)[1][0].isdigit()} == local
        for p in cloud.cluster.pods_on(node.name):
            if p.key in cloud.pod_ns:
                pod_ns = cloud.netns_of_pod(p)
                assert render.ip_route(pod_ns).splitlines() == [
                    f"default via {gw} dev eth0", f"{cidr} dev eth0 proto kernel scope link src {p.pod_ip}"]
                assert pod_ns.links["eth0"].peer[0] == node.name
                assert ns.links[pod_ns.links["eth0"].peer[1]].master == "cbr0"


def test_masquerade_rule_as_kubenet_writes_it(cloud):
    for node in cloud.cluster.nodes:
        ns = cloud.node_netns(node.name)
        assert f'-A POSTROUTING ! -d 10.0.0.0/8 -m comment --comment "{MASQ_COMMENT}" -m addrtype ! --dst-type ' \
               'LOCAL -j MASQUERADE' in ns.iptables.splitlines()
        assert ns.sysctls["net.bridge.bridge-nf-call-iptables"] == "1"
        # the kubelet's default --hairpin-mode=promiscuous-bridge: cbr0 promiscuous, no hairpin on the veths
        assert ns.links["cbr0"].promisc
        assert not any(l.hairpin for l in ns.links.values() if l.master == "cbr0")


def test_reachability_is_in_the_cloud_router(cloud):
    gw = cloud.state.netns("gateway")
    routes = render.ip_route(gw).splitlines()
    if cloud.cluster.config.cni.mode == "gke":
        # alias ranges: the secondary range on-link, each node's NIC answering for its own range
        assert "10.244.0.0/16 dev br-kind proto static scope link" in routes
        assert not [r for r in routes if " via 172.18." in r]
        for node in cloud.cluster.nodes:
            assert cloud.node_netns(node.name).sysctls["net.ipv4.conf.eth0.proxy_arp"] == "1"
    else:
        # the route table: one static route per podCIDR, next hop the node (AKS' VirtualAppliance)
        for node in cloud.cluster.nodes:
            assert f"{node.pod_cidrs[0]} via {node.internal_ip} dev br-kind proto static" in routes
        assert all("proxy_arp" not in k for n in cloud.cluster.nodes for k in cloud.node_netns(n.name).sysctls)


def test_pod_to_pod_across_nodes_goes_through_the_cloud_router(cloud):
    pod1 = tshoot(cloud, WORKER)
    web = next(p for p in cloud.cluster.pods if p.name.startswith("web-") and p.node_name == WORKER2)
    branch = walk_one(cloud, f"pod/{pod1.name}", f"pod/{web.name}:80")
    leg = branch.forward
    assert leg.outcome.delivered and leg.outcome.ns == cloud.pod_ns[web.key]
    assert str(leg.outcome.packet.src) == str(pod1.pod_ip)               # no SNAT between pods
    where = []
    for h in leg.hops:
        if not where or where[-1] != h.ns:
            where.append(h.ns)
    assert where == [cloud.pod_ns[pod1.key], WORKER, "gateway", WORKER2, cloud.pod_ns[web.key]]
    node_route = next(h for h in leg.hops if h.ns == WORKER and h.stage == "route")
    assert "via 172.18.0.1 dev eth0" in node_route.text                  # the node's default route
    gw_hops = [h for h in leg.hops if h.ns == "gateway"]
    worker2 = cloud.cluster.node(WORKER2)
    route = next(h for h in gw_hops if h.stage == "route")
    arp = next(h for h in gw_hops if h.stage == "neigh")
    if cloud.cluster.config.cni.mode == "gke":
        assert f"{web.pod_ip} from {pod1.pod_ip} dev br-kind" in route.text
        assert f"who-has {web.pod_ip}" in arp.text and f"proxy_arp on {WORKER2} eth0" in arp.text
    else:
        assert f"via {worker2.internal_ip} dev br-kind" in route.text
        assert f"who-has {worker2.internal_ip}" in arp.text
    back = []
    for h in branch.reply.hops:
        if not back or back[-1] != h.ns:
            back.append(h.ns)
    assert branch.reply.outcome.delivered and back == list(reversed(where))


def test_kubecon_pod_to_internet_masqueraded_twice(cloud):
    """"src: pod1 -> src: internal-IP (MASQUERADE) -> src: external-IP (the cloud's NAT)", and back."""
    pod = tshoot(cloud, WORKER)
    node_ip = cloud.cluster.node(WORKER).internal_ip
    branch = walk_one(cloud, f"pod/{pod.name}", "8.8.8.8:53/udp", "udp")
    leg = branch.forward
    assert leg.outcome.delivered and leg.outcome.ns == "internet"
    nats = [(h.ns, h.text) for h in leg.hops if h.stage == "nat"]
    assert [n for n, _ in nats] == [WORKER, "gateway"]
    assert f"{pod.pod_ip}:40000 -> {node_ip}:40000" in nats[0][1] and f"-> 203.0.113.1:40000" in nats[1][1]
    kubenet = [s for h in leg.hops if h.ns == WORKER for s in h.steps if MASQ_COMMENT in s.text]
    assert kubenet and kubenet[0].action == "MASQUERADE"
    undo = [(h.ns, h.text) for h in branch.reply.hops if h.stage == "conntrack" and "un-SNAT" in h.text]
    assert [n for n, _ in undo] == ["gateway", WORKER]
    assert branch.reply.outcome.delivered and branch.reply.outcome.ns == cloud.pod_ns[pod.key]


def test_kubecon_pod_to_internet_without_masquerade_is_dropped(tmp_path):
    """nonMasqueradeCIDR 0.0.0.0/0 (no kubenet rule): the pod's address reaches the cloud NAT, which
    only knows node addresses: "dropped!". The node itself still gets out."""
    dp = build_dataplane(Cluster.load([inputs(tmp_path, "{plugin: kubenet, mode: gke, "
                                                        "options: {nonMasqueradeCIDR: 0.0.0.0/0}}")]))
    assert not [l for l in dp.node_netns(WORKER).iptables.splitlines() if MASQ_COMMENT in l]
    pod = tshoot(dp, WORKER)
    leg = walk_one(dp, f"pod/{pod.name}", "8.8.8.8:53/udp", "udp").forward
    assert leg.outcome.result == "dropped" and leg.outcome.ns == "gateway"
    assert "CLOUD-NAT" in leg.outcome.reason and str(leg.outcome.packet.src) == str(pod.pod_ip)
    node = walk_one(dp, f"node/{WORKER}", "8.8.8.8:53/udp", "udp")
    assert node.forward.outcome.delivered and node.reply.outcome.delivered
    # pods still reach each other: the cloud routes them, only its NAT is picky
    web = next(p for p in dp.cluster.pods if p.name.startswith("web-") and p.node_name == WORKER2)
    assert walk_one(dp, f"pod/{pod.name}", f"pod/{web.name}:80").forward.outcome.delivered


def test_options(tmp_path):
    d = inputs(tmp_path, "{plugin: kubenet, options: {nonMasqueradeCIDR: 10.244.0.0/16, hairpinMode: hairpin-veth}}")
    dp = build_dataplane(Cluster.load([d]))
    ns = dp.node_netns(WORKER)
    assert any(l.startswith("-A POSTROUTING ! -d 10.244.0.0/16 ") for l in ns.iptables.splitlines())
    veths = [l for l in ns.links.values() if l.master == "cbr0"]
    assert veths and all(l.hairpin for l in veths) and not ns.links["cbr0"].promisc
    for bad, field in (("{plugin: kubenet, options: {nonMasqueradeCIDR: x}}", "cni.options.nonMasqueradeCIDR"),
                       ("{plugin: kubenet, options: {hairpinMode: sometimes}}", "cni.options.hairpinMode")):
        with pytest.raises(InputError, match=field.replace(".", r"\.")):
            build_dataplane(Cluster.load([inputs(tmp_path, bad)]))


def test_hairpin_through_a_service_on_the_promiscuous_bridge(tmp_path):
    """A pod reaching itself through its Service (br_netfilter DNAT on cbr0, then routed back)."""
    dp = build_dataplane(Cluster.load([GUIDE_LAB], cni="kubenet"))
    web = next(p for p in dp.cluster.pods if p.name.startswith("web-"))
    result = walk(dp, f"pod/{web.name}", "svc/web:80")
    mine = [b for b in result.branches if b.forward.outcome.ns == dp.pod_ns[web.key]]
    assert mine and all(b.forward.outcome.delivered and b.reply.outcome.delivered for b in mine)
    assert any("promiscuous" in h.text for b in mine for h in b.forward.hops)


@pytest.mark.parametrize("mode, reaches_itself", [("promiscuous-bridge", True), ("hairpin-veth", True),
                                                  ("none", False)])
def test_a_pod_reaches_itself_through_its_service_only_with_a_hairpin_mode(tmp_path, mode, reaches_itself):
    """br_netfilter keeps a frame DNATed to a station behind the same bridge bridged: back out of
    its ingress port only with the port's hairpin flag, or via the host with a promiscuous bridge."""
    dp = build_dataplane(Cluster.load([inputs(tmp_path, f"{{plugin: kubenet, options: {{hairpinMode: {mode}}}}}")]))
    web = next(p for p in dp.cluster.pods if p.name.startswith("web-"))
    result = walk(dp, f"pod/{web.name}", "svc/web:80")
    mine = [b for b in result.branches if dp.state.namespaces[b.forward.outcome.ns].pod == web.key
            or "hairpin" in b.forward.outcome.reason]
    assert len(mine) == 1
    assert mine[0].forward.outcome.delivered == reaches_itself, mine[0].forward.outcome.reason
    if not reaches_itself:
        assert "hairpin mode is off" in mine[0].forward.outcome.reason


# ----------------------------------------------------------------------------- for real

@pytest.mark.netns
@pytest.mark.parametrize("mode", ["aks", "gke"])
def test_kubenet_in_the_lab(tmp_path, mode):
    """The cloud router as a namespace: pods across nodes through it; the KubeCon example both ways."""
    from podnet.lab import client
    from podnet.lab.lab import Lab
    from podnet.lab.verify import verify
    name = lab_name("k")
    lab = Lab(name)
    try:
        lab.up([str(inputs(tmp_path, f"{{plugin: kubenet, mode: {mode}}}"))])
        rec = lab.record
        t = next(v for k, v in rec["pods"].items() if "net-tshoot" in k and v["node"] == WORKER)
        for k, v in rec["pods"].items():
            if "/web-" in k:
                r = client.request(lab.kname(t["netns"]), v["ips"][0], 80, http=True)
                assert (r.status, r.server, r.client) == ("ok", k, t["ips"][0]), r
        r = client.request(lab.kname(t["netns"]), "1.1.1.1", 80, http=True)
        assert (r.status, r.client) == ("ok", "203.0.113.1"), r
        report = verify(lab)
        assert report.ok, report.text()
        # masquerade off: the cloud NAT drops the pod's packets
        (tmp_path / "podnet.yaml").write_text("apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n"
                                              f"cni: {{plugin: kubenet, mode: {mode}, "
                                              "options: {nonMasqueradeCIDR: 0.0.0.0/0}}\n")
        lab.apply([str(tmp_path)])
        r = client.request(lab.kname(t["netns"]), "1.1.1.1", 80, http=True, timeout=1.0)
        assert r.status == "timeout", r
        r = client.request(lab.kname(WORKER), "1.1.1.1", 80, http=True)
        assert r.status == "ok", r
    finally:
        if lab.exists():
            lab.down()
