"""networking.k8s.io/v1 NetworkPolicy, parsed and validated.

`parse_policy(obj)` turns a NetworkPolicy kept by the loader (a GenericObject
with its raw spec) into a `NetworkPolicy`; invalid specs raise one-line
InputErrors naming file, object and field, as the API server would reject them:

    netpol.yaml: NetworkPolicy default/db: spec.ingress[0].from[0].ipBlock.except[0]:
        10.1.0.0/16 is not inside the cidr 192.168.0.0/16

Defaulting follows the API: a missing podSelector is the empty selector (every
pod of the namespace); without policyTypes a policy is an Ingress policy, and
also an Egress policy when it has egress rules; a port's protocol is TCP; an
empty or missing `from`/`to` matches every peer and empty `ports` every port.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Optional, Union

from ..api.fields import Fields
from ..api.objects import PROTOCOLS, GenericObject, LabelSelector
from ..errors import InputError
from . import addresses
from .addresses import IPNetwork, Range
from .ports import ALL_CONNECTIONS, MAX_PORT, MIN_PORT, NO_CONNECTIONS, Connections

INGRESS, EGRESS = "ingress", "egress"
DIRECTIONS = (INGRESS, EGRESS)

# IANA_SVC_NAME, as the API server validates named ports
_SVC_NAME = re.compile(r"^(?=.*[a-z])[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


@dataclass(frozen=True)
class RuleRef:
    """Names one rule: `default/db ingress rule #1` (1-based, as netpol-analyzer counts)."""
    policy: str                     # ns/name
    direction: str                  # ingress | egress
    index: int                      # 0-based position in spec.ingress / spec.egress

    def __str__(self) -> str:
        return f"{self.policy} {self.direction} rule #{self.index + 1}"


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...]
    ranges: tuple[Range, ...]       # cidr minus excepts

    def __str__(self) -> str:
        text = f"ipBlock {self.cidr}"
        return text + (f" except {', '.join(map(str, self.excepts))}" if self.excepts else "")


@dataclass(frozen=True)
class Peer:
    """One entry of `from` / `to`: selectors (both = AND, in one peer) or an ipBlock."""
    pod_selector: Optional[LabelSelector] = None
    namespace_selector: Optional[LabelSelector] = None
    ip_block: Optional[IPBlock] = None

    def __str__(self) -> str:
        if self.ip_block is not None:
            return str(self.ip_block)
        if self.namespace_selector is None:
            return f"podSelector {self.pod_selector} (in the policy's namespace)"
        if self.pod_selector is None:
            return f"namespaceSelector {self.namespace_selector} (every pod)"
        return f"namespaceSelector {self.namespace_selector} and podSelector {self.pod_selector}"


@dataclass(frozen=True)
class PortRule:
    """One entry of `ports`. port None = every port of the protocol."""
    protocol: str = "TCP"
    port: Union[int, str, None] = None
    end_port: Optional[int] = None

    @property
    def named(self) -> bool:
        return isinstance(self.port, str)

    def resolve(self, named_ports: Optional[dict[tuple[str, str], int]]) -> Connections:
        """The ports this entry allows towards a pod whose named ports are `named_ports`
        ((name, protocol) -> number). A named port the pod does not declare for this
        protocol allows nothing; towards an IP address (None) a named port allows nothing."""
        if self.port is None:
            return Connections.all_ports(self.protocol)
        if isinstance(self.port, str):
            number = (named_ports or {}).get((self.port, self.protocol))
            return Connections.of(self.protocol, number) if number else NO_CONNECTIONS
        return Connections.of(self.protocol, self.port, self.end_port or self.port)

    def __str__(self) -> str:
        if self.port is None:
            return f"{self.protocol} all ports"
        if self.end_port is not None:
            return f"{self.protocol} {self.port}-{self.end_port}"
        return f"{self.protocol} {self.port}"


@dataclass(frozen=True)
class Rule:
    ref: RuleRef
    peers: tuple[Peer, ...]         # empty: every peer
    ports: tuple[PortRule, ...]     # empty: every port

    def connections(self, named_ports: Optional[dict[tuple[str, str], int]]) -> Connections:
        """What the rule allows towards a destination with these named ports (None: an IP)."""
        if not self.ports:
            return ALL_CONNECTIONS
        return Connections.union(p.resolve(named_ports) for p in self.ports)

    def describe(self) -> str:
        word = "from" if self.ref.direction == INGRESS else "to"
        peers = "; ".join(map(str, self.peers)) if self.peers else "any peer"
        ports = ", ".join(map(str, self.ports)) if self.ports else "all ports"
        return f"{word} {peers}; ports {ports}"


@dataclass
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    types: tuple[str, ...]          # the directions it isolates: ingress and/or egress
    ingress: tuple[Rule, ...]
    egress: tuple[Rule, ...]
    source: str = ""
    obj: Optional[GenericObject] = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress

    def ip_blocks(self, direction: str) -> list[IPBlock]:
        """Every ipBlock the rules of one direction mention."""
        return [p.ip_block for r in self.rules(direction) for p in r.peers if p.ip_block is not None]

    def named_ports(self) -> set[str]:
        return {p.port for d in DIRECTIONS for r in self.rules(d) for p in r.ports if p.named}

    def selector_keys(self) -> set[str]:
        """Label keys that any pod selector of the policy looks at."""
        selectors = [self.pod_selector] + [p.pod_selector for d in DIRECTIONS for r in self.rules(d)
                                           for p in r.peers if p.pod_selector is not None]
        return {k for s in selectors for k in _keys(s)}


def _keys(selector: LabelSelector) -> set[str]:
    return {k for k, _ in selector.match_labels} | {r.key for r in selector.match_expressions}


# ---------------------------------------------------------------------------
# parsing
# ---------------------------------------------------------------------------

def parse_policy(obj: GenericObject) -> NetworkPolicy:
    """Validate and parse one NetworkPolicy object."""
    f = obj.fields()
    spec = f.dict("spec")
    key = obj.meta.key
    selector = LabelSelector.parse(spec.dict("podSelector"))
    types_given = spec.strs("policyTypes")
    types: list[str] = []
    for i, t in enumerate(types_given):
        if t not in ("Ingress", "Egress"):
            raise spec.error(f"policyTypes[{i}]", f"must be Ingress or Egress, got {t!r}")
        if t.lower() in types:
            raise spec.error(f"policyTypes[{i}]", f"{t} is listed twice")
        types.append(t.lower())
    ingress = tuple(_rule(r, RuleRef(key, INGRESS, i), "from") for i, r in enumerate(spec.dicts("ingress")))
    egress = tuple(_rule(r, RuleRef(key, EGRESS, i), "to") for i, r in enumerate(spec.dicts("egress")))
    if not types_given:
        # the API server's defaulting
        types = [INGRESS] + ([EGRESS] if egress else [])
    return NetworkPolicy(obj.meta.namespace, obj.meta.name, selector,
                         tuple(d for d in DIRECTIONS if d in types), ingress, egress,
                         obj.meta.source, obj)


def _rule(r: Fields, ref: RuleRef, peers_key: str) -> Rule:
    peers = tuple(_peer(p) for p in r.dicts(peers_key))
    ports = tuple(_port(p) for p in r.dicts("ports"))
    return Rule(ref, peers, ports)


def _peer(p: Fields) -> Peer:
    has_pod, has_ns, has_ip = p.has("podSelector"), p.has("namespaceSelector"), p.has("ipBlock")
    if not (has_pod or has_ns or has_ip):
        raise p.error(None, "a peer needs podSelector, namespaceSelector or ipBlock")
    if has_ip and (has_pod or has_ns):
        raise p.error("ipBlock", "may not be combined with podSelector or namespaceSelector")
    if has_ip:
        return Peer(ip_block=_ip_block(p.dict("ipBlock")))
    return Peer(LabelSelector.parse(p.dict("podSelector")) if has_pod else None,
                LabelSelector.parse(p.dict("namespaceSelector")) if has_ns else None)


def _ip_block(b: Fields) -> IPBlock:
    cidr = _cidr(b, "cidr", b.str("cidr", required=True))
    excepts = []
    for i, text in enumerate(b.strs("except")):
        net = _cidr(b, f"except[{i}]", text)
        if net.version != cidr.version:
            raise b.error(f"except[{i}]", f"{net} is not of the cidr's address family ({cidr})")
        if not net.subnet_of(cidr) or net == cidr:
            raise b.error(f"except[{i}]", f"{net} is not strictly inside the cidr {cidr}")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts), addresses.block_ranges(cidr, excepts))


def _cidr(f: Fields, key: str, text: str) -> IPNetwork:
    if "/" not in text:
        raise f.error(key, f"not a CIDR: {text!r} (write {text}/32 for one address)")
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise f.error(key, f"not a CIDR: {text!r}") from None


def _port(p: Fields) -> PortRule:
    protocol = p.str("protocol", "TCP", choices=PROTOCOLS)
    port = p.int_or_str("port")
    if isinstance(port, int) and not MIN_PORT <= port <= MAX_PORT:
        raise p.error("port", f"must be between {MIN_PORT} and {MAX_PORT}, got {port}")
    if isinstance(port, str) and (len(port) > 15 or not _SVC_NAME.match(port) or "--" in port):
        raise p.error("port", f"not a valid port name {port!r} (lowercase letters, digits and '-', "
                              "at most 15 characters, at least one letter)")
    end = p.int("endPort", minimum=MIN_PORT, maximum=MAX_PORT)
    if end is not None:
        if port is None:
            raise p.error("endPort", "needs a numeric port")
        if isinstance(port, str):
            raise p.error("endPort", f"may not be used with a named port ({port!r})")
        if end < port:
            raise p.error("endPort", f"must be at least port ({port}), got {end}")
    return PortRule(protocol, port, end)


def load_policies(objects: list[GenericObject]) -> list[NetworkPolicy]:
    """Every NetworkPolicy of a cluster, parsed, in namespace/name order."""
    seen: dict[str, GenericObject] = {}
    out = []
    for obj in objects:
        if obj.meta.key in seen:
            raise InputError("defined twice", file=obj.meta.source or None,
                             obj=f"NetworkPolicy {obj.meta.key}")
        seen[obj.meta.key] = obj
        out.append(parse_policy(obj))
    return sorted(out, key=lambda p: (p.namespace, p.name))
