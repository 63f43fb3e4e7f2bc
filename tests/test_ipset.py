"""podnet.linux.ipset: `ipset save` text and `-m set --match-set` membership."""

import ipaddress

import pytest

from podnet.errors import InputError
from podnet.linux.ipset import IpsetStore
from podnet.linux.netfilter import Packet

ip = ipaddress.ip_address

# as `ipset save` printed it in a namespace (ipset v7 kernel, iptables 1.8.9 era)
SAVED = """create foo hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x76ade744
add foo 10.96.0.1,tcp:443
add foo 10.96.0.10,udp:53
create n hash:net family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0x43780e8a
add n 10.0.0.0/8
add n 10.1.0.0/16 nomatch
add n 10.1.2.0/24
create b bitmap:port range 0-65535
add b 80
create t hash:ip family inet hashsize 1024 maxelem 65536 timeout 300 comment bucketsize 12 initval 0x5d7e1688
add t 1.1.1.1 timeout 99 comment "hi there"
create l list:set size 8
add l n
"""


def pkt(src="192.168.1.1", dst="10.96.0.1", proto="tcp", sport=40000, dport=443, **kw):
    return Packet(ip(src), ip(dst), proto, sport, dport, **kw)


@pytest.fixture
def store():
    return IpsetStore.parse(SAVED)


def test_save_round_trips(store):
    assert store.save() == SAVED


def test_hash_ip_port(store):
    assert store.match_packet("foo", ["dst", "dst"], pkt())
    assert not store.match_packet("foo", ["dst", "dst"], pkt(dport=80))
    assert not store.match_packet("foo", ["dst", "dst"], pkt(proto="udp"))
    assert store.match_packet("foo", ["dst", "dst"], pkt(dst="10.96.0.10", proto="udp", dport=53))
    assert not store.match_packet("foo", ["src", "dst"], pkt())
    assert not store.match_packet("foo", ["dst"], pkt())            # too few flags
    assert store.match_packet("foo", ["dst", "dst", "src"], pkt())  # extra flags are fine


def test_hash_net_longest_prefix_and_nomatch(store):
    def member(addr):
        return store.match_packet("n", ["src"], pkt(src=addr))
    assert member("10.9.9.9")
    assert not member("10.1.9.9")          # the /16 is nomatch
    assert member("10.1.2.3")              # the /24 inside it matches again
    assert not member("11.0.0.1")
    assert store.match_packet("n", ["src"], pkt(src="10.1.9.9"), return_nomatch=True)
    assert not store.match_packet("n", ["src"], pkt(src="10.9.9.9"), return_nomatch=True)


def test_bitmap_port_list_set_and_missing_sets(store):
    assert store.match_packet("b", ["dst"], pkt(dport=80))
    assert not store.match_packet("b", ["dst"], pkt(dport=81))
    assert not store.match_packet("b", ["dst"], pkt(proto="icmp", sport=None, dport=None))
    assert store.match_packet("l", ["src"], pkt(src="10.2.0.1"))
    assert not store.match_packet("l", ["src"], pkt(src="10.1.0.1"))
    assert not store.match_packet("nosuch", ["src"], pkt())
    assert "foo" in store and "nosuch" not in store


def test_family_must_match():
    store = IpsetStore.parse("create v6 hash:ip family inet6\nadd v6 fd00::1\n")
    assert store.match_packet("v6", ["src"], pkt(src="fd00::1", dst="fd00::2"))
    assert not store.match_packet("v6", ["src"], pkt(src="10.0.0.1"))


def test_multi_dimension_types():
    store = IpsetStore.parse("""create ipi hash:ip,port,ip family inet
add ipi 10.96.0.1,tcp:80,10.244.1.5
create ipn hash:ip,port,net family inet
add ipn 10.96.0.1,tcp:80,10.244.0.0/16
add ipn 10.96.0.1,tcp:80,10.244.9.0/24 nomatch
create np hash:net,port family inet
add np 10.0.0.0/8,udp:53
add np 10.0.0.0/8,tcp:8000-8002
create icmp hash:ip,port family inet
add icmp 8.8.8.8,icmp:echo-request
""")
    # kube-proxy's KUBE-LOOP-BACK: hairpin from the endpoint to itself via the service
    hairpin = pkt(src="10.244.1.5", dst="10.96.0.1", dport=80)
    assert store.match_packet("ipi", ["dst", "dst", "src"], hairpin)
    assert not store.match_packet("ipi", ["dst", "dst", "src"], pkt(src="10.244.1.6", dport=80))
    assert store.match_packet("ipn", ["dst", "dst", "src"], pkt(src="10.244.3.3", dport=80))
    assert not store.match_packet("ipn", ["dst", "dst", "src"], pkt(src="10.244.9.3", dport=80))
    assert store.match_packet("np", ["src", "dst"], pkt(src="10.1.1.1", proto="udp", dport=53))
    assert store.match_packet("np", ["src", "dst"], pkt(src="10.1.1.1", dport=8001))
    assert not store.match_packet("np", ["src", "dst"], pkt(src="10.1.1.1", dport=8003))
    echo = Packet(ip("10.0.0.1"), ip("8.8.8.8"), "icmp", icmp_type=8, icmp_code=0)
    assert store.match_packet("icmp", ["dst", "dst"], echo)


def test_ranges_and_cidrs_expand_in_ip_dimensions():
    store = IpsetStore.parse("create s hash:ip family inet\nadd s 10.0.0.0/30\n"
                             "add s 10.0.1.1-10.0.1.2\n")
    assert [store.match_packet("s", ["src"], pkt(src=f"10.0.0.{i}")) for i in range(5)] == \
        [True, True, True, True, False]
    assert store.match_packet("s", ["src"], pkt(src="10.0.1.2"))
    assert store.save() == ("create s hash:ip family inet\nadd s 10.0.0.0/30\n"
                            "add s 10.0.1.1-10.0.1.2\n")


def test_test_add_and_delete():
    store = IpsetStore.parse("create svc hash:ip,port family inet\ncreate nets hash:net\n")
    store.add("svc", "10.96.0.1,tcp:443")
    store.add("nets", "10.0.0.0/8")
    store.add("nets", "10.1.0.0/16", "nomatch")
    assert store.test("svc", "10.96.0.1,tcp:443")
    assert store.test("svc", "10.96.0.1,443")               # tcp is the default protocol
    assert not store.test("svc", "10.96.0.1,udp:443")
    assert store.test("nets", "10.2.3.4") and not store.test("nets", "10.1.3.4")
    assert store.test("nets", "10.0.0.0/8") and not store.test("nets", "10.0.0.0/9")
    store.command(["del", "svc", "10.96.0.1,tcp:443"], [])
    assert not store.test("svc", "10.96.0.1,tcp:443")
    with pytest.raises(InputError, match="set 'nosuch' does not exist"):
        store.add("nosuch", "1.1.1.1")


@pytest.mark.parametrize("text, message", [
    ("create s hash:ip\nadd s 10.0.0.1,80\n",
     "ipset: line 2: s: entry '10.0.0.1,80' does not fit hash:ip"),
    ("create s hash:foo\n", "ipset: line 1: create s: unsupported set type 'hash:foo'"),
    ("add s 1.1.1.1\n", "ipset: line 1: set 's' does not exist"),
    ("create s hash:ip\nadd s 1.1.1.300\n",
     "ipset: line 2: '1.1.1.300' does not appear to be an IPv4 or IPv6 address"),
    ("create s hash:ip family inet6\nadd s 1.1.1.1\n",
     "ipset: line 2: s: '1.1.1.1' is not an IPv6 address"),
    ("create s hash:ip\nadd s 1.1.1.1 timeout\n", "ipset: line 2: add s: bad option 'timeout'"),
    ("create s hash:ip,port\nadd s 1.1.1.1,gre:1\n",
     "ipset: line 2: s: bad protocol 'gre' in 'gre:1'"),
    ("create l list:set\ncreate m list:set\nadd l m\n",
     "ipset: line 3: add l: 'm' is a list:set itself"),
    ("swap a b\n", "ipset: line 1: unknown command 'swap'"),
])
def test_errors_name_the_line(text, message):
    with pytest.raises(InputError) as err:
        IpsetStore.parse(text, source="ipset")
    assert str(err.value) == message


def test_bitmap_port_takes_only_tcp_and_udp_ports():
    """The kernel's bitmap:port reads TCP/UDP ports only; an ICMP echo request (type 8 as
    port 8 << 8 = 2048, as hash:ip,port stores it) or an SCTP port never matches."""
    store = IpsetStore.parse("create b bitmap:port range 0-65535\nadd b 2048\nadd b 80\n")
    assert store.match_packet("b", ["dst"], pkt(proto="udp", dport=80))
    assert not store.match_packet("b", ["dst"], pkt(proto="icmp", sport=None, dport=None,
                                                    icmp_type=8, icmp_code=0))
    assert not store.match_packet("b", ["dst"], pkt(proto="sctp", dport=80))


NETMASKED = """create a hash:ip family inet hashsize 1024 maxelem 65536 netmask 24 bucketsize 12 initval 0x2b5ebee3
add a 10.0.0.7
add a 10.0.4.0/23
create b hash:ip,port family inet hashsize 1024 maxelem 65536 bucketsize 12 initval 0xd1fa01fb netmask 24
add b 10.0.0.7,tcp:80
create e bitmap:ip range 10.0.0.0-10.0.255.255 netmask 24
add e 10.0.3.9
create f hash:ip family inet6 hashsize 1024 maxelem 65536 netmask 64 bucketsize 12 initval 0xa45fe3b4
add f fd00::1:2
create h hash:ip family inet hashsize 1024 maxelem 65536 bitmask 255.0.255.0 bucketsize 12 initval 0xe8666ea6
add h 10.1.2.3
"""

# (set, test entry, member?) as `ipset test` answered in a namespace for NETMASKED
NETMASK_CASES = [
    ("a", "10.0.0.200", True), ("a", "10.0.2.1", False), ("a", "10.0.5.77", True),
    ("b", "10.0.0.9,tcp:80", True), ("b", "10.0.1.7,tcp:80", False), ("b", "10.0.0.9,tcp:81", False),
    ("e", "10.0.3.200", True), ("e", "10.0.4.1", False),
    ("f", "fd00::ffff", True), ("f", "fd00:0:0:1::1", False),
    ("h", "10.9.2.9", True), ("h", "10.1.3.3", False),
]


def test_netmask_and_bitmask_mask_the_address_where_the_kernel_does():
    """hash:ip, hash:ip,port and bitmap:ip with `netmask N` (hash types: `bitmask A` too)
    store networks: an address is a member when its masked address is."""
    store = IpsetStore.parse(NETMASKED)
    for name, entry, member in NETMASK_CASES:
        assert store.test(name, entry) is member, (name, entry)
    assert store.match_packet("b", ["src", "dst"], Packet(ip("10.0.0.99"), ip("1.1.1.1"), "tcp", 5, 80))
    assert not store.match_packet("a", ["dst"], Packet(ip("10.0.0.1"), ip("10.0.3.1"), "tcp", 5, 80))
    assert IpsetStore.parse(NETMASKED).save() == NETMASKED


@pytest.mark.parametrize("text, message", [
    ("create n hash:net netmask 24\n", "hash:net takes no netmask"),
    ("create n hash:ip netmask 33\n", "netmask must be 1-32"),
    ("create n bitmap:ip range 10.0.0.0/16 bitmask 255.255.0.0\n", "bitmap:ip takes no bitmask"),
])
def test_netmask_errors(text, message):
    with pytest.raises(InputError, match=message):
        IpsetStore.parse(text)


@pytest.mark.netns
def test_netmask_membership_agrees_with_the_kernel():
    import secrets
    import subprocess
    from conftest import have, is_root
    if not (is_root() and have("ip") and have("ipset")):
        pytest.skip("needs root, iproute2 and ipset")
    name = f"pntest-set-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ipset", "restore"], input=NETMASKED,
                       text=True, check=True)
        store = IpsetStore.parse(NETMASKED)
        for set_name, entry, _ in NETMASK_CASES:
            kernel = subprocess.run(["ip", "netns", "exec", name, "ipset", "test", set_name, entry],
                                    capture_output=True).returncode == 0
            assert store.test(set_name, entry) is kernel, (set_name, entry)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
