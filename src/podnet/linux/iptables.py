"""iptables-save / iptables-restore text: parsed, printed back and evaluated for real.

    rs = Ruleset.parse(text, source="node1:iptables-save")
    result = rs.evaluate("nat", "PREROUTING", ctx)     # ChainResult with one Step per rule hit
    rs.save()                                         # the text again, as iptables-save prints it

Parsing compiles every rule into a tuple of predicates over the `HookContext`, in
the order the kernel checks them: the IP header part (-d -s -p -i -o -f) first,
then the `-m` matches left to right, so side effects (`-m recent --set`) and random
choices (`-m statistic`) happen only when the matches before them passed. The
target is compiled too; nothing is re-parsed at evaluation time.

Big chains get a dispatch index: a rule whose `-d` is one host is filed under that
address (or, in chains like KUBE-NODEPORTS, a side-effect-free rule under its single
`--dport`); evaluation looks only at the rules filed under the packet's key, merged
by position with the rules that have no key, so the order is exactly the chain's.
`Ruleset.indexing = False` gives the plain linear scan (the benchmark baseline).
"""

from __future__ import annotations

import gc
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from functools import lru_cache
from heapq import merge
from operator import attrgetter
from typing import Callable, Optional, Sequence

from ..errors import InputError
from .netfilter import ChainResult, HookContext, NatAction, RecentList, Step
from .state import IPAddress

Pred = Callable[[HookContext], bool]

BUILTIN_CHAINS: dict[str, tuple[str, ...]] = {
    "raw": ("PREROUTING", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
NO_IN_IFACE = ("OUTPUT", "POSTROUTING")      # built-in chains where -i makes no sense
NO_OUT_IFACE = ("PREROUTING", "INPUT")       # ... and -o

U32 = 0xFFFFFFFF
DISPATCH_MIN_RULES = 16                      # chains shorter than this are scanned
RECENT_STAMPS = 20                           # xt_recent ip_pkt_list_tot default
RECENT_ENTRIES = 100                         # xt_recent ip_list_tot default: addresses per list


class LineError(Exception):
    """A problem with one line of input; the parser turns it into an InputError
    naming the source and the line."""


# ---------------------------------------------------------------------------
# Words: tokens, numbers, addresses, ports, protocols
# ---------------------------------------------------------------------------

_WORD = re.compile(r'(?:[^\s"]+|"(?:[^"\\]|\\.)*")+|"')
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE = re.compile(r"\\(.)")


def split_line(line: str) -> tuple[list[str], list[str]]:
    """Split a line as iptables-restore does: (values, raw words).

    Double quotes group words; inside them a backslash escapes the next character.
    Raw words keep their quotes, so the rule text reads as it was written."""
    if '"' not in line:
        words = line.split()
        return words, words
    if "\\" not in line:
        return _split_simple_quotes(line)
    raws = _WORD.findall(line)
    values = []
    for raw in raws:
        if '"' in raw:
            if '"' in _QUOTED.sub("", raw):
                raise LineError("unterminated quote")
            raw = _QUOTED.sub(_unquote, raw)
        values.append(raw)
    return values, raws


def _split_simple_quotes(line: str) -> tuple[list[str], list[str]]:
    """split_line for the common case: quotes but no backslashes."""
    parts = line.split('"')
    if len(parts) % 2 == 0:
        raise LineError("unterminated quote")
    values: list[str] = []
    raws: list[str] = []
    glue = False                     # does the next piece continue the last word?
    for i, part in enumerate(parts):
        if i % 2:
            if glue:
                values[-1] += part
                raws[-1] += f'"{part}"'
            else:
                values.append(part)
                raws.append(f'"{part}"')
            glue = True
        elif part:
            words = part.split()
            if glue and words and not part[0].isspace():
                values[-1] += words[0]
                raws[-1] += words[0]
                words = words[1:]
            values.extend(words)
            raws.extend(words)
            glue = not part[-1].isspace()
    return values, raws


def _unquote(m: re.Match) -> str:
    return _ESCAPE.sub(r"\1", m.group(1))


def _num(text: str, what: str = "number") -> int:
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text, 10)
    except ValueError:
        raise LineError(f"bad {what} '{text}'") from None


def _value_mask(text: str, default_mask: int = U32) -> tuple[int, int]:
    """'0x4000/0x4000' -> (0x4000, 0x4000); '0x10' -> (0x10, default_mask)."""
    value, _, mask = text.partition("/")
    return _num(value, "mark"), (_num(mask, "mask") if mask else default_mask)


@lru_cache(maxsize=65536)
def _network(text: str):
    """An address or address/mask (prefix length or dotted mask) as a network."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise LineError(f"bad address '{text}'") from None


def _address(text: str) -> IPAddress:
    """An IPv4 or IPv6 address (IPv4 parsed the fast way: rulesets hold many)."""
    try:
        if ":" not in text:
            return ipaddress.IPv4Address(int.from_bytes(socket.inet_pton(socket.AF_INET, text),
                                                        "big"))
        return ipaddress.IPv6Address(text)
    except (OSError, ValueError):
        raise LineError(f"bad address '{text}'") from None


def _addresses(text: str) -> list:
    """-s/-d values: 'a[/mask][,b[/mask]...]' as addresses (hosts) and networks."""
    out = []
    for part in text.split(","):
        addr, slash, mask = part.partition("/")
        if not slash or mask == ("128" if ":" in addr else "32"):
            out.append(_address(addr))
        else:
            net = _network(part)
            out.append(net.network_address if net.prefixlen == net.max_prefixlen else net)
    return out


PORT_PROTOS = ("tcp", "udp", "sctp", "udplite", "dccp")


@lru_cache(maxsize=4096)
def parse_port(text: str, proto: str = "tcp") -> int:
    """A port number or service name (as /etc/services knows it)."""
    if text.isdigit():
        port = int(text)
    else:
        try:
            port = socket.getservbyname(text, proto if proto in ("tcp", "udp") else "tcp")
        except OSError:
            raise LineError(f"bad port '{text}'") from None
    if not 0 <= port <= 65535:
        raise LineError(f"port {port} out of range")
    return port


def port_range(text: str, proto: str = "tcp", sep: str = ":") -> tuple[int, int]:
    """'80' -> (80, 80); '80:90', ':90', '80:' -> ranges as iptables reads them."""
    if sep not in text:
        port = parse_port(text, proto)
        return port, port
    lo, _, hi = text.partition(sep)
    low = parse_port(lo, proto) if lo else 0
    high = parse_port(hi, proto) if hi else 65535
    if low > high:
        raise LineError(f"bad port range '{text}'")
    return low, high


# protocol names and numbers -> the names Packet.proto uses; None = any
PROTOCOLS = {
    "all": None, "0": None, "tcp": "tcp", "6": "tcp", "udp": "udp", "17": "udp",
    "sctp": "sctp", "132": "sctp", "icmp": "icmp", "1": "icmp", "icmpv6": "icmpv6",
    "ipv6-icmp": "icmpv6", "icmp6": "icmpv6", "58": "icmpv6", "udplite": "udplite",
    "136": "udplite", "dccp": "dccp", "33": "dccp", "gre": "gre", "47": "gre",
    "esp": "esp", "50": "esp", "ah": "ah", "51": "ah", "ipip": "ipip", "4": "ipip",
    "ipv6": "ipv6", "41": "ipv6", "igmp": "igmp", "2": "igmp", "vrrp": "vrrp", "112": "vrrp",
}


@lru_cache(maxsize=1024)
def _protocol(text: str) -> Optional[str]:
    name = text.lower()
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    if name.isdigit() and int(name) < 256:
        return name
    raise LineError(f"unknown protocol '{text}'")


ICMP_TYPES: dict[str, tuple[Optional[int], Optional[int]]] = {
    "any": (None, None), "echo-reply": (0, None), "pong": (0, None),
    "destination-unreachable": (3, None), "network-unreachable": (3, 0),
    "host-unreachable": (3, 1), "protocol-unreachable": (3, 2), "port-unreachable": (3, 3),
    "fragmentation-needed": (3, 4), "source-route-failed": (3, 5), "network-unknown": (3, 6),
    "host-unknown": (3, 7), "network-prohibited": (3, 9), "host-prohibited": (3, 10),
    "TOS-network-unreachable": (3, 11), "TOS-host-unreachable": (3, 12),
    "communication-prohibited": (3, 13), "host-precedence-violation": (3, 14),
    "precedence-cutoff": (3, 15), "source-quench": (4, None), "redirect": (5, None),
    "network-redirect": (5, 0), "host-redirect": (5, 1), "TOS-network-redirect": (5, 2),
    "TOS-host-redirect": (5, 3), "echo-request": (8, None), "ping": (8, None),
    "router-advertisement": (9, None), "router-solicitation": (10, None),
    "time-exceeded": (11, None), "ttl-exceeded": (11, None),
    "ttl-zero-during-transit": (11, 0), "ttl-zero-during-reassembly": (11, 1),
    "parameter-problem": (12, None), "ip-header-bad": (12, 0),
    "required-option-missing": (12, 1), "timestamp-request": (13, None),
    "timestamp-reply": (14, None), "address-mask-request": (17, None),
    "address-mask-reply": (18, None),
}
ICMPV6_TYPES: dict[str, tuple[Optional[int], Optional[int]]] = {
    "destination-unreachable": (1, None), "no-route": (1, 0),
    "communication-prohibited": (1, 1), "beyond-scope": (1, 2), "address-unreachable": (1, 3),
    "port-unreachable": (1, 4), "failed-policy": (1, 5), "reject-route": (1, 6),
    "packet-too-big": (2, None), "time-exceeded": (3, None), "ttl-exceeded": (3, None),
    "ttl-zero-during-transit": (3, 0), "ttl-zero-during-reassembly": (3, 1),
    "parameter-problem": (4, None), "bad-header": (4, 0), "unknown-header-type": (4, 1),
    "unknown-option": (4, 2), "echo-request": (128, None), "ping": (128, None),
    "echo-reply": (129, None), "pong": (129, None), "router-solicitation": (133, None),
    "router-advertisement": (134, None), "neighbour-solicitation": (135, None),
    "neighbor-solicitation": (135, None), "neighbour-advertisement": (136, None),
    "neighbor-advertisement": (136, None), "redirect": (137, None),
}


def icmp_type(text: str, proto: str = "icmp") -> tuple[Optional[int], Optional[int]]:
    """'echo-request', '8' or '3/4' -> (type, code); code None = any; type None = any."""
    names = ICMPV6_TYPES if proto == "icmpv6" else ICMP_TYPES
    if text in names:
        return names[text]
    kind, _, code = text.partition("/")
    if not kind.isdigit() or (code and not code.isdigit()):
        raise LineError(f"unknown {proto} type '{text}'")
    return int(kind), (int(code) if code else None)


# ---------------------------------------------------------------------------
# Compiled rules
# ---------------------------------------------------------------------------

VERDICT, JUMP, GOTO, RETURN, NAT, CONTINUE = "verdict", "jump", "goto", "return", "nat", "continue"


@dataclass(slots=True, eq=False)
class Target:
    """What a matching rule does."""
    kind: str                        # verdict | jump | goto | return | nat | continue
    name: str = ""                   # ACCEPT/DROP/REJECT/QUEUE, the chain, or the extension
    action: str = ""                 # as a Step shows it
    reject_with: Optional[str] = None
    nat: Optional[NatAction] = None
    effect: Optional[Callable[[HookContext, ChainResult], None]] = None


NO_TARGET = Target(CONTINUE)


@dataclass(slots=True, eq=False)
class Rule:
    """One rule: its text as iptables-save prints it, compiled."""
    chain: str
    text: str                        # "-A CHAIN ..." with single spaces
    preds: tuple = ()
    target: Target = NO_TARGET
    line: int = 0                    # line in the parsed text
    index: int = 0                   # 1-based position in its chain
    key: str = ""                    # "table/chain#index": the key of its random choices
    dst: Optional[IPAddress] = None  # its `-d` when that is one host (dispatch key)
    dport: Optional[int] = None      # its single `--dport` when it has no side effects
    note: object = ""                # shown on the Step when it matches (or note(ctx))

    def matches(self, ctx: HookContext) -> bool:
        for pred in self.preds:
            if not pred(ctx):
                return False
        return True


class _Dispatch:
    """Rule positions filed under a packet key (destination address or port)."""
    __slots__ = ("key", "buckets", "always", "merged")

    def __init__(self, key: Callable, buckets: dict, always: list[int]):
        self.key = key
        self.buckets = buckets
        self.always = always
        self.merged: dict = {}

    def candidates(self, packet) -> list[int]:
        k = self.key(packet)
        got = self.merged.get(k)
        if got is None:
            bucket = self.buckets.get(k)
            if bucket is None:
                return self.always
            got = self.merged[k] = list(merge(bucket, self.always))
        return got


@dataclass(slots=True, eq=False)
class Chain:
    name: str
    policy: Optional[str] = None     # ACCEPT / DROP for built-in chains, None for user chains
    counters: str = "[0:0]"
    rules: list[Rule] = field(default_factory=list)
    _dispatch: object = None         # None: not built yet; False: chain is scanned

    @property
    def builtin(self) -> bool:
        return self.policy is not None

    def declaration(self) -> str:
        return f":{self.name} {self.policy or '-'} {self.counters}"

    def candidates(self, packet, indexing: bool = True) -> Sequence[int]:
        """Positions of the rules that may match `packet`, in chain order."""
        if indexing:
            if self._dispatch is None:
                self._dispatch = self._build_dispatch()
            if self._dispatch:
                return self._dispatch.candidates(packet)
        return range(len(self.rules))

    def _build_dispatch(self):
        """File the rules by destination address or by port, whichever leaves the
        fewest rules to look at in the worst case; False when neither helps."""
        if len(self.rules) < DISPATCH_MIN_RULES:
            return False
        best = None
        for field_name in ("dst", "dport"):
            buckets: dict = {}
            always: list[int] = []
            for pos, rule in enumerate(self.rules):
                key = getattr(rule, field_name)
                if key is None:
                    always.append(pos)
                else:
                    buckets.setdefault(key, []).append(pos)
            worst = len(always) + max(map(len, buckets.values()), default=0)
            if best is None or worst < best[0]:
                best = (worst, field_name, buckets, always)
        worst, field_name, buckets, always = best
        if worst * 2 > len(self.rules):
            return False
        return _Dispatch(attrgetter(field_name), buckets, always)

    def changed(self) -> None:
        self._dispatch = None


@dataclass(slots=True, eq=False)
class Table:
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# Match and target extensions
# ---------------------------------------------------------------------------

Opts = dict  # canonical option -> (args tuple, negated)


@dataclass(frozen=True, slots=True)
class _Extension:
    name: str
    options: dict                    # "--dport" -> ("dport", number of arguments)
    build: Callable                  # (opts, env) -> [Pred] for matches, Target for targets
    impure: bool = False             # has side effects or makes random choices
    inert: bool = False              # never changes whether a rule matches
    tables: tuple = ()               # targets: the tables it is valid in (empty = all)


MATCHES: dict[str, _Extension] = {}
TARGETS: dict[str, _Extension] = {}


def _option_table(spec: str) -> dict:
    """'dport|destination-port:1 syn:0' -> {'--dport': ('dport', 1), ...}."""
    table = {}
    for item in spec.split():
        names, _, arity = item.partition(":")
        canon = names.split("|")[0]
        for name in names.split("|"):
            table["--" + name] = (canon, int(arity or 0))
    return table


def _register(registry: dict, names: str, options: str, **kw):
    def deco(build):
        ext = _Extension(names.split()[0], _option_table(options), build, **kw)
        for name in names.split():
            registry[name] = ext
        return build
    return deco


def _match(names: str, options: str = "", impure: bool = False, inert: bool = False):
    return _register(MATCHES, names, options, impure=impure, inert=inert)


def _target(names: str, options: str = "", tables: tuple = ()):
    return _register(TARGETS, names, options, tables=tables)


def _arg(o: Opts, key: str, default=None):
    got = o.get(key)
    return got[0][0] if got else default


def _neg(o: Opts, key: str) -> bool:
    got = o.get(key)
    return bool(got and got[1])


class _Env:
    """What a rule's extensions may need while being compiled."""
    __slots__ = ("table", "chain", "rule", "ipsets", "cache", "proto", "dport", "impure", "note")

    def __init__(self, ipsets, cache: dict):
        self.ipsets = ipsets
        self.cache = cache               # built matches/targets shared within one parse

    def start(self, table: str, chain: str, rule: Rule) -> "_Env":
        """Ready for compiling `rule`."""
        self.table, self.chain, self.rule = table, chain, rule
        self.proto: Optional[str] = None
        self.dport: Optional[int] = None
        self.impure = False
        self.note = ""
        return self


_SRC, _DST = attrgetter("src"), attrgetter("dst")
_SPORT, _DPORT = attrgetter("sport"), attrgetter("dport")


def _is_host(spec) -> bool:
    return isinstance(spec, (ipaddress.IPv4Address, ipaddress.IPv6Address))


def _address_test(specs, neg: bool) -> Callable[[IPAddress], bool]:
    """Is an address one of `specs` (addresses or networks), negated or not?"""
    nets = [ipaddress.ip_network(s) if _is_host(s) else s for s in specs]
    ranges = tuple((n.version, int(n.network_address), int(n.netmask)) for n in nets)

    def test(addr):
        version, value = addr.version, int(addr)
        for v, base, mask in ranges:
            if v == version and value & mask == base:
                return not neg
        return neg
    return test


def _address_pred(get, specs, neg: bool) -> Pred:
    """-s/-d: the packet's address (`get` picks it) is one of `specs`."""
    if len(specs) == 1 and _is_host(specs[0]):
        host = specs[0]
        if neg:
            return lambda ctx: get(ctx.packet) != host
        return lambda ctx: get(ctx.packet) == host
    test = _address_test(specs, neg)
    return lambda ctx: test(get(ctx.packet))


def _name_test(pattern: str) -> Callable[[str], bool]:
    """Interface names: 'eth+' matches every name starting with 'eth'."""
    if pattern.endswith("+"):
        prefix = pattern[:-1]
        return lambda name: name.startswith(prefix)
    return lambda name: name == pattern


def _iface_pred(get, pattern: str, neg: bool) -> Pred:
    test = _name_test(pattern)
    return lambda ctx: test(get(ctx) or "") != neg


def _range_test(lo: int, hi: int, neg: bool) -> Callable[[Optional[int]], bool]:
    """A port (or length) within [lo, hi]; a missing value never is."""
    return lambda value: (value is not None and lo <= value <= hi) != neg


# -- protocol matches -------------------------------------------------------

TCP_FLAGS = ("FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR")
SYN_MASK = frozenset(("FIN", "SYN", "RST", "ACK"))          # what --syn looks at


def _tcp_flag_set(text: str) -> frozenset:
    if text == "ALL":
        return frozenset(TCP_FLAGS[:6])
    if text == "NONE":
        return frozenset()
    flags = frozenset(text.split(","))
    unknown = flags - set(TCP_FLAGS)
    if unknown:
        raise LineError(f"unknown TCP flag '{sorted(unknown)[0]}'")
    return flags


def _ports_match(proto: str):
    """tcp / udp / sctp / udplite / dccp: --sport, --dport (and for tcp, flags)."""
    def build(o: Opts, env: _Env) -> list[Pred]:
        checks = []
        for key, get in (("sport", _SPORT), ("dport", _DPORT)):
            if key in o:
                lo, hi = port_range(_arg(o, key), proto)
                checks.append((get, _range_test(lo, hi, _neg(o, key))))
                if key == "dport" and lo == hi and not _neg(o, key):
                    env.dport = lo
        flags = []
        if "syn" in o:
            flags.append((SYN_MASK, frozenset(("SYN",)), _neg(o, "syn")))
        if "tcp-flags" in o:
            mask, comp = o["tcp-flags"][0]
            flags.append((_tcp_flag_set(mask), _tcp_flag_set(comp), _neg(o, "tcp-flags")))
        if "tcp-option" in o:        # TCP options are not modelled: never present
            flags.append((frozenset(), frozenset(("option",)), _neg(o, "tcp-option")))
        if not flags and len(checks) == 1 and env.dport is not None:
            port = env.dport           # the common case, kept fast
            return [lambda ctx: (p := ctx.packet).proto == proto and p.dport == port]

        def pred(ctx):
            p = ctx.packet
            if p.proto != proto:
                return False
            for get, test in checks:
                if not test(get(p)):
                    return False
            for mask, comp, neg in flags:
                if ((p.tcp_flags & mask) == comp) == neg:
                    return False
            return True
        return [pred]
    return build


_match("tcp", "sport|source-port:1 dport|destination-port:1 tcp-flags:2 syn:0 tcp-option:1")(
    _ports_match("tcp"))
_match("udp", "sport|source-port:1 dport|destination-port:1")(_ports_match("udp"))
_match("sctp", "sport|source-port:1 dport|destination-port:1")(_ports_match("sctp"))
_match("udplite", "sport|source-port:1 dport|destination-port:1")(_ports_match("udplite"))
_match("dccp", "sport|source-port:1 dport|destination-port:1")(_ports_match("dccp"))


def _icmp_match(proto: str, option: str):
    def build(o: Opts, env: _Env) -> list[Pred]:
        if option not in o:
            return [lambda ctx: ctx.packet.proto == proto]
        kind, code = icmp_type(_arg(o, option), proto)
        neg = _neg(o, option)

        def pred(ctx):
            p = ctx.packet
            if p.proto != proto:
                return False
            hit = kind is None or (p.icmp_type == kind and (code is None or p.icmp_code == code))
            return hit != neg
        return [pred]
    return build


_match("icmp", "icmp-type:1")(_icmp_match("icmp", "icmp-type"))
_match("icmp6 icmpv6", "icmpv6-type:1")(_icmp_match("icmpv6", "icmpv6-type"))

# protocol -> the match `-p PROTO` loads implicitly for options like --dport
IMPLICIT = {"tcp": "tcp", "udp": "udp", "sctp": "sctp", "udplite": "udplite", "dccp": "dccp",
            "icmp": "icmp", "icmpv6": "icmp6"}


@_match("multiport", "sports|source-ports:1 dports|destination-ports:1 ports|port:1")
def _multiport(o: Opts, env: _Env) -> list[Pred]:
    (key,) = [k for k in ("sports", "dports", "ports") if k in o] or [None]
    if key is None:
        raise LineError("multiport needs --sports, --dports or --ports")
    ranges = tuple(port_range(item, env.proto or "tcp") for item in _arg(o, key).split(","))
    neg = _neg(o, key)
    getters = {"sports": (_SPORT,), "dports": (_DPORT,), "ports": (_SPORT, _DPORT)}[key]

    def pred(ctx):
        p = ctx.packet
        if p.dport is None:
            return False
        for get in getters:
            value = get(p)
            for lo, hi in ranges:
                if lo <= value <= hi:
                    return not neg
        return neg
    return [pred]


# -- matches that always or never match --------------------------------------

def _always(o: Opts, env: _Env) -> list[Pred]:
    return []


def _never(ctx: HookContext) -> bool:
    return False


_match("comment", "comment:1", inert=True)(_always)
_match("limit", "limit:1 limit-burst:1", inert=True)(_always)   # rates are not modelled
_match("nfacct", "nfacct-name:1", inert=True)(_always)           # only counts


@_match("socket", "transparent:0 nowildcard:0 restore-skmark:0")
def _socket(o: Opts, env: _Env) -> list[Pred]:
    return [_never]                  # no socket lookup: treated as "no socket found"


# -- marks and conntrack -----------------------------------------------------

def _mark_match(get_mark):
    def build(o: Opts, env: _Env) -> list[Pred]:
        value, mask = _value_mask(_arg(o, "mark", ""))
        neg = _neg(o, "mark")
        return [lambda ctx: ((get_mark(ctx) & mask) == value) != neg]
    return build


_match("mark", "mark:1")(_mark_match(lambda ctx: ctx.packet.mark))
_match("connmark", "mark:1")(_mark_match(lambda ctx: ctx.conn.mark))

CT_STATES = ("INVALID", "NEW", "ESTABLISHED", "RELATED", "UNTRACKED", "SNAT", "DNAT")
CT_STATUS = ("NONE", "EXPECTED", "SEEN_REPLY", "ASSURED", "CONFIRMED")


def _conn_states(ctx: HookContext) -> set:
    """The states `--ctstate` sees: the conntrack state plus the virtual SNAT/DNAT."""
    conn = ctx.conn
    if conn.notrack or conn.state == "UNTRACKED":
        return {"UNTRACKED"}
    states = {conn.state}
    for virtual in ("SNAT", "DNAT"):
        if virtual in conn.status:
            states.add(virtual)
    return states


def _word_set(text: str, allowed: Sequence[str], what: str) -> frozenset:
    words = frozenset(text.split(","))
    bad = words - set(allowed)
    if bad:
        raise LineError(f"unknown {what} '{sorted(bad)[0]}'")
    return words


def _state_pred(text: str, neg: bool, allowed=CT_STATES) -> Pred:
    wanted = _word_set(text, allowed, "state")
    return lambda ctx: bool(_conn_states(ctx) & wanted) != neg


@_match("conntrack", "ctstate:1 ctproto:1 ctorigsrc:1 ctorigdst:1 ctorigsrcport:1 "
                     "ctorigdstport:1 ctstatus:1 ctdir:1")
def _conntrack(o: Opts, env: _Env) -> list[Pred]:
    preds = []
    if "ctstate" in o:
        preds.append(_state_pred(_arg(o, "ctstate"), _neg(o, "ctstate")))
    if "ctstatus" in o:
        wanted = _word_set(_arg(o, "ctstatus"), CT_STATUS, "status")
        neg = _neg(o, "ctstatus")

        def status(ctx):
            have = ctx.conn.status
            return (bool(have & wanted) or ("NONE" in wanted and not have)) != neg
        preds.append(status)
    if "ctproto" in o:
        proto, neg = _protocol(_arg(o, "ctproto")), _neg(o, "ctproto")
        preds.append(lambda ctx: (proto is None or ctx.packet.proto == proto) != neg)
    for key, conn_field, packet_field in (("ctorigsrc", "orig_src", "src"),
                                          ("ctorigdst", "orig_dst", "dst"),
                                          ("ctorigsrcport", "orig_sport", "sport"),
                                          ("ctorigdstport", "orig_dport", "dport")):
        if key in o:
            if key.endswith("port"):
                test = _range_test(*port_range(_arg(o, key)), _neg(o, key))
            else:
                test = _address_test(_addresses(_arg(o, key)), _neg(o, key))
            get = _original(conn_field, packet_field)
            preds.append(lambda ctx, test=test, get=get: test(get(ctx)))
    if "ctdir" in o:
        direction = _arg(o, "ctdir").upper()
        if direction not in ("ORIGINAL", "REPLY"):
            raise LineError(f"bad --ctdir '{direction}'")
        preds.append(lambda ctx: ctx.conn.direction == direction)
    return preds


def _original(conn_field: str, packet_field: str) -> Callable[[HookContext], object]:
    """A field of the conntrack original tuple; a new connection's is the packet's."""
    get_conn, get_packet = attrgetter(conn_field), attrgetter(packet_field)

    def get(ctx):
        value = get_conn(ctx.conn)
        return value if value is not None else get_packet(ctx.packet)
    return get


@_match("state", "state:1")
def _state(o: Opts, env: _Env) -> list[Pred]:
    return [_state_pred(_arg(o, "state", ""), _neg(o, "state"), CT_STATES[:5])]


@_match("ipvs", "ipvs:0 vproto:1 vaddr:1 vport:1 vdir:1")
def _ipvs(o: Opts, env: _Env) -> list[Pred]:
    """xt_ipvs on the packet's IPVS connection (ctx.ipvs: vaddr, vport, protocol, direction):
    with any option but --ipvs, a packet IPVS did not handle never matches, negated or not."""
    tests = []
    if "vproto" in o:
        proto, neg = _protocol(_arg(o, "vproto")), _neg(o, "vproto")
        tests.append(lambda v, proto=proto, neg=neg: (v[2] == proto) != neg)
    if "vaddr" in o:
        test = _address_test(_addresses(_arg(o, "vaddr")), _neg(o, "vaddr"))
        tests.append(lambda v, test=test: test(v[0]))
    if "vport" in o:
        test = _range_test(*port_range(_arg(o, "vport")), _neg(o, "vport"))
        tests.append(lambda v, test=test: test(v[1]))
    if "vdir" in o:
        direction, neg = _arg(o, "vdir").upper(), _neg(o, "vdir")
        if direction not in ("ORIGINAL", "REPLY"):
            raise LineError(f"bad --vdir '{direction}'")
        tests.append(lambda v, direction=direction, neg=neg: (v[3] == direction) != neg)
    if not tests:
        neg = _neg(o, "ipvs")
        return [lambda ctx: (ctx.ipvs is not None) != neg]
    return [lambda ctx: ctx.ipvs is not None and all(t(ctx.ipvs) for t in tests)]


# -- addresses, interfaces, bridges ------------------------------------------

ADDR_TYPES = ("UNSPEC", "UNICAST", "LOCAL", "BROADCAST", "ANYCAST", "MULTICAST", "BLACKHOLE",
              "UNREACHABLE", "PROHIBIT", "THROW", "NAT", "XRESOLVE")


@_match("addrtype", "src-type:1 dst-type:1 limit-iface-in:0 limit-iface-out:0")
def _addrtype(o: Opts, env: _Env) -> list[Pred]:
    iface = None
    if "limit-iface-in" in o:
        iface = attrgetter("in_iface")
    elif "limit-iface-out" in o:
        iface = attrgetter("out_iface")
    preds = []
    for key, get in (("src-type", _SRC), ("dst-type", _DST)):
        if key in o:
            types, neg = _word_set(_arg(o, key), ADDR_TYPES, "address type"), _neg(o, key)

            def pred(ctx, get=get, types=types, neg=neg):
                kind = ctx.addr_type(get(ctx.packet), iface(ctx) if iface else None)
                return (kind in types) != neg
            preds.append(pred)
    return preds


@_match("physdev", "physdev-in:1 physdev-out:1 physdev-is-in:0 physdev-is-out:0 "
                   "physdev-is-bridged:0")
def _physdev(o: Opts, env: _Env) -> list[Pred]:
    """xt_physdev: outside the bridge path only negated options match."""
    used = {key: _neg(o, key) for key in o}
    in_test = _name_test(_arg(o, "physdev-in")) if "physdev-in" in o else None
    out_test = _name_test(_arg(o, "physdev-out")) if "physdev-out" in o else None

    def pred(ctx):
        if not ctx.bridged:
            return all(used.values())
        pin, pout = ctx.physdev_in, ctx.physdev_out
        for key, present in (("physdev-is-bridged", pout), ("physdev-is-in", pin),
                             ("physdev-is-out", pout)):
            if key in used and (present is not None) == used[key]:
                return False
        if in_test and pin is not None and in_test(pin) == used["physdev-in"]:
            return False
        if out_test and pout is not None and out_test(pout) == used["physdev-out"]:
            return False
        return True
    return [pred]


@_match("mac", "mac-source:1")
def _mac(o: Opts, env: _Env) -> list[Pred]:
    mac, neg = _arg(o, "mac-source").lower(), _neg(o, "mac-source")
    return [lambda ctx: ((ctx.packet.src_mac or "").lower() == mac) != neg]


@_match("iprange", "src-range:1 dst-range:1")
def _iprange(o: Opts, env: _Env) -> list[Pred]:
    preds = []
    for key, get in (("src-range", _SRC), ("dst-range", _DST)):
        if key in o:
            first, _, last = _arg(o, key).partition("-")
            lo, hi = _address(first), _address(last or first)
            neg = _neg(o, key)
            preds.append(lambda ctx, get=get, lo=lo, hi=hi, neg=neg:
                         (lo.version == get(ctx.packet).version
                          and lo <= get(ctx.packet) <= hi) != neg)
    return preds


@_match("length", "length:1")
def _length(o: Opts, env: _Env) -> list[Pred]:
    test = _range_test(*port_range(_arg(o, "length")), _neg(o, "length"))
    return [lambda ctx: test(ctx.packet.length)]


@_match("pkttype", "pkt-type:1")
def _pkttype(o: Opts, env: _Env) -> list[Pred]:
    wanted, neg = _arg(o, "pkt-type").lower(), _neg(o, "pkt-type")
    if wanted not in ("unicast", "broadcast", "multicast", "host", "otherhost"):
        raise LineError(f"bad --pkt-type '{wanted}'")

    def kind(ctx):
        dst = ctx.packet.dst
        if dst.is_multicast:
            return "multicast"
        return "broadcast" if ctx.addr_type(dst, None) == "BROADCAST" else "unicast"
    return [lambda ctx: (kind(ctx) == {"host": "unicast"}.get(wanted, wanted)) != neg]


# -- ipsets --------------------------------------------------------------------

@_match("set", "match-set|set:2 return-nomatch:0 update-counters:0 update-subcounters:0 "
               "packets-eq:1 packets-lt:1 packets-gt:1 bytes-eq:1 bytes-lt:1 bytes-gt:1")
def _set(o: Opts, env: _Env) -> list[Pred]:
    if "match-set" not in o:
        raise LineError("set needs --match-set NAME FLAGS")
    name, flags_text = o["match-set"][0]
    flags = tuple(flags_text.split(","))
    if any(f not in ("src", "dst") for f in flags):
        raise LineError(f"bad set flags '{flags_text}'")
    if env.ipsets is not None and name not in env.ipsets:
        raise LineError(f"set '{name}' does not exist")
    neg, nomatch = _neg(o, "match-set"), "return-nomatch" in o

    def pred(ctx):
        sets = ctx.ipsets
        hit = sets is not None and sets.match_packet(name, flags, ctx.packet,
                                                     return_nomatch=nomatch)
        return hit != neg
    return [pred]


# -- stateful and random matches --------------------------------------------------

@_match("statistic", "mode:1 probability:1 every:1 packet:1", impure=True)
def _statistic(o: Opts, env: _Env) -> list[Pred]:
    mode = _arg(o, "mode")
    neg = any(_neg(o, k) for k in ("probability", "every"))
    if mode == "random":
        try:
            p = float(_arg(o, "probability", "1"))
        except ValueError:
            raise LineError(f"bad --probability '{_arg(o, 'probability')}'") from None
        env.note = f"probability {p:g}: taken"
    elif mode == "nth":
        return _statistic_nth(o, env, neg)
    else:
        raise LineError(f"bad statistic --mode '{mode}'")
    options = (("match", p), ("no match", 1.0 - p))
    rule = env.rule
    return [lambda ctx: (ctx.choose(rule.key, options) == 0) != neg]


def _statistic_nth(o: Opts, env: _Env, neg: bool) -> list[Pred]:
    """Not a random branch: libxt_statistic stores every - 1 and the counter's start,
    count = (every - 1) - packet; statistic_mt steps the rule's counter (shared by every
    packet through the rule) and matches when it wraps to 0. So the first packet after
    the rule is loaded matches iff --packet is 0, then every Nth."""
    every = _num(_arg(o, "every", "0"), "--every")
    packet = _num(_arg(o, "packet", "0"), "--packet")
    if every < 1:
        raise LineError("nth mode needs --every N")
    if packet > every - 1:
        raise LineError("the --packet p must be 0 <= p <= n-1")
    last = every - 1                                  # info->u.nth.every

    def nth(ctx):
        oval = ctx.counters.get(nth, last - packet)  # xt_statistic_priv.count
        nval = ctx.counters[nth] = 0 if oval == last else oval + 1
        return (nval == 0) != neg

    def note(ctx) -> str:
        nval = ctx.counters[nth]
        oval = last if nval == 0 else nval - 1
        return f"nth: packet {nval + 1} of every {every} (counter {oval} -> {nval})" + \
            (": taken" if nval == 0 else "")
    env.note = note
    return [nth]


@_match("recent", "name:1 set:0 rcheck:0 update:0 remove:0 seconds:1 reap:0 hitcount:1 rttl:0 "
                  "rsource:0 rdest:0 mask:1", impure=True)
def _recent(o: Opts, env: _Env) -> list[Pred]:
    """xt_recent, step for step (recent_mt)."""
    modes = [m for m in ("set", "rcheck", "update", "remove") if m in o]
    if len(modes) != 1:
        raise LineError("recent needs exactly one of --set, --rcheck, --update, --remove")
    mode = modes[0]
    invert = _neg(o, mode)
    name = _arg(o, "name", "DEFAULT")
    seconds = _num(_arg(o, "seconds", "0"), "--seconds")
    hitcount = _num(_arg(o, "hitcount", "0"), "--hitcount")
    reap = "reap" in o
    if reap and not seconds:
        raise LineError("--reap needs --seconds")
    get = _DST if "rdest" in o else _SRC
    mask = _address(_arg(o, "mask")) if "mask" in o else None
    if mask is not None and int(mask) == (1 << mask.max_prefixlen) - 1:
        mask = None                          # all ones: the address itself
    mask_bits = int(mask) if mask is not None else 0

    def pred(ctx):
        addr = get(ctx.packet)
        if mask is not None and addr.version == mask.version:
            addr = type(addr)(int(addr) & mask_bits)
        table = ctx.recent.get(name)
        if table is None:
            table = ctx.recent[name] = RecentList()
        entries, now = table.entries, ctx.now      # in LRU order: the oldest first
        ret = invert
        stamps = entries.get(addr)
        if stamps is None:
            if mode != "set":
                return ret
            if len(entries) >= RECENT_ENTRIES:       # recent_entry_init: a full list drops its oldest
                del entries[next(iter(entries))]
            entries[addr] = [now]
            return not ret
        if mode == "set":
            ret = not ret
        elif mode == "remove":
            del entries[addr]
            return not ret
        else:
            since = now - seconds
            hits = 0
            for stamp in stamps:
                if seconds and stamp < since:
                    continue
                hits += 1
                if not hitcount or hits >= hitcount:
                    ret = not ret
                    break
            if reap:
                # recent_entry_reap: only the LRU head (the oldest entry), when its last stamp
                # is older than --seconds, and never the entry about to be updated
                oldest = next(iter(entries))
                if not (oldest == addr and mode == "update" and ret) and entries[oldest][-1] < since:
                    del entries[oldest]
        if mode == "set" or (mode == "update" and ret):
            # recent_entry_update: a new stamp, and the entry moves to the LRU list's tail
            stamps = entries[addr] = entries.pop(addr)
            stamps.append(now)
            del stamps[:-RECENT_STAMPS]
        return ret
    return [pred]


# -- targets ---------------------------------------------------------------------

def _verdict(name: str):
    def build(o: Opts, env: _Env) -> Target:
        return Target(VERDICT, name, name)
    return build


_target("ACCEPT")(_verdict("ACCEPT"))
_target("DROP")(_verdict("DROP"))
_target("RETURN")(lambda o, env: Target(RETURN, "RETURN", "RETURN"))
_target("QUEUE")(_verdict("QUEUE"))
_target("NFQUEUE", "queue-num:1 queue-balance:1 queue-bypass:0 fail-open:0 queue-cpu-fanout:0")(
    lambda o, env: Target(VERDICT, "QUEUE", "NFQUEUE"))

REJECT_WITH = {
    "icmp-net-unreachable": "icmp-net-unreachable", "net-unreach": "icmp-net-unreachable",
    "icmp-host-unreachable": "icmp-host-unreachable", "host-unreach": "icmp-host-unreachable",
    "icmp-port-unreachable": "icmp-port-unreachable", "port-unreach": "icmp-port-unreachable",
    "icmp-proto-unreachable": "icmp-proto-unreachable", "proto-unreach": "icmp-proto-unreachable",
    "icmp-net-prohibited": "icmp-net-prohibited", "net-prohib": "icmp-net-prohibited",
    "icmp-host-prohibited": "icmp-host-prohibited", "host-prohib": "icmp-host-prohibited",
    "icmp-admin-prohibited": "icmp-admin-prohibited", "admin-prohib": "icmp-admin-prohibited",
    "tcp-reset": "tcp-reset", "tcp-rst": "tcp-reset",
    "icmp6-no-route": "icmp6-no-route", "no-route": "icmp6-no-route",
    "icmp6-adm-prohibited": "icmp6-adm-prohibited", "adm-prohibited": "icmp6-adm-prohibited",
    "icmp6-addr-unreachable": "icmp6-addr-unreachable", "addr-unreach": "icmp6-addr-unreachable",
    "icmp6-port-unreachable": "icmp6-port-unreachable",
    "icmp6-policy-fail": "icmp6-policy-fail", "policy-fail": "icmp6-policy-fail",
    "icmp6-reject-route": "icmp6-reject-route", "reject-route": "icmp6-reject-route",
}


@_target("REJECT", "reject-with:1", tables=("filter", "mangle", "raw", "security"))
def _reject(o: Opts, env: _Env) -> Target:
    given = _arg(o, "reject-with")
    if given is None:
        return Target(VERDICT, "REJECT", "REJECT")   # the default depends on the family
    kind = REJECT_WITH.get(given)
    if kind is None:
        raise LineError(f"unknown --reject-with '{given}'")
    if kind == "tcp-reset" and env.proto != "tcp":
        raise LineError("tcp-reset is only valid with -p tcp")
    return Target(VERDICT, "REJECT", f"REJECT --reject-with {kind}", reject_with=kind)


def _xmark(o: Opts, prefix: str = "") -> Optional[tuple[int, int]]:
    """MARK/CONNMARK value options as (xor, mask): new = (old & ~mask) ^ xor."""
    if prefix + "set-xmark" in o:
        return _value_mask(_arg(o, prefix + "set-xmark"))
    if prefix + "set-mark" in o:
        value, mask = _value_mask(_arg(o, prefix + "set-mark"))
        return value, value | mask
    if "and-mark" in o:
        return 0, ~_num(_arg(o, "and-mark"), "mark") & U32
    if "or-mark" in o:
        value = _num(_arg(o, "or-mark"), "mark")
        return value, value
    if "xor-mark" in o:
        return _num(_arg(o, "xor-mark"), "mark"), 0
    return None


@_target("MARK", "set-xmark:1 set-mark:1 and-mark:1 or-mark:1 xor-mark:1")
def _mark_target(o: Opts, env: _Env) -> Target:
    xm = _xmark(o)
    if xm is None:
        raise LineError("MARK needs --set-xmark, --set-mark, --and-mark, --or-mark or --xor-mark")
    xor, keep = xm[0], ~xm[1] & U32

    def effect(ctx, result):
        ctx.packet.mark = (ctx.packet.mark & keep) ^ xor
    return Target(CONTINUE, "MARK", effect=effect)


@_target("CONNMARK", "set-xmark:1 set-mark:1 and-mark:1 or-mark:1 xor-mark:1 save-mark:0 "
                     "restore-mark:0 nfmask:1 ctmask:1 mask:1")
def _connmark_target(o: Opts, env: _Env) -> Target:
    mask = _num(_arg(o, "mask"), "mask") if "mask" in o else U32
    nfmask = _num(_arg(o, "nfmask"), "mask") if "nfmask" in o else mask
    ctmask = _num(_arg(o, "ctmask"), "mask") if "ctmask" in o else mask
    if "save-mark" in o:
        def effect(ctx, result):
            ctx.conn.mark = (ctx.conn.mark & ~ctmask & U32) ^ (ctx.packet.mark & nfmask)
    elif "restore-mark" in o:
        def effect(ctx, result):
            ctx.packet.mark = (ctx.packet.mark & ~nfmask & U32) ^ (ctx.conn.mark & ctmask)
    else:
        xm = _xmark(o)
        if xm is None:
            raise LineError("CONNMARK needs a mark option, --save-mark or --restore-mark")
        xor, keep = xm[0], ~xm[1] & U32

        def effect(ctx, result):
            ctx.conn.mark = (ctx.conn.mark & keep) ^ xor
    return Target(CONTINUE, "CONNMARK", effect=effect)


def _nat_spec(text: str) -> tuple[Optional[IPAddress], Optional[int], Optional[int]]:
    """'10.0.0.1', '10.0.0.1-10.0.0.5:80-90', ':8080', '[fd00::1]:80', 'fd00::1'
    -> (first address, first port, last port when a range)."""
    if text.startswith("["):
        addr_text, _, rest = text[1:].partition("]")
        ports = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") > 1:
        addr_text, ports = text, ""
    else:
        addr_text, _, ports = text.partition(":")
    addr = _address(addr_text.split("-")[0]) if addr_text else None
    port = port_max = None
    if ports:
        lo, hi = port_range(ports, sep="-")
        port, port_max = lo, (hi if hi != lo else None)
    return addr, port, port_max


def _nat(kind: str, to_option: Optional[str]):
    def build(o: Opts, env: _Env) -> Target:
        addr = port = port_max = None
        if to_option == "to-ports":
            if "to-ports" in o:
                port, port_max = port_range(_arg(o, "to-ports"), sep="-")
                port_max = port_max if port_max != port else None
        elif to_option in o:
            addr, port, port_max = _nat_spec(_arg(o, to_option))
        elif kind in ("DNAT", "SNAT"):
            raise LineError(f"{kind} needs --{to_option}")
        if port is not None and env.proto not in PORT_PROTOS:
            raise LineError("a port needs -p tcp, udp, sctp or dccp")
        nat = NatAction(kind, addr, port, port_max, random_fully="random-fully" in o,
                        random="random" in o, persistent="persistent" in o)
        return Target(NAT, kind, str(nat), nat=nat)
    return build


_target("DNAT", "to-destination:1 random:0 persistent:0", tables=("nat",))(
    _nat("DNAT", "to-destination"))
_target("SNAT", "to-source:1 random:0 random-fully:0 persistent:0", tables=("nat",))(
    _nat("SNAT", "to-source"))
_target("MASQUERADE", "to-ports:1 random:0 random-fully:0", tables=("nat",))(
    _nat("MASQUERADE", "to-ports"))
_target("REDIRECT", "to-ports:1 random:0", tables=("nat",))(_nat("REDIRECT", "to-ports"))


def log_line(prefix: str, ctx: HookContext) -> str:
    """A packet as the kernel's LOG target prints it (the fields podnet knows)."""
    p = ctx.packet
    parts = [f"{prefix}IN={ctx.in_iface or ''} OUT={ctx.out_iface or ''}"]
    if ctx.physdev_in:
        parts.append(f"PHYSIN={ctx.physdev_in}")
    if ctx.physdev_out:
        parts.append(f"PHYSOUT={ctx.physdev_out}")
    parts.append(f"SRC={p.src} DST={p.dst} LEN={p.length} TTL={p.ttl} PROTO={p.proto.upper()}")
    if p.proto in ("icmp", "icmpv6"):
        parts.append(f"TYPE={p.icmp_type} CODE={p.icmp_code}")
    elif p.sport is not None or p.dport is not None:
        parts.append(f"SPT={p.sport} DPT={p.dport}")
    if p.proto == "tcp":
        parts.extend(f for f in ("CWR", "ECE", "URG", "ACK", "PSH", "RST", "SYN", "FIN")
                     if f in p.tcp_flags)
    if p.mark:
        parts.append(f"MARK=0x{p.mark:x}")
    return " ".join(parts)


@_target("LOG", "log-prefix:1 log-level:1 log-tcp-sequence:0 log-tcp-options:0 "
                "log-ip-options:0 log-uid:0 log-macdecode:0")
def _log(o: Opts, env: _Env) -> Target:
    prefix = _arg(o, "log-prefix", "")
    return Target(CONTINUE, "LOG", effect=lambda ctx, result:
                  result.logs.append(log_line(prefix, ctx)))


def _set_flag(flag: str):
    def effect(ctx, result):
        setattr(result, flag, True)
    return effect


_target("NFLOG", "nflog-group:1 nflog-prefix:1 nflog-range:1 nflog-size:1 nflog-threshold:1")(
    lambda o, env: Target(CONTINUE, "NFLOG"))
_target("NOTRACK", tables=("raw",))(
    lambda o, env: Target(CONTINUE, "NOTRACK", effect=_set_flag("notrack")))
_target("CT", "notrack:0 zone:1 zone-orig:1 zone-reply:1 helper:1 ctevents:1 expevents:1 "
              "timeout:1", tables=("raw",))(
    lambda o, env: Target(CONTINUE, "CT", effect=_set_flag("notrack") if "notrack" in o else None))
_target("TRACE", tables=("raw",))(
    lambda o, env: Target(CONTINUE, "TRACE", effect=_set_flag("trace")))
_target("TCPMSS", "clamp-mss-to-pmtu:0 set-mss:1")(lambda o, env: Target(CONTINUE, "TCPMSS"))
_target("CHECKSUM", "checksum-fill:0")(lambda o, env: Target(CONTINUE, "CHECKSUM"))


# ---------------------------------------------------------------------------
# Rule compiler
# ---------------------------------------------------------------------------

BASE_OPTIONS = {
    "-s": "src", "--source": "src", "--src": "src",
    "-d": "dst", "--destination": "dst", "--dst": "dst",
    "-p": "proto", "--protocol": "proto",
    "-i": "in", "--in-interface": "in",
    "-o": "out", "--out-interface": "out",
    "-f": "frag", "--fragment": "frag",
    "-m": "match", "--match": "match",
    "-j": "jump", "--jump": "jump",
    "-g": "goto", "--goto": "goto",
    "-c": "counters", "--set-counters": "counters",
}


class _Module:
    """One `-m NAME` (or the target) in a rule plan: its options as word positions."""
    __slots__ = ("ext", "options", "raws")

    def __init__(self, ext: _Extension, raw: Optional[int]):
        self.ext = ext
        self.options: dict[str, tuple[tuple[int, ...], bool]] = {}  # canon -> (positions, neg)
        self.raws: list[int] = [] if raw is None else [raw]         # its words, for the action

    def opts(self, values: list[str]) -> Opts:
        """The options with this rule's values."""
        get = values.__getitem__
        return {canon: (tuple(map(get, positions)), neg)
                for canon, (positions, neg) in self.options.items()}


@dataclass(slots=True)
class _Plan:
    """A rule's structure: which words are values of which options.

    It depends only on the rule's shape (the option words, match and target names),
    so thousands of rules alike (kube-proxy's) share one plan."""
    base: list = field(default_factory=list)      # (kind, position, negated)
    modules: list = field(default_factory=list)   # [_Module] of the -m matches, in order
    target: Optional[_Module] = None
    jump: Optional[tuple[str, int]] = None        # ("jump"|"goto", position of the chain)
    proto: Optional[str] = None                   # when a known name (it picks implicit matches)
    proto_at: int = -1                            # position of the -p value


_KNOWN_WORDS = frozenset(["!", *MATCHES, *TARGETS, *PROTOCOLS])


def _shape(values: list[str]) -> tuple:
    """The words a plan depends on (options, match, target and protocol names);
    other words become None. Rules with the same shape share a plan."""
    known = _KNOWN_WORDS
    return tuple([w if w in known or w[:1] == "-" else None for w in values])


def _make_plan(values: list[str]) -> _Plan:
    """Read a rule spec (the words after `-A CHAIN`) into a plan."""
    plan = _Plan()
    seen_base: set[str] = set()
    owner: Optional[_Module] = None               # whose options follow
    neg = False
    i, n = 0, len(values)
    while i < n:
        word = values[i]
        i += 1
        if word == "!":
            if neg:
                raise LineError("double negation")
            neg = True
            continue
        kind = BASE_OPTIONS.get(word)
        if kind is not None:
            if kind == "frag":
                plan.base.append(("frag", -1, neg))
                neg = False
                continue
            if i < n and values[i] == "!" and kind not in ("match", "jump", "goto"):
                neg, i = True, i + 1                     # old style: -s ! 1.2.3.4
            if i >= n:
                raise LineError(f"option {word} needs a value")
            value = values[i]
            i += 1
            if kind == "counters":
                i += 1
            elif kind == "match":
                ext = MATCHES.get(value)
                if ext is None:
                    raise LineError(f"unknown match '{value}'")
                owner = _Module(ext, i - 1)
                plan.modules.append(owner)
            elif kind in ("jump", "goto"):
                if plan.target is not None or plan.jump is not None:
                    raise LineError("more than one target")
                ext = TARGETS.get(value)
                if ext is not None and kind == "jump":
                    owner = plan.target = _Module(ext, i - 1)
                elif value in TARGETS or value in ("", "-"):
                    raise LineError(f"cannot goto '{value}'")
                else:
                    plan.jump, owner = (kind, i - 1), None
            else:
                if kind in seen_base:
                    raise LineError(f"multiple {word} options")
                seen_base.add(kind)
                plan.base.append((kind, i - 1, neg))
                if kind == "proto":
                    plan.proto, plan.proto_at = _protocol(value), i - 1
            neg = False
            continue
        if not word.startswith("-"):
            raise LineError(f"unexpected word '{word}'")
        module = _owner_of(word, owner, plan)
        canon, arity = module.ext.options[word]
        module.raws.append(i - 1)
        if arity and i < n and values[i] == "!":
            neg, i = True, i + 1
        if i + arity > n:
            raise LineError(f"option {word} needs a value")
        if canon in module.options:
            raise LineError(f"multiple {word} options")
        positions = tuple(range(i, i + arity))
        module.options[canon] = (positions, neg)
        module.raws.extend(positions)
        i += arity
        neg = False
    if neg:
        raise LineError("'!' at the end of the rule")
    return plan


def _owner_of(word: str, owner: Optional[_Module], plan: _Plan) -> _Module:
    """The module an option belongs to: the latest -m (or the target) that knows it,
    else the protocol match `-p tcp` loads implicitly."""
    if owner is not None and word in owner.ext.options:
        return owner
    for module in reversed(plan.modules):
        if word in module.ext.options:
            return module
    implicit = MATCHES.get(IMPLICIT.get(plan.proto or "", ""))
    if implicit is not None and word in implicit.options:
        module = _Module(implicit, None)
        plan.modules.append(module)
        return module
    where = f" for {owner.ext.name}" if owner is not None else ""
    raise LineError(f"unknown option '{word}'{where}")


_PLANS: dict[tuple, _Plan] = {}


def compile_rule(values: list[str], raws: list[str], env: _Env) -> tuple[tuple, Target]:
    """The predicates and target of one rule spec (the words after `-A CHAIN`)."""
    key = _shape(values)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _make_plan(values)
        if len(_PLANS) > 65536:
            _PLANS.clear()
        _PLANS[key] = plan
    env.proto = _protocol(values[plan.proto_at]) if plan.proto_at >= 0 else None
    preds = _base_preds(plan, values, env)
    for module in plan.modules:
        ext = module.ext
        if ext.inert:
            continue
        opts = module.opts(values)
        if ext.impure:
            env.impure = True
            preds.extend(ext.build(opts, env))
            continue
        cache_key = ("match", ext.name, env.proto, tuple(opts.items()))
        built = env.cache.get(cache_key)
        if built is None:
            outer, env.dport = env.dport, None
            built = env.cache[cache_key] = (ext.build(opts, env), env.dport)
            env.dport = outer
        preds.extend(built[0])
        if built[1] is not None:
            env.dport = built[1]
    return tuple(preds), _make_target(plan, values, raws, env)


def _base_preds(plan: _Plan, values: list[str], env: _Env) -> list[Pred]:
    """-d, -s, -p, -i, -o, -f as predicates, the most selective first."""
    preds = []
    later = []
    for kind, position, neg in plan.base:
        if kind == "dst" or kind == "src":
            specs = _addresses(values[position])
            pred = _address_pred(_DST if kind == "dst" else _SRC, specs, neg)
            if kind == "dst":
                preds.insert(0, pred)
                if not neg and len(specs) == 1 and _is_host(specs[0]):
                    env.rule.dst = specs[0]
            else:
                preds.append(pred)
        elif kind == "proto":
            proto = env.proto
            if proto is not None:
                later.append(lambda ctx, neg=neg: (ctx.packet.proto == proto) != neg)
        elif kind == "in" or kind == "out":
            if env.chain in (NO_IN_IFACE if kind == "in" else NO_OUT_IFACE):
                raise LineError(f"can't use -{kind[0]} with {env.chain}")
            get = attrgetter("in_iface" if kind == "in" else "out_iface")
            later.append(_iface_pred(get, values[position], neg))
        elif kind == "frag" and not neg:
            later.append(_never)                 # packets are never fragments here
    return preds + later


def _make_target(plan: _Plan, values: list[str], raws: list[str], env: _Env) -> Target:
    if plan.jump is not None:
        kind, position = plan.jump
        chain = values[position]
        target = env.cache.get(("jump", kind, chain))
        if target is None:
            target = env.cache[("jump", kind, chain)] = Target(
                JUMP if kind == "jump" else GOTO, chain, f"{kind} {chain}")
        return target
    module = plan.target
    if module is None:
        return NO_TARGET
    ext = module.ext
    if ext.tables and env.table not in ext.tables:
        raise LineError(f"{ext.name} is only valid in the {'/'.join(ext.tables)} table")
    words = tuple(map(raws.__getitem__, module.raws))
    cache_key = ("target", env.table, env.proto, words)
    target = env.cache.get(cache_key)
    if target is None:
        target = env.cache[cache_key] = ext.build(module.opts(values), env)
        if not target.action:
            target.action = " ".join(words)
    return target


# ---------------------------------------------------------------------------
# The ruleset
# ---------------------------------------------------------------------------

class Ruleset:
    """The tables of one namespace (one family), as iptables-save shows them."""

    def __init__(self):
        self.tables: dict[str, Table] = {}
        self.indexing = True

    # -- text -----------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, source: str = "iptables-save", ipsets=None) -> "Ruleset":
        """Read iptables-save / iptables-restore text. A table given twice is merged
        (as `iptables-restore --noflush` does). With `ipsets` (an IpsetLookup), a
        `-m set` rule naming a set it lacks is an error, as iptables-restore says."""
        ruleset = cls()
        collecting = gc.isenabled()
        gc.disable()                     # hundreds of thousands of closures: no GC passes
        try:
            _Parser(ruleset, source, ipsets).run(text)
        finally:
            if collecting:
                gc.enable()
        return ruleset

    def save(self) -> str:
        """iptables-save text: per table the chain declarations, the rules, COMMIT."""
        lines = []
        for table in self.tables.values():
            lines.append(f"*{table.name}")
            lines.extend(chain.declaration() for chain in table.chains.values())
            for chain in table.chains.values():
                lines.extend(rule.text for rule in chain.rules)
            lines.append("COMMIT")
        return "\n".join(lines) + "\n" if lines else ""

    def chain(self, table: str, chain: str) -> Optional[Chain]:
        t = self.tables.get(table)
        return t.chains.get(chain) if t is not None else None

    # -- evaluation -----------------------------------------------------------
    def evaluate(self, table: str, chain: str, ctx: HookContext,
                 engine: str = "iptables") -> ChainResult:
        """Run `chain` of `table` for ctx.packet as the kernel does (ipt_do_table).

        Every rule that matched becomes a Step, and so does the policy when falling off
        (or RETURNing from) the built-in chain. A user chain evaluated directly just
        ends (verdict ACCEPT, no policy). A missing table or chain accepts, no steps."""
        result = ChainResult()
        t = self.tables.get(table)
        start = t.chains.get(chain) if t is not None else None
        if start is None:
            return result
        chains, steps, indexing, packet = t.chains, result.steps, self.indexing, ctx.packet
        stack: list[tuple[Chain, Sequence[int], int]] = []
        current = start
        cands = current.candidates(packet, indexing)
        pos = 0
        while True:
            if pos == len(cands):
                if not stack:
                    break
                current, cands, pos = stack.pop()
                continue
            rule = current.rules[cands[pos]]
            pos += 1
            for pred in rule.preds:
                if not pred(ctx):
                    break
            else:
                target = rule.target
                kind = target.kind
                note = rule.note
                steps.append(Step(engine, table, current.name, rule.index, rule.text,
                                  target.action, note if note.__class__ is str else note(ctx)))
                if kind == CONTINUE:
                    if target.effect is not None:
                        target.effect(ctx, result)
                elif kind == JUMP or kind == GOTO:
                    if kind == JUMP:
                        stack.append((current, cands, pos))
                    current = chains[target.name]
                    cands = current.candidates(packet, indexing)
                    pos = 0
                elif kind == RETURN:
                    if not stack:
                        break
                    current, cands, pos = stack.pop()
                elif kind == NAT:
                    result.nat = target.nat
                    return result
                else:
                    result.verdict = target.name
                    if target.name == "REJECT":
                        result.reject_with = target.reject_with or (
                            "icmp6-port-unreachable" if packet.family == 6
                            else "icmp-port-unreachable")
                    return result
        if start.policy is not None:
            steps.append(Step(engine, table, chain, 0, f"-P {chain} {start.policy}",
                              start.policy))
            result.verdict = start.policy
        return result


COMMANDS = {"--append": "-A", "--insert": "-I", "--new-chain": "-N", "--new": "-N",
            "--delete-chain": "-X", "--flush": "-F", "--policy": "-P", "--delete": "-D",
            "--zero": "-Z"}


class _Parser:
    """iptables-restore input, line by line."""

    def __init__(self, ruleset: Ruleset, source: str, ipsets):
        self.ruleset, self.source, self.ipsets = ruleset, source, ipsets
        self.table: Optional[Table] = None
        self.line = 0
        self.env = _Env(ipsets, {})

    def fail(self, message: str, line: Optional[int] = None) -> InputError:
        return InputError(message, file=self.source, field=f"line {line or self.line}")

    def run(self, text: str) -> None:
        for number, raw in enumerate(text.splitlines(), 1):
            self.line = number
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            try:
                self.statement(line)
            except LineError as e:
                raise self.fail(str(e)) from None
        if self.table is not None:
            raise self.fail(f"table {self.table.name}: missing COMMIT")

    def statement(self, line: str) -> None:
        if line[0] == "*":
            if self.table is not None:
                raise LineError(f"table {self.table.name} not committed")
            name = line[1:].strip()
            self.table = self.ruleset.tables.setdefault(name, Table(name))
            return
        if self.table is None:
            raise LineError("outside a table (expected *TABLE)")
        if line == "COMMIT":
            self.commit(self.table)
            self.table = None
        elif line[0] == ":":
            self.declare(line[1:].split())
        else:
            if line[0] == "[":                   # iptables-save -c: "[pkts:bytes] -A ..."
                line = line.partition("]")[2].strip()
            values, raws = split_line(line)
            self.command(values, raws)

    def declare(self, words: list[str]) -> None:
        if len(words) < 2:
            raise LineError("bad chain declaration")
        name, policy = words[0], words[1]
        counters = words[2] if len(words) > 2 else "[0:0]"
        if policy == "-":
            self.table.chains.setdefault(name, Chain(name))
            return
        if policy not in ("ACCEPT", "DROP"):
            raise LineError(f"bad policy '{policy}' for {name}")
        chain = self.table.chains.setdefault(name, Chain(name))
        chain.policy, chain.counters = policy, counters

    def get_chain(self, name: str, cmd: str) -> Chain:
        """A chain commands may name; built-in chains exist without a declaration."""
        chain = self.table.chains.get(name)
        if chain is None:
            if name not in BUILTIN_CHAINS.get(self.table.name, ()):
                raise LineError(f"{cmd} {name}: chain '{name}' does not exist")
            chain = self.table.chains[name] = Chain(name, "ACCEPT")
        return chain

    def command(self, values: list[str], raws: list[str]) -> None:
        cmd = COMMANDS.get(values[0], values[0])
        args = values[1:]
        chains = self.table.chains
        if cmd in ("-A", "-I", "-D"):
            if not args:
                raise LineError(f"{cmd} needs a chain")
            chain = self.get_chain(args[0], cmd)
            start = 2
            position = None
            if cmd in ("-I", "-D") and len(args) > 1 and args[1].isdigit():
                position, start = int(args[1]), 3
            if cmd == "-D":
                self.delete(chain, position, " ".join(raws[start:]))
                return
            rule = self.rule(chain, values[start:], raws[start:])
            if cmd == "-A":
                chain.rules.append(rule)
            elif (position or 1) > len(chain.rules) + 1:
                raise LineError(f"-I {chain.name}: index of insertion too big")
            else:
                chain.rules.insert((position or 1) - 1, rule)
        elif cmd == "-N":
            if not args or args[0] in chains:
                raise LineError(f"-N: chain '{args[0] if args else ''}' already exists")
            chains[args[0]] = Chain(args[0])
        elif cmd == "-X":
            for name in args or [c.name for c in chains.values() if not c.builtin]:
                if name not in chains or chains[name].builtin:
                    raise LineError(f"-X: no user chain '{name}'")
                del chains[name]
        elif cmd == "-F":
            for chain in ([self.get_chain(args[0], cmd)] if args else chains.values()):
                chain.rules.clear()
        elif cmd == "-P":
            if len(args) != 2 or args[1] not in ("ACCEPT", "DROP"):
                raise LineError("-P needs a built-in chain and ACCEPT or DROP")
            chain = self.get_chain(args[0], cmd)
            if not chain.builtin:
                raise LineError(f"-P: '{args[0]}' is not a built-in chain")
            chain.policy = args[1]
        elif cmd != "-Z":
            raise LineError(f"unknown command '{values[0]}'")

    def rule(self, chain: Chain, values: list[str], raws: list[str]) -> Rule:
        text = " ".join(["-A", chain.name, *raws])
        rule = Rule(chain.name, text, line=self.line)
        env = self.env.start(self.table.name, chain.name, rule)
        try:
            rule.preds, rule.target = compile_rule(values, raws, env)
        except LineError as e:
            raise LineError(f"-A {chain.name}: {e}") from None
        if not env.impure:
            rule.dport = env.dport
        rule.note = env.note
        return rule

    def delete(self, chain: Chain, position: Optional[int], spec: str) -> None:
        if position is not None:
            if not 1 <= position <= len(chain.rules):
                raise LineError(f"-D {chain.name}: no rule {position}")
            del chain.rules[position - 1]
            return
        text = " ".join(["-A", chain.name, spec]).strip()
        for i, rule in enumerate(chain.rules):
            if rule.text == text:
                del chain.rules[i]
                return
        raise LineError(f"-D {chain.name}: no such rule")

    def commit(self, table: Table) -> None:
        """Number the rules, check jump targets exist and chains do not loop."""
        for chain in table.chains.values():
            for index, rule in enumerate(chain.rules, 1):
                rule.index = index
                rule.key = f"{table.name}/{chain.name}#{index}"
                if rule.target.kind in (JUMP, GOTO):
                    dest = table.chains.get(rule.target.name)
                    if dest is None:
                        raise self.fail(f"-A {chain.name}: chain '{rule.target.name}' "
                                        f"does not exist", rule.line)
                    if dest.builtin:
                        raise self.fail(f"-A {chain.name}: cannot jump to built-in chain "
                                        f"'{dest.name}'", rule.line)
            chain.changed()
        self.check_loops(table)

    def check_loops(self, table: Table) -> None:
        state: dict[str, int] = {}               # 1 = on the path, 2 = done

        def visit(chain: Chain) -> None:
            state[chain.name] = 1
            for rule in chain.rules:
                if rule.target.kind in (JUMP, GOTO):
                    seen = state.get(rule.target.name)
                    if seen == 1:
                        raise self.fail(f"-A {chain.name}: jump to '{rule.target.name}' "
                                        f"makes a loop", rule.line)
                    if seen is None:
                        visit(table.chains[rule.target.name])
            state[chain.name] = 2

        for chain in table.chains.values():
            if chain.name not in state:
                visit(chain)
