"""Upstream's TestOverallNFTablesRules ruleset, traced the way upstream's tracer does.

kubernetes pkg/proxy/nftables/helpers_test.go (`nftablesTracer`, `tracePacket`,
`runPacketFlowTests`) follows a packet through filter-prerouting then nat-prerouting,
takes the first DNAT target as the new destination, then runs filter-forward and
filter-input; a random endpoint choice lists every endpoint in order, and a jump to
mark-for-masquerade counts as "masqueraded". Here the same ruleset is *evaluated*:
every base chain of a hook runs in priority order (OUTPUT for packets the node sends
itself), NAT applies as soon as its chain returns, the routing decision picks INPUT or
FORWARD, and the masquerade decision is what nat-postrouting actually does with the
mark. Random choices are explored with podnet.sim.branches.explore.
"""

import ipaddress

import pytest

from conftest import ORACLES
from podnet.linux.netfilter import ConnView, HookContext, Packet
from podnet.linux.nftables import NftRuleset
from podnet.sim.branches import explore

EXPECTED = ORACLES / "kube-proxy" / "nftables-overall.expected"
LOCAL = {"127.0.0.1", "::1", "192.168.0.2", "192.168.1.2", "192.168.99.11", "2001:db8::1",
         "2001:db8:1::2"}


def addr_type(addr, iface=None) -> str:
    return "LOCAL" if str(addr) in LOCAL else "UNICAST"


@pytest.fixture(scope="module")
def ruleset() -> NftRuleset:
    lines = [line for line in EXPECTED.read_text().splitlines() if not line.startswith("#")]
    return NftRuleset.parse("\n".join(lines), source=str(EXPECTED))


class Walk:
    """One packet through the hooks of the node, for one combination of random choices."""

    def __init__(self, rs: NftRuleset, pkt: Packet, choose, dynamic: dict, now: float):
        self.rs, self.pkt, self.choose, self.dynamic, self.now = rs, pkt, choose, dynamic, now
        self.conn = ConnView("NEW")
        self.dnat = None
        self.masquerade = False
        self.steps = []

    def hook(self, hook: str) -> str:
        """Run every base chain of `hook`; returns the verdict (DNAT is applied in place)."""
        for bc in self.rs.base_chains(hook, self.pkt.family):
            if bc.type == "nat" and hook in ("PREROUTING", "OUTPUT") and self.dnat is not None:
                continue
            ctx = HookContext(hook=hook, packet=self.pkt, conn=self.conn, addr_type=addr_type,
                              choose=self.choose, nft_dynamic=self.dynamic, now=self.now)
            result = self.rs.evaluate(bc.family, bc.table, bc.name, ctx)
            self.steps += result.steps
            if result.verdict != "ACCEPT":
                return result.verdict
            nat = result.nat
            if nat is not None and nat.kind == "DNAT":
                self.dnat = f"{nat.addr}:{nat.port}"
                self.pkt.dst, self.pkt.dport = nat.addr, nat.port
                self.conn.status.add("DNAT")
            elif nat is not None and nat.kind == "MASQUERADE":
                self.masquerade = True
        return "ACCEPT"

    def run(self) -> tuple[str, bool]:
        first = "OUTPUT" if str(self.pkt.src) in LOCAL else "PREROUTING"
        verdict = self.hook(first)
        if verdict == "ACCEPT" and first == "PREROUTING":
            verdict = self.hook("INPUT" if str(self.pkt.dst) in LOCAL else "FORWARD")
        if verdict == "ACCEPT":
            verdict = self.hook("POSTROUTING")
        if verdict != "ACCEPT":
            return verdict, self.masquerade
        return self.dnat or "", self.masquerade


def trace(rs: NftRuleset, src: str, dst: str, port: int, proto: str = "tcp",
          dynamic: dict | None = None, now: float = 1000.0):
    """Upstream's (output, masquerade) for a packet: all random outcomes, in order."""
    def run(choose):
        pkt = Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), proto, 40000, port)
        state = dict(dynamic) if dynamic is not None else {}
        return Walk(rs, pkt, choose, state, now).run()
    branches = explore(run)
    outputs = []
    for b in branches:
        if b.result[0] not in outputs:
            outputs.append(b.result[0])
    return ", ".join(outputs), any(b.result[1] for b in branches)


# The README's flow table (the same expected targets and masquerade decisions as the
# iptables case), then flows from upstream's other packet-flow tests that apply to this
# ruleset (TestClusterIPGeneral, TestLoadBalancer, TestNodePorts, TestExternalTrafficPolicy*).
README_FLOWS = [
    ("10.0.0.2", "172.30.0.41", 80, "10.180.0.1:80", False),
    ("192.168.0.2", "172.30.0.41", 80, "10.180.0.1:80", True),
    ("10.0.0.2", "172.30.0.44", 80, "10.180.0.4:80, 10.180.0.5:80", False),
    ("10.0.0.2", "172.30.0.46", 80, "REJECT", False),
    ("203.0.113.1", "1.2.3.4", 80, "DROP", False),
    ("203.0.113.1", "192.168.0.2", 3003, "10.180.0.3:80", True),
    ("203.0.113.1", "5.6.7.8", 80, "10.180.0.3:80", True),
    ("203.0.113.200", "5.6.7.8", 80, "DROP", False),
]

UPSTREAM_FLOWS = [
    # name, source, destination, port, protocol, output, masquerade
    ("hairpin to cluster IP", "10.180.0.1", "172.30.0.41", 80, "tcp", "10.180.0.1:80", True),
    ("other port of a cluster IP", "10.0.0.2", "172.30.0.41", 443, "tcp", "REJECT", False),
    ("TCP-only port does not match UDP traffic", "10.0.0.2", "172.30.0.41", 80, "udp", "REJECT",
     False),
    ("packet to unallocated cluster IP", "10.0.0.2", "172.30.0.50", 80, "tcp", "DROP", False),
    ("external to NodePort", "203.0.113.2", "192.168.0.2", 3003, "tcp", "10.180.0.3:80", True),
    ("NodePort bypasses LoadBalancerSourceRanges", "203.0.113.130", "192.168.0.2", 3002, "tcp",
     "10.180.0.3:80", True),
    ("NodePort on an address not in nodePortAddresses", "203.0.113.2", "192.168.1.2", 3003,
     "tcp", "", False),
    ("accepted external to LB", "203.0.113.2", "5.6.7.8", 80, "tcp", "10.180.0.3:80", True),
    ("blocked external to LB", "203.0.113.130", "5.6.7.8", 80, "tcp", "DROP", False),
    ("pod to LB (blocked by LoadBalancerSourceRanges)", "10.0.0.2", "5.6.7.8", 80, "tcp", "DROP",
     False),
    ("node to LB (blocked by LoadBalancerSourceRanges)", "192.168.0.2", "5.6.7.8", 80, "tcp",
     "DROP", False),
    ("pod to LB IP of an eTP:Local service: cluster endpoints", "10.0.0.2", "1.2.3.4", 80, "tcp",
     "10.180.0.2:80", False),
    ("node to LB IP of an eTP:Local service: masqueraded", "192.168.0.2", "1.2.3.4", 80, "tcp",
     "10.180.0.2:80", True),
    ("external to external IP of an eTP:Local service with no local endpoints", "203.0.113.2",
     "192.168.99.22", 80, "tcp", "DROP", False),
    ("external to NodePort of an eTP:Local service with no local endpoints", "203.0.113.2",
     "192.168.0.2", 3001, "tcp", "DROP", False),
    ("external to external IP", "203.0.113.2", "192.168.99.33", 80, "tcp",
     "10.180.0.4:80, 10.180.0.5:80", True),
    ("pod to cluster IP with no endpoints on another port", "10.0.0.2", "172.30.0.46", 81, "tcp",
     "REJECT", False),
    ("unrelated traffic", "10.0.0.2", "8.8.8.8", 53, "udp", "", False),
]


@pytest.mark.parametrize("src,dst,port,output,masq", README_FLOWS)
def test_readme_flows(ruleset, src, dst, port, output, masq):
    assert trace(ruleset, src, dst, port) == (output, masq)


@pytest.mark.parametrize("name,src,dst,port,proto,output,masq", UPSTREAM_FLOWS,
                         ids=[f[0] for f in UPSTREAM_FLOWS])
def test_upstream_flows(ruleset, name, src, dst, port, proto, output, masq):
    assert trace(ruleset, src, dst, port, proto) == (output, masq)


def test_random_endpoints_are_equally_likely(ruleset):
    def run(choose):
        pkt = Packet(ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("172.30.0.44"),
                     "tcp", 40000, 80)
        return Walk(ruleset, pkt, choose, {}, 0.0).run()[0]
    branches = explore(run)
    assert [(b.probability, b.result) for b in branches] == [
        (0.5, "10.180.0.4:80"), (0.5, "10.180.0.5:80")]
    assert [c.key for c in branches[0].choices] == ["kube-proxy/service-LAUZTJTB-ns4/svc4/tcp/p80#2"]


def test_the_path_through_the_rules(ruleset):
    pkt = Packet(ipaddress.ip_address("203.0.113.1"), ipaddress.ip_address("5.6.7.8"),
                 "tcp", 40000, 80)
    walk = Walk(ruleset, pkt, lambda key, options: 0, {}, 0.0)
    assert walk.run() == ("10.180.0.3:80", True)
    assert [(s.chain, s.index, s.action) for s in walk.steps] == [
        ("filter-prerouting-pre-dnat", 1, "jump firewall-check"),
        ("firewall-check", 1, "goto firewall-HVFWP5L3-ns5/svc5/tcp/p80"),
        ("filter-prerouting-pre-dnat", 0, "ACCEPT"),
        ("nat-prerouting", 1, "jump services"),
        ("services", 1, "goto external-HVFWP5L3-ns5/svc5/tcp/p80"),
        ("external-HVFWP5L3-ns5/svc5/tcp/p80", 1, "jump mark-for-masquerade"),
        ("mark-for-masquerade", 1, "mark set mark or 0x4000"),
        ("external-HVFWP5L3-ns5/svc5/tcp/p80", 2, "goto service-HVFWP5L3-ns5/svc5/tcp/p80"),
        ("service-HVFWP5L3-ns5/svc5/tcp/p80", 3,
         "goto endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"),
        ("endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80", 2,
         "update @affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80 { ip saddr }"),
        ("endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80", 3, "DNAT to 10.180.0.3:80"),
        ("filter-forward", 1, "jump service-endpoints-check"),
        ("filter-forward", 2, "jump cluster-ips-check"),
        ("filter-forward", 0, "ACCEPT"),
        ("nat-postrouting", 1, "jump masquerading"),
        ("masquerading", 2, "mark set mark xor 0x4000"),
        ("masquerading", 3, "MASQUERADE random-fully"),
    ]
    assert pkt.mark == 0                # masquerading clears the bit it tested


def test_session_affinity_uses_the_dynamic_set(ruleset):
    dynamic: dict = {}

    def connect(now):
        pkt = Packet(ipaddress.ip_address("10.0.0.2"), ipaddress.ip_address("172.30.0.45"),
                     "tcp", 40000, 80)
        walk = Walk(ruleset, pkt, lambda key, options: 0, dynamic, now)
        assert walk.run() == ("10.180.0.3:80", False)
        return [(s.chain, s.index) for s in walk.steps if s.chain.startswith("service-")]

    first = connect(1000.0)
    assert first == [("service-HVFWP5L3-ns5/svc5/tcp/p80", 3)]           # numgen
    key = ("ip", "kube-proxy", "affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80")
    assert dynamic[key] == {(int(ipaddress.ip_address("10.0.0.2")),): 1000.0 + 10800}
    assert connect(2000.0) == [("service-HVFWP5L3-ns5/svc5/tcp/p80", 2)]      # affinity
    assert connect(2000.0 + 10799) == [("service-HVFWP5L3-ns5/svc5/tcp/p80", 2)]  # refreshed
    assert connect(12799.0 + 10801) == [("service-HVFWP5L3-ns5/svc5/tcp/p80", 3)]  # expired


def test_listing_the_oracle_reads_back_the_same(ruleset):
    again = NftRuleset.parse(ruleset.list_ruleset(), "listed")
    assert again.semantics() == ruleset.semantics()
    for src, dst, port, output, masq in README_FLOWS:
        assert trace(again, src, dst, port) == (output, masq)
