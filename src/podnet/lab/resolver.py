"""A minimal cluster resolver for kube-dns pods when podnet.dns is not installed.

    answer(query_wire, records, "cluster.local") -> response wire

`records` maps absolute names to {"A": [...], "AAAA": [...], "CNAME": [...]}
(podnet.lab.workloads.dns_records). Names in the cluster zone that are not
there get NXDOMAIN (pod names `a-b-c-d.<ns>.pod.<zone>` answer their address,
as CoreDNS's `pods insecure`); names outside the zone get REFUSED: the lab
has no way out to real resolvers.
"""

from __future__ import annotations

import ipaddress
from typing import Optional

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset

TTL = 30


def _pod_ip(labels: list[str]) -> Optional[str]:
    try:
        if ":" in labels[0] or labels[0].count("-") == 3:
            text = labels[0].replace("-", ".") if labels[0].count("-") == 3 else labels[0]
            return str(ipaddress.ip_address(text))
    except ValueError:
        return None
    try:
        return str(ipaddress.ip_address(labels[0].replace("-", ":")))
    except ValueError:
        return None


def answer(wire: bytes, records: dict, zone: str = "cluster.local", tcp: bool = False) -> Optional[bytes]:
    try:
        query = dns.message.from_wire(wire)
    except dns.exception.DNSException:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA | dns.flags.RA
    if not query.question:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    q = query.question[0]
    name = q.name.to_text().lower()
    zone_name = zone.rstrip(".").lower() + "."
    if not (name == zone_name or name.endswith("." + zone_name)):
        response.flags &= ~dns.flags.AA
        response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire()
    rec = records.get(name)
    if rec is None:
        rel = name[:-len(zone_name) - 1].split(".") if name != zone_name else []
        if len(rel) == 3 and rel[2] == "pod":
            ip = _pod_ip(rel)
            if ip:
                rec = {"A" if ":" not in ip else "AAAA": [ip]}
    if rec is None:
        exists = any(k.endswith("." + name) for k in records) or name == zone_name
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response.to_wire(max_size=65535 if tcp else 512)
    owner = q.name
    if "CNAME" in rec:
        target = dns.name.from_text(rec["CNAME"][0])
        response.answer.append(dns.rrset.from_text_list(owner, TTL, dns.rdataclass.IN, dns.rdatatype.CNAME,
                                                        [target.to_text()]))
        return response.to_wire(max_size=65535 if tcp else 512)
    rtype = dns.rdatatype.to_text(q.rdtype)
    if rtype in ("A", "AAAA") and rec.get(rtype):
        response.answer.append(dns.rrset.from_text_list(owner, TTL, dns.rdataclass.IN, q.rdtype, rec[rtype]))
    try:
        return response.to_wire(max_size=65535 if tcp else 512)
    except dns.exception.TooBig:
        response.answer = []
        response.flags |= dns.flags.TC
        return response.to_wire()
