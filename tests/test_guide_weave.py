"""The guide's weave chapter (reference/guide/cni-weave.md) on podnet's build of its lab with weave:
the listings' shapes, "a day in the life of a packet" hop by hop as `podnet trace` walks it (and
back), the SNAT section's WEAVE chain, and the partial-connectivity demo (relay through a peer).
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
from helpers import CONTROL, NODEPORTS, WORKER, WORKER2, guide_inputs, tshoot, walk_one

RANGE = ipaddress.ip_network("10.32.0.0/12")


@pytest.fixture(scope="module")
def lab():
    return build_dataplane(Cluster.load([GUIDE_LAB], cni="weave"))


@pytest.fixture(scope="module")
def partial(tmp_path_factory):
    """The demo: `iptables -I FORWARD -s $IP_WORKER1 -d $IP_WORKER2 -j DROP` on the docker host."""
    return guide_inputs(tmp_path_factory.mktemp("partial"),
                        config=f"cni: {{plugin: weave}}\nnodeNetwork: {{unreachable: [[{WORKER}, {WORKER2}]]}}\n")


def bridge_ip(dp, node: str):
    return dp.node_netns(node).links["weave"].addresses[0].ip


def test_the_chapter_is_the_reference():
    text = (REFERENCE / "guide" / "cni-weave.md").read_text()
    assert "10.32.0.0/12 dev weave proto kernel scope link src 10.44.0.0" in text and "vxlan-6784" in text


def test_pod_ip_and_default_route(lab):
    """1. `ip route` in a pod: the default via the local bridge's address, the whole range on-link."""
    for node in lab.cluster.nodes:
        pod = tshoot(lab, node.name)
        ns = lab.netns_of_pod(pod)
        assert pod.pod_ip in RANGE
        assert render.ip_route(ns).splitlines() == [
            f"default via {bridge_ip(lab, node.name)} dev eth0",
            f"10.32.0.0/12 dev eth0 proto kernel scope link src {pod.pod_ip}"]
        eth0 = [line for line in render.ip_br_addr(ns, lab.state, family=4).splitlines() if line.startswith("eth0")]
        assert re.fullmatch(rf"eth0@if\d+ +UP +{pod.pod_ip}/12", eth0[0])
        assert ns.links["eth0"].mtu == 1376


def test_node_routing_table(lab):
    """2. The node: its default route, the range on the weave bridge, the kind network. Nothing per peer."""
    for node in lab.cluster.nodes:
        assert render.ip_route(lab.node_netns(node.name)).splitlines() == [
            "default via 172.18.0.1 dev eth0",
            f"10.32.0.0/12 dev weave proto kernel scope link src {bridge_ip(lab, node.name)}",
            f"172.18.0.0/16 dev eth0 proto kernel scope link src {node.internal_ip}"]


def test_one_range_split_between_the_nodes(lab):
    """The chapter's note: non-overlapping per-node ranges, every pod still in the same /12."""
    owned = {}
    for node in lab.cluster.nodes:
        ipset = lab.node_netns(node.name).ipsets.splitlines()
        owned[node.name] = [ipaddress.ip_network(l.split()[2]) for l in ipset if l.startswith("add ")]
        for p in lab.cluster.pods_on(node.name):
            if p.key in lab.pod_ns:
                assert any(p.pod_ip in c for c in owned[node.name]), p.key
        assert any(bridge_ip(lab, node.name) in c for c in owned[node.name])
    flat = sorted(c for cs in owned.values() for c in cs)
    assert sorted(c.prefixlen for c in flat) == [13, 14, 14]
    assert all(not a.overlaps(b) for i, a in enumerate(flat) for b in flat[i + 1:])
    assert sum(c.num_addresses for c in flat) == RANGE.num_addresses


def test_devices_of_bridged_fastdp(lab):
    """4. `ip link | grep vethwe-`: the veth pair between the weave bridge and the datapath, MTU 1376."""
    for node in lab.cluster.nodes:
        ns = lab.node_netns(node.name)
        br, dp = ns.links["vethwe-bridge"], ns.links["vethwe-datapath"]
        assert (br.master, dp.master, br.mtu, dp.mtu) == ("weave", "datapath", 1376, 1376)
        assert br.peer == (node.name, "vethwe-datapath") and dp.peer == (node.name, "vethwe-bridge")
        vx = ns.links["vxlan-6784"]
        assert vx.master == "datapath" and vx.vxlan.dstport == 6784 and vx.vxlan.local == node.internal_ip
        conf = NetworkConfigList.parse(ns.files["/etc/cni/net.d/10-weave.conflist"])
        assert conf.types == ["weave-net", "portmap"] and conf.plugins[0]["hairpinMode"] is True


def test_day_in_the_life_of_a_packet(lab):
    """Pod-1 (net-tshoot on the worker) pings Pod-3 (net-tshoot on the control plane): steps 1-10."""
    pod1, pod3 = tshoot(lab, WORKER), tshoot(lab, CONTROL)
    ns1, ns3 = lab.pod_ns[pod1.key], lab.pod_ns[pod3.key]
    mac3 = lab.netns_of_pod(pod3).links["eth0"].mac
    veth3 = lab.netns_of_pod(pod3).links["eth0"].peer[1]
    assert re.fullmatch(r"vethwepl[0-9a-f]{7}", veth3)
    # 1. directly connected: no gateway
    assert route_get(lab.netns_of_pod(pod1), pod3.pod_ip).text() == f"{pod3.pod_ip} dev eth0 src {pod1.pod_ip} uid 0"
    # 3. and 9.: the L2 lookups (`bridge fdb get MAC br weave`)
    fdb_worker = render.bridge_fdb(lab.node_netns(WORKER)).splitlines()
    fdb_control = render.bridge_fdb(lab.node_netns(CONTROL)).splitlines()
    assert f"{mac3} dev vethwe-bridge master weave static" in fdb_worker
    assert f"{mac3} dev {veth3} master weave static" in fdb_control

    branch = walk_one(lab, f"pod/{pod1.name}", f"pod/{pod3.name}", "icmp")
    leg = branch.forward
    assert leg.outcome.result == "answered" and leg.outcome.ns == ns3
    steps = [(h.ns, h.stage, h.text) for h in leg.hops if h.stage in ("route", "neigh", "bridge", "vxlan", "xmit")]
    ctrl_ip, worker_ip = lab.cluster.node(CONTROL).internal_ip, lab.cluster.node(WORKER).internal_ip
    wanted = [
        (ns1, "route", f"{pod3.pod_ip} dev eth0 src {pod1.pod_ip}"),                # 1. on-link
        (ns1, "neigh", f"{pod3.pod_ip} is-at {mac3}"),                              # 2. ARP for the pod itself
        (ns1, "xmit", "out eth0 (veth) -> vethwepl"),
        (WORKER, "bridge", f"weave: fdb {mac3} dev vethwe-bridge master weave"),    # 3. the weave bridge
        (WORKER, "xmit", "out vethwe-bridge (veth) -> vethwe-datapath"),            # 4. down to the datapath
        (WORKER, "bridge", f"datapath: fdb {mac3} dev vxlan-6784 master datapath"),  # 5. the flow lookup
        (WORKER, "vxlan", f"dst {ctrl_ip} self permanent; encapsulate VNI 1 in UDP {worker_ip}"),  # 6.
        (WORKER, "route", f"{ctrl_ip} dev eth0 src {worker_ip}"),
        (WORKER, "neigh", f"{ctrl_ip} is-at"),
        (WORKER, "xmit", f"onto L2 segment kind -> {CONTROL} eth0"),                 # 7. the kind bridge
        (CONTROL, "route", f"local {ctrl_ip}"),
        (CONTROL, "vxlan", "UDP 6784 VNI 1: decapsulated by vxlan-6784"),
        (CONTROL, "bridge", f"datapath: fdb {mac3} dev vethwe-datapath master datapath"),  # 8. to vport 1
        (CONTROL, "xmit", "out vethwe-datapath (veth) -> vethwe-bridge"),
        (CONTROL, "bridge", f"weave: fdb {mac3} dev {veth3} master weave"),         # 9. the pod's veth
        (CONTROL, "xmit", f"out {veth3} (veth) -> eth0 in {ns3}"),
        (ns3, "route", f"local {pod3.pod_ip}"),                                      # 10. eth0 of Pod-3
    ]
    assert len(steps) == len(wanted), steps
    for got, want in zip(steps, wanted):
        assert got[:2] == want[:2] and want[2] in got[2], (got, want)
    # a TCP answer (the kernel answers the ping itself) comes back over the same devices, the other
    # way round: Pod-1 asks the DNS server on the control plane
    dns = next(p for p in lab.cluster.pods_on(CONTROL) if p.name.startswith("coredns-"))
    branch = walk_one(lab, f"pod/{pod1.name}", f"pod/{dns.name}:53")
    assert branch.forward.outcome.delivered and branch.reply.outcome.delivered
    back = [(h.ns, h.stage, h.text) for h in branch.reply.hops if h.stage in ("bridge", "vxlan")]
    mac1 = lab.netns_of_pod(pod1).links["eth0"].mac
    assert [(n, st) for n, st, _ in back] == [(CONTROL, "bridge"), (CONTROL, "bridge"), (CONTROL, "vxlan"),
                                             (WORKER, "vxlan"), (WORKER, "bridge"), (WORKER, "bridge")]
    assert f"dst {worker_ip}" in back[2][2] and f"{mac1} dev vethwepl" in back[5][2]


def test_snat_chain_as_weave_writes_it(lab):
    """The SNAT section: POSTROUTING jumps to WEAVE; no-masq-local first, multicast, then the two MASQUERADEs."""
    for node in lab.cluster.nodes:
        ns = lab.node_netns(node.name)
        lines = ns.iptables.splitlines()
        nat = lines[lines.index("*nat"):]
        nat = nat[:nat.index("COMMIT")]
        assert "-A POSTROUTING -j WEAVE" in nat
        assert [l for l in nat if l.startswith("-A WEAVE ")] == [
            '-A WEAVE -m set --match-set weaver-no-masq-local dst -m comment --comment "Prevent SNAT to '
            'locally running containers" -j RETURN',
            "-A WEAVE -s 10.32.0.0/12 -d 224.0.0.0/4 -j RETURN",
            "-A WEAVE ! -s 10.32.0.0/12 -d 10.32.0.0/12 -j MASQUERADE",
            "-A WEAVE -s 10.32.0.0/12 ! -d 10.32.0.0/12 -j MASQUERADE"]
        assert ns.ipsets.splitlines()[0].startswith("create weaver-no-masq-local hash:net")


def test_pod_to_internet_is_masqueraded_by_the_weave_chain(lab):
    """Stage 1: via the bridge's address and the node's default route; stage 2: WEAVE's last rule."""
    pod = tshoot(lab, WORKER)
    branch = walk_one(lab, f"pod/{pod.name}", "1.1.1.1:443")
    hops = branch.forward.hops
    assert hops[0].text.startswith(f"1.1.1.1 via {bridge_ip(lab, WORKER)} dev eth0")
    masq = next(h for h in hops if h.stage == "nat" and h.ns == WORKER)
    rule = [s for h in hops if h.ns == WORKER and h.stage == "POSTROUTING" for s in h.steps if s.action]
    assert any("-A WEAVE -s 10.32.0.0/12 ! -d 10.32.0.0/12 -j MASQUERADE" in s.text for s in rule)
    assert f"-> {lab.cluster.node(WORKER).internal_ip}:" in masq.text
    assert branch.forward.outcome.delivered and branch.reply.outcome.delivered


def test_traffic_to_local_pods_is_not_masqueraded(tmp_path):
    """weaver-no-masq-local: an external client reaching a local pod (NodePort, Local) keeps its address."""
    guide_inputs(tmp_path, extra=NODEPORTS)
    dp = build_dataplane(Cluster.load([tmp_path], cni="weave"))
    web = next(p for p in dp.cluster.pods if p.name.startswith("web-") and p.node_name == WORKER)
    branch = walk_one(dp, "ip/203.0.113.254", f"{dp.cluster.node(WORKER).internal_ip}:30081")
    leg = branch.forward
    assert leg.outcome.delivered and leg.outcome.ns == dp.pod_ns[web.key]
    assert str(leg.outcome.packet.src) == "203.0.113.254"         # the client's own address
    returns = [s for h in leg.hops if h.ns == WORKER for s in h.steps if "weaver-no-masq-local" in s.text]
    assert returns and returns[0].action == "RETURN"


def test_partial_connectivity_is_relayed_by_the_control_plane(partial):
    """The worker -> worker2 path is cut; the control plane (the only node reaching both) relays."""
    dp = build_dataplane(Cluster.load([partial]))
    pod1, pod2 = tshoot(dp, WORKER), tshoot(dp, WORKER2)
    ips = {n.name: str(n.internal_ip) for n in dp.cluster.nodes}
    branch = walk_one(dp, f"pod/{pod1.name}", f"pod/{pod2.name}", "icmp")       # the demo's ping
    leg = branch.forward
    assert leg.outcome.result == "answered" and leg.outcome.ns == dp.pod_ns[pod2.key]
    # the encapsulations on the wire: worker -> control-plane, control-plane -> worker2, as the tcpdump shows
    wire = [(h.ns, h.text) for h in leg.hops if h.stage == "vxlan" and "encapsulate" in h.text]
    assert [n for n, _ in wire] == [WORKER, CONTROL]
    assert f"UDP {ips[WORKER]}:" in wire[0][1] and f"-> {ips[CONTROL]}:6784" in wire[0][1]
    assert f"UDP {ips[CONTROL]}:" in wire[1][1] and f"-> {ips[WORKER2]}:6784" in wire[1][1]
    relay = next(h for h in leg.hops if h.ns == CONTROL and h.stage == "bridge")
    assert "dev vxlan-6784 master datapath" in relay.text and "hairpin" in relay.text
    nodes_visited = [h.ns for h in leg.hops if h.ns in ips]
    assert nodes_visited.index(CONTROL) < nodes_visited.index(WORKER2)
    # ... and a connection's answers the same way back
    web = next(p for p in dp.cluster.pods if p.name.startswith("web-") and p.node_name == WORKER2)
    branch = walk_one(dp, f"pod/{pod1.name}", f"pod/{web.name}:80")
    assert branch.forward.outcome.delivered and branch.reply.outcome.delivered
    back = [h.ns for h in branch.reply.hops if h.stage == "vxlan" and "encapsulate" in h.text]
    assert back == [WORKER2, CONTROL]


def test_the_cut_is_real(partial):
    """Without weave's relay (kindnet routes straight to the peer) the same ping dies at the cut."""
    dp = build_dataplane(Cluster.load([partial], cni="kindnet"))
    leg = walk_one(dp, f"pod/{tshoot(dp, WORKER).name}", f"pod/{tshoot(dp, WORKER2).name}", "icmp").forward
    assert leg.outcome.result == "dropped" and leg.outcome.ns == WORKER
    # and weave never sends to the cut-off peer directly, not even broadcasts
    wdp = build_dataplane(Cluster.load([partial]))
    worker2_ip = wdp.cluster.node(WORKER2).internal_ip
    assert not [f for f in wdp.node_netns(WORKER).fdb if f.dst == worker2_ip]
    assert wdp.node_netns(CONTROL).links["vxlan-6784"].hairpin
    assert not wdp.node_netns(WORKER).links["vxlan-6784"].hairpin
