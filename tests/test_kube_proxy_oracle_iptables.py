"""Upstream kube-proxy's TestOverallIPTablesRules ruleset, evaluated by podnet's engine.

The rules are upstream's expected output (tests/data/oracles/kube-proxy). The
tracer below reproduces upstream's test tracer (`tracePacket` / `runPacketFlowTests`
in pkg/proxy/iptables/proxier_test.go): nat PREROUTING (OUTPUT for the node's own
packets); when DNAT happened, the first DNAT destination goes on through the filter
chains KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS, KUBE-PROXY-FIREWALL;
the output lists every endpoint a random jump may pick, in order, then the filter
verdicts; "masquerade" says whether KUBE-MARK-MASQ marked the packet.
"""

import ipaddress
import re

import pytest

from conftest import ORACLES
from podnet.linux.iptables import Ruleset
from podnet.linux.netfilter import ConnView, HookContext, Packet
from podnet.sim.branches import explore

ip = ipaddress.ip_address
ORACLE = ORACLES / "kube-proxy"
LOCAL = {ip(a) for a in ("127.0.0.1", "::1", "192.168.0.2", "192.168.1.2", "192.168.99.11",
                         "2001:db8::1", "2001:db8:1::2")}
MASQ_MARK = 0x4000
FILTER_CHAINS = ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS",
                 "KUBE-PROXY-FIREWALL")
# what kube-proxy hooks into the built-in nat chains outside its restore data
NAT_HOOKS = [":PREROUTING ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
             '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
             '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" '
             '-j KUBE-POSTROUTING']


def expected_text() -> str:
    lines = (ORACLE / "iptables-overall.expected").read_text().splitlines()
    return "".join(line + "\n" for line in lines if not line.startswith("#"))


def node_rules() -> Ruleset:
    lines = expected_text().splitlines()
    at = lines.index("*nat") + 1
    lines[at:at] = NAT_HOOKS
    return Ruleset.parse("\n".join(lines) + "\n", source="iptables-overall.expected")


RULES = node_rules()


def context(src, dst, port, proto="tcp", choose=lambda key, options: 0, hook="PREROUTING",
            recent=None) -> HookContext:
    return HookContext(hook=hook, packet=Packet(ip(src), ip(dst), proto, 40000, port),
                       conn=ConnView(), choose=choose, recent={} if recent is None else recent,
                       addr_type=lambda addr, iface=None: "LOCAL" if addr in LOCAL else "UNICAST")


def trace(src: str, dst: str, port: int, proto: str = "tcp") -> tuple[str, bool]:
    """(output, masquerade) as upstream's tracePacket reports them."""
    hook = "OUTPUT" if ip(src) in LOCAL else "PREROUTING"

    def nat(choose):
        ctx = context(src, dst, port, proto, choose, hook)
        result = RULES.evaluate("nat", hook, ctx)
        return result.nat, ctx.packet.mark
    outputs, masq = [], False
    for branch in explore(nat):
        action, mark = branch.result
        masq = masq or bool(mark & MASQ_MARK)
        if action is not None and action.kind == "DNAT":
            outputs.append(f"{action.addr}:{action.port}")
    dest = outputs[0].rsplit(":", 1)[0] if outputs else dst
    for chain in FILTER_CHAINS:
        result = RULES.evaluate("filter", chain, context(src, dest, port, proto, hook=hook))
        if result.steps and result.steps[-1].action.split()[0] in ("ACCEPT", "DROP", "REJECT"):
            outputs.append(result.verdict)
    return ", ".join(outputs), masq


def readme_flows() -> list[tuple]:
    """The 'Some expected flows' table of the oracle's README."""
    text = (ORACLE / "README.md").read_text()
    table = text[text.index("| from | to | output | masquerade |"):]
    flows = []
    for row in table.splitlines()[2:]:
        if not row.startswith("|"):
            break
        src, to, output, masq = (cell.strip() for cell in row.strip("|").split("|"))
        addr, port = to.rsplit(":", 1)
        flows.append((src.split()[0], addr, int(port), re.sub(r"\s*\(.*\)", "", output),
                      masq == "yes"))
    return flows


@pytest.mark.parametrize("src, dst, port, output, masq", readme_flows())
def test_readme_flows(src, dst, port, output, masq):
    assert trace(src, dst, port) == (output, masq)


def test_readme_lists_the_flows():
    assert len(readme_flows()) == 8


# Flows upstream's TestTracePacket asserts on (nearly) the same rules, and more derived
# from TestOverallIPTablesRules' services by following upstream's rules by hand.
@pytest.mark.parametrize("src, dst, port, output, masq", [
    # TestTracePacket
    ("10.0.0.2", "10.0.0.3", 80, "", False),                       # no match
    ("192.168.0.2", "192.168.99.22", 80, "10.180.0.2:80", True),   # LOCAL, KUBE-MARK-MASQ
    ("203.0.113.2", "192.168.99.22", 80, "DROP", False),           # eTP Local, no endpoint
    ("192.168.0.2", "192.168.0.2", 30000, "ACCEPT", False),        # health check node port
    # svc1: hairpin from its own endpoint is masqueraded
    ("10.180.0.1", "172.30.0.41", 80, "10.180.0.1:80", True),
    ("10.0.0.2", "172.30.0.41", 81, "", False),
    ("10.0.0.2", "172.30.0.40", 80, "", False),                    # not a service IP
    # svc2 (eTP Local, no local endpoint): pods and the node itself still get the service
    ("10.0.0.2", "1.2.3.4", 80, "10.180.0.2:80", False),
    ("10.0.0.2", "192.168.0.2", 3001, "10.180.0.2:80", False),
    ("192.168.0.2", "192.168.0.2", 3001, "10.180.0.2:80", True),
    ("192.168.0.2", "127.0.0.1", 3001, "10.180.0.2:80", True),     # localhost NodePort
    ("203.0.113.1", "192.168.0.2", 3001, "DROP", False),
    ("203.0.113.1", "192.168.99.22", 80, "DROP", False),
    # svc3 NodePort on every local address
    ("127.0.0.1", "127.0.0.1", 3003, "10.180.0.3:80", True),
    ("203.0.113.1", "192.168.1.2", 3003, "10.180.0.3:80", True),
    ("203.0.113.1", "192.168.0.3", 3003, "", False),               # not a local address
    ("10.0.0.2", "172.30.0.43", 80, "10.180.0.3:80", False),
    # svc4 external IP: both endpoints, masqueraded
    ("203.0.113.1", "192.168.99.33", 80, "10.180.0.4:80, 10.180.0.5:80", True),
    ("10.0.0.2", "192.168.99.33", 80, "10.180.0.4:80, 10.180.0.5:80", True),
    # svc5: source ranges on the LB IP, NodePort 3002, cluster IP
    ("203.0.113.127", "5.6.7.8", 80, "10.180.0.3:80", True),
    ("203.0.113.128", "5.6.7.8", 80, "DROP", False),
    ("10.0.0.2", "5.6.7.8", 80, "DROP", False),
    ("10.0.0.2", "172.30.0.45", 80, "10.180.0.3:80", False),
    ("203.0.113.1", "192.168.0.2", 3002, "10.180.0.3:80", True),
    # svc6 has no endpoints; other protocols and ports do not match
    ("10.0.0.2", "172.30.0.46", 81, "", False),
    ("10.0.0.2", "172.30.0.46", 80, "REJECT", False),
])
def test_derived_flows(src, dst, port, output, masq):
    assert trace(src, dst, port) == (output, masq)


def test_udp_does_not_match_tcp_services():
    assert trace("10.0.0.2", "172.30.0.41", 80, proto="udp") == ("", False)


def test_random_endpoint_choice_is_a_branch():
    def run(choose):
        return RULES.evaluate("nat", "PREROUTING", context("10.0.0.2", "172.30.0.44", 80,
                                                          choose=choose))
    branches = explore(run)
    assert [(str(b.result.nat), b.probability) for b in branches] == [
        ("DNAT to 10.180.0.4:80", 0.5), ("DNAT to 10.180.0.5:80", 0.5)]
    assert [c.key for c in branches[0].choices] == ["nat/KUBE-SVC-4SW47YFZTEDKD3PK#2"]
    assert [(s.chain, s.index) for s in branches[1].result.steps] == [
        ("PREROUTING", 1), ("KUBE-SERVICES", 6), ("KUBE-SVC-4SW47YFZTEDKD3PK", 3),
        ("KUBE-SEP-C6EBXVWJJZMIWKLZ", 2)]


def test_client_ip_affinity_remembers_the_client():
    """svc5 has ClientIP affinity: the second connection is sent by the `recent` check."""
    recent = {}

    def connect(now):
        ctx = context("10.0.0.2", "172.30.0.45", 80, recent=recent)
        ctx.now = now
        result = RULES.evaluate("nat", "PREROUTING", ctx)
        svc_steps = [s.index for s in result.steps if s.chain == "KUBE-SVC-NUKIZ6OKUXPJNT4C"]
        return str(result.nat), svc_steps
    assert connect(0) == ("DNAT to 10.180.0.3:80", [3])
    assert connect(100) == ("DNAT to 10.180.0.3:80", [2])
    assert list(recent["KUBE-SEP-I77PXRDZVX7PMWMN"].entries) == [ip("10.0.0.2")]
    assert connect(100 + 10801) == ("DNAT to 10.180.0.3:80", [3])   # expired


def test_masquerade_happens_in_postrouting_for_marked_packets():
    marked = context("192.168.0.2", "10.180.0.1", 80, hook="POSTROUTING")
    marked.packet.mark = MASQ_MARK
    result = RULES.evaluate("nat", "POSTROUTING", marked)
    assert result.nat.kind == "MASQUERADE" and marked.packet.mark == 0
    plain = context("10.0.0.2", "10.180.0.1", 80, hook="POSTROUTING")
    assert RULES.evaluate("nat", "POSTROUTING", plain).nat is None


def test_expected_rules_round_trip():
    assert Ruleset.parse(expected_text()).save() == expected_text()
