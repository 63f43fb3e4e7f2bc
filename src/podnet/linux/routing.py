"""Route lookup as the kernel does it, and `ip route get` answers.

- The routes the kernel adds by itself are derived from addresses, as the kernel
  derives them: in table local, `local ADDR` for every address (scope host) and
  `broadcast` routes; in table main, the prefix route `NET dev IF proto kernel
  scope link src ADDR` for addresses shorter than /32 (unless noprefixroute).
  A snapshot of a real machine already contains them; duplicates are dropped.
- Policy rules are walked by priority; each table is searched by longest
  prefix, then metric; `throw` continues with the next rule.
- Source address selection follows the kernel: the route's `src`, else the
  first address of the outgoing device in a scope that covers the nexthop.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from .state import IPAddress, Netns, Route, Rule, table_name

SCOPE_ORDER = {"global": 0, "universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}


@dataclass(slots=True)
class RouteResult:
    """The answer to `ip route get DST [from SRC] [iif IF] [mark M]`."""
    dst: IPAddress
    type: str                       # unicast | local | broadcast | blackhole | unreachable | prohibit
    route: Optional[Route] = None
    table: int = 254
    dev: Optional[str] = None
    gateway: Optional[IPAddress] = None
    src: Optional[IPAddress] = None
    rule: Optional[Rule] = None
    error: Optional[str] = None     # "Network is unreachable", ...
    multipath: str = ""             # which nexthop of a multipath route a flow took, when chosen

    @property
    def nexthop(self) -> IPAddress:
        """The address to resolve with ARP/ND: the gateway, or the destination itself."""
        return self.gateway if self.gateway is not None else self.dst

    @property
    def ok(self) -> bool:
        return self.error is None

    def uses_dev(self, dev: str) -> bool:
        """fib_info_nh_uses_dev: any nexthop of the route leaves via `dev` (rp_filter's test)."""
        if self.route is None or not self.route.nexthops:
            return self.dev == dev
        return any(nh.dev == dev for nh in self.route.nexthops)

    def text(self, from_: Optional[IPAddress] = None, iif: Optional[str] = None) -> str:
        """`ip route get` output, e.g. `10.244.0.5 via 172.18.0.10 dev eth0 src 172.18.0.11 uid 0`."""
        if self.error:
            return f"RTNETLINK answers: {self.error}"
        parts = []
        if self.type in ("local", "broadcast", "multicast", "blackhole", "unreachable", "prohibit"):
            parts.append(self.type)
        parts.append(str(self.dst))
        if from_ is not None:
            parts += ["from", str(from_)]
        if self.gateway is not None:
            parts += ["via", str(self.gateway)]
        if self.dev:
            parts += ["dev", self.dev]
        if self.table not in (254,) and self.type != "local":
            parts += ["table", table_name(self.table)]
        if self.src is not None and iif is None:
            parts += ["src", str(self.src)]
        if iif is not None:
            parts += ["iif", iif]
        else:
            parts += ["uid", "0"]
        if self.multipath:
            parts.append(f"({self.multipath})")
        return " ".join(parts)


class RoutingTables:
    """All tables of one namespace, indexed for longest-prefix match."""

    def __init__(self, ns: Netns):
        self.ns = ns
        self.routes = effective_routes(ns)
        # (table, family) -> {prefixlen: {network int: [routes]}}
        self.index: dict[tuple[int, int], dict[int, dict[int, list[Route]]]] = {}
        for r in self.routes:
            by_len = self.index.setdefault((r.table, r.dst.version), {})
            by_len.setdefault(r.dst.prefixlen, {}).setdefault(int(r.dst.network_address), []).append(r)
        self.lengths = {key: sorted(v, reverse=True) for key, v in self.index.items()}
        for by_len in self.index.values():
            for nets in by_len.values():
                for routes in nets.values():
                    routes.sort(key=lambda r: r.metric)
        self.rules = sorted((r for r in ns.rules), key=lambda r: r.priority)
        self.local_addrs: dict[IPAddress, str] = {}
        for link, addr in ns.addresses():
            self.local_addrs.setdefault(addr.ip, link.name)
        # AnyIP: `local` routes wider than one address make every address in them local
        self.local_nets = [r for r in self.routes
                           if r.type == "local" and r.dst.prefixlen < r.dst.max_prefixlen]

    # -- lookups ---------------------------------------------------------------
    def table_lookup(self, table: int, dst: IPAddress) -> Optional[Route]:
        key = (table, dst.version)
        by_len = self.index.get(key)
        if not by_len:
            return None
        value = int(dst)
        bits = dst.max_prefixlen
        for plen in self.lengths[key]:
            net = value & (((1 << plen) - 1) << (bits - plen)) if plen else 0
            routes = by_len[plen].get(net)
            if routes:
                return routes[0]
        return None

    def is_local(self, addr: IPAddress) -> bool:
        if addr in self.local_addrs:
            return True
        return any(addr in r.dst for r in self.local_nets)

    def addr_type(self, addr: IPAddress, iface: Optional[str] = None) -> str:
        """iptables addrtype / nft fib type: LOCAL, BROADCAST, MULTICAST, UNICAST, ...

        With `iface` (--limit-iface-in/out), an address counts as LOCAL only when its
        local route is on that device, as inet_dev_addr_type decides."""
        if addr.is_multicast:
            return "MULTICAST"
        if addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255"):
            return "BROADCAST"
        route = self.table_lookup(255, addr)
        if route is not None and route.type == "local":
            if iface is not None and route.dev not in (iface, "lo", None):
                return "UNICAST"
            return "LOCAL"
        if route is not None and route.type == "broadcast":
            return "BROADCAST"
        result = self.lookup(addr)
        if result.type in ("blackhole", "unreachable", "prohibit"):
            return result.type.upper()
        return "UNICAST"

    def lookup(self, dst: IPAddress, src: Optional[IPAddress] = None, iif: Optional[str] = None,
               oif: Optional[str] = None, mark: int = 0) -> RouteResult:
        for rule in self.rules:
            if rule.family != dst.version:
                continue
            if not _rule_matches(rule, dst, src, iif, oif, mark):
                continue
            if rule.action != "to_tbl":
                return RouteResult(dst, rule.action, table=rule.table, rule=rule,
                                   error=_ERRORS.get(rule.action, "Network is unreachable"))
            route = self.table_lookup(rule.table, dst)
            if route is None:
                continue
            if oif is not None and route.dev not in (None, oif) and route.type == "unicast":
                route = self._lookup_on(rule.table, dst, oif) or route
            if route.type == "throw":
                continue
            return self._result(dst, route, rule, src)
        return RouteResult(dst, "unreachable", error="Network is unreachable")

    def _lookup_on(self, table: int, dst: IPAddress, oif: str) -> Optional[Route]:
        best = None
        for r in self.routes:
            if r.table == table and r.dev == oif and dst in r.dst:
                if best is None or r.dst.prefixlen > best.dst.prefixlen:
                    best = r
        return best

    def on_path(self, result: RouteResult, index: int) -> RouteResult:
        """`result` with the `index`th nexthop of its multipath route taken."""
        chosen = self._result(result.dst, result.route, result.rule, None, index)
        paths = result.route.paths()
        total = sum(nh.weight for nh in paths)
        chosen.multipath = f"multipath: nexthop {index + 1} of {len(paths)}, weight {paths[index].weight}/{total}"
        return chosen

    def _result(self, dst: IPAddress, route: Route, rule: Rule, src: Optional[IPAddress],
                path_index: int = 0) -> RouteResult:
        if route.type in ("blackhole", "unreachable", "prohibit"):
            return RouteResult(dst, route.type, route, route.table, rule=rule,
                               error=_ERRORS.get(route.type))
        if route.type == "local":
            return RouteResult(dst, "local", route, route.table, dev="lo", src=route.src or dst, rule=rule)
        path = route.paths()[path_index]      # `ip route get`: the first nexthop
        dev = path.dev
        gateway = path.via
        result = RouteResult(dst, route.type, route, route.table, dev, gateway, None, rule)
        result.src = route.src or self.select_source(dev, gateway or dst)
        return result

    def select_source(self, dev: Optional[str], towards: IPAddress) -> Optional[IPAddress]:
        """inet_select_addr: an address of `dev` on the nexthop's subnet, else its first
        global one, else any global address of the namespace."""
        link = self.ns.links.get(dev) if dev else None
        candidates = [a for a in (link.addresses if link else []) if a.ip.version == towards.version]
        for a in candidates:
            if towards in a.network and a.scope != "host":
                return a.ip
        for a in candidates:
            if a.scope in ("global", "link"):
                return a.ip
        for lk, a in self.ns.addresses():
            if a.ip.version == towards.version and a.scope == "global" and lk.kind != "loopback":
                return a.ip
        return None


_ERRORS = {"blackhole": "Invalid argument", "unreachable": "No route to host",
           "prohibit": "Permission denied"}


def _rule_matches(rule: Rule, dst, src, iif, oif, mark) -> bool:
    ok = True
    if rule.src is not None and (src is None or src not in rule.src):
        ok = False
    if ok and rule.dst is not None and dst not in rule.dst:
        ok = False
    if ok and rule.iif is not None and rule.iif != (iif or "lo"):
        ok = False
    if ok and rule.oif is not None and rule.oif != oif:
        ok = False
    if ok and rule.fwmark is not None:
        mask = 0xFFFFFFFF if rule.fwmask is None else rule.fwmask
        ok = (mark & mask) == rule.fwmark
    return ok != rule.invert


def kernel_routes(ns: Netns) -> list[Route]:
    """The routes the kernel derives from the namespace's addresses."""
    out: list[Route] = []
    for link, addr in ns.addresses():
        iface = addr.interface
        if not link.up and link.kind != "loopback":
            if link.kind == "dummy":
                # fib_add_ifaddr adds the local route before it checks IFF_UP: the addresses
                # of a dummy that was never brought up (kube-ipvs0) are local addresses
                plen = 32 if iface.version == 4 else 128
                out.append(Route(ipaddress.ip_network(f"{iface.ip}/{plen}"), link.name, table=255,
                                 type="local", scope="host", proto="kernel",
                                 src=iface.ip if iface.version == 4 else None))
            continue
        if iface.version == 4:
            if link.kind == "loopback":
                out.append(Route(iface.network, "lo", table=255, type="local", scope="host",
                                 proto="kernel", src=iface.ip))
                continue
            out.append(Route(ipaddress.ip_network(f"{iface.ip}/32"), link.name, table=255, type="local",
                             scope="host", proto="kernel", src=iface.ip))
            if iface.network.prefixlen < 31:
                out.append(Route(ipaddress.ip_network(f"{iface.network.broadcast_address}/32"), link.name,
                                 table=255, type="broadcast", scope="link", proto="kernel", src=iface.ip))
            if iface.network.prefixlen < 32 and addr.scope != "host":
                out.append(Route(iface.network, link.name, src=iface.ip, scope="link", proto="kernel"))
        else:
            out.append(Route(ipaddress.ip_network(f"{iface.ip}/128"), link.name if link.kind != "loopback" else "lo",
                             table=255, type="local", scope="host", proto="kernel"))
            if iface.network.prefixlen < 128 and not iface.ip.is_loopback:
                out.append(Route(iface.network, link.name, scope="global", proto="kernel", metric=256))
    return out


def _route_key(r: Route) -> tuple:
    return (r.table, r.type, r.dst, r.dev if r.type != "local" else None, r.metric)


def effective_routes(ns: Netns) -> list[Route]:
    """Configured routes plus the kernel's own, without duplicates."""
    if ns.routes_complete:
        return list(ns.routes)
    seen = set()
    out = []
    for r in list(ns.routes) + kernel_routes(ns):
        key = _route_key(r)
        if key in seen:
            continue
        seen.add(key)
        out.append(r)
    return out


def tables_of(ns: Netns) -> RoutingTables:
    return ns.cached("routing", lambda: RoutingTables(ns))


def route_get(ns: Netns, dst: str | IPAddress, src: str | IPAddress | None = None,
              iif: Optional[str] = None, mark: int = 0) -> RouteResult:
    """`ip route get` for a namespace (from the model)."""
    dst_ip = ipaddress.ip_address(dst) if isinstance(dst, str) else dst
    src_ip = ipaddress.ip_address(src) if isinstance(src, str) else src
    result = tables_of(ns).lookup(dst_ip, src_ip, iif, None, mark)
    if iif is not None and dst_ip.version == 4 and result.type not in ("local", "broadcast") \
            and not dst_ip.is_multicast and not forwarding(ns, iif):
        # ip_route_input_slow: past the local and broadcast cases, a device that does not
        # forward answers -EHOSTUNREACH, whatever the route (or its absence) says
        return RouteResult(dst_ip, "unreachable", table=result.table, rule=result.rule,
                           error="No route to host")
    return result


def forwarding(ns: Netns, dev: str) -> bool:
    """IN_DEV_FORWARD: the device's own net.ipv4.conf.DEV.forwarding when it is set, else
    ip_forward (writing ip_forward or conf.all.forwarding sets every device's)."""
    own = ns.sysctls.get(f"net.ipv4.conf.{dev}.forwarding")
    if own is not None:
        return own not in ("0", "")
    return ns.sysctl_on("net.ipv4.ip_forward") or ns.sysctl_on("net.ipv4.conf.all.forwarding")
