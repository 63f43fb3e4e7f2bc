"""Route lookup: the guide's kindnet walk typed in as state (cni-kindnet.md)."""

import ipaddress
import secrets
import subprocess

import pytest

from conftest import have, is_root
from podnet.linux.routing import route_get
from podnet.linux.state import Link, Netns, Route, Rule

net = ipaddress.ip_network
ip = ipaddress.ip_address


def node(name: str, node_ip: str, peers: dict[str, str], pods: dict[str, str], gw: str) -> Netns:
    """A kindnet node: eth0 on the docker network, one veth (gateway /32) + /32 route per pod."""
    ns = Netns(name, kind="node")
    ns.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    ns.add_link(Link("eth0")).add_address(f"{node_ip}/16")
    ns.add_route(Route(net("0.0.0.0/0"), "eth0", via=ip("172.18.0.1")))
    for cidr, via in peers.items():
        ns.add_route(Route(net(cidr), "eth0", via=ip(via)))
    for pod_ip, veth in pods.items():
        ns.add_link(Link(veth, "veth")).add_address(f"{gw}/32")
        ns.add_route(Route(net(f"{pod_ip}/32"), veth, scope="host"))
    return ns


def pod(name: str, pod_ip: str, gw: str) -> Netns:
    """ptp: eth0 with the /24, default and subnet routes via the gateway (kernel prefix route replaced)."""
    ns = Netns(name, kind="pod")
    ns.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    ns.add_link(Link("eth0", "veth")).add_address(f"{pod_ip}/24")
    ns.add_route(Route(net("0.0.0.0/0"), "eth0", via=ip(gw)))
    ns.add_route(Route(net(pod_ip).supernet(new_prefix=24), "eth0", via=ip(gw), src=ip(pod_ip)))
    ns.add_route(Route(net(f"{gw}/32"), "eth0", scope="link", src=ip(pod_ip)))
    return ns


def test_guide_kindnet_day_in_the_life_of_a_packet():
    worker = node("k8s-guide-worker", "172.18.0.11", {"10.244.0.0/24": "172.18.0.10", "10.244.2.0/24": "172.18.0.12"},
                  {"10.244.1.3": "veth0a1b2c3d"}, "10.244.1.1")
    control = node("k8s-guide-control-plane", "172.18.0.10",
                   {"10.244.1.0/24": "172.18.0.11", "10.244.2.0/24": "172.18.0.12"},
                   {"10.244.0.5": "veth9f517bf3"}, "10.244.0.1")
    pod1 = pod("net-tshoot-wxgcw", "10.244.1.3", "10.244.1.1")
    pod3 = pod("net-tshoot-x6wv9", "10.244.0.5", "10.244.0.1")
    assert route_get(pod1, "10.244.0.5").text() == "10.244.0.5 via 10.244.1.1 dev eth0 src 10.244.1.3 uid 0"
    assert route_get(worker, "10.244.0.5").text() == "10.244.0.5 via 172.18.0.10 dev eth0 src 172.18.0.11 uid 0"
    assert route_get(control, "10.244.0.5").text() == "10.244.0.5 dev veth9f517bf3 src 10.244.0.1 uid 0"
    assert route_get(pod3, "10.244.0.5").text() == "local 10.244.0.5 dev lo src 10.244.0.5 uid 0"


def test_worker2_routes_from_the_guide():
    w2 = node("k8s-guide-worker2", "172.18.0.12", {"10.244.0.0/24": "172.18.0.10", "10.244.1.0/24": "172.18.0.11"},
              {"10.244.2.2": "vethf821f7f9", "10.244.2.8": "vetha1079faf"}, "10.244.2.1")
    p = pod("net-tshoot", "10.244.2.8", "10.244.2.1")
    # intra-subnet pod-to-pod also goes via the gateway (no bridge, no ARP for peers)
    assert route_get(p, "10.244.2.2").text() == "10.244.2.2 via 10.244.2.1 dev eth0 src 10.244.2.8 uid 0"
    assert route_get(p, "1.1.1.1").text() == "1.1.1.1 via 10.244.2.1 dev eth0 src 10.244.2.8 uid 0"
    assert route_get(w2, "10.244.2.8").text() == "10.244.2.8 dev vetha1079faf src 10.244.2.1 uid 0"
    assert route_get(w2, "8.8.8.8").text() == "8.8.8.8 via 172.18.0.1 dev eth0 src 172.18.0.12 uid 0"
    assert route_get(w2, "172.18.0.10").text() == "172.18.0.10 dev eth0 src 172.18.0.12 uid 0"


def test_policy_rules_tables_and_route_types():
    ns = Netns("r")
    ns.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    ns.add_link(Link("eth0")).add_address("192.0.2.2/24")
    ns.add_link(Link("eth1")).add_address("198.51.100.2/24")
    ns.add_route(Route(net("0.0.0.0/0"), "eth0", via=ip("192.0.2.1")))
    ns.add_route(Route(net("0.0.0.0/0"), "eth1", via=ip("198.51.100.1"), table=100))
    ns.add_route(Route(net("10.9.0.0/16"), type="blackhole"))
    ns.add_route(Route(net("10.8.0.0/16"), type="unreachable"))
    ns.rules.append(Rule(100, 100, src=net("10.0.0.0/8")))
    ns.rules.append(Rule(101, 100, fwmark=0x4000, fwmask=0x4000))
    ns.rules.sort(key=lambda r: r.priority)
    assert route_get(ns, "8.8.8.8").gateway == ip("192.0.2.1")
    assert route_get(ns, "8.8.8.8", src="10.1.1.1").gateway == ip("198.51.100.1")
    assert route_get(ns, "8.8.8.8", mark=0x4001).dev == "eth1"
    assert route_get(ns, "10.9.1.1").error == "Invalid argument"
    assert route_get(ns, "10.8.1.1").error == "No route to host"
    assert route_get(ns, "192.0.2.2").type == "local"
    assert route_get(ns, "192.0.2.7").text() == "192.0.2.7 dev eth0 src 192.0.2.2 uid 0"


def two_legs() -> Netns:
    ns = Netns("r")
    ns.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    ns.add_link(Link("eth0", "veth")).add_address("192.0.2.2/24")
    ns.add_link(Link("eth1", "veth")).add_address("198.51.100.2/24")
    ns.add_route(Route(net("10.9.0.0/16"), "eth1"))
    ns.add_route(Route(net("10.7.0.0/16"), type="blackhole"))
    return ns


# (destination, answer with forwarding off, answer with it on): a device name or the error
FORWARDING_CASES = [
    ("198.51.100.7", "No route to host", "eth1"),
    ("10.9.1.1", "No route to host", "eth1"),
    ("10.7.1.1", "No route to host", "Invalid argument"),
    ("8.8.8.8", "No route to host", "Network is unreachable"),
    ("192.0.2.2", "lo", "lo"),                       # local: delivered either way
    ("192.0.2.255", "lo", "lo"),                     # broadcast: likewise
]


def _answer(result) -> str:
    return result.error or (result.dev if result.type not in ("local", "broadcast") else "lo")


def test_route_get_iif_needs_forwarding_on_the_input_device():
    """ip_route_input_slow: a non-local destination arriving on a device that does not
    forward is EHOSTUNREACH; the device's own conf.DEV.forwarding overrides ip_forward."""
    ns = two_legs()
    for dst, off, on in FORWARDING_CASES:
        assert _answer(route_get(ns, dst, "192.0.2.9", iif="eth0")) == off, dst
        assert _answer(route_get(ns, dst)) != "No route to host"       # no iif: output route
    ns.sysctls["net.ipv4.ip_forward"] = "1"
    for dst, off, on in FORWARDING_CASES:
        assert _answer(route_get(ns, dst, "192.0.2.9", iif="eth0")) == on, dst
    ns.sysctls["net.ipv4.conf.eth0.forwarding"] = "0"
    assert route_get(ns, "198.51.100.7", "192.0.2.9", iif="eth0").text() == \
        "RTNETLINK answers: No route to host"
    assert route_get(ns, "198.51.100.7", "198.51.100.9", iif="eth1").dev == "eth1"


@pytest.mark.netns
def test_route_get_iif_forwarding_agrees_with_the_kernel():
    if not (is_root() and have("ip")):
        pytest.skip("needs root and iproute2")
    name = f"pntest-rt-{secrets.token_hex(4)}"

    def answer(*cmd) -> str:
        proc = subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True)
        out = (proc.stdout + proc.stderr).strip()
        if out.startswith("RTNETLINK answers: "):
            return out.removeprefix("RTNETLINK answers: ")
        words = out.split()
        return words[words.index("dev") + 1]
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in ("ip link add eth0 type veth peer name p0", "ip link add eth1 type veth peer name p1",
                    *(f"ip link set {d} up" for d in ("lo", "eth0", "eth1", "p0", "p1")),
                    "ip addr add 192.0.2.2/24 dev eth0", "ip addr add 198.51.100.2/24 dev eth1",
                    "ip route add 10.9.0.0/16 dev eth1", "ip route add blackhole 10.7.0.0/16"):
            subprocess.run(["ip", "netns", "exec", name, *cmd.split()], check=True)
        ns = two_legs()
        for value in ("0", "1"):
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw",
                            f"net.ipv4.ip_forward={value}"], check=True)
            ns.sysctls["net.ipv4.ip_forward"] = value
            for dst, _, _ in FORWARDING_CASES:
                kernel = answer("ip", "route", "get", dst, "from", "192.0.2.9", "iif", "eth0")
                assert _answer(route_get(ns, dst, "192.0.2.9", iif="eth0")) == kernel, (value, dst)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
