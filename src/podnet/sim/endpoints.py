"""Turn what a user types after --from / --to into namespaces and addresses.

Common to snapshot and cluster traces:
    IP, IP@NETNS, @NETNS                 (--from)
    IP:PORT[/proto], [IPv6]:PORT[/proto]  (--to)
Cluster traces add pod/NAME, node/NAME, svc/NAME[:port] (podnet.dataplane.resolve).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Optional

from ..errors import InputError
from ..linux.state import DataplaneState, IPAddress

PROTOCOLS = ("tcp", "udp", "sctp", "icmp", "icmpv6")


@dataclass
class Source:
    ns: str
    ip: Optional[IPAddress]         # None: chosen by the route, as the kernel does
    inject_iface: Optional[str] = None
    label: str = ""


@dataclass
class Destination:
    ip: IPAddress
    port: Optional[int]
    proto: Optional[str]
    label: str = ""
    # set when the destination came from a DNS name: (server IP, port, number of queries)
    dns_server: Optional[tuple] = None


def split_proto(text: str) -> tuple[str, Optional[str]]:
    if "/" in text:
        head, _, tail = text.rpartition("/")
        if tail.lower() in PROTOCOLS:
            return head, tail.lower()
    return text, None


def parse_port(text: str, field: str = "--to") -> int:
    """A destination port as typed: 1-65535."""
    port = int(text) if text.isdigit() else 0
    if not 0 < port <= 65535:
        raise InputError(f"expected a port number (1-65535), got {text!r}", field=field)
    return port


def split_hostport(text: str) -> tuple[str, Optional[str]]:
    """`10.96.0.10:53`, `[fd00::a]:53`, `10.96.0.10`, `fd00::a` -> (host, port text or None)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            return text, None           # not [HOST]:PORT: no address either
        return host, (rest[1:] if rest else None)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, port
    return text, None


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_hostport(text: str) -> tuple[IPAddress, Optional[int]]:
    """`10.96.0.10:53`, `[fd00::a]:53`, `10.96.0.10` (no port)."""
    host, port = split_hostport(text)
    if not is_ip(host):
        raise InputError(f"expected IP[:PORT], got {text!r}", field="--to")
    return ipaddress.ip_address(host), (parse_port(port) if port is not None else None)


def owner_of(state: DataplaneState, ip: IPAddress) -> Optional[str]:
    """The namespace that has `ip` configured (not on loopback), preferring pods, then nodes."""
    found = []
    for ns in state.namespaces.values():
        for link, addr in ns.addresses():
            if addr.ip == ip and link.kind != "loopback" and link.kind != "dummy":
                found.append(ns)
    if not found:
        return None
    order = {"pod": 0, "node": 1}
    return sorted(found, key=lambda n: (order.get(n.kind, 2), n.name))[0].name


def resolve_source(state: DataplaneState, text: str) -> Source:
    if text.startswith("@"):
        name = text[1:]
        if name not in state.namespaces:
            raise InputError(f"no network namespace named {name!r}", field="--from")
        return Source(name, None, label=f"from netns {name}")
    ip_text, _, ns_part = text.partition("@")
    if ip_text.startswith("ip/"):
        ip_text = ip_text[3:]
    try:
        ip = ipaddress.ip_address(ip_text)
    except ValueError:
        raise InputError(f"expected IP[@NETNS[/IFACE]] or @NETNS, got {text!r}", field="--from") from None
    if ns_part:
        ns_name, _, iface = ns_part.partition("/")
        ns = state.namespaces.get(ns_name)
        if ns is None:
            raise InputError(f"no network namespace named {ns_name!r}", field="--from")
        local = any(a.ip == ip for _, a in ns.addresses())
        if not local and not iface:
            # an address the namespace does not own arrives from outside: pick its first NIC
            iface = next((l.name for l in ns.links.values() if l.kind != "loopback"), None)
        return Source(ns_name, ip, None if local else iface, label=f"from {ip} in {ns_name}")
    owner = owner_of(state, ip)
    if owner is None:
        raise InputError(f"no namespace owns {ip}; say where it enters: {ip}@NETNS[/IFACE]", field="--from")
    return Source(owner, ip, label=f"from {ip} ({owner})")


def resolve_destination(text: str, proto: Optional[str]) -> Destination:
    body, p = split_proto(text)
    if body.startswith("ip/"):
        body = body[3:]
    ip, port = parse_hostport(body)
    return Destination(ip, port, p or proto, label=text)
