"""flannel: the CNI meta-plugin (flannel-io/cni-plugin) on a small model and on the guide's lab,
flanneld's backends and masquerade rules as packets see them, and the lab for real (netns tests)."""

import ipaddress
import json
import subprocess

import pytest

from podnet.cluster import Cluster
from podnet.cni.flannel import FlannelPlugin, parse_subnet_env
from podnet.cni.plugins import plugin_for
from podnet.cni.plugins.host_local import reserved_addresses
from podnet.cni.spec import CNIError, Code, invoke
from podnet.dataplane import build_dataplane
from podnet.dataplane.topology import container_id
from podnet.linux import render
from podnet.linux.netfilter import Packet
from podnet.linux.state import DataplaneState, Link, Netns
from podnet.sim.walk import Walker

from conftest import GUIDE_LAB
from helpers import CONTROL, SPREAD_TRIES, WORKER, WORKER2, guide_inputs, lab_name, tshoot, walk

ip = ipaddress.ip_address
SUBNET_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"


# ============================================================================ the plugin on a small model

def world(subnet_env=SUBNET_ENV, *sandboxes):
    state = DataplaneState()
    host = state.add_netns(Netns("node1", kind="node", node="node1"))
    host.add_link(Link("lo", "loopback", mtu=65536)).add_address("127.0.0.1/8", "host")
    host.add_link(Link("eth0", segment="lan")).add_address("192.168.0.10/24")
    if subnet_env is not None:
        host.files["/run/flannel/subnet.env"] = subnet_env
    for name in sandboxes or ("cni-a",):
        state.add_netns(Netns(name, kind="pod", node="node1")).add_link(Link("lo", "loopback", up=False))
    return state, host


def env(cid="a", netns="cni-a"):
    return {"CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{netns}", "CNI_IFNAME": "eth0", "CNI_ARGS": "",
            "CNI_PATH": "/opt/cni/bin"}


def flannel_list(version="0.3.1", **conf):
    return {"cniVersion": version, "name": "mynet", "plugins": [{"type": "flannel", **conf}]}


def test_registered_by_type():
    assert isinstance(plugin_for("flannel"), FlannelPlugin)


def test_delegates_to_bridge_exactly_as_upstream():
    """The README's example: subnet.env + {"name": "mynet", "type": "flannel"} -> bridge with
    isGateway, ipMasq false (flannel masquerades), FLANNEL_MTU, host-local over FLANNEL_SUBNET
    and a route to FLANNEL_NETWORK; saved for DEL as Go's json.Marshal writes it."""
    state, host = world()
    result = invoke(flannel_list(), "ADD", env(), state, host)
    saved = host.files["/var/lib/cni/flannel/a"]
    assert saved == ('{"cniVersion":"0.3.1","ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],'
                     '"routes":[{"dst":"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,'
                     '"name":"mynet","type":"bridge"}')
    assert [str(i.address) for i in result.ips] == ["10.1.17.2/24"] and str(result.ips[0].gateway) == "10.1.17.1"
    pod = state.netns("cni-a")
    assert pod.links["eth0"].mtu == 1472
    assert render.ip_route(pod).splitlines() == ["10.1.0.0/16 via 10.1.17.1 dev eth0",
                                                 "10.1.17.0/24 dev eth0 proto kernel scope link src 10.1.17.2"]
    assert [str(a) for a in host.links["cni0"].addresses] == ["10.1.17.1/24"]
    assert "CNI-" not in host.iptables                    # no bridge ipMasq: FLANNEL_IPMASQ=true
    assert reserved_addresses(host, "mynet", "/var/lib/cni/networks") == {"10.1.17.2": "a"}


def test_delegate_fields_are_kept_and_ipmasq_follows_subnet_env():
    """`delegate` passes settings to the bridge (name, mtu not overwritten); with FLANNEL_IPMASQ=false
    the bridge masquerades instead; the configuration's own ipam.routes come first; subnetFile
    and dataDir move the files."""
    state, host = world(None)
    host.files["/etc/flannel/other.env"] = SUBNET_ENV.replace("IPMASQ=true", "IPMASQ=false")
    conf = flannel_list(subnetFile="/etc/flannel/other.env", dataDir="/var/lib/fl",
                        delegate={"bridge": "mynet0", "mtu": 1400, "isDefaultGateway": True},
                        ipam={"routes": [{"dst": "192.0.2.0/24"}]})
    invoke(conf, "ADD", env(), state, host)
    saved = json.loads(host.files["/var/lib/fl/a"])
    assert (saved["bridge"], saved["mtu"], saved["ipMasq"]) == ("mynet0", 1400, True)
    assert saved["ipam"]["routes"] == [{"dst": "192.0.2.0/24"}, {"dst": "10.1.0.0/16"}]
    assert "mynet0" in host.links and "cni0" not in host.links
    assert "-j MASQUERADE" in host.iptables and "CNI-" in host.iptables
    assert render.ip_route(state.netns("cni-a")).splitlines()[0] == "default via 10.1.17.1 dev eth0"


@pytest.mark.parametrize("subnet_env, conf, message", [
    (None, {}, "open /run/flannel/subnet.env: no such file or directory"),
    ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n", {},
     "/run/flannel/subnet.env is missing FLANNEL_MTU, FLANNEL_IPMASQ"),
    ("FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n", {}, "/run/flannel/subnet.env is missing FLANNEL_NETWORK, "
     "FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET"),
    (SUBNET_ENV.replace("1472", "x"), {}, "/run/flannel/subnet.env: invalid FLANNEL_MTU: 'x'"),
    (SUBNET_ENV, {"delegate": {"name": "x"}}, "'delegate' dictionary must not have 'name' field"),
    (SUBNET_ENV, {"delegate": {"ipam": {}}}, "'delegate' dictionary must not have 'ipam' field"),
    (SUBNET_ENV, {"delegate": {"type": 3}}, "must have (string) 'type' field"),
])
def test_errors_name_what_is_wrong(subnet_env, conf, message):
    state, host = world(subnet_env)
    with pytest.raises(CNIError) as e:
        invoke(flannel_list(**conf), "ADD", env(), state, host)
    assert message in e.value.msg and e.value.code == Code.INTERNAL
    assert 'plugin type="flannel" failed (add)' in str(e.value)
    assert "cni0" not in host.links and not state.netns("cni-a").links.get("eth0")


def test_a_failing_delegate_is_reported_as_upstream_wraps_it():
    state, host = world(SUBNET_ENV.replace("10.1.17.1/24", "10.1.17.1/31"))      # no room for a pod
    with pytest.raises(CNIError) as e:
        invoke(flannel_list(), "ADD", env(), state, host)
    assert e.value.msg.startswith("failed to delegate add: ")


def test_del_uses_the_saved_delegate_configuration():
    state, host = world(SUBNET_ENV, "cni-a", "cni-b")
    invoke(flannel_list(), "ADD", env("a", "cni-a"), state, host)
    invoke(flannel_list(), "ADD", env("b", "cni-b"), state, host)
    veth_a = state.netns("cni-a").links["eth0"].peer[1]
    # the subnet file may be gone by then: DEL only needs what ADD saved
    del host.files["/run/flannel/subnet.env"]
    invoke(flannel_list(), "DEL", env("a", "cni-a"), state, host)
    assert "/var/lib/cni/flannel/a" not in host.files and "/var/lib/cni/flannel/b" in host.files
    assert veth_a not in host.links and "eth0" not in state.netns("cni-a").links
    assert reserved_addresses(host, "mynet", "/var/lib/cni/networks") == {"10.1.17.3": "b"}
    invoke(flannel_list(), "DEL", env("a", "cni-a"), state, host)         # again: nothing to do
    invoke(flannel_list(), "DEL", env("z", "cni-z"), state, host)         # never added


def test_check_succeeds_as_upstreams_does():
    state, host = world()
    invoke(flannel_list("1.0.0"), "ADD", env(), state, host)
    invoke(flannel_list("1.0.0"), "CHECK", env(), state, host)


def test_parse_subnet_env_reads_networks():
    fenv = parse_subnet_env("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                            "FLANNEL_IPV6_NETWORK=fd00:10:244::/56\nFLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64\n"
                            "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    assert str(fenv["FLANNEL_SUBNET"]) == "10.244.1.0/24" and str(fenv["FLANNEL_IPV6_SUBNET"]) == "fd00:10:244:1::/64"
    assert fenv["FLANNEL_MTU"] == 1450 and fenv["FLANNEL_IPMASQ"] is False


# ============================================================================ on the guide's lab

@pytest.fixture(scope="module")
def vxlan():
    return build_dataplane(Cluster.load([GUIDE_LAB], cni="flannel"))


@pytest.fixture(scope="module")
def hostgw():
    return build_dataplane(Cluster.load([GUIDE_LAB], cni="flannel", cni_mode="host-gw"))


def test_pod_ips_are_the_control_planes_and_host_local_keeps_them(vxlan):
    for node in vxlan.cluster.nodes:
        ns = vxlan.node_netns(node.name)
        local = [p for p in vxlan.cluster.pods_on(node.name) if p.key in vxlan.pod_ns]
        owners = reserved_addresses(ns, "cbr0", "/var/lib/cni/networks")
        assert owners == {str(p.pod_ip): container_id(p) for p in local}
        for p in local:
            assert [str(a.ip) for a in vxlan.netns_of_pod(p).links["eth0"].addresses] == [str(p.pod_ip)]
            assert f"/var/lib/cni/flannel/{container_id(p)}" in ns.files


def test_runtime_del_and_recorded_pod_ips(manifest):
    """A recorded pod IP (a dump of a real cluster) that is not next in host-local's order is kept;
    the runtime's DEL undoes the ADD (the bridge stays, as the bridge plugin leaves it)."""
    path = manifest("p.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: recorded, namespace: default}
        spec: {nodeName: k8s-guide-worker, containers: [{name: c}]}
        status: {podIP: 10.244.1.77, phase: Running}
        """)
    dp = build_dataplane(Cluster.load([GUIDE_LAB, path], cni="flannel"))
    pod = dp.cluster.pod("recorded")
    pod_ns = dp.netns_of_pod(pod)
    assert [str(a) for a in pod_ns.links["eth0"].addresses] == ["10.244.1.77/24"]
    ctx = dp.contexts[WORKER]
    veth = pod_ns.links["eth0"].peer[1]
    from podnet.cni import solution_for
    solution = solution_for(dp.cluster.config)
    solution.runtime_del(ctx, pod, pod_ns)
    assert veth not in ctx.ns.links and f"/var/lib/cni/flannel/{container_id(pod)}" not in ctx.ns.files
    assert "10.244.1.77" not in reserved_addresses(ctx.ns, "cbr0", "/var/lib/cni/networks")
    assert "cni0" in ctx.ns.links                       # the bridge stays, as the bridge plugin leaves it
    # a new sandbox for it gets the recorded address again (host-local's history rebuilt)
    solution.add_pod(ctx, pod, pod_ns)
    assert [str(a) for a in pod_ns.links["eth0"].addresses] == ["10.244.1.77/24"]
    assert reserved_addresses(ctx.ns, "cbr0", "/var/lib/cni/networks")["10.244.1.77"] == container_id(pod)


def test_vxlan_mtu_is_why_pods_get_1450(vxlan, hostgw):
    """A 1460-byte packet does not leave a vxlan pod (eth0 MTU 1450: room for the 50 bytes of
    VXLAN headers on a 1500-byte underlay); with host-gw (no encapsulation) it crosses."""
    a, b = tshoot(vxlan, WORKER), tshoot(vxlan, CONTROL)
    (big,) = walk(vxlan, f"pod/{a.name}", f"pod/{b.name}", "icmp", size=1460).branches
    assert big.forward.outcome.result == "dropped" and "exceeds the MTU 1450 of eth0" in big.forward.outcome.reason
    (fits,) = walk(vxlan, f"pod/{a.name}", f"pod/{b.name}", "icmp", size=1450).branches
    assert fits.forward.outcome.delivered
    outer = next(h for h in fits.forward.hops if h.ns == CONTROL and h.stage == "recv" and h.iface == "eth0")
    assert outer.packet.endswith(":8472 udp")
    (gw,) = walk(hostgw, f"pod/{a.name}", f"pod/{b.name}", "icmp", size=1460).branches
    assert gw.forward.outcome.delivered


def test_masquerade_rules_as_packets_see_them(vxlan, manifest):
    """pod->pod and node->pod are not NATed (flannel.1's .0 is the node's source towards other
    subnets); pod->outside is; NodePort traffic kube-proxy marked is left to kube-proxy
    (flannel RETURNs it, no double NAT); externalTrafficPolicy Local keeps the client's address
    (`! -s cluster -d pod subnet -j RETURN`)."""
    a, b = tshoot(vxlan, WORKER), tshoot(vxlan, WORKER2)
    (pp,) = walk(vxlan, f"pod/{a.name}", f"pod/{b.name}", "icmp").branches
    assert not [h for h in pp.forward.hops if h.stage == "nat"]
    (np_,) = walk(vxlan, f"node/{WORKER}", f"pod/{b.name}", "icmp").branches
    assert not [h for h in np_.forward.hops if h.stage == "nat"]
    assert next(h for h in np_.forward.hops if h.stage == "recv" and h.iface == "flannel.1").packet \
        .startswith("10.244.1.0 -> ")

    path = manifest("np.yaml", """
        apiVersion: v1
        kind: Service
        metadata: {name: web-np, namespace: default}
        spec: {type: NodePort, selector: {app: web}, ports: [{port: 80, nodePort: 30080}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web-local, namespace: default}
        spec: {type: NodePort, externalTrafficPolicy: Local, selector: {app: web}, ports: [{port: 80, nodePort: 30081}]}
        """)
    dp = build_dataplane(Cluster.load([GUIDE_LAB, path], cni="flannel"))
    worker = dp.cluster.node(WORKER)
    result = walk(dp, "ip/172.18.0.1", f"{worker.internal_ip}:30080")
    assert len(result.branches) == 2
    for branch in result.branches:
        assert branch.forward.outcome.delivered and branch.reply.outcome.delivered
        post = [h for h in branch.forward.hops if h.ns == WORKER and h.stage == "POSTROUTING"][0]
        rules = [s.text for s in post.steps]
        assert any("KUBE-POSTROUTING" in r and "MASQUERADE" in r for r in rules)
        assert not any("FLANNEL-POSTRTG" in r and "MASQUERADE" in r for r in rules)
        seen = branch.forward.outcome.packet.src
        remote = branch.forward.outcome.node != WORKER
        # MASQUERADE to the outgoing device: flannel.1's .0 towards another node, cni0's .1 locally
        assert seen == (ip("10.244.1.0") if remote else ip("10.244.1.1"))
    (local,) = walk(dp, "ip/172.18.0.1", f"{worker.internal_ip}:30081").branches
    assert local.forward.outcome.delivered and local.forward.outcome.packet.src == ip("172.18.0.1")
    post = [h for h in local.forward.hops if h.ns == WORKER and h.stage == "POSTROUTING"][0]
    assert post.steps[-2].text.startswith("-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24")


def test_forward_chain(vxlan):
    text = vxlan.node_netns(WORKER).iptables.splitlines()
    c = '-m comment --comment "flanneld forward"'
    assert f"-A FORWARD {c} -j FLANNEL-FWD" in text
    assert [l for l in text if l.startswith("-A FLANNEL-FWD")] == [
        f"-A FLANNEL-FWD -s 10.244.0.0/16 {c} -j ACCEPT", f"-A FLANNEL-FWD -d 10.244.0.0/16 {c} -j ACCEPT"]


def test_forwarding_between_pods_survives_a_drop_policy(vxlan):
    """Why flanneld installs FLANNEL-FWD: with FORWARD's policy DROP (what docker sets on a host)
    pod traffic is still forwarded."""
    dp = build_dataplane(Cluster.load([GUIDE_LAB], cni="flannel"))
    for ns in (dp.node_netns(WORKER), dp.node_netns(CONTROL)):
        ns.iptables = ns.iptables.replace(":FORWARD ACCEPT", ":FORWARD DROP")
        ns.invalidate()
    a, b = tshoot(dp, WORKER), tshoot(dp, CONTROL)
    (branch,) = walk(dp, f"pod/{a.name}", f"pod/{b.name}", "icmp").branches
    assert branch.forward.outcome.delivered
    fwd = [h for h in branch.forward.hops if h.stage == "FORWARD"]
    assert fwd and all(h.steps[-1].chain == "FLANNEL-FWD" and h.steps[-1].action.endswith("ACCEPT") for h in fwd)


def test_dual_stack(tmp_path):
    guide_inputs(tmp_path)
    (tmp_path / "kind.yaml").write_text((GUIDE_LAB / "kind.yaml").read_text()
                                        .replace("name: k8s-guide\n", "name: k8s-guide\nnetworking: {ipFamily: dual}\n"))
    dp = build_dataplane(Cluster.load([tmp_path], cni="flannel"))
    worker = dp.cluster.node(WORKER)
    ns = dp.node_netns(WORKER)
    v6 = ns.links["flannel-v6.1"]
    assert v6.mtu == 1430 and v6.vxlan.local == worker.internal_ip_of(6) and v6.vxlan.dstport == 8472
    env_lines = ns.files["/run/flannel/subnet.env"].splitlines()
    assert env_lines == ["FLANNEL_NETWORK=10.244.0.0/16", "FLANNEL_SUBNET=10.244.1.1/24",
                         "FLANNEL_IPV6_NETWORK=fd00:10:244::/56", "FLANNEL_IPV6_SUBNET=fd00:10:244:1::1/64",
                         "FLANNEL_MTU=1450", "FLANNEL_IPMASQ=true"]
    assert "fd00:10:244::/64 via fd00:10:244:: dev flannel-v6.1 onlink" in render.ip_route(ns, family=6)
    assert "-A FLANNEL-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8" in ns.ip6tables
    a, b = tshoot(dp, WORKER), tshoot(dp, CONTROL)
    b_v6 = next(x for x in b.pod_ips if x.version == 6)
    assert {x.version for x in a.pod_ips} == {4, 6}
    outcome = Walker(dp.state).send(dp.pod_ns[a.key], Packet(ip("::"), b_v6, "icmpv6", icmp_type=128))
    assert outcome.delivered and outcome.ns == dp.pod_ns[b.key]


def test_host_gw_needs_one_l2_segment(manifest):
    """host-gw routes only to peers on the node's own segment (a route via a node behind a router
    would not work), and says so; vxlan reaches them through the underlay's gateway."""
    path = manifest("net.yaml", """
        apiVersion: podnet.dev/v1alpha1
        kind: PodnetConfig
        nodeNetwork:
          subnets: [{name: rack2, subnet: 172.19.0.0/16, gateway: 172.19.0.1, nodes: [k8s-guide-worker2]}]
        """)
    gw = build_dataplane(Cluster.load([GUIDE_LAB, path], cni="flannel", cni_mode="host-gw"))
    w2 = gw.cluster.node(WORKER2)
    assert str(w2.pod_cidrs[0]) not in render.ip_route(gw.node_netns(WORKER))
    assert any(WORKER2 in n and "not on one L2 segment" in n for n in gw.notes)
    vx = build_dataplane(Cluster.load([GUIDE_LAB, path], cni="flannel"))
    a, b = tshoot(vx, WORKER), tshoot(vx, WORKER2)
    (branch,) = walk(vx, f"pod/{a.name}", f"pod/{b.name}", "icmp").branches
    assert branch.forward.outcome.delivered
    assert any(h.stage == "vxlan" and f"dst {w2.internal_ip}" in h.text for h in branch.forward.hops)


# ============================================================================ the lab, for real

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    from podnet.lab.lab import Lab
    inputs = guide_inputs(tmp_path_factory.mktemp("flannel-lab"))
    name = lab_name("fl")
    lab = Lab(name)
    try:
        lab.up([str(inputs)], cni="flannel", proxy_mode="iptables")
        yield lab
    finally:
        if lab.exists():
            lab.down()


def _sh(netns, *argv) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, *argv], capture_output=True, text=True, timeout=30,
                          check=True).stdout


@pytest.mark.netns
def test_lab_vtep_and_bridge_ports_are_flannels(lab):
    """The kernel's flannel.1 as `ip -d link` shows it, and cni0's ports in hairpin mode."""
    node = lab.kname(WORKER)
    detail = _sh(node, "ip", "-d", "link", "show", "flannel.1")
    assert "mtu 1450" in detail and "vxlan id 1 local 172.18.0.3 dev eth0" in detail
    assert "dstport 8472" in detail and "nolearning" in detail
    ports = json.loads(_sh(node, "ip", "-d", "-j", "link", "show", "master", "cni0"))
    assert ports and all(p["linkinfo"]["info_slave_data"]["hairpin"] for p in ports)
    assert "10.244.0.0/24 via 10.244.0.0 dev flannel.1 onlink" in _sh(node, "ip", "route")
    assert "10.244.0.0 dev flannel.1 lladdr" in _sh(node, "ip", "neigh", "show", "nud", "permanent")


@pytest.mark.netns
def test_lab_cross_node_traffic_goes_through_the_vtep(lab):
    from podnet.lab import client
    pods = lab.record["pods"]
    src = next(v for k, v in pods.items() if "net-tshoot" in k and v["node"] == WORKER)
    web = next(v for k, v in pods.items() if "/web-" in k and v["node"] == WORKER2)

    def tx(node):
        stats = json.loads(_sh(lab.kname(node), "ip", "-s", "-j", "link", "show", "flannel.1"))[0]["stats64"]
        return stats["tx"]["packets"]
    before = tx(WORKER)
    r = client.request(lab.kname(src["netns"]), web["ips"][0], 80, http=True)
    assert (r.status, r.client) == ("ok", src["ips"][0])
    assert tx(WORKER) > before


@pytest.mark.netns
def test_lab_a_pod_reaches_itself_through_its_service(lab):
    """hairpinMode: a web pod's request to its own ClusterIP can be DNATed back to itself; the
    bridge sends it out of the port it came in on (br_netfilter re-bridges DNATed frames)."""
    from podnet.lab import client
    _, dp = lab.render(lab.record["inputs"], lab.record["overrides"])
    vip = str(dp.cluster.service("web").cluster_ip)
    key, me = next((k, v) for k, v in sorted(lab.record["pods"].items()) if "/web-" in k)
    seen = set()
    for _ in range(SPREAD_TRIES):
        r = client.request(lab.kname(me["netns"]), vip, 80, http=True)
        assert r.status == "ok", r
        seen.add(r.server)
        if key in seen and len(seen) == 2:
            break
    assert key in seen and len(seen) == 2
