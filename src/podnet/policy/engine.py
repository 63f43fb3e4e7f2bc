"""NetworkPolicy semantics: who may open which connections to whom, and why.

    engine = PolicyEngine(cluster)                       # plugin semantics (see below)
    v = engine.allowed(pod_a, pod_b, 5432, "TCP")        # -> Verdict
    v.allowed, v.reason, v.deciding                      # bool, one line, the rules/policies that decided
    engine.connections(pod_a, pod_b)                     # -> Connections ("TCP 5432,UDP 53", ...)
    engine.ingress_view(pod_b), engine.egress_view(pod_a)  # -> DirectionView, for rule renderers

The rules (networking.k8s.io/v1):

- A pod is isolated for a direction when at least one policy of its namespace
  selects it (spec.podSelector) and lists that direction in its policyTypes.
  A pod that no policy isolates may send / receive anything.
- An isolated pod may send / receive what the union of the rules of those
  policies allows (rules only allow; there is no deny and no order).
- A connection is allowed when the egress side of the source and the ingress
  side of the destination both allow it. Replies of an allowed connection are
  allowed (enforcement is stateful); the verdict is about opening connections.
- A peer with podSelector alone selects pods of the policy's namespace; with
  namespaceSelector alone every pod of the selected namespaces; with both, in
  one peer, the selected pods of the selected namespaces (AND). Separate peers
  are ORed.
- Named ports are resolved against the destination pod's containerPorts
  (name and protocol); a pod without that name gets nothing from that entry.

Two `Semantics` cover what the API leaves to the implementation:

- ``plugin`` (the default here; what iptables/nft-based plugins such as
  Calico, kube-router and Antrea do, and what the Kubernetes e2e tests expect):
  ipBlocks match any address, pod IPs included; host-network pods are their
  node: selectors never select them, their traffic is node traffic; a pod
  always accepts connections from its own node (kubelet probes).
- ``analyzer`` (np-guard/netpol-analyzer's model, used by `podnet policy list`):
  ipBlocks only describe addresses outside the cluster; host-network pods are
  pods like any other; no node exemption.

Scale: pods are grouped into equivalence classes - same namespace, same values
for the label keys policies look at, same named ports policies use, and (plugin
semantics) the same ipBlock region and host-network flag. Every computation
runs per class, so thousands of replicas cost what one does.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Optional, Union

from ..api.objects import Pod
from ..errors import InputError
from . import addresses
from .addresses import IPAddress, IPNetwork, Range
from .model import (DIRECTIONS, EGRESS, INGRESS, NetworkPolicy, Peer, Rule, RuleRef,
                    load_policies)
from .ports import ALL_CONNECTIONS, NO_CONNECTIONS, Connections

NamedPorts = dict[tuple[str, str], int]      # (name, protocol) -> port number


# ---------------------------------------------------------------------------
# semantics
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Semantics:
    name: str
    host_network_is_node: bool      # host-network pods: node traffic, never selected by selectors
    ipblocks_match_pods: bool       # an ipBlock also matches pod IPs inside it
    own_node_allowed: bool          # a pod always accepts connections from its own node
    summary: str = ""


PLUGIN = Semantics("plugin", True, True, True,
                   "ipBlocks match pod IPs; host-network pods are node traffic; "
                   "a pod's own node may always connect to it")
ANALYZER = Semantics("analyzer", False, False, False,
                     "as np-guard/netpol-analyzer: ipBlocks describe external addresses only; "
                     "host-network pods are ordinary pods")
SEMANTICS = {s.name: s for s in (PLUGIN, ANALYZER)}


def semantics_named(value: Union[str, Semantics]) -> Semantics:
    if isinstance(value, Semantics):
        return value
    try:
        return SEMANTICS[value]
    except KeyError:
        raise InputError(f"unknown policy semantics {value!r} (known: {', '.join(SEMANTICS)})",
                         field="--semantics") from None


# ---------------------------------------------------------------------------
# equivalence classes of pods
# ---------------------------------------------------------------------------

@dataclass(eq=False)
class PodClass:
    """Pods that every policy treats alike."""
    index: int
    namespace: str
    ns_labels: dict[str, str]
    labels: dict[str, str]          # only the keys some selector looks at
    named_ports: NamedPorts         # only the names some policy uses
    node_traffic: bool              # a host-network pod under plugin semantics
    pods: list[Pod] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"PodClass#{self.index}({self.namespace}, {self.labels}, {len(self.pods)} pods)"


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Endpoint:
    """One side of a connection: a pod, a node, or an address outside the cluster."""
    kind: str                       # pod | node | external
    label: str
    pod: Optional[Pod] = field(default=None, repr=False)
    ip: Optional[IPAddress] = None
    node: str = ""                  # the node of a node endpoint / of node traffic


@dataclass(frozen=True)
class RuleCheck:
    """How one rule of a policy that isolates the pod judged the connection."""
    rule: Rule
    peer_ok: bool
    port_ok: bool
    why: str

    @property
    def allows(self) -> bool:
        return self.peer_ok and self.port_ok

    @property
    def ref(self) -> RuleRef:
        return self.rule.ref


@dataclass(frozen=True)
class DirectionDecision:
    """The egress side of the source or the ingress side of the destination."""
    direction: str
    subject: Endpoint               # the pod the direction is about
    applies: bool                   # False: not a pod NetworkPolicy can isolate
    policies: tuple[str, ...]       # policies isolating the subject in this direction
    checks: tuple[RuleCheck, ...]   # every rule of those policies
    allowed: bool
    note: str
    bystanders: tuple[str, ...] = ()  # policies selecting the subject for the other direction only

    @property
    def isolated(self) -> bool:
        return bool(self.policies)

    @property
    def allowed_by(self) -> tuple[RuleRef, ...]:
        return tuple(c.ref for c in self.checks if c.allows)


@dataclass(frozen=True)
class Verdict:
    """Whether src may open a connection to dst on port/protocol, and which rules decided."""
    src: Endpoint
    dst: Endpoint
    port: int
    protocol: str
    egress: DirectionDecision
    ingress: DirectionDecision
    semantics: str

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def deciding(self) -> tuple[str, ...]:
        """The rules that allowed it (both sides), or the policies whose isolation blocked it."""
        if self.allowed:
            return tuple(str(r) for d in (self.egress, self.ingress) for r in d.allowed_by)
        return tuple(p for d in (self.egress, self.ingress) if not d.allowed for p in d.policies)

    @property
    def dropped_at(self) -> Optional[str]:
        """'egress' (leaving the source pod), 'ingress' (entering the destination), or None."""
        if not self.egress.allowed:
            return EGRESS
        if not self.ingress.allowed:
            return INGRESS
        return None

    @property
    def reason(self) -> str:
        what = f"{self.src.label} -> {self.dst.label} {self.protocol}/{self.port}"
        if self.allowed:
            by = ", ".join(self.deciding)
            return f"{what}: allowed" + (f" by {by}" if by else " (no policy isolates either side)")
        side = self.egress if not self.egress.allowed else self.ingress
        return f"{what}: blocked on {side.direction} of {side.subject.label}: {side.note}"


@dataclass(frozen=True)
class AllowEntry:
    """One thing an isolated pod may do: talk to these peers on these ports, because of `rule`.

    `any_peer` means every address; otherwise the peers are `pods` (their IPs) and
    `cidrs` (ipBlocks, with their except lists already cut out)."""
    rule: RuleRef
    connections: Connections
    any_peer: bool = False
    pods: tuple[Pod, ...] = field(default=(), repr=False)
    cidrs: tuple[IPNetwork, ...] = ()

    def addresses(self) -> list[IPNetwork]:
        """Every peer as CIDRs (pod IPs as /32 and /128), sorted."""
        nets = {ipaddress.ip_network(ip) for p in self.pods for ip in p.pod_ips} | set(self.cidrs)
        return sorted(nets, key=lambda n: (n.version, int(n.network_address), n.prefixlen))


@dataclass(frozen=True)
class DirectionView:
    """Everything one pod's ingress or egress filter needs: render as
    `established,related accept; [own node accept]; entries accept; drop` when isolated."""
    pod: Pod = field(repr=False)
    direction: str
    applies: bool                   # False: a host-network pod under plugin semantics
    policies: tuple[str, ...]       # isolating policies ("" = not isolated: accept everything)
    entries: tuple[AllowEntry, ...]
    own_node_ips: tuple[IPAddress, ...] = ()   # ingress: always accepted from these

    @property
    def isolated(self) -> bool:
        return bool(self.policies)


# ---------------------------------------------------------------------------
# the engine
# ---------------------------------------------------------------------------

@dataclass
class _EgressRules:
    """The egress rules of the policies isolating one class, indexed by what they reach."""
    to_anyone: list[Rule]                       # rules without peers
    to_class: dict[int, list[Rule]]             # class index -> rules whose peers select it
    with_ip_blocks: list[Rule]                  # rules with ipBlock peers (for addresses)


@dataclass
class _IngressAllows:
    """What the policies isolating one class let in (named ports already resolved on it)."""
    from_anyone: Connections                    # rules without peers
    from_class: dict[int, Connections]          # class index -> what it may open
    ip_rules: list[tuple[Rule, Connections]]    # rules with ipBlock peers (for addresses)


class PolicyEngine:
    """NetworkPolicy semantics over a reconciled cluster (every pod, every policy)."""

    def __init__(self, cluster, semantics: Union[str, Semantics] = PLUGIN):
        self.cluster = cluster
        self.semantics = semantics_named(semantics)
        self.policies: list[NetworkPolicy] = load_policies(cluster.objects("NetworkPolicy"))
        self._policy = {p.key: p for p in self.policies}
        self._keys = set().union(*(p.selector_keys() for p in self.policies))
        self._port_names = set().union(*(p.named_ports() for p in self.policies))
        blocks = [b for p in self.policies for d in DIRECTIONS for b in p.ip_blocks(d)]
        self.ip_versions = tuple(sorted({4} | {b.cidr.version for b in blocks}))
        self._cuts = addresses.Cuts((r for b in blocks for r in b.ranges), self.ip_versions)
        self._ns_labels = {name: dict(ns.meta.labels) for name, ns in cluster.namespaces.items()}
        self._build_classes(cluster.pods)
        self._index_policies()
        self._egress: dict[int, Optional[_EgressRules]] = {}
        self._ingress: dict[int, Optional[_IngressAllows]] = {}
        self._rule_conns: dict[tuple, Connections] = {}
        self._by_ip: Optional[dict] = None

    # ------------------------------------------------------------- classes
    def _build_classes(self, pods: Iterable[Pod]) -> None:
        self.classes: list[PodClass] = []
        self._class_of: dict[int, PodClass] = {}
        self._by_ns: dict[str, list[PodClass]] = defaultdict(list)
        self._by_region: dict[tuple[int, int], list[PodClass]] = defaultdict(list)
        by_key: dict[tuple, PodClass] = {}
        for pod in pods:
            node_traffic = self.semantics.host_network_is_node and pod.host_network
            labels = {k: v for k, v in pod.meta.labels.items() if k in self._keys}
            named = {(p.name, p.protocol): p.container_port for c in pod.spec.containers
                     for p in c.ports if p.name and p.name in self._port_names}
            regions = tuple(self._cuts.region(ip) for ip in pod.pod_ips) \
                if (self.semantics.ipblocks_match_pods or node_traffic) else ()
            key = (pod.namespace, tuple(sorted(labels.items())), tuple(sorted(named.items())),
                   node_traffic, regions)
            cls = by_key.get(key)
            if cls is None:
                ns_labels = self._ns_labels.get(pod.namespace,
                                                {"kubernetes.io/metadata.name": pod.namespace})
                cls = PodClass(len(self.classes), pod.namespace, ns_labels, labels, named, node_traffic)
                by_key[key] = cls
                self.classes.append(cls)
                self._by_ns[pod.namespace].append(cls)
                for region in set(regions):
                    self._by_region[region].append(cls)
            cls.pods.append(pod)
            if pod.node_name:
                cls.nodes.add(pod.node_name)
            self._class_of[id(pod)] = cls

    def class_of(self, pod: Pod) -> PodClass:
        try:
            return self._class_of[id(pod)]
        except KeyError:
            raise InputError(f"pod {pod.key} is not part of this cluster") from None

    # ------------------------------------------------------------ selection
    def _index_policies(self) -> None:
        """Which classes each policy isolates, and which classes each rule's peers select."""
        self._isolating: dict[str, list[list[NetworkPolicy]]] = {
            d: [[] for _ in self.classes] for d in DIRECTIONS}
        self._selects_any: dict[int, list[NetworkPolicy]] = defaultdict(list)
        self._matched: dict[RuleRef, set[int]] = {}
        for pol in self.policies:
            for cls in self._by_ns.get(pol.namespace, ()):
                if self._selects(pol, cls):
                    self._selects_any[cls.index].append(pol)
                    for d in pol.types:
                        self._isolating[d][cls.index].append(pol)
            for d in DIRECTIONS:
                for rule in pol.rules(d):
                    if rule.peers:
                        self._matched[rule.ref] = {c.index for peer in rule.peers
                                                   for c in self._peer_classes(peer, pol.namespace)}

    def _selects(self, pol: NetworkPolicy, cls: PodClass) -> bool:
        return (cls.namespace == pol.namespace and not cls.node_traffic
                and pol.pod_selector.matches(cls.labels))

    def _peer_classes(self, peer: Peer, policy_ns: str) -> list[PodClass]:
        if peer.ip_block is not None:
            # classes are keyed on the atomic ranges their IPs fall in: look those up
            inside = {self._cuts.region(addresses.address(v, first)): self._cuts.region(addresses.address(v, last))
                      for v, first, last in peer.ip_block.ranges}
            return [c for region, classes in self._by_region.items() for c in classes
                    if any(lo[0] == region[0] and lo[1] <= region[1] <= hi[1] for lo, hi in inside.items())]
        if peer.namespace_selector is None:
            candidates = self._by_ns.get(policy_ns, [])
        else:
            candidates = [c for ns, classes in self._by_ns.items()
                          if peer.namespace_selector.matches(classes[0].ns_labels) for c in classes]
        return [c for c in candidates if not c.node_traffic
                and (peer.pod_selector is None or peer.pod_selector.matches(c.labels))]

    def equivalent(self, a: PodClass, b: PodClass) -> bool:
        """Whether every policy treats the pods of two classes alike (classes are keyed on
        the label keys policies look at, so two classes may still never be told apart)."""
        if a is b:
            return True
        if (a.named_ports != b.named_ports or a.node_traffic != b.node_traffic
                or any(self._isolating[d][a.index] != self._isolating[d][b.index] for d in DIRECTIONS)):
            return False
        return all((a.index in m) == (b.index in m) for m in self._matched.values())

    def isolating(self, pod: Pod, direction: str) -> list[NetworkPolicy]:
        """The policies that select `pod` for `direction` (empty: not isolated)."""
        return list(self._isolating[direction][self.class_of(pod).index])

    def selecting(self, pod: Pod) -> list[NetworkPolicy]:
        """Every policy whose podSelector selects `pod`, whatever its policyTypes."""
        return list(self._selects_any.get(self.class_of(pod).index, ()))

    # ----------------------------------------------- class-level connections
    def _conns(self, rules: Iterable[Rule], named: Optional[NamedPorts]) -> Connections:
        key = (tuple(r.ref for r in rules), tuple(sorted(named.items())) if named is not None else None)
        out = self._rule_conns.get(key)
        if out is None:
            out = Connections.union(r.connections(named) for r in rules)
            self._rule_conns[key] = out
        return out

    def _egress_rules(self, s: PodClass) -> Optional[_EgressRules]:
        """None when `s` is not isolated for egress."""
        if s.index not in self._egress:
            out = None
            if self._isolating[EGRESS][s.index]:
                out = _EgressRules([], defaultdict(list), [])
                for pol in self._isolating[EGRESS][s.index]:
                    for rule in pol.egress:
                        if not rule.peers:
                            out.to_anyone.append(rule)
                            continue
                        if any(p.ip_block is not None for p in rule.peers):
                            out.with_ip_blocks.append(rule)
                        for idx in self._matched[rule.ref]:
                            out.to_class[idx].append(rule)
            self._egress[s.index] = out
        return self._egress[s.index]

    def _ingress_allows(self, d: PodClass) -> Optional[_IngressAllows]:
        """None when `d` is not isolated for ingress."""
        if d.index not in self._ingress:
            out = None
            if self._isolating[INGRESS][d.index]:
                out = _IngressAllows(NO_CONNECTIONS, {}, [])
                for pol in self._isolating[INGRESS][d.index]:
                    for rule in pol.ingress:
                        conns = self._conns((rule,), d.named_ports)
                        if not conns:
                            continue
                        if not rule.peers:
                            out.from_anyone = out.from_anyone | conns
                            continue
                        if any(p.ip_block is not None for p in rule.peers):
                            out.ip_rules.append((rule, conns))
                        for idx in self._matched[rule.ref]:
                            out.from_class[idx] = out.from_class.get(idx, NO_CONNECTIONS) | conns
            self._ingress[d.index] = out
        return self._ingress[d.index]

    def egress_allows(self, s: PodClass, d: PodClass) -> Connections:
        """What the egress side of `s` lets out towards pods of `d`."""
        rules = self._egress_rules(s)
        if rules is None:
            return ALL_CONNECTIONS
        applicable = rules.to_anyone + rules.to_class.get(d.index, [])
        return self._conns(applicable, d.named_ports) if applicable else NO_CONNECTIONS

    def ingress_allows(self, s: PodClass, d: PodClass) -> Connections:
        """What the ingress side of `d` lets in from pods of `s`."""
        allows = self._ingress_allows(d)
        if allows is None:
            return ALL_CONNECTIONS
        return allows.from_anyone | allows.from_class.get(s.index, NO_CONNECTIONS)

    def class_connections(self, s: PodClass, d: PodClass, same_node: bool = False) -> Connections:
        """What pods of `s` may open to (other) pods of `d`. `same_node`: some pod of
        `s` runs on the node of some pod of `d` (matters for node traffic only)."""
        e = self.egress_allows(s, d)
        if not e:
            return NO_CONNECTIONS
        if s.node_traffic and same_node and self.semantics.own_node_allowed:
            return e
        return e & self.ingress_allows(s, d)

    def egress_to_ranges(self, s: PodClass, ranges: list[Range]) -> list[Connections]:
        """What pods of `s` may open to each of the sorted, disjoint, atomic `ranges`."""
        rules = self._egress_rules(s)
        if rules is None:
            return [ALL_CONNECTIONS] * len(ranges)
        out = [self._conns(rules.to_anyone, None) if rules.to_anyone else NO_CONNECTIONS] * len(ranges)
        for rule in rules.with_ip_blocks:
            _add_covered(out, ranges, rule, self._conns((rule,), None))
        return out

    def ingress_from_ranges(self, ranges: list[Range], d: PodClass) -> list[Connections]:
        """What the addresses of each atomic range may open to pods of `d`."""
        allows = self._ingress_allows(d)
        if allows is None:
            return [ALL_CONNECTIONS] * len(ranges)
        out = [allows.from_anyone] * len(ranges)
        for rule, conns in allows.ip_rules:
            _add_covered(out, ranges, rule, conns)
        return out

    def class_matrix(self, src: list[PodClass], dst: list[PodClass]) -> dict[tuple[int, int], Connections]:
        """{(src class index, dst class index): connections} for every pair that allows something.

        Work is proportional to the answer: a source whose egress is open reaches every
        open destination, the isolated destinations' "from anyone" part, and the entries
        that name it in some destination's ingress rules."""
        out: dict[tuple[int, int], Connections] = {}
        open_dst, anyone, naming = [], [], defaultdict(dict)
        for d in dst:
            allows = self._ingress_allows(d)
            if allows is None:
                open_dst.append(d.index)
                continue
            if allows.from_anyone:
                anyone.append((d.index, allows.from_anyone))
            for si, conns in allows.from_class.items():
                naming[si][d.index] = conns
        wanted = {d.index for d in dst}
        for s in src:
            rules = self._egress_rules(s)
            if rules is None and not s.node_traffic:
                found = dict.fromkeys(open_dst, ALL_CONNECTIONS)
                found.update(anyone)
                for di, conns in naming.get(s.index, {}).items():
                    found[di] = found[di] | conns if di in found else conns
                out.update(((s.index, di), c) for di, c in found.items())
                continue
            if rules is not None and not rules.to_anyone:
                targets = [self.classes[i] for i in rules.to_class if i in wanted]
            else:
                targets = dst
            for d in targets:
                c = self.class_connections(s, d, bool(s.node_traffic and s.nodes & d.nodes))
                if c:
                    out[(s.index, d.index)] = c
        return out

    # --------------------------------------------------------- pod level
    def connections(self, src: Pod, dst: Pod) -> Connections:
        """Everything `src` may open to `dst` (all protocols and ports)."""
        if src is dst:
            return ALL_CONNECTIONS      # loopback inside the pod never meets a policy
        s, d = self.class_of(src), self.class_of(dst)
        return self.class_connections(s, d, bool(src.node_name) and src.node_name == dst.node_name)

    def endpoint(self, x: Union[Pod, str, IPAddress]) -> Endpoint:
        """A pod, or an IP address: a pod's IP, a node's IP, or an external address."""
        if isinstance(x, Endpoint):
            return x
        if isinstance(x, Pod):
            return self._pod_endpoint(x)
        try:
            ip = ipaddress.ip_address(str(x))
        except ValueError:
            raise InputError(f"not a pod or an IP address: {x!r}") from None
        if self._by_ip is None:
            self._by_ip = {a: pod for pod in self.cluster.pods if not pod.host_network
                           for a in pod.pod_ips}
        if ip in self._by_ip:
            return self._pod_endpoint(self._by_ip[ip])
        for node in self.cluster.nodes:
            if ip in node.internal_ips or any(a == str(ip) for _, a in node.addresses):
                return Endpoint("node", f"node/{node.name} ({ip})", ip=ip, node=node.name)
        return Endpoint("external", str(ip), ip=ip)

    def _pod_endpoint(self, pod: Pod) -> Endpoint:
        traffic_is_node = self.semantics.host_network_is_node and pod.host_network
        return Endpoint("pod", pod.key, pod=pod, ip=pod.pod_ip,
                        node=pod.node_name if traffic_is_node else "")

    def allowed(self, src: Union[Pod, str, IPAddress], dst: Union[Pod, str, IPAddress],
                port: int, protocol: str = "TCP") -> Verdict:
        """May `src` open a `protocol` connection to `dst`:`port`? Names the deciding rules.

        `src` and `dst` are pods or IP addresses (a pod's IP stands for the pod)."""
        protocol = protocol.upper()
        a, b = self.endpoint(src), self.endpoint(dst)
        if a.pod is not None and a.pod is b.pod:
            same = DirectionDecision(EGRESS, a, False, (), (), True,
                                     "a pod's traffic to itself never meets a policy")
            return Verdict(a, b, port, protocol, same,
                           DirectionDecision(INGRESS, b, False, (), (), True, same.note),
                           self.semantics.name)
        named = self._named_ports_of(b)
        egress = self._decide(EGRESS, a, b, port, protocol, named)
        ingress = self._decide(INGRESS, b, a, port, protocol, named)
        return Verdict(a, b, port, protocol, egress, ingress, self.semantics.name)

    def _named_ports_of(self, e: Endpoint) -> Optional[NamedPorts]:
        if e.pod is None or e.node:
            return None
        return {(p.name, p.protocol): p.container_port for c in e.pod.spec.containers
                for p in c.ports if p.name}

    def _decide(self, direction: str, subject: Endpoint, peer: Endpoint, port: int, protocol: str,
                dst_named: Optional[NamedPorts]) -> DirectionDecision:
        if subject.pod is None or subject.node:
            what = ("an address outside the cluster" if subject.kind == "external"
                    else "node traffic" if subject.node else "not a pod")
            return DirectionDecision(direction, subject, False, (), (), True,
                                     f"{subject.label} is {what}: no NetworkPolicy applies to its {direction}")
        isolating = self.isolating(subject.pod, direction)
        bystanders = tuple(p.key for p in self.selecting(subject.pod) if direction not in p.types)
        if not isolating:
            return DirectionDecision(direction, subject, True, (), (), True,
                                     f"no NetworkPolicy isolates {subject.label} for {direction}",
                                     bystanders)
        checks = []
        for pol in isolating:
            for rule in pol.rules(direction):
                checks.append(self._check(rule, pol, peer, port, protocol, dst_named))
        keys = tuple(p.key for p in isolating)
        if any(c.allows for c in checks):
            return DirectionDecision(direction, subject, True, keys, tuple(checks), True,
                                     "allowed by " + ", ".join(str(c.ref) for c in checks if c.allows),
                                     bystanders)
        if (direction == INGRESS and self.semantics.own_node_allowed and peer.node
                and peer.node == subject.pod.node_name):
            return DirectionDecision(direction, subject, True, keys, tuple(checks), True,
                                     f"{peer.label} is the pod's own node, which may always connect",
                                     bystanders)
        if not checks:
            note = (f"isolated by {', '.join(keys)}, which allow{'s' if len(keys) == 1 else ''} "
                    f"no {direction} at all")
        else:
            note = f"no {direction} rule of {', '.join(keys)} allows it"
        return DirectionDecision(direction, subject, True, keys, tuple(checks), False, note, bystanders)

    def _check(self, rule: Rule, pol: NetworkPolicy, peer: Endpoint, port: int, protocol: str,
               dst_named: Optional[NamedPorts]) -> RuleCheck:
        if not rule.peers:
            peer_ok, peer_why = True, f"any {'source' if rule.ref.direction == INGRESS else 'destination'}"
        else:
            results = [self._peer_match(p, pol.namespace, peer) for p in rule.peers]
            peer_ok = any(ok for ok, _ in results)
            peer_why = next((why for ok, why in results if ok), "; ".join(why for _, why in results))
        conns = rule.connections(dst_named)
        port_ok = conns.contains(protocol, port)
        if not rule.ports:
            port_why = "all ports"
        elif port_ok:
            port_why = f"{protocol}/{port} is in {conns}"
        else:
            port_why = f"{protocol}/{port} not in {conns if conns else 'the listed ports'}"
            unresolved = [f"{p.port}/{p.protocol}" for p in rule.ports
                          if p.named and (p.port, p.protocol) not in (dst_named or {})]
            if unresolved:
                port_why += f" (the destination declares no port {', '.join(unresolved)})"
        return RuleCheck(rule, peer_ok, port_ok, f"{peer_why}; {port_why}")

    def _peer_match(self, peer: Peer, policy_ns: str, e: Endpoint) -> tuple[bool, str]:
        if peer.ip_block is not None:
            if e.pod is not None and not e.node and not self.semantics.ipblocks_match_pods:
                return False, f"{peer} does not select pods ({self.semantics.name} semantics)"
            ips = list(e.pod.pod_ips) if e.pod is not None else [e.ip]
            hit = [ip for ip in ips if ip is not None and addresses.contains(peer.ip_block.ranges, ip)]
            if hit:
                return True, f"{hit[0]} is in {peer}"
            return False, f"{', '.join(map(str, ips)) or 'no address'} not in {peer}"
        if e.pod is None or e.node:
            return False, f"{e.label} is not a pod, so {peer} cannot select it"
        pod = e.pod
        if peer.namespace_selector is None:
            if pod.namespace != policy_ns:
                return False, f"{peer}: {pod.key} is in namespace {pod.namespace}, not {policy_ns}"
        else:
            ns_labels = self.class_of(pod).ns_labels
            if not peer.namespace_selector.matches(ns_labels):
                return False, f"namespace {pod.namespace} does not match namespaceSelector {peer.namespace_selector}"
        if peer.pod_selector is not None and not peer.pod_selector.matches(pod.meta.labels):
            return False, f"{pod.key} does not match podSelector {peer.pod_selector}"
        return True, f"{pod.key} matches {peer}"

    # ---------------------------------------------------- renderer views
    def ingress_view(self, pod: Pod) -> DirectionView:
        """What may enter `pod`, as (peers, ports, rule) entries."""
        return self._view(pod, INGRESS)

    def egress_view(self, pod: Pod) -> DirectionView:
        """What may leave `pod`, as (peers, ports, rule) entries."""
        return self._view(pod, EGRESS)

    def _view(self, pod: Pod, direction: str) -> DirectionView:
        cls = self.class_of(pod)
        own_node: tuple[IPAddress, ...] = ()
        if direction == INGRESS and self.semantics.own_node_allowed and pod.node_name:
            node = self.cluster.find_node(pod.node_name)
            own_node = tuple(node.internal_ips) if node else ()
        if cls.node_traffic:
            return DirectionView(pod, direction, False, (), ())
        isolating = self._isolating[direction][cls.index]
        entries: list[AllowEntry] = []
        for pol in isolating:
            for rule in pol.rules(direction):
                entries.extend(self._entries(rule, cls, direction))
        return DirectionView(pod, direction, True, tuple(p.key for p in isolating), tuple(entries),
                             own_node if isolating else ())

    def _entries(self, rule: Rule, cls: PodClass, direction: str) -> list[AllowEntry]:
        cidrs = tuple(n for p in rule.peers if p.ip_block is not None
                      for r in p.ip_block.ranges for n in addresses.range_cidrs(r))
        matched = [self.classes[i] for i in sorted(self._matched.get(rule.ref, ()))]
        if direction == INGRESS:
            conns = self._conns((rule,), cls.named_ports)
            if not conns:
                return []
            if not rule.peers:
                return [AllowEntry(rule.ref, conns, any_peer=True)]
            pods = tuple(p for c in matched for p in c.pods)
            return [AllowEntry(rule.ref, conns, pods=pods, cidrs=cidrs)]
        # egress: named ports resolve per destination pod, so group the destinations by them
        out = []
        numeric = self._conns((rule,), None)     # what the rule allows towards plain addresses
        if numeric and (not rule.peers or cidrs):
            out.append(AllowEntry(rule.ref, numeric, any_peer=not rule.peers, cidrs=cidrs))
        if rule.peers:
            targets = matched
        elif any(p.named for p in rule.ports):
            targets = self.classes              # any destination, but names resolve per pod
        else:
            targets = []                        # the any-peer entry says it all
        groups: dict[Connections, list[Pod]] = defaultdict(list)
        for c in targets:
            if c.node_traffic:
                continue
            conns = self._conns((rule,), c.named_ports)
            if not rule.peers and (conns & numeric) == conns:
                continue                        # nothing beyond the any-peer entry
            if conns:
                groups[conns].extend(c.pods)
        for conns, pods in sorted(groups.items(), key=lambda kv: str(kv[0])):
            out.append(AllowEntry(rule.ref, conns, pods=tuple(pods)))
        return out

    # ------------------------------------------------------------- helpers
    def policy(self, key: str) -> NetworkPolicy:
        try:
            return self._policy[key]
        except KeyError:
            raise InputError(f"no NetworkPolicy {key!r}") from None


def _add_covered(out: list[Connections], ranges: list[Range], rule: Rule, conns: Connections) -> None:
    """out[i] |= conns for every atomic range i inside one of the rule's ipBlocks."""
    if not conns:
        return
    for peer in rule.peers:
        if peer.ip_block is None:
            continue
        for lo, hi in addresses.covered_slices(ranges, peer.ip_block.ranges):
            for i in range(lo, hi):
                out[i] = out[i] | conns


