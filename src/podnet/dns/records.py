"""The cluster's DNS records: the Kubernetes DNS-based service discovery spec
(schema 1.1.0), answered the way CoreDNS's kubernetes plugin answers.

    records = DNSRecords.from_cluster(cluster)
    answer = records.lookup(dns.name.from_text("web.default.svc.cluster.local"), dns.rdatatype.A)
    answer.rcode, answer.answer, answer.authority, answer.additional

`DNSRecords` is an immutable index built from the reconciled cluster (Services,
EndpointSlices, Pods, Namespaces); rebuild it when the cluster changes. `lookup`
ports CoreDNS's algorithm (plugin/kubernetes: parseRequest, findServices,
findPods, serviceRecordForIP; plugin/backend_lookup.go: A, AAAA, SRV, PTR, TXT):

- `svc.ns.svc.zone` A/AAAA: the ClusterIPs; for a headless Service the ready
  endpoints; an ExternalName Service is a CNAME (followed when the target is in
  the zone, else `Answer.chase` asks the server to resolve it upstream).
- `ep.svc.ns.svc.zone`: one endpoint, named by its hostname (StatefulSet pods)
  or its dashed IP (172-0-0-2, 5678-abcd--1). CoreDNS answers these for every
  Service, not only headless ones; so does podnet.
- `_port._proto.svc.ns.svc.zone` and `svc.ns.svc.zone` SRV: weight 100/n,
  targets' addresses in the additional section.
- `a-b-c-d.ns.pod.zone`: pods mode disabled (NXDOMAIN), insecure (any IP in an
  existing namespace), verified (only a pod with that IP in that namespace).
- PTR: a ClusterIP names its Service; otherwise every ready endpoint with that
  IP names hostname.svc.ns.svc.zone; otherwise (podnet's addition, CoreDNS has
  no pod PTRs) a pod names a-b-c-d.ns.pod.zone unless pods mode is disabled.
- `dns-version.zone` TXT "1.1.0"; the apex SOA and NS (ns.dns.zone, whose A/AAAA
  are the kube-dns ClusterIPs, or the server's own addresses without one).
- Negative answers carry the zone SOA in the authority section: NXDOMAIN when
  the name does not exist, NOERROR/NODATA when it exists with other types.
- Names match case-insensitively; answers keep the case of the question, and
  names built from the zone keep the case the zone was asked in.

Deliberate differences from CoreDNS, where CoreDNS is loose about the DNS rules:
SOA and other types asked at a non-existent name answer NXDOMAIN (CoreDNS: NODATA
for SOA); `dns-version.zone`, `dns.zone`, `ns.dns.zone` exist for every type
(NODATA instead of NXDOMAIN); a pod name with extra labels in front
(x.10-0-0-1.ns.pod.zone) is NXDOMAIN; a reverse name that has a PTR answers
NODATA for other types. Answers are sorted, so the same cluster always gives
the same bytes.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass, field
from typing import Iterable, Optional

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.NS import NS
from dns.rdtypes.ANY.PTR import PTR
from dns.rdtypes.ANY.SOA import SOA
from dns.rdtypes.ANY.TXT import TXT
from dns.rdtypes.IN.A import A
from dns.rdtypes.IN.AAAA import AAAA
from dns.rdtypes.IN.SRV import SRV

SCHEMA_VERSION = "1.1.0"
SCHEMA_TTL = 28800                      # CoreDNS serves dns-version with this TTL
DEFAULT_REVERSE_ZONES = ("in-addr.arpa.", "ip6.arpa.")
MAX_CNAME_CHAIN = 7                     # CoreDNS stops following CNAMEs after 8

IN = dns.rdataclass.IN
T = dns.rdatatype
_IN_ADDR = dns.name.from_text("in-addr.arpa.")
_IP6 = dns.name.from_text("ip6.arpa.")


# ---------------------------------------------------------------------------
# the index
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PortInfo:
    name: str
    protocol: str
    port: int                           # -1: the endpoint declares no ports


NO_PORT = (PortInfo("", "", -1),)


@dataclass(frozen=True, slots=True)
class EndpointAddress:
    ip: str                             # as written in the EndpointSlice
    hostname: str                       # the label: spec hostname or the dashed IP
    ports: tuple[PortInfo, ...]


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    namespace: str
    name: str
    type: str
    headless: bool
    cluster_ips: tuple[str, ...]
    ports: tuple[PortInfo, ...]
    external_name: str = ""


@dataclass(frozen=True, slots=True)
class _Target:
    """One of CoreDNS's msg.Service: an address or a name, a port, and the
    labels (below the zone) of the record's own name."""
    host: str
    port: int
    key: tuple[str, ...]

    @property
    def ip(self):
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None


@dataclass(slots=True)
class Answer:
    """What the zone says about one question."""
    rcode: int = dns.rcode.NOERROR
    answer: list[dns.rrset.RRset] = field(default_factory=list)
    authority: list[dns.rrset.RRset] = field(default_factory=list)
    additional: list[dns.rrset.RRset] = field(default_factory=list)
    chase: Optional[tuple[dns.name.Name, int]] = None    # an out-of-zone CNAME target to resolve
    fallthrough: bool = False           # a reverse-zone miss the server may forward upstream


def dashed(ip: str) -> str:
    """An endpoint's or pod's IP as a DNS label: 10-244-1-3, fd00-10-244--3."""
    if "." in ip:
        return ip.replace(".", "-")
    return ip.replace(":", "-").lower()


def _label_ip(label: str) -> str:
    """CoreDNS's inverse of `dashed` for pod names."""
    if label.count("-") == 3 and "--" not in label:
        return label.replace("-", ".")
    return label.replace("-", ":")


def _match(asked: str, have: str) -> bool:
    """A port or protocol label matches; an empty one matches anything."""
    return not asked or asked.lower() == have.lower()


def _strip_underscore(label: str) -> str:
    return label[1:] if label.startswith("_") else label


class DNSRecords:
    """The cluster's zone, indexed for lookups. Immutable: build a new one when
    the cluster changes (`from_cluster`)."""

    def __init__(self, zone: str = "cluster.local", *, ttl: int = 30, pods_mode: str = "insecure",
                 services: Iterable[ServiceInfo] = (),
                 endpoints: Optional[dict[tuple[str, str], list[EndpointAddress]]] = None,
                 pods_by_ip: Optional[dict] = None, namespaces: Iterable[str] = (),
                 nameserver_ips: Iterable[str] = ("127.0.0.1",),
                 reverse_zones: Iterable[str] = DEFAULT_REVERSE_ZONES,
                 reverse_fallthrough: bool = True):
        if pods_mode not in ("disabled", "insecure", "verified"):
            raise ValueError(f"pods mode must be disabled, insecure or verified, not {pods_mode!r}")
        self.zone = dns.name.from_text(zone.rstrip(".") + ".").canonicalize()
        self.ttl = ttl
        self.pods_mode = pods_mode
        self.reverse_zones = tuple(dns.name.from_text(z).canonicalize() for z in reverse_zones)
        self.reverse_fallthrough = reverse_fallthrough
        self.services = {(s.namespace, s.name): s for s in services}
        self.endpoints = {k: list(v) for k, v in (endpoints or {}).items()}
        # ip -> [(namespace, name, host_network)]
        self.pods_by_ip: dict = {k: list(v) for k, v in (pods_by_ip or {}).items()}
        self.namespaces = frozenset(n.lower() for n in namespaces)
        self.nameserver_ips = tuple(ipaddress.ip_address(ip) for ip in nameserver_ips)
        self._zones = sorted((self.zone, *self.reverse_zones), key=lambda z: -len(z.labels))
        self.reverse = self._reverse_index()
        self.serial = self._serial()

    # ------------------------------------------------------------ construction
    @classmethod
    def from_cluster(cls, cluster, *, local_ips: Iterable[str] = ("127.0.0.1",), **overrides) -> "DNSRecords":
        """The records of a reconciled `podnet.cluster.Cluster` (zone, TTL and pods
        mode from its config; `overrides` replace any keyword of the constructor)."""
        cfg = cluster.config
        options = dict(zone=cfg.cluster_domain, ttl=cfg.dns.ttl, pods_mode=cfg.dns.pods)
        options.update(overrides)
        return cls.from_objects(cluster.services, cluster.endpoint_slices, cluster.pods,
                                list(cluster.namespaces), local_ips=local_ips, **options)

    @classmethod
    def from_objects(cls, services, endpoint_slices, pods, namespaces, *,
                     local_ips: Iterable[str] = ("127.0.0.1",), **kwargs) -> "DNSRecords":
        """The records of Service, EndpointSlice, Pod objects and namespace names."""
        infos = []
        for svc in services:
            infos.append(ServiceInfo(
                namespace=svc.namespace, name=svc.name, type=svc.type, headless=svc.headless,
                cluster_ips=tuple(str(ip) for ip in svc.cluster_ips) if svc.type != "ExternalName" else (),
                ports=tuple(PortInfo(p.name, p.protocol, p.port) for p in svc.ports),
                external_name=svc.external_name if svc.type == "ExternalName" else ""))
        endpoints: dict[tuple[str, str], list[EndpointAddress]] = {}
        for es in endpoint_slices:
            if es.address_type == "FQDN" or not es.service_name:
                continue
            ports = tuple(PortInfo(p.name, p.protocol, p.port if p.port is not None else -1)
                          for p in es.ports) or NO_PORT
            out = endpoints.setdefault((es.meta.namespace, es.service_name), [])
            for ep in es.endpoints:
                if ep.ready is False:   # CoreDNS: nil counts as ready
                    continue
                for ip in ep.addresses:
                    out.append(EndpointAddress(ip, ep.hostname or dashed(ip), ports))
        pods_by_ip: dict = {}
        for pod in pods:
            if pod.terminal or pod.terminating:
                continue
            for ip in pod.pod_ips:
                pods_by_ip.setdefault(ip, []).append((pod.namespace, pod.name, pod.host_network))
        ns_names = [n if isinstance(n, str) else n.meta.name for n in namespaces]
        kube_dns = next((s for s in infos if (s.namespace, s.name) == ("kube-system", "kube-dns")), None)
        nameservers = kube_dns.cluster_ips if kube_dns and kube_dns.cluster_ips else tuple(local_ips)
        kwargs.setdefault("nameserver_ips", nameservers)
        return cls(services=sorted(infos, key=lambda s: (s.namespace, s.name)),
                   endpoints=endpoints, pods_by_ip=pods_by_ip, namespaces=ns_names, **kwargs)

    def _reverse_index(self) -> dict:
        """IP -> PTR targets: a Service's ClusterIP, else endpoints, else pods."""
        out: dict = {}
        zone = self.zone.to_text()
        for svc in self.services.values():          # sorted: the first Service wins
            for ip in svc.cluster_ips:
                out.setdefault(ipaddress.ip_address(ip), [f"{svc.name}.{svc.namespace}.svc.{zone}"])
        by_endpoint: dict = {}
        for (ns, name), addrs in sorted(self.endpoints.items()):
            for a in addrs:
                by_endpoint.setdefault(ipaddress.ip_address(a.ip), set()).add(
                    f"{a.hostname}.{name}.{ns}.svc.{zone}")
        for ip, names in by_endpoint.items():
            out.setdefault(ip, sorted(names))
        if self.pods_mode != "disabled":
            for ip, pods in self.pods_by_ip.items():
                owners = {ns for ns, _, host_network in pods if not host_network}
                if len(owners) == 1 and ip not in out:
                    out[ip] = [f"{dashed(str(ip))}.{owners.pop()}.pod.{zone}"]
        return {ip: [dns.name.from_text(n) for n in names] for ip, names in out.items()}

    def _serial(self) -> int:
        """SOA serial: a checksum of the zone's contents (changes with the cluster,
        deterministic for the same cluster)."""
        data = repr((sorted(self.services.items()), sorted(self.endpoints.items()),
                     sorted((str(k), v) for k, v in self.pods_by_ip.items()),
                     sorted(self.namespaces), self.pods_mode, self.ttl))
        return zlib.crc32(data.encode()) or 1

    # --------------------------------------------------------------- queries
    def zone_of(self, qname: dns.name.Name) -> Optional[dns.name.Name]:
        """The zone `qname` falls in, spelled in the question's case; None if not ours."""
        for zone in self._zones:
            if qname.is_subdomain(zone):
                return dns.name.Name(qname.labels[len(qname.labels) - len(zone.labels):])
        return None

    def in_cluster_zone(self, qname: dns.name.Name) -> bool:
        return qname.is_subdomain(self.zone)

    def client_namespace(self, ip: str) -> Optional[str]:
        """The namespace of the (non-hostNetwork) pod that owns `ip` (for autopath)."""
        try:
            pods = self.pods_by_ip.get(ipaddress.ip_address(ip), ())
        except ValueError:
            return None
        owners = {ns for ns, _, host_network in pods if not host_network}
        return owners.pop() if len(owners) == 1 else None

    def search_path(self, namespace: str) -> list[dns.name.Name]:
        """A ClusterFirst pod's search list, then the root (CoreDNS autopath @kubernetes)."""
        z = self.zone
        return [dns.name.Name((namespace.encode(), b"svc") + z.labels),
                dns.name.Name((b"svc",) + z.labels), z, dns.name.root]

    def lookup(self, qname: dns.name.Name, rdtype: int) -> Optional[Answer]:
        """The zone's answer to `qname`/`rdtype` (class IN); None if the name is in none
        of our zones."""
        zone = self.zone_of(qname)
        if zone is None:
            return None
        if rdtype in (T.AXFR, T.IXFR):
            return Answer(dns.rcode.REFUSED)
        if zone != self.zone:
            return self._reverse(qname, rdtype, zone)
        rel = self._rel(qname, zone)
        if not rel:
            return self._apex(qname, rdtype, zone)
        if rdtype in (T.A, T.AAAA):
            return self._address_answer(qname, rdtype, zone)
        if rdtype == T.TXT and rel == ["dns-version"]:
            return Answer(answer=[_rrset(qname, SCHEMA_TTL, TXT(IN, T.TXT, [SCHEMA_VERSION.encode()]))])
        if rdtype == T.SRV:
            return self._srv(qname, zone)
        targets = self._find(rel, zone)
        if targets is None:
            return self._negative(dns.rcode.NXDOMAIN, zone)
        if rdtype == T.CNAME and targets and targets[0].ip is None:
            target = dns.name.from_text(targets[0].host)
            return Answer(answer=[_rrset(qname, self.ttl, CNAME(IN, T.CNAME, target))])
        return self._negative(dns.rcode.NOERROR, zone)

    # ------------------------------------------------------------- internals
    @staticmethod
    def _rel(qname: dns.name.Name, zone: dns.name.Name) -> list[str]:
        labels = qname.labels[:len(qname.labels) - len(zone.labels)]
        return [lab.decode("latin-1").lower() for lab in labels]

    def _name(self, key: tuple[str, ...], zone: dns.name.Name) -> dns.name.Name:
        return dns.name.Name(tuple(k.encode("latin-1") for k in key) + zone.labels)

    def _soa(self, zone: dns.name.Name) -> dns.rrset.RRset:
        ns = dns.name.Name((b"ns", b"dns") + zone.labels)
        mbox = dns.name.Name((b"hostmaster",) + zone.labels)
        return _rrset(zone, min(self.ttl, 300),
                      SOA(IN, T.SOA, ns, mbox, self.serial, 7200, 1800, 86400, self.ttl))

    def _negative(self, rcode: int, zone: dns.name.Name) -> Answer:
        return Answer(rcode, authority=[self._soa(zone)])

    def _apex(self, qname, rdtype, zone) -> Answer:
        if rdtype == T.SOA:
            return Answer(answer=[self._soa(zone)])
        if rdtype == T.NS:
            ns = dns.name.Name((b"ns", b"dns") + zone.labels)
            glue = [(ns, _address(ip)) for ip in self.nameserver_ips]
            return Answer(answer=[_rrset(zone, self.ttl, NS(IN, T.NS, ns))],
                          additional=_group(glue, self.ttl))
        return self._negative(dns.rcode.NOERROR, zone)

    def _find(self, rel: list[str], zone) -> Optional[list[_Target]]:
        """CoreDNS's Records(): the targets a name has (possibly none: NODATA), or
        None when the name does not exist (NXDOMAIN)."""
        if rel in (["dns"], ["dns-version"]):
            return []
        if rel == ["ns", "dns"]:
            return [_Target(str(ip), -1, ("ns", "dns")) for ip in self.nameserver_ips]
        kind = rel[-1]
        if kind not in ("svc", "pod"):
            return None
        if len(rel) == 1:
            return []
        namespace = rel[-2]
        if namespace not in self.namespaces:
            return None
        if len(rel) == 2:
            return []
        name, extra = rel[-3], rel[:-3]
        if kind == "pod":
            return self._find_pod(namespace, name) if not extra else None
        endpoint = port = protocol = ""
        if len(extra) == 1:
            endpoint = extra[0]
        elif len(extra) == 2:
            port, protocol = _strip_underscore(extra[0]), _strip_underscore(extra[1])
        elif extra:
            return None
        return self._find_service(namespace, name, endpoint, port, protocol)

    def _find_service(self, namespace, name, endpoint, port, protocol) -> Optional[list[_Target]]:
        svc = self.services.get((namespace, name))
        if svc is None:
            return None
        if svc.type == "ExternalName":
            target = svc.external_name.rstrip(".") + "."
            if endpoint or port or protocol or _is_ip(svc.external_name):
                return None
            return [_Target(target, 0, (name, namespace, "svc"))]
        if svc.headless or endpoint:
            out = []
            for addr in self.endpoints.get((namespace, name), ()):
                if endpoint and endpoint != addr.hostname.lower():
                    continue
                for p in addr.ports:
                    if _match(port, p.name) and _match(protocol, p.protocol):
                        out.append(_Target(addr.ip, p.port, (addr.hostname, name, namespace, "svc")))
            return out or None
        matched = [p for p in svc.ports if _match(port, p.name) and _match(protocol, p.protocol)]
        if not matched:
            return None
        return [_Target(ip, p.port, (name, namespace, "svc")) for p in matched for ip in svc.cluster_ips]

    def _find_pod(self, namespace, label) -> Optional[list[_Target]]:
        if self.pods_mode == "disabled":
            return None
        try:
            ip = ipaddress.ip_address(_label_ip(label))
        except ValueError:
            return None
        if self.pods_mode == "verified" and not any(
                ns == namespace for ns, _, _ in self.pods_by_ip.get(ip, ())):
            return None
        return [_Target(str(ip), -1, (label, namespace, "pod"))]

    def _addresses(self, qname, rdtype, zone, depth=0):
        """CoreDNS's A()/AAAA(): (records, chase, exists)."""
        targets = self._find(self._rel(qname, zone), zone)
        if targets is None:
            return [], None, False
        records, chase, seen = [], None, set()
        for t in targets:
            ip = t.ip
            if ip is None:                          # ExternalName: a CNAME
                target = dns.name.from_text(t.host)
                if target == qname or depth >= MAX_CNAME_CHAIN:
                    continue
                cname = (qname, CNAME(IN, T.CNAME, target))
                if target.is_subdomain(zone):
                    more, more_chase, exists = self._addresses(target, rdtype, zone, depth + 1)
                    if exists and more:
                        records += [cname, *more]
                        chase = chase or more_chase
                else:
                    records.append(cname)
                    chase = (target, rdtype)
                continue
            if (ip.version == 4) == (rdtype == T.A) and ip not in seen:
                seen.add(ip)
                records.append((qname, _address(ip)))
        return records, chase, True

    def _address_answer(self, qname, rdtype, zone) -> Answer:
        records, chase, exists = self._addresses(qname, rdtype, zone)
        if not exists:
            return self._negative(dns.rcode.NXDOMAIN, zone)
        if not records:
            return self._negative(dns.rcode.NOERROR, zone)
        return Answer(answer=_group(records, self.ttl), chase=chase)

    def _srv(self, qname, zone) -> Answer:
        targets = self._find(self._rel(qname, zone), zone)
        if targets is None:
            return self._negative(dns.rcode.NXDOMAIN, zone)
        targets = [t for t in targets if t.ip is not None]   # no SRV for ExternalName
        records, extra, seen_srv, seen_addr = [], [], set(), set()
        weight = max(1, 100 // len(targets)) if targets else 0
        for t in targets:
            if t.port == -1:
                continue
            name = self._name(t.key, zone)
            if (name, t.port) not in seen_srv:
                seen_srv.add((name, t.port))
                records.append((qname, SRV(IN, T.SRV, 0, weight, t.port, name)))
            if (name, t.host) not in seen_addr:
                seen_addr.add((name, t.host))
                extra.append((name, _address(t.ip)))
        if not records:
            return self._negative(dns.rcode.NOERROR, zone)
        return Answer(answer=_group(records, self.ttl), additional=_group(extra, self.ttl))

    def _reverse(self, qname, rdtype, zone) -> Answer:
        if qname == zone and rdtype in (T.SOA, T.NS):
            return self._apex(qname, rdtype, zone)
        ip = reverse_to_ip(qname)
        names = self.reverse.get(ip) if ip is not None else None
        if not names:
            if qname == zone:
                return self._negative(dns.rcode.NOERROR, zone)
            miss = self._negative(dns.rcode.NXDOMAIN, zone)
            miss.fallthrough = self.reverse_fallthrough
            return miss
        if rdtype != T.PTR:
            return self._negative(dns.rcode.NOERROR, zone)
        return Answer(answer=_group([(qname, PTR(IN, T.PTR, n)) for n in names], self.ttl))

    # ----------------------------------------------------------------- dump
    def dump(self) -> list[dns.rrset.RRset]:
        """Every record of the zone (pods: those that exist), for `podnet dns records`."""
        z = self.zone
        out: list[dns.rrset.RRset] = []

        def ask(name: dns.name.Name, *types: int) -> None:
            for t in types:
                ans = self.lookup(name, t)
                if ans is not None and ans.rcode == dns.rcode.NOERROR:
                    out.extend(ans.answer)

        ask(z, T.SOA, T.NS)
        ask(dns.name.Name((b"ns", b"dns") + z.labels), T.A, T.AAAA)
        ask(dns.name.Name((b"dns-version",) + z.labels), T.TXT)
        for (ns, name), svc in sorted(self.services.items()):
            base = self._name((name, ns, "svc"), z)
            ask(base, T.CNAME if svc.type == "ExternalName" else T.A)
            if svc.type == "ExternalName":
                continue
            ask(base, T.AAAA, T.SRV)
            ports = {(p.name, p.protocol) for p in svc.ports if p.name}
            hosts = set()
            for addr in self.endpoints.get((ns, name), ()):
                ports |= {(p.name, p.protocol) for p in addr.ports if p.name}
                hosts.add(addr.hostname)
            for pname, proto in sorted(ports):
                ask(self._name((f"_{pname}", f"_{proto.lower()}", name, ns, "svc"), z), T.SRV)
            if svc.headless:
                for host in sorted(hosts):
                    ask(self._name((host, name, ns, "svc"), z), T.A, T.AAAA)
        if self.pods_mode != "disabled":
            for ip, pods in sorted(self.pods_by_ip.items(), key=lambda kv: (kv[0].version, kv[0])):
                for ns in sorted({ns for ns, _, _ in pods}):
                    ask(self._name((dashed(str(ip)), ns, "pod"), z), T.A if ip.version == 4 else T.AAAA)
        for ip in sorted(self.reverse, key=lambda i: (i.version, i)):
            ask(dns.reversename.from_address(str(ip)), T.PTR)
        seen, unique = set(), []
        for rrset in out:
            text = rrset.to_text()
            if text not in seen:
                seen.add(text)
                unique.append(rrset)
        return unique


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _address(ip):
    ip = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    return A(IN, T.A, str(ip)) if ip.version == 4 else AAAA(IN, T.AAAA, str(ip))


def _rrset(name: dns.name.Name, ttl: int, *rdatas) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, IN, rdatas[0].rdtype)
    rrset.update_ttl(ttl)
    for rd in rdatas:
        rrset.add(rd)
    return rrset


def _group(records: list, ttl: int) -> list[dns.rrset.RRset]:
    """(name, rdata) pairs -> RRsets, in order of first appearance, rdatas sorted."""
    groups: dict = {}
    for name, rd in records:
        groups.setdefault((name.to_text(), rd.rdtype), (name, []))[1].append(rd)
    out = []
    for name, rds in groups.values():
        out.append(_rrset(name, ttl, *sorted(set(rds), key=_rdata_key)))
    return out


def _rdata_key(rd):
    if rd.rdtype in (T.A, T.AAAA):
        return (0, ipaddress.ip_address(rd.address).packed, "")
    if rd.rdtype == T.SRV:
        return (rd.priority, rd.target.to_text().encode(), f"{rd.port:05d}")
    return (0, b"", rd.to_text())


def reverse_to_ip(name: dns.name.Name):
    """10.0.96.10.in-addr.arpa. -> 10.96.0.10 (None unless a complete address)."""
    try:
        if name.is_subdomain(_IN_ADDR):
            labels = [lab.decode() for lab in name.labels[:-3]]
            if len(labels) != 4 or not all(lab.isdigit() and len(lab) <= 3 for lab in labels):
                return None
            return ipaddress.IPv4Address(".".join(reversed(labels)))
        if name.is_subdomain(_IP6):
            labels = [lab.decode().lower() for lab in name.labels[:-3]]
            if len(labels) != 32 or not all(len(lab) == 1 and lab in "0123456789abcdef" for lab in labels):
                return None
            return ipaddress.IPv6Address(int("".join(reversed(labels)), 16))
    except (ValueError, UnicodeDecodeError):
        return None
    return None
