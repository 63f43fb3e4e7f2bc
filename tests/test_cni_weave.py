"""weave (podnet.cni.weave): the ring, the IPAM, the weave-net plugin, the converged tables and the
relay; the relay for real in the lab."""

import ipaddress
import json

import pytest

from podnet.cluster import Cluster
from podnet.cni.base import pod_cni_env
from podnet.cni.spec import CNIError, invoke
from podnet.cni.weave import (ROUTER_STATE, WeaveIPAM, WeaveRing, relays, ring_for, veth_names)
from podnet.dataplane import build_dataplane
from podnet.dataplane.topology import container_id
from podnet.errors import AllocationError, InputError
from podnet.linux.state import DataplaneState, Link, Netns

from helpers import CONTROL, WORKER, WORKER2, guide_inputs, lab_name

RANGE = ipaddress.ip_network("10.32.0.0/12")


def inputs(tmp_path, podnet_config: str = "", extra: str = "", cni: str = "{plugin: weave}"):
    """The guide's lab with weave; `podnet_config` adds lines to the PodnetConfig."""
    return guide_inputs(tmp_path, extra=extra, config=f"cni: {cni}\n" + podnet_config)


# ----------------------------------------------------------------------------- the ring

def test_ring_halves_cidr_aligned_in_peer_name_order():
    ring = WeaveRing(RANGE, [("0b:00:00:00:00:00", "b"), ("0a:00:00:00:00:00", "a"), ("0c:00:00:00:00:00", "c")])
    assert ring.cidrs("a") == [ipaddress.ip_network("10.32.0.0/13")]
    assert ring.cidrs("b") == [ipaddress.ip_network("10.40.0.0/14")]
    assert ring.cidrs("c") == [ipaddress.ip_network("10.44.0.0/14")]
    assert ring.owner(ipaddress.ip_address("10.45.1.2")) == "c"


def test_ring_for_one_and_for_five_peers():
    one = WeaveRing(RANGE, [("aa:00:00:00:00:01", "solo")])
    assert one.cidrs("solo") == [RANGE]
    five = WeaveRing(RANGE, [(f"0{i}:00:00:00:00:00", f"n{i}") for i in range(5)])
    sizes = [c.prefixlen for i in range(5) for c in five.cidrs(f"n{i}")]
    assert sizes == [14, 14, 14, 15, 15]                  # [n0 n1] get the lower half, [n2 n3 n4] the upper
    assert sum(2 ** (32 - p) for p in sizes) == RANGE.num_addresses


def test_peer_names_decide_the_order(tmp_path):
    d = inputs(tmp_path, cni="{plugin: weave, options: {peerNames: {k8s-guide-worker: '0a:00:00:00:00:01', "
                             "k8s-guide-control-plane: '0a:00:00:00:00:02', k8s-guide-worker2: '0a:00:00:00:00:03'}}}")
    cluster = Cluster.load([d])
    ring = cluster.ipam.ring
    # the guide lab's own layout: worker 10.32/13, control plane 10.40/14, worker2 10.44/14
    assert ring.cidrs(WORKER) == [ipaddress.ip_network("10.32.0.0/13")]
    assert ring.cidrs(CONTROL) == [ipaddress.ip_network("10.40.0.0/14")]
    assert cluster.ipam.bridge_ip(WORKER2) == ipaddress.ip_address("10.44.0.0")     # `src 10.44.0.0`
    assert cluster.ipam.bridge_ip(WORKER) == ipaddress.ip_address("10.32.0.1")      # not the network address


# ----------------------------------------------------------------------------- the IPAM

def test_ipam_bridge_first_then_lowest_free(tmp_path):
    cluster = Cluster.load([inputs(tmp_path)])
    assert isinstance(cluster.ipam, WeaveIPAM)
    for node in cluster.nodes:
        first = cluster.ipam.ring.owned(node.name)[0][0]
        bridge = cluster.ipam.bridge_ip(node.name)
        assert int(bridge) == max(first, int(RANGE.network_address) + 1)
        pods = sorted((p for p in cluster.pods_on(node.name) if not p.host_network), key=lambda p: int(p.pod_ip))
        assert [int(p.pod_ip) - int(bridge) for p in pods] == list(range(1, len(pods) + 1))
    # a released address is the next one handed out (ipam/space: the lowest free, not round-robin)
    ipam = cluster.ipam
    pod = next(p for p in cluster.pods_on(WORKER) if p.name.startswith("web-"))
    ipam.release(pod, cluster.node(WORKER))
    again = ipam.allocate(pod, cluster.node(WORKER))
    assert again == pod.pod_ips


def test_ipam_recorded_addresses_and_conflicts(tmp_path, manifest):
    d = inputs(tmp_path, extra="""
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default}
spec: {nodeName: k8s-guide-worker, containers: [{name: c, image: x}]}
status: {podIP: 10.40.0.0, podIPs: [{ip: 10.40.0.0}]}
""")
    cluster = Cluster.load([d])
    # the recorded address keeps the bridge off it: expose takes the next free one
    assert cluster.pod("a").pod_ip == ipaddress.ip_address("10.40.0.0")
    assert cluster.ipam.bridge_ip(WORKER) == ipaddress.ip_address("10.40.0.1")
    (d / "extra.yaml").write_text((d / "extra.yaml").read_text() + """---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default}
spec: {nodeName: k8s-guide-worker2, containers: [{name: c, image: x}]}
status: {podIP: 10.40.0.0, podIPs: [{ip: 10.40.0.0}]}
""")
    with pytest.raises(AllocationError, match="10.40.0.0 is already used by default/a"):
        Cluster.load([d])


def test_ipam_exhausted_names_the_pod(tmp_path):
    d = inputs(tmp_path, cni="{plugin: weave, options: {ipallocRange: 10.32.0.0/29}}")
    with pytest.raises(AllocationError, match=r"Pod .*: status.podIPs: no free address in weave's ring for node"):
        Cluster.load([d])


@pytest.mark.parametrize("config,field", [
    ("cni: {plugin: weave, options: {ipallocRange: nope}}\n", "cni.options.ipallocRange"),
    ("cni: {plugin: weave, options: {ipallocRange: 'fd00::/64'}}\n", "cni.options.ipallocRange"),
    ("cni: {plugin: weave, options: {peerNames: {k8s-guide-worker: zz}}}\n", "cni.options.peerNames.k8s-guide-worker"),
    ("cni: {plugin: weave, mode: sleeve}\n", "cni.mode"),
    ("cni: {plugin: weave}\nnodeNetwork: {unreachable: [[k8s-guide-worker, nobody]]}\n",
     "nodeNetwork.unreachable[0]"),
])
def test_bad_input_names_the_field(tmp_path, config, field):
    d = inputs(tmp_path)
    (d / "podnet.yaml").write_text("apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n" + config)
    with pytest.raises(InputError) as e:
        build_dataplane(Cluster.load([d]))
    assert field in str(e.value) and "\n" not in str(e.value)


def test_ipv6_clusters_are_refused(tmp_path):
    d = inputs(tmp_path)
    (d / "podnet.yaml").write_text("apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\ncni: {plugin: weave}\n"
                                   "ipFamily: ipv6\n")
    with pytest.raises(InputError, match="weave allocates IPv4 addresses only"):
        Cluster.load([d])


# ----------------------------------------------------------------------------- the plugin

def test_veth_names_fit_ifnamsiz():
    host, guest = veth_names("6be12f5c0ffee")
    assert (host, guest) == ("vethwepl6be12f5", "vethwepg6be12f5") and len(host) == 15


def _node_with_router(ranges, bridge="10.44.0.0/12"):
    state = DataplaneState()
    node = state.add_netns(Netns("node"))
    br = node.add_link(Link("weave", "bridge", mtu=1376))
    br.add_address(bridge)
    node.files[ROUTER_STATE] = json.dumps({"range": "10.32.0.0/12", "ranges": ranges, "bridge": bridge,
                                           "allocations": {}})
    return state, node


CONF = {"cniVersion": "0.3.0", "name": "weave", "plugins": [{"name": "weave", "type": "weave-net",
                                                             "hairpinMode": True}]}


def _env(cid, netns):
    return {"CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0",
            "CNI_ARGS": "", "CNI_PATH": "/opt/cni/bin"}


def test_plugin_add_del_through_the_router():
    lo = int(ipaddress.ip_address("10.44.0.0"))
    state, node = _node_with_router([[lo, lo + 2 ** 18]])
    pods = [state.add_netns(Netns(f"pod{i}", kind="pod")) for i in range(2)]
    r1 = invoke(CONF, "ADD", _env("a" * 64, "pod0"), state, node)
    r2 = invoke(CONF, "ADD", _env("b" * 64, "pod1"), state, node)
    assert [str(r.ips[0].address) for r in (r1, r2)] == ["10.44.0.1/12", "10.44.0.2/12"]
    assert str(r1.ips[0].gateway) == "10.44.0.0" and not r1.interfaces
    veth = node.links["vethweplaaaaaaa"]
    assert veth.master == "weave" and veth.hairpin and veth.mtu == 1376
    from podnet.linux import render
    assert render.ip_route(pods[0]).splitlines() == [
        "default via 10.44.0.0 dev eth0", "10.32.0.0/12 dev eth0 proto kernel scope link src 10.44.0.1"]
    router = json.loads(node.files[ROUTER_STATE])
    assert router["allocations"] == {"a" * 64: "10.44.0.1", "b" * 64: "10.44.0.2"}
    # DEL frees the address, and the next container gets it (the lowest free)
    invoke(CONF, "DEL", _env("a" * 64, "pod0"), state, node)
    assert "vethweplaaaaaaa" not in node.links and "eth0" not in pods[0].links
    r3 = invoke(CONF, "ADD", _env("c" * 64, "pod0"), state, node)
    assert str(r3.ips[0].address) == "10.44.0.1/12"
    invoke(CONF, "DEL", _env("c" * 64, "pod0"), state, node)
    assert "c" * 64 not in json.loads(node.files[ROUTER_STATE])["allocations"]


def test_plugin_errors_as_weave_reports_them():
    state = DataplaneState()
    node = state.add_netns(Netns("node"))
    state.add_netns(Netns("pod0", kind="pod"))
    with pytest.raises(CNIError, match='bridge "weave" not present; did you launch weave'):
        invoke(CONF, "ADD", _env("a" * 64, "pod0"), state, node)
    node.add_link(Link("weave", "bridge")).add_address("10.32.0.1/12")
    with pytest.raises(CNIError, match="127.0.0.1:6784.*connection refused"):
        invoke(CONF, "ADD", _env("a" * 64, "pod0"), state, node)
    bad = {**CONF, "plugins": [{"type": "weave-net", "ipMasq": True}]}
    with pytest.raises(CNIError, match="IP Masquerading functionality not supported"):
        invoke(bad, "ADD", _env("a" * 64, "pod0"), state, node)


def test_every_pod_got_the_address_the_control_plane_decided(tmp_path):
    dp = build_dataplane(Cluster.load([inputs(tmp_path)]))
    for pod in dp.cluster.pods:
        if pod.key not in dp.pod_ns:
            continue
        ns = dp.netns_of_pod(pod)
        assert [a.ip for a in ns.links["eth0"].addresses] == pod.pod_ips
        host = ns.links["eth0"].peer[1]
        assert host == veth_names(container_id(pod))[0]
        router = json.loads(dp.node_netns(pod.node_name).files[ROUTER_STATE])
        assert router["allocations"][container_id(pod)] == str(pod.pod_ip)
        # weave's list is 0.3.0: the runtime may not CHECK it
        with pytest.raises(CNIError, match="does not support the CHECK command"):
            invoke(dp.node_netns(pod.node_name).files["/etc/cni/net.d/10-weave.conflist"], "CHECK",
                   pod_cni_env(pod, ns), dp.state, dp.contexts[pod.node_name])


# ----------------------------------------------------------------------------- tables and the relay

def test_converged_tables_and_learning_off_towards_the_overlay(tmp_path):
    dp = build_dataplane(Cluster.load([inputs(tmp_path)]))
    macs = {n.name: {dp.node_netns(n.name).links["weave"].mac} |
            {dp.netns_of_pod(p).links["eth0"].mac for p in dp.cluster.pods_on(n.name) if p.key in dp.pod_ns}
            for n in dp.cluster.nodes}
    ips = {n.name: n.internal_ip for n in dp.cluster.nodes}
    for node in dp.cluster.nodes:
        ns = dp.node_netns(node.name)
        assert not ns.links["vethwe-bridge"].learning and not ns.links["vxlan-6784"].learning
        assert not ns.links["vxlan-6784"].vxlan.learning
        for peer, peer_macs in macs.items():
            for mac in peer_macs:
                on = {(f.dev, f.master, f.dst) for f in ns.fdb if f.mac == mac}
                if peer == node.name:
                    assert ("vethwe-datapath", "datapath", None) in on
                else:
                    assert {("vethwe-bridge", "weave", None), ("vxlan-6784", "datapath", None),
                            ("vxlan-6784", None, ips[peer])} <= on
        flood = sorted(f.dst for f in ns.fdb if f.mac == "00:00:00:00:00:00")
        assert flood == sorted(ip for n, ip in ips.items() if n != node.name)


def test_relays_pick_the_first_node_reaching_both(tmp_path):
    cluster = Cluster.load([inputs(tmp_path, f"nodeNetwork: {{unreachable: [[{WORKER}, {WORKER2}]]}}\n")])
    assert relays(cluster) == {(WORKER, WORKER2): CONTROL, (WORKER2, WORKER): CONTROL}
    # cut off from everyone: no relay, so no entries towards it at all
    cut = Cluster.load([inputs(tmp_path, f"nodeNetwork: {{unreachable: [[{WORKER}, {WORKER2}], "
                                         f"[{CONTROL}, {WORKER2}]]}}\n")])
    assert relays(cut)[(WORKER, WORKER2)] is None
    dp = build_dataplane(cut)
    w2 = {f.mac for f in dp.node_netns(WORKER2).fdb if f.master == "datapath" and f.dev == "vethwe-datapath"}
    assert not [f for f in dp.node_netns(WORKER).fdb if f.mac in w2]


def test_ring_for_matches_the_cluster(tmp_path):
    cluster = Cluster.load([inputs(tmp_path)])
    ring = ring_for(cluster.config, [n.name for n in cluster.nodes])
    assert {n.name: ring.cidrs(n.name) for n in cluster.nodes} == \
        {n.name: cluster.ipam.ring.cidrs(n.name) for n in cluster.nodes}


def test_the_datapath_is_a_bridge_only_where_podnet_says_so(tmp_path):
    """The docs' promise: ODP is modelled, with the real device names."""
    dp = build_dataplane(Cluster.load([inputs(tmp_path)]))
    ns = dp.node_netns(WORKER)
    assert [ns.links[n].kind for n in ("weave", "datapath", "vxlan-6784")] == ["bridge", "bridge", "vxlan"]


# ----------------------------------------------------------------------------- for real

@pytest.mark.netns
def test_relay_in_the_lab(tmp_path):
    """The partial-connectivity demo in namespaces: the worker's packets to worker2 are dropped by the
    switch, pods still reach each other through the control plane."""
    from podnet.lab import client
    from podnet.lab.lab import Lab
    d = inputs(tmp_path, f"podSubnet: 10.32.0.0/12\nnodeNetwork: {{unreachable: [[{WORKER}, {WORKER2}]]}}\n")
    name = lab_name("w")
    lab = Lab(name)
    try:
        lab.up([str(d)])
        rec = lab.record
        web2 = next(v for k, v in rec["pods"].items() if "/web-" in k and v["node"] == WORKER2)
        tshoot = next(v for k, v in rec["pods"].items() if "net-tshoot" in k and v["node"] == WORKER)
        ok = None
        for _ in range(5):
            ok = client.request(lab.kname(tshoot["netns"]), web2["ips"][0], 80, http=True)
            if ok.status == "ok":
                break
        assert (ok.status, ok.client) == ("ok", tshoot["ips"][0]), ok
        # the nodes themselves cannot talk: the switch drops worker -> worker2 (a TCP RST would mean reachable)
        direct = client.request(lab.kname(WORKER), rec["nodes"][WORKER2]["ips"][0], 10250, timeout=1.0)
        assert direct.status != "ok" and direct.status != "refused", direct
        via = client.request(lab.kname(WORKER), rec["nodes"][CONTROL]["ips"][0], 10250, timeout=1.0)
        assert via.status in ("ok", "refused"), via
        from podnet.lab.verify import verify
        report = verify(lab, state_only=True)
        assert report.ok, report.text()
    finally:
        if lab.exists():
            lab.down()
