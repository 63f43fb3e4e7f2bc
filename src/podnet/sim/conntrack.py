"""Connection tracking for the walk: entries, directions and NAT bindings.

An entry holds the original tuple and the reply tuple the kernel expects back.
DNAT changes the reply's source, SNAT the reply's destination. A packet that
matches an entry in the ORIGINAL direction gets the same translations; one that
matches in the REPLY direction gets them undone: the destination (un-SNAT) at
PREROUTING/OUTPUT, the source (un-DNAT) at POSTROUTING/INPUT, as the kernel's
nf_nat hooks do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..linux.netfilter import ConnView, Packet
from ..linux.state import ConntrackEntry, IPAddress

Tuple = tuple  # (proto, src, sport, dst, dport)


def tuple_of(pkt: Packet) -> Tuple:
    return (pkt.proto, pkt.src, pkt.sport, pkt.dst, pkt.dport)


UDP_STREAM_AFTER = 2.0             # nf_conntrack_udp_packet: a stream when still active after 2 s


@dataclass(slots=True)
class Conn:
    orig: Tuple
    reply: Tuple                    # (proto, src, sport, dst, dport) of the expected reply
    mark: int = 0
    confirmed: bool = False
    seen_reply: bool = False
    notrack: bool = False
    note: str = ""                  # who created it (e.g. "IPVS")
    assured: bool = False           # IPS_ASSURED
    tcp_state: str = ""             # TCP_CONNTRACK_* as conntrack -L names it (SYN_SENT, ...)
    stream_ts: float = float("-inf")    # UDP: when the flow counts as a stream (ct->proto.udp)

    @property
    def dnat(self) -> bool:
        return (self.reply[1], self.reply[2]) != (self.orig[3], self.orig[4])

    @property
    def snat(self) -> bool:
        return (self.reply[3], self.reply[4]) != (self.orig[1], self.orig[2])

    def packet(self, pkt: Packet, direction: str, now: float) -> None:
        """The protocol's packet handler, for what conntrack -L shows: the TCP state and
        IPS_ASSURED. Then nf_conntrack_in marks a reply's entry SEEN_REPLY."""
        proto = self.orig[0]
        if proto == "tcp":
            old, new = self.tcp_state, _tcp_next(self.tcp_state, pkt.tcp_flags, direction)
            self.tcp_state = new
            # nf_conntrack_tcp_packet: a valid ACK in ESTABLISHED after SYN_RECV (or an answer
            # to a picked-up connection), once a reply was seen
            if self.seen_reply and old in ("SYN_RECV", "ESTABLISHED") and new == "ESTABLISHED":
                self.assured = True
        elif proto in ("udp", "udplite"):
            if not self.confirmed:
                self.stream_ts = now + UDP_STREAM_AFTER
            # nf_conntrack_udp_packet: traffic both ways and still active after 2 s
            elif self.seen_reply and now > self.stream_ts:
                self.assured = True
        # icmp and the rest never get ASSURED; sctp does at COOKIE_ACK, chunks the model lacks
        if direction == "REPLY":
            self.seen_reply = True

    def text(self) -> str:
        """As `conntrack -L` prints it (without the protocol number and timeout)."""
        p, s, sp, d, dp = self.orig
        _, rs, rsp, rd, rdp = self.reply
        return " ".join(w for w in (
            p, self.tcp_state, _tuple_text(s, d, sp, dp),
            "" if self.seen_reply else "[UNREPLIED]", _tuple_text(rs, rd, rsp, rdp),
            "[ASSURED]" if self.assured else "", f"mark={self.mark}") if w)


def _tuple_text(src, dst, sport, dport) -> str:
    ports = f" sport={sport} dport={dport}" if sport is not None else ""
    return f"src={src} dst={dst}{ports}"


def _tcp_next(state: str, flags: frozenset, direction: str) -> str:
    """tcp_conntracks for the handshake (a SYN, its SYN/ACK, the ACK), an ACK starting an
    entry (nf_conntrack_tcp_loose picks the connection up as ESTABLISHED) and RST."""
    if "RST" in flags:
        return "CLOSE"
    if "SYN" in flags:
        if "ACK" not in flags and direction == "ORIGINAL" and state in ("", "SYN_SENT", "CLOSE"):
            return "SYN_SENT"
        if "ACK" in flags and direction == "REPLY" and state in ("SYN_SENT", "SYN_RECV"):
            return "SYN_RECV"
        return state
    if "ACK" in flags and (state == "" or state == "SYN_RECV" and direction == "ORIGINAL"):
        return "ESTABLISHED"
    return state


@dataclass(slots=True)
class Tracked:
    """A packet's conntrack view at some point of the walk."""
    conn: Optional[Conn]
    direction: str                  # ORIGINAL | REPLY
    new: bool

    def view(self) -> ConnView:
        if self.conn is None or self.conn.notrack:
            return ConnView(state="UNTRACKED" if self.conn is not None else "INVALID")
        c = self.conn
        status = set()
        if c.dnat:
            status.add("DNAT")
        if c.snat:
            status.add("SNAT")
        if c.confirmed:
            status.add("CONFIRMED")
        if c.seen_reply:
            status.add("SEEN_REPLY")
        if c.assured:
            status.add("ASSURED")
        # resolve_normal_ct: the original direction is NEW until a reply was seen
        state = "NEW" if self.new or (self.direction == "ORIGINAL" and not c.seen_reply) \
            else "ESTABLISHED"
        p, s, sp, d, dp = c.orig
        return ConnView(state=state, status=status, direction=self.direction, orig_src=s,
                        orig_dst=d, orig_sport=sp, orig_dport=dp, mark=c.mark)


@dataclass
class ConntrackTable:
    """One namespace's table (conntrack zones are per namespace)."""
    by_tuple: dict = field(default_factory=dict)   # tuple -> (Conn, direction)
    clock: Callable[[], float] = lambda: 0.0        # the walk's time (Runtime.now)

    @classmethod
    def from_entries(cls, entries: list[ConntrackEntry]) -> "ConntrackTable":
        table = cls()
        for e in entries:
            conn = Conn((e.proto, e.orig_src, e.orig_sport, e.orig_dst, e.orig_dport),
                        (e.proto, e.reply_src, e.reply_sport, e.reply_dst, e.reply_dport),
                        mark=e.mark, confirmed=True, seen_reply="SEEN_REPLY" in e.status
                        or "ASSURED" in e.status, assured="ASSURED" in e.status,
                        tcp_state=e.state if e.proto == "tcp" else "")
            table.add(conn)
        return table

    def add(self, conn: Conn) -> None:
        self.by_tuple[conn.orig] = (conn, "ORIGINAL")
        self.by_tuple[conn.reply] = (conn, "REPLY")

    def lookup(self, pkt: Packet) -> Optional[tuple[Conn, str]]:
        return self.by_tuple.get(tuple_of(pkt))

    def track(self, pkt: Packet) -> Tracked:
        """nf_conntrack_in: find the packet's entry or start a new (unconfirmed) one."""
        hit = self.lookup(pkt)
        if hit is not None:
            conn, direction = hit
            conn.packet(pkt, direction, self.clock())
            return Tracked(conn, direction, new=not conn.confirmed)
        t = tuple_of(pkt)
        conn = Conn(t, (t[0], t[3], t[4], t[1], t[2]))
        conn.packet(pkt, "ORIGINAL", self.clock())
        return Tracked(conn, "ORIGINAL", new=True)

    def confirm(self, tracked: Tracked, pkt: Optional[Packet] = None) -> Optional[str]:
        """nf_conntrack_confirm. A new connection whose reply tuple another entry already
        holds (the same packet seen again after NAT, e.g. after crossing a veth pair inside
        the namespace, which resets the skb's conntrack) gets nf_nat's null binding: a
        free source port (get_unique_tuple), so both entries can live; the packet leaves
        from that port. Returns what changed, for the trace."""
        conn = tracked.conn
        if conn is None or conn.notrack or conn.confirmed:
            return None
        note = None
        taken = self.by_tuple.get(conn.reply)
        if taken is not None and taken[0] is not conn and pkt is not None and not conn.snat \
                and conn.orig[0] in ("tcp", "udp", "sctp") and pkt.sport == conn.reply[4]:
            p, rs, rsp, rd, port = conn.reply
            new = port
            while (p, rs, rsp, rd, new) in self.by_tuple:
                new = new + 1 if new < 65535 else 1024
            conn.reply = (p, rs, rsp, rd, new)
            pkt.sport = new
            note = (f"implicit SNAT (nf_nat null binding): the reply tuple is taken by another "
                    f"connection ({taken[0].orig[1]}:{taken[0].orig[2]} -> {taken[0].orig[3]}:{taken[0].orig[4]}), "
                    f"source port {port} -> {new}")
        conn.confirmed = True
        self.add(conn)
        return note

    def entries(self) -> list[Conn]:
        seen, out = set(), []
        for conn, _ in self.by_tuple.values():
            if id(conn) not in seen:
                seen.add(id(conn))
                out.append(conn)
        return out


def bind_dnat(conn: Conn, addr: IPAddress, port: Optional[int]) -> None:
    """Record a destination translation: the reply will come from addr:port."""
    p, _, rsp, rd, rdp = conn.reply
    conn.reply = (p, addr, port if port is not None else rsp, rd, rdp)


def bind_snat(conn: Conn, addr: IPAddress, port: Optional[int]) -> None:
    """Record a source translation: the reply will go to addr:port."""
    p, rs, rsp, _, rdp = conn.reply
    conn.reply = (p, rs, rsp, addr, port if port is not None else rdp)


def apply_dst_manip(tracked: Tracked, pkt: Packet) -> Optional[str]:
    """PREROUTING/OUTPUT for a tracked packet: DNAT (original) or un-SNAT (reply)."""
    conn = tracked.conn
    if conn is None or tracked.new:
        return None
    if tracked.direction == "ORIGINAL" and conn.dnat:
        new_dst, new_port = conn.reply[1], conn.reply[2]
    elif tracked.direction == "REPLY" and conn.snat:
        new_dst, new_port = conn.orig[1], conn.orig[2]
    else:
        return None
    if (pkt.dst, pkt.dport) == (new_dst, new_port):
        return None
    old = _ep(pkt.dst, pkt.dport)
    pkt.dst, pkt.dport = new_dst, new_port
    return f"{'DNAT' if tracked.direction == 'ORIGINAL' else 'un-SNAT'} ({conn.note or 'conntrack'}): dst {old} -> " \
           f"{_ep(new_dst, new_port)}"


def apply_src_manip(tracked: Tracked, pkt: Packet) -> Optional[str]:
    """POSTROUTING/INPUT for a tracked packet: SNAT (original) or un-DNAT (reply)."""
    conn = tracked.conn
    if conn is None or tracked.new:
        return None
    if tracked.direction == "ORIGINAL" and conn.snat:
        new_src, new_port = conn.reply[3], conn.reply[4]
    elif tracked.direction == "REPLY" and conn.dnat:
        new_src, new_port = conn.orig[3], conn.orig[4]
    else:
        return None
    if (pkt.src, pkt.sport) == (new_src, new_port):
        return None
    old = _ep(pkt.src, pkt.sport)
    pkt.src, pkt.sport = new_src, new_port
    return f"{'SNAT' if tracked.direction == 'ORIGINAL' else 'un-DNAT'} ({conn.note or 'conntrack'}): src {old} -> " \
           f"{_ep(new_src, new_port)}"


def _ep(addr, port) -> str:
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"
