"""kube-proxy's nftables mode, rule for rule (pkg/proxy/nftables/proxier.go).

    text = render(proxy_view(cluster, "worker", 4))    # `nft -f` input: the table after a full sync

`render` gives the `ip kube-proxy` (or `ip6 kube-proxy`) table kube-proxy
leaves after its first, full sync, printed as upstream's tests print it
(knftables' Fake.Dump: the table, its chains, sets and maps, then the rules,
then the elements), which `nft -f` accepts as is.

`NftablesProxier` keeps the table between syncs (as knftables lists it for the
real proxier): `sync(view)` returns the transaction kube-proxy sends, full the
first time (with upstream's add+delete of the base chains and add+flush of
every chain it rewrites), partial afterwards: only the chains of Services that
changed, element additions and deletions in the maps, flushes of chains that
went stale (deleted at the next sync, as upstream deletes them once they are
a second old) and deletions of stale affinity sets.

The layout is that of the version the oracle captures (~v1.34): filter
chains `filter-prerouting-pre-dnat` / `filter-output-pre-dnat` at priority
dstnat-10 (-110) for the LoadBalancerSourceRanges firewall, `filter-input`,
`filter-forward`, `filter-output` at filter priority (0, after DNAT) for the
no-endpoint and cluster-IP checks, and service chains that match on the
destination address only (the map already chose the port).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

from .model import ChangeTracker, EndpointInfo, ProxyView, ServicePortInfo

TABLE = "kube-proxy"

# base chains
FILTER_PREROUTING_PRE_DNAT = "filter-prerouting-pre-dnat"
FILTER_OUTPUT_PRE_DNAT = "filter-output-pre-dnat"
FILTER_INPUT = "filter-input"
FILTER_FORWARD = "filter-forward"
FILTER_OUTPUT = "filter-output"
NAT_PREROUTING = "nat-prerouting"
NAT_OUTPUT = "nat-output"
NAT_POSTROUTING = "nat-postrouting"
# service dispatch
SERVICES_CHAIN = "services"
SERVICE_IPS_MAP = "service-ips"
SERVICE_NODEPORTS_MAP = "service-nodeports"
NODEPORT_IPS_SET = "nodeport-ips"
CLUSTER_IPS_SET = "cluster-ips"
# services without endpoints
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
NO_ENDPOINT_SERVICES_MAP = "no-endpoint-services"
NO_ENDPOINT_NODEPORTS_MAP = "no-endpoint-nodeports"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"
# LoadBalancerSourceRanges
FIREWALL_IPS_MAP = "firewall-ips"
FIREWALL_CHECK = "firewall-check"
# masquerading
MARK_MASQ_CHAIN = "mark-for-masquerade"
MASQUERADING_CHAIN = "masquerading"

SERVICE_PREFIX, LOCAL_PREFIX, EXTERNAL_PREFIX, ENDPOINT_PREFIX, AFFINITY_PREFIX, FIREWALL_PREFIX = (
    "service-", "local-", "external-", "endpoint-", "affinity-", "firewall-")

NAME_LENGTH_MAX = 256                       # knftables.NameLengthMax
CHAIN_NAME_BASE_LENGTH_MAX = NAME_LENGTH_MAX - 16

# nftablesBaseChains: (name, type, hook, priority as nft prints it)
BASE_CHAINS = [
    (FILTER_PREROUTING_PRE_DNAT, "filter", "prerouting", -110),
    (FILTER_OUTPUT_PRE_DNAT, "filter", "output", -110),
    (FILTER_INPUT, "filter", "input", 0),
    (FILTER_FORWARD, "filter", "forward", 0),
    (FILTER_OUTPUT, "filter", "output", 0),
    (NAT_PREROUTING, "nat", "prerouting", -100),
    (NAT_OUTPUT, "nat", "output", -100),
    (NAT_POSTROUTING, "nat", "postrouting", 100),
]

# nftablesJumpChains: (destination, source base chain, extra match)
JUMP_CHAINS = [
    (NODEPORT_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_INPUT, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_FORWARD, "ct state new"),
    (SERVICE_ENDPOINTS_CHECK, FILTER_OUTPUT, "ct state new"),
    (FIREWALL_CHECK, FILTER_PREROUTING_PRE_DNAT, "ct state new"),
    (FIREWALL_CHECK, FILTER_OUTPUT_PRE_DNAT, "ct state new"),
    (SERVICES_CHAIN, NAT_OUTPUT, ""),
    (SERVICES_CHAIN, NAT_PREROUTING, ""),
    (MASQUERADING_CHAIN, NAT_POSTROUTING, ""),
    (CLUSTER_IPS_CHECK, FILTER_FORWARD, "ct state new"),
    (CLUSTER_IPS_CHECK, FILTER_OUTPUT, "ct state new"),
]


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------

def hash_and_truncate(name: str) -> str:
    """hashAndTruncate: the first 8 characters of base32(sha256(name)), "-", name
    (truncated with "..." past the length limit)."""
    # base32 turns each 5 bytes into 8 characters: the first 8 need only 5 bytes
    h = base64.b32encode(hashlib.sha256(name.encode()).digest()[:5]).decode()
    name = f"{h}-{name}"
    if len(name) > CHAIN_NAME_BASE_LENGTH_MAX:
        name = name[:CHAIN_NAME_BASE_LENGTH_MAX - 3] + "..."
    return name


@lru_cache(maxsize=1 << 16)
def service_chain_base(namespace: str, name: str, protocol: str, port_name: str) -> str:
    """servicePortChainNameBase: HASH-ns/name/protocol/port (e.g. ULMVA6XW-ns1/svc1/tcp/p80)."""
    return hash_and_truncate(f"{namespace}/{name}/{protocol}/{port_name}")


@lru_cache(maxsize=1 << 18)
def endpoint_chain_base(namespace: str, name: str, protocol: str, port_name: str, endpoint: str) -> str:
    """servicePortEndpointChainNameBase: HASH-ns/name/protocol/port__ip/port, with
    an IPv6 address's colons turned into dots."""
    ip, _, port = endpoint.rpartition(":")
    ip = ip.strip("[]").replace(":", ".")
    return hash_and_truncate(f"{namespace}/{name}/{protocol}/{port_name}__{ip}/{port}")


def is_service_chain(name: str) -> bool:
    """isServiceChainName: service and endpoint chains are the ones with a "/"."""
    return "/" in name


def is_affinity_set(name: str) -> bool:
    return name.startswith(AFFINITY_PREFIX)


@dataclass(frozen=True, slots=True)
class ServiceNames:
    """newServiceInfo's chain names."""
    cluster: str
    local: str
    external: str
    firewall: str


def service_names(svc: ServicePortInfo) -> ServiceNames:
    spn = svc.name
    base = service_chain_base(spn.namespace, spn.name, svc.protocol.lower(), spn.port)
    return ServiceNames(SERVICE_PREFIX + base, LOCAL_PREFIX + base, EXTERNAL_PREFIX + base,
                        FIREWALL_PREFIX + base)


def endpoint_names(svc: ServicePortInfo, ep: EndpointInfo) -> tuple[str, str]:
    """newEndpointInfo: (endpoint chain, affinity set)."""
    spn = svc.name
    base = endpoint_chain_base(spn.namespace, spn.name, svc.protocol.lower(), spn.port, ep.endpoint)
    return ENDPOINT_PREFIX + base, AFFINITY_PREFIX + base


# ---------------------------------------------------------------------------
# transactions and the table they build (knftables Transaction / Fake)
# ---------------------------------------------------------------------------

def _quote(text: str) -> str:
    return f'"{text}"'


class Transaction:
    """A knftables Transaction: operations on one table, printed as `nft -f` lines.

    Each operation is (verb, kind, name, arg): `arg` is the object's spec for
    table/chain/set/map adds ("{ ... }" or ""), the rule text for rules, and
    (key, comment, value) for elements."""

    def __init__(self, family: str):
        self.family = family
        self.ops: list[tuple] = []

    def add(self, kind: str, name: str, spec: str = "") -> None:
        self.ops.append(("add", kind, name, spec))

    def flush(self, kind: str, name: str) -> None:
        self.ops.append(("flush", kind, name, ""))

    def delete(self, kind: str, name: str) -> None:
        self.ops.append(("delete", kind, name, ""))

    def rule(self, chain: str, rule: str, comment: Optional[str] = None) -> None:
        self.ops.append(("add", "rule", chain, rule if comment is None else f"{rule} comment {_quote(comment)}"))

    def element(self, container: str, key: str, value: Optional[str] = None,
                comment: Optional[str] = None) -> None:
        self.ops.append(("add", "element", container, (key, comment, value)))

    def delete_element(self, container: str, key: str) -> None:
        self.ops.append(("delete", "element", container, (key, None, None)))

    def line(self, op: tuple) -> str:
        verb, kind, name, arg = op
        head = f"{verb} {kind} {self.family} {TABLE}"
        if kind == "table":
            return f"{head} {arg}" if arg else head
        if kind == "element":
            key, comment, value = arg
            body = key
            if comment is not None:
                body += f" comment {_quote(comment)}"
            if value is not None:
                body += f" : {value}"
            return f"{head} {name} {{ {body} }}"
        return f"{head} {name} {arg}" if arg else f"{head} {name}"

    def text(self) -> str:
        line = self.line
        return "".join(line(op) + "\n" for op in self.ops)


@dataclass(slots=True)
class _Container:
    spec: str
    elements: dict = field(default_factory=dict)    # key -> (comment, value)


@dataclass(slots=True)
class _Chain:
    spec: str
    rules: list = field(default_factory=list)


class NftTable:
    """The table as the kernel holds it after the transactions (knftables Fake):
    what the proxier lists between syncs, and `dump()` as Fake.Dump prints it."""

    def __init__(self, family: str):
        self.family = family
        self.spec: Optional[str] = None
        self.chains: dict[str, _Chain] = {}
        self.sets: dict[str, _Container] = {}
        self.maps: dict[str, _Container] = {}

    def apply(self, tx: Transaction) -> None:
        chains, sets, maps = self.chains, self.sets, self.maps
        for verb, kind, name, arg in tx.ops:
            if kind == "rule":
                chains[name].rules.append(arg)
            elif kind == "element":
                elements = (sets[name] if name in sets else maps[name]).elements
                key, comment, value = arg
                if verb == "add":
                    elements[key] = (comment, value)
                else:
                    elements.pop(key, None)
            elif kind == "chain":
                if verb == "add":
                    if name not in chains:
                        chains[name] = _Chain(arg)
                elif verb == "flush":
                    chains[name].rules = []
                else:
                    chains.pop(name, None)
            elif kind in ("set", "map"):
                store = sets if kind == "set" else maps
                if verb == "add":
                    if name not in store:
                        store[name] = _Container(arg)
                elif verb == "flush":
                    store[name].elements = {}
                else:
                    store.pop(name, None)
            elif kind == "table":
                if verb == "add":
                    self.spec = arg
                else:
                    self.__init__(self.family)

    def dump(self) -> str:
        """Fake.Dump: objects first (chains, sets, maps by name), then their contents."""
        if self.spec is None:
            return ""
        tx = Transaction(self.family)
        tx.add("table", "", self.spec)
        for name in sorted(self.chains):
            tx.add("chain", name, self.chains[name].spec)
        for kind, store in (("set", self.sets), ("map", self.maps)):
            for name in sorted(store):
                tx.add(kind, name, store[name].spec)
        for name in sorted(self.chains):
            for rule in self.chains[name].rules:
                tx.ops.append(("add", "rule", name, rule))
        for store in (self.sets, self.maps):
            for name in sorted(store):
                for key, (comment, value) in store[name].elements.items():
                    tx.element(name, key, value, comment)
        return tx.text()


class _ElementStorage:
    """nftElementStorage: a map/set's elements as the last sync left them, so a
    partial sync adds only new or changed elements and deletes the leftovers."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        self.elements: dict[str, Optional[str]] = {}
        self.leftover: set[str] = set()

    def reset(self, tx: Transaction) -> None:
        self.elements.clear()
        tx.flush(self.kind, self.name)
        self.leftover = set()

    def begin_partial(self) -> None:
        self.leftover = set(self.elements)

    def ensure(self, tx: Transaction, key: str, value: Optional[str] = None,
               comment: Optional[str] = None) -> None:
        if key in self.elements:
            if self.elements[key] != value:
                tx.delete_element(self.name, key)
                tx.element(self.name, key, value, comment)
                self.elements[key] = value
            self.leftover.discard(key)
        else:
            tx.element(self.name, key, value, comment)
            self.elements[key] = value

    def cleanup(self, tx: Transaction) -> None:
        for key in sorted(self.leftover):
            tx.delete_element(self.name, key)
            del self.elements[key]
        self.leftover = set()


# ---------------------------------------------------------------------------
# the proxier
# ---------------------------------------------------------------------------

class NftablesProxier:
    """syncProxyRules and the state it keeps (see the module docstring)."""

    def __init__(self) -> None:
        self.changes = ChangeTracker()
        self.table: Optional[NftTable] = None
        self.flushed = False
        self.last_sync_full = False
        self.stale_chains: set[str] = set()
        self.cluster_ips = _ElementStorage("set", CLUSTER_IPS_SET)
        self.service_ips = _ElementStorage("map", SERVICE_IPS_MAP)
        self.firewall_ips = _ElementStorage("map", FIREWALL_IPS_MAP)
        self.no_endpoint_services = _ElementStorage("map", NO_ENDPOINT_SERVICES_MAP)
        self.no_endpoint_nodeports = _ElementStorage("map", NO_ENDPOINT_NODEPORTS_MAP)
        self.service_nodeports = _ElementStorage("map", SERVICE_NODEPORTS_MAP)
        self._storages = [self.cluster_ips, self.service_ips, self.firewall_ips,
                          self.no_endpoint_services, self.no_endpoint_nodeports, self.service_nodeports]

    def force_full_sync(self) -> None:
        self.changes.force_full_sync()

    def sync(self, view: ProxyView) -> str:
        """One sync: the `nft -f` text kube-proxy runs (the deletion of chains that
        went stale in the previous sync first, then the sync's transaction)."""
        return "".join(tx.text() for tx in self.transactions(view))

    def transactions(self, view: ProxyView) -> list[Transaction]:
        """One sync as knftables transactions, applied to `self.table`."""
        family = "ip" if view.family == 4 else "ip6"
        if self.table is None or self.table.family != family:
            self.table = NftTable(family)
        full, changed = self.changes.update(view)
        self.last_sync_full = full
        out = []
        if self.stale_chains:
            cleanup = Transaction(family)
            for chain in sorted(self.stale_chains):
                cleanup.delete("chain", chain)
            self.table.apply(cleanup)
            self.stale_chains = set()
            out.append(cleanup)
        tx = Transaction(family)
        if full:
            self._setup(tx, view)
        else:
            for storage in self._storages:
                storage.begin_partial()
        self._sync_services(tx, view, full, changed)
        self.table.apply(tx)
        out.append(tx)
        return out

    # -- setupNFTables ----------------------------------------------------------
    def _setup(self, tx: Transaction, view: ProxyView) -> None:
        ipx = "ip" if view.family == 4 else "ip6"
        addr_type = "ipv4_addr" if view.family == 4 else "ipv6_addr"
        no_localhost = "ip daddr != 127.0.0.0/8" if view.family == 4 else "ip6 daddr != ::1"
        mark = view.masquerade_mark
        npa = view.node_port_addresses_of()

        tx.add("table", "", '{ comment "rules for kube-proxy" ; }')
        if not self.flushed:
            # recreate the base chains once, so changed properties (priority) apply
            for name, *_ in BASE_CHAINS:
                tx.add("chain", name)
                tx.delete("chain", name)
            self.flushed = True
        for name, ctype, hook, prio in BASE_CHAINS:
            tx.add("chain", name, f"{{ type {ctype} hook {hook} priority {prio} ; }}")
            tx.flush("chain", name)

        created: set[str] = set()

        def ensure_chain(name: str, spec: str = "") -> None:
            if name not in created:
                created.add(name)
                tx.add("chain", name, spec)
                tx.flush("chain", name)

        for dst, src, extra in JUMP_CHAINS:
            ensure_chain(dst)
            tx.rule(src, f"{extra} jump {dst}" if extra else f"jump {dst}")
        for name in (SERVICES_CHAIN, CLUSTER_IPS_CHECK, MASQUERADING_CHAIN, MARK_MASQ_CHAIN):
            ensure_chain(name)

        tx.rule(MARK_MASQ_CHAIN, f"mark set mark or {mark}")
        tx.rule(MASQUERADING_CHAIN, f"mark and {mark} == 0 return")
        tx.rule(MASQUERADING_CHAIN, f"mark set mark xor {mark}")
        tx.rule(MASQUERADING_CHAIN, "masquerade fully-random")

        tx.add("set", CLUSTER_IPS_SET, f'{{ type {addr_type} ; comment "Active ClusterIPs" ; }}')
        tx.rule(CLUSTER_IPS_CHECK, f"{ipx} daddr @{CLUSTER_IPS_SET} reject",
                "Reject traffic to invalid ports of ClusterIPs")
        if view.service_cidrs:
            tx.rule(CLUSTER_IPS_CHECK, f"{ipx} daddr {{ {','.join(view.service_cidrs)} }} drop",
                    "Drop traffic to unallocated ClusterIPs")

        tx.add("set", NODEPORT_IPS_SET, f'{{ type {addr_type} ; comment "IPs that accept NodePort traffic" ; }}')
        if npa.match_all:
            tx.delete("set", NODEPORT_IPS_SET)
        else:
            tx.flush("set", NODEPORT_IPS_SET)
            for ip in npa.get_node_ips(view.node.interface_addresses(view.family)):
                if ipaddress.ip_address(ip).is_loopback:
                    continue            # localhost NodePorts are not supported in nftables mode
                tx.element(NODEPORT_IPS_SET, ip)

        tx.add("map", NO_ENDPOINT_SERVICES_MAP,
               f"{{ type {addr_type} . inet_proto . inet_service : verdict ; "
               f'comment "vmap to drop or reject packets to services with no endpoints" ; }}')
        tx.add("map", NO_ENDPOINT_NODEPORTS_MAP,
               "{ type inet_proto . inet_service : verdict ; "
               'comment "vmap to drop or reject packets to service nodeports with no endpoints" ; }')
        tx.add("chain", REJECT_CHAIN, '{ comment "helper for @no-endpoint-services / @no-endpoint-nodeports" ; }')
        tx.flush("chain", REJECT_CHAIN)
        tx.rule(REJECT_CHAIN, "reject")
        tx.rule(SERVICE_ENDPOINTS_CHECK,
                f"{ipx} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES_MAP}")
        if npa.match_all:
            tx.rule(NODEPORT_ENDPOINTS_CHECK,
                    f"{no_localhost} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS_MAP}")
        else:
            tx.rule(NODEPORT_ENDPOINTS_CHECK,
                    f"{ipx} daddr @{NODEPORT_IPS_SET} meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS_MAP}")

        tx.add("map", FIREWALL_IPS_MAP,
               f"{{ type {addr_type} . inet_proto . inet_service : verdict ; "
               'comment "destinations that are subject to LoadBalancerSourceRanges" ; }')
        ensure_chain(FIREWALL_CHECK)
        tx.rule(FIREWALL_CHECK, f"{ipx} daddr . meta l4proto . th dport vmap @{FIREWALL_IPS_MAP}")

        tx.add("map", SERVICE_IPS_MAP,
               f"{{ type {addr_type} . inet_proto . inet_service : verdict ; "
               'comment "ClusterIP, ExternalIP and LoadBalancer IP traffic" ; }')
        tx.add("map", SERVICE_NODEPORTS_MAP,
               '{ type inet_proto . inet_service : verdict ; comment "NodePort traffic" ; }')
        tx.rule(SERVICES_CHAIN, f"{ipx} daddr . meta l4proto . th dport vmap @{SERVICE_IPS_MAP}")
        if npa.match_all:
            tx.rule(SERVICES_CHAIN, f"fib daddr type local {no_localhost} meta l4proto . th dport "
                                    f"vmap @{SERVICE_NODEPORTS_MAP}")
        else:
            tx.rule(SERVICES_CHAIN, f"{ipx} daddr @{NODEPORT_IPS_SET} meta l4proto . th dport "
                                    f"vmap @{SERVICE_NODEPORTS_MAP}")

        for storage in self._storages:
            storage.reset(tx)

    # -- syncProxyRules ---------------------------------------------------------
    def _sync_services(self, tx: Transaction, view: ProxyView, full: bool, changed: set[str]) -> None:
        ipx = "ip" if view.family == 4 else "ip6"
        addr_type = "ipv4_addr" if view.family == 4 else "ipv6_addr"
        detector = view.local_detector
        node_ip = view.node_ip
        node_addr = ipaddress.ip_address(node_ip) if node_ip else None
        active_chains: set[str] = set()
        active_affinity: set[str] = set()
        created: set[str] = set()

        def ensure_chain(name: str, skip: bool) -> None:
            if name in created:
                return
            created.add(name)
            active_chains.add(name)
            if not skip:
                tx.add("chain", name)
                tx.flush("chain", name)

        for spn, svc in view.services.items():
            protocol = svc.protocol.lower()
            name = svc.name_string
            port = str(svc.port)
            cluster_eps, local_eps, reachable, has_endpoints = view.categorize(spn)
            skip = not full and spn.namespaced_name not in changed
            names = service_names(svc)
            ep_names = [endpoint_names(svc, ep) for ep in reachable]
            names_of = {ep.endpoint: pair for ep, pair in zip(reachable, ep_names)}
            for chain, affinity_set in ep_names:
                ensure_chain(chain, skip)
                if svc.client_ip_affinity:
                    active_affinity.add(affinity_set)

            cluster_chain, local_chain = names.cluster, names.local
            uses_cluster_chain = bool(cluster_eps) and svc.uses_cluster_endpoints
            if uses_cluster_chain:
                ensure_chain(cluster_chain, skip)
            uses_local_chain = bool(local_eps) and svc.uses_local_endpoints
            if uses_local_chain:
                ensure_chain(local_chain, skip)

            internal_chain, has_internal = cluster_chain, has_endpoints
            if svc.internal_policy_local:
                internal_chain = local_chain
                has_internal = has_internal and bool(local_eps)
            external_policy_chain, has_external = cluster_chain, has_endpoints
            if svc.external_policy_local:
                external_policy_chain = local_chain
                has_external = has_external and bool(local_eps)
            external_chain = names.external
            uses_external_chain = has_endpoints and svc.externally_accessible
            if uses_external_chain:
                ensure_chain(external_chain, skip)

            if not has_endpoints:
                internal_verdict = external_verdict = f"goto {REJECT_CHAIN}"
            else:
                internal_verdict = external_verdict = "drop"

            # Capture the clusterIP.
            self.cluster_ips.ensure(tx, svc.cluster_ip)
            key = f"{svc.cluster_ip} . {protocol} . {port}"
            if has_internal:
                self.service_ips.ensure(tx, key, f"goto {internal_chain}")
            else:
                self.no_endpoint_services.ensure(tx, key, internal_verdict, name)
            # Capture externalIPs.
            for eip in svc.external_ips:
                key = f"{eip} . {protocol} . {port}"
                if has_endpoints:
                    self.service_ips.ensure(tx, key, f"goto {external_chain}")
                if not has_external:
                    self.no_endpoint_services.ensure(tx, key, external_verdict, name)
            # Capture load-balancer ingress.
            uses_fw_chain = bool(svc.load_balancer_vips) and bool(svc.load_balancer_source_ranges)
            fw_chain = names.firewall
            if uses_fw_chain:
                ensure_chain(fw_chain, skip)
            for lbip in svc.load_balancer_vips:
                key = f"{lbip} . {protocol} . {port}"
                if has_endpoints:
                    self.service_ips.ensure(tx, key, f"goto {external_chain}")
                if uses_fw_chain:
                    self.firewall_ips.ensure(tx, key, f"goto {fw_chain}")
            if not has_external:
                for lbip in svc.load_balancer_vips:
                    self.no_endpoint_services.ensure(tx, f"{lbip} . {protocol} . {port}", external_verdict, name)
            # Capture nodeports (not subject to loadBalancerSourceRanges).
            if svc.node_port:
                key = f"{protocol} . {svc.node_port}"
                if has_endpoints:
                    self.service_nodeports.ensure(tx, key, f"goto {external_chain}")
                if not has_external:
                    self.no_endpoint_nodeports.ensure(tx, key, external_verdict, name)

            if skip:
                continue

            # Internal traffic: masquerade off-cluster sources.
            if has_internal:
                if view.masquerade_all:
                    tx.rule(internal_chain, f"{ipx} daddr {svc.cluster_ip} jump {MARK_MASQ_CHAIN}")
                elif detector.is_implemented:
                    tx.rule(internal_chain, f"{ipx} daddr {svc.cluster_ip} {detector.if_not_local_nft()} "
                                            f"jump {MARK_MASQ_CHAIN}")
            # External traffic.
            if uses_external_chain:
                if not svc.external_policy_local:
                    tx.rule(external_chain, f"jump {MARK_MASQ_CHAIN}")
                else:
                    if detector.is_implemented:
                        tx.rule(external_chain, f"{detector.if_local_nft()} goto {cluster_chain}",
                                "short-circuit pod traffic")
                    tx.rule(external_chain, f"fib saddr type local jump {MARK_MASQ_CHAIN}",
                            "masquerade local traffic")
                    tx.rule(external_chain, f"fib saddr type local goto {cluster_chain}",
                            "short-circuit local traffic")
                if has_external:
                    tx.rule(external_chain, f"goto {external_policy_chain}")
            # loadBalancerSourceRanges.
            if uses_fw_chain:
                sources = list(svc.load_balancer_source_ranges)
                if node_addr is not None and any(node_addr in ipaddress.ip_network(c, strict=False)
                                                 for c in sources):
                    sources += svc.load_balancer_vips     # VIP looping back from this node
                tx.rule(fw_chain, f"{ipx} saddr != {{ {' , '.join(sources)} }} drop")
            # Per-endpoint affinity sets.
            if svc.client_ip_affinity:
                for _, affinity_set in ep_names:
                    tx.add("set", affinity_set, f"{{ type {addr_type} ; flags dynamic,timeout ; "
                                                f"timeout {svc.sticky_max_age_seconds}s ; }}")
            if uses_cluster_chain:
                self._write_service_to_endpoint_rules(tx, ipx, svc, cluster_chain, cluster_eps, names_of)
            if uses_local_chain:
                self._write_service_to_endpoint_rules(tx, ipx, svc, local_chain, local_eps, names_of)
            # The per-endpoint chains.
            for ep, (chain, affinity_set) in zip(reachable, ep_names):
                tx.rule(chain, f"{ipx} saddr {ep.ip} jump {MARK_MASQ_CHAIN}")
                if svc.client_ip_affinity:
                    tx.rule(chain, f"update @{affinity_set} {{ {ipx} saddr }}")
                tx.rule(chain, f"meta l4proto {protocol} dnat to {ep.endpoint}")

        # Stale service chains: flushed now, deleted at the next sync (map elements
        # pointing to them are only released by the kernel a little later).
        for chain in sorted(self.table.chains):
            if is_service_chain(chain) and chain not in active_chains:
                tx.flush("chain", chain)
                self.stale_chains.add(chain)
        # Stale affinity sets can go at once.
        for name in sorted(self.table.sets):
            if is_affinity_set(name) and name not in active_affinity:
                tx.delete("set", name)
        for storage in self._storages:
            storage.cleanup(tx)

    @staticmethod
    def _write_service_to_endpoint_rules(tx: Transaction, ipx: str, svc: ServicePortInfo, chain: str,
                                         endpoints: list[EndpointInfo], names_of: dict) -> None:
        """writeServiceToEndpointRules: affinity lookups, then one numgen vmap."""
        names = [names_of[ep.endpoint] for ep in endpoints]
        if svc.client_ip_affinity:
            for ep_chain, affinity_set in names:
                tx.rule(chain, f"{ipx} saddr @{affinity_set} goto {ep_chain}")
        vmap = " , ".join(f"{i} : goto {ep_chain}" for i, (ep_chain, _) in enumerate(names))
        tx.rule(chain, f"numgen random mod {len(endpoints)} vmap {{ {vmap} }}")


def render(view: ProxyView) -> str:
    """The kube-proxy table after a full sync, as `nft -f` input (Fake.Dump order)."""
    proxier = NftablesProxier()
    proxier.transactions(view)
    return proxier.table.dump()


def install(ctx) -> None:
    """podnet.proxy.install's hook: kube-proxy's nftables mode on one node of a
    dataplane (an `ip kube-proxy` and, dual-stack, an `ip6 kube-proxy` table)."""
    from .model import proxy_view
    for family in ctx.cfg.families:
        ctx.nft.append(render(proxy_view(ctx.dp.cluster, ctx.node.name, family)))
