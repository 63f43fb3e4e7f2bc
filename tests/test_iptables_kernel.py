"""The kernel as judge of syntax: rules restored into a throwaway network namespace,
read back with iptables-save / ipset save, parsed by podnet and saved again.

Each test makes its own namespace `pntest-ipt-<random>` and deletes it in a
finally; nothing runs in the host's namespace. (This machine's kernel has no
nfacct, so those rules are left out.)
"""

import ipaddress
import secrets
import subprocess

import pytest

from conftest import ORACLES, have, is_root
from podnet.linux.iptables import Ruleset
from podnet.linux.ipset import IpsetStore
from podnet.linux.netfilter import ConnView, HookContext, Packet
from podnet.sim.branches import explore

pytestmark = pytest.mark.netns


@pytest.fixture
def netns():
    if not (is_root() and have("ip") and have("iptables-restore") and have("iptables-save")):
        pytest.skip("needs root, iproute2 and iptables-restore")
    name = f"pntest-ipt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def in_ns(ns: str, *cmd: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return proc.stdout


def kernel_saved(ns: str, text: str, family: int = 4) -> str:
    """Restore `text`, return what iptables-save prints (without its # lines)."""
    tool = "iptables" if family == 4 else "ip6tables"
    in_ns(ns, f"{tool}-restore", stdin=text)
    saved = in_ns(ns, f"{tool}-save")
    return "".join(line + "\n" for line in saved.splitlines() if not line.startswith("#"))


RULES = r"""*raw
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A PREROUTING -p udp --dport 53 -j CT --notrack
-A PREROUTING -p udp --dport 54 -j NOTRACK
-A OUTPUT -p tcp -j TRACE
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A PREROUTING -j MARK --or-mark 0x4000
-A PREROUTING -j MARK --and-mark 0x4000
-A PREROUTING -j MARK --xor-mark 0x4000
-A PREROUTING -j MARK --set-mark 0x10/0xff
-A PREROUTING -j CONNMARK --save-mark
-A PREROUTING -j CONNMARK --restore-mark --nfmask 0xff --ctmask 0xff
-A PREROUTING -j CONNMARK --save-mark --mask 0xff00
-A PREROUTING -j CONNMARK --set-mark 0x1/0x1
-A PREROUTING -m connmark --mark 0x1/0x1 -j ACCEPT
-A FORWARD -p tcp -m tcp --tcp-flags SYN,RST SYN -j TCPMSS --clamp-mss-to-pmtu
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-X - [0:0]
:KUBE-Y - [0:0]
-A PREROUTING -m statistic --mode random --probability 0.5 -j KUBE-X
-A PREROUTING -m statistic --mode nth --every 3 --packet 0 -j KUBE-X
-A PREROUTING -m recent --set --name foo
-A PREROUTING -m recent --name foo --rcheck --seconds 10800 --reap -j KUBE-X
-A PREROUTING -m recent --update --hitcount 3 --rttl --rdest --name r -j KUBE-X
-A PREROUTING -p tcp -d 10.0.0.1 --dport 80 -j DNAT --to-destination 10.1.1.1:8080
-A PREROUTING -p tcp -d 10.0.0.1 --dport 81 -j DNAT --to-destination 10.1.1.1-10.1.1.5:8080-8090 --random --persistent
-A PREROUTING -p tcp --dport 82 -j REDIRECT --to-ports 15001
-A OUTPUT -m addrtype --dst-type LOCAL --limit-iface-out -j KUBE-X
-A OUTPUT -m addrtype ! --dst-type LOCAL -j KUBE-X
-A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE --random-fully
-A POSTROUTING -o eth+ -p tcp -j SNAT --to-source 1.2.3.4:1000-2000 --random
-A POSTROUTING -p tcp -j MASQUERADE --to-ports 1000-2000
-A KUBE-X -g KUBE-Y
COMMIT
*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:X - [0:0]
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -m conntrack --ctstatus CONFIRMED --ctorigdst 10.0.0.1 --ctorigdstport 80 --ctdir ORIGINAL -j ACCEPT
-A INPUT -m conntrack ! --ctstate NEW --ctproto tcp --ctorigsrc 1.2.3.0/24 -j X
-A INPUT -m state --state NEW -j ACCEPT
-A INPUT -m state ! --state INVALID,UNTRACKED -j X
-A INPUT -p tcp -m multiport --dports 80,443,8000:8080 -j ACCEPT
-A INPUT -p udp -m multiport ! --sports 53 -j ACCEPT
-A INPUT -m multiport -p tcp --ports 1,2 -j X
-A INPUT -p icmp --icmp-type echo-request -j ACCEPT
-A INPUT -p icmp -m icmp --icmp-type 3/4 -j ACCEPT
-A INPUT -p icmp --icmp-type any -j ACCEPT
-A INPUT -p tcp --syn -j ACCEPT
-A INPUT -p tcp --tcp-flags ALL NONE -j ACCEPT
-A INPUT -p tcp --dport 80: -j X
-A INPUT -p 6 -j X
-A INPUT -p all -j X
-A INPUT -p tcp ! --dport 22:23 -j LOG --log-prefix "hello world: " --log-level 4
-A INPUT -m physdev --physdev-in veth+ --physdev-is-bridged -j ACCEPT
-A INPUT -m physdev ! --physdev-is-in --physdev-out eth1 ! --physdev-is-bridged -j X
-A INPUT -m limit --limit 5/min --limit-burst 10 -j NFLOG --nflog-group 5 --nflog-prefix "x y"
-A INPUT -m mac --mac-source 02:00:00:00:00:01 -j ACCEPT
-A INPUT -m comment --comment "a \"quoted\" b" -j ACCEPT
-A INPUT -m comment --comment ns2/svc2:p80 -j ACCEPT
-A INPUT -m comment --comment abc_-9 -j ACCEPT
-A INPUT -i eth0 -p sctp --dport 5000 -j REJECT --reject-with icmp-host-prohibited
-A INPUT -p tcp -j REJECT
-A INPUT -p tcp -j REJECT --reject-with tcp-reset
-A INPUT -m socket --transparent -j ACCEPT
-A INPUT -m mark ! --mark 0x4000/0x4000 -j RETURN
-A INPUT -m mark --mark 0x1 -j X
-A INPUT -s 10.0.0.0/255.255.0.0 -j DROP
-A INPUT -i eth+ -s 1.2.3.4,5.6.7.8 -j X
-A INPUT -m iprange --src-range 10.0.0.1-10.0.0.9 -j DROP
-A INPUT -m length --length 100:200 -j DROP
-A INPUT -p udp -m udp --sport 1000:2000 -j DROP
-A INPUT -m statistic --mode random ! --probability 0.25 -j X
-A INPUT -m recent ! --remove --name r -j X
-A INPUT -m addrtype --src-type LOCAL,UNICAST --limit-iface-in -j X
-A INPUT -m set --match-set svc dst,dst -j ACCEPT
-A INPUT -m set ! --match-set nets src --return-nomatch -j X
-A X -m pkttype --pkt-type multicast -j DROP
COMMIT
"""

SETS = """create svc hash:ip,port family inet hashsize 1024 maxelem 65536
add svc 10.96.0.1,tcp:443
add svc 10.96.0.10,udp:53
create nets hash:net family inet hashsize 1024 maxelem 65536
add nets 10.0.0.0/8
add nets 10.1.0.0/16 nomatch
create ports bitmap:port range 0-65535
add ports 80
create loop hash:ip,port,ip family inet hashsize 1024 maxelem 65536
add loop 10.96.0.1,tcp:80,10.244.1.5
create lst list:set size 8
add lst nets
"""


def test_kernel_saved_rules_parse_and_save_unchanged(netns):
    in_ns(netns, "ipset", "restore", stdin=SETS)
    saved = kernel_saved(netns, RULES)
    assert "--probability 0.50000000000" in saved
    assert "-m recent --set --name foo --mask 255.255.255.255 --rsource" in saved
    assert "-j MARK --set-xmark 0x4000/0x4000" in saved
    ipsets = IpsetStore.parse(in_ns(netns, "ipset", "save"))
    assert Ruleset.parse(saved, ipsets=ipsets).save() == saved


def test_kernel_saved_ipsets_parse_and_save_unchanged(netns):
    in_ns(netns, "ipset", "restore", stdin=SETS)
    saved = in_ns(netns, "ipset", "save")
    assert IpsetStore.parse(saved).save() == saved


def test_ip6tables(netns):
    text = """*filter
:INPUT ACCEPT [0:0]
-A INPUT -s fd00::/64 -d 2001:db8::1 -p tcp --dport 443 -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type echo-request -j ACCEPT
-A INPUT -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j ACCEPT
-A INPUT -j REJECT --reject-with icmp6-adm-prohibited
-A INPUT -j REJECT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -d fd00:10:96::1 -p tcp -m tcp --dport 80 -j DNAT --to-destination [fd00:10:244::5]:8080
COMMIT
"""
    saved = kernel_saved(netns, text, family=6)
    rules = Ruleset.parse(saved, source="ip6tables-save")
    assert rules.save() == saved
    pkt = Packet(ipaddress.ip_address("fd00::9"), ipaddress.ip_address("fd00:10:96::1"),
                 "tcp", 1234, 80)
    nat = rules.evaluate("nat", "PREROUTING", HookContext("PREROUTING", pkt, ConnView()),
                         engine="ip6tables").nat
    assert str(nat) == "DNAT to [fd00:10:244::5]:8080"


def test_kube_proxy_rules_mean_the_same_after_the_kernel_rewrites_them(netns):
    """The oracle's rules, restored and saved by the kernel (which reorders options,
    adds /32 and -m tcp), give the same walk through the chains as the original."""
    lines = [line for line in (ORACLES / "kube-proxy" / "iptables-overall.expected")
             .read_text().splitlines() if not line.startswith("#")]
    original = "\n".join(line.replace(" -m nfacct --nfacct-name localhost_nps_accepted_pkts", "")
                         .replace(" -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "")
                         for line in lines) + "\n"
    saved = kernel_saved(netns, original)
    assert "-d 172.30.0.41/32 -p tcp -m comment" in saved
    assert Ruleset.parse(saved).save() == saved
    ours, kernels = Ruleset.parse(original), Ruleset.parse(saved)
    local = {ipaddress.ip_address(a) for a in ("127.0.0.1", "192.168.0.2")}

    def walk(rules, table, chain, src, dst, port):
        def run(choose):
            pkt = Packet(ipaddress.ip_address(src), ipaddress.ip_address(dst), "tcp", 4000, port)
            ctx = HookContext("PREROUTING", pkt, ConnView(), choose=choose,
                              addr_type=lambda a, i=None: "LOCAL" if a in local else "UNICAST")
            result = rules.evaluate(table, chain, ctx)
            return (result.verdict, str(result.nat), pkt.mark,
                    [(s.chain, s.index) for s in result.steps])
        return [(b.probability, b.result) for b in explore(run)]

    flows = [("10.0.0.2", "172.30.0.41", 80), ("192.168.0.2", "172.30.0.44", 80),
             ("203.0.113.1", "5.6.7.8", 80), ("203.0.113.200", "5.6.7.8", 80),
             ("203.0.113.1", "192.168.0.2", 3003), ("127.0.0.1", "127.0.0.1", 3001),
             ("10.0.0.2", "172.30.0.46", 80), ("203.0.113.1", "1.2.3.4", 80)]
    for src, dst, port in flows:
        for table, chain in (("nat", "KUBE-SERVICES"), ("filter", "KUBE-SERVICES"),
                             ("filter", "KUBE-EXTERNAL-SERVICES"),
                             ("filter", "KUBE-PROXY-FIREWALL"), ("filter", "KUBE-NODEPORTS")):
            assert walk(ours, table, chain, src, dst, port) == \
                walk(kernels, table, chain, src, dst, port), (src, dst, port, chain)


NTH = """*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:HIT - [0:0]
-A OUTPUT -p udp -m udp --dport 9 -m statistic --mode nth --every 3 --packet 0 -j HIT
-A OUTPUT -p udp -m udp --dport 9 -m statistic --mode nth --every 3 --packet 1 -j HIT
-A OUTPUT -p udp -m udp --dport 9 -m statistic --mode nth --every 3 --packet 2 -j HIT
-A OUTPUT -p udp -m udp --dport 9 -m statistic --mode nth ! --every 2 --packet 1 -j HIT
COMMIT
"""


def test_statistic_nth_matches_the_packets_the_kernel_matches(netns):
    """Packets sent one by one through freshly loaded nth rules: after each, the rules
    whose packet counter grew are the ones podnet's per-rule counters say matched."""
    import sys
    in_ns(netns, "ip", "link", "set", "lo", "up")
    in_ns(netns, "iptables-restore", stdin=NTH)
    rules = Ruleset.parse(NTH)
    counters: dict = {}
    send = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 9))"

    def kernel_counts() -> list[int]:
        saved = in_ns(netns, "iptables-save", "-c", "-t", "filter")
        return [int(line[1:].split(":")[0]) for line in saved.splitlines()
                if line.startswith("[") and "-A OUTPUT" in line]
    before = kernel_counts()
    for _ in range(7):
        in_ns(netns, sys.executable, "-c", send)
        after = kernel_counts()
        kernel = [i + 1 for i, (a, b) in enumerate(zip(before, after)) if b > a]
        before = after
        pkt = Packet(ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("127.0.0.1"), "udp",
                     40000, 9)
        result = rules.evaluate("filter", "OUTPUT", HookContext("OUTPUT", pkt, ConnView(),
                                                               counters=counters))
        ours = [s.index for s in result.steps if s.chain == "OUTPUT" and s.index]
        assert ours == kernel
