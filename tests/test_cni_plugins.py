"""The reference plugins on a small model: loopback, ptp, bridge, bandwidth (issue #4).

host-local and portmap have their own files (test_cni_host_local.py, test_cni_portmap.py).
"""

import hashlib
import ipaddress
import json

import pytest

from podnet.cni.plugins import plugin_for, register
from podnet.cni.plugins.bandwidth import ifb_name, qdiscs
from podnet.cni.plugins.bridge import is_promisc
from podnet.cni.plugins.netfilter import format_chain_name, save_rule, save_string
from podnet.cni.spec import CNIError, Code, Plugin, invoke, run_plugin
from podnet.linux import render
from podnet.linux.netfilter import Packet
from podnet.linux.routing import route_get
from podnet.linux.state import DataplaneState, Link, Netns, default_rules
from podnet.sim.walk import Walker

ip = ipaddress.ip_address


# ------------------------------------------------------------------ a small model

def world(*sandboxes: str):
    """A node `node1` (lo, eth0 on a LAN) and empty pod sandboxes (lo down, as `ip netns add` leaves it)."""
    state = DataplaneState()
    host = state.add_netns(Netns("node1", kind="node", node="node1"))
    lo = host.add_link(Link("lo", "loopback", mtu=65536))
    lo.add_address("127.0.0.1/8", "host")
    host.add_link(Link("eth0", segment="lan")).add_address("192.168.0.10/24")
    for name in sandboxes:
        ns = state.add_netns(Netns(name, kind="pod", node="node1"))
        ns.add_link(Link("lo", "loopback", up=False))
        ns.rules += default_rules(6)        # the kernel's IPv6 rules (the model starts with IPv4's)
    return state, host


def env(cid: str, netns: str = "", ifname: str = "eth0", args: str = "") -> dict:
    return {"CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{netns or 'cni-' + cid}", "CNI_IFNAME": ifname,
            "CNI_ARGS": args, "CNI_PATH": "/opt/cni/bin"}


def veth_of(cid: str) -> str:
    return "veth" + hashlib.sha256(cid.encode()).hexdigest()[:8]


def errors(fn, *args, **kwargs) -> CNIError:
    with pytest.raises(CNIError) as e:
        fn(*args, **kwargs)
    return e.value


def ptp_list(ip_masq=False, ranges=(("10.1.1.0/24",),), routes=("0.0.0.0/0",), mtu=1450, **extra):
    return {"cniVersion": "1.0.0", "name": "ptpnet", "plugins": [
        {"type": "ptp", "ipMasq": ip_masq, "mtu": mtu,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": s} for s in rs] for rs in ranges],
                  "routes": [{"dst": d} for d in routes]}}, *extra.get("more", [])]}


# ------------------------------------------------------------------ loopback

def test_loopback_brings_lo_up_with_its_addresses():
    state, host = world("cni-a")
    out = run_plugin(plugin_for("loopback"), {**env("a", ifname="lo"), "CNI_COMMAND": "ADD"},
                     json.dumps({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}), host, state)
    assert out == {"cniVersion": "1.0.0",
                   "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": "/var/run/netns/cni-a"}],
                   "ips": [{"interface": 0, "address": "127.0.0.1/8"}, {"interface": 0, "address": "::1/128"}],
                   "dns": {}}
    sandbox = state.netns("cni-a")
    assert sandbox.links["lo"].up
    assert route_get(sandbox, "127.0.0.1").type == "local"
    conf = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
    invoke(conf, "CHECK", env("a", ifname="lo"), state, host)
    invoke(conf, "DEL", env("a", ifname="lo"), state, host)
    assert not sandbox.links["lo"].up
    assert errors(invoke, conf, "CHECK", env("a", ifname="lo"), state, host).msg == "loopback interface is down"


# ------------------------------------------------------------------ ptp

def test_ptp_add_wires_a_routed_veth():
    state, host = world("cni-a")
    result = invoke(ptp_list(), "ADD", env("a"), state, host)
    veth = veth_of("a")
    pod = state.netns("cni-a")
    assert result.to_json()["interfaces"] == [
        {"name": veth, "mac": host.links[veth].mac},
        {"name": "eth0", "mac": pod.links["eth0"].mac, "sandbox": "/var/run/netns/cni-a"}]
    assert result.to_json()["ips"] == [{"interface": 1, "address": "10.1.1.2/24", "gateway": "10.1.1.1"}]
    assert result.to_json()["routes"] == [{"dst": "0.0.0.0/0"}]
    # the container: the /24, and everything (even the subnet) via the gateway
    assert render.ip_route(pod) == ("default via 10.1.1.1 dev eth0\n"
                                    "10.1.1.0/24 via 10.1.1.1 dev eth0 src 10.1.1.2\n"
                                    "10.1.1.1 dev eth0 scope link src 10.1.1.2")
    assert route_get(pod, "10.1.1.77").text() == "10.1.1.77 via 10.1.1.1 dev eth0 src 10.1.1.2 uid 0"
    # the host: the gateway as a /32 on the veth, a host route to the pod
    assert [str(a) for a in host.links[veth].addresses] == ["10.1.1.1/32"]
    assert f"10.1.1.2 dev {veth} scope host" in render.ip_route(host).splitlines()
    assert host.links[veth].mtu == pod.links["eth0"].mtu == 1450
    assert host.sysctls["net.ipv4.ip_forward"] == "1"
    assert host.files["/var/lib/cni/networks/ptpnet/10.1.1.2"] == "a\r\neth0"


def test_ptp_pods_reach_each_other_through_the_gateway():
    state, host = world("cni-a", "cni-b")
    invoke(ptp_list(), "ADD", env("a"), state, host)
    invoke(ptp_list(), "ADD", env("b"), state, host)
    assert [str(a) for a in host.links[veth_of("b")].addresses] == ["10.1.1.1/32"]     # the same .1 on every veth
    outcome = Walker(state).send("cni-a", Packet(ip("0.0.0.0"), ip("10.1.1.3"), "icmp", icmp_type=8))
    assert outcome.result == "answered" and outcome.ns == "cni-b"


def test_ptp_ip_masq_chain():
    state, host = world("cni-a")
    invoke(ptp_list(ip_masq=True), "ADD", env("a"), state, host)
    chain = format_chain_name("ptpnet", "a")
    assert chain == "CNI-" + hashlib.sha512(b"ptpneta").hexdigest()[:24] and len(chain) == 28
    comment = '"name: \\"ptpnet\\" id: \\"a\\""'
    assert host.iptables.splitlines() == [
        "*nat", ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]",
        ":POSTROUTING ACCEPT [0:0]", f":{chain} - [0:0]",
        f"-A POSTROUTING -s 10.1.1.2/32 -m comment --comment {comment} -j {chain}",
        f"-A {chain} -d 10.1.1.0/24 -m comment --comment {comment} -j ACCEPT",
        f"-A {chain} ! -d 224.0.0.0/4 -m comment --comment {comment} -j MASQUERADE",
        "COMMIT"]
    invoke(ptp_list(ip_masq=True), "CHECK", env("a"), state, host)
    invoke(ptp_list(ip_masq=True), "DEL", env("a"), state, host)
    assert chain not in host.iptables


def test_ptp_del_is_idempotent_and_survives_a_gone_netns():
    state, host = world("cni-a", "cni-b")
    for cid in ("a", "b"):
        invoke(ptp_list(), "ADD", env(cid), state, host)
    invoke(ptp_list(), "DEL", env("a"), state, host)
    assert veth_of("a") not in host.links and "eth0" not in state.netns("cni-a").links
    assert "10.1.1.2 dev" not in render.ip_route(host)
    assert "/var/lib/cni/networks/ptpnet/10.1.1.2" not in host.files
    invoke(ptp_list(), "DEL", env("a"), state, host)             # again
    del state.namespaces["cni-b"]                                 # the runtime already removed the sandbox
    invoke(ptp_list(), "DEL", env("b"), state, host)
    assert "/var/lib/cni/networks/ptpnet/10.1.1.3" not in host.files


def test_ptp_check_validates_prev_result():
    state, host = world("cni-a")
    invoke(ptp_list(), "ADD", env("a"), state, host)
    invoke(ptp_list(), "CHECK", env("a"), state, host)
    pod = state.netns("cni-a")
    pod.routes = [r for r in pod.routes if r.dst.prefixlen != 0]      # someone deleted the default route
    e = errors(invoke, ptp_list(), "CHECK", env("a"), state, host)
    assert e.code == Code.INTERNAL and "Expected Route" in e.msg and e.context.startswith('plugin type="ptp"')


def test_ptp_dual_stack():
    state, host = world("cni-a")
    invoke(ptp_list(ranges=(("10.1.1.0/24",), ("fd00:1::/64",)), routes=("0.0.0.0/0", "::/0")), "ADD", env("a"),
           state, host)
    pod, veth = state.netns("cni-a"), veth_of("a")
    assert render.ip_route(pod, family=6).splitlines() == [
        "default via fd00:1::1 dev eth0", "fd00:1::/64 via fd00:1::1 dev eth0 src fd00:1::2 metric 256",
        "fd00:1::1 dev eth0 scope link src fd00:1::2"]
    assert [str(a) for a in host.links[veth].addresses] == ["10.1.1.1/32", "fd00:1::1/128"]
    assert host.sysctls["net.ipv6.conf.all.forwarding"] == "1"
    assert route_get(pod, "fd00:1::9").gateway == ip("fd00:1::1")
    assert host.files["/var/lib/cni/networks/ptpnet/last_reserved_ip.1"] == "fd00:1::2"


def test_ptp_needs_the_sandbox_and_releases_the_address_on_failure():
    state, host = world()
    e = errors(invoke, ptp_list(), "ADD", env("a"), state, host)
    assert e.code == Code.UNKNOWN_CONTAINER
    assert not [p for p in host.files if p.startswith("/var/lib/cni/networks/ptpnet/10.")]


# ------------------------------------------------------------------ bridge

def bridge_list(ipam=True, **conf):
    plugin = {"type": "bridge", "bridge": "cni0", "isDefaultGateway": True, "mtu": 1450, **conf}
    if ipam:
        plugin["ipam"] = {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]],
                          "routes": [{"dst": "10.244.0.0/16"}]}
    return {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [plugin]}


def test_bridge_add():
    state, host = world("cni-a", "cni-b")
    result = invoke(bridge_list(hairpinMode=True), "ADD", env("a"), state, host)
    br, veth, pod = host.links["cni0"], host.links[veth_of("a")], state.netns("cni-a")
    assert (br.kind, br.up, br.mtu, [str(a) for a in br.addresses]) == ("bridge", True, 1450, ["10.244.1.1/24"])
    assert (veth.master, veth.hairpin, veth.addresses) == ("cni0", True, [])
    j = result.to_json()
    assert [i["name"] for i in j["interfaces"]] == ["cni0", veth.name, "eth0"]
    assert j["interfaces"][0]["mac"] == br.mac and j["interfaces"][2]["sandbox"] == "/var/run/netns/cni-a"
    assert j["ips"] == [{"interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"}]
    assert j["routes"] == [{"dst": "10.244.0.0/16"}, {"dst": "0.0.0.0/0", "gw": "10.244.1.1"}]
    # the kernel's prefix route stays: neighbours are reached over the bridge
    assert render.ip_route(pod).splitlines() == [
        "default via 10.244.1.1 dev eth0", "10.244.0.0/16 via 10.244.1.1 dev eth0",
        "10.244.1.0/24 dev eth0 proto kernel scope link src 10.244.1.2"]
    assert pod.sysctls["net.ipv4.conf.eth0.arp_notify"] == "1"
    assert "10.244.1.0/24 dev cni0 proto kernel scope link src 10.244.1.1" in render.ip_route(host)
    invoke(bridge_list(hairpinMode=True), "ADD", env("b"), state, host)
    assert host.links[veth_of("b")].master == "cni0" and [str(a) for a in br.addresses] == ["10.244.1.1/24"]
    outcome = Walker(state).send("cni-a", Packet(ip("0.0.0.0"), ip("10.244.1.3"), "icmp", icmp_type=8))
    assert outcome.result == "answered" and outcome.ns == "cni-b"
    invoke(bridge_list(hairpinMode=True), "CHECK", env("a"), state, host)
    invoke(bridge_list(hairpinMode=True), "DEL", env("a"), state, host)
    assert veth_of("a") not in host.links and "cni0" in host.links


def test_bridge_options_and_unsupported_fields():
    state, host = world("cni-a", "cni-b", "cni-c")
    e = errors(invoke, bridge_list(hairpinMode=True, promiscMode=True), "ADD", env("a"), state, host)
    assert e.code == Code.INVALID_CONFIG
    e = errors(invoke, bridge_list(vlan=100), "ADD", env("a"), state, host)
    assert e.code == Code.UNSUPPORTED_FIELD and "'vlan': 100" in e.msg
    invoke(bridge_list(promiscMode=True), "ADD", env("a"), state, host)
    assert is_promisc(host, "cni0")
    # another address on the bridge: an error, unless forceAddress
    host.links["cni0"].addresses.clear()
    host.links["cni0"].add_address("10.9.9.1/24")
    e = errors(invoke, bridge_list(promiscMode=True), "ADD", env("b"), state, host)
    assert '"cni0" already has an IP address different from 10.244.1.1/24' in e.msg
    invoke(bridge_list(promiscMode=True, forceAddress=True), "ADD", env("c"), state, host)
    assert [str(a) for a in host.links["cni0"].addresses] == ["10.244.1.1/24"]


def test_bridge_mac_capability_and_layer2_only():
    state, host = world("cni-a", "cni-b")
    conf = bridge_list(capabilities={"mac": True})
    invoke(conf, "ADD", env("a"), state, host, runtime_config={"mac": "c2:11:22:33:44:55"})
    assert state.netns("cni-a").links["eth0"].mac == "c2:11:22:33:44:55"
    result = invoke(bridge_list(ipam=False, isDefaultGateway=False), "ADD", env("b"), state, host)
    assert result.ips == [] and state.netns("cni-b").links["eth0"].up
    assert state.netns("cni-b").links["eth0"].addresses == []


# ------------------------------------------------------------------ bandwidth

def test_bandwidth_records_tbf_qdiscs_and_an_ifb():
    state, host = world("cni-a")
    conf = ptp_list(more=[{"type": "bandwidth", "capabilities": {"bandwidth": True}}])
    bw = {"ingressRate": 8_000_000, "ingressBurst": 8 * 128 * 1024, "egressRate": 1_000_000,
          "egressBurst": 8 * 64 * 1024}
    result = invoke(conf, "ADD", env("a"), state, host, runtime_config={"bandwidth": bw})
    veth, ifb = veth_of("a"), ifb_name("ptpnet", "a")
    assert len(ifb) == 15 and ifb.startswith("bwp")
    assert host.links[ifb].kind == "ifb" and host.links[ifb].mtu == 1450
    assert [i.name for i in result.interfaces] == [veth, "eth0", ifb]
    assert qdiscs(host, veth).splitlines() == [
        "qdisc tbf 1: root refcnt 2 rate 8Mbit burst 128Kb lat 25ms",
        "qdisc ingress ffff: parent ffff:fff1 ----------------",
        "filter parent ffff: protocol all pref 1 u32 match u32 0 0 flowid 1:1 action order 1: mirred "
        f"(Egress Redirect to device {ifb}) stolen"]
    assert qdiscs(host, ifb) == "qdisc tbf 1: root refcnt 2 rate 1Mbit burst 64Kb lat 25ms\n"
    invoke(conf, "CHECK", env("a"), state, host, runtime_config={"bandwidth": bw})
    invoke(conf, "DEL", env("a"), state, host, runtime_config={"bandwidth": bw})
    assert ifb not in host.links and qdiscs(host, veth) == "" and qdiscs(host, ifb) == ""


def test_bandwidth_rate_needs_burst():
    state, host = world("cni-a")
    conf = ptp_list(more=[{"type": "bandwidth", "ingressRate": 1000}])
    e = errors(invoke, conf, "ADD", env("a"), state, host)
    assert e.code == Code.INVALID_CONFIG and e.msg == "if rate is set, burst must also be set"


# ------------------------------------------------------------------ iptables-save form

@pytest.mark.parametrize("args, text", [
    (["-d", "10.1.1.2/24", "-j", "ACCEPT", "-m", "comment", "--comment", "x y"],
     '-d 10.1.1.0/24 -m comment --comment "x y" -j ACCEPT'),
    (["-p", "tcp", "--dport", "8080", "-s", "127.0.0.1", "-j", "CNI-HOSTPORT-SETMARK"],
     "-s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK"),
    (["-m", "comment", "--comment", "c", "-m", "multiport", "-p", "udp", "--destination-ports", "53,54",
      "-j", "CNI-DN-1"], "-p udp -m comment --comment c -m multiport --dports 53,54 -j CNI-DN-1"),
    (["-p", "tcp", "--dport", "80", "-s", "0.0.0.0/0", "-j", "X"], "-p tcp -m tcp --dport 80 -j X"),
    (["!", "-d", "ff00::/8", "-j", "MASQUERADE"], "! -d ff00::/8 -j MASQUERADE"),
    (["-p", "TCP", "--dport", "80", "-j", "DNAT", "--to-destination", "[fd00::2]:80"],
     "-p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00::2]:80"),
])
def test_save_rule(args, text):
    assert save_rule(args) == text


def test_save_string_quotes_like_iptables_save():
    assert save_string("KUBE-SVC_1") == "KUBE-SVC_1"
    assert save_string("default/web:http") == '"default/web:http"'
    assert save_string('name: "n" id: \'x\'') == '"name: \\"n\\" id: \\\'x\\\'"'


# ------------------------------------------------------------------ a meta plugin delegating to bridge

class MiniFlannel(Plugin):
    """flannel's CNI plugin in miniature: read /run/flannel/subnet.env, delegate to bridge."""
    type = "test-flannel"

    @staticmethod
    def delegate_conf(call):
        env = dict(line.split("=", 1) for line in call.host.ns.files["/run/flannel/subnet.env"].split())
        subnet = ipaddress.ip_interface(env["FLANNEL_SUBNET"]).network
        return {"cniVersion": call.cni_version, "name": call.name, "type": "bridge", "isGateway": True,
                "mtu": int(env["FLANNEL_MTU"]), **call.conf.get("delegate", {}),
                "ipam": {"type": "host-local", "ranges": [[{"subnet": str(subnet)}]],
                         "routes": [{"dst": env["FLANNEL_NETWORK"]}]}}

    def add(self, call):
        return call.delegate("bridge", "ADD", self.delegate_conf(call))

    def delete(self, call):
        call.delegate("bridge", "DEL", self.delegate_conf(call))


def test_a_meta_plugin_delegates_to_bridge():
    register("test-flannel", MiniFlannel)
    state, host = world("cni-a")
    host.files["/run/flannel/subnet.env"] = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                                             "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    conf = {"cniVersion": "0.3.1", "name": "cbr0", "plugins": [
        {"type": "test-flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}
    result = invoke(conf, "ADD", env("a"), state, host)
    assert [i.name for i in result.interfaces] == ["cni0", veth_of("a"), "eth0"]
    assert [str(a) for a in host.links["cni0"].addresses] == ["10.244.1.1/24"] and host.links["cni0"].mtu == 1450
    assert render.ip_route(state.netns("cni-a")).splitlines() == [
        "default via 10.244.1.1 dev eth0", "10.244.0.0/16 via 10.244.1.1 dev eth0",
        "10.244.1.0/24 dev eth0 proto kernel scope link src 10.244.1.2"]
    invoke(conf, "DEL", env("a"), state, host)
    assert veth_of("a") not in host.links and "/var/lib/cni/networks/cbr0/10.244.1.2" not in host.files


def test_a_second_interface_gets_its_own_veth():
    state, host = world("cni-a")
    invoke(ptp_list(), "ADD", env("a"), state, host)
    # a second network: another default route would clash (EEXIST, as netlink says)
    assert "file exists" in errors(invoke, ptp_list(), "ADD", env("a", ifname="eth1"), state, host).msg
    invoke(ptp_list(), "DEL", env("a", ifname="eth1"), state, host)     # the runtime cleans up a failed ADD
    result = invoke(ptp_list(ranges=(("10.2.2.0/24",),), routes=()), "ADD", env("a", ifname="eth1"), state, host)
    second = result.interfaces[0].name
    assert second != veth_of("a") and second.startswith("veth") and len(second) == 12
    assert [str(i.address) for i in result.ips] == ["10.2.2.2/24"]
    assert set(state.netns("cni-a").links) == {"lo", "eth0", "eth1"}
