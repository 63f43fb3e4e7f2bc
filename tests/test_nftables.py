"""nftables: both syntaxes, JSON, printing, and evaluation of every supported expression."""

import ipaddress
import json

import pytest

from podnet.errors import InputError
from podnet.linux.netfilter import ConnView, HookContext, Packet
from podnet.linux.nftables import NftRuleset, priority_text
from podnet.sim.branches import explore

LOCAL = {"127.0.0.1", "192.168.0.2", "::1"}


def ip(text):
    return ipaddress.ip_address(text)


def packet(src="10.0.0.2", dst="10.0.0.9", proto="tcp", sport=40000, dport=80, **kw):
    return Packet(ip(src), ip(dst), proto, sport, dport, **kw)


def ctx(pkt=None, hook="INPUT", conn=None, **kw):
    kw.setdefault("addr_type", lambda addr, iface=None: "LOCAL" if str(addr) in LOCAL else "UNICAST")
    return HookContext(hook=hook, packet=pkt or packet(), conn=conn or ConnView(), **kw)


def chain(rules: str, family="ip", head="type filter hook input priority 0; policy accept;",
          extra=""):
    """A one-chain table `t` (chain `c`) plus helper chains/sets in `extra`."""
    return NftRuleset.parse(f"table {family} t {{\n{extra}\nchain c {{\n{head}\n{rules}\n}}\n}}\n",
                            "test.nft")


def run(rs, c=None, family="ip", name="c", **kw):
    return rs.evaluate(family, "t", name, c or ctx(**kw))


def verdict(rules, pkt=None, family="ip", extra="", **kw):
    return run(chain(rules, family, extra=extra), ctx(pkt, **kw), family).verdict


def matches(rule, pkt=None, family="ip", extra="", **kw):
    """Whether `rule` (ending in no verdict) matches: it is appended with `drop`."""
    return verdict(f"{rule} drop", pkt, family, extra, **kw) == "DROP"


# ---------------------------------------------------------------------------
# Parsing: block syntax, command syntax, JSON
# ---------------------------------------------------------------------------

BLOCK = """
table ip filter {
	comment "test table"
	set allowed {
		type ipv4_addr
		flags interval
		comment "who may come in"
		elements = { 10.0.0.0/8, 192.168.1.1-192.168.1.9,
			     172.16.0.1 }
	}

	map ports {
		type inet_proto . inet_service : verdict
		elements = { tcp . 22 : accept, udp . 53 comment "dns" : jump dns }
	}

	chain dns {
		counter accept
	}

	chain input {
		type filter hook input priority filter; policy drop;
		ct state established,related accept
		ip saddr @allowed meta l4proto . th dport vmap @ports
	}
}
"""


def test_block_syntax():
    rs = NftRuleset.parse(BLOCK)
    t = rs.table("ip", "filter")
    assert t.comment == "test table"
    assert list(t.chains) == ["dns", "input"]
    inp = t.chains["input"]
    assert (inp.type, inp.hook, inp.priority, inp.policy) == ("filter", "input", 0, "drop")
    assert [r.text for r in inp.rules] == [
        "ct state established,related accept",
        "ip saddr @allowed meta l4proto . th dport vmap @ports"]
    assert len(t.sets["allowed"].elements) == 3
    assert t.sets["allowed"].comment == "who may come in"
    assert t.sets["ports"].kind == "map" and t.sets["ports"].data_types == ("verdict",)
    assert [e.comment for e in t.sets["ports"].elements.values()] == [None, "dns"]


COMMANDS = """
add table inet fw { comment "firewall" ; }
add chain inet fw input { type filter hook input priority 0 ; policy drop ; }
add chain inet fw allow
add set inet fw admins { type ipv4_addr ; flags interval ; }
add element inet fw admins { 10.1.0.0/16 }
add rule inet fw input ip saddr @admins jump allow
add rule inet fw allow tcp dport 22 accept
insert rule inet fw input ct state established accept
add rule inet fw input index 0 iifname "lo" accept
"""


def test_command_syntax():
    rs = NftRuleset.parse(COMMANDS)
    t = rs.table("inet", "fw")
    assert t.comment == "firewall"
    assert [r.text for r in t.chains["input"].rules] == [
        "ct state established accept", 'iifname "lo" accept', "ip saddr @admins jump allow"]
    assert t.chains["input"].policy == "drop"


def test_command_syntax_changes():
    rs = NftRuleset.parse(COMMANDS)
    handle = rs.table("inet", "fw").chains["input"].rules[2].handle
    rs.apply(f"""
        delete rule inet fw input handle {handle}
        flush chain inet fw allow
        add element inet fw admins {{ 10.2.0.0/16 }}
        delete element inet fw admins {{ 10.1.0.0/16 }}
        add map inet fw m {{ type ipv4_addr : verdict ; }}
        add element inet fw m {{ 1.1.1.1 : drop }}
        flush map inet fw m
    """)
    t = rs.table("inet", "fw")
    assert len(t.chains["input"].rules) == 2
    assert t.chains["allow"].rules == []
    assert [e.text for e in t.sets["admins"].elements.values()] == ["10.2.0.0/16"]
    assert t.sets["m"].elements == {}
    rs.apply("delete table inet fw\nadd table ip a\nadd table ip b\nflush ruleset ip")
    assert rs.tables == {}


def test_create_fails_when_the_object_exists():
    with pytest.raises(InputError, match="line 2: .*already exists"):
        NftRuleset.parse("add table ip t\ncreate table ip t\n")


def test_define_variables():
    rs = NftRuleset.parse('define LAN = 10.0.0.0/8\n'
                          'table ip t { chain c { type filter hook input priority 0;\n'
                          ' ip saddr $LAN accept } }')
    assert run(rs, ctx(packet(src="10.1.1.1"))).verdict == "ACCEPT"
    assert run(rs, ctx(packet(src="10.1.1.1"))).steps[0].text == "ip saddr 10.0.0.0/8 accept"


def test_parse_list_parse_round_trip():
    for text in (BLOCK, COMMANDS):
        rs = NftRuleset.parse(text)
        listed = rs.list_ruleset()
        again = NftRuleset.parse(listed, "listed")
        assert again.semantics() == rs.semantics()
        assert again.list_ruleset() == listed


def test_list_ruleset_prints_like_nft():
    rs = NftRuleset.parse("""
        add table ip t { comment "c" ; }
        add chain ip t pre { type filter hook prerouting priority -110 ; }
        add chain ip t out { type filter hook output priority -110 ; }
        add chain ip t nat { type nat hook postrouting priority 100 ; }
        add chain ip t in { type filter hook input priority filter+10 ; policy drop ; }
        add chain ip t helper { comment "helper" ; }
        add rule ip t helper numgen random mod 2 vmap { 0 : goto helper , 1 : drop }
        add set ip t s { type ipv4_addr ; flags dynamic,timeout ; timeout 10800s ; }
    """)
    assert rs.list_ruleset() == (
        'table ip t {\n'
        '\tcomment "c"\n'
        '\tset s {\n\t\ttype ipv4_addr\n\t\tflags dynamic,timeout\n\t\ttimeout 3h\n\t}\n\n'
        '\tchain pre {\n\t\ttype filter hook prerouting priority dstnat - 10; policy accept;\n\t}\n\n'
        '\tchain out {\n\t\ttype filter hook output priority -110; policy accept;\n\t}\n\n'
        '\tchain nat {\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t}\n\n'
        '\tchain in {\n\t\ttype filter hook input priority filter + 10; policy drop;\n\t}\n\n'
        '\tchain helper {\n\t\tcomment "helper"\n'
        '\t\tnumgen random mod 2 vmap { 0 : goto helper, 1 : drop }\n\t}\n'
        '}\n')
    assert rs.list_ruleset(exclude={("ip", "t")}) == ""


@pytest.mark.parametrize("text,family,hook,value", [
    ("dstnat", "ip", "prerouting", -100), ("dstnat - 10", "ip", "prerouting", -110),
    ("filter + 10", "inet", "input", 10), ("raw", "ip", "prerouting", -300),
    ("mangle", "ip6", "forward", -150), ("security", "ip", "input", 50),
    ("srcnat", "ip", "postrouting", 100), ("-110", "ip", "output", -110),
    ("-100", "ip", "output", -100), ("-200", "ip", "input", -200),
])
def test_priorities(text, family, hook, value):
    rs = NftRuleset.parse(f"table {family} t {{ chain c {{ type filter hook {hook} "
                          f"priority {text}; }} }}")
    assert rs.table(family, "t").chains["c"].priority == value
    assert priority_text(family, hook, value) == text


def test_base_chains_by_hook_and_family():
    rs = NftRuleset.parse("""
        table ip a { chain n { type nat hook prerouting priority dstnat; }
                     chain f { type filter hook prerouting priority -110; }
                     chain o { type filter hook output priority 0; } }
        table ip6 b { chain f6 { type filter hook prerouting priority raw; } }
        table inet c { chain any { type filter hook prerouting priority 10; policy drop; } }
    """)
    v4 = rs.base_chains("PREROUTING", 4)
    assert [(b.table, b.name, b.priority, b.type) for b in v4] == [
        ("a", "f", -110, "filter"), ("a", "n", -100, "nat"), ("c", "any", 10, "filter")]
    assert v4[2].family == "inet" and v4[2].policy == "drop"
    assert [b.name for b in rs.base_chains("PREROUTING", 6)] == ["f6", "any"]
    assert [b.name for b in rs.base_chains("OUTPUT")] == ["o"]
    assert rs.base_chains("FORWARD") == []


NFT_JSON = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "ip", "name": "t", "handle": 1}},
    {"set": {"family": "ip", "name": "ips", "table": "t", "type": "ipv4_addr", "handle": 2,
             "flags": ["interval"], "elem": [{"prefix": {"addr": "10.0.0.0", "len": 8}},
                                             {"range": ["192.168.1.1", "192.168.1.9"]}]}},
    {"map": {"family": "ip", "name": "svc", "table": "t", "type": ["ipv4_addr", "inet_proto",
             "inet_service"], "map": "verdict", "handle": 3,
             "elem": [[{"elem": {"val": {"concat": ["1.2.3.4", "tcp", 80]}, "comment": "web"}},
                       {"goto": {"target": "web"}}]]}},
    {"chain": {"family": "ip", "table": "t", "name": "pre", "handle": 4, "type": "nat",
               "hook": "prerouting", "prio": -100, "policy": "accept"}},
    {"chain": {"family": "ip", "table": "t", "name": "web", "handle": 5}},
    {"rule": {"family": "ip", "table": "t", "chain": "pre", "handle": 6, "expr": [
        {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["new", "untracked"]}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}},
                   "right": "@ips"}},
        {"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}},
                                     {"meta": {"key": "l4proto"}},
                                     {"payload": {"protocol": "th", "field": "dport"}}]},
                  "data": "@svc"}}]}},
    {"rule": {"family": "ip", "table": "t", "chain": "web", "handle": 7, "expr": [
        {"mangle": {"key": {"meta": {"key": "mark"}},
                    "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}},
        {"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                  "data": {"set": [[0, {"goto": {"target": "web"}}], [1, {"drop": None}]]}}}]}},
    {"rule": {"family": "ip", "table": "t", "chain": "web", "handle": 8, "expr": [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
        {"dnat": {"addr": "10.180.0.1", "port": 8080}}], "comment": "to the pod"}},
]}

SAME_AS_TEXT = """
table ip t {
	set ips { type ipv4_addr; flags interval; elements = { 10.0.0.0/8, 192.168.1.1-192.168.1.9 } }
	map svc { type ipv4_addr . inet_proto . inet_service : verdict
		  elements = { 1.2.3.4 . tcp . 80 comment "web" : goto web } }
	chain pre {
		type nat hook prerouting priority dstnat; policy accept;
		ct state new,untracked ip saddr @ips ip daddr . meta l4proto . th dport vmap @svc
	}
	chain web {
		meta mark set meta mark | 0x00004000 numgen random mod 2 vmap { 0 : goto web, 1 : drop }
		meta l4proto tcp dnat to 10.180.0.1:8080 comment "to the pod"
	}
}
"""


def test_parse_json_equals_text():
    from_json = NftRuleset.parse_json(json.dumps(NFT_JSON))
    assert from_json.semantics() == NftRuleset.parse(SAME_AS_TEXT).semantics()
    assert NftRuleset.parse_json(NFT_JSON).semantics() == from_json.semantics()
    web = from_json.table("ip", "t").chains["web"].rules
    assert web[1].comment == "to the pod"
    assert web[1].text == 'meta l4proto tcp dnat to 10.180.0.1:8080 comment "to the pod"'


@pytest.mark.parametrize("doc,where", [
    ("{not json", "line 1"),
    ({"foo": []}, None),
    ({"nftables": [{"table": {"family": "ip", "name": "t"}},
                   {"rule": {"family": "ip", "table": "t", "chain": "c",
                             "expr": [{"tproxy": {}}]}}]}, "nftables[1] (rule)"),
    ({"nftables": [{"table": {"family": "ip", "name": "t"}},
                   {"chain": {"family": "ip", "table": "t", "name": "c"}},
                   {"rule": {"family": "ip", "table": "t", "chain": "c",
                             "expr": [{"match": {"op": "==", "left": {"meta": {"key": "cpu"}},
                                                 "right": 1}}]}}]}, "nftables[2] (rule)"),
])
def test_parse_json_errors(doc, where):
    with pytest.raises(InputError) as err:
        NftRuleset.parse_json(doc if isinstance(doc, dict) else doc, source="dump.json")
    assert err.value.file == "dump.json"
    assert err.value.field == where


# ---------------------------------------------------------------------------
# Errors name the line
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text,line,message", [
    ("table ip t {\n chain c {\n  ip saddr 1.2.3.4 frobnicate 3\n }\n}\n", 3, "unknown expression"),
    ("table ip t {\n chain c {\n  meta cpu 1 accept\n }\n}\n", 3, "unknown expression 'meta cpu'"),
    ("add table ip t\nadd chain ip t c\nadd rule ip t c jump nowhere\n", 3, "no such chain 'nowhere'"),
    ("add table ip t\nadd chain ip t c\nadd rule ip t c ip daddr @nope drop\n", 3, "no such set"),
    ("add table ip t\nadd rule ip t c accept\n", 2, "no such chain"),
    ("add table ip t\nadd set ip t s { type ipv4_addr ; }\nadd element ip t s { 10.0.0.300 }\n",
     3, "bad IPv4 address"),
    ("table ip t {\n chain c {\n  ip saddr 1.2.3.4 accept comment \"oops\n }\n}\n", 3, "unterminated"),
    ("table ip t {\n chain c {\n  accept\n", 3, "missing '}'"),
    ("table ip t {\n chain c { type filter hook input priority sideways; }\n}\n", 2, "priority"),
    ("frobnicate table ip t\n", 1, "unknown command"),
    ("add table ip t\nadd chain ip t c\n\nadd rule ip t c tcp dport 80 masquerade to 1.2.3.4\n", 4,
     "only a port"),
    ("table ip t {\n\n chain c {\n  ct state bogus accept\n }\n}\n", 4, "unknown flag 'bogus'"),
])
def test_errors_name_the_line(text, line, message):
    with pytest.raises(InputError, match=message) as err:
        NftRuleset.parse(text, source="rules.nft")
    assert err.value.file == "rules.nft"
    assert err.value.field == f"line {line}"


# ---------------------------------------------------------------------------
# Chains: jump, goto, return, policies, steps
# ---------------------------------------------------------------------------

JUMPS = """
table ip t {
	chain sub { ip daddr 10.0.0.1 return
		    ip daddr 10.0.0.2 accept
		    ip daddr 10.0.0.3 drop }
	chain gotoed { ip daddr 10.0.0.4 reject }
	chain c {
		type filter hook forward priority 0; policy drop;
		jump sub
		ip daddr 10.0.0.4 goto gotoed
		ip daddr 10.0.0.1 accept
		return
	}
	chain outer { type filter hook input priority 0; policy accept;
		jump c
		counter drop }
	chain loop { jump loop }
}
"""


@pytest.mark.parametrize("dst,expected", [
    ("10.0.0.1", "ACCEPT"),     # sub returns, then c accepts
    ("10.0.0.2", "ACCEPT"),     # accept in a jumped-to chain ends the base chain
    ("10.0.0.3", "DROP"),
    ("10.0.0.4", "REJECT"),
    ("10.0.0.5", "DROP"),       # `return` in a base chain: its policy
])
def test_jump_goto_return_and_policy(dst, expected):
    rs = NftRuleset.parse(JUMPS)
    assert run(rs, ctx(packet(dst=dst))).verdict == expected


def test_goto_does_not_come_back():
    rs = NftRuleset.parse(JUMPS)
    # from `outer`, c is jumped to; in c, goto gotoed falls off -> back to outer, not to c
    result = rs.evaluate("ip", "t", "outer", ctx(packet(dst="10.0.0.6")))
    assert [(s.chain, s.index) for s in result.steps] == [
        ("outer", 1), ("c", 1), ("c", 4), ("outer", 2)]
    assert result.verdict == "DROP"
    result = rs.evaluate("ip", "t", "outer", ctx(packet(dst="10.0.0.7")))
    assert result.verdict == "DROP"


def test_steps_record_the_matched_rules():
    rs = NftRuleset.parse(JUMPS)
    result = run(rs, ctx(packet(dst="10.0.0.5")))
    assert [(s.engine, s.table, s.chain, s.index, s.text, s.action) for s in result.steps] == [
        ("nft", "ip t", "c", 1, "jump sub", "jump sub"),
        ("nft", "ip t", "c", 4, "return", "return"),
        ("nft", "ip t", "c", 0, "policy drop", "DROP")]
    reject = run(rs, ctx(packet(dst="10.0.0.4")))
    assert reject.reject_with == "icmp-port-unreachable"
    assert reject.steps[-1].action == "REJECT with icmp-port-unreachable"


def test_policy_accept_without_matches_leaves_no_steps():
    result = run(chain("ip daddr 1.1.1.1 drop"))
    assert result.verdict == "ACCEPT" and result.steps == []


def test_jump_loops_are_reported():
    rs = NftRuleset.parse(JUMPS)
    with pytest.raises(InputError, match="deeper"):
        rs.evaluate("ip", "t", "loop", ctx())


# ---------------------------------------------------------------------------
# Matches
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule,pkt,expected", [
    ("ip saddr 10.0.0.2", packet(), True),
    ("ip saddr != 10.0.0.2", packet(), False),
    ("ip saddr 10.0.0.0/8", packet(), True),
    ("ip saddr != 10.0.0.0/8", packet(src="11.0.0.1"), True),
    ("ip daddr 10.0.0.5-10.0.0.10", packet(), True),
    ("ip daddr { 10.0.0.1, 10.0.0.8/29 }", packet(), True),
    ("ip daddr != { 10.0.0.1, 10.0.0.8/29 }", packet(), False),
    ("ip saddr { 172.16.0.0/12 }", packet(), False),
    ("ip protocol tcp", packet(), True),
    ("ip protocol udp", packet(), False),
    ("meta l4proto { udp, sctp }", packet(proto="sctp"), True),
    ("th dport 80", packet(), True),
    ("th dport 30000-32767", packet(dport=30080), True),
    ("th dport 80", packet(proto="icmp", sport=None, dport=None, icmp_type=8), False),
    ("tcp dport { 80, 443 }", packet(dport=443), True),
    ("tcp dport 80", packet(proto="udp"), False),
    ("udp sport 40000", packet(proto="udp"), True),
    ("sctp dport 80", packet(proto="sctp"), True),
    ("tcp dport http", packet(), True),
    ("tcp dport > 1024", packet(), False),
    ("tcp sport >= 1024", packet(), True),
    ("icmp type echo-request", packet(proto="icmp", sport=None, dport=None, icmp_type=8), True),
    ("tcp flags syn", packet(), True),
    ("tcp flags & (syn|ack) == syn", packet(), True),
    ("tcp flags syn / syn,ack", packet(tcp_flags=frozenset({"SYN", "ACK"})), False),
    ("ip6 saddr ::1", packet(), False),
    ("meta nfproto ipv4", packet(), True),
    ("ip length > 60", packet(), True),
])
def test_packet_matches(rule, pkt, expected):
    assert matches(rule, pkt, family="inet") is expected


def test_ip6_matches_in_inet_tables():
    pkt = packet(src="fd00::1", dst="fd00::2")
    assert matches("ip6 saddr fd00::/64 ip6 daddr != fd00::1", pkt, family="inet")
    assert not matches("ip saddr 0.0.0.0/0", pkt, family="inet")
    assert matches("meta l4proto tcp ip6 nexthdr tcp", pkt, family="inet")


@pytest.mark.parametrize("rule,expected", [
    ('iifname "eth0"', True), ("iifname eth0", True), ('iifname "eth*"', True),
    ('iifname != "eth*"', False), ('iifname { "lo", "veth*" }', False),
    ('oifname "veth1"', True), ("iif eth0", True), ("oif lo", False),
    ('iifname { "cni0", "eth0" }', True),
])
def test_interfaces(rule, expected):
    assert matches(rule, in_iface="eth0", out_iface="veth1") is expected


def test_interface_names_when_there_is_none():
    # on OUTPUT there is no input interface: iifname is "", iif does not match at all
    assert matches('iifname != "eth0"', hook="OUTPUT")
    assert not matches("iif eth0", hook="OUTPUT")
    assert not matches("iif != eth0", hook="OUTPUT")


@pytest.mark.parametrize("rule,mark,expected", [
    ("meta mark 0x4000", 0x4000, True), ("mark 16384", 0x4000, True),
    ("mark and 0x4000 == 0", 0x4000, False), ("mark and 0x4000 == 0", 0x1, True),
    ("meta mark & 0x00004000 == 0x00000000", 0x1, True), ("mark != 0x0", 0, False),
])
def test_marks(rule, mark, expected):
    assert matches(rule, packet(mark=mark)) is expected


@pytest.mark.parametrize("rule,conn,expected", [
    ("ct state new", ConnView("NEW"), True),
    ("ct state established,related", ConnView("RELATED"), True),
    ("ct state { established, related }", ConnView("NEW"), False),
    ("ct state != established", ConnView("NEW"), True),
    ("ct state invalid", ConnView("INVALID"), True),
    ("ct state untracked", ConnView("NEW", notrack=True), True),
    ("ct status dnat", ConnView("ESTABLISHED", status={"DNAT", "SEEN_REPLY"}), True),
    ("ct status snat", ConnView("ESTABLISHED", status={"DNAT"}), False),
    ("ct mark 0x10", ConnView(mark=0x10), True),
    ("ct direction reply", ConnView(direction="REPLY"), True),
    ("ct original ip daddr 172.30.0.1", ConnView(orig_dst=ip("172.30.0.1")), True),
    ("ct original ip daddr 172.30.0.1", ConnView(), False),   # orig tuple = the packet's
    ("ct original proto-dst 80", ConnView(), True),
])
def test_conntrack(rule, conn, expected):
    assert matches(rule, conn=conn) is expected


def test_fib():
    seen = []

    def addr_type(addr, iface=None):
        seen.append((str(addr), iface))
        return "LOCAL" if str(addr) in LOCAL else "UNICAST"

    local_src = packet(src="192.168.0.2")
    assert matches("fib saddr type local", local_src, addr_type=addr_type)
    assert not matches("fib daddr type local", local_src, addr_type=addr_type)
    assert matches("fib daddr type { unicast, broadcast }", local_src, addr_type=addr_type)
    assert matches("fib daddr . iif type unicast", local_src, addr_type=addr_type, in_iface="eth0")
    assert seen[-1] == ("10.0.0.9", "eth0")
    assert not matches("fib saddr . iif oif missing", in_iface="eth0")
    assert matches("fib saddr . iif oif exists", in_iface="eth0")


def test_concatenations_sets_and_maps():
    extra = """
        set svc { type ipv4_addr . inet_proto . inet_service
                  elements = { 10.0.0.9 . tcp . 80, 10.0.0.9 . udp . 53 } }
        set allow { type ipv4_addr . inet_proto . inet_service . ipv4_addr; flags interval
                    elements = { 10.0.0.9 . tcp . 80 . 10.0.0.0/24 } }
    """
    assert matches("ip daddr . meta l4proto . th dport @svc", extra=extra)
    assert not matches("ip daddr . meta l4proto . th dport @svc", packet(dport=81), extra=extra)
    assert matches("ip daddr . meta l4proto . th dport . ip saddr @allow", extra=extra)
    assert not matches("ip daddr . meta l4proto . th dport . ip saddr @allow",
                       packet(src="10.0.1.2"), extra=extra)
    assert matches("ip daddr . tcp dport { 10.0.0.9 . 80, 10.0.0.10 . 443 }")
    assert matches("ip daddr . tcp dport 10.0.0.9 . 80")


def test_interval_sets_with_many_elements():
    elements = ", ".join(f"10.{i // 256}.{i % 256}.0/24" for i in range(2000))
    extra = f"set big {{ type ipv4_addr; flags interval; elements = {{ {elements} }} }}"
    rs = chain("ip saddr @big drop", extra=extra)
    for src, expected in (("10.0.0.1", "DROP"), ("10.7.207.255", "DROP"), ("10.7.208.0", "ACCEPT"),
                          ("9.255.255.255", "ACCEPT")):
        assert run(rs, ctx(packet(src=src))).verdict == expected


def test_verdict_maps():
    extra = """
        map ports { type inet_proto . inet_service : verdict
                    elements = { tcp . 80 comment "web" : jump web, udp . 53 : drop,
                                 tcp . 8000-8100 : accept } }
        chain web { ip saddr 10.0.0.2 reject with tcp reset }
    """
    rs = chain("meta l4proto . th dport vmap @ports\ncounter accept", extra=extra,
               head="type filter hook input priority 0; policy drop;")
    assert run(rs, ctx(packet())).reject_with == "tcp-reset"
    assert run(rs, ctx(packet(proto="udp", dport=53))).verdict == "DROP"
    assert run(rs, ctx(packet(dport=8050))).steps[0].action == "ACCEPT"
    missing = run(rs, ctx(packet(dport=22)))             # no element: the rule does not match
    assert [s.index for s in missing.steps] == [2]
    inline = chain("tcp dport vmap { 22 : drop, 80 : accept }")
    assert run(inline, ctx(packet(dport=22))).verdict == "DROP"


def test_comments_counters_logs_limits():
    rs = chain('ip saddr 10.0.0.2 counter log prefix "seen: " limit rate 10/second '
               'comment "log it"\nlimit rate over 1/second drop\ncounter packets 5 bytes 10 accept')
    result = run(rs, ctx())
    assert result.verdict == "ACCEPT"
    assert result.logs and result.logs[0].startswith("seen: ")
    assert "SRC=10.0.0.2 DST=10.0.0.9 PROTO=TCP" in result.logs[0]
    assert rs.table("ip", "t").chains["c"].rules[0].comment == "log it"
    assert [s.index for s in result.steps] == [1, 3]


# ---------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------

def test_mark_statements():
    rs = chain("mark set mark or 0x4000\nmeta mark set meta mark xor 0x1\nct mark set mark\n"
               "mark and 0x4000 != 0 meta mark set 0x7")
    c = ctx(packet(mark=1), conn=ConnView())
    result = run(rs, c)
    assert c.packet.mark == 0x7 and c.conn.mark == 0x4000
    assert [s.action for s in result.steps] == [
        "mark set mark or 0x4000", "meta mark set meta mark xor 0x1", "ct mark set mark",
        "meta mark set 0x7", "ACCEPT"]                  # then the policy, shown after matches
    c = ctx(conn=ConnView(mark=0x22))
    run(chain("meta mark set ct mark and 0xf0"), c)
    assert c.packet.mark == 0x20


def test_nftrace_and_notrack():
    result = run(chain("meta nftrace set 1 notrack"))
    assert result.trace and result.notrack


@pytest.mark.parametrize("rule,expected", [
    ("meta l4proto tcp dnat to 10.180.0.1:80", "DNAT to 10.180.0.1:80"),
    ("dnat ip to 10.180.0.1", "DNAT to 10.180.0.1"),
    ("dnat to 10.180.0.1:8000-8080", "DNAT to 10.180.0.1:8000-8080"),
    ("dnat to [fd00::1]:80", "DNAT to [fd00::1]:80"),
    ("snat to 192.168.0.2", "SNAT to 192.168.0.2"),
    ("snat ip to 192.168.0.2:1000", "SNAT to 192.168.0.2:1000"),
    ("masquerade", "MASQUERADE"),
    ("masquerade fully-random", "MASQUERADE random-fully"),
    ("redirect to :8080", "REDIRECT to port 8080"),
])
def test_nat_statements(rule, expected):
    result = run(chain(f"{rule}\ndrop", head="type nat hook prerouting priority dstnat;"))
    assert result.verdict == "ACCEPT"            # NAT ends the chain
    assert str(result.nat) == expected
    assert result.steps[-1].action == expected


def test_nat_flags_and_ports():
    nat = run(chain("masquerade to :1024-2048 random,persistent")).nat
    assert (nat.kind, nat.port, nat.port_max, nat.random, nat.persistent, nat.random_fully) == \
        ("MASQUERADE", 1024, 2048, True, True, False)


def test_dnat_through_a_map():
    extra = "map fwd { type ipv4_addr . inet_service : ipv4_addr . inet_service\n" \
            "elements = { 10.0.0.9 . 80 : 10.180.0.7 . 8080 } }"
    rs = chain("dnat ip to ip daddr . tcp dport map @fwd", extra=extra)
    assert str(run(rs, ctx()).nat) == "DNAT to 10.180.0.7:8080"
    assert run(rs, ctx(packet(dport=81))).nat is None
    inline = chain("dnat to numgen inc mod 2 map { 0 : 10.180.0.1, 1 : 10.180.0.2 }")
    assert str(run(inline, ctx()).nat) == "DNAT to 10.180.0.1"


@pytest.mark.parametrize("rule,family,pkt,expected", [
    ("reject", "ip", packet(), "icmp-port-unreachable"),
    ("reject", "ip6", packet(src="fd00::1", dst="fd00::2"), "icmp6-port-unreachable"),
    ("reject", "inet", packet(), "icmp-port-unreachable"),
    ("reject with icmp type host-unreachable", "ip", packet(), "icmp-host-unreachable"),
    ("reject with icmp admin-prohibited", "ip", packet(), "icmp-admin-prohibited"),
    ("reject with tcp reset", "ip", packet(), "tcp-reset"),
    ("reject with icmpx type admin-prohibited", "inet", packet(src="fd00::1", dst="fd00::2"),
     "icmp6-adm-prohibited"),
    ("reject with icmpv6 type no-route", "ip6", packet(src="fd00::1", dst="fd00::2"),
     "icmp6-no-route"),
])
def test_reject(rule, family, pkt, expected):
    result = run(chain(rule, family), ctx(pkt), family)
    assert (result.verdict, result.reject_with) == ("REJECT", expected)


def test_queue_verdict():
    assert verdict("queue") == "QUEUE"


# ---------------------------------------------------------------------------
# Random choices and dynamic sets
# ---------------------------------------------------------------------------

def test_numgen_asks_the_chooser():
    rs = chain("numgen random mod 3 vmap { 0 : accept, 1 : drop, 2 : continue }")
    asked = []

    def choose(key, options):
        asked.append((key, list(options)))
        return 1
    result = run(rs, ctx(choose=choose))
    assert result.verdict == "DROP"
    assert asked == [("t/c#1", [("0", 1 / 3), ("1", 1 / 3), ("2", 1 / 3)])]
    assert result.steps[0].note == "numgen random mod 3: 1 of 3"


def test_numgen_inc_is_a_counter_not_a_branch():
    """nft_ng_inc_gen: the expression's counter starts at mod - 1, so the first packet
    gets 0 (+ offset), then 1, 2, 0...; no choice is asked for."""
    rs = chain("numgen inc mod 3 offset 5 vmap { 5 : accept, 6 : drop, 7 : continue }")
    counters, asked, got = {}, [], []
    for _ in range(4):
        result = run(rs, ctx(counters=counters, choose=lambda key, options: asked.append(key) or 0))
        got.append((result.verdict, result.steps[0].note if result.steps else ""))
    assert asked == []
    assert got == [("ACCEPT", "numgen inc mod 3: 5 (counter 2 -> 0)"),
                   ("DROP", "numgen inc mod 3: 6 (counter 0 -> 1)"),
                   ("ACCEPT", "numgen inc mod 3: 7 (counter 1 -> 2)"),   # continue: policy
                   ("ACCEPT", "numgen inc mod 3: 5 (counter 2 -> 0)")]


def test_numgen_branches_are_explored_in_order():
    rs = chain("numgen random mod 2 offset 5 vmap { 5 : goto a, 6 : goto b }",
               extra="chain a { dnat to 10.0.0.1 }\nchain b { dnat to 10.0.0.2 }",
               head="type nat hook prerouting priority dstnat;")
    branches = explore(lambda choose: str(run(rs, ctx(choose=choose)).nat))
    assert [(b.probability, b.result) for b in branches] == [
        (0.5, "DNAT to 10.0.0.1"), (0.5, "DNAT to 10.0.0.2")]


def test_dynamic_sets_with_timeouts():
    extra = "set seen { type ipv4_addr; flags dynamic,timeout; timeout 100s; }\n" \
            "set once { type ipv4_addr; flags dynamic,timeout; timeout 100s; }"
    rs = chain("ip daddr 10.0.0.50 ip saddr @seen accept\n"       # a probe: membership only
               "ip daddr 10.0.0.50 drop\n"
               "update @seen { ip saddr }\n"
               "add @once { ip saddr timeout 5s }\n"
               "ip daddr 10.0.0.99 delete @seen { ip saddr }", extra=extra)
    dynamic = {}
    key = (int(ip("10.0.0.2")),)

    def at(now, dst="10.0.0.9"):
        return run(rs, ctx(packet(dst=dst), now=now, nft_dynamic=dynamic)).verdict

    at(1000)
    assert dynamic == {("ip", "t", "seen"): {key: 1100}, ("ip", "t", "once"): {key: 1005}}
    at(1003)
    assert dynamic[("ip", "t", "seen")] == {key: 1103}          # update refreshes
    assert dynamic[("ip", "t", "once")] == {key: 1005}          # add does not
    assert at(1102, "10.0.0.50") == "ACCEPT"
    assert at(1104, "10.0.0.50") == "DROP"                      # expired against ctx.now
    at(1200, "10.0.0.99")
    assert dynamic[("ip", "t", "seen")] == {}                   # deleted
    assert dynamic[("ip", "t", "once")] == {key: 1205}          # expired, so added again


def test_membership_of_a_static_set_is_not_dynamic():
    extra = "set s { type ipv4_addr; elements = { 10.0.0.2 } }"
    assert matches("ip saddr @s", extra=extra)
    assert not matches("ip saddr @s", packet(src="10.0.0.3"), extra=extra,
                       nft_dynamic={("ip", "t", "s"): {(int(ip("10.0.0.3")),): 10 ** 9}})
