"""The guide's flannel chapter (reference/guide/cni-flannel.md) on podnet's build of its lab:
the listings its commands show (vxlan backend, and the host-gw "direct routing" it mentions),
its "day in the life of a packet" as `podnet trace` walks it, and the SNAT rules.

The guide's lab with flannel is the same kind cluster with `make flannel`: podnet gets it with
`--cni flannel` (vxlan) and `--cni flannel --cni-mode host-gw`.
"""

import ipaddress
import re

import pytest
from click.testing import CliRunner

from podnet.cli.main import cli
from podnet.cluster import Cluster
from podnet.cni.spec import NetworkConfigList
from podnet.dataplane import build_dataplane
from podnet.linux import render
from podnet.linux.netfilter import Packet
from podnet.linux.routing import route_get
from podnet.sim.runtime import Runtime
from podnet.sim.walk import Walker

from conftest import GUIDE_LAB, REFERENCE
from helpers import CONTROL, WORKER, WORKER2, assert_hops, hops, host_veth, tshoot, walk_one

CHAPTER = (REFERENCE / "guide" / "cni-flannel.md").read_text()
ip = ipaddress.ip_address


@pytest.fixture(scope="module")
def vxlan():
    return build_dataplane(Cluster.load([GUIDE_LAB], cni="flannel"))


@pytest.fixture(scope="module")
def hostgw():
    return build_dataplane(Cluster.load([GUIDE_LAB], cni="flannel", cni_mode="host-gw"))


def vtep_mac(dp, node: str) -> str:
    return dp.node_netns(node).links["flannel.1"].mac


def peers(dp, node: str):
    return [n for n in dp.cluster.nodes if n.name != node]


def chapter_block(after: str) -> list[str]:
    """The lines of the first ```bash block after `after` in the chapter, prompts dropped."""
    rest = CHAPTER[CHAPTER.index(after):]
    body = rest[rest.index("```bash") + 7:]
    body = body[:body.index("```")]
    return [line for line in body.strip().splitlines() if line.strip() and not line.startswith(("$", "bash-"))]


def test_the_chapter_is_the_reference():
    assert "10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink" in CHAPTER
    assert chapter_block("4. VXLAN forwarding database") == [
        "5a:11:99:ab:8c:22 dst 172.18.0.3 self permanent", "ce:0a:4f:22:a4:2a dst 172.18.0.4 self permanent"]


# ============================================================================ vxlan: the listings

def test_conflist_is_kube_flannels(vxlan):
    for node in vxlan.cluster.nodes:
        conf = NetworkConfigList.parse(vxlan.node_netns(node.name).files["/etc/cni/net.d/10-flannel.conflist"])
        assert (conf.name, conf.cni_version, conf.types) == ("cbr0", "0.3.1", ["flannel", "portmap"])
        assert conf.plugins[0]["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}
        assert conf.plugins[1]["capabilities"] == {"portMappings": True}


def test_subnet_env(vxlan):
    """Step 1 of flanneld: the node's PodCIDR and the ClusterCIDR in /run/flannel/subnet.env."""
    for node in vxlan.cluster.nodes:
        cidr = node.pod_cidrs[0]
        assert vxlan.node_netns(node.name).files["/run/flannel/subnet.env"].splitlines() == [
            "FLANNEL_NETWORK=10.244.0.0/16", f"FLANNEL_SUBNET={cidr.network_address + 1}/24",
            "FLANNEL_MTU=1450", "FLANNEL_IPMASQ=true"]


def test_pod_ip_and_default_route(vxlan):
    """1. `ip route get 1.1` in the pod: via the node's cni0 address."""
    pod = tshoot(vxlan, WORKER2)
    gw = vxlan.cluster.node(WORKER2).pod_cidrs[0].network_address + 1
    (line,) = chapter_block("1. Pod IP and default route")
    assert line == "1.1.0.0 via 10.244.2.1 dev eth0 src 10.244.2.6 uid 0"
    # iproute2 reads `1.1` as 1.1.0.0
    assert route_get(vxlan.netns_of_pod(pod), "1.1.0.0").text() == f"1.1.0.0 via {gw} dev eth0 src {pod.pod_ip} uid 0"
    pod_ns = vxlan.netns_of_pod(pod)
    assert pod_ns.links["eth0"].mtu == 1450
    assert render.ip_route(pod_ns).splitlines() == [
        f"default via {gw} dev eth0", f"10.244.0.0/16 via {gw} dev eth0",
        f"{gw - 1}/24 dev eth0 proto kernel scope link src {pod.pod_ip}"]


def test_node_routing_table(vxlan):
    """2. `ip route` on the node: an onlink route per peer via its .0 on flannel.1, cni0's own subnet."""
    shape = chapter_block("2. Node routing table")
    assert shape[1] == "10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink"
    assert shape[3] == "10.244.2.0/24 dev cni0 proto kernel scope link src 10.244.2.1"
    for node in vxlan.cluster.nodes:
        routes = [(p.pod_cidrs[0], f"{p.pod_cidrs[0]} via {p.pod_cidrs[0].network_address} dev flannel.1 onlink")
                  for p in peers(vxlan, node.name)]
        cidr = node.pod_cidrs[0]
        routes.append((cidr, f"{cidr} dev cni0 proto kernel scope link src {cidr.network_address + 1}"))
        routes.append((ipaddress.ip_network("172.18.0.0/16"),
                       f"172.18.0.0/16 dev eth0 proto kernel scope link src {node.internal_ip}"))
        assert render.ip_route(vxlan.node_netns(node.name)).splitlines() == \
            ["default via 172.18.0.1 dev eth0"] + [line for _, line in sorted(routes)]


def test_static_arp_entries_for_next_hops(vxlan):
    """3. `ip neigh | grep PERM`: each peer's .0 at the peer's VTEP MAC."""
    assert all(re.fullmatch(r"10\.244\.[01]\.0 dev flannel\.1 lladdr [0-9a-f:]{17} PERMANENT", line)
               for line in chapter_block("3. Static ARP entries for NextHops"))
    for node in vxlan.cluster.nodes:
        shown = [line for line in render.ip_neigh(vxlan.node_netns(node.name)).splitlines() if "PERM" in line]
        assert sorted(shown) == sorted(f"{p.pod_cidrs[0].network_address} dev flannel.1 lladdr "
                                       f"{vtep_mac(vxlan, p.name)} PERMANENT" for p in peers(vxlan, node.name))


def test_vxlan_forwarding_database(vxlan):
    """4. `bridge fdb show dev flannel.1`: each peer's VTEP MAC at its node IP (head-end replication)."""
    for node in vxlan.cluster.nodes:
        shown = render.bridge_fdb(vxlan.node_netns(node.name)).splitlines()
        assert sorted(line.replace(" dev flannel.1", "") for line in shown) == sorted(
            f"{vtep_mac(vxlan, p.name)} dst {p.internal_ip} self permanent" for p in peers(vxlan, node.name))


def test_vtep_device(vxlan):
    """flannel.1: VNI 1, UDP 8472, the node IP, nolearning, MTU 1450, its own MAC holding the lease's .0/32."""
    macs = set()
    for node in vxlan.cluster.nodes:
        ns = vxlan.node_netns(node.name)
        dev = ns.links["flannel.1"]
        assert (dev.kind, dev.mtu, dev.vxlan.vni, dev.vxlan.dstport, dev.vxlan.learning, dev.vxlan.local,
                dev.vxlan.dev) == ("vxlan", 1450, 1, 8472, False, node.internal_ip, "eth0")
        assert [str(a) for a in dev.addresses] == [f"{node.pod_cidrs[0].network_address}/32"]
        (line,) = [l for l in render.ip_br_link(ns, vxlan.state).splitlines() if l.startswith("flannel.1")]
        assert line.split()[:3] == ["flannel.1", "UNKNOWN", dev.mac]
        macs.add(dev.mac)
        assert ns.links["cni0"].kind == "bridge" and [str(a) for a in ns.links["cni0"].addresses] == \
            [f"{node.pod_cidrs[0].network_address + 1}/24"]
        ports = [l for l in ns.links.values() if l.master == "cni0"]
        assert ports and all(l.hairpin and l.mtu == 1450 and re.fullmatch(r"veth[0-9a-f]{8}", l.name)
                             for l in ports)
    assert len(macs) == 3
    # the same inputs give the same MACs
    again = build_dataplane(Cluster.load([GUIDE_LAB], cni="flannel"))
    assert {vtep_mac(again, n.name) for n in again.cluster.nodes} == macs


def test_render_command(vxlan):
    """`podnet render --cni flannel fdb|neigh|routes` prints the listings above."""
    def run(*args):
        result = CliRunner().invoke(cli, ["render", "--cni", "flannel", *args])
        assert result.exit_code == 0, result.output
        return result.output
    ns = vxlan.node_netns(WORKER2)
    assert run("--node", WORKER2, "fdb").strip() == render.bridge_fdb(ns)
    assert run("--node", WORKER2, "neigh").strip() == render.ip_neigh(ns)
    assert run("--node", WORKER2, "routes").strip() == render.ip_route(ns)
    assert "10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink" in run("--node", WORKER2, "routes")
    whole = run("neigh")
    assert [l for l in whole.splitlines() if l.startswith("# ")] == [f"# node {n}: ip neigh"
                                                                     for n in (CONTROL, WORKER, WORKER2)]
    hostgw_routes = run("--cni-mode", "host-gw", "--node", WORKER2, "routes")
    assert "10.244.0.0/24 via 172.18.0.2 dev eth0" in hostgw_routes and "flannel.1" not in hostgw_routes


# ============================================================================ a day in the life of a packet

STAGES = ("route", "neigh", "xmit", "bridge", "vxlan")


def test_day_in_the_life_of_a_packet(vxlan):
    """Pod-1 (net-tshoot on the worker) talks to Pod-3 (net-tshoot on the control plane): the
    chapter's eight steps, then `podnet trace` walking them in the same order."""
    pod1, pod3 = tshoot(vxlan, WORKER), tshoot(vxlan, CONTROL)
    worker, control = vxlan.cluster.node(WORKER), vxlan.cluster.node(CONTROL)
    dst = pod3.pod_ip
    gw1 = worker.pod_cidrs[0].network_address + 1
    vtep1, vtep3 = worker.pod_cidrs[0].network_address, control.pod_cidrs[0].network_address
    mac3 = vtep_mac(vxlan, CONTROL)
    veth1, veth3 = host_veth(vxlan, pod1), host_veth(vxlan, pod3)
    pod3_mac = vxlan.netns_of_pod(pod3).links["eth0"].mac
    n1, n3 = vxlan.pod_ns[pod1.key], vxlan.pod_ns[pod3.key]
    # 1. the pod's route; 2. the worker's; 3. its static neighbour; 4. the FDB; 5. the peer's VTEP;
    # 6. the control plane's route; 8. local delivery
    assert route_get(vxlan.netns_of_pod(pod1), dst).text() == f"{dst} via {gw1} dev eth0 src {pod1.pod_ip} uid 0"
    assert route_get(vxlan.node_netns(WORKER), dst).text() == f"{dst} via {vtep3} dev flannel.1 src {vtep1} uid 0"
    assert f"{vtep3} dev flannel.1 lladdr {mac3} PERMANENT" in render.ip_neigh(vxlan.node_netns(WORKER))
    assert f"{mac3} dev flannel.1 dst {control.internal_ip} self permanent" in \
        render.bridge_fdb(vxlan.node_netns(WORKER))
    assert vxlan.node_netns(CONTROL).links["flannel.1"].mtu == 1450
    assert route_get(vxlan.node_netns(CONTROL), dst).text() == f"{dst} dev cni0 src {vtep3 + 1} uid 0"
    assert route_get(vxlan.netns_of_pod(pod3), dst).text() == f"local {dst} dev lo src {dst} uid 0"

    leg = walk_one(vxlan, f"pod/{pod1.name}", f"pod/{pod3.name}", "icmp").forward
    assert leg.outcome.result == "answered" and leg.outcome.ns == n3
    assert_hops(hops(leg, STAGES), [
        (n1, "route", f"{dst} via {gw1} dev eth0"),                                          # 1.
        (n1, "neigh", f"{gw1} is-at {vxlan.node_netns(WORKER).links['cni0'].mac}"),
        (n1, "xmit", f"out eth0 (veth) -> {veth1} in {WORKER}"),
        (WORKER, "bridge", "cni0: frame from port " + veth1 + " is addressed to the bridge itself"),  # 2.
        (WORKER, "route", f"forward: {dst} from {pod1.pod_ip} via {vtep3} dev flannel.1"),
        (WORKER, "neigh", f"{vtep3} dev flannel.1 lladdr {mac3} PERMANENT"),                 # 3.
        (WORKER, "vxlan", f"fdb {mac3} dev flannel.1 dst {control.internal_ip} self permanent; "
                          f"encapsulate VNI 1 in UDP {worker.internal_ip}:"),                 # 4.
        (WORKER, "route", f"{control.internal_ip} dev eth0 src {worker.internal_ip}"),
        (WORKER, "neigh", f"{control.internal_ip} is-at"),
        (WORKER, "xmit", f"onto L2 segment kind -> {CONTROL} eth0"),                         # 5.
        (CONTROL, "route", f"local {control.internal_ip}"),
        (CONTROL, "vxlan", "UDP 8472 VNI 1: decapsulated by flannel.1"),
        (CONTROL, "route", f"forward: {dst} from {pod1.pod_ip} dev cni0"),                   # 6.
        (CONTROL, "neigh", f"who-has {dst} on cni0? {dst} is-at {pod3_mac}"),                # 7.
        (CONTROL, "bridge", f"-> out {veth3}"),
        (CONTROL, "xmit", f"out {veth3} (veth) -> eth0 in {n3}"),
        (n3, "route", f"local {dst}"),                                                       # 8.
    ])
    # the encapsulated hop carries the node addresses on UDP 8472
    outer = next(h for h in leg.hops if h.ns == CONTROL and h.stage == "recv")
    assert outer.packet.startswith(f"{worker.internal_ip}:") and f"-> {control.internal_ip}:8472 udp" in outer.packet
    inner = next(h for h in leg.hops if h.ns == CONTROL and h.stage == "recv" and h.iface == "flannel.1")
    assert inner.packet == f"{pod1.pod_ip} -> {dst} icmp"        # no NAT between pods

    # the reply: the same path the other way, encapsulated towards the worker
    walker = Walker(vxlan.state, Runtime(vxlan.state))
    outcome = walker.send(n1, Packet(ip("0.0.0.0"), dst, "icmp", icmp_type=8))
    back = Walker(vxlan.state, walker.rt)
    answer = back.reply(outcome)
    assert answer.delivered and answer.ns == n1
    assert_hops(hops(back.hops, STAGES), [
        (n3, "route", f"{pod1.pod_ip} via {vtep3 + 1} dev eth0"),
        (n3, "neigh", f"{vtep3 + 1} is-at"),
        (n3, "xmit", f"out eth0 (veth) -> {veth3} in {CONTROL}"),
        (CONTROL, "bridge", "addressed to the bridge itself"),
        (CONTROL, "route", f"forward: {pod1.pod_ip} from {dst} via {vtep1} dev flannel.1"),
        (CONTROL, "neigh", f"{vtep1} dev flannel.1 lladdr {vtep_mac(vxlan, WORKER)} PERMANENT"),
        (CONTROL, "vxlan", f"dst {worker.internal_ip} self permanent; encapsulate VNI 1"),
        (CONTROL, "route", f"{worker.internal_ip} dev eth0"),
        (CONTROL, "neigh", f"{worker.internal_ip} is-at"),
        (CONTROL, "xmit", f"onto L2 segment kind -> {WORKER} eth0"),
        (WORKER, "route", f"local {worker.internal_ip}"),
        (WORKER, "vxlan", "decapsulated by flannel.1"),
        (WORKER, "route", f"forward: {pod1.pod_ip} from {dst} dev cni0"),
        (WORKER, "neigh", f"who-has {pod1.pod_ip} on cni0?"),
        (WORKER, "bridge", f"-> out {veth1}"),
        (WORKER, "xmit", f"out {veth1} (veth) -> eth0 in {n1}"),
        (n1, "route", f"local {pod1.pod_ip}"),
    ])


def test_tcp_reply_path_to_a_web_pod(vxlan):
    """A connection and its answer across the overlay: the reply leg comes back through both VTEPs."""
    client = tshoot(vxlan, CONTROL)
    web = next(p for p in vxlan.cluster.pods_on(WORKER2) if p.name.startswith("web-"))
    branch = walk_one(vxlan, f"pod/{client.name}", f"pod/{web.name}:80")
    assert branch.forward.outcome.result == "delivered" and branch.forward.outcome.ns == vxlan.pod_ns[web.key]
    assert branch.reply.outcome.delivered and branch.reply.outcome.ns == vxlan.pod_ns[client.key]
    encaps = [(h.ns, h.text.split(";")[0]) for h in branch.forward.hops + branch.reply.hops if h.stage == "vxlan"
              and "encapsulate" in h.text]
    assert encaps == [(CONTROL, f"flannel.1: fdb {vtep_mac(vxlan, WORKER2)} dev flannel.1 dst 172.18.0.4 self permanent"),
                      (WORKER2, f"flannel.1: fdb {vtep_mac(vxlan, CONTROL)} dev flannel.1 dst 172.18.0.2 self permanent")]
    assert "reply received by the client socket" in branch.reply.outcome.reason


# ============================================================================ SNAT functionality

def test_snat_rules_have_the_chapters_shape(vxlan):
    """The chapter's four POSTROUTING rules (an older flannel's), as current flannel writes them in
    its FLANNEL-POSTRTG chain: RETURN inside the cluster network, MASQUERADE --random-fully out of it."""
    listed = [line.split()[2:] for line in chapter_block("### SNAT functionality")[2:]]
    assert listed == [["RETURN", "all", "--", "*", "*", "10.244.0.0/16", "10.244.0.0/16"],
                      ["MASQUERADE", "all", "--", "*", "*", "10.244.0.0/16", "!224.0.0.0/4", "random-fully"],
                      ["RETURN", "all", "--", "*", "*", "!10.244.0.0/16", "10.244.0.0/24"],
                      ["MASQUERADE", "all", "--", "*", "*", "!10.244.0.0/16", "10.244.0.0/16", "random-fully"]]
    text = vxlan.node_netns(CONTROL).iptables
    chain = [l for l in text.splitlines() if l.startswith("-A FLANNEL-POSTRTG ")]
    c = '-m comment --comment "flanneld masq"'
    assert chain == [f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN",
                     f"-A FLANNEL-POSTRTG -s 10.244.0.0/24 -d 10.244.0.0/16 {c} -j RETURN",
                     f"-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.0.0/24 {c} -j RETURN",
                     f"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/24 {c} -j RETURN",
                     f"-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
                     f"-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 {c} -j MASQUERADE --random-fully"]
    assert f"-A POSTROUTING {c} -j FLANNEL-POSTRTG" in text.splitlines()


def test_pod_to_internet_is_masqueraded_to_the_node(vxlan):
    pod = tshoot(vxlan, WORKER)
    branch = walk_one(vxlan, f"pod/{pod.name}", "1.1.1.1:443")
    nat = [h for h in branch.forward.hops if h.stage == "nat" and h.ns == WORKER]
    assert len(nat) == 1 and f"source {pod.pod_ip}:40000 -> 172.18.0.3:40000" in nat[0].text
    post = next(h for h in branch.forward.hops if h.ns == WORKER and h.stage == "POSTROUTING")
    assert post.steps[-1].chain == "FLANNEL-POSTRTG" and "-j MASQUERADE --random-fully" in post.steps[-1].text
    assert branch.reply.outcome.delivered


# ============================================================================ host-gw ("direct routing")

def test_host_gw_listings(hostgw):
    for node in hostgw.cluster.nodes:
        ns = hostgw.node_netns(node.name)
        assert "flannel.1" not in ns.links and not ns.fdb and not render.ip_neigh(ns)
        cidr = node.pod_cidrs[0]
        routes = [(p.pod_cidrs[0], f"{p.pod_cidrs[0]} via {p.internal_ip} dev eth0") for p in peers(hostgw, node.name)]
        routes.append((cidr, f"{cidr} dev cni0 proto kernel scope link src {cidr.network_address + 1}"))
        routes.append((ipaddress.ip_network("172.18.0.0/16"),
                       f"172.18.0.0/16 dev eth0 proto kernel scope link src {node.internal_ip}"))
        assert render.ip_route(ns).splitlines() == ["default via 172.18.0.1 dev eth0"] + \
            [line for _, line in sorted(routes)]
        assert ns.files["/run/flannel/subnet.env"].splitlines()[2] == "FLANNEL_MTU=1500"
        assert all(l.mtu == 1500 for l in ns.links.values() if l.master == "cni0") and ns.links["cni0"].mtu == 1500
        assert "-A FLANNEL-POSTRTG" in ns.iptables


def test_host_gw_day_in_the_life(hostgw):
    pod1, pod3 = tshoot(hostgw, WORKER), tshoot(hostgw, CONTROL)
    control = hostgw.cluster.node(CONTROL)
    dst = pod3.pod_ip
    assert route_get(hostgw.node_netns(WORKER), dst).text() == \
        f"{dst} via {control.internal_ip} dev eth0 src 172.18.0.3 uid 0"
    branch = walk_one(hostgw, f"pod/{pod1.name}", f"pod/{pod3.name}", "icmp")
    n1, n3 = hostgw.pod_ns[pod1.key], hostgw.pod_ns[pod3.key]
    veth1, veth3 = host_veth(hostgw, pod1), host_veth(hostgw, pod3)
    assert_hops(hops(branch.forward, STAGES), [
        (n1, "route", f"{dst} via 10.244.1.1 dev eth0"),
        (n1, "neigh", "10.244.1.1 is-at"),
        (n1, "xmit", f"-> {veth1} in {WORKER}"),
        (WORKER, "bridge", "addressed to the bridge itself"),
        (WORKER, "route", f"forward: {dst} from {pod1.pod_ip} via {control.internal_ip} dev eth0"),
        (WORKER, "neigh", f"{control.internal_ip} is-at"),
        (WORKER, "xmit", f"onto L2 segment kind -> {CONTROL} eth0"),
        (CONTROL, "route", f"forward: {dst} from {pod1.pod_ip} dev cni0 iif eth0"),
        (CONTROL, "neigh", f"who-has {dst} on cni0?"),
        (CONTROL, "bridge", f"-> out {veth3}"),
        (CONTROL, "xmit", f"out {veth3} (veth) -> eth0 in {n3}"),
        (n3, "route", f"local {dst}"),
    ])
