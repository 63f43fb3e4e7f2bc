"""What plugins do to links, addresses, routes and sysctls, on the model.

Each helper mirrors a function of containernetworking/plugins' pkg/ip and
pkg/ipam (named in its docstring) so plugins read like their Go originals and
share one implementation: veth creation, interface configuration from a result,
host routes, forwarding, link deletion and the CHECK validations.

Names and MACs are deterministic: a host veth is "veth" + 8 hex digits of the
container id's hash (upstream draws them at random), MACs come from
`state.stable_mac` unless the runtime asks for one.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Iterable, Optional

from ...linux.state import DataplaneState, IPAddress, IPInterface, Link, Netns, Route
from ..spec import Call, IPConfig, Result, RouteEntry, fail

# Where traffic-control facts are kept (Netns.files keys), see plugins.bandwidth.
TC_FACTS = "/run/podnet/tc"
SCOPE_NAMES = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}


def any_network(version: int):
    return ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")


def is_global_unicast(ip: IPAddress) -> bool:
    """Go's IP.IsGlobalUnicast."""
    return not (ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip.is_link_local
                or (ip.version == 4 and ip == ipaddress.IPv4Address("255.255.255.255")))


def host_prefix(ip: IPAddress) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")


# ------------------------------------------------------------------- links

def veth_name(host: Netns, container_id: str, ifname: str = "eth0", prefix: str = "veth") -> str:
    """ip.RandomVethName, made deterministic: `prefix` + 8 hex digits of the container
    id's hash; a name already taken on the host (another interface of the same
    container) moves on to the next hash, as upstream retries on EEXIST."""
    seed = container_id
    for attempt in range(16):
        name = prefix + hashlib.sha256(seed.encode()).hexdigest()[:8]
        if name not in host.links:
            return name
        seed = f"{container_id}/{ifname}/{attempt}"
    raise fail(f"failed to make veth pair: could not find a free name for {ifname} of {container_id}")


def setup_veth(call: Call, sandbox: Netns, mtu: int = 0, mac: Optional[str] = None,
               host_name: Optional[str] = None) -> tuple[Link, Link]:
    """ip.SetupVeth: a veth pair, CNI_IFNAME in the container and the host end in the
    host namespace, both up. Returns (host link, container link)."""
    if call.ifname in sandbox.links:
        raise fail(f"container veth name provided ({call.ifname}) already exists")
    host = call.host.ns
    name = host_name or veth_name(host, call.container_id, call.ifname)
    cont, peer = call.state.connect_veth(sandbox, call.ifname, host, name, mtu=mtu or 1500,
                                         mac_a=mac.lower() if mac else None)
    return peer, cont


def link_set_up(ns: Netns, link: Link) -> None:
    """`ip link set up`; on loopback the kernel then holds 127.0.0.1/8 and ::1."""
    link.up = True
    if link.kind == "loopback":
        for cidr in ("127.0.0.1/8", "::1/128"):
            if not any(str(a.interface) == cidr for a in link.addresses):
                link.add_address(cidr, "host")
    ns.invalidate()


def delete_link(state: DataplaneState, ns: Netns, name: str) -> Optional[list[IPInterface]]:
    """ip.DelLinkByNameAddr: delete `name` (a veth takes its peer with it) and return
    its global unicast addresses; None when there is no such link. The kernel drops
    the routes, neighbours and FDB entries of the deleted devices."""
    link = ns.links.get(name)
    if link is None:
        return None
    addrs = [a.interface for a in link.addresses if is_global_unicast(a.ip)]
    gone = [(ns, name)]
    peer = state.veth_peer(ns, link)
    if peer is not None:
        gone.append((peer[0], peer[1].name))
    for where, dev in gone:
        where.links.pop(dev, None)
        where.routes = [r for r in where.routes if r.dev != dev and not any(nh.dev == dev for nh in r.nexthops)]
        where.neighbours = [n for n in where.neighbours if n.dev != dev]
        where.fdb = [e for e in where.fdb if e.dev != dev]
        for other in where.links.values():
            if other.master == dev:
                other.master = None
        where.files.pop(f"{TC_FACTS}/{dev}", None)
        where.invalidate()
    return addrs


# ------------------------------------------------------------------- addresses, routes, sysctls

def set_sysctl(ns: Netns, key: str, value: str) -> None:
    ns.sysctls[key] = value


def enable_forward(ns: Netns, ips: Iterable[IPConfig]) -> None:
    """ip.EnableForward: net.ipv4.ip_forward / net.ipv6.conf.all.forwarding for the families used."""
    for version in sorted({ipc.version for ipc in ips}):
        set_sysctl(ns, "net.ipv4.ip_forward" if version == 4 else "net.ipv6.conf.all.forwarding", "1")


def add_address(ns: Netns, link: Link, iface: IPInterface, what: str = "") -> None:
    """netlink.AddrAdd (EEXIST is an error, as for the Go callers)."""
    if any(a.interface == iface for a in link.addresses):
        raise fail(f"failed to add IP addr {what or iface} to {link.name!r}: file exists")
    link.add_address(iface)
    ns.invalidate()


def add_route(ns: Netns, route: Route) -> None:
    """netlink.RouteAdd: a second route with the same key is EEXIST."""
    for r in ns.routes:
        if (r.table, r.dst, r.metric, r.type) == (route.table, route.dst, route.metric, route.type):
            raise fail(f"failed to add route '{route.dst} via {route.via} dev {route.dev}': file exists")
    ns.add_route(route)


def add_host_route(ns: Netns, ip: IPAddress, dev: str) -> None:
    """ip.AddHostRoute: `IP/32 dev DEV scope host` (what `ip route` shows for ptp pods)."""
    dst = host_prefix(ip)
    if any(r.dst == dst and r.dev == dev and r.table == 254 for r in ns.routes):
        return
    ns.add_route(Route(dst, dev, scope="host"))


def route_from_entry(entry: RouteEntry, dev: str, gw: Optional[IPAddress]) -> Route:
    r = Route(entry.dst, dev, via=gw, metric=entry.priority)
    if entry.table is not None:
        r.table = int(entry.table)
    if entry.scope is not None:
        r.scope = SCOPE_NAMES.get(int(entry.scope), str(entry.scope))
    return r


def configure_iface(ns: Netns, ifname: str, result: Result) -> None:
    """ipam.ConfigureIface: set `ifname` up, add the result's addresses that belong to
    it, then the result's routes (a route without gw goes via the family's gateway)."""
    if not result.interfaces:
        raise fail("no interfaces to configure")
    link = ns.links.get(ifname)
    if link is None:
        raise fail(f'failed to lookup "{ifname}": Link not found')
    link_set_up(ns, link)
    gateways: dict[int, IPAddress] = {}
    for ipc in result.ips:
        if ipc.interface is None:
            continue
        if not 0 <= ipc.interface < len(result.interfaces) or result.interfaces[ipc.interface].name != ifname:
            raise fail(f"failed to add IP addr {ipc.address} to {ifname!r}: invalid interface index")
        if ipc.version == 6:
            for dev in ("lo", ifname):
                set_sysctl(ns, f"net.ipv6.conf.{dev}.disable_ipv6", "0")
        add_address(ns, link, ipc.address)
        if ipc.gateway is not None:
            gateways.setdefault(ipc.gateway.version, ipc.gateway)
    for entry in result.routes:
        add_route(ns, route_from_entry(entry, ifname, entry.gw or gateways.get(entry.dst.version)))


# ------------------------------------------------------------------- CHECK

def validate_expected_interface_ips(ns: Netns, ifname: str, ips: Iterable[IPConfig]) -> None:
    """ip.ValidateExpectedInterfaceIPs: every address is on the link and its prefix is routed."""
    link = ns.links.get(ifname)
    if link is None:
        raise fail(f"Cannot find container link {ifname}")
    from ...linux.routing import effective_routes
    routes = effective_routes(ns)
    for ipc in ips:
        if not any(a.interface == ipc.address for a in link.addresses):
            raise fail(f"Failed to match addr {ipc.address} on interface {ifname}")
        if not any(r.dst == ipc.address.network for r in routes):
            raise fail(f"Error trying to find Gateway {ipc.gateway} for interface {ifname}")


def validate_expected_routes(ns: Netns, routes: Iterable[RouteEntry]) -> None:
    """ip.ValidateExpectedRoute: each result route is in the table (dst, and gw when given)."""
    for entry in routes:
        found = [r for r in ns.routes if r.dst == entry.dst and (entry.gw is None or r.via == entry.gw)]
        if len(found) != 1:
            raise fail(f"Expected Route {entry.to_json()} not found in routing table ({len(found)} matches)")


def validate_container_veth(call: Call, sandbox: Netns, expected, plugin: str) -> Link:
    """The container interface of a prevResult exists, is a veth and keeps its MAC."""
    if expected is None or not expected.name:
        raise fail(f"Container interface name missing in prevResult: {call.ifname}")
    if expected.sandbox != call.netns:
        raise fail(f"Sandbox in prevResult {expected.sandbox} doesn't match configured netns: {call.netns}")
    link = sandbox.links.get(expected.name)
    if link is None:
        raise fail(f"{plugin}: Container Interface name in prevResult: {expected.name} not found")
    if link.kind != "veth":
        raise fail(f"Error: Container interface {link.name} not of type veth/p2p")
    if expected.mac and expected.mac != link.mac:
        raise fail(f"{plugin}: Interface {expected.name} Mac {expected.mac} doesn't match container Mac: {link.mac}")
    return link


def container_interface(result: Result, call: Call):
    """The prevResult interface that is CNI_IFNAME in CNI_NETNS."""
    for iface in result.interfaces:
        if iface.name == call.ifname and iface.sandbox == call.netns:
            return iface
    return None
