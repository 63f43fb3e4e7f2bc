"""`podnet trace` across the whole cluster (issue #4): the guide's lab with kindnet, per
kube-proxy mode, for the flows the issue lists. Each test checks where the packet was
delivered, what the receiver saw as its source, which hops it took, and that the
reply undoes every NAT (the client's socket gets the answer from the address it
connected to)."""


import pytest

from podnet.cluster import Cluster
from podnet.dataplane import build_dataplane

from helpers import LOAD_BALANCERS, guide_inputs, walk

EXTRA = LOAD_BALANCERS + """
---
apiVersion: podnet.dev/v1alpha1
kind: PodnetConfig
loadBalancer: {pools: ["172.18.255.200-172.18.255.250"]}
---
apiVersion: v1
kind: Pod
metadata: {name: sidecar, namespace: default, labels: {app: sc}}
spec:
  nodeName: k8s-guide-control-plane
  tolerations: [{operator: Exists}]
  containers:
  - {name: app, image: nginx, ports: [{containerPort: 8080}]}
  - {name: proxy, image: envoy, ports: [{containerPort: 9901}]}
"""

CLIENT = "198.51.100.7"          # somewhere on the internet
MODES = ["iptables", "nftables"]


@pytest.fixture(scope="module", params=MODES)
def dp(request, tmp_path_factory):
    d = guide_inputs(tmp_path_factory.mktemp("lab"), extra=EXTRA)
    return build_dataplane(Cluster.load([str(d)], proxy_mode=request.param))


def pod_of(dp, outcome):
    return dp.state.namespaces[outcome.ns].pod


def seen(dp, result):
    """{backend pod (or namespace): source address it saw} over all outcomes."""
    out = {}
    for b in result.branches:
        o = b.forward.outcome
        assert o.delivered, o.reason
        out[pod_of(dp, o) or o.ns] = str(o.packet.src)
    return out


def replies_ok(result):
    for b in result.branches:
        assert b.reply is not None and b.reply.outcome.delivered, b.reply and b.reply.outcome.reason
        assert "as the client expects" in b.reply.outcome.reason, b.reply.outcome.reason


def netns_path(dp, branch):
    path = []
    for h in branch.forward.hops:
        if not path or path[-1] != h.ns:
            path.append(h.ns)
    return path


def name(dp, ns):
    n = dp.state.namespaces[ns]
    return n.pod or n.name


def test_container_to_container_over_localhost(dp):
    """Containers of a pod share its sandbox: localhost reaches the other container, no node hop."""
    r = walk(dp, "pod/sidecar", "127.0.0.1:8080")
    [b] = r.branches
    assert b.forward.outcome.listener.owner == "pod default/sidecar container app"
    assert str(b.forward.outcome.packet.src) == "127.0.0.1"
    assert {dp.state.namespaces[h.ns].kind for h in b.forward.hops} == {"pod"}
    replies_ok(r)


def test_pod_to_pod_same_node_goes_through_the_node(dp):
    web = dp.cluster.pod("web-6d4777fb8c-bp7w6")
    tshoot = next(p for p in dp.cluster.pods if p.name.startswith("net-tshoot") and p.node_name == web.node_name)
    r = walk(dp, f"pod/{tshoot.name}", f"pod/{web.name}:80")
    [b] = r.branches
    assert [name(dp, n) for n in netns_path(dp, b)] == [tshoot.key, web.node_name, web.key]
    assert seen(dp, r) == {web.key: str(tshoot.pod_ip)}
    replies_ok(r)


def test_pod_to_pod_across_nodes_keeps_the_pod_ip(dp):
    web = dp.cluster.pod("web-6d4777fb8c-2d89v")
    tshoot = next(p for p in dp.cluster.pods if p.name.startswith("net-tshoot") and p.node_name != web.node_name)
    r = walk(dp, f"pod/{tshoot.name}", f"pod/{web.name}:80")
    [b] = r.branches
    assert [name(dp, n) for n in netns_path(dp, b)] == [tshoot.key, tshoot.node_name, web.node_name, web.key]
    assert seen(dp, r) == {web.key: str(tshoot.pod_ip)}
    replies_ok(r)


def test_pod_to_cluster_ip_reaches_every_endpoint_without_snat(dp):
    r = walk(dp, "pod/net-tshoot-4lgv2", "svc/web:80")
    webs = {p.key for p in dp.cluster.pods if p.name.startswith("web-")}
    assert seen(dp, r) == {w: "10.244.1.2" for w in webs}
    assert sorted(round(b.probability, 3) for b in r.branches) == [0.5, 0.5]
    for b in r.branches:
        assert any(h.stage == "nat" and "DNAT" in h.text for h in b.forward.hops)
    replies_ok(r)


def test_node_to_cluster_ip_is_masqueraded(dp):
    """From a node the source is not a pod IP: kube-proxy marks it and masquerades."""
    r = walk(dp, "node/k8s-guide-worker", "svc/web:80")
    got = seen(dp, r)
    worker = dp.cluster.pod("web-6d4777fb8c-bp7w6").key       # on k8s-guide-worker
    worker2 = dp.cluster.pod("web-6d4777fb8c-2d89v").key
    assert got == {worker: "10.244.1.1", worker2: "172.18.0.3"}
    for b in r.branches:
        assert any(h.stage == "nat" and "MASQUERADE" in h.text for h in b.forward.hops)
    replies_ok(r)


def test_pod_to_internet_is_masqueraded_to_the_node_ip(dp):
    r = walk(dp, "pod/net-tshoot-4lgv2", "1.1.1.1:443")
    [b] = r.branches
    assert b.forward.outcome.ns == "internet"
    nats = [h.text for h in b.forward.hops if h.stage == "nat"]
    # kindnet's KIND-MASQ-AGENT to the node's IP, then docker's MASQUERADE on the host
    assert "source 10.244.1.2:40000 -> 172.18.0.3:40000" in nats[0]
    assert any(h.ns == "k8s-guide-worker" and "KIND-MASQ-AGENT" in " ".join(s.text for s in h.steps)
               for h in b.forward.hops)
    replies_ok(r)


def test_pod_to_node_port_on_another_node(dp):
    r = walk(dp, "pod/net-tshoot-4s4gm", "172.18.0.4:30080")
    webs = {p.key for p in dp.cluster.pods if p.name.startswith("web-")}
    assert set(seen(dp, r)) == webs
    for b in r.branches:
        assert "k8s-guide-worker2" in netns_path(dp, b)
    replies_ok(r)


@pytest.mark.parametrize("target", ["172.18.0.2:30080", "lb/web-lb"])
def test_external_client_cluster_policy_is_snatted(dp, target):
    """externalTrafficPolicy Cluster: any node takes it, SNATs it, maybe forwards it to another node."""
    r = walk(dp, f"ip/{CLIENT}", target)
    got = seen(dp, r)
    assert set(got) == {p.key for p in dp.cluster.pods if p.name.startswith("web-")}
    assert CLIENT not in got.values()
    extra_hop = [b for b in r.branches
                 if len({dp.state.namespaces[n].node for n in netns_path(dp, b)} - {None}) > 1]
    assert extra_hop, "a backend on another node than the one the client reached"
    replies_ok(r)


def test_load_balancer_ip_is_announced_by_one_node(dp):
    """MetalLB layer 2: one node answers ARP for the LB IP; the control plane is excluded."""
    svc = dp.cluster.service("web-lb")
    owners = [ns.name for ns in dp.state.namespaces.values()
              if any(r.ip == svc.lb_ips[0] for r in ns.arp_responders)]
    assert len(owners) == 1 and owners[0] != "k8s-guide-control-plane"


def test_external_client_local_policy_keeps_the_client_ip(dp):
    r = walk(dp, f"ip/{CLIENT}", "lb/web-lb-local")
    for b in r.branches:
        o = b.forward.outcome
        assert o.delivered and str(o.packet.src) == CLIENT
        # no second node: the announcing node has the endpoint
        assert len({dp.state.namespaces[n].node for n in netns_path(dp, b)} - {None}) == 1
    replies_ok(r)


def test_external_client_local_policy_node_without_endpoint_drops(dp):
    r = walk(dp, f"ip/{CLIENT}", "172.18.0.2:30081")       # the control plane runs no web pod
    [b] = r.branches
    assert b.forward.outcome.result == "dropped"
    # iptables: KUBE-EXT-* ... "has no local endpoints" -j DROP; nftables: @no-endpoint-nodeports drop
    why = "no-endpoint-nodeports" if dp.cluster.config.proxy.mode == "nftables" else "has no local endpoints"
    assert why in b.forward.outcome.reason or why in " ".join(s.text for h in b.forward.hops for s in h.steps)


def test_hairpin_a_pod_reaching_its_own_service(dp):
    """A pod picked as the backend of its own connection: kube-proxy masquerades the hairpin,
    so the reply goes back through the node instead of straight to itself."""
    web = dp.cluster.pod("web-6d4777fb8c-bp7w6")
    r = walk(dp, f"pod/{web.name}", "svc/web:80")
    hairpin = [b for b in r.branches if pod_of(dp, b.forward.outcome) == web.key]
    assert len(hairpin) == 1
    assert str(hairpin[0].forward.outcome.packet.src) == "10.244.1.1"     # the node's side of the ptp link
    other = [b for b in r.branches if pod_of(dp, b.forward.outcome) != web.key]
    assert str(other[0].forward.outcome.packet.src) == str(web.pod_ip)
    replies_ok(r)


def test_reply_path_undoes_dnat_and_snat(dp):
    """An outside client to the LB IP: the answer is un-SNATed on the node that masqueraded
    it, un-DNATed back to the LB IP, and reaches the client from the address it called."""
    r = walk(dp, f"ip/{CLIENT}", "lb/web-lb")
    lb = str(dp.cluster.service("web-lb").lb_ips[0])
    for b in r.branches:
        stages = [h.text for h in b.reply.hops if h.stage == "conntrack"]
        assert any("un-DNAT" in t for t in stages) and any("un-SNAT" in t for t in stages), stages
        assert str(b.reply.outcome.packet.src) == lb and str(b.reply.outcome.packet.dst) == CLIENT


# ---------------------------------------------------------------------------- every CNI x proxy

CNIS = [("kindnet", None), ("flannel", "vxlan"), ("flannel", "host-gw"), ("calico", "bgp"), ("calico", "ipip"),
        ("calico", "vxlan"), ("weave", None), ("kubenet", "cloud-routes"), ("kubenet", "gke")]
PROXIES = ["iptables", "nftables", "ipvs", "ebpf"]
FLOWS = [("pod/net-tshoot-4lgv2", "svc/web:80"), ("node/k8s-guide-worker", "svc/web:80"),
         ("pod/net-tshoot-4lgv2", "pod/web-6d4777fb8c-2d89v:80"), ("node/k8s-guide-worker", "pod/web-6d4777fb8c-2d89v:80"),
         ("pod/net-tshoot-4lgv2", "1.1.1.1:443"), ("pod/net-tshoot-4lgv2", "svc/kube-dns:53/udp")]


@pytest.fixture(scope="module")
def guide_dir(tmp_path_factory):
    return guide_inputs(tmp_path_factory.mktemp("guide"))


@pytest.mark.parametrize("proxy", PROXIES)
@pytest.mark.parametrize("cni,mode", CNIS, ids=[f"{c}-{m or 'default'}" for c, m in CNIS])
def test_every_cni_and_proxy_carry_the_basic_flows(guide_dir, cni, mode, proxy):
    """Whatever the combination, pods and nodes reach Services, pods on other nodes and the
    internet, and every answer comes back to the socket that asked."""
    cluster = Cluster.load([str(guide_dir)], cni=cni, cni_mode=mode, proxy_mode=proxy)
    dp = build_dataplane(cluster)
    for src, dst in FLOWS:
        r = walk(dp, src, dst, "udp" if dst.endswith("/udp") else "tcp")
        for b in r.branches:
            assert b.forward.outcome.delivered, (src, dst, b.forward.outcome.reason)
        replies_ok(r)
