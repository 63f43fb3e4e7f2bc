"""kube-proxy's iptables mode, rule for rule (pkg/proxy/iptables/proxier.go).

    rules = render(proxy_view(cluster, "worker", 4))
    rules.restore          # the iptables-restore payload kube-proxy writes (*filter, *nat)
    rules.jumps            # the rules kube-proxy inserts into the built-in chains
    rules.apply(builder)   # both, into a podnet.linux.iptables_builder.IptablesBuilder

`IptablesProxier` keeps what the previous sync wrote, as the real proxier does:
its first `sync(view)` returns a full payload, later ones a partial payload
that rewrites the filter table and the top-level nat chains but only the
per-service chains (KUBE-SVC/SVL/EXT/FW/SEP) of Services whose ports or
endpoints changed, plus `-X` lines for chains no longer used.

Where upstream varies with the host, the choices are: nfacct counters off
unless asked for (podnet's lab kernels lack nfacct; the upstream test has them
on), `--random-fully` off (the fake iptables' default),
nf_conntrack_tcp_be_liberal unset. The masquerade mark is printed as
iptables-save and the upstream tests print it (`0x4000`; kube-proxy itself
writes `%#08x`, `0x004000`, which iptables reads back as the same value).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from dataclasses import dataclass
from functools import lru_cache

from .model import ChangeTracker, EndpointInfo, ProxyView, ServicePortInfo

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBE_FIREWALL = "KUBE-FIREWALL"            # kubelet's chain, duplicated by kube-proxy

SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX = (
    "KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-")
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX)

LARGE_CLUSTER_ENDPOINTS_THRESHOLD = 1000
NFACCT_LOCALHOST_NODEPORTS = "localhost_nps_accepted_pkts"
NFACCT_CT_INVALID_DROPPED = "ct_state_invalid_dropped_pkts"
NODEPORTS_LAST_COMMENT = '"kubernetes service nodeports; NOTE: this must be the last rule in this chain"'


# ---------------------------------------------------------------------------
# chain names
# ---------------------------------------------------------------------------

def _hash16(text: str) -> str:
    """The first 16 characters of base32(sha256(text)) (= base32 of its first 10 bytes)."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest()[:10]).decode()


@lru_cache(maxsize=1 << 16)
def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """portProtoHash: first 16 characters of base32(sha256(servicePortName + protocol))."""
    return _hash16(service_port_name + protocol)


@lru_cache(maxsize=1 << 18)
def endpoint_chain_name(service_port_name: str, protocol: str, endpoint: str) -> str:
    """servicePortEndpointChainName: KUBE-SEP- + hash of name, protocol and `ip:port`."""
    return SEP_PREFIX + _hash16(service_port_name + protocol + endpoint)


@dataclass(frozen=True, slots=True)
class ServiceChains:
    """newServiceInfo's precomputed chain names of one Service port."""
    cluster: str    # KUBE-SVC-  (servicePortPolicyClusterChain)
    local: str      # KUBE-SVL-  (servicePortPolicyLocalChainName)
    external: str   # KUBE-EXT-  (serviceExternalChainName)
    firewall: str   # KUBE-FW-   (serviceFirewallChainName)


def service_chains(svc: ServicePortInfo) -> ServiceChains:
    h = port_proto_hash(svc.name_string, svc.protocol.lower())
    return ServiceChains(SVC_PREFIX + h, SVL_PREFIX + h, EXT_PREFIX + h, FW_PREFIX + h)


def is_service_chain(name: str) -> bool:
    """isServiceChainName."""
    return name.startswith(SERVICE_CHAIN_PREFIXES)


# ---------------------------------------------------------------------------
# jump rules into the built-in chains
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class JumpRule:
    """One rule kube-proxy keeps in a built-in chain (`rule` is what follows
    `-A CHAIN` in iptables-save)."""
    table: str
    chain: str
    rule: str
    target: str

    def apply(self, builder) -> None:
        builder.chain(self.table, self.target)          # EnsureChain
        builder.jump(self.table, self.chain, self.rule, prepend=True)


_CT_NEW = "-m conntrack --ctstate NEW"
# iptablesJumpChains then iptablesKubeletJumpChains: (table, dst, src, comment, extra args)
IPTABLES_JUMP_CHAINS = [
    ("filter", KUBE_EXTERNAL_SERVICES, "INPUT", "kubernetes externally-visible service portals", _CT_NEW),
    ("filter", KUBE_EXTERNAL_SERVICES, "FORWARD", "kubernetes externally-visible service portals", _CT_NEW),
    ("filter", KUBE_NODEPORTS, "INPUT", "kubernetes health check service ports", ""),
    ("filter", KUBE_SERVICES, "FORWARD", "kubernetes service portals", _CT_NEW),
    ("filter", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", _CT_NEW),
    ("filter", KUBE_FORWARD, "FORWARD", "kubernetes forwarding rules", ""),
    ("filter", KUBE_PROXY_FIREWALL, "INPUT", "kubernetes load balancer firewall", _CT_NEW),
    ("filter", KUBE_PROXY_FIREWALL, "OUTPUT", "kubernetes load balancer firewall", _CT_NEW),
    ("filter", KUBE_PROXY_FIREWALL, "FORWARD", "kubernetes load balancer firewall", _CT_NEW),
    ("nat", KUBE_SERVICES, "OUTPUT", "kubernetes service portals", ""),
    ("nat", KUBE_SERVICES, "PREROUTING", "kubernetes service portals", ""),
    ("nat", KUBE_POSTROUTING, "POSTROUTING", "kubernetes postrouting rules", ""),
]
IPTABLES_KUBELET_JUMP_CHAINS = [
    ("filter", KUBE_FIREWALL, "INPUT", "", ""),
    ("filter", KUBE_FIREWALL, "OUTPUT", "", ""),
]


def jump_rules(specs=None) -> list[JumpRule]:
    """The jump rules of syncProxyRules' full sync, in the order they end up in
    each built-in chain: kube-proxy inserts each at the top (EnsureRule(Prepend)),
    so in a chain the last one inserted comes first. Apply them in list order
    with IptablesBuilder.jump(..., prepend=True) (or `JumpRule.apply`).
    `specs` are (table, dst, src, comment, extra args) in the order kube-proxy
    ensures them (default: this mode's; the IPVS mode passes its own)."""
    per_chain: dict[tuple[str, str], list[JumpRule]] = {}
    if specs is None:
        specs = IPTABLES_JUMP_CHAINS + IPTABLES_KUBELET_JUMP_CHAINS
    for table, dst, src, comment, extra in specs:
        parts = [extra] if extra else []
        if comment:
            parts.append(f'-m comment --comment "{comment}"')
        parts.append(f"-j {dst}")
        per_chain.setdefault((table, src), []).insert(0, JumpRule(table, src, " ".join(parts), dst))
    return [rule for rules in per_chain.values() for rule in rules]


# ---------------------------------------------------------------------------
# the proxier
# ---------------------------------------------------------------------------

@dataclass
class IptablesProxyRules:
    """What kube-proxy programs on one node for one IP family."""
    restore: str                    # iptables-restore input (iptables or ip6tables)
    jumps: list[JumpRule]
    family: int = 4

    def apply(self, builder) -> None:
        builder.add_restore(self.restore)
        for jump in self.jumps:
            jump.apply(builder)

    def iptables_save(self) -> str:
        """The node's iptables-save as it would look with only kube-proxy's rules."""
        from ..linux.iptables_builder import IptablesBuilder
        builder = IptablesBuilder()
        self.apply(builder)
        return builder.render()


def _probability(n: int, cache: dict[int, str] = {}) -> str:
    """computeProbability: `%0.10f` of 1/n (memoised, as upstream precomputes)."""
    p = cache.get(n)
    if p is None:
        p = cache[n] = "%0.10f" % (1.0 / n)
    return p


class IptablesProxier:
    """The state syncProxyRules keeps between syncs, and the sync itself.

    `sync(view)` returns the iptables-restore payload of this sync: full the
    first time (and after `force_full_sync()` or when the node or the options
    change, as a node-label change forces one upstream), partial afterwards.
    What changed is model.ChangeTracker's answer (per Service namespace/name,
    as upstream's trackers report it).
    """

    def __init__(self, *, nfacct: bool = False, conntrack_tcp_liberal: bool = False,
                 random_fully: bool = False):
        self.nfacct = nfacct
        self.conntrack_tcp_liberal = conntrack_tcp_liberal
        self.random_fully = random_fully
        self.changes = ChangeTracker()
        self.last_sync_full = False
        self.large_cluster_mode = False
        self.nat_chains: set[str] = set()       # service chains in the kernel (iptables-save)
        self._names: dict = {}

    def force_full_sync(self) -> None:
        self.changes.force_full_sync()

    def _names_of(self, svc: ServicePortInfo) -> ServiceChains:
        names = self._names.get(svc.name)
        if names is None:
            names = self._names[svc.name] = service_chains(svc)
        return names

    def sync(self, view: ProxyView) -> str:
        """syncProxyRules: the iptables-restore payload of this sync."""
        full, changed = self.changes.update(view)
        self.last_sync_full = full
        return self._write(view, full, changed)

    def _write(self, view: ProxyView, full: bool, changed: set[str]) -> str:
        is_ipv6 = view.family == 6
        mark = view.masquerade_mark
        detector = view.local_detector
        npa = view.node_port_addresses_of()
        # NewProxier: no localhost NodePorts unless --nodeport-addresses covers 127.0.0.1
        # (and never for IPv6, which NewDualStackProxier starts without them)
        localhost_node_ports = view.localhost_node_ports and npa.contains_ipv4_loopback and not is_ipv6
        node_ip = view.node_ip
        node_addr = ipaddress.ip_address(node_ip) if node_ip else None

        filter_chains = [f":{c} - [0:0]" for c in (KUBE_SERVICES, KUBE_EXTERNAL_SERVICES, KUBE_FORWARD,
                                                   KUBE_NODEPORTS, KUBE_PROXY_FIREWALL)]
        filter_rules: list[str] = []
        nat_chains = [f":{c} - [0:0]" for c in (KUBE_SERVICES, KUBE_NODEPORTS, KUBE_POSTROUTING,
                                                KUBE_MARK_MASQ)]
        nat_rules = [
            f"-A {KUBE_POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN",
            # clear the mark so a packet that re-traverses the stack is not masqueraded again
            f"-A {KUBE_POSTROUTING} -j MARK --xor-mark {mark}",
            f'-A {KUBE_POSTROUTING} -m comment --comment "kubernetes service traffic requiring SNAT" '
            f"-j MASQUERADE" + (" --random-fully" if self.random_fully else ""),
            f"-A {KUBE_MARK_MASQ} -j MARK --or-mark {mark}",
        ]
        if localhost_node_ports:
            # the mitigation of route_localnet's hole (https://issue.k8s.io/90259)
            filter_chains.append(f":{KUBE_FIREWALL} - [0:0]")
            filter_rules.append(
                f'-A {KUBE_FIREWALL} -m comment --comment "block incoming localnet connections" '
                "-d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP")

        active: set[str] = set()
        large = view.total_endpoints > LARGE_CLUSTER_ENDPOINTS_THRESHOLD
        self.large_cluster_mode = large

        for spn, svc in view.services.items():
            emit = full or spn.namespaced_name in changed
            self._write_service(view, svc, emit, large, localhost_node_ports, detector, node_addr,
                                filter_rules, nat_chains, nat_rules, active)

        # Delete chains no longer in use (upstream lists them with iptables-save).
        for chain in sorted(self.nat_chains - active):
            nat_chains.append(f":{chain} - [0:0]")
            nat_rules.append(f"-X {chain}")
        self.nat_chains = active

        # Finally, tail-call to KUBE-NODEPORTS: after every other service portal rule.
        if npa.match_all:
            dest = "-m addrtype --dst-type LOCAL"
            if is_ipv6:
                dest += " ! -d ::1/128"
            elif not localhost_node_ports:
                dest += " ! -d 127.0.0.0/8"
            nat_rules.append(f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_LAST_COMMENT} "
                             f"{dest} -j {KUBE_NODEPORTS}")
        else:
            for ip in npa.get_node_ips(view.node.interface_addresses(view.family)):
                if ipaddress.ip_address(ip).is_loopback and (is_ipv6 or not localhost_node_ports):
                    continue
                nat_rules.append(f"-A {KUBE_SERVICES} -m comment --comment {NODEPORTS_LAST_COMMENT} "
                                 f"-d {ip} -j {KUBE_NODEPORTS}")

        if not self.conntrack_tcp_liberal:
            # INVALID packets would otherwise reset connections (issues 74839, 117924)
            filter_rules.append(f"-A {KUBE_FORWARD} -m conntrack --ctstate INVALID"
                                + (f" -m nfacct --nfacct-name {NFACCT_CT_INVALID_DROPPED}"
                                   if self.nfacct else "") + " -j DROP")
        filter_rules.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding rules" '
                            f"-m mark --mark {mark}/{mark} -j ACCEPT")
        filter_rules.append(f'-A {KUBE_FORWARD} -m comment --comment "kubernetes forwarding conntrack rule" '
                            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")

        return "\n".join(["*filter", *filter_chains, *filter_rules, "COMMIT",
                          "*nat", *nat_chains, *nat_rules, "COMMIT"]) + "\n"

    def _write_service(self, view: ProxyView, svc: ServicePortInfo, emit: bool, large: bool,
                       localhost_node_ports: bool, detector, node_addr,
                       filter_rules: list[str], nat_chains: list[str], nat_rules: list[str],
                       active: set[str]) -> None:
        """The body of syncProxyRules' loop for one Service port. With `emit`
        false (a partial sync of an unchanged Service) the KUBE-SERVICES,
        KUBE-NODEPORTS and filter rules are still written, its own chains only
        noted as active."""
        protocol = svc.protocol.lower()
        name = svc.name_string
        cluster_eps, local_eps, reachable, has_endpoints = view.categorize(svc.name)
        chains = self._names_of(svc)
        cluster_chain, local_chain = chains.cluster, chains.local
        uses_cluster_chain = bool(cluster_eps) and svc.uses_cluster_endpoints
        uses_local_chain = bool(local_eps) and svc.uses_local_endpoints

        internal_chain, has_internal = cluster_chain, has_endpoints
        if svc.internal_policy_local:
            internal_chain = local_chain
            has_internal = has_internal and bool(local_eps)
        external_policy_chain, has_external = cluster_chain, has_endpoints
        if svc.external_policy_local:
            external_policy_chain = local_chain
            has_external = has_external and bool(local_eps)
        external_chain = chains.external
        # the short-circuit rules for local traffic are needed even without external endpoints
        uses_external_chain = has_endpoints and svc.externally_accessible
        lb_chain = external_chain
        uses_fw_chain = has_endpoints and bool(svc.load_balancer_vips) and bool(svc.load_balancer_source_ranges)
        if uses_fw_chain:
            lb_chain = chains.firewall

        if not has_endpoints:
            internal_target = external_target = "REJECT"
            internal_comment = external_comment = f'"{name} has no endpoints"'
        else:
            internal_target = external_target = "DROP"
            internal_comment = external_comment = f'"{name} has no local endpoints"'

        match = f"-m {protocol} -p {protocol}"
        port = svc.port
        cip = svc.cluster_ip

        # Capture the clusterIP.
        if has_internal:
            nat_rules.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} cluster IP" {match} '
                             f"-d {cip} --dport {port} -j {internal_chain}")
        else:
            filter_rules.append(f"-A {KUBE_SERVICES} -m comment --comment {internal_comment} {match} "
                                f"-d {cip} --dport {port} -j {internal_target}")
        # Capture externalIPs.
        for eip in svc.external_ips:
            if has_endpoints:
                nat_rules.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} external IP" {match} '
                                 f"-d {eip} --dport {port} -j {external_chain}")
            if not has_external:
                filter_rules.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} "
                                    f"{match} -d {eip} --dport {port} -j {external_target}")
        # Capture load-balancer ingress.
        for lbip in svc.load_balancer_vips:
            if has_endpoints:
                nat_rules.append(f'-A {KUBE_SERVICES} -m comment --comment "{name} loadbalancer IP" {match} '
                                 f"-d {lbip} --dport {port} -j {lb_chain}")
            if uses_fw_chain:
                filter_rules.append(f'-A {KUBE_PROXY_FIREWALL} -m comment --comment '
                                    f'"{name} traffic not accepted by {chains.firewall}" {match} '
                                    f"-d {lbip} --dport {port} -j DROP")
        if not has_external:
            for lbip in svc.load_balancer_vips:
                filter_rules.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} "
                                    f"{match} -d {lbip} --dport {port} -j {external_target}")
        # Capture nodeports (not subject to loadBalancerSourceRanges).
        if svc.node_port:
            if has_endpoints:
                if localhost_node_ports and self.nfacct:
                    nat_rules.append(f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match} "
                                     f"-d 127.0.0.0/8 --dport {svc.node_port} "
                                     f"-m nfacct --nfacct-name {NFACCT_LOCALHOST_NODEPORTS} -j {external_chain}")
                nat_rules.append(f"-A {KUBE_NODEPORTS} -m comment --comment {name} {match} "
                                 f"--dport {svc.node_port} -j {external_chain}")
            if not has_external:
                filter_rules.append(f"-A {KUBE_EXTERNAL_SERVICES} -m comment --comment {external_comment} "
                                    f"-m addrtype --dst-type LOCAL {match} --dport {svc.node_port} "
                                    f"-j {external_target}")
        # Capture healthCheckNodePorts, whether or not this node has local endpoints.
        if svc.health_check_node_port:
            filter_rules.append(f'-A {KUBE_NODEPORTS} -m comment --comment "{name} health check node port" '
                                f"-m tcp -p tcp --dport {svc.health_check_node_port} -j ACCEPT")

        # The Service's own chains.
        if uses_external_chain:
            active.add(external_chain)
        if uses_fw_chain:
            active.add(chains.firewall)
        if uses_cluster_chain:
            active.add(cluster_chain)
        if uses_local_chain:
            active.add(local_chain)
        sep_names = [endpoint_chain_name(name, protocol, ep.endpoint) for ep in reachable]
        active.update(sep_names)
        if not emit:
            return

        # Internal traffic: masquerade off-cluster sources (a static route to the
        # Service range via any node may bounce off-node).
        if has_internal:
            args = f'-m comment --comment "{name} cluster IP" {match} -d {cip} --dport {port}'
            if view.masquerade_all:
                nat_rules.append(f"-A {internal_chain} {args} -j {KUBE_MARK_MASQ}")
            elif detector.is_implemented:
                nat_rules.append(f"-A {internal_chain} {args} {detector.if_not_local()} -j {KUBE_MARK_MASQ}")

        # External traffic: every external destination jumps to the EXT chain.
        if uses_external_chain:
            nat_chains.append(f":{external_chain} - [0:0]")
            if not svc.external_policy_local:
                nat_rules.append(f'-A {external_chain} -m comment --comment "masquerade traffic for {name} '
                                 f'external destinations" -j {KUBE_MARK_MASQ}')
            else:
                if detector.is_implemented:
                    # pod -> external destination: as if out to the LB and back, no policy
                    nat_rules.append(f'-A {external_chain} -m comment --comment "pod traffic for {name} '
                                     f'external destinations" {detector.if_local()} -j {cluster_chain}')
                nat_rules.append(f'-A {external_chain} -m comment --comment "masquerade LOCAL traffic for '
                                 f'{name} external destinations" -m addrtype --src-type LOCAL -j {KUBE_MARK_MASQ}')
                nat_rules.append(f'-A {external_chain} -m comment --comment "route LOCAL traffic for '
                                 f'{name} external destinations" -m addrtype --src-type LOCAL -j {cluster_chain}')
            if has_external:
                nat_rules.append(f"-A {external_chain} -j {external_policy_chain}")

        # loadBalancerSourceRanges.
        if uses_fw_chain:
            fw = chains.firewall
            nat_chains.append(f":{fw} - [0:0]")
            head = f'-A {fw} -m comment --comment "{name} loadbalancer IP"'
            allow_from_node = False
            for cidr in svc.load_balancer_source_ranges:
                nat_rules.append(f"{head} -s {cidr} -j {external_chain}")
                if node_addr is not None and node_addr in ipaddress.ip_network(cidr, strict=False):
                    allow_from_node = True
            if allow_from_node:
                # a VIP that is a local address loops back with the VIP as source
                for lbip in svc.load_balancer_vips:
                    nat_rules.append(f"{head} -s {lbip} -j {external_chain}")
            nat_rules.append(f'-A {fw} -m comment --comment "other traffic to {name} will be dropped by '
                             f'{KUBE_PROXY_FIREWALL}"')

        if uses_cluster_chain:
            nat_chains.append(f":{cluster_chain} - [0:0]")
            self._write_service_to_endpoint_rules(nat_rules, svc, cluster_chain, cluster_eps, large)
        if uses_local_chain:
            nat_chains.append(f":{local_chain} - [0:0]")
            self._write_service_to_endpoint_rules(nat_rules, svc, local_chain, local_eps, large)

        # The per-endpoint chains.
        affinity = svc.client_ip_affinity
        for ep, sep in zip(reachable, sep_names):
            nat_chains.append(f":{sep} - [0:0]")
            head = f"-A {sep}" if large else f"-A {sep} -m comment --comment {name}"
            nat_rules.append(f"{head} -s {ep.ip} -j {KUBE_MARK_MASQ}")
            recent = f" -m recent --name {sep} --set" if affinity else ""
            nat_rules.append(f"{head}{recent} {match} -j DNAT --to-destination {ep.endpoint}")

    @staticmethod
    def _write_service_to_endpoint_rules(nat_rules: list[str], svc: ServicePortInfo, chain: str,
                                         endpoints: list[EndpointInfo], large: bool) -> None:
        """writeServiceToEndpointRules: session-affinity `recent` checks, then one
        rule per endpoint with probability 1/(n-i), the last unconditional."""
        name = svc.name_string
        protocol = svc.protocol.lower()
        seps = [endpoint_chain_name(name, protocol, ep.endpoint) for ep in endpoints]
        if svc.client_ip_affinity:
            for ep, sep in zip(endpoints, seps):
                comment = "" if large else f' -m comment --comment "{name} -> {ep.endpoint}"'
                nat_rules.append(f"-A {chain}{comment} -m recent --name {sep} --rcheck "
                                 f"--seconds {svc.sticky_max_age_seconds} --reap -j {sep}")
        n = len(endpoints)
        for i, (ep, sep) in enumerate(zip(endpoints, seps)):
            comment = "" if large else f' -m comment --comment "{name} -> {ep.endpoint}"'
            stat = f" -m statistic --mode random --probability {_probability(n - i)}" if i < n - 1 else ""
            nat_rules.append(f"-A {chain}{comment}{stat} -j {sep}")


def render(view: ProxyView, *, nfacct: bool = False, conntrack_tcp_liberal: bool = False,
           random_fully: bool = False) -> IptablesProxyRules:
    """kube-proxy's first (full) sync for this view: the restore payload and the jump rules."""
    proxier = IptablesProxier(nfacct=nfacct, conntrack_tcp_liberal=conntrack_tcp_liberal,
                              random_fully=random_fully)
    return IptablesProxyRules(proxier.sync(view), jump_rules(), view.family)


def install(ctx) -> None:
    """podnet.proxy.install's hook: kube-proxy's iptables mode on one node of a
    dataplane, one proxier per IP family of the cluster (NewDualStackProxier),
    with the sysctl NewProxier sets for localhost NodePorts."""
    from .model import proxy_view
    for family in ctx.cfg.families:
        view = proxy_view(ctx.dp.cluster, ctx.node.name, family)
        render(view).apply(ctx.iptables if family == 4 else ctx.ip6tables)
        if family == 4 and view.localhost_node_ports and view.node_port_addresses_of().contains_ipv4_loopback:
            ctx.ns.sysctls["net.ipv4.conf.all.route_localnet"] = "1"
