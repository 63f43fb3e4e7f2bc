"""eBPF service load-balancing the way Cilium's kube-proxy replacement does it.

The agent turns Services and EndpointSlices (here: the shared proxy model,
podnet.proxy.model) into BPF maps that the node's programs read:

    cilium_lb4_services_v2   key (frontend address, port, proto, scope, backend slot).
                             Slot 0 is the master entry: backend count, service type and
                             flags, the service id (rev NAT index), the affinity timeout.
                             Slots 1..count each hold one backend id (values have a fixed
                             size, so a service's backends are spread over several keys).
    cilium_lb4_backends_v3   backend id -> address, port, proto, state
    cilium_lb4_reverse_nat   service id -> frontend (for replies of tc-NATed traffic)
    cilium_lb4_source_range  service id -> loadBalancerSourceRanges

and the same with lb6 for IPv6. The programs (podnet.sim.bpf_lb, walked by the
simulator): the cgroup hooks connect4/sendmsg4 rewrite a socket's destination
from a frontend to a backend before any packet exists, recvmsg4/getpeername4
show the frontend again; bpf_host at tc ingress of the node's NIC load-balances
NodePort, LoadBalancer and externalIPs traffic from outside (DNAT, plus SNAT to
the node when the backend is on another node; externalTrafficPolicy Local keeps
only local backends in the external scope, so the client address survives).

Frontends per Service port, as pkg/service creates them: the ClusterIP
(non-routable: not served from outside), a NodePort at each node address
(--nodeport-addresses) plus the surrogate 0.0.0.0:port the wildcard lookup uses,
each external IP, each LoadBalancer VIP. A Service whose external and internal
traffic policies differ gets two scopes: external (`LB_SCOPE_EXT`) and internal
(`/i`, what in-cluster clients use).

`bpf_lb_list(lb)` and `service_list(lb)` print the maps as `cilium-dbg bpf lb
list` and `cilium-dbg service list` do (`podnet render bpf-lb|cilium-svc`).
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional

from ..linux.state import (IDENTITY_HOST, IDENTITY_REMOTE_NODE, LB_SCOPE_EXT, LB_SCOPE_INT, LBBackend,
                           LBKey, LBService, SocketLB)
from ..sim.bpf_lb import PROTO_NAMES, backend_text, flags_text, key_text
from .model import EndpointInfo, ProxyView, ServicePortInfo, proxy_view


def _frontends(view: ProxyView, svc: ServicePortInfo) -> list[tuple[str, object, int, bool]]:
    """(service type, address, port, routable) of each frontend of one Service port."""
    ip = ipaddress.ip_address
    out: list[tuple[str, object, int, bool]] = [("ClusterIP", ip(svc.cluster_ip), svc.port, False)]
    if svc.node_port:
        npa = view.node_port_addresses_of()
        for addr in npa.get_node_ips(view.node.ips.get(view.family, ())):
            out.append(("NodePort", ip(addr), svc.node_port, True))
        out.append(("NodePort", ip("0.0.0.0" if view.family == 4 else "::"), svc.node_port, False))
    for addr in svc.external_ips:
        out.append(("ExternalIPs", ip(addr), svc.port, True))
    for addr in svc.load_balancer_vips:
        out.append(("LoadBalancer", ip(addr), svc.port, True))
    return out


class _Builder:
    """Fills one node's maps; ids are allocated in the order services are seen, as the
    agent's ID allocators do (service ids and backend ids from their own pools)."""

    def __init__(self, lb: SocketLB):
        self.lb = lb
        self.backend_ids: dict[tuple, int] = {}

    def backend(self, ep: EndpointInfo, proto: str) -> int:
        key = (ipaddress.ip_address(ep.ip), ep.port, proto)
        bid = self.backend_ids.get(key)
        if bid is None:
            bid = len(self.backend_ids) + 1
            self.backend_ids[key] = bid
            self.lb.backends[bid] = LBBackend(key[0], ep.port, proto,
                                              "terminating" if ep.terminating else "active")
        return bid

    def add(self, view: ProxyView, svc: ServicePortInfo) -> None:
        lb = self.lb
        cat = view.categorize(svc.name)
        proto = svc.protocol.lower()
        for svc_type, addr, port, routable in _frontends(view, svc):
            rev = len(lb.rev_nat) + 1
            lb.rev_nat[rev] = (addr, port)
            lb.names[rev] = svc.name_string
            external = svc_type != "ClusterIP"
            ext_local = external and svc.external_policy_local
            int_local = svc.internal_policy_local
            flags = set()
            if routable:
                flags.add("routable")
            if ext_local:
                flags.add("ext-local")
            if int_local:
                flags.add("int-local")
            if svc.client_ip_affinity:
                flags.add("affinity")
            if svc_type == "LoadBalancer" and svc.load_balancer_source_ranges:
                flags.add("source-range")
                lb.source_ranges[rev] = [ipaddress.ip_network(c, strict=False)
                                         for c in svc.load_balancer_source_ranges]
            scopes = {LB_SCOPE_EXT: cat.local if (ext_local if external else int_local) else cat.cluster}
            if external and ext_local != int_local:
                flags.add("two-scopes")
                scopes[LB_SCOPE_INT] = cat.local if int_local else cat.cluster
            for scope, endpoints in scopes.items():
                ids = [self.backend(ep, proto) for ep in endpoints]
                lb.services[LBKey(addr, port, proto, scope, 0)] = LBService(
                    0, len(ids), rev, svc_type, frozenset(flags),
                    svc.sticky_max_age_seconds if svc.client_ip_affinity else 0)
                for slot, bid in enumerate(ids, 1):
                    lb.services[LBKey(addr, port, proto, scope, slot)] = LBService(bid, 0, rev)


def render(views: Iterable[ProxyView], *, host_ips: Iterable = (), remote_node_ips: Iterable = (),
           endpoints: Iterable = (), nodeport_range: tuple[int, int] = (30000, 32767),
           lb: Optional[SocketLB] = None) -> SocketLB:
    """One node's eBPF load-balancer maps from its proxy views (one per IP family).

    `host_ips` and `remote_node_ips` fill the ipcache identities the wildcard NodePort
    lookup needs; `endpoints` are this node's pod addresses (cilium_lxc), which tell the
    tc program whether a backend is local."""
    lb = lb or SocketLB(nodeport_range=nodeport_range)
    lb.nodeport_range = nodeport_range
    for ip in remote_node_ips:
        lb.ipcache[ipaddress.ip_address(str(ip))] = IDENTITY_REMOTE_NODE
    for ip in host_ips:
        lb.ipcache[ipaddress.ip_address(str(ip))] = IDENTITY_HOST
    lb.endpoints.update(ipaddress.ip_address(str(ip)) for ip in endpoints)
    builder = _Builder(lb)
    for view in views:
        if view.node_ip:
            lb.nodeport_addrs[view.family] = ipaddress.ip_address(view.node_ip)
        for svc in view.services.values():
            builder.add(view, svc)
    return lb


def install(ctx) -> None:
    """podnet.proxy.install's hook: the cilium agent's maps on one node (both families
    in one set of id pools, as the agent keeps them), in the node's root namespace,
    whose cgroup programs also serve the pods (they hang off the root cgroup)."""
    cluster = ctx.dp.cluster
    views = [proxy_view(cluster, ctx.node.name, family) for family in ctx.cfg.families]
    host_ips = [a.ip for _, a in ctx.ns.addresses() if not a.ip.is_loopback]
    remote = [ip for node in cluster.nodes if node.name != ctx.node.name for ip in node.internal_ips]
    pod_ips = [ip for pod, _ in ctx.pods() for ip in pod.pod_ips]
    ctx.ns.socket_lb = render(views, host_ips=host_ips, remote_node_ips=remote, endpoints=pod_ips,
                              nodeport_range=tuple(ctx.cfg.node_port_range))


# ---------------------------------------------------------------------------
# As the cilium CLI prints it
# ---------------------------------------------------------------------------

def _tabwriter(rows: list[list[str]], minwidth: int = 5, padding: int = 3) -> str:
    """Go's tabwriter.NewWriter(w, 5, 0, 3, ' ', 0) over tab-terminated cells (trailing
    blanks dropped)."""
    widths: list[int] = []
    for row in rows:
        for i, cell in enumerate(row):
            w = max(minwidth, len(cell) + padding)
            if i == len(widths):
                widths.append(w)
            else:
                widths[i] = max(widths[i], w)
    return "\n".join("".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows)


def _key_order(k: LBKey):
    return (k.address.version, k.address, k.dport, k.proto, k.scope, k.backend_slot)


def bpf_lb_list(lb: SocketLB) -> str:
    """`cilium-dbg bpf lb list`: every key of the services maps with its master or
    backend entry (the CLI prints a Go map; here keys are sorted)."""
    rows = [["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"]]
    for key in sorted(lb.services, key=_key_order):
        val = lb.services[key]
        if key.backend_slot == 0:
            zero = "[::]" if key.address.version == 6 else "0.0.0.0"
            entry = f"{zero}:0 ({val.rev_nat_index}) (0) [{flags_text(val)}]"
        elif val.backend_id not in lb.backends:
            entry = f"backend {val.backend_id} not found"
        else:
            entry = f"{backend_text(lb.backends[val.backend_id])} ({val.rev_nat_index}) ({key.backend_slot})"
        rows.append([key_text(key), entry])
    return _tabwriter(rows)


def bpf_lb_revnat(lb: SocketLB) -> str:
    """`cilium-dbg bpf lb list --revnat`."""
    rows = [["ID", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"]]
    for rev in sorted(lb.rev_nat):
        addr, port = lb.rev_nat[rev]
        rows.append([str(rev), f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"])
    return _tabwriter(rows)


def service_list(lb: SocketLB) -> str:
    """`cilium-dbg service list`: one row per frontend (service id) with its backends
    (those of the internal scope for a two-scope service: all of them)."""
    masters: dict[int, tuple[LBKey, LBService]] = {}
    for key, val in lb.services.items():
        if key.backend_slot != 0:
            continue
        if val.rev_nat_index not in masters or key.scope == LB_SCOPE_INT:
            masters[val.rev_nat_index] = (key, val)
    rows = [["ID", "Frontend", "Service Type", "Backend"]]
    for rev in sorted(masters):
        key, val = masters[rev]
        front = f"[{key.address}]:{key.dport}" if key.address.version == 6 else f"{key.address}:{key.dport}"
        front += f"/{PROTO_NAMES.get(key.proto, 'ANY')}"
        backends = []
        for slot in range(1, val.count + 1):
            entry = lb.services.get(key._replace(backend_slot=slot))
            b = lb.backends.get(entry.backend_id) if entry is not None else None
            if b is not None:
                backends.append(f"{slot} => {backend_text(b)} ({b.state})")
        rows.append([str(rev), front, val.svc_type, backends[0] if backends else ""])
        rows += [["", "", "", more] for more in backends[1:]]
    return _tabwriter(rows)
