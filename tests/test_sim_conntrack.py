"""Conntrack in the walk: entries, NAT bindings and the clash of a packet seen twice."""

import ipaddress

from podnet.linux.netfilter import Packet
from podnet.sim.conntrack import ConntrackTable, bind_dnat, bind_snat

ip = ipaddress.ip_address


def test_a_packet_seen_again_after_nat_gets_a_free_source_port():
    """A node's masqueraded connection to a ClusterIP crosses a veth pair inside the node
    (weave's bridge -> datapath): the skb lost its entry, so conntrack sees the NATed tuple
    as a new connection whose reply tuple the first one holds. nf_nat's null binding gives
    it another source port instead of clobbering the first entry."""
    table = ConntrackTable()
    first = Packet(ip("172.18.0.3"), ip("10.96.0.20"), "tcp", 40000, 80)
    t1 = table.track(first)
    bind_dnat(t1.conn, ip("10.44.0.2"), 80)
    bind_snat(t1.conn, ip("10.40.0.0"), 40000)
    assert table.confirm(t1, first) is None
    again = Packet(ip("10.40.0.0"), ip("10.44.0.2"), "tcp", 40000, 80)
    t2 = table.track(again)
    assert t2.new and t2.conn is not t1.conn
    note = table.confirm(t2, again)
    assert "implicit SNAT" in note and again.sport == 40001
    # the answer to each finds its own entry
    assert table.lookup(Packet(ip("10.44.0.2"), ip("10.40.0.0"), "tcp", 80, 40001))[0] is t2.conn
    assert table.lookup(Packet(ip("10.44.0.2"), ip("10.40.0.0"), "tcp", 80, 40000))[0] is t1.conn


def test_snapshot_entries_without_unreplied_have_seen_a_reply():
    """`conntrack -L` flags only [UNREPLIED] entries; a replied UDP flow is often not
    [ASSURED] either. The original direction of an unreplied entry is still NEW (as
    resolve_normal_ct decides), of a replied one ESTABLISHED."""
    from podnet.snapshot.load import parse_conntrack
    entries = parse_conntrack(
        "udp      17 28 src=10.1.0.2 dst=10.96.0.10 sport=43615 dport=53 src=10.2.0.12 "
        "dst=10.1.0.2 sport=53 dport=43615 mark=0 use=1\n"
        "udp      17 29 src=10.1.0.2 dst=10.96.0.10 sport=43616 dport=53 [UNREPLIED] "
        "src=10.2.0.12 dst=10.1.0.2 sport=53 dport=43616 mark=0 use=1\n")
    table = ConntrackTable.from_entries(entries)
    replied = table.track(Packet(ip("10.1.0.2"), ip("10.96.0.10"), "udp", 43615, 53))
    unreplied = table.track(Packet(ip("10.1.0.2"), ip("10.96.0.10"), "udp", 43616, 53))
    assert not replied.new and not unreplied.new             # both are confirmed entries
    assert replied.view().state == "ESTABLISHED" and "SEEN_REPLY" in replied.view().status
    assert unreplied.view().state == "NEW" and "SEEN_REPLY" not in unreplied.view().status
    answer = table.track(Packet(ip("10.2.0.12"), ip("10.1.0.2"), "udp", 53, 43616))
    assert answer.view().state == "ESTABLISHED" and answer.direction == "REPLY"


def _tcp(src, dst, sport, dport, *flags):
    return Packet(ip(src), ip(dst), "tcp", sport, dport, tcp_flags=frozenset(flags))


def test_tcp_is_assured_once_the_handshake_completes():
    """nf_conntrack_tcp_packet sets ASSURED on the ACK that takes SYN_RECV to ESTABLISHED
    (a reply seen); conntrack -L shows [UNREPLIED] between the tuples until a reply."""
    table = ConntrackTable()
    syn = table.track(_tcp("10.0.0.1", "10.0.0.2", 40000, 80, "SYN"))
    table.confirm(syn)
    assert syn.conn.text() == ("tcp SYN_SENT src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 "
                               "[UNREPLIED] src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000 mark=0")
    table.track(_tcp("10.0.0.2", "10.0.0.1", 80, 40000, "SYN", "ACK"))
    assert syn.conn.text() == ("tcp SYN_RECV src=10.0.0.1 dst=10.0.0.2 sport=40000 dport=80 "
                               "src=10.0.0.2 dst=10.0.0.1 sport=80 dport=40000 mark=0")   # replied, not assured
    ack = table.track(_tcp("10.0.0.1", "10.0.0.2", 40000, 80, "ACK"))
    assert ack.conn.text().endswith("sport=80 dport=40000 [ASSURED] mark=0")
    assert ack.conn.tcp_state == "ESTABLISHED" and "ASSURED" in ack.view().status


def test_udp_is_assured_only_when_still_active_two_seconds_after_a_reply():
    """nf_conntrack_udp_packet: a stream (ASSURED) needs a reply seen and a packet more than
    2 s after the first; a query and its answer (DNS) stay neither UNREPLIED nor ASSURED."""
    clock = [100.0]
    table = ConntrackTable(clock=lambda: clock[0])
    query = Packet(ip("10.0.0.1"), ip("10.96.0.10"), "udp", 5353, 53)
    first = table.track(query)
    table.confirm(first)
    table.track(Packet(ip("10.96.0.10"), ip("10.0.0.1"), "udp", 53, 5353))
    conn = first.conn
    assert "[UNREPLIED]" not in conn.text() and "[ASSURED]" not in conn.text()
    clock[0] = 101.5
    table.track(query)                                 # both ways, but within 2 s
    assert not conn.assured
    clock[0] = 102.5
    table.track(query)
    assert conn.assured and conn.text().endswith("[ASSURED] mark=0")


def test_icmp_is_never_assured_and_prints_no_ports():
    table = ConntrackTable()
    ping = Packet(ip("10.0.0.1"), ip("10.0.0.2"), "icmp", icmp_type=8)
    t = table.track(ping)
    table.confirm(t)
    table.track(Packet(ip("10.0.0.2"), ip("10.0.0.1"), "icmp", icmp_type=0))
    table.track(ping)
    assert t.conn.text() == "icmp src=10.0.0.1 dst=10.0.0.2 src=10.0.0.2 dst=10.0.0.1 mark=0"
