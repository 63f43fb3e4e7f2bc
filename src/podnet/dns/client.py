"""The client side: each pod's /etc/resolv.conf, and the queries a glibc-style
resolver sends for one lookup.

    resolv_conf(pod, cluster).text()      what the kubelet writes for the pod
    resolve_for_pod(cluster, pod, "tkng.io")  the queries, each with its answer

resolv.conf follows the kubelet (pkg/kubelet/network/dns): ClusterFirst gives
`search <ns>.svc.<zone> svc.<zone> <zone>`, the cluster DNS (the kube-dns
ClusterIP) and `options ndots:5`; a hostNetwork pod with ClusterFirst falls back
to Default; ClusterFirstWithHostNet always uses the cluster DNS; Default copies
the node's resolver (on a kind node: the docker network's gateway with
`options ndots:0`); None starts empty. spec.dnsConfig is then appended:
nameservers and searches deduplicated, options merged by name (the pod's win),
at most 3 nameservers and 32 search domains.

`resolve_sequence` follows glibc's res_nsearch: a name with a trailing dot is
asked as is, only; a name with at least `ndots` dots is asked as is first, then
with each search domain; otherwise the search domains come first and the name
as is last. A candidate answers when a response is NOERROR with records;
NXDOMAIN and NODATA go on to the next candidate, SERVFAIL too (remembered),
anything else (REFUSED...) ends the search list and only the as-is name is
still tried. Query types: one type (A like `dig +search`, AAAA, SRV, ...), or
ADDR for getaddrinfo(AF_UNSPEC): an A and an AAAA query per candidate, sent
together over one socket (one after the other with `options single-request`);
the candidate answers when either has records.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Optional

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from ..errors import InputError

MAX_NAMESERVERS = 3
MAX_SEARCH = 32
NODE_RESOLVER_OPTIONS = ("ndots:0",)        # docker's embedded-DNS resolv.conf on a kind node
ADDR = "ADDR"                               # getaddrinfo: A + AAAA


@dataclass
class ResolvConf:
    nameservers: list[str] = field(default_factory=list)
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    policy: str = ""                         # how it was made (dnsPolicy and fallbacks)

    def text(self) -> str:
        """The file as containerd writes it: search, nameserver(s), options."""
        lines = []
        if self.search:
            lines.append("search " + " ".join(self.search))
        lines += [f"nameserver {ns}" for ns in self.nameservers]
        if self.options:
            lines.append("options " + " ".join(self.options))
        return "\n".join(lines) + "\n"

    def option(self, name: str) -> Optional[str]:
        """An option's value ('' for flags), None when absent; the last one wins."""
        found = None
        for opt in self.options:
            key, _, value = opt.partition(":")
            if key == name:
                found = value
        return found

    @property
    def ndots(self) -> int:
        value = self.option("ndots")
        try:
            return min(15, max(0, int(value))) if value else 1
        except ValueError:
            return 1

    @classmethod
    def parse(cls, text: str) -> "ResolvConf":
        conf = cls()
        for line in text.splitlines():
            words = line.split("#")[0].split(";")[0].split()
            if not words:
                continue
            if words[0] == "nameserver" and len(words) > 1:
                conf.nameservers.append(words[1])
            elif words[0] in ("search", "domain"):
                conf.search = words[1:]
            elif words[0] == "options":
                conf.options += words[1:]
        return conf


# ---------------------------------------------------------------------------
# resolv.conf per dnsPolicy
# ---------------------------------------------------------------------------

def cluster_dns_ip(cluster) -> str:
    """The kubelet's clusterDNS: the kube-dns ClusterIP (kubeadm: the 10th service IP)."""
    svc = cluster.find_service("kube-system/kube-dns")
    if svc is not None and svc.cluster_ips:
        return str(svc.cluster_ips[0])
    subnet = cluster.config.service_subnet
    return str(ipaddress.ip_address(int(subnet.network_address) + 10))


def node_resolv_conf(cluster) -> ResolvConf:
    """A kind node's /etc/resolv.conf: the docker network's gateway."""
    gateway = cluster.config.underlay[0].gateway if cluster.config.underlay else "127.0.0.11"
    return ResolvConf([str(gateway)], [], list(NODE_RESOLVER_OPTIONS), "Default")


def _dedup(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def resolv_conf(pod, cluster) -> ResolvConf:
    """The /etc/resolv.conf the kubelet gives `pod`."""
    policy = pod.spec.dns_policy
    zone = cluster.config.cluster_domain.rstrip(".")
    if policy == "ClusterFirstWithHostNet" or (policy == "ClusterFirst" and not pod.host_network):
        conf = ResolvConf([cluster_dns_ip(cluster)],
                          [f"{pod.namespace}.svc.{zone}", f"svc.{zone}", zone], ["ndots:5"], policy)
    elif policy == "None":
        conf = ResolvConf(policy="None")
    else:
        conf = node_resolv_conf(cluster)
        conf.policy = "Default" if policy == "Default" else \
            "ClusterFirst on hostNetwork (falls back to Default)"
    extra = pod.spec.dns_config
    if extra is not None:
        conf.nameservers = _dedup(conf.nameservers + list(extra.nameservers))
        conf.search = _dedup(conf.search + list(extra.searches))
        merged: dict[str, str] = {}
        for opt in conf.options:
            key, _, value = opt.partition(":")
            merged[key] = value
        for key, value in extra.options:
            merged[key] = value or ""
        conf.options = [f"{k}:{v}" if v else k for k, v in sorted(merged.items())]
        conf.policy += " + dnsConfig"
    conf.nameservers = conf.nameservers[:MAX_NAMESERVERS]
    conf.search = conf.search[:MAX_SEARCH]
    return conf


# ---------------------------------------------------------------------------
# the glibc search algorithm
# ---------------------------------------------------------------------------

@dataclass
class Query:
    """One query the resolver sent and what came back."""
    name: dns.name.Name
    rdtype: int
    rcode: int
    answer: list = field(default_factory=list)
    authority: list = field(default_factory=list)
    source: str = "cluster"                  # see podnet.dns.server.Result.source
    walk: list = field(default_factory=list)  # autopath, done by the server

    @property
    def has_records(self) -> bool:
        return self.rcode == dns.rcode.NOERROR and bool(self.answer)

    @property
    def status(self) -> str:
        if self.source == "not-sent":
            return "forwarded upstream (not sent)"
        text = dns.rcode.to_text(self.rcode)
        if self.rcode == dns.rcode.NOERROR and not self.answer:
            text = "NODATA"
        return text


@dataclass
class Lookup:
    """A whole lookup: the plan, the queries, the outcome."""
    name: str
    qtype: str
    conf: ResolvConf
    plan: str
    queries: list[Query] = field(default_factory=list)
    answered_by: Optional[int] = None        # 1-based index of the answering query

    @property
    def outcome(self) -> str:
        if self.answered_by is None:
            return "not resolved"
        q = self.queries[self.answered_by - 1]
        if q.source == "not-sent":
            return (f"query {self.answered_by} leaves the cluster: the upstream resolver answers it "
                    f"(not sent: no --upstream)")
        return f"resolved by query {self.answered_by}"


Ask = Callable[[dns.name.Name, int], Query]


def _candidates_plan(name: str, conf: ResolvConf) -> tuple[list, str]:
    """glibc's order of candidate names; the as-is name is `None` in the search slots."""
    dots = name.rstrip(".").count(".")
    trailing = name.endswith(".")
    if trailing:
        return [("asis", None)], "a trailing dot: the name as is, only"
    search = [("search", s) for s in conf.search]
    if dots >= conf.ndots:
        return [("asis", None), *search], (
            f"{dots} dot{'s' if dots != 1 else ''} (at least ndots:{conf.ndots}): the name as is first, "
            "then the search list")
    plan = (f"{dots} dot{'s' if dots != 1 else ''} (fewer than ndots:{conf.ndots}): the search list "
            "first, then the name as is")
    tail = [] if (dots == 0 and conf.option("no-tld-query") is not None and search) else [("asis", None)]
    return [*search, *tail], plan


def resolve_sequence(name: str, qtype: str, conf: ResolvConf, ask: Ask) -> Lookup:
    """Emulate glibc's res_nsearch for `name`, sending each query with `ask`."""
    if not name or name == ".":
        raise InputError("a name to resolve is required")
    types = [dns.rdatatype.A, dns.rdatatype.AAAA] if qtype.upper() == ADDR else \
        [dns.rdatatype.from_text(qtype.upper())]
    candidates, plan = _candidates_plan(name, conf)
    lookup = Lookup(name, qtype.upper(), conf, plan)
    base = name.rstrip(".")
    tried_as_is = False
    stop_search = False
    for kind, domain in candidates:
        if kind == "search" and stop_search:
            continue
        if kind == "asis" and tried_as_is:
            continue
        suffix = (domain or "").strip(".")
        fqdn = dns.name.from_text(f"{base}.{suffix}" if suffix else base)
        for rdtype in types:
            reply = ask(fqdn, rdtype)
            lookup.queries.append(reply)
            if lookup.answered_by is None and (reply.has_records or reply.source == "not-sent"):
                lookup.answered_by = len(lookup.queries)
        if lookup.answered_by is not None:
            return lookup
        replies = lookup.queries[-len(types):]
        if not suffix:                  # the as-is name (or the root in the search list)
            tried_as_is = True
            if name.endswith("."):
                return lookup
        first = replies[0].rcode
        if first not in (dns.rcode.NXDOMAIN, dns.rcode.NOERROR, dns.rcode.SERVFAIL) and kind == "search":
            stop_search = True
    return lookup


# ---------------------------------------------------------------------------
# a pod's lookups against the cluster DNS
# ---------------------------------------------------------------------------

def resolve_for_pod(cluster, pod, name: str, qtype: str = "A", *, upstreams=None,
                    autopath: Optional[bool] = None, server=None) -> Lookup:
    """The queries `pod` sends to resolve `name`, answered by podnet's DNS server
    (the cluster's records, autopath if on, upstreams if any; without upstreams,
    names that leave the cluster are marked not sent)."""
    from .server import DNSServer

    if server is None:
        ups = list(cluster.config.dns.upstreams if upstreams is None else upstreams)
        server = DNSServer.from_cluster(cluster, upstreams=ups, autopath=autopath, not_sent=not ups)
    conf = resolv_conf(pod, cluster)
    client = str(pod.pod_ip) if pod.pod_ip else "0.0.0.0"
    cluster_dns = conf.nameservers[0] == cluster_dns_ip(cluster) if conf.nameservers else False

    def ask(qname: dns.name.Name, rdtype: int) -> Query:
        query = dns.message.make_query(qname, rdtype, use_edns=0, payload=1200)
        if cluster_dns:
            reply = asyncio.run(server.answer(query, client))
            msg, source, walk = reply.message, reply.source, reply.walk
        else:       # the node's resolver (or the pod's own): straight upstream
            res = asyncio.run(server.forward(qname, rdtype))
            msg = dns.message.make_response(query)
            msg.set_rcode(res.rcode)
            msg.answer.extend(res.answer)
            msg.authority.extend(res.authority)
            source, walk = res.source, []
        return Query(qname, rdtype, msg.rcode(), list(msg.answer), list(msg.authority), source, walk)

    return resolve_sequence(name, qtype, conf, ask)


def format_lookup(lookup: Lookup, pod=None) -> str:
    """The lookup as text: the resolv.conf, the plan, each query and its answer."""
    out = []
    if pod is not None:
        ip = f" {pod.pod_ip}" if pod.pod_ip else ""
        out.append(f"pod {pod.key}{ip}, dnsPolicy {lookup.conf.policy}; /etc/resolv.conf:")
        out += ["    " + line for line in lookup.conf.text().splitlines()]
    out.append(f'"{lookup.name}": {lookup.plan}.')
    out.append("")
    width = max((len(q.name.to_text()) for q in lookup.queries), default=10)
    for i, q in enumerate(lookup.queries, 1):
        qt = dns.rdatatype.to_text(q.rdtype)
        out.append(f"  {i:>2}  {qt:<5} {q.name.to_text():<{width}}  {q.status}")
        if q.walk:
            steps = ", ".join(f"{n.to_text()} {_walk_status(rc, src)}" for n, rc, src in q.walk)
            out.append(f"        autopath: the server tried {steps}")
        for rrset in q.answer:
            for line in rrset.to_text().splitlines():
                out.append(f"        {line}")
    server = lookup.conf.nameservers[0] if lookup.conf.nameservers else "(none)"
    nx = sum(1 for q in lookup.queries if q.rcode == dns.rcode.NXDOMAIN)
    out.append("")
    out.append(f"{len(lookup.queries)} quer{'y' if len(lookup.queries) == 1 else 'ies'} to {server}"
               f"{f' ({nx} NXDOMAIN)' if nx else ''}; {lookup.outcome}.")
    return "\n".join(out)


def _walk_status(rcode: int, source: str) -> str:
    return "(upstream, not sent)" if source == "not-sent" else dns.rcode.to_text(rcode)


def lookup_json(lookup: Lookup) -> dict:
    return {
        "name": lookup.name, "type": lookup.qtype, "plan": lookup.plan,
        "resolvConf": lookup.conf.text(),
        "queries": [{"name": q.name.to_text(), "type": dns.rdatatype.to_text(q.rdtype),
                     "rcode": dns.rcode.to_text(q.rcode), "status": q.status, "source": q.source,
                     "answer": [line for r in q.answer for line in r.to_text().splitlines()],
                     "autopath": [{"name": n.to_text(), "rcode": dns.rcode.to_text(rc), "source": s}
                                  for n, rc, s in q.walk]}
                    for q in lookup.queries],
        "answeredBy": lookup.answered_by,
    }
