"""The dataplane state printed the way Linux tools print it.

`ip route`, `ip -br link`, `ip -br addr`, `ip neigh`, `bridge fdb`, `ipvsadm -Ln`,
so podnet's output can be read (and diffed) like a real node's.
"""

from __future__ import annotations

import functools

from .state import IpvsRealServer, IpvsService, Link, Netns, Route, table_name


def _dst(r: Route) -> str:
    if r.dst.prefixlen == 0:
        return "default"
    if r.dst.prefixlen == r.dst.max_prefixlen:
        return str(r.dst.network_address)
    return str(r.dst)


def route_line(r: Route, show_table: bool = False) -> str:
    """One `ip route` line in iproute2's field order."""
    parts = []
    if r.type != "unicast":
        parts.append(r.type)
    parts.append(_dst(r))
    if r.via is not None and not r.nexthops:
        parts += ["via", str(r.via)]
    if r.dev and not r.nexthops:
        parts += ["dev", r.dev]
    if show_table and r.table != 254:
        parts += ["table", table_name(r.table)]
    if r.proto not in ("boot", ""):
        parts += ["proto", r.proto]
    if r.scope not in ("global", "universe"):
        parts += ["scope", r.scope]
    if r.src is not None:
        parts += ["src", str(r.src)]
    if r.metric:
        parts += ["metric", str(r.metric)]
    if r.onlink:
        parts.append("onlink")
    line = " ".join(parts)
    for nh in r.nexthops:
        nh_parts = ["nexthop"]
        if nh.via is not None:
            nh_parts += ["via", str(nh.via)]
        if nh.dev:
            nh_parts += ["dev", nh.dev]
        nh_parts += ["weight", str(nh.weight)]
        if nh.onlink:
            nh_parts.append("onlink")
        line += "\n\t" + " ".join(nh_parts)
    return line


def _route_sort_key(r: Route):
    # iproute2 prints in kernel FIB order; podnet orders by table, then default first,
    # then by destination address and prefix, which is how the kernel's trie walks them:
    # prefixes sharing one address are a single leaf, listed longest first (a pod's
    # 10.244.190.0/32 before calico's blackhole 10.244.190.0/26)
    return (r.table != 254, r.table, r.dst.version, r.dst.prefixlen != 0, int(r.dst.network_address),
            -r.dst.prefixlen, r.metric)


def ip_route(ns: Netns, table: str | int = "main", family: int = 4, include_kernel: bool = True) -> str:
    from .routing import effective_routes
    routes = effective_routes(ns) if include_kernel else list(ns.routes)
    all_tables = table == "all"
    tid = None if all_tables else (254 if table == "main" else (255 if table == "local" else int(table)))
    chosen = [r for r in routes if r.dst.version == family and (all_tables or r.table == tid)]
    return "\n".join(route_line(r, show_table=all_tables) for r in sorted(chosen, key=_route_sort_key))


def _link_name(ns: Netns, link: Link, peer_index: dict) -> str:
    if link.peer is not None:
        idx = peer_index.get(link.peer)
        return f"{link.name}@if{idx}" if idx else f"{link.name}@{link.peer[1]}"
    return link.name


def _peer_indexes(ns: Netns, state=None) -> dict:
    out = {}
    if state is None:
        return out
    for link in ns.links.values():
        if link.peer is not None:
            pns = state.namespaces.get(link.peer[0])
            if pns and link.peer[1] in pns.links:
                out[link.peer] = pns.links[link.peer[1]].ifindex
    return out


def _flags(link: Link) -> str:
    if link.kind == "loopback":
        flags = ["LOOPBACK"]
    else:
        flags = ["BROADCAST", "MULTICAST"] if not link.noarp else ["POINTOPOINT", "NOARP"]
    if link.up:
        flags += ["UP", "LOWER_UP"]
    return "<" + ",".join(flags) + ">"


def ip_br_link(ns: Netns, state=None) -> str:
    peers = _peer_indexes(ns, state)
    lines = []
    for link in sorted(ns.links.values(), key=lambda l: l.ifindex):
        state_s = "UNKNOWN" if link.kind in ("loopback", "vxlan", "ipip", "dummy") and link.up else \
            ("UP" if link.up else "DOWN")
        mac = "00:00:00:00:00:00" if link.kind == "loopback" else (link.mac or "")
        lines.append(f"{_link_name(ns, link, peers):<16} {state_s:<14} {mac} {_flags(link)}")
    return "\n".join(lines)


def ip_br_addr(ns: Netns, state=None, family: int | None = None) -> str:
    peers = _peer_indexes(ns, state)
    lines = []
    for link in sorted(ns.links.values(), key=lambda l: l.ifindex):
        addrs = [str(a.interface) for a in link.addresses if family is None or a.ip.version == family]
        state_s = "UNKNOWN" if link.kind in ("loopback", "vxlan", "ipip", "dummy") and link.up else \
            ("UP" if link.up else "DOWN")
        lines.append(f"{_link_name(ns, link, peers):<16} {state_s:<14} {' '.join(addrs)}".rstrip())
    return "\n".join(lines)


def ip_neigh(ns: Netns) -> str:
    lines = []
    for n in ns.neighbours:
        if n.proxy:
            lines.append(f"{n.ip} dev {n.dev}  proxy")
        else:
            lines.append(f"{n.ip} dev {n.dev} lladdr {n.lladdr} {n.state}")
    return "\n".join(lines)


def bridge_fdb(ns: Netns) -> str:
    lines = []
    for e in ns.fdb:
        parts = [e.mac, "dev", e.dev]
        if e.vlan is not None:
            parts += ["vlan", str(e.vlan)]
        if e.dst is not None:
            parts += ["dst", str(e.dst)]
        if e.vni is not None:
            parts += ["vni", str(e.vni)]
        if e.master:
            parts += ["master", e.master]
        if e.self_:
            parts.append("self")
        if e.permanent:
            parts.append("permanent")
        elif e.static:
            parts.append("static")
        lines.append(" ".join(parts))
    return "\n".join(lines)


def hostport(ip, port) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _ipvs_order(s: IpvsService) -> tuple:
    """ipvs_cmp_services: fwmark services after the others."""
    return (s.fwmark or 0, s.protocol, s.vip.version, int(s.vip), s.port)


def _signed32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v & 0x80000000 else v


def _ipvs_cmp_dests(a: IpvsRealServer, b: IpvsRealServer) -> int:
    """libipvs ipvs_cmp_dests: the address word by word, then the port, each difference an
    int of an unsigned subtraction (so addresses 2^31 or more apart compare backwards)."""
    pa, pb = a.ip.packed, b.ip.packed
    for i in range(0, len(pa), 4):
        r = _signed32(int.from_bytes(pa[i:i + 4], "big") - int.from_bytes(pb[i:i + 4], "big"))
        if r:
            return r
    return a.port - b.port


def ipvs_dests(s: IpvsService, order: str = "sorted") -> list[IpvsRealServer]:
    """A service's real servers as ipvsadm lists them.

    The model keeps `reals` in the order they were added; the kernel's list is the reverse
    (ip_vs_add_dest adds at the head), and the schedulers walk that list (see
    podnet.sim.ipvs.kernel_order). `order`: "sorted" as `ipvsadm -Ln`/`-Sn` print them
    (ipvs_cmp_dests), "nosort" as `--nosort` prints the kernel's list, "restore" in the
    order ipvsadm-restore must add them to rebuild that list."""
    if order == "restore":
        return list(s.reals)
    if order == "nosort":
        return s.reals[::-1]
    return sorted(s.reals, key=functools.cmp_to_key(_ipvs_cmp_dests))


def ipvsadm_ln(services: list[IpvsService]) -> str:
    lines = ["IP Virtual Server version 1.2.1 (size=4096)",
             "Prot LocalAddress:Port Scheduler Flags",
             "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for s in sorted(services, key=_ipvs_order):
        flags = f" ({','.join(s.sched_flags)})" if s.sched_flags else ""
        flags += f" persistent {s.persistent}" if s.persistent else ""
        if s.fwmark is not None:
            name = f"FWM  {s.fwmark}" + (" IPv6" if s.vip.version == 6 else "")
        else:
            name = f"{s.protocol:<4} {hostport(s.vip, s.port)}"
        lines.append(f"{name} {s.scheduler}{flags}")
        for r in ipvs_dests(s):
            lines.append(f"  -> {hostport(r.ip, r.port):<28} {r.method:<7} {r.weight:<6} "
                         f"{r.active_conns:<10} 0")
    return "\n".join(lines)


def ipvsadm_virtual(s: IpvsService) -> str:
    """How ipvsadm -Sn names a virtual service: `-t 10.96.0.1:443`, `-f 100`, `-f 100 -6`."""
    if s.fwmark is not None:
        return f"-f {s.fwmark}" + (" -6" if s.vip.version == 6 else "")
    flag = {"TCP": "-t", "UDP": "-u", "SCTP": "--sctp-service"}[s.protocol.upper()]
    return f"{flag} {hostport(s.vip, s.port)}"


def ipvsadm_save(services: list[IpvsService], order: str = "sorted") -> str:
    """`ipvsadm -Sn` text (what ipvsadm-restore reads); `order` of the real servers: see
    ipvs_dests."""
    method = {"Masq": "-m", "Route": "-g", "Tunnel": "-i"}
    lines = []
    for s in sorted(services, key=_ipvs_order):
        virtual = ipvsadm_virtual(s)
        p = f" -b {','.join(s.sched_flags)}" if s.sched_flags else ""
        p += f" -p {s.persistent}" if s.persistent else ""
        lines.append(f"-A {virtual} -s {s.scheduler}{p}")
        for r in ipvs_dests(s, order):
            lines.append(f"-a {virtual} -r {hostport(r.ip, r.port)} "
                         f"{method.get(r.method, '-m')} -w {r.weight}")
    return "\n".join(lines)
