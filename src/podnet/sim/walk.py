"""The life of a packet: one walk through the dataplane state, as the kernel would.

Local output:   socket (eBPF connect hook) -> routing -> conntrack -> OUTPUT hooks
                -> POSTROUTING hooks -> device
Reception:      device -> (bridge: FDB, br_netfilter) -> rp_filter -> conntrack
                -> PREROUTING hooks -> routing -> INPUT hooks -> IPVS -> socket
                                                 \\-> FORWARD hooks -> POSTROUTING -> device
Devices:        veth (into the peer namespace), bridge (FDB lookup, learning,
                hairpin), L2 segment (the switch between nodes), VXLAN (FDB ->
                remote VTEP, UDP encapsulation, decapsulation by VNI), IPIP,
                loopback.

Every decision becomes a `Hop` (where, which stage, what matched, what
changed). Random choices go through `runtime.choose`, so `podnet.sim.branches`
can enumerate them. A walk ends when the packet reaches a socket, is dropped,
or is rejected; `Walker.reply()` then walks the answer back through the same
conntrack entries.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from ..linux.netfilter import PRIO_IPVS_LOCAL_OUT, NatAction, Packet, Step
from ..linux.routing import RouteResult, tables_of
from ..linux.state import DataplaneState, IPAddress, Link, Listener, Netns
from .conntrack import (Tracked, apply_dst_manip, apply_src_manip, bind_dnat, bind_snat,
                        tuple_of)
from . import bpf_lb
from . import ipvs as ipvs_sched
from .hooks import nat_destination, run_hook
from .runtime import Runtime

VXLAN_OVERHEAD = 50
IPIP_OVERHEAD = 20
MAX_HOPS = 400
BROADCAST_MAC = "ff:ff:ff:ff:ff:ff"


@dataclass(slots=True)
class Hop:
    ns: str
    stage: str                      # e.g. "route", "nat/PREROUTING", "bridge", "vxlan", "deliver"
    text: str
    iface: Optional[str] = None
    node: Optional[str] = None
    steps: list[Step] = field(default_factory=list)
    header: Optional[tuple] = None  # the packet's (src, sport, dst, dport, proto, mark) here
    verdict: str = ""               # netfilter hooks: ACCEPT, DROP or REJECT

    @property
    def packet(self) -> str:
        # formatted when shown, not during the walk (addresses' str() is slow)
        return _header_text(*self.header) if self.header else ""

    def as_dict(self) -> dict:
        return {"netns": self.ns, "node": self.node, "iface": self.iface, "stage": self.stage,
                "text": self.text, "packet": self.packet, "verdict": self.verdict or None,
                "rules": [{"engine": s.engine, "table": s.table, "chain": s.chain, "index": s.index,
                           "rule": s.text, "action": s.action, "note": s.note} for s in self.steps]}


@dataclass(slots=True)
class Frame:
    """A packet on the wire, possibly carrying an encapsulated one."""
    pkt: Packet
    inner: Optional["Frame"] = None
    vni: Optional[int] = None
    inner_dst_mac: Optional[str] = None


@dataclass(slots=True)
class Outcome:
    result: str                     # delivered | dropped | rejected | answered
    ns: str
    reason: str
    packet: Packet
    listener: Optional[Listener] = None
    node: Optional[str] = None

    @property
    def delivered(self) -> bool:
        return self.result in ("delivered", "answered")


class _Done(Exception):
    def __init__(self, outcome: Outcome):
        self.outcome = outcome


@functools.lru_cache(maxsize=65536)
def ep(addr, port) -> str:
    # cached: a walk prints the same few endpoints in every hop, and ipaddress's
    # str() is a large part of a trace's time
    if port is None:
        return str(addr)
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def summary(pkt: Packet) -> str:
    return _header_text(*header_of(pkt))


def header_of(pkt: Packet) -> tuple:
    return (pkt.src, pkt.sport, pkt.dst, pkt.dport, pkt.proto, pkt.mark)


HEADER_FIELDS = ("src", "sport", "dst", "dport", "proto", "mark")


def header_changes(before: Optional[tuple], after: Optional[tuple]) -> dict:
    """{field: [old, new]} for the header fields that differ (addresses as text)."""
    if not before or not after:
        return {}
    return {name: [_field_text(old), _field_text(new)]
            for name, old, new in zip(HEADER_FIELDS, before, after) if old != new}


def _field_text(value):
    return value if value is None or isinstance(value, (int, str)) else str(value)


def _header_text(src, sport, dst, dport, proto, mark) -> str:
    s = f"{ep(src, sport)} -> {ep(dst, dport)} {proto}"
    if mark:
        s += f" mark {mark:#x}"
    return s


class Walker:
    def __init__(self, state: DataplaneState, runtime: Optional[Runtime] = None):
        self.state = state
        self.rt = runtime or Runtime(state)
        self.hops: list[Hop] = []
        self.origin: Optional[tuple[str, Packet]] = None
        # connections a userspace proxy accepted (netns, packet as it arrived): their
        # answers are relayed back to the original client
        self.relays: list[tuple[str, Packet]] = []

    # ------------------------------------------------------------ entry points
    def send(self, ns_name: str, pkt: Packet) -> Outcome:
        """A process in `ns_name` sends `pkt` (src may be unspecified: 0.0.0.0 / ::)."""
        ns = self.state.netns(ns_name)
        try:
            self._local_out(ns, Frame(pkt), from_socket=True)
        except _Done as done:
            return done.outcome
        raise AssertionError("walk ended without an outcome")  # pragma: no cover

    def inject(self, ns_name: str, iface: str, pkt: Packet, dst_mac: Optional[str] = None) -> Outcome:
        """`pkt` arrives on `iface` of `ns_name` from the wire."""
        ns = self.state.netns(ns_name)
        link = ns.links[iface]
        try:
            self._receive(ns, link, Frame(pkt), dst_mac or link.mac)
        except _Done as done:
            return done.outcome
        raise AssertionError("walk ended without an outcome")  # pragma: no cover

    def reply(self, outcome: Outcome) -> Outcome:
        """The delivered packet's answer, sent back from the socket that got it."""
        return self.answer(outcome.ns, outcome.packet)

    def answer(self, ns_name: str, pkt: Packet) -> Outcome:
        back = Packet(pkt.dst, pkt.src, pkt.proto, pkt.dport, pkt.sport,
                      icmp_type=0 if pkt.proto == "icmp" else None,
                      tcp_flags=frozenset({"SYN", "ACK"}) if pkt.proto == "tcp" else frozenset())
        return self.send(ns_name, back)

    # ------------------------------------------------------------ recording
    def hop(self, ns: Netns, stage: str, text: str, iface: Optional[str] = None,
            steps: Optional[list[Step]] = None, pkt: Optional[Packet] = None, verdict: str = "") -> None:
        if len(self.hops) >= MAX_HOPS:
            self._end("dropped", ns, "the walk exceeded its hop budget (a forwarding loop?)", pkt)
        self.hops.append(Hop(ns.name, stage, text, iface, ns.node, list(steps) if steps else [],
                             header_of(pkt) if pkt is not None else None, verdict))

    def _end(self, result: str, ns: Netns, reason: str, pkt: Optional[Packet],
             listener: Optional[Listener] = None):
        self.hops.append(Hop(ns.name, result, reason, None, ns.node, [], header_of(pkt) if pkt else None))
        raise _Done(Outcome(result, ns.name, reason, pkt.copy() if pkt else None, listener, ns.node))

    def _drop(self, ns: Netns, reason: str, pkt: Packet):
        self._end("dropped", ns, reason, pkt)

    # ------------------------------------------------------------ local output
    def _local_out(self, ns: Netns, frame: Frame, from_socket: bool = False) -> None:
        pkt = frame.pkt
        if from_socket:
            self._socket_lb_connect(ns, pkt)
        route = self._route(ns, pkt, pkt.dst)
        self.hop(ns, "route", route.text(), route.dev, pkt=pkt)
        if not route.ok:
            self._drop(ns, f"no route to {pkt.dst}: {route.error}", pkt)
        if pkt.src.is_unspecified:
            if route.src is None:
                self._drop(ns, "no source address for the route (the device has no address)", pkt)
            pkt.src = route.src
        if from_socket:
            if self.origin is None:
                self.origin = (ns.name, pkt.copy())
            self.rt.client_sockets[(ns.name, pkt.proto, pkt.src, pkt.sport)] = (pkt.dst, pkt.dport)
        tracked = self.rt.ct(ns).track(pkt)
        self._conntrack_hop(ns, tracked, pkt, "OUTPUT")
        note = apply_dst_manip(tracked, pkt)
        if note:
            self.hop(ns, "conntrack", note, pkt=pkt)
        before = (pkt.dst, pkt.dport)
        if ns.ipvs:
            # IPVS takes the node's own connections at LOCAL_OUT, between the nat and the
            # filter tables; its real server is routed to from there
            reroute = self._hook(ns, "OUTPUT", frame, tracked, out_iface=route.dev,
                                 priorities=(None, PRIO_IPVS_LOCAL_OUT))
            vs = self._ipvs_schedule(ns, frame, tracked, "LOCAL_OUT")
            if vs is not None:
                route = self._route(ns, pkt, pkt.dst, pkt.src)
                self.hop(ns, "route", "re-route after IPVS: " + route.text(), route.dev, pkt=pkt)
                if not route.ok:
                    self._drop(ns, f"no route to real server {pkt.dst}: {route.error}", pkt)
                before, note = (pkt.dst, pkt.dport), ""
            reroute |= self._hook(ns, "OUTPUT", frame, tracked, out_iface=route.dev,
                                  priorities=(PRIO_IPVS_LOCAL_OUT, None), ipvs=vs)
        else:
            reroute = self._hook(ns, "OUTPUT", frame, tracked, out_iface=route.dev)
        if (pkt.dst, pkt.dport) != before or note or reroute:
            # ip_route_me_harder: after a DNAT, or when a route chain (mangle) changed the mark
            # that policy routing may look at
            why = "DNAT" if (pkt.dst, pkt.dport) != before or note else f"mangle set mark {pkt.mark:#x}"
            route = self._route(ns, pkt, pkt.dst, pkt.src)
            self.hop(ns, "route", f"re-route after {why}: " + route.text(), route.dev, pkt=pkt)
            if not route.ok:
                self._drop(ns, f"no route to {pkt.dst}: {route.error}", pkt)
        self._output(ns, frame, route, tracked, in_link=None)

    def _route(self, ns: Netns, pkt: Packet, dst: IPAddress, src: Optional[IPAddress] = None,
               iif: Optional[str] = None) -> RouteResult:
        """The routing decision for `pkt`. A multipath route sends each flow down the nexthop
        its hash picks (fib_select_multipath). The hash is keyed by a per-boot random seed, so
        which nexthop a flow takes is a branch, weighted as the kernel weighs the nexthops.
        What makes a flow is fib_multipath_hash_policy's: the addresses (0, the default) or
        the 5-tuple; the same flow keeps its nexthop for the rest of the walk."""
        routing = tables_of(ns)
        route = routing.lookup(dst, src, iif, None, pkt.mark)
        if not route.ok or route.route is None or len(route.route.nexthops) < 2:
            return route
        paths = route.route.nexthops
        flow = (ns.name, route.table, route.route.dst, pkt.src, dst)
        if ns.sysctl("net.ipv4.fib_multipath_hash_policy", "0") != "0":
            flow += (pkt.proto, pkt.sport, pkt.dport)
        index = self.rt.ecmp.get(flow)
        if index is None:
            total = sum(nh.weight for nh in paths)
            index = self.rt.choose(f"ecmp:{ns.name}:{route.route.dst}",
                                   [(f"nexthop via {nh.via or '-'} dev {nh.dev}", nh.weight / total) for nh in paths])
            self.rt.ecmp[flow] = index
        return routing.on_path(route, index)

    def _socket_lb_connect(self, ns: Netns, pkt: Packet) -> None:
        """eBPF socket load-balancing: translate the service address at connect()/sendmsg()."""
        lb, owner = self._socket_lb(ns)
        if lb is None or pkt.dport is None or pkt.proto not in ("tcp", "udp", "sctp"):
            return
        sel = bpf_lb.sock_xlate_fwd(lb, pkt.dst, pkt.dport, pkt.proto, ns.name == owner, self.rt.choose)
        if sel is None:
            return
        v = pkt.dst.version
        hook = f"cgroup/{'sendmsg' if pkt.proto == 'udp' else 'connect'}{v if v == 6 else 4}"
        svc = sel.svc
        name = lb.names.get(svc.rev_nat_index, "")
        where = (f"{hook} (eBPF socket LB on the root cgroup of {owner}): cilium_lb{v}_services_v2 "
                 f"{bpf_lb.key_text(sel.key)} -> {svc.count} backend{'s' if svc.count != 1 else ''} "
                 f"[{bpf_lb.flags_text(svc)}], service #{svc.rev_nat_index}" + (f" {name}" if name else "")
                 + (f" ({sel.how})" if sel.how else ""))
        if sel.error.startswith("EPERM"):
            self.hop(ns, "socket-lb", f"{where}: {sel.error}", pkt=pkt)
            return
        if sel.error:
            self.hop(ns, "socket-lb", f"{where}: {sel.error}", pkt=pkt)
            self._end("rejected", ns, f"socket LB: {name or ep(pkt.dst, pkt.dport)} has no backends: "
                      f"{hook.split('/')[1]}() fails with {sel.error.split()[0]}", pkt)
        b = sel.backend
        self.rt.sock_lb_reverse[(ns.name, pkt.proto, pkt.sport, b.address, b.port)] = \
            (pkt.dst, pkt.dport, pkt.proto, svc.rev_nat_index)
        front = ep(pkt.dst, pkt.dport)
        pkt.dst, pkt.dport = b.address, b.port
        self.hop(ns, "socket-lb",
                 f"{where}; slot {sel.slot} -> backend #{sel.backend_id} {bpf_lb.backend_text(b)} "
                 f"(cilium_lb{v}_backends_v3): the socket is connected to {ep(b.address, b.port)} instead of "
                 f"{front}, so the first packet already carries the backend's address (no DNAT on the way)",
                 pkt=pkt)

    def _socket_lb_reverse(self, ns: Netns, pkt: Packet):
        """recvmsg/getpeername: the peer a socket translated at connect() shows to its application."""
        rev = self.rt.sock_lb_reverse.get((ns.name, pkt.proto, pkt.dport, pkt.src, pkt.sport))
        if rev is None:
            return None
        lb, owner = self._socket_lb(ns)
        hook = f"cgroup/{'recvmsg' if pkt.proto == 'udp' else 'getpeername'}{6 if pkt.src.version == 6 else 4}"
        front = bpf_lb.sock_xlate_rev(lb, rev, ns.name == owner) if lb is not None else None
        if front is None:
            self.hop(ns, "socket-lb", f"{hook}: the reverse entry of service #{rev[3]} is stale: the "
                     f"application sees the backend {ep(pkt.src, pkt.sport)}", pkt=pkt)
            return None
        self.hop(ns, "socket-lb", f"{hook} (eBPF socket LB): cilium_lb{pkt.src.version}_reverse_sk entry of "
                 f"this socket: the backend {ep(pkt.src, pkt.sport)} is shown to the application as "
                 f"{ep(*front)}", pkt=pkt)
        return front

    def _socket_lb(self, ns: Netns):
        if ns.socket_lb is not None:
            return ns.socket_lb, ns.name
        if ns.node and ns.node in self.state.namespaces:
            node_ns = self.state.namespaces[ns.node]
            if node_ns.socket_lb is not None:
                return node_ns.socket_lb, node_ns.name
        return None, None

    # ------------------------------------------------------------ output path
    def _output(self, ns: Netns, frame: Frame, route: RouteResult, tracked: Tracked,
                in_link: Optional[Link]) -> None:
        pkt = frame.pkt
        out_dev = route.dev
        nexthop = route.nexthop
        self._hook(ns, "POSTROUTING", frame, tracked, in_iface=in_link.name if in_link else None,
                   out_iface=out_dev, route=route)
        for note in (apply_src_manip(tracked, pkt), self.rt.ct(ns).confirm(tracked, pkt)):
            if note:
                self.hop(ns, "conntrack", note, out_dev, pkt=pkt)
        if route.type == "local":
            self.hop(ns, "xmit", f"local destination: looped back via lo", "lo", pkt=pkt)
            self._local_in(ns, ns.links.get("lo") or Link("lo", "loopback"), frame, tracked)
            return
        link = ns.links.get(out_dev)
        if link is None:
            self._drop(ns, f"route points to missing device {out_dev}", pkt)
        self._xmit(ns, link, frame, nexthop, route)

    def _xmit(self, ns: Netns, link: Link, frame: Frame, nexthop: IPAddress,
              route: Optional[RouteResult] = None) -> None:
        pkt = frame.pkt
        if not link.up:
            self._drop(ns, f"{link.name} is down", pkt)
        if pkt.length > link.mtu:
            self._fit_mtu(ns, link, pkt, forwarded=False)     # forwarded packets were fitted in _ip_input
        if link.kind == "loopback":
            self._local_in(ns, link, frame, self.rt.ct(ns).track(pkt))
            return
        if link.kind == "dummy":
            self._drop(ns, f"{link.name} is a dummy device: packets routed out of it are discarded", pkt)
        if link.kind == "ipip":
            self._ipip_encap(ns, link, frame, nexthop)
            return
        if link.kind == "vxlan":
            mac = self._neighbour(ns, link, nexthop, pkt)
            self._vxlan_encap(ns, link, frame, mac)
            return
        mac = self._neighbour(ns, link, nexthop, pkt)
        self._l2_send(ns, link, frame, mac)

    def _fit_mtu(self, ns: Netns, link: Link, pkt: Packet, forwarded: bool) -> None:
        """A packet larger than the MTU of the device it leaves by. ip_forward drops one with
        DF set and sends ICMP fragmentation-needed back (path MTU discovery depends on it
        arriving). Locally, TCP sends segments that fit, a DF datagram fails with EMSGSIZE,
        and anything else is fragmented; the walk follows the first fragment."""
        mtu = link.mtu
        what = f"packet of {pkt.length} bytes exceeds the MTU {mtu} of {link.name}"
        if forwarded and pkt.df:
            self._drop(ns, f"{what} and has DF set: ICMP fragmentation needed (mtu {mtu}) is sent "
                           f"back to {pkt.src}", pkt)
        if not forwarded and pkt.proto == "tcp":
            mss = mtu - (40 if pkt.family == 4 else 60)
            note = f"{what}: TCP sends it as segments of at most {mtu} bytes (MSS {mss})"
        elif not forwarded and pkt.df:
            self._drop(ns, f"{what} and may not be fragmented (DF): the send fails with EMSGSIZE "
                           f"(\"message too long, mtu={mtu}\")", pkt)
        else:
            note = f"{what}: fragmented (DF clear); the walk follows the first fragment"
            pkt.df = False
        pkt.length = mtu
        self.hop(ns, "mtu", note, link.name, pkt=pkt)

    # ------------------------------------------------------------ L2
    def _neighbour(self, ns: Netns, link: Link, nexthop: IPAddress, pkt: Packet) -> str:
        if link.noarp:
            return link.mac or BROADCAST_MAC
        for n in ns.neighbours:
            if n.dev == link.name and n.ip == nexthop and not n.proxy and n.lladdr and n.state != "FAILED":
                self.hop(ns, "neigh", f"{n.ip} dev {n.dev} lladdr {n.lladdr} {n.state}", link.name, pkt=pkt)
                return n.lladdr
        # arp_solicit (arp_announce 0): the packet's source when it is ours, else the device's address
        tables = tables_of(ns)
        sender = pkt.src if pkt.src in tables.local_addrs else tables.select_source(link.name, nexthop)
        mac, who = self._arp(ns, link, nexthop, sender)
        if mac is None:
            self._drop(ns, f"no ARP reply for {nexthop} on {link.name} (Destination Host Unreachable)"
                       + (f": {who}" if who else ""), pkt)
        verb = "ARP" if nexthop.version == 4 else "ND"
        self.hop(ns, "neigh", f"{verb}: who-has {nexthop} on {link.name}? {nexthop} is-at {mac} ({who})",
                 link.name, pkt=pkt)
        return mac

    def _arp(self, ns: Netns, link: Link, target: IPAddress,
             sender: Optional[IPAddress] = None) -> tuple[Optional[str], str]:
        """Who answers an ARP request for `target` sent out of `link`: (MAC, who) of the first
        responder, or (None, why a kernel that would have answered did not). `sender`: the
        request's sender address, which the answering kernel validates as rp_filter does
        (arp_process routes the request as an input packet from it; ARP carries no mark)."""
        ignored = ""
        for rns, rlink in self._l2_receivers(ns, link):
            if (rns.name == ns.name and rlink.name == link.name) or rlink.noarp:
                continue            # an IFF_NOARP device neither asks nor answers
            for r in rns.arp_responders:
                if r.ip == target and r.dev == rlink.name:     # userspace: no kernel checks
                    return rlink.mac, f"{r.owner or 'an ARP responder'} on {rns.name} {rlink.name}"
            who = _kernel_arp_answer(rns, rlink, target)
            if who is None:
                continue
            refused = _rp_filter_refuses(rns, rlink.name, sender, target, 0) if sender is not None else ""
            if refused:
                ignored = ignored or f"{rns.name} {rlink.name} ignores the request from {sender}: {refused}"
                continue
            return rlink.mac, who
        return None, ignored

    def _l2_receivers(self, ns: Netns, link: Link, seen: Optional[set] = None) -> list[tuple[Netns, Link]]:
        """IP interfaces that hear a broadcast sent out of `link` (its L2 domain)."""
        seen = seen if seen is not None else set()
        key = (ns.name, link.name)
        if key in seen:
            return []
        seen.add(key)
        out: list[tuple[Netns, Link]] = []
        if link.kind == "veth":
            peer = self.state.veth_peer(ns, link)
            if peer:
                out += self._domain_of(*peer, seen)
        elif link.kind == "bridge":
            for port in ns.links.values():
                if port.master == link.name:
                    out += self._l2_receivers(ns, port, seen)
        elif link.segment:
            blocked = self.state.segments.get(link.segment)
            for mns, mlink in self.state.segment_members(link.segment):
                if (mns.name, mlink.name) == key or _blocked(blocked, ns.name, mns.name):
                    continue
                out += self._domain_of(mns, mlink, seen)
        elif link.kind == "vxlan" and link.vxlan is not None:
            for other in self.state.namespaces.values():
                for olink in other.links.values():
                    if olink.kind == "vxlan" and olink.vxlan and olink.vxlan.vni == link.vxlan.vni \
                            and other.name != ns.name:
                        out += self._domain_of(other, olink, seen)
        return out

    def _domain_of(self, ns: Netns, link: Link, seen: set) -> list[tuple[Netns, Link]]:
        """A frame arriving on `link`: heard by the link itself or, for a bridge port,
        by the bridge and everything behind its other ports."""
        if link.master:
            bridge = ns.links.get(link.master)
            out = [(ns, bridge)] if bridge else []
            seen.add((ns.name, link.name))
            for port in ns.links.values():
                if port.master == link.master and port.name != link.name:
                    out += self._l2_receivers(ns, port, seen)
            return out
        return [(ns, link)]

    def _l2_send(self, ns: Netns, link: Link, frame: Frame, dst_mac: str, bridged: bool = False) -> None:
        pkt = frame.pkt
        if link.kind != "bridge" and not bridged:     # a bridge forwards frames unchanged
            pkt.src_mac, pkt.dst_mac = link.mac, dst_mac
        if link.kind == "veth":
            peer = self.state.veth_peer(ns, link)
            if peer is None:
                self._drop(ns, f"veth {link.name} has no peer", pkt)
            pns, plink = peer
            if pns is not ns:
                pkt.mark = 0            # crossing namespaces scrubs the skb (skb_scrub_packet)
            self.hop(ns, "xmit", f"out {link.name} (veth) -> {plink.name} in {pns.name}", link.name, pkt=pkt)
            self._receive(pns, plink, frame, dst_mac)
            return
        if link.kind == "bridge":
            self._bridge_forward(ns, link, None, frame, dst_mac)
            return
        if link.kind == "vxlan":
            self._vxlan_encap(ns, link, frame, dst_mac)
            return
        if link.segment:
            segment = self.state.segments.get(link.segment)
            for mns, mlink in self.state.segment_members(link.segment):
                if mlink.mac == dst_mac and (mns.name, mlink.name) != (ns.name, link.name):
                    if _blocked(segment, ns.name, mns.name):
                        self._drop(ns, f"{ns.name} cannot reach {mns.name} on segment {link.segment} "
                                       "(no direct connectivity)", pkt)
                    self.hop(ns, "xmit", f"out {link.name} onto L2 segment {link.segment} -> "
                                         f"{mns.name} {mlink.name} ({dst_mac})", link.name, pkt=pkt)
                    pkt.mark = 0        # the wire carries no skb mark
                    self._receive(mns, mlink, frame, dst_mac)
                    return
                if mlink.master and (mns.name, mlink.name) != (ns.name, link.name):
                    bridge = mns.links.get(mlink.master)
                    if bridge and bridge.mac == dst_mac:
                        self.hop(ns, "xmit", f"out {link.name} onto L2 segment {link.segment} -> "
                                             f"{mns.name} {mlink.name}", link.name, pkt=pkt)
                        pkt.mark = 0
                        self._receive(mns, mlink, frame, dst_mac)
                        return
            self._drop(ns, f"no station with MAC {dst_mac} on segment {link.segment}", pkt)
        self._drop(ns, f"cannot transmit on {link.name} ({link.kind})", pkt)

    # ------------------------------------------------------------ bridge
    def _bridge_port_for(self, ns: Netns, bridge: Link, mac: str) -> tuple[Optional[Link], str]:
        for e in ns.fdb:
            if e.master == bridge.name and e.mac == mac:
                return ns.links.get(e.dev), f"fdb {e.mac} dev {e.dev} master {bridge.name}" + \
                    (" permanent" if e.permanent else "")
        learned = self.rt.fdb(ns, bridge.name).get(mac)
        if learned:
            return ns.links.get(learned), f"fdb {mac} dev {learned} master {bridge.name} (learned)"
        # unknown unicast: flooded; the port behind which the MAC lives takes it
        for port in ns.links.values():
            if port.master != bridge.name:
                continue
            if port.mac == mac:
                return port, f"{mac} is the port's own address"
            for rns, rlink in self._l2_receivers(ns, port, {(ns.name, bridge.name)}):
                if rlink.mac == mac:
                    return port, f"{mac} not in the FDB: flooded, answered behind {port.name}"
        return None, f"{mac} unknown on {bridge.name}"

    def _bridge_forward(self, ns: Netns, bridge: Link, in_port: Optional[Link], frame: Frame,
                        dst_mac: str, tracked: Optional[Tracked] = None) -> None:
        pkt = frame.pkt
        port, how = self._bridge_port_for(ns, bridge, dst_mac)
        if port is None:
            self._drop(ns, f"bridge {bridge.name}: {how}", pkt)
        if in_port is not None and port.name == in_port.name and not port.hairpin:
            self._drop(ns, f"bridge {bridge.name}: destination is behind the ingress port {port.name} and "
                           "hairpin mode is off", pkt)
        if in_port is not None and port.name == in_port.name:
            how += " (hairpin: back out of the port it came in on)"
        self.hop(ns, "bridge", f"{bridge.name}: {how} -> out {port.name}", port.name, pkt=pkt)
        if in_port is not None and ns.sysctl_on("net.bridge.bridge-nf-call-iptables"):
            # the skb keeps the entry PRE_ROUTING found, even if its header changed since
            tracked = tracked or self.rt.ct(ns).track(pkt)
            self._hook(ns, "FORWARD", frame, tracked, in_iface=bridge.name, out_iface=bridge.name,
                       physdev_in=in_port.name, physdev_out=port.name, bridged=True)
            self._hook(ns, "POSTROUTING", frame, tracked, in_iface=bridge.name, out_iface=bridge.name,
                       physdev_in=in_port.name, physdev_out=port.name, bridged=True)
            # br_netfilter's POST_ROUTING NAT: a bridged answer of a DNATed connection (a pod
            # behind the same bridge answering a Service's client) leaves from the Service address
            for note in (apply_src_manip(tracked, pkt), self.rt.ct(ns).confirm(tracked, pkt)):
                if note:
                    self.hop(ns, "conntrack", note, port.name, pkt=pkt)
        self._l2_send(ns, port, frame, dst_mac, bridged=in_port is not None)

    # ------------------------------------------------------------ reception
    def _receive(self, ns: Netns, link: Link, frame: Frame, dst_mac: Optional[str]) -> None:
        pkt = frame.pkt
        if not link.up:
            self._drop(ns, f"{link.name} is down", pkt)
        if link.master:
            bridge = ns.links.get(link.master)
            if bridge is None:
                self._drop(ns, f"{link.name} is enslaved to a missing bridge {link.master}", pkt)
            self.rt.fdb(ns, bridge.name)[pkt.src_mac or ""] = link.name
            tracked = None
            if ns.sysctl_on("net.bridge.bridge-nf-call-iptables"):
                # br_netfilter's PRE_ROUTING sees every frame of the bridge, those addressed to the
                # bridge itself too (the IP layer's PREROUTING is then skipped: ip_sabotage_in)
                tracked = self.rt.ct(ns).track(pkt)
                self._conntrack_hop(ns, tracked, pkt, "PREROUTING")
                before = pkt.dst
                # nf_nat at br_netfilter's PRE_ROUTING: an answer is un-SNATed here too
                note = apply_dst_manip(tracked, pkt)
                if note:
                    self.hop(ns, "conntrack", note, link.name, pkt=pkt)
                self._hook(ns, "PREROUTING", frame, tracked, in_iface=bridge.name,
                           physdev_in=link.name, bridged=True)
                if pkt.dst != before:
                    back = tables_of(ns).lookup(pkt.dst, pkt.src, bridge.name, None, pkt.mark)
                    if back.ok and back.type == "unicast" and back.dev == bridge.name:
                        # br_nf_pre_routing_finish_bridge: DNATed to a station behind this same
                        # bridge, the frame stays bridged (to the ingress port only with hairpin on)
                        answer = self._arp(ns, bridge, back.nexthop)
                        if answer[0] is None:
                            self._drop(ns, f"no ARP reply for {back.nexthop} on {bridge.name}", pkt)
                        port, _ = self._bridge_port_for(ns, bridge, answer[0])
                        if port is not None and port.name == link.name and not port.hairpin and bridge.promisc:
                            # the bridged copy cannot go back out of its ingress port, but a promiscuous
                            # bridge also passes it up: the host routes it back out of the bridge (the
                            # kubelet's promiscuous-bridge hairpin mode)
                            self.hop(ns, "bridge", f"br_netfilter: destination rewritten to {pkt.dst}, behind "
                                                   f"the ingress port {link.name} (hairpin off); {bridge.name} is "
                                                   "promiscuous: the host receives the frame and routes it",
                                     link.name, pkt=pkt)
                            self._ip_input(ns, bridge, frame, tracked)
                            return
                        self.hop(ns, "bridge", f"br_netfilter: destination rewritten to {pkt.dst}, which is "
                                               f"behind {bridge.name} too: the frame stays bridged", link.name,
                                 pkt=pkt)
                        self._bridge_forward(ns, bridge, link, frame, answer[0], tracked)
                        return
                    self.hop(ns, "bridge", f"br_netfilter: destination rewritten to {pkt.dst}: "
                                           "the frame is routed instead of bridged", link.name, pkt=pkt)
                    self._ip_input(ns, bridge, frame, tracked)
                    return
            if dst_mac == bridge.mac:
                self.hop(ns, "bridge", f"{bridge.name}: frame from port {link.name} is addressed to the "
                                       "bridge itself: up the host stack", link.name, pkt=pkt)
                self._ip_input(ns, bridge, frame, tracked)
                return
            self._bridge_forward(ns, bridge, link, frame, dst_mac, tracked)
            return
        if dst_mac not in (None, BROADCAST_MAC, link.mac) and not link.noarp and link.kind not in ("ipip",):
            self._drop(ns, f"{link.name}: frame for {dst_mac} is not for this host (PACKET_OTHERHOST)", pkt)
        self._ip_input(ns, link, frame)

    def _ip_input(self, ns: Netns, link: Link, frame: Frame, tracked: Optional[Tracked] = None) -> None:
        pkt = frame.pkt
        self.hop(ns, "recv", f"in {link.name}", link.name, pkt=pkt)
        tc = self._tc_ingress_service(ns, link, pkt)
        if tc is not None and tracked is None:
            tracked = tc                # bpf_host redirects it on: no netfilter PREROUTING
        if tracked is None:
            tracked = self.rt.ct(ns).track(pkt)
            self._conntrack_hop(ns, tracked, pkt, "PREROUTING")
            note = apply_dst_manip(tracked, pkt)
            if note:
                self.hop(ns, "conntrack", note, link.name, pkt=pkt)
            self._hook(ns, "PREROUTING", frame, tracked, in_iface=link.name)
        route = self._route(ns, pkt, pkt.dst, pkt.src, link.name)
        if not route.ok:
            self.hop(ns, "route", route.text(pkt.src, link.name), link.name, pkt=pkt)
            if route.type == "blackhole":
                self._drop(ns, f"{pkt.dst} matches a blackhole route: dropped silently (the client times out)",
                           pkt)
            self._drop(ns, f"no route to {pkt.dst}: {route.error}", pkt)
        # ip_route_input_slow validates the source once the destination is routed (after
        # PREROUTING, whose mangle rules may have set the mark src_valid_mark lets it use)
        refused = _rp_filter_refuses(ns, link.name, pkt.src, pkt.dst,
                                     pkt.mark if ns.conf(link.name, "src_valid_mark") else 0)
        if refused:
            self._drop(ns, refused, pkt)
        if route.type == "local":
            self.hop(ns, "route", route.text(pkt.src, link.name), link.name, pkt=pkt)
            self._local_in(ns, link, frame, tracked)
            return
        if route.type in ("broadcast", "multicast"):
            self._drop(ns, f"{route.type} destination {pkt.dst} (not forwarded)", pkt)
        fwd = "net.ipv4.ip_forward" if pkt.family == 4 else "net.ipv6.conf.all.forwarding"
        if not ns.sysctl_on(fwd):
            self.hop(ns, "route", route.text(pkt.src, link.name), link.name, pkt=pkt)
            self._drop(ns, f"{pkt.dst} is not local and {fwd}=0: not forwarded", pkt)
        self.hop(ns, "route", f"forward: {route.text(pkt.src, link.name)}", route.dev, pkt=pkt)
        pkt.ttl -= 1
        if pkt.ttl <= 0:
            self._drop(ns, "TTL exceeded in transit (ICMP time exceeded)", pkt)
        out = ns.links.get(route.dev or "")
        if out is not None and pkt.length > out.mtu:
            self._fit_mtu(ns, out, pkt, forwarded=True)       # ip_forward: before the FORWARD hook
        self._hook(ns, "FORWARD", frame, tracked, in_iface=link.name, out_iface=route.dev)
        self._output(ns, frame, route, tracked, in_link=link)

    def _tc_ingress_service(self, ns: Netns, link: Link, pkt: Packet) -> Optional[Tracked]:
        """eBPF kube-proxy replacement at the NIC (tc ingress): NodePort / LB / external IPs."""
        lb = ns.socket_lb
        if lb is None or pkt.dport is None or link.kind in ("veth", "loopback") \
                or pkt.proto not in ("tcp", "udp", "sctp"):
            return None
        if self.rt.ct(ns).lookup(pkt) is not None:
            return None                 # a packet of a connection already being load-balanced
        sel = bpf_lb.nodeport_lb(lb, pkt.src, pkt.dst, pkt.dport, pkt.proto, self.rt.choose)
        if sel is None:
            return None
        svc = sel.svc
        name = lb.names.get(svc.rev_nat_index, "")
        where = (f"bpf_host from-netdev (tc ingress on {link.name}): nodeport_lb{pkt.dst.version} "
                 f"{bpf_lb.key_text(sel.key)} -> {svc.count} backend{'s' if svc.count != 1 else ''} "
                 f"[{bpf_lb.flags_text(svc)}], service #{svc.rev_nat_index}" + (f" {name}" if name else ""))
        if sel.error:
            self.hop(ns, "tc-ingress", f"{where}: {sel.error}", link.name, pkt=pkt)
            self._drop(ns, f"eBPF service {name or ep(pkt.dst, pkt.dport)}: {sel.error}", pkt)
        b = sel.backend
        tracked = self.rt.ct(ns).track(pkt)
        tracked.conn.note = f"eBPF NAT of service #{svc.rev_nat_index}"
        bind_dnat(tracked.conn, b.address, b.port)
        old = ep(pkt.dst, pkt.dport)
        pkt.dst, pkt.dport = b.address, b.port
        text = f"{where}; slot {sel.slot} -> backend #{sel.backend_id} {bpf_lb.backend_text(b)}: DNAT {old} -> " \
               f"{ep(b.address, b.port)}"
        if sel.snat is not None:
            bind_snat(tracked.conn, sel.snat, pkt.sport)
            text += f"; the backend is on another node: SNAT {ep(pkt.src, pkt.sport)} -> {ep(sel.snat, pkt.sport)}"
            pkt.src = sel.snat
        else:
            text += f"; the backend is on this node: the client address {pkt.src} is kept"
        self.rt.ct(ns).confirm(tracked)
        self.hop(ns, "tc-ingress", text, link.name, pkt=pkt)
        return Tracked(tracked.conn, "ORIGINAL", new=False)

    # ------------------------------------------------------------ local delivery
    def _local_in(self, ns: Netns, link: Link, frame: Frame, tracked: Tracked) -> None:
        pkt = frame.pkt
        self._hook(ns, "INPUT", frame, tracked, in_iface=link.name)
        if self._ipvs(ns, frame, tracked):
            return
        note = apply_src_manip(tracked, pkt)
        if note:
            self.hop(ns, "conntrack", note, link.name, pkt=pkt)
        self.rt.ct(ns).confirm(tracked)
        if tracked.conn is not None and tracked.direction == "REPLY":
            tracked.conn.seen_reply = True
        if frame.inner is not None or self._is_tunnel_packet(ns, pkt):
            self._decapsulate(ns, frame)
            return
        # a reply reaching the socket that started the walk
        client = self.rt.client_sockets.get((ns.name, pkt.proto, pkt.dst, pkt.dport))
        if client is not None:
            # the kernel matches the socket's peer; a socket-LB socket's peer is the backend
            src = (pkt.src, pkt.sport)
            if src == client:
                shown = self._socket_lb_reverse(ns, pkt) or src
                self._end("delivered", ns, f"reply received by the client socket "
                          f"{ep(pkt.dst, pkt.dport)}, from {ep(*shown)} as the client expects", pkt)
            self._end("dropped", ns, f"reply from {ep(*src)} does not match the client's connection to "
                      f"{ep(*client)} (the socket would send RST)", pkt)
        if pkt.proto in ("icmp", "icmpv6") and (pkt.icmp_type in (None, 8, 128)):
            self._end("answered", ns, f"ICMP echo request answered by the kernel of {ns.name}", pkt)
        listener = _find_listener(ns, pkt)
        if listener is not None and (listener.relay_to or listener.relays):
            self._relay(ns, listener, pkt)
            return
        if listener is not None:
            who = f" ({listener.owner})" if listener.owner else ""
            self._end("delivered", ns, f"delivered to socket {listener.proto} {ep(listener.ip, listener.port)}"
                      f"{who}", pkt, listener)
        if pkt.proto == "tcp":
            self._end("rejected", ns, f"nothing listens on {ep(pkt.dst, pkt.dport)}/tcp: the kernel answers RST",
                      pkt)
        self._end("rejected", ns, f"nothing listens on {ep(pkt.dst, pkt.dport)}/{pkt.proto}: "
                  "ICMP port unreachable", pkt)

    def _relay(self, ns: Netns, listener: Listener, pkt: Packet) -> None:
        """A userspace proxy accepts the connection and opens its own to a backend."""
        n = len(listener.relay_to)
        if n == 0:
            self._end("rejected", ns, f"{listener.owner or 'proxy'} accepted the connection on "
                      f"{ep(pkt.dst, pkt.dport)} but has no backend to open one to: it closes it "
                      "(the client sees the connection reset)", pkt, listener)
        i = self.rt.choose(f"relay:{ns.name}:{listener.port}", [(ep(*b), 1 / n) for b in listener.relay_to])
        addr, port = listener.relay_to[i]
        self.hop(ns, "userspace", f"{listener.owner or 'proxy'} accepted the connection on "
                 f"{ep(pkt.dst, pkt.dport)} from {ep(pkt.src, pkt.sport)}; it opens a new connection to "
                 f"backend {i + 1} of {n}: {ep(addr, port)}", pkt=pkt)
        self.relays.append((ns.name, pkt.copy()))
        sport = 50000 + (pkt.sport or 0) % 10000
        unspecified = ipaddress.ip_address("0.0.0.0" if addr.version == 4 else "::")
        self._local_out(ns, Frame(Packet(unspecified, addr, pkt.proto, sport, port)), from_socket=True)

    def _ipvs(self, ns: Netns, frame: Frame, tracked: Tracked) -> bool:
        """IPVS at LOCAL_IN: a virtual service picks a real server, NATs to it and sends
        the packet on through LOCAL_OUT (ip_vs_nat_xmit)."""
        vs = self._ipvs_schedule(ns, frame, tracked, "LOCAL_IN")
        if vs is None:
            return False
        pkt = frame.pkt
        route = self._route(ns, pkt, pkt.dst, pkt.src)
        self.hop(ns, "route", route.text(), route.dev, pkt=pkt)
        if not route.ok:
            self._drop(ns, f"no route to real server {pkt.dst}: {route.error}", pkt)
        # the nat table bound this connection's destination at PREROUTING: not run again
        self._hook(ns, "OUTPUT", frame, tracked, out_iface=route.dev, ipvs=vs, nat=False)
        self._output(ns, frame, route, tracked, in_link=None)
        return True

    def _ipvs_schedule(self, ns: Netns, frame: Frame, tracked: Tracked, where: str):
        """IPVS takes the packet: the virtual service it is for picks a real server and the
        destination is rewritten (podnet.sim.ipvs). Returns the IPVS connection as `-m ipvs`
        sees it (vaddr, vport, protocol, direction: the packet's own destination, also for a
        fwmark service); None when IPVS does not handle the packet."""
        pkt = frame.pkt
        if not ns.ipvs or (tracked.conn is not None and tracked.direction == "REPLY"):
            return None
        svc = ipvs_sched.find_service(ns, pkt)
        if svc is None:
            return None
        conn = (pkt.dst, pkt.dport, pkt.proto, "ORIGINAL")
        # the branch key (`trace --pick ipvs:10.96.0.10:53=N`; a fwmark service: ipvs:FWM 100)
        vip = ep(svc.vip, svc.port) if svc.fwmark is None else ipvs_sched.service_name(svc)
        if not tracked.new:
            note = apply_dst_manip(tracked, pkt)
            self.hop(ns, "ipvs", f"IPVS connection entry: {note or 'same real server'}", pkt=pkt)
            return conn
        pick = ipvs_sched.schedule(svc, pkt, self.rt.choose, f"ipvs:{vip}")
        head = f"IPVS ({where}) {ipvs_sched.service_name(svc)}" + \
            (f" (mark {pkt.mark:#x})" if svc.fwmark is not None else "") + f" {svc.scheduler}" + \
            (f" ({','.join(svc.sched_flags)})" if svc.sched_flags else "") + \
            (f" persistent {svc.persistent}" if svc.persistent else "")
        if pick.index is None:
            # ip_vs_leave: no destination: the client is told the port is unreachable
            self.hop(ns, "ipvs", f"{head}: {pick.how}: no destination available", pkt=pkt)
            self._end("rejected", ns, f"IPVS service {vip} has no real server to take the connection "
                      "(ICMP port unreachable)", pkt)
        real = svc.reals[pick.index]
        # ip_vs_schedule: a real server without a port (a fwmark or port-0 service's) keeps
        # the packet's destination port
        port = real.port or pkt.dport
        bind_dnat(tracked.conn, real.ip, port)
        pkt.dst, pkt.dport = real.ip, port
        self.hop(ns, "ipvs", f"{head}: {pick.how} -> {real.method} {ep(real.ip, port)} weight {real.weight} "
                 f"(real server {pick.index + 1} of {len(svc.reals)})", pkt=pkt)
        return conn

    # ------------------------------------------------------------ tunnels
    def _vxlan_encap(self, ns: Netns, link: Link, frame: Frame, dst_mac: str) -> None:
        pkt = frame.pkt
        vx = link.vxlan
        remote = None
        how = ""
        for e in ns.fdb:
            if e.dev == link.name and e.mac == dst_mac and e.dst is not None:
                remote, how = e.dst, f"fdb {e.mac} dev {link.name} dst {e.dst} self" + (" permanent" if e.permanent else "")
                break
        if remote is None:
            for e in ns.fdb:
                if e.dev == link.name and e.mac == "00:00:00:00:00:00" and e.dst is not None:
                    remote, how = e.dst, f"no entry for {dst_mac}: default fdb 00:00:00:00:00:00 dst {e.dst}"
                    break
        if remote is None and vx.remote is not None:
            remote, how = vx.remote, f"remote {vx.remote}"
        if remote is None:
            self._drop(ns, f"{link.name}: no FDB entry for {dst_mac} (VXLAN cannot find the remote VTEP)", pkt)
        routing = tables_of(ns)
        src = vx.local or routing.lookup(remote).src
        if src is None:
            self._drop(ns, f"{link.name}: no local address to reach VTEP {remote}", pkt)
        # the kernel hashes the inner flow into the outer source port (for ECMP spreading)
        sport = 32768 + ((int(pkt.src) ^ int(pkt.dst) ^ (pkt.sport or 0) ^ (pkt.dport or 0)) & 0x3FFF)
        # the outer header's DF is clear (vxlan `df unset`, the default): a too-big outer packet
        # is fragmented on the underlay
        outer = Packet(src, remote, "udp", sport, vx.dstport, length=pkt.length + VXLAN_OVERHEAD,
                       mark=0, df=False)
        self.hop(ns, "vxlan", f"{link.name}: {how}; encapsulate VNI {vx.vni} in UDP "
                 f"{ep(src, sport)} -> {ep(remote, vx.dstport)}", link.name, pkt=pkt)
        self._local_out(ns, Frame(outer, inner=frame, vni=vx.vni, inner_dst_mac=dst_mac))

    def _ipip_encap(self, ns: Netns, link: Link, frame: Frame, nexthop: IPAddress) -> None:
        pkt = frame.pkt
        tun = link.tunnel
        remote = tun.remote if tun and tun.remote else nexthop
        routing = tables_of(ns)
        src = (tun.local if tun and tun.local else None) or routing.lookup(remote).src
        # ipip tunnels do path MTU discovery (pmtudisc): the outer header copies the inner DF
        outer = Packet(src, remote, "ipip", None, None, length=pkt.length + IPIP_OVERHEAD, df=pkt.df)
        self.hop(ns, "ipip", f"{link.name}: encapsulate IP-in-IP {src} -> {remote}", link.name, pkt=pkt)
        self._local_out(ns, Frame(outer, inner=frame))

    def _is_tunnel_packet(self, ns: Netns, pkt: Packet) -> bool:
        return pkt.proto == "ipip"

    def _decapsulate(self, ns: Netns, frame: Frame) -> None:
        outer = frame.pkt
        inner = frame.inner
        if inner is None:
            self._drop(ns, "tunnel packet without payload", outer)
        # the payload arrives in a fresh skb on this host: the sender's mark (kube-proxy's
        # 0x4000 masquerade mark...) did not travel with it
        inner.pkt.mark = 0
        if outer.proto == "udp":
            for link in ns.links.values():
                vx = link.vxlan
                if link.kind == "vxlan" and vx and vx.dstport == outer.dport and vx.vni == frame.vni \
                        and (vx.local is None or vx.local == outer.dst):
                    self.hop(ns, "vxlan", f"UDP {outer.dport} VNI {frame.vni}: decapsulated by {link.name}",
                             link.name, pkt=inner.pkt)
                    self._receive(ns, link, inner, frame.inner_dst_mac)
                    return
            self._drop(ns, f"no VXLAN device with VNI {frame.vni} on UDP port {outer.dport}", outer)
        if outer.proto == "ipip":
            for link in ns.links.values():
                if link.kind == "ipip":
                    self.hop(ns, "ipip", f"IP-in-IP from {outer.src}: decapsulated by {link.name}", link.name,
                             pkt=inner.pkt)
                    self._receive(ns, link, inner, None)
                    return
            self._drop(ns, "IP-in-IP packet but no ipip device", outer)
        self._drop(ns, f"cannot decapsulate {outer.proto}", outer)

    # ------------------------------------------------------------ netfilter
    def _conntrack_hop(self, ns: Netns, tracked: Tracked, pkt: Packet, where: str) -> None:
        if not (ns.iptables or ns.nft or ns.ipvs):
            return                  # no netfilter in this namespace: nothing worth showing
        if tracked.new:
            self.hop(ns, "conntrack", f"new connection {tuple_text(pkt)}", pkt=pkt)
        else:
            self.hop(ns, "conntrack", f"{tracked.direction.lower()} direction of {tracked.conn.text()}", pkt=pkt)

    def _hook(self, ns: Netns, hook: str, frame: Frame, tracked: Tracked, *,
              in_iface: Optional[str] = None, out_iface: Optional[str] = None,
              physdev_in: Optional[str] = None, physdev_out: Optional[str] = None,
              bridged: bool = False, route: Optional[RouteResult] = None,
              priorities: Optional[tuple] = None, ipvs: Optional[tuple] = None, nat: bool = True) -> bool:
        """Run the hook's chains; True when a route chain asks for the packet to be routed again."""
        pkt = frame.pkt
        if not (ns.iptables or ns.ip6tables or ns.nft):
            return False
        conn_view = tracked.view()
        conn_view.mark = tracked.conn.mark if tracked.conn else 0
        result = run_hook(ns, hook, pkt, conn_view, self.rt, in_iface=in_iface, out_iface=out_iface,
                          physdev_in=physdev_in, physdev_out=physdev_out, bridged=bridged,
                          first_packet=tracked.new and nat, priorities=priorities, ipvs=ipvs)
        if tracked.conn is not None:
            tracked.conn.mark = conn_view.mark
            if result.notrack:
                tracked.conn.notrack = True
        if result.verdict == "ACCEPT" and not result.nat and all(st.index == 0 for st in result.steps):
            return False            # no rule matched: only ACCEPT policies applied, nothing to show
        stage = ("bridge-nf " if bridged else "") + hook
        self.hop(ns, stage, ", ".join(result.chains_run) or hook, out_iface or in_iface,
                 steps=result.steps, pkt=pkt, verdict=result.verdict or "ACCEPT")
        if result.verdict == "DROP":
            last = result.steps[-1] if result.steps else None
            self._drop(ns, f"dropped by {last.where() if last else hook}: {last.text if last else ''}".strip()
                       + _said_by(result.steps, with_own=False), pkt)
        if result.verdict == "REJECT":
            last = result.steps[-1] if result.steps else None
            self._end("rejected", ns, f"rejected ({result.reject_with or 'icmp-port-unreachable'}) by "
                      f"{last.where() if last else hook}" + _said_by(result.steps), pkt)
        for ref, nat in result.nat:
            self._apply_nat(ns, hook, nat, pkt, tracked, in_iface, out_iface, route)
        return result.reroute

    def _apply_nat(self, ns: Netns, hook: str, nat: NatAction, pkt: Packet, tracked: Tracked,
                   in_iface: Optional[str], out_iface: Optional[str], route: Optional[RouteResult]) -> None:
        conn = tracked.conn
        if nat.kind in ("DNAT", "REDIRECT"):
            addr, port = nat_destination(ns, hook, nat, pkt, in_iface)
            if addr is None:
                self._drop(ns, f"REDIRECT: {in_iface} has no IPv{pkt.dst.version} address to redirect to "
                               "(the kernel drops the packet)", pkt)
            old = ep(pkt.dst, pkt.dport)
            pkt.dst, pkt.dport = addr, port
            if conn is not None:
                bind_dnat(conn, addr, port)
            self.hop(ns, "nat", f"{nat.kind}: destination {old} -> {ep(addr, port)}", pkt=pkt)
            return
        if nat.kind == "MASQUERADE":
            towards = route.nexthop if route is not None else pkt.dst
            addr = tables_of(ns).select_source(out_iface, towards)
            if addr is None:
                self._drop(ns, f"MASQUERADE: {out_iface} has no address", pkt)
            port = nat.port if nat.port is not None else pkt.sport
            how = f"MASQUERADE to the address of {out_iface}"
        else:
            addr = nat.addr if nat.addr is not None else pkt.src
            port = nat.port if nat.port is not None else pkt.sport
            how = "SNAT"
        if nat.random_fully:
            how += " (random-fully: the kernel picks a random source port; shown unchanged)"
        old = ep(pkt.src, pkt.sport)
        pkt.src, pkt.sport = addr, port
        if conn is not None:
            bind_snat(conn, addr, port)
        self.hop(ns, "nat", f"{how}: source {old} -> {ep(addr, port)}", out_iface, pkt=pkt)


def _comment(text: str) -> str:
    """The comment of a rule as iptables-save (`--comment X`) or nft (`comment "X"`) prints it."""
    from ..linux.iptables import split_line
    try:
        words = split_line(text)[0]
    except Exception:
        return ""
    for i, w in enumerate(words[:-1]):
        if w == "--comment" or (w == "comment" and i > 0 and words[i - 1] != "-m"):
            return words[i + 1]
    return ""


def _said_by(steps: list[Step], with_own: bool = True) -> str:
    """What the rules say about a drop: the deciding rule's comment and those of the jumps its
    chain took before it (kube-router's `run through nw policy NAME`, say)."""
    if not steps:
        return ""
    last = steps[-1]
    own = _comment(last.text) if with_own else ""
    after = [c for s in steps[:-1] if (s.engine, s.table, s.chain) == (last.engine, last.table, last.chain)
             and s.action.startswith(("jump ", "goto ")) and (c := _comment(s.text))]
    if not (own or after):
        return ""
    return f": {own or last.text}" + (f" (after: {'; '.join(after)})" if after else "")


def tuple_text(pkt: Packet) -> str:
    return f"{pkt.proto} {ep(pkt.src, pkt.sport)} -> {ep(pkt.dst, pkt.dport)}"


def _kernel_arp_answer(ns: Netns, link: Link, target: IPAddress) -> Optional[str]:
    """Why the kernel of `ns` answers an ARP request for `target` heard on `link` (None: it does
    not): the address is its own (arp_ignore), a proxy neighbour entry, or proxy_arp."""
    tables = tables_of(ns)
    arp_ignore = max(int(ns.sysctl("net.ipv4.conf.all.arp_ignore", "0")),
                     int(ns.sysctl(f"net.ipv4.conf.{link.name}.arp_ignore", "0")))
    on_link = any(a.ip == target for a in link.addresses)
    if on_link or (arp_ignore == 0 and target in tables.local_addrs):
        return f"{ns.name} {link.name} owns {target}"
    forwarding = ns.sysctl_on("net.ipv4.ip_forward")
    for n in ns.neighbours:
        # arp_process: a proxy entry answers for an address routed out of another device
        if n.proxy and n.ip == target and n.dev == link.name and forwarding:
            back = tables.lookup(target)
            if back.ok and back.type == "unicast" and back.dev != link.name:
                return f"proxy neighbour entry for {target} on {ns.name} {link.name}"
    if ns.conf(link.name, "proxy_arp") and forwarding:
        back = tables.lookup(target)
        if back.ok and back.type != "local" and back.dev != link.name:
            return f"proxy_arp on {ns.name} {link.name} (route to {target} via {back.dev})"
    return None


def _rp_filter_refuses(ns: Netns, dev: str, src: IPAddress, dst: IPAddress, mark: int) -> str:
    """Why rp_filter on `dev` refuses a packet from `src` ("" when it passes): fib_validate_source
    routes back to the source as from this host (iif lo); strict mode (1) wants one of that
    route's nexthops on `dev`, loose mode (2) any route."""
    mode = ns.rp_filter(dev)
    if not mode or src.is_unspecified:
        return ""
    back = tables_of(ns).lookup(src, dst, None, None, mark)
    if back.ok and (mode == 2 or back.uses_dev(dev) or back.type == "local"):
        return ""
    return (f"rp_filter={mode} on {dev}: the route back to {src} "
            f"{'does not exist' if not back.ok else 'leaves via ' + str(back.dev)}")


def _blocked(segment, a: str, b: str) -> bool:
    if segment is None or not segment.blocked_pairs:
        return False
    return (a, b) in segment.blocked_pairs or (b, a) in segment.blocked_pairs


def _find_listener(ns: Netns, pkt: Packet) -> Optional[Listener]:
    best = None
    for l in ns.listeners:
        if l.proto != pkt.proto or l.port not in (pkt.dport, 0):   # port 0: any port
            continue
        if l.ip == pkt.dst:
            return l
        if l.ip.is_unspecified and l.ip.version == pkt.dst.version:
            best = best or l
    return best
