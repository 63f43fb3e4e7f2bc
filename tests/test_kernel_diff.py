"""Differential tests: podnet's simulator against the kernel (issue #3).

Each test builds a small real topology in throwaway network namespaces, sends
real packets, snapshots the namespaces with `podnet.snapshot`, and checks that
podnet's predicted verdict and rewritten addresses equal what the kernel did.
"""

import ipaddress
import subprocess
import sys

import pytest

from podnet.linux.netfilter import Packet
from podnet.sim.trace import TraceRequest, trace

from netnslab import NetnsLab

pytestmark = pytest.mark.netns


@pytest.fixture
def lab():
    lab = NetnsLab()
    try:
        yield lab
    finally:
        lab.cleanup()


def predict(state, src_ns: str, dst: str, port, proto: str = "tcp"):
    """podnet's possible outcomes as a set of (result, answering netns, source address seen)."""
    pkt = Packet(ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address(dst), proto,
                 40000 if port else None, port, icmp_type=8 if proto == "icmp" else None)
    result = trace(state, TraceRequest(src_ns, pkt, reply=False))
    out = set()
    for b in result.branches:
        o = b.forward.outcome
        if o.result in ("delivered", "answered"):
            out.add(("ok", o.ns, str(o.packet.src)))
        elif o.result == "rejected":
            out.add(("refused", None, None))
        else:
            out.add(("timeout", None, None))
    return out


def observe(lab: NetnsLab, src_ns: str, dst: str, port, proto: str = "tcp"):
    """What the kernel did: (result, answering server, client address it saw)."""
    if proto == "icmp":
        return ("ok", None, None) if lab.ping(src_ns, dst) else ("timeout", None, None)
    reply = lab.connect(src_ns, dst, port, proto)
    if reply.startswith("pod="):
        fields = dict(kv.split("=", 1) for kv in reply.split())
        return ("ok", fields["pod"], fields["client"].rsplit(":", 1)[0])
    if reply == "REFUSED" or reply.startswith("ERROR 111"):
        return ("refused", None, None)
    return ("timeout", None, None)


def assert_agree(lab, state, src_ns, dst, port, proto="tcp", tries: int = 1):
    predicted = predict(state, src_ns, dst, port, proto)
    seen = {observe(lab, src_ns, dst, port, proto) for _ in range(tries)}
    for s in seen:
        if s[0] == "ok" and s[1] is None:            # ping: only the verdict is comparable
            assert any(p[0] == "ok" for p in predicted), (predicted, s)
        else:
            assert s in predicted, f"kernel did {s}, podnet predicted {predicted}"
    return predicted, seen


def two_hosts_over_veth(lab: NetnsLab):
    a, b = lab.ns("a"), lab.ns("b")
    lab.veth(a, "eth0", b, "eth0")
    lab.run(a, "ip addr add 192.0.2.1/24 dev eth0")
    lab.run(b, "ip addr add 192.0.2.2/24 dev eth0")
    lab.server(b, b, tcp=[80], udp=[53])
    return a, b


def test_veth_pair_tcp_udp_ping_and_rst(lab):
    a, b = two_hosts_over_veth(lab)
    state = lab.snapshot()
    assert_agree(lab, state, a, "192.0.2.2", 80)
    assert_agree(lab, state, a, "192.0.2.2", 53, "udp")
    assert_agree(lab, state, a, "192.0.2.2", None, "icmp")
    assert predict(state, a, "192.0.2.2", 81) == {("refused", None, None)}
    assert_agree(lab, state, a, "192.0.2.2", 81)


def client_router_server(lab: NetnsLab, server_mtu: int = 1500):
    """client 10.1.0.2 -- c0 router s0 -- 10.2.0.2 server (the server's link at `server_mtu`)."""
    c, r, s = lab.ns("client"), lab.ns("router"), lab.ns("server")
    lab.veth(c, "eth0", r, "c0")
    lab.veth(s, "eth0", r, "s0")
    lab.run(c, "ip addr add 10.1.0.2/24 dev eth0 && ip route add default via 10.1.0.1")
    lab.run(s, f"ip link set eth0 mtu {server_mtu} && ip addr add 10.2.0.2/24 dev eth0 "
               "&& ip route add default via 10.2.0.1")
    lab.run(r, f"ip addr add 10.1.0.1/24 dev c0 && ip link set s0 mtu {server_mtu} && ip addr add 10.2.0.1/24 dev s0")
    lab.sysctl(r, "net.ipv4.ip_forward", "1")
    return c, r, s


def test_router_forwarding_and_ip_forward_off(lab):
    c, r, s = client_router_server(lab)
    lab.server(s, s, tcp=[8080])
    state = lab.snapshot()
    assert predict(state, c, "10.2.0.2", 8080) == {("ok", s, "10.1.0.2")}
    assert_agree(lab, state, c, "10.2.0.2", 8080)
    lab.sysctl(r, "net.ipv4.ip_forward", "0")
    state = lab.snapshot()
    assert predict(state, c, "10.2.0.2", 8080) == {("timeout", None, None)}
    assert_agree(lab, state, c, "10.2.0.2", 8080)


def test_bridge_between_namespaces(lab):
    host, p1, p2 = lab.ns("host"), lab.ns("p1"), lab.ns("p2")
    lab.run(host, "ip link add cni0 type bridge && ip link set cni0 up && ip addr add 10.244.1.1/24 dev cni0")
    lab.veth(p1, "eth0", host, "veth1")
    lab.veth(p2, "eth0", host, "veth2")
    lab.run(host, "ip link set veth1 master cni0 && ip link set veth2 master cni0")
    lab.run(p1, "ip addr add 10.244.1.2/24 dev eth0 && ip route add default via 10.244.1.1")
    lab.run(p2, "ip addr add 10.244.1.3/24 dev eth0 && ip route add default via 10.244.1.1")
    lab.server(p2, p2, tcp=[80])
    lab.server(host, host, tcp=[10250])
    state = lab.snapshot()
    predicted, _ = assert_agree(lab, state, p1, "10.244.1.3", 80)       # bridged, L2
    assert predicted == {("ok", p2, "10.244.1.2")}
    assert_agree(lab, state, p1, "10.244.1.1", 10250)                   # to the bridge itself
    hops = trace(state, TraceRequest(p1, Packet(ipaddress.ip_address("0.0.0.0"),
                                                 ipaddress.ip_address("10.244.1.3"), "tcp", 40000, 80),
                                     reply=False)).branches[0].forward.hops
    assert any(h.stage == "bridge" and "veth2" in h.text for h in hops)


def test_vxlan_over_veth_underlay(lab):
    h1, h2, p1, p2 = lab.ns("h1"), lab.ns("h2"), lab.ns("p1"), lab.ns("p2")
    lab.veth(h1, "eth0", h2, "eth0")
    lab.run(h1, "ip addr add 172.18.0.2/24 dev eth0")
    lab.run(h2, "ip addr add 172.18.0.3/24 dev eth0")
    for h, local, mac, sub, other_sub, other_mac, other_ip in (
            (h1, "172.18.0.2", "aa:aa:aa:00:00:01", "10.244.1", "10.244.2", "aa:aa:aa:00:00:02", "172.18.0.3"),
            (h2, "172.18.0.3", "aa:aa:aa:00:00:02", "10.244.2", "10.244.1", "aa:aa:aa:00:00:01", "172.18.0.2")):
        lab.run(h, f"ip link add flannel.1 address {mac} type vxlan id 1 local {local} dev eth0 dstport 8472 nolearning")
        lab.run(h, f"ip link set flannel.1 mtu 1450 up && ip addr add {sub}.0/32 dev flannel.1")
        lab.run(h, f"ip route add {other_sub}.0/24 via {other_sub}.0 dev flannel.1 onlink")
        lab.run(h, f"ip neigh add {other_sub}.0 lladdr {other_mac} dev flannel.1 nud permanent")
        lab.run(h, f"bridge fdb add {other_mac} dev flannel.1 dst {other_ip} self permanent")
        lab.sysctl(h, "net.ipv4.ip_forward", "1")
    lab.veth(p1, "eth0", h1, "veth1")
    lab.veth(p2, "eth0", h2, "veth2")
    lab.run(h1, "ip addr add 10.244.1.1/32 dev veth1 && ip route add 10.244.1.2/32 dev veth1")
    lab.run(h2, "ip addr add 10.244.2.1/32 dev veth2 && ip route add 10.244.2.2/32 dev veth2")
    lab.run(p1, "ip addr add 10.244.1.2/32 dev eth0 && ip route add 10.244.1.1 dev eth0 && "
                "ip route add default via 10.244.1.1")
    lab.run(p2, "ip addr add 10.244.2.2/32 dev eth0 && ip route add 10.244.2.1 dev eth0 && "
                "ip route add default via 10.244.2.1")
    lab.server(p2, p2, tcp=[80], udp=[5353])
    state = lab.snapshot()
    predicted, _ = assert_agree(lab, state, p1, "10.244.2.2", 80)
    assert predicted == {("ok", p2, "10.244.1.2")}
    assert_agree(lab, state, p1, "10.244.2.2", 5353, "udp")
    hops = trace(state, TraceRequest(p1, Packet(ipaddress.ip_address("0.0.0.0"),
                                                 ipaddress.ip_address("10.244.2.2"), "tcp", 40000, 80),
                                     reply=True)).branches[0]
    stages = [h.stage for h in hops.forward.hops]
    assert stages.count("vxlan") == 2              # encapsulated on h1, decapsulated on h2
    assert any("dst 172.18.0.3" in h.text for h in hops.forward.hops if h.stage == "vxlan")
    assert hops.reply.outcome.result == "delivered"


def test_proxy_arp_calico_style(lab):
    host, pod, srv, up = lab.ns("host"), lab.ns("pod"), lab.ns("srv"), lab.ns("upstream")
    # like a calico node: the host has a default route out of its NIC, which is what lets
    # proxy_arp answer for 169.254.1.1 (the kernel only proxies for routable targets)
    lab.veth(host, "eth0", up, "eth0")
    lab.run(host, "ip addr add 172.18.0.2/24 dev eth0 && ip route add default via 172.18.0.1")
    lab.run(up, "ip addr add 172.18.0.1/24 dev eth0")
    lab.veth(pod, "eth0", host, "cali12345")
    lab.veth(srv, "eth0", host, "calisrv")
    lab.run(host, "ip link set cali12345 address ee:ee:ee:ee:ee:ee && ip link set calisrv address ee:ee:ee:ee:ee:ee")
    lab.run(host, "ip route add 10.244.0.5/32 dev cali12345 scope link && "
                  "ip route add 10.244.0.6/32 dev calisrv scope link")
    lab.sysctl(host, "net.ipv4.ip_forward", "1")
    for ns, ip_ in ((pod, "10.244.0.5"), (srv, "10.244.0.6")):
        lab.run(ns, f"ip addr add {ip_}/32 dev eth0 && ip route add 169.254.1.1 dev eth0 scope link && "
                    "ip route add default via 169.254.1.1 dev eth0")
    lab.server(srv, srv, tcp=[80])
    lab.sysctl(host, "net.ipv4.conf.cali12345.proxy_arp", "0")
    state = lab.snapshot()
    assert predict(state, pod, "10.244.0.6", 80) == {("timeout", None, None)}   # nobody answers ARP
    assert_agree(lab, state, pod, "10.244.0.6", 80)
    lab.sysctl(host, "net.ipv4.conf.cali12345.proxy_arp", "1")
    lab.sysctl(host, "net.ipv4.conf.calisrv.proxy_arp", "1")
    lab.run(pod, "ip neigh flush dev eth0")          # forget the failed ARP attempt
    state = lab.snapshot()
    predicted, _ = assert_agree(lab, state, pod, "10.244.0.6", 80)
    assert predicted == {("ok", srv, "10.244.0.5")}
    hops = trace(state, TraceRequest(pod, Packet(ipaddress.ip_address("0.0.0.0"),
                                                  ipaddress.ip_address("10.244.0.6"), "tcp", 40000, 80),
                                     reply=False)).branches[0].forward.hops
    arp = next(h for h in hops if h.stage == "neigh")
    assert "ee:ee:ee:ee:ee:ee" in arp.text and "proxy_arp" in arp.text


def test_rp_filter_drop(lab):
    a, b = two_hosts_over_veth(lab)
    # b answers only via a route that leaves through another interface: strict rp_filter drops
    lab.run(b, "ip link add dummy0 type bridge && ip link set dummy0 up && ip addr add 198.51.100.1/24 dev dummy0")
    lab.run(a, "ip addr add 203.0.113.1/32 dev eth0")
    lab.run(b, "ip route add 203.0.113.1/32 via 198.51.100.2 dev dummy0")
    lab.sysctl(b, "net.ipv4.conf.all.rp_filter", "1")
    lab.sysctl(b, "net.ipv4.conf.eth0.rp_filter", "1")
    lab.run(a, "ip route add 192.0.2.2/32 dev eth0 src 203.0.113.1")
    state = lab.snapshot()
    predicted, _ = assert_agree(lab, state, a, "192.0.2.2", 80)
    assert predicted == {("timeout", None, None)}
    # the kernel already ignores the client's ARP request (arp_process validates its sender)
    pkt = Packet(ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("192.0.2.2"), "tcp", 40000, 80)
    outcome = trace(state, TraceRequest(a, pkt, reply=False)).branches[0].forward.outcome
    assert outcome.result == "dropped" and "no ARP reply for 192.0.2.2" in outcome.reason
    assert "ignores the request from 203.0.113.1: rp_filter=1 on eth0" in outcome.reason
    mac = lab.run(b, "cat /sys/class/net/eth0/address").strip()
    lab.run(a, f"ip neigh replace 192.0.2.2 lladdr {mac} dev eth0 nud permanent")
    state = lab.snapshot()
    predicted, _ = assert_agree(lab, state, a, "192.0.2.2", 80)
    assert predicted == {("timeout", None, None)}
    outcome = trace(state, TraceRequest(a, pkt, reply=False)).branches[0].forward.outcome
    assert outcome.result == "dropped" and outcome.reason.startswith("rp_filter=1 on eth0")


def test_redirect_needs_an_address_on_the_incoming_interface(lab):
    """nf_nat_redirect sends a forwarded packet to the first address of the interface it came in
    on; an interface without one (calico's cali* veths) makes the kernel drop the packet."""
    host, pod, up = lab.ns("host"), lab.ns("pod"), lab.ns("upstream")
    lab.veth(host, "eth0", up, "eth0")           # a default route out of another NIC, for proxy_arp
    lab.run(host, "ip addr add 172.18.0.2/24 dev eth0 && ip route add default via 172.18.0.1")
    lab.run(up, "ip addr add 172.18.0.1/24 dev eth0")
    lab.veth(pod, "eth0", host, "cali12345")
    lab.run(host, "ip route add 10.244.0.5/32 dev cali12345 scope link")
    lab.sysctl(host, "net.ipv4.ip_forward", "1")
    lab.sysctl(host, "net.ipv4.conf.cali12345.proxy_arp", "1")
    lab.run(pod, "ip addr add 10.244.0.5/32 dev eth0 && ip route add 169.254.1.1 dev eth0 scope link && "
                 "ip route add default via 169.254.1.1 dev eth0")
    lab.run(host, "printf '*nat\\n-A PREROUTING -p tcp --dport 80 -j REDIRECT --to-ports 8080\\nCOMMIT\\n'"
                  " | iptables-restore")
    lab.server(host, host, tcp=[8080])
    state = lab.snapshot()
    assert predict(state, pod, "10.96.0.1", 80) == {("timeout", None, None)}
    assert_agree(lab, state, pod, "10.96.0.1", 80)
    outcome = trace(state, TraceRequest(pod, Packet(ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address(
        "10.96.0.1"), "tcp", 40000, 80), reply=False)).branches[0].forward.outcome
    assert outcome.result == "dropped" and "REDIRECT: cali12345 has no IPv4 address" in outcome.reason
    # with an address on the host side, the packet is redirected to it
    lab.run(host, "ip addr add 10.244.0.254/32 dev cali12345")
    state = lab.snapshot()
    predicted, _ = assert_agree(lab, state, pod, "10.96.0.1", 80)
    assert predicted == {("ok", host, "10.244.0.5")}


def test_ecmp_route_is_a_branch_per_flow(lab):
    """A multipath route: each nexthop is a possible outcome, weighted like the kernel's
    nexthops; with fib_multipath_hash_policy=1 the kernel spreads connections over both."""
    c, r, s1, s2 = lab.ns("client"), lab.ns("router"), lab.ns("s1"), lab.ns("s2")
    lab.veth(c, "eth0", r, "c0")
    lab.veth(s1, "eth0", r, "s1")
    lab.veth(s2, "eth0", r, "s2")
    lab.run(c, "ip addr add 10.1.0.2/24 dev eth0 && ip route add default via 10.1.0.1")
    lab.run(r, "ip addr add 10.1.0.1/24 dev c0 && ip addr add 10.2.0.1/24 dev s1 && ip addr add 10.3.0.1/24 dev s2")
    for ns, net in ((s1, "10.2.0"), (s2, "10.3.0")):
        # both servers answer for the same (anycast) address
        lab.run(ns, f"ip addr add {net}.2/24 dev eth0 && ip addr add 10.9.0.5/32 dev lo "
                    f"&& ip route add default via {net}.1")
        lab.server(ns, ns, tcp=[80])
    lab.run(r, "ip route add 10.9.0.0/24 nexthop via 10.2.0.2 dev s1 weight 1 nexthop via 10.3.0.2 dev s2 weight 3")
    lab.sysctl(r, "net.ipv4.ip_forward", "1")
    lab.sysctl(r, "net.ipv4.fib_multipath_hash_policy", "1")
    for conf in ("all", "s1", "s2"):
        # strict: an answer passes when any nexthop of the route back leaves by its interface
        lab.sysctl(r, f"net.ipv4.conf.{conf}.rp_filter", "1")
    state = lab.snapshot()
    result = trace(state, TraceRequest(c, Packet(ipaddress.ip_address("0.0.0.0"),
                                                  ipaddress.ip_address("10.9.0.5"), "tcp", 40000, 80)))
    assert all(b.reply.outcome.result == "delivered" for b in result.branches)
    assert sorted((b.forward.outcome.ns, round(b.probability, 2)) for b in result.branches) == \
        [(s1, 0.25), (s2, 0.75)]
    route = next(h for h in result.branches[0].forward.hops if h.ns == r and h.stage == "route")
    assert "via 10.2.0.2 dev s1" in route.text and "multipath: nexthop 1 of 2, weight 1/4" in route.text
    _, seen = assert_agree(lab, state, c, "10.9.0.5", 80, tries=30)
    assert {s[1] for s in seen} == {s1, s2}       # all 30 on one path: p = 0.75**30 < 2e-4


UDP_SEND = """
import socket, sys
host, port, size, pmtudisc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 10, pmtudisc)          # IP_MTU_DISCOVER: 2 = DO (DF), 0 = DONT
s.settimeout(2)
try:
    s.sendto(b"x" * (size - 28), (host, port))         # size: the whole IP packet
except OSError as e:
    print("EMSGSIZE" if e.errno == 90 else f"ERROR {e.errno}")
    sys.exit()
try:
    s.recv(65536)
    print("ok")
except OSError:
    print("timeout")
"""


def test_mtu_df_drop_fragmentation_and_emsgsize(lab):
    """A DF packet too big for the next hop: the router drops it (ICMP fragmentation needed),
    before its FORWARD hook; without DF it is fragmented and arrives. The sender's own link
    too small: a DF datagram fails with EMSGSIZE, a non-DF one is fragmented."""
    c, r, s = client_router_server(lab, server_mtu=1400)
    lab.run(r, "iptables -A FORWARD -j ACCEPT")
    lab.server(s, s, udp=[53])
    lab.server(c, c, udp=[53])
    state = lab.snapshot()

    def kernel(ns, dst, df):
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", UDP_SEND, dst, "53", "1500",
                              "2" if df else "0"], capture_output=True, text=True)
        return out.stdout.strip()

    def podnet(ns, src, dst, df):
        pkt = Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), "udp", 40000, 53, length=1500, df=df)
        (b,) = trace(state, TraceRequest(ns, pkt, reply=False)).branches
        return b.forward

    assert kernel(c, "10.2.0.2", df=True) == "timeout"
    walk = podnet(c, "10.1.0.2", "10.2.0.2", df=True)
    assert walk.outcome.result == "dropped" and walk.outcome.ns == r
    assert "ICMP fragmentation needed (mtu 1400)" in walk.outcome.reason
    assert not any(h.stage == "FORWARD" for h in walk.hops)         # ip_forward drops it first

    assert kernel(c, "10.2.0.2", df=False) == "ok"
    walk = podnet(c, "10.1.0.2", "10.2.0.2", df=False)
    assert walk.outcome.delivered and any(h.stage == "mtu" and "fragmented" in h.text for h in walk.hops)

    assert kernel(s, "10.1.0.2", df=True) == "EMSGSIZE"
    walk = podnet(s, "10.2.0.2", "10.1.0.2", df=True)
    assert walk.outcome.result == "dropped" and walk.outcome.ns == s and "EMSGSIZE" in walk.outcome.reason
    assert kernel(s, "10.1.0.2", df=False) == "ok"
    assert podnet(s, "10.2.0.2", "10.1.0.2", df=False).outcome.delivered


def test_rp_filter_ignores_the_mark_without_src_valid_mark(lab):
    """Strict rp_filter looks the source up after PREROUTING, without the packet's mark unless
    src_valid_mark=1. ARP requests from that source are validated the same way (without a
    mark), so the client first needs a static neighbour entry. The answer is marked in mangle
    OUTPUT, which routes it again (ip_route_me_harder; TCP: its source stays the address the
    client connected to, where an unbound UDP socket's would be the first route's)."""
    a, b = two_hosts_over_veth(lab)
    lab.run(b, "ip link add other type bridge && ip link set other up && ip addr add 198.51.100.1/24 dev other")
    lab.run(a, "ip addr add 203.0.113.1/32 dev eth0 && ip route add 192.0.2.2/32 dev eth0 src 203.0.113.1")
    lab.run(b, "ip route add 203.0.113.1/32 via 198.51.100.2 dev other")            # main: the wrong way
    lab.run(b, "ip route add 203.0.113.1/32 dev eth0 table 100 && ip rule add fwmark 0x1 lookup 100")
    lab.run(b, "iptables -t mangle -A PREROUTING -i eth0 -j MARK --set-mark 0x1 && "
               "iptables -t mangle -A OUTPUT -d 203.0.113.1 -j MARK --set-mark 0x1")
    for conf in ("all", "eth0"):
        lab.sysctl(b, f"net.ipv4.conf.{conf}.rp_filter", "1")
    lab.sysctl(b, "net.ipv4.conf.eth0.src_valid_mark", "1")

    def agree(expected):
        state = lab.snapshot()
        predicted, _ = assert_agree(lab, state, a, "192.0.2.2", 80)
        assert predicted == {expected}
        return state
    state = agree(("timeout", None, None))                  # b does not answer a's ARP request
    hops = trace(state, TraceRequest(a, Packet(ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("192.0.2.2"),
                                               "tcp", 40000, 80))).branches[0].forward
    assert "no ARP reply for 192.0.2.2" in hops.outcome.reason
    mac = lab.run(b, "cat /sys/class/net/eth0/address").strip()
    lab.run(a, f"ip neigh replace 192.0.2.2 lladdr {mac} dev eth0 nud permanent")
    state = agree(("ok", b, "203.0.113.1"))                 # the mark finds the route back via eth0
    reply = trace(state, TraceRequest(a, Packet(ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("192.0.2.2"),
                                                "tcp", 40000, 80))).branches[0].reply
    assert any(h.stage == "route" and "re-route after mangle" in h.text and "dev eth0" in h.text for h in reply.hops)
    lab.sysctl(b, "net.ipv4.conf.eth0.src_valid_mark", "0")
    state = agree(("timeout", None, None))                  # without the mark: via `other`, refused
    dropped = trace(state, TraceRequest(a, Packet(ipaddress.ip_address("203.0.113.1"),
                                                  ipaddress.ip_address("192.0.2.2"), "tcp", 40000, 80),
                                        reply=False)).branches[0].forward.outcome
    assert "rp_filter=1 on eth0" in dropped.reason and "leaves via other" in dropped.reason
