"""NetworkPolicy enforcement, rendered as kube-router's network policy controller
(pkg/controllers/netpol, iptables mode) programs a node.

    install_policy(dp)        # called by podnet.dataplane.build_dataplane after the service proxy

What every node gets (filter table of iptables / ip6tables, plus ipsets):

    INPUT / FORWARD / OUTPUT  #1  -m comment --comment "kube-router netpol - <uuid>" -j KUBE-ROUTER-<hook>
    KUBE-ROUTER-INPUT             RETURN for the service CIDR and the node-port range, then ...
    KUBE-ROUTER-FORWARD/-OUTPUT   per local pod: -d POD -j KUBE-POD-FW-<hash> (also -m physdev
                                  --physdev-is-bridged, for bridged CNIs through br_netfilter) and
                                  -s POD -j KUBE-POD-FW-<hash>; last: ACCEPT what carries 0x20000
    KUBE-POD-FW-<hash>            one per local pod: RELATED,ESTABLISHED ACCEPT; ACCEPT from the
                                  node itself (addrtype LOCAL); jump to each policy chain that
                                  isolates the pod (-d POD for ingress, -s POD for egress), or to
                                  KUBE-NWPLCY-DEFAULT for a direction no policy isolates; NFLOG and
                                  REJECT unless a policy chain set 0x10000; clear 0x10000, set 0x20000
    KUBE-NWPLCY-<hash>            one per policy and direction: for every rule, port and peer kind,
                                  `-m set --match-set <peers> src|dst ... -j MARK --set-xmark
                                  0x10000/0x10000` and a RETURN once marked
    KUBE-NWPLCY-DEFAULT           marks everything (the direction is not isolated)
    ipsets KUBE-SRC-* / KUBE-DST-*  the selected pods' IPs (hash:ip) and ipBlocks (hash:net, except
                                  entries as `nomatch`), cluster-wide, the same on every node

Replies pass the stateful rule; what no policy allows is REJECTed (icmp-port-unreachable, so
a TCP connect() fails at once with ECONNREFUSED). The rules run in filter FORWARD / OUTPUT,
after kube-proxy's DNAT in nat PREROUTING / OUTPUT, so they see the backend pod's IP.

The semantics come from podnet.policy.engine (plugin semantics): which pods each policy
selects, what each rule's peers and ports resolve to (named ports per destination pod),
computed per equivalence class of pods. This module only writes them down, so the
policy chains' size depends on the policies, not on the number of pods; the per-pod
chains are a constant number of rules per local pod, as kube-router writes them.

Where podnet differs from kube-router (docs/networkpolicy.md says why):
- one policy chain per policy *and direction* (kube-router jumps to a single chain for a
  policy with both policyTypes, where an ingress rule can then admit a selected pod's
  egress and the other way round); chain hashes take the direction where kube-router
  takes its sync timestamp, so names are stable;
- rule ports are the engine's merged intervals (`--dport 80:81` for 80 and 81), and named
  ports that resolve differently on different pods get one ipset per resolution;
- an ipBlock whose except overlaps another peer of the same rule is written as its exact
  CIDR decomposition (the longest-prefix `nomatch` trick would hide the other peer);
  IPv6 ::/0 is written as ::/1 + 8000::/1;
- no ICMP exemptions in KUBE-NWPLCY-DEFAULT (NetworkPolicy does not speak of ICMP; a
  non-isolated direction accepts everything anyway).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from typing import Iterable, Optional

from ..api.objects import Pod
from .addresses import IPNetwork
from .engine import AllowEntry, PolicyEngine
from .model import DIRECTIONS, EGRESS, INGRESS, NetworkPolicy, Rule
from .ports import MAX_PORT, MIN_PORT, Connections

INPUT_CHAIN, FORWARD_CHAIN, OUTPUT_CHAIN = "KUBE-ROUTER-INPUT", "KUBE-ROUTER-FORWARD", "KUBE-ROUTER-OUTPUT"
TOP_LEVEL = {"INPUT": INPUT_CHAIN, "FORWARD": FORWARD_CHAIN, "OUTPUT": OUTPUT_CHAIN}
DEFAULT_CHAIN = "KUBE-NWPLCY-DEFAULT"
POD_FW_PREFIX, POLICY_PREFIX = "KUBE-POD-FW-", "KUBE-NWPLCY-"
SRC_SET_PREFIX, DST_SET_PREFIX = "KUBE-SRC-", "KUBE-DST-"
MARK_MATCHED = "0x10000/0x10000"        # a policy chain allowed the packet
MARK_ACCEPT = "0x20000/0x20000"         # the pod firewall passed it: the top-level chain accepts
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}   # as kube-router spells v1.IPFamily
NFLOG = "-j NFLOG --nflog-group 100"
NFLOG_LIMIT = "-m limit --limit 10/min --limit-burst 10"
LOCAL_NODE_COMMENT = "rule to permit the traffic traffic to pods when source is the pod's local node"


# ---------------------------------------------------------------------------- names

def encode(data: str) -> str:
    """kube-router's name hash: base32(sha256(data)), first 16 characters."""
    return base64.b32encode(hashlib.sha256(data.encode()).digest()).decode()[:16]


def pod_chain_name(namespace: str, name: str) -> str:
    return POD_FW_PREFIX + encode(namespace + name)


def policy_chain_name(namespace: str, name: str, direction: str, family: int) -> str:
    return POLICY_PREFIX + encode(namespace + name + direction + FAMILY_NAMES[family])


def set_name(prefix: str, family: int, base: str) -> str:
    """An ipset name: kube-router prefixes IPv6 sets with `inet6:` (31 characters at most)."""
    name = prefix + encode(base)
    return name if family == 4 else "inet6:" + name


def _uuid_comment(chain: str, comment: str, spec: list[str]) -> str:
    """kube-router's top-level rules carry `<comment> - <hash of chain + rule spec>`."""
    return f"{comment} - {encode(chain + ''.join(spec))}"


def _q(text: str) -> str:
    """A --comment argument as iptables-save prints it."""
    if text and all(c.isalnum() or c in "-_./:" for c in text):
        return text
    return '"' + "".join("\\" + c if c in "\\\"'" else c for c in text) + '"'


def _host(ip) -> str:
    return f"{ip}/{ip.max_prefixlen}"


# ---------------------------------------------------------------------------- the plan

@dataclass
class IpSetSpec:
    name: str
    type: str                       # hash:ip | hash:net
    family: int
    entries: list[str] = field(default_factory=list)    # "10.244.1.5", "10.0.0.0/8 nomatch"

    def lines(self) -> list[str]:
        fam = "inet" if self.family == 4 else "inet6"
        out = [f"create {self.name} {self.type} family {fam} hashsize 1024 maxelem 65536 timeout 0"]
        for entry in self.entries:
            value, _, nomatch = entry.partition(" ")
            out.append(f"add {self.name} {value} timeout 0" + (f" {nomatch}" if nomatch else ""))
        return out


@dataclass
class FamilyPlan:
    """Everything one IP family's rules need that is the same on every node."""
    family: int
    chains: dict[str, list[str]] = field(default_factory=dict)     # policy chains -> rules
    sets: dict[str, IpSetSpec] = field(default_factory=dict)
    jumps: dict[tuple[str, str], str] = field(default_factory=dict)   # (policy key, direction) -> chain


class _Renderer:
    def __init__(self, engine: PolicyEngine, family: int):
        self.engine = engine
        self.family = family
        self.fam = FAMILY_NAMES[family]
        self.plan = FamilyPlan(family)
        # (policy key, direction) -> the classes it isolates; class index -> its views
        self.targets: dict[tuple[str, str], list] = {}
        for c in engine.classes:
            if c.node_traffic or not c.pods:
                continue
            for direction in DIRECTIONS:
                for pol in engine.isolating(c.pods[0], direction):
                    self.targets.setdefault((pol.key, direction), []).append(c)
        self._views: dict[tuple[int, str], tuple[AllowEntry, ...]] = {}

    def entries(self, cls, direction: str) -> tuple[AllowEntry, ...]:
        key = (cls.index, direction)
        if key not in self._views:
            view = (self.engine.ingress_view if direction == INGRESS else self.engine.egress_view)(cls.pods[0])
            self._views[key] = view.entries
        return self._views[key]

    # -- sets ---------------------------------------------------------------------
    def ip_set(self, name: str, pods: Iterable[Pod]) -> str:
        ips = sorted({ip for p in pods for ip in p.pod_ips if ip.version == self.family}, key=int)
        self.plan.sets[name] = IpSetSpec(name, "hash:ip", self.family, [str(ip) for ip in ips])
        return name

    def net_set(self, name: str, rule: Rule, entry: AllowEntry) -> Optional[str]:
        entries = _ipblock_entries(rule, self.family, entry.cidrs)
        if not entries:
            return None
        self.plan.sets[name] = IpSetSpec(name, "hash:net", self.family, entries)
        return name

    # -- policy chains --------------------------------------------------------------
    def policy(self, pol: NetworkPolicy) -> None:
        for direction in DIRECTIONS:
            if direction not in pol.types:
                continue
            chain = policy_chain_name(pol.namespace, pol.name, direction, self.family)
            self.plan.jumps[(pol.key, direction)] = chain
            rules: list[str] = []
            self.plan.chains[chain] = rules
            targets = self.targets.get((pol.key, direction), [])
            # the pods the policy selects: destinations of its ingress rules, sources of its egress rules
            prefix = DST_SET_PREFIX if direction == INGRESS else SRC_SET_PREFIX
            target_set = self.ip_set(set_name(prefix, self.family, pol.namespace + pol.name + self.fam),
                                     (p for c in targets for p in c.pods))
            write = self.ingress_rule if direction == INGRESS else self.egress_rule
            for i, rule in enumerate(pol.rules(direction)):
                write(pol, i, rule, targets, target_set, rules)

    def ingress_rule(self, pol, i, rule, targets, target_set, out) -> None:
        # the rule's entry on each target class: its peers are the same for all of them, its
        # ports may not be (named ports resolve on the target), so targets are grouped by them
        groups: dict[Connections, list] = {}
        entry = None
        for c in targets:
            for e in self.entries(c, INGRESS):
                if e.rule == rule.ref:
                    groups.setdefault(e.connections, []).append(c)
                    entry = e
        if entry is None:
            return
        base = pol.namespace + pol.name + "ingressrule" + str(i)
        src_pods = src_net = None
        if not entry.any_peer:
            if entry.pods:
                src_pods = self.ip_set(set_name(SRC_SET_PREFIX, self.family, base + self.fam + "pod"), entry.pods)
            src_net = self.net_set(set_name(SRC_SET_PREFIX, self.family, base + self.fam + "ipblock"), rule, entry)
        covered_all = len(groups) == 1 and len(next(iter(groups.values()))) == len(targets)
        who = f"policy name {pol.name} namespace {pol.namespace}"
        for j, (conns, members) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
            dst = target_set if covered_all else self.ip_set(
                set_name(DST_SET_PREFIX, self.family, base + str(j) + self.fam + "namedport"),
                (p for c in members for p in c.pods))
            if entry.any_peer:
                self.mark_rules(out, f"rule to ACCEPT traffic from all sources to dest pods selected by "
                                     f"policy name: {pol.name} namespace {pol.namespace}", None, dst, conns)
                continue
            if src_pods:
                self.mark_rules(out, f"rule to ACCEPT traffic from source pods to dest pods selected by {who}",
                                src_pods, dst, conns)
            if src_net:
                self.mark_rules(out, f"rule to ACCEPT traffic from specified ipBlocks to dest pods selected by "
                                     f"policy name: {pol.name} namespace {pol.namespace}", src_net, dst, conns)

    def egress_rule(self, pol, i, rule, targets, target_set, out) -> None:
        if not targets:
            return
        # egress entries do not depend on the source class: named ports resolve per destination
        entries = [e for e in self.entries(targets[0], EGRESS) if e.rule == rule.ref]
        base = pol.namespace + pol.name + "egressrule" + str(i)
        pod_entries = [e for e in entries if e.pods]
        for e in entries:
            if e.pods:
                continue
            if e.any_peer:
                self.mark_rules(out, f"rule to ACCEPT traffic from source pods to all destinations selected by "
                                     f"policy name: {pol.name} namespace {pol.namespace}", target_set, None,
                                e.connections)
            elif e.cidrs:
                dst = self.net_set(set_name(DST_SET_PREFIX, self.family, base + self.fam + "ipblock"), rule, e)
                if dst:
                    self.mark_rules(out, f"rule to ACCEPT traffic from source pods to specified ipBlocks selected "
                                         f"by policy name: {pol.name} namespace {pol.namespace}", target_set, dst,
                                    e.connections)
        for j, e in enumerate(pod_entries):
            # the first group is the rule's destination pods, others are named ports resolved otherwise
            name = (set_name(DST_SET_PREFIX, self.family, base + self.fam + "pod") if j == 0 else
                    set_name(DST_SET_PREFIX, self.family, base + str(j) + self.fam + "namedport"))
            dst = self.ip_set(name, e.pods)
            self.mark_rules(out, f"rule to ACCEPT traffic from source pods to dest pods selected by policy name "
                                 f"{pol.name} namespace {pol.namespace}", target_set, dst, e.connections)

    def mark_rules(self, out: list[str], comment: str, src: Optional[str], dst: Optional[str],
                   conns: Connections) -> None:
        """kube-router's appendRuleToPolicyChain: MARK, then RETURN once marked, per port match."""
        sets = ""
        if src:
            sets += f" -m set --match-set {src} src"
        if dst:
            sets += f" -m set --match-set {dst} dst"
        for proto, ports in _port_matches(conns):
            head = f"{proto}-m comment --comment {_q(comment)}{sets}{ports}"
            out.append(f"{head} -j MARK --set-xmark {MARK_MATCHED}")
            out.append(f"{head} -m mark --mark {MARK_MATCHED} -j RETURN")


def _port_matches(conns: Connections) -> list[tuple[str, str]]:
    """(`-p proto `, ` -m proto --dport N[:M]`) pairs covering `conns`; ("", "") for everything."""
    if conns.is_all:
        return [("", "")]
    out = []
    for proto, intervals in conns.items():
        p = proto.lower()
        if intervals == ((MIN_PORT, MAX_PORT),):
            out.append((f"-p {p} ", ""))
            continue
        for lo, hi in intervals:
            out.append((f"-p {p} ", f" -m {p} --dport {lo}" + (f":{hi}" if hi != lo else "")))
    return out


def _ipblock_entries(rule: Rule, family: int, exact: tuple[IPNetwork, ...]) -> list[str]:
    """The rule's ipBlocks of one family as kube-router fills a hash:net set (cidr, except
    entries `nomatch`, /0 split in two), unless an except would shadow another peer."""
    blocks = [p.ip_block for p in rule.peers if p.ip_block is not None and p.ip_block.cidr.version == family]
    if not blocks:
        return []

    def halves(net):
        return list(net.subnets(1)) if net.prefixlen == 0 else [net]

    entries: dict[IPNetwork, bool] = {}     # net -> nomatch
    safe = True
    for b in blocks:
        for net in halves(b.cidr):
            if entries.get(net):
                safe = False
            entries[net] = False
    for b in blocks:
        for e in b.excepts:
            others = [o for o in blocks if o is not b]
            if e in entries or any(e.overlaps(o.cidr) for o in others):
                safe = False
            entries[e] = True
    if not safe:
        return [str(n) for n in sorted((n for n in exact if n.version == family),
                                             key=lambda n: (int(n.network_address), n.prefixlen))]
    return [str(n) + (" nomatch" if nomatch else "")
            for n, nomatch in sorted(entries.items(), key=lambda kv: (int(kv[0].network_address), kv[0].prefixlen))]


# ---------------------------------------------------------------------------- per node

def _top_level(builder, cfg, family: int) -> None:
    builder.chain("filter", DEFAULT_CHAIN)
    builder.append("filter", DEFAULT_CHAIN, f'-m comment --comment "rule to mark traffic matching a network '
                                            f'policy" -j MARK --set-xmark {MARK_MATCHED}')
    for hook, chain in TOP_LEVEL.items():
        builder.chain("filter", chain)
        comment = _uuid_comment(hook, "kube-router netpol", ["-m", "comment", "--comment", "kube-router netpol",
                                                            "-j", chain])
        builder.insert("filter", hook, f"-m comment --comment {_q(comment)} -j {chain}")
    for cidr in cfg.service_subnets:
        if cidr.version != family:
            continue
        text = "allow traffic to primary/secondary cluster IP range"
        comment = _uuid_comment(INPUT_CHAIN, text, ["-m", "comment", "--comment", text, "-d", str(cidr),
                                                    "-j", "RETURN"])
        builder.append("filter", INPUT_CHAIN, f"-d {cidr} -m comment --comment {_q(comment)} -j RETURN")
    lo, hi = cfg.node_port_range
    for proto in ("tcp", "udp"):
        text = f"allow LOCAL {proto.upper()} traffic to node ports"
        comment = _uuid_comment(INPUT_CHAIN, text, ["-p", proto, "-m", "comment", "--comment", text, "-m",
                                                    "addrtype", "--dst-type", "LOCAL", "-m", "multiport",
                                                    "--dports", f"{lo}:{hi}", "-j", "RETURN"])
        builder.append("filter", INPUT_CHAIN, f"-p {proto} -m comment --comment {_q(comment)} -m addrtype "
                                              f"--dst-type LOCAL -m multiport --dports {lo}:{hi} -j RETURN")


def _pod_firewall(builder, engine: PolicyEngine, plan: FamilyPlan, pod: Pod, ip) -> None:
    chain = pod_chain_name(pod.namespace, pod.name)
    me = _host(ip)
    builder.chain("filter", chain)
    rules = [
        '-m comment --comment "rule for stateful firewall for pod" -m conntrack --ctstate RELATED,ESTABLISHED '
        '-j ACCEPT',
        f"-d {me} -m comment --comment {_q(LOCAL_NODE_COMMENT)} -m addrtype --src-type LOCAL -j ACCEPT",
    ]
    isolating = {d: sorted(p.key for p in engine.isolating(pod, d)) for d in DIRECTIONS}
    if not isolating[EGRESS]:
        rules.append(f'-s {me} -m comment --comment "run through default egress network policy  chain" '
                     f"-j {DEFAULT_CHAIN}")
    if not isolating[INGRESS]:
        rules.append(f'-d {me} -m comment --comment "run through default ingress network policy  chain" '
                     f"-j {DEFAULT_CHAIN}")
    for direction, flag in ((INGRESS, "-d"), (EGRESS, "-s")):
        for key in isolating[direction]:
            name = key.split("/", 1)[1]
            rules.append(f"{flag} {me} -m comment --comment {_q('run through nw policy ' + name)} "
                         f"-j {plan.jumps[(key, direction)]}")
    who = f"POD name:{pod.name} namespace: {pod.namespace}"
    reject = "icmp-port-unreachable" if ip.version == 4 else "icmp6-port-unreachable"
    rules += [
        f"-m comment --comment {_q('rule to log dropped traffic ' + who)} -m mark ! --mark {MARK_MATCHED} "
        f"{NFLOG_LIMIT} {NFLOG}",
        f"-m comment --comment {_q('rule to REJECT traffic destined for ' + who)} -m mark ! --mark "
        f"{MARK_MATCHED} -j REJECT --reject-with {reject}",
        f"-j MARK --set-xmark 0x0/{MARK_MATCHED.split('/')[1]}",
        f'-m comment --comment "set mark to ACCEPT traffic that comply to network policies" '
        f"-j MARK --set-xmark {MARK_ACCEPT}",
    ]
    for r in rules:
        builder.append("filter", chain, r)


def _intercept(builder, pods: list[tuple[Pod, object]], family: int) -> None:
    """Send the local pods' traffic (routed, locally sent, bridged) through their chains.

    kube-router writes these pod by pod; podnet writes every pod's outbound rules before the
    inbound ones, so that on a node with both ends the source's egress is judged first, as
    the packet leaves it (the verdict is the same either way; the trace names that side)."""
    targets = [(pod, ip, pod_chain_name(pod.namespace, pod.name)) for pod, _ in pods
               for ip in pod.pod_ips if ip.version == family]
    for pod, ip, chain in targets:
        me = _host(ip)
        frm = _q(f"rule to jump traffic from POD name:{pod.name} namespace: {pod.namespace} to chain {chain}")
        for top in (INPUT_CHAIN, FORWARD_CHAIN, OUTPUT_CHAIN):
            builder.append("filter", top, f"-s {me} -m comment --comment {frm} -j {chain}")
        builder.append("filter", FORWARD_CHAIN, f"-s {me} -m physdev --physdev-is-bridged -m comment --comment {frm} "
                                                f"-j {chain}")
    for pod, ip, chain in targets:
        me = _host(ip)
        to = _q(f"rule to jump traffic destined to POD name:{pod.name} namespace: {pod.namespace} to chain {chain}")
        builder.append("filter", FORWARD_CHAIN, f"-d {me} -m comment --comment {to} -j {chain}")
        builder.append("filter", OUTPUT_CHAIN, f"-d {me} -m comment --comment {to} -j {chain}")
        builder.append("filter", FORWARD_CHAIN, f"-d {me} -m physdev --physdev-is-bridged -m comment --comment {to} "
                                                f"-j {chain}")


def _explicit_accept(builder) -> None:
    for chain in TOP_LEVEL.values():
        builder.append("filter", chain, '-m comment --comment "rule to explicitly ACCEPT traffic that comply to '
                                        f'network policies" -m mark --mark {MARK_ACCEPT} -j ACCEPT')


# ---------------------------------------------------------------------------- entry point

def render_plans(engine: PolicyEngine, families: Iterable[int]) -> dict[int, FamilyPlan]:
    plans = {}
    for family in families:
        r = _Renderer(engine, family)
        for pol in sorted(engine.policies, key=lambda p: p.key):
            r.policy(pol)
        plans[family] = r.plan
    return plans


def install_policy(dp) -> None:
    """Program every node as kube-router's network policy controller would.

    Nothing is written when the cluster has no NetworkPolicy, or when the CNI enforces
    policies itself (a solution with `enforces_network_policy = True`)."""
    cluster = dp.cluster
    if not cluster.objects("NetworkPolicy"):
        return
    from ..cni import solution_for
    if getattr(solution_for(cluster.config), "enforces_network_policy", False):
        return
    engine = PolicyEngine(cluster)
    families = sorted(set(cluster.config.families) | {ip.version for p in cluster.pods for ip in p.pod_ips})
    plans = render_plans(engine, families)
    set_lines = [line for fam in families for s in sorted(plans[fam].sets.values(), key=lambda s: s.name)
                 for line in s.lines()]
    bridged = False
    for ctx in dp.contexts.values():
        local = sorted(((p, ns) for p, ns in ctx.pods() if not p.terminal and p.pod_ips), key=lambda x: x[0].key)
        for fam in families:
            builder = ctx.iptables if fam == 4 else ctx.ip6tables
            plan = plans[fam]
            _top_level(builder, cluster.config, fam)
            for chain, rules in plan.chains.items():
                builder.chain("filter", chain)
                for r in rules:
                    builder.append("filter", chain, r)
            for pod, _ in local:
                for ip in pod.pod_ips:
                    if ip.version == fam:
                        _pod_firewall(builder, engine, plan, pod, ip)
            _intercept(builder, local, fam)
            _explicit_accept(builder)
        ctx.ipsets.extend(set_lines)
        # bridged CNIs: same-node pod traffic meets the rules only through br_netfilter
        if any(l.kind == "bridge" for l in ctx.ns.links.values()) and \
                ctx.ns.sysctls.get("net.bridge.bridge-nf-call-iptables") != "1":
            ctx.ns.sysctls["net.bridge.bridge-nf-call-iptables"] = "1"
            if 6 in families:
                ctx.ns.sysctls["net.bridge.bridge-nf-call-ip6tables"] = "1"
            bridged = True
    if bridged:
        dp.notes.append("NetworkPolicy (kube-router): net.bridge.bridge-nf-call-iptables=1 on bridged nodes, "
                        "so that same-node pod traffic reaches the policy rules")
