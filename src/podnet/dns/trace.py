"""Names in traces: `podnet trace --from pod/A --to web.default:80`.

The name is resolved as the source pod's resolver would (its resolv.conf,
search list and ndots, answered by podnet's DNS server); the queries are shown,
and the trace command then walks one query through the dataplane (pod ->
kube-dns ClusterIP -> a coredns pod) before the connection itself.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import dns.rdatatype

from ..errors import InputError
from ..sim.endpoints import Destination, parse_port
from .client import cluster_dns_ip, format_lookup, resolve_for_pod


def split_name_port(body: str) -> tuple[str, Optional[int]]:
    name, sep, port = body.rpartition(":")
    if sep and ":" not in name:         # NAME:PORT (a name has no colon)
        return name, parse_port(port)
    return body, None


def resolve_for_trace(dp, src, body: str, proto: str):
    """(Destination, explanation) for a DNS name, or None if `body` is not a name."""
    name, port = split_name_port(body)
    if not name or "/" in name or not any(c.isalpha() for c in name):
        return None
    ns = dp.state.namespaces.get(src.ns)
    pod = dp.cluster.pod(ns.pod) if ns is not None and ns.pod else None
    if pod is None:
        raise InputError(f"{name!r} is a DNS name: only pods resolve cluster names (their resolv.conf points "
                         "at kube-dns); give --from pod/NAME, or an IP address as --to", field="--to")
    lookup = resolve_for_pod(dp.cluster, pod, name, "A")
    text = format_lookup(lookup, pod)
    answer = lookup.queries[lookup.answered_by - 1] if lookup.answered_by else None
    ips = [ipaddress.ip_address(r.address) for rrset in (answer.answer if answer else [])
           if rrset.rdtype == dns.rdatatype.A for r in rrset]
    if not ips:
        statuses = ", ".join(q.status for q in lookup.queries)
        raise InputError(f"{name!r} does not resolve to a cluster address from pod {pod.key} "
                         f"({len(lookup.queries)} queries: {statuses}); see "
                         f"`podnet dns resolve --pod {pod.name} {name}`", field="--to")
    server = lookup.conf.nameservers[0] if lookup.conf.nameservers else cluster_dns_ip(dp.cluster)
    dst = Destination(ips[0], port, proto, label=f"{name} ({ips[0]})")
    dst.dns_server = (ipaddress.ip_address(server), 53, len(lookup.queries))
    note = text + (f"\n{name} has {len(ips)} addresses; tracing to the first" if len(ips) > 1 else "")
    return dst, note
