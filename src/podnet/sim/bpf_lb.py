"""The eBPF load-balancer's programs, over the maps of `state.SocketLB`.

What Cilium's kube-proxy replacement runs, reduced to its decisions:

    sock_xlate_fwd   bpf_sock.c __sock4_xlate_fwd: cgroup connect4/sendmsg4 (and v6)
                     rewrite a socket's destination from a service frontend to a backend
    sock_xlate_rev   bpf_sock.c __sock4_xlate_rev: recvmsg4/getpeername4 show the
                     frontend again (from the per-socket reverse entry, cilium_lb4_reverse_sk)
    nodeport_lb      bpf_host from-netdev nodeport_lb4: NodePort / LoadBalancer /
                     externalIPs traffic arriving on a NIC, DNAT (+ SNAT for a remote backend)

Lookups follow lib/lb.h: `lookup_service` reads the master entry (slot 0) of a
frontend, switching to the internal scope for two-scope services when asked;
`pick_backend` draws a slot 1..count (a branch point) and follows it to the
backend map. The walker (podnet.sim.walk) records the hops.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Callable, Optional

from ..linux.render import hostport
from ..linux.state import (IDENTITY_HOST, IDENTITY_REMOTE_NODE, LB_SCOPE_EXT, LB_SCOPE_INT, IPAddress,
                           LBBackend, LBKey, LBService, SocketLB)

PROTO_NAMES = {"tcp": "TCP", "udp": "UDP", "sctp": "SCTP"}


def key_text(key: LBKey) -> str:
    """lbmap Service4Key.String(): `10.96.0.10:53/UDP (0)`, `/i` for the internal scope."""
    scope = "/i" if key.scope == LB_SCOPE_INT else ""
    return f"{hostport(key.address, key.dport)}/{PROTO_NAMES.get(key.proto, 'ANY')}{scope} ({key.backend_slot})"


def backend_text(b: LBBackend) -> str:
    return f"{hostport(b.address, b.port)}/{PROTO_NAMES.get(b.proto, 'ANY')}"


def flags_text(svc: LBService) -> str:
    """loadbalancer.ServiceFlags.String(): `ClusterIP, non-routable`, `NodePort, Local, two-scopes`..."""
    out = [svc.svc_type]
    f = svc.flags
    if "ext-local" in f:
        out.append("Local")
    if "int-local" in f:
        out.append("InternalLocal")
    if "two-scopes" in f:
        out.append("two-scopes")
    if "affinity" in f:
        out.append("sessionAffinity")
    if "routable" not in f:
        out.append("non-routable")
    if "source-range" in f:
        out.append("check source-range")
    return ", ".join(out)


def lookup_service(lb: SocketLB, key: LBKey, scope_switch: bool) -> Optional[tuple[LBKey, LBService]]:
    """lb4_lookup_service: the master entry of a frontend (external scope first; the
    internal one for a two-scope service when `scope_switch`, i.e. from inside the node)."""
    k = key._replace(scope=LB_SCOPE_EXT, backend_slot=0)
    svc = lb.services.get(k)
    if svc is None:
        return None
    if scope_switch and "two-scopes" in svc.flags:
        k = k._replace(scope=LB_SCOPE_INT)
        svc = lb.services.get(k)
        if svc is None:
            return None
    return k, svc


def _wildcard_lookup(lb: SocketLB, key: LBKey, include_remote_hosts: bool, in_hostns: bool):
    """sock4_wildcard_lookup: a NodePort reached at a node's own (or, for connect, a remote
    node's) address or at loopback uses the surrogate 0.0.0.0:port entry."""
    lo, hi = lb.nodeport_range
    if not lo <= key.dport <= hi:
        return None
    identity = lb.ipcache.get(key.address)
    if not ((in_hostns and key.address.is_loopback) or identity == IDENTITY_HOST
            or (include_remote_hosts and identity == IDENTITY_REMOTE_NODE)):
        return None
    any_addr = ipaddress.ip_address("0.0.0.0" if key.address.version == 4 else "::")
    hit = lookup_service(lb, key._replace(address=any_addr), True)
    if hit is None or hit[1].svc_type != "NodePort":
        return None
    return hit


@dataclass
class Selection:
    """A backend picked for a frontend."""
    key: LBKey                      # the master key that matched (scope included)
    svc: LBService
    slot: int = 0
    backend_id: int = 0
    backend: Optional[LBBackend] = None
    how: str = ""                   # what led there (wildcard lookup, scope switch)
    error: str = ""                 # errno / drop reason when nothing was picked
    snat: Optional[IPAddress] = None    # tc: the source address for a remote backend


def pick_backend(lb: SocketLB, sel: Selection, choose: Callable, branch: str) -> Selection:
    """sock_select_slot % count + 1, __lb4_lookup_backend_slot, __lb4_lookup_backend."""
    n = sel.svc.count
    slots = [lb.services.get(sel.key._replace(backend_slot=i)) for i in range(1, n + 1)]
    labels = []
    for s in slots:
        b = lb.backends.get(s.backend_id) if s is not None else None
        labels.append(str(b.address) if b is not None else "no backend")
    i = choose(branch, [(label, 1 / n) for label in labels])
    sel.slot = i + 1
    entry = slots[i]
    if entry is None:
        sel.error = "ENOENT (no backend slot)"
        return sel
    sel.backend_id = entry.backend_id
    sel.backend = lb.backends.get(entry.backend_id)
    if sel.backend is None:
        sel.error = f"ENOENT (backend {entry.backend_id} not found)"
    return sel


def sock_xlate_fwd(lb: SocketLB, addr: IPAddress, port: int, proto: str, in_hostns: bool,
                   choose: Callable) -> Optional[Selection]:
    """__sock4_xlate_fwd. None: not a service (the socket proceeds untouched); otherwise
    the selection, with `error` set when connect() fails (EHOSTUNREACH: no backends) or
    when the translation is skipped (EPERM: an external IP that is not this host's)."""
    key = LBKey(addr, port, proto)
    hit = lookup_service(lb, key, True)
    how = ""
    if hit is None:
        hit = _wildcard_lookup(lb, key, True, in_hostns)
        how = f"wildcard lookup: {addr} is {'loopback' if addr.is_loopback else 'a node address'}"
    if hit is None:
        return None
    k, svc = hit
    if k.scope == LB_SCOPE_INT:
        how = (how + "; " if how else "") + "two-scope service: the internal scope"
    sel = Selection(k, svc, how=how)
    if svc.svc_type == "ExternalIPs" and lb.ipcache.get(addr) != IDENTITY_HOST:
        sel.error = "EPERM (an external IP that is not this host's: not translated)"
        return sel
    if svc.count == 0:
        sel.error = "EHOSTUNREACH"
        return sel
    return pick_backend(lb, sel, choose, f"socket-lb:{hostport(addr, port)}")


def sock_xlate_rev(lb: SocketLB, orig: tuple, in_hostns: bool) -> Optional[tuple[IPAddress, int]]:
    """__sock4_xlate_rev: the frontend a reverse entry (address, port, proto, rev_nat_index)
    names, if that service still exists with the same id (else the entry is stale)."""
    addr, port, proto, rev = orig
    key = LBKey(addr, port, proto)
    hit = lookup_service(lb, key, True) or _wildcard_lookup(lb, key, True, in_hostns)
    if hit is None or hit[1].rev_nat_index != rev:
        return None
    return addr, port


def nodeport_lb(lb: SocketLB, src: IPAddress, dst: IPAddress, dport: int, proto: str,
                choose: Callable) -> Optional[Selection]:
    """nodeport_lb4 at tc ingress of a NIC: only routable frontends (NodePort at a node
    address, LoadBalancer VIPs, external IPs), external scope (externalTrafficPolicy
    Local keeps only this node's backends there). A remote backend gets the node's
    address as source (SNAT), so the answer comes back through this node."""
    hit = lookup_service(lb, LBKey(dst, dport, proto), False)
    if hit is None or "routable" not in hit[1].flags:
        return None
    k, svc = hit
    sel = Selection(k, svc)
    if "source-range" in svc.flags:
        ranges = lb.source_ranges.get(svc.rev_nat_index, [])
        if not any(src in net for net in ranges if net.version == src.version):
            sel.error = f"DROP_NOT_IN_SRC_RANGE ({src} is not in loadBalancerSourceRanges)"
            return sel
    if svc.count == 0:
        sel.error = "DROP_NO_SERVICE (no backend" + (" on this node" if "ext-local" in svc.flags else "") + ")"
        return sel
    pick_backend(lb, sel, choose, f"tc-lb:{hostport(dst, dport)}")
    if sel.backend is not None and sel.backend.address not in lb.endpoints:
        sel.snat = lb.nodeport_addrs.get(dst.version)
    return sel
