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
