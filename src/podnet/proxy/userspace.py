"""kube-proxy's historical userspace mode (pkg/proxy/userspace, Kubernetes <= 1.25).

For every Service port kube-proxy opens a proxy port of its own (a "portal"
socket on --bind-address, 0.0.0.0: any interface) and points netfilter at it:

    nat PREROUTING  -> KUBE-PORTALS-CONTAINER   traffic from pods / other hosts:
                       -d CLUSTER_IP/32 -p tcp --dport PORT -j REDIRECT --to-ports PROXY_PORT
    nat OUTPUT      -> KUBE-PORTALS-HOST        traffic from the node itself:
                       -d CLUSTER_IP/32 -p tcp --dport PORT -j DNAT --to-destination NODE_IP:PROXY_PORT
    nat PREROUTING  -> KUBE-NODEPORT-CONTAINER  (-m addrtype --dst-type LOCAL, last)  --dport NODE_PORT REDIRECT
    nat OUTPUT      -> KUBE-NODEPORT-HOST       (-m addrtype --dst-type LOCAL, last)  --dport NODE_PORT DNAT
    filter INPUT    -> KUBE-NODEPORT-NON-LOCAL  --dport PROXY_PORT -m state --state NEW -j ACCEPT

(REDIRECT for the containers' side because it sends the packet to the primary
address of the incoming interface, so the answer leaves the same way; DNAT to the
node's address for the host's side, because REDIRECT on local packets goes to
127.0.0.1 and the answer would come from another address — upstream's comments.)
External IPs get the container rule twice (`! --physdev-is-in`, and
`--dst-type LOCAL`) and a `--dst-type LOCAL` host rule; LoadBalancer ingress IPs
are portals like the ClusterIP.

The proxy itself accepts each connection and opens a new one to an endpoint,
round robin (LoadBalancerRR), copying the bytes both ways: in podnet's state it is
a `Listener` with `relay_to` (the ready endpoints), which the simulator follows
(podnet.sim.walk `_relay`). Upstream picks proxy ports at random (the kernel's
ephemeral range when --proxy-port-range is empty); podnet derives them from a hash
of the Service port name, so every run gives the same ports. Upstream's proxier
is single-stack: the cluster's first IP family.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Optional

from ..linux.state import Listener
from .model import ProxyView, ServicePortInfo, join_host_port, proxy_view

CONTAINER_PORTAL = "KUBE-PORTALS-CONTAINER"
HOST_PORTAL = "KUBE-PORTALS-HOST"
CONTAINER_NODEPORT = "KUBE-NODEPORT-CONTAINER"
HOST_NODEPORT = "KUBE-NODEPORT-HOST"
NON_LOCAL_NODEPORT = "KUBE-NODEPORT-NON-LOCAL"

EPHEMERAL_PORTS = (32768, 60999)     # net.ipv4.ip_local_port_range's default

_PLAIN = re.compile(r"^[_\-0-9A-Za-z]+$")


def save_string(value: str) -> str:
    """xtables_save_string: how iptables-save prints a comment (quoted unless plain)."""
    if _PLAIN.match(value):
        return value
    return '"' + re.sub(r'(["\\\'])', r"\\\1", value) + '"'


@dataclass
class UserspaceRules:
    """What the userspace proxier programs: its chains' rules (as iptables-save prints
    them), the jumps into the built-in chains, and the proxy sockets."""
    nat: dict[str, list[str]] = field(default_factory=lambda: {
        CONTAINER_PORTAL: [], HOST_PORTAL: [], CONTAINER_NODEPORT: [], HOST_NODEPORT: []})
    filter: dict[str, list[str]] = field(default_factory=lambda: {NON_LOCAL_NODEPORT: []})
    listeners: list[Listener] = field(default_factory=list)
    proxy_ports: dict[str, int] = field(default_factory=dict)     # ns/name:port -> proxy port

    # (table, chain, rule, prepend) as iptablesInit ensures them
    jumps = [
        ("nat", "PREROUTING", '-m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort '
                              f'rules" -j {CONTAINER_PORTAL}', True),
        ("nat", "OUTPUT", '-m comment --comment "handle ClusterIPs; NOTE: this must be before the NodePort '
                          f'rules" -j {HOST_PORTAL}', True),
        ("nat", "PREROUTING", '-m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; '
                              f'NOTE: this must be the last rule in the chain" -j {CONTAINER_NODEPORT}', False),
        ("nat", "OUTPUT", '-m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; '
                          f'NOTE: this must be the last rule in the chain" -j {HOST_NODEPORT}', False),
        ("filter", "INPUT", '-m comment --comment "Ensure that non-local NodePort traffic can flow" '
                            f'-j {NON_LOCAL_NODEPORT}', True),
    ]

    def restore(self) -> str:
        """The chains and their rules as an iptables-restore payload."""
        out = []
        for table, chains in (("filter", self.filter), ("nat", self.nat)):
            out.append(f"*{table}")
            out += [f":{c} - [0:0]" for c in chains]
            out += [f"-A {c} {r}" for c, rules in chains.items() for r in rules]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def apply(self, builder) -> None:
        builder.add_restore(self.restore())
        for table, chain, rule, prepend in self.jumps:
            builder.jump(table, chain, rule, prepend=prepend)


def _common(dest: Optional[str], port: int, proto: str, comment: str, physdev: bool = False,
            dst_local: bool = False) -> str:
    """iptablesCommonPortalArgs, in iptables-save's order (addresses and protocol first)."""
    p = proto.lower()
    parts = []
    if dest is not None:
        parts.append(f"-d {dest}/{32 if ':' not in dest else 128}")
    parts += [f"-p {p}", f"-m comment --comment {save_string(comment)}", f"-m {p} --dport {port}"]
    if physdev:
        parts.append("-m physdev ! --physdev-is-in")
    if dst_local:
        parts.append("-m addrtype --dst-type LOCAL")
    return " ".join(parts)


class _Ports:
    """Proxy ports: a stable hash of the Service port name into the ephemeral range,
    skipping ports already taken on the node."""

    def __init__(self, taken: set[int], node: str):
        self.taken = set(taken)
        self.node = node

    def allocate(self, name: str) -> int:
        lo, hi = EPHEMERAL_PORTS
        span = hi - lo + 1
        start = int.from_bytes(hashlib.sha256(f"{self.node}/{name}".encode()).digest()[:4], "big") % span
        for i in range(span):
            port = lo + (start + i) % span
            if port not in self.taken:
                self.taken.add(port)
                return port
        raise RuntimeError("no free proxy port")          # pragma: no cover - 28k services


def render(view: ProxyView, *, listen_ip: str = "0.0.0.0", host_ip: Optional[str] = None,
           taken_ports: set[int] = frozenset()) -> UserspaceRules:
    """The userspace proxier's rules and proxy sockets for one node (one IP family)."""
    out = UserspaceRules()
    host_ip = host_ip or view.node_ip
    any_ip = listen_ip in ("0.0.0.0", "::")
    ports = _Ports(set(taken_ports), view.node.name)
    local_addrs = set(view.node.interface_addresses(view.family))

    def container(dest, port, proto, name, proxy_port, physdev=False, dst_local=False) -> str:
        # bound to any address: REDIRECT (to the incoming interface's address), else DNAT to it
        target = (f"-j REDIRECT --to-ports {proxy_port}" if any_ip
                  else f"-j DNAT --to-destination {join_host_port(listen_ip, proxy_port)}")
        return f"{_common(dest, port, proto, name, physdev, dst_local)} {target}"

    def host(dest, port, proto, name, proxy_port, dst_local=False) -> str:
        to = host_ip if any_ip else listen_ip
        return f"{_common(dest, port, proto, name, False, dst_local)} -j DNAT --to-destination " \
               f"{join_host_port(to, proxy_port)}"

    for spn, svc in view.services.items():
        name = svc.name_string
        proto = svc.protocol
        proxy_port = ports.allocate(f"{name}/{proto}")
        out.proxy_ports[name if proto == "TCP" else f"{name}/{proto}"] = proxy_port
        backends = [(ipaddress.ip_address(ep.ip), ep.port) for ep in view.endpoints_of(spn) if ep.ready]
        out.listeners.append(Listener(
            proto.lower(), ipaddress.ip_address(listen_ip), proxy_port,
            f"kube-proxy userspace proxy for {name}" + ("" if backends else " (no endpoints: it closes "
                                                                           "what it accepts)"),
            relay_to=backends, relays=True))
        # openPortal: the ClusterIP, external IPs, LoadBalancer ingress IPs, the NodePort
        portals = [(svc.cluster_ip, False)] + [(ip, True) for ip in svc.external_ips] + \
                  [(ip, False) for ip in svc.load_balancer_vips]
        for ip, external in portals:
            out.nat[CONTAINER_PORTAL].append(container(ip, svc.port, proto, name, proxy_port, physdev=external))
            if external:
                out.nat[CONTAINER_PORTAL].append(container(ip, svc.port, proto, name, proxy_port,
                                                           dst_local=True))
                out.nat[HOST_PORTAL].append(host(ip, svc.port, proto, name, proxy_port, dst_local=True))
            else:
                out.nat[HOST_PORTAL].append(host(ip, svc.port, proto, name, proxy_port))
            if ip in local_addrs:
                ports.taken.add(svc.port)       # claimNodePort: the portal's port held on a local address
        if svc.node_port:
            out.nat[CONTAINER_NODEPORT].append(container(None, svc.node_port, proto, name, proxy_port))
            out.nat[HOST_NODEPORT].append(host(None, svc.node_port, proto, name, proxy_port))
            out.filter[NON_LOCAL_NODEPORT].append(
                f"{_common(None, proxy_port, proto, name)} -m state --state NEW -j ACCEPT")
    return out


def install(ctx) -> None:
    """podnet.proxy.install's hook: the userspace proxier on one node (the cluster's
    first IP family, as upstream's single-stack proxier)."""
    family = ctx.cfg.families[0]
    view = proxy_view(ctx.dp.cluster, ctx.node.name, family)
    taken = {l.port for l in ctx.ns.listeners}
    rules = render(view, listen_ip="0.0.0.0" if family == 4 else "::", taken_ports=taken)
    rules.apply(ctx.iptables if family == 4 else ctx.ip6tables)
    ctx.ns.listeners.extend(rules.listeners)
