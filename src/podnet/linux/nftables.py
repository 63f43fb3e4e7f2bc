"""nftables: the rule language, parsed and evaluated for real.

`NftRuleset.parse` reads both forms nft itself reads: the block syntax that
`nft list ruleset` prints (``table ip t { set s {...} chain c {...} }``) and the
command syntax of `nft -f` scripts (``add table``, ``add chain``, ``add rule``,
``add element``, ``flush``, ``delete``...), which is what kube-proxy's nftables
mode writes; `NftRuleset.parse_json` reads `nft -j list ruleset` by turning each
JSON object into the equivalent command, so there is one parser and one
evaluator. `list_ruleset()` prints the ruleset as `nft list ruleset` does.

`evaluate()` runs a base chain for one packet the way nf_tables does: rules in
order, `jump` (returns), `goto` (does not), `return`, verdicts, verdict maps,
falling off a regular chain returns to the caller, falling off a base chain
applies its policy. Set and map lookups are dict lookups for exact keys plus an
interval index for prefixes, ranges and interface wildcards, so a verdict-map
dispatch costs the same for 10 services or 10,000.

Random choices (`numgen random`, `jhash`, `symhash`) are asked of `ctx.choose`
(`numgen inc` is a counter kept in `ctx.counters`), and
dynamic sets (`update @set { ip saddr }`) live in `ctx.nft_dynamic`, keyed by
(family, table, set); see podnet.linux.netfilter.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

from ..errors import InputError
from .netfilter import NFT_PRIORITY_NAMES, ChainResult, HookContext, NatAction, Step

__all__ = ["NftRuleset", "NftTable", "NftChain", "NftRule", "NftSet", "NftElement", "BaseChain",
           "hook_name", "priority_text"]

FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")
HOOK_NAMES = {"PREROUTING": "prerouting", "INPUT": "input", "FORWARD": "forward",
              "OUTPUT": "output", "POSTROUTING": "postrouting"}
_FAMILY_TABLES = {4: ("ip", "inet"), 6: ("ip6", "inet")}
_MAX_DEPTH = 64                 # jumps deeper than this can only be a loop


def hook_name(hook: str) -> str:
    """netfilter.py hook name (PREROUTING...) -> nft hook name (prerouting...)."""
    return HOOK_NAMES.get(hook.upper(), hook.lower())


# ---------------------------------------------------------------------------
# Priorities
# ---------------------------------------------------------------------------

def _prio_allowed(name: str, family: str, hook: Optional[str]) -> bool:
    """Whether nft prints a standard priority name for this family and hook."""
    if family not in ("ip", "ip6", "inet"):
        return name == "filter" and family in ("arp", "netdev")
    if name == "dstnat":
        return hook == "prerouting"
    if name == "srcnat":
        return hook == "postrouting"
    return True


def priority_text(family: str, hook: Optional[str], prio: int) -> str:
    """A priority as `nft list ruleset` prints it: `dstnat`, `filter + 10`, `-110`."""
    for name, value in sorted(NFT_PRIORITY_NAMES.items(), key=lambda kv: kv[1]):
        offset = prio - value
        if abs(offset) <= 10 and _prio_allowed(name, family, hook):
            if offset > 0:
                return f"{name} + {offset}"
            if offset < 0:
                return f"{name} - {-offset}"
            return name
    return str(prio)


_PRIO_RE = re.compile(r"^([a-z]+|-?\d+)(?:([+-])(\d+))?$")


def _parse_priority(text: str) -> int:
    m = _PRIO_RE.match(text)
    if not m:
        raise ValueError(f"bad priority {text!r}")
    base, sign, offset = m.groups()
    if base[0].isalpha():
        if base not in NFT_PRIORITY_NAMES:
            raise ValueError(f"unknown priority name {base!r}")
        value = NFT_PRIORITY_NAMES[base]
    else:
        value = int(base)
    if sign:
        value += int(offset) if sign == "+" else -int(offset)
    return value


# ---------------------------------------------------------------------------
# Times
# ---------------------------------------------------------------------------

_TIME_RE = re.compile(r"(\d+)(ms|d|h|m|s)")


def _parse_time(text: str) -> float:
    """`10800s`, `3h`, `1d2h3m4s`, `500ms` or a bare number of seconds."""
    if text.isdigit():
        return float(text)
    pos, total = 0, 0.0
    for m in _TIME_RE.finditer(text):
        if m.start() != pos:
            break
        n, unit = int(m.group(1)), m.group(2)
        total += n * {"ms": 0.001, "d": 86400, "h": 3600, "m": 60, "s": 1}[unit]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"bad time {text!r}")
    return total


def _time_text(seconds: float) -> str:
    """Seconds as nft prints them (`3h`, `1d2h`, `30s`)."""
    seconds = int(seconds)
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out or "0s"


# ---------------------------------------------------------------------------
# Data types: literal text -> normalized value (ints for numbers and addresses)
# ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Range:
    """An interval element or literal: a prefix (10.0.0.0/8) or a range (1000-2000)."""
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class Glob:
    """An interface-name wildcard: `"veth*"`."""
    prefix: str


@dataclass(frozen=True, slots=True)
class Exists:
    """`fib ... oif missing` / `exists`."""
    want: bool


PROTOCOLS = {"hopopt": 0, "icmp": 1, "igmp": 2, "ipip": 4, "ipencap": 4, "tcp": 6, "egp": 8,
             "udp": 17, "ipv6": 41, "gre": 47, "esp": 50, "ah": 51, "icmpv6": 58,
             "ipv6-icmp": 58, "ospf": 89, "pim": 103, "comp": 108, "vrrp": 112, "l2tp": 115,
             "sctp": 132, "udplite": 136, "dccp": 33}
SERVICES = {"ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "bootps": 67,
            "bootpc": 68, "tftp": 69, "http": 80, "kerberos": 88, "pop3": 110, "ntp": 123,
            "imap": 143, "snmp": 161, "bgp": 179, "ldap": 389, "https": 443,
            "microsoft-ds": 445, "syslog": 514, "submission": 587, "ldaps": 636, "imaps": 993,
            "pop3s": 995, "mysql": 3306, "postgresql": 5432, "http-alt": 8080}
ICMP_TYPES = {"echo-reply": 0, "destination-unreachable": 3, "source-quench": 4, "redirect": 5,
              "echo-request": 8, "router-advertisement": 9, "router-solicitation": 10,
              "time-exceeded": 11, "parameter-problem": 12, "timestamp-request": 13,
              "timestamp-reply": 14, "info-request": 15, "info-reply": 16,
              "address-mask-request": 17, "address-mask-reply": 18}
ICMPV6_TYPES = {"destination-unreachable": 1, "packet-too-big": 2, "time-exceeded": 3,
                "parameter-problem": 4, "echo-request": 128, "echo-reply": 129,
                "mld-listener-query": 130, "mld-listener-report": 131,
                "mld-listener-done": 132, "mld-listener-reduction": 132,
                "nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
                "nd-neighbor-advert": 136, "nd-redirect": 137, "router-renumbering": 138,
                "ind-neighbor-solicit": 141, "ind-neighbor-advert": 142,
                "mld2-listener-report": 143}
CT_STATES = {"invalid": 1, "established": 2, "related": 4, "new": 8, "untracked": 64}
CT_STATUS = {"expected": 1, "seen-reply": 2, "assured": 4, "confirmed": 8, "snat": 16,
             "dnat": 32, "dying": 512}
TCP_FLAGS = {"fin": 1, "syn": 2, "rst": 4, "psh": 8, "ack": 16, "urg": 32, "ecn": 64, "cwr": 128}
FIB_TYPES = ("unspec", "unicast", "local", "broadcast", "anycast", "multicast", "blackhole",
             "unreachable", "prohibit")
_ENUMS = {"fib_addrtype": FIB_TYPES, "nf_proto": ("ipv4", "ipv6"),
          "ether_type": ("ip", "ip6", "arp", "vlan", "8021q", "8021ad"),
          "pkt_type": ("host", "unicast", "broadcast", "multicast", "other"),
          "ct_dir": ("original", "reply")}
_BITMASKS = {"ct_state": CT_STATES, "ct_status": CT_STATUS, "tcp_flag": TCP_FLAGS}


def _unquote(tok: str) -> str:
    return tok[1:-1] if len(tok) >= 2 and tok[0] == '"' and tok[-1] == '"' else tok


def _int(tok: str) -> int:
    """Decimal or 0x/0o/0b (nft prints marks as 0x00004000)."""
    return int(tok, 0) if tok[:2].lower() in ("0x", "0o", "0b") else int(tok, 10)


def _numeric(parse_one: Callable[[str], int]) -> Callable[[str], Any]:
    """A parser for a numeric type that also accepts `lo-hi` ranges."""
    def parse(tok: str):
        if "-" in tok:
            lo, _, hi = tok.partition("-")
            lo_v, hi_v = parse_one(lo), parse_one(hi)
            if lo_v > hi_v:
                raise ValueError(f"empty range {tok!r}")
            return Range(lo_v, hi_v)
        return parse_one(tok)
    return parse


def _addr_parser(version: int) -> Callable[[str], Any]:
    af, bits = (socket.AF_INET, 32) if version == 4 else (socket.AF_INET6, 128)

    def one(text: str) -> int:
        try:
            return int.from_bytes(socket.inet_pton(af, text), "big")
        except OSError:
            raise ValueError(f"bad IPv{version} address {text!r}") from None

    def parse(tok: str):
        if tok[0] == '"' or tok[0] == "[":
            tok = tok[1:-1]
        if "/" in tok:
            addr, _, length = tok.partition("/")
            if not length.isdigit() or int(length) > bits:
                raise ValueError(f"bad prefix length in {tok!r}")
            host = bits - int(length)
            lo = one(addr) >> host << host
            return Range(lo, lo | ((1 << host) - 1))
        if "-" in tok:
            lo, hi = (one(p) for p in tok.split("-", 1))
            if lo > hi:
                raise ValueError(f"empty range {tok!r}")
            return Range(lo, hi)
        return one(tok)
    return parse


def _named_int(names: dict, what: str) -> Callable[[str], int]:
    def parse(tok: str) -> int:
        tok = _unquote(tok)
        if tok in names:
            return names[tok]
        try:
            return _int(tok)
        except ValueError:
            raise ValueError(f"unknown {what} {tok!r}") from None
    return parse


def _enum(choices: tuple) -> Callable[[str], str]:
    def parse(tok: str) -> str:
        tok = _unquote(tok)
        if tok not in choices:
            raise ValueError(f"unknown value {tok!r} (expected one of {', '.join(choices)})")
        return tok
    return parse


def _bits(names: dict) -> Callable[[str], int]:
    def parse(tok: str) -> int:
        value = 0
        for part in re.split(r"[|,]", _unquote(tok).strip("()")):
            if part in names:
                value |= names[part]
            else:
                try:
                    value |= _int(part)
                except ValueError:
                    raise ValueError(f"unknown flag {part!r}") from None
        return value
    return parse


def _ifname(tok: str):
    name = _unquote(tok)
    if name.endswith("*") and not name.endswith("\\*"):
        return Glob(name[:-1])
    return name.replace("\\*", "*")


def _mac(tok: str) -> str:
    tok = _unquote(tok).lower()
    if not re.fullmatch(r"[0-9a-f]{1,2}(:[0-9a-f]{1,2}){5}", tok):
        raise ValueError(f"bad ethernet address {tok!r}")
    return ":".join(p.zfill(2) for p in tok.split(":"))


def _plain_int(tok: str) -> int:
    try:
        return _int(tok)
    except ValueError:
        raise ValueError(f"expected a number, got {tok!r}") from None


TYPES: dict[str, Callable[[str], Any]] = {
    "ipv4_addr": _addr_parser(4),
    "ipv6_addr": _addr_parser(6),
    "inet_proto": _numeric(_named_int(PROTOCOLS, "protocol")),
    "inet_service": _numeric(_named_int(SERVICES, "service")),
    "integer": _numeric(_plain_int),
    "mark": _numeric(_plain_int),
    "ifname": _ifname,
    "iface_index": _ifname,
    "ether_addr": _mac,
    "icmp_type": _named_int(ICMP_TYPES, "icmp type"),
    "icmpv6_type": _named_int(ICMPV6_TYPES, "icmpv6 type"),
    "icmp_code": _plain_int,
    **{name: _enum(choices) for name, choices in _ENUMS.items()},
    **{name: _bits(table) for name, table in _BITMASKS.items()},
}


def _parse_value(dtype: str, tok: str):
    parser = TYPES.get(dtype)
    if parser is None:
        raise ValueError(f"unsupported data type {dtype!r}")
    return parser(tok)


def _addr_type(version: int) -> str:
    return "ipv4_addr" if version == 4 else "ipv6_addr"


def _to_ip(value: int, dtype: str):
    return ipaddress.IPv4Address(value) if dtype == "ipv4_addr" else ipaddress.IPv6Address(value)


def _pmatch(value, pattern) -> bool:
    """One value against one literal: exact, interval or wildcard."""
    if type(pattern) is Range:
        return type(value) is int and pattern.lo <= value <= pattern.hi
    if type(pattern) is Glob:
        return type(value) is str and value.startswith(pattern.prefix)
    return value == pattern


def _kmatch(key: tuple, pattern: tuple, start: int = 0) -> bool:
    for i in range(start, len(pattern)):
        if not _pmatch(key[i], pattern[i]):
            return False
    return True


def _exact(part) -> bool:
    return type(part) not in (Range, Glob)


# ---------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------

_TOKEN_RE = re.compile(r'[^\s{}(),;"#]+|[{}(),;\n]|"(?:[^"\\\n]|\\.)*"|#[^\n]*|\\\n|"[^\n]*')
_SEPARATORS = ("\n", ";")
_PUNCT = frozenset(("{", "}", ";", "\n", ",", "(", ")"))
_END = frozenset(("\n", ";", "}", None))


def _kept(tok: str) -> bool:
    return tok[0] != "#" and tok != "\\\n"


def _split_colon(tok: str) -> tuple:
    """`0:` in `{ 0: goto x }` is a key and a colon (but `fe80::` is an address)."""
    if tok[-1] == ":" and len(tok) > 1 and tok[0] != '"' and not tok.endswith("::"):
        return (tok[:-1], ":")
    return (tok,)


def _tokenize(text: str) -> list[str]:
    """Words, strings, punctuation and newlines (comments and continuations dropped)."""
    toks = _TOKEN_RE.findall(text)
    if "#" in text or "\\\n" in text:
        toks = [t for t in toks if _kept(t)]
    if any(t[-1] == ":" and len(t) > 1 for t in toks):
        toks = [part for t in toks for part in _split_colon(t)]
    if '"' in text:
        for n, tok in enumerate(toks):
            if tok[0] == '"' and (len(tok) == 1 or tok[-1] != '"'):
                raise _ParseError("unterminated string", n)
    return toks


def _token_offset(text: str, index: int) -> int:
    """Offset in `text` of the index-th kept token (for error messages only)."""
    n = -1
    for m in _TOKEN_RE.finditer(text):
        if _kept(m.group()):
            n += 1
            if n == index:
                return m.start()
    return len(text.rstrip())


def _join(toks: list[str]) -> str:
    """Tokens back to text, one space apart: `{ a, b }`, `established,related`, `(syn|ack)`."""
    if "," not in toks and "(" not in toks:
        return " ".join(t for t in toks if t != "\n")
    out: list[str] = []
    depth, prev = 0, None
    for tok in toks:
        if tok == "\n":
            continue
        if prev is not None and not (prev == "(" or tok in (")", ",")
                                     or (prev == "," and depth == 0)):
            out.append(" ")
        out.append(tok)
        depth += (tok == "{") - (tok == "}")
        prev = tok
    return "".join(out)


class _ParseError(Exception):
    def __init__(self, message: str, index: int):
        super().__init__(message)
        self.message, self.index = message, index


# ---------------------------------------------------------------------------
# Evaluation environment and expressions
# ---------------------------------------------------------------------------

class _Env:
    """One evaluation: the hook context plus where we are (for steps and choices)."""
    __slots__ = ("ctx", "pkt", "conn", "family", "table", "label", "result", "note",
                 "chain", "index", "choices")

    def __init__(self, ctx: HookContext, table: "NftTable"):
        self.ctx, self.pkt, self.conn = ctx, ctx.packet, ctx.conn
        self.family, self.table = table.family, table
        self.label = f"{table.family} {table.name}"
        self.result = ChainResult()
        self.note = ""
        self.chain, self.index, self.choices = "", 0, 0

    def choose(self, what: str, n: int) -> int:
        """Ask ctx.choose for one of n equally likely values (numgen / hashes)."""
        key = f"{self.table.name}/{self.chain}#{self.index}"
        if self.choices:
            key += f".{self.choices}"
        self.choices += 1
        picked = self.ctx.choose(key, [(str(i), 1.0 / n) for i in range(n)])
        self.note = (self.note + "; " if self.note else "") + f"{what}: {picked} of {n}"
        return picked


_L4 = frozenset(("tcp", "udp", "sctp", "udplite", "dccp"))


def _proto_num(pkt) -> Optional[int]:
    return PROTOCOLS.get(pkt.proto)


def _v(version: int, addr):
    return int(addr) if addr is not None and addr.version == version else None


def _l4(proto: Optional[str], attr: str):
    def fetch(e: _Env):
        pkt = e.pkt
        if (pkt.proto == proto) if proto else (pkt.proto in _L4):
            return getattr(pkt, attr)
        return None
    return fetch


def _icmp(proto: str, attr: str):
    return lambda e: getattr(e.pkt, attr) if e.pkt.proto == proto else None


def _tcp_flags(e: _Env):
    if e.pkt.proto != "tcp":
        return None
    return sum(TCP_FLAGS.get(f.lower(), 0) for f in e.pkt.tcp_flags)


def _iface(attr: str, empty):
    def fetch(e: _Env):
        name = getattr(e.ctx, attr)
        return name if name is not None else empty
    return fetch


def _pkttype(e: _Env):
    dst = e.pkt.dst
    if dst.is_multicast:
        return "multicast"
    return "broadcast" if e.ctx.addr_type(dst, None) == "BROADCAST" else "host"


def _ct_state(e: _Env):
    conn = e.conn
    if conn is None or conn.notrack:
        return CT_STATES["untracked"]
    return CT_STATES.get(conn.state.lower(), 0)


def _ct_status(e: _Env):
    if e.conn is None:
        return None
    return sum(CT_STATUS.get(s.lower().replace("_", "-"), 0) for s in e.conn.status)


def _ct(attr: str):
    return lambda e: getattr(e.conn, attr) if e.conn is not None else None


def _ct_orig(attr: str, pkt_attr: str, version: Optional[int]):
    def fetch(e: _Env):
        conn = e.conn
        if conn is None or conn.notrack:
            return None
        value = getattr(conn, attr)
        if value is None:
            value = getattr(e.pkt, pkt_attr)
        if version is not None:
            return _v(version, value)
        return value
    return fetch


# name -> (data type, fetch(env) -> normalized value or None when not applicable)
FIELDS: dict[str, tuple[str, Callable[[_Env], Any]]] = {
    "ip saddr": ("ipv4_addr", lambda e: _v(4, e.pkt.src)),
    "ip daddr": ("ipv4_addr", lambda e: _v(4, e.pkt.dst)),
    "ip protocol": ("inet_proto", lambda e: _proto_num(e.pkt) if e.pkt.src.version == 4 else None),
    "ip ttl": ("integer", lambda e: e.pkt.ttl if e.pkt.src.version == 4 else None),
    "ip length": ("integer", lambda e: e.pkt.length if e.pkt.src.version == 4 else None),
    "ip6 saddr": ("ipv6_addr", lambda e: _v(6, e.pkt.src)),
    "ip6 daddr": ("ipv6_addr", lambda e: _v(6, e.pkt.dst)),
    "ip6 nexthdr": ("inet_proto", lambda e: _proto_num(e.pkt) if e.pkt.src.version == 6 else None),
    "ip6 hoplimit": ("integer", lambda e: e.pkt.ttl if e.pkt.src.version == 6 else None),
    "th sport": ("inet_service", _l4(None, "sport")),
    "th dport": ("inet_service", _l4(None, "dport")),
    **{f"{p} {f}": ("inet_service", _l4(p, f)) for p in sorted(_L4) for f in ("sport", "dport")},
    "tcp flags": ("tcp_flag", _tcp_flags),
    "icmp type": ("icmp_type", _icmp("icmp", "icmp_type")),
    "icmp code": ("icmp_code", _icmp("icmp", "icmp_code")),
    "icmpv6 type": ("icmpv6_type", _icmp("icmpv6", "icmp_type")),
    "icmpv6 code": ("icmp_code", _icmp("icmpv6", "icmp_code")),
    "ether saddr": ("ether_addr", lambda e: e.pkt.src_mac.lower() if e.pkt.src_mac else None),
    "ether daddr": ("ether_addr", lambda e: e.pkt.dst_mac.lower() if e.pkt.dst_mac else None),
    "ether type": ("ether_type", lambda e: "ip" if e.pkt.src.version == 4 else "ip6"),
    "meta l4proto": ("inet_proto", lambda e: _proto_num(e.pkt)),
    "meta protocol": ("ether_type", lambda e: "ip" if e.pkt.src.version == 4 else "ip6"),
    "meta nfproto": ("nf_proto", lambda e: "ipv4" if e.pkt.src.version == 4 else "ipv6"),
    "meta mark": ("mark", lambda e: e.pkt.mark),
    "meta length": ("integer", lambda e: e.pkt.length),
    "meta iifname": ("ifname", _iface("in_iface", "")),
    "meta oifname": ("ifname", _iface("out_iface", "")),
    "meta iif": ("iface_index", _iface("in_iface", None)),
    "meta oif": ("iface_index", _iface("out_iface", None)),
    "meta pkttype": ("pkt_type", _pkttype),
    "meta skuid": ("integer", lambda e: None),
    "meta skgid": ("integer", lambda e: None),
    "meta nftrace": ("integer", lambda e: int(e.result.trace)),
    "ct state": ("ct_state", _ct_state),
    "ct status": ("ct_status", _ct_status),
    "ct mark": ("mark", _ct("mark")),
    "ct direction": ("ct_dir", lambda e: e.conn.direction.lower() if e.conn else None),
    "ct zone": ("integer", lambda e: 0 if e.conn else None),
    "ct l3proto": ("nf_proto", lambda e: "ipv4" if e.pkt.src.version == 4 else "ipv6"),
    "ct protocol": ("inet_proto", lambda e: _proto_num(e.pkt)),
    "ct original saddr": ("ipv4_addr", _ct_orig("orig_src", "src", 4)),
    "ct original daddr": ("ipv4_addr", _ct_orig("orig_dst", "dst", 4)),
    "ct original ip saddr": ("ipv4_addr", _ct_orig("orig_src", "src", 4)),
    "ct original ip daddr": ("ipv4_addr", _ct_orig("orig_dst", "dst", 4)),
    "ct original ip6 saddr": ("ipv6_addr", _ct_orig("orig_src", "src", 6)),
    "ct original ip6 daddr": ("ipv6_addr", _ct_orig("orig_dst", "dst", 6)),
    "ct original proto-src": ("inet_service", _ct_orig("orig_sport", "sport", None)),
    "ct original proto-dst": ("inet_service", _ct_orig("orig_dport", "dport", None)),
}
_BARE_META = ("mark", "iif", "oif", "iifname", "oifname", "pkttype", "skuid", "skgid", "nftrace")
_PAYLOAD_PROTOS = ("ip", "ip6", "th", "tcp", "udp", "sctp", "udplite", "dccp", "icmp", "icmpv6",
                   "ether")
_FIB_FLAGS = ("saddr", "daddr", "mark", "iif", "oif")
_SETTABLE = ("meta mark", "ct mark", "meta nftrace")
_EXPR_START = frozenset(_PAYLOAD_PROTOS + _BARE_META + ("meta", "ct", "fib", "numgen", "jhash",
                                                        "symhash"))


class _Expr:
    """An expression that yields a value from the packet (or None: not applicable)."""
    __slots__ = ("dtypes",)

    def eval(self, env: _Env):
        raise NotImplementedError

    def key(self, env: _Env) -> Optional[tuple]:
        """The value as a set/map key (always a tuple)."""
        value = self.eval(env)
        return None if value is None else (value,)


class _Field(_Expr):
    __slots__ = ("name", "fetch")

    def __init__(self, name: str):
        dtype, self.fetch = FIELDS[name]
        self.name, self.dtypes = name, (dtype,)

    def eval(self, env):
        return self.fetch(env)

    def sem(self):
        return ("field", self.name)


_FIELD_CACHE: dict[Optional[str], _Field] = {}      # fields are immutable: share them


class _Fib(_Expr):
    """`fib saddr type`, `fib daddr . iif type`, `fib saddr . iif oif` (assumed symmetric)."""
    __slots__ = ("flags", "result")

    def __init__(self, flags: tuple, result: str):
        self.flags, self.result = flags, result
        self.dtypes = ("fib_addrtype",) if result == "type" else ("ifname",)

    def eval(self, env):
        if self.result != "type":
            return env.ctx.in_iface if "saddr" in self.flags else env.ctx.out_iface
        addr = env.pkt.src if "saddr" in self.flags else env.pkt.dst
        iface = env.ctx.in_iface if "iif" in self.flags else \
            env.ctx.out_iface if "oif" in self.flags else None
        return env.ctx.addr_type(addr, iface).lower()

    def sem(self):
        return ("fib", self.flags, self.result)


class _Choice(_Expr):
    """`numgen random|inc mod N [offset K]`, `jhash EXPR mod N`, `symhash mod N`: a branch."""
    __slots__ = ("what", "mod", "offset", "expr")

    def __init__(self, what: str, mod: int, offset: int = 0, expr: Optional[_Expr] = None):
        self.what, self.mod, self.offset, self.expr = what, mod, offset, expr
        self.dtypes = ("integer",)

    def eval(self, env):
        if self.what == "numgen inc":
            return self._inc(env) + self.offset
        return env.choose(f"{self.what} mod {self.mod}", self.mod) + self.offset

    def _inc(self, env) -> int:
        """nft_ng_inc_gen: no branch but the expression's own counter, shared by every packet
        through the rule; nft_ng_inc_init starts it at mod - 1, so the first packet gets 0."""
        counters = env.ctx.counters
        oval = counters.get(self, self.mod - 1)
        nval = counters[self] = oval + 1 if oval + 1 < self.mod else 0
        env.note = (env.note + "; " if env.note else "") + \
            f"numgen inc mod {self.mod}: {nval + self.offset} (counter {oval} -> {nval})"
        return nval

    def sem(self):
        return ("choice", self.what, self.mod, self.offset,
                self.expr.sem() if self.expr is not None else None)


_BINOPS = {"&": "&", "and": "&", "|": "|", "or": "|", "^": "^", "xor": "^", "<<": "<<",
           ">>": ">>"}
_BINOP_FN = {"&": lambda a, b: a & b, "|": lambda a, b: a | b, "^": lambda a, b: a ^ b,
             "<<": lambda a, b: a << b, ">>": lambda a, b: a >> b}


class _BinOp(_Expr):
    __slots__ = ("expr", "op", "const", "fn")

    def __init__(self, expr: _Expr, op: str, const: int):
        self.expr, self.op, self.const, self.fn = expr, op, const, _BINOP_FN[op]
        self.dtypes = expr.dtypes

    def eval(self, env):
        value = self.expr.eval(env)
        return None if value is None else self.fn(value, self.const)

    def sem(self):
        return ("binop", self.expr.sem(), self.op, self.const)


class _Concat(_Expr):
    __slots__ = ("parts",)

    def __init__(self, parts: list[_Expr]):
        self.parts = tuple(parts)
        self.dtypes = tuple(d for p in parts for d in p.dtypes)

    def eval(self, env):
        values = []
        for part in self.parts:
            value = part.eval(env)
            if value is None:
                return None
            values.append(value)
        return tuple(values)

    def key(self, env):
        return self.eval(env)

    def sem(self):
        return ("concat",) + tuple(p.sem() for p in self.parts)


class _MapLookup(_Expr):
    """`EXPR map @m` / `EXPR map { k : v }`: the data of the matching element."""
    __slots__ = ("expr", "source")

    def __init__(self, expr: _Expr, source: "_SetSource", dtypes: tuple):
        self.expr, self.source, self.dtypes = expr, source, dtypes

    def eval(self, env):
        key = self.expr.key(env)
        elem = self.source.find(env, key) if key is not None else None
        return None if elem is None else elem.data

    def sem(self):
        return ("map", self.expr.sem(), self.source.sem())


# ---------------------------------------------------------------------------
# Sets and maps
# ---------------------------------------------------------------------------

@dataclass(slots=True)
class NftElement:
    key: tuple                      # normalized values, Range or Glob per field
    data: Any = None                # _Verdict for verdict maps, tuple of values for maps
    text: str = ""                  # as written / printed
    comment: Optional[str] = None
    timeout: Optional[float] = None

    def sem(self):
        data = self.data.sem() if isinstance(self.data, _Verdict) else self.data
        return (self.key, data, self.timeout)


class _IntervalIndex:
    """Elements with prefix/range/wildcard fields, searchable in O(log n).

    Elements are bucketed by their exact leading fields; within a bucket they are
    sorted by the low end of the first inexact field, with a running maximum of the
    high ends so a lookup walks back only over intervals that can contain the value.
    """

    def __init__(self, elements: Iterable[NftElement]):
        buckets: dict[tuple, list] = {}
        self.globs: list[NftElement] = []
        for elem in elements:
            k = next(i for i, p in enumerate(elem.key) if not _exact(p))
            part = elem.key[k]
            if type(part) is Glob:
                self.globs.append(elem)
                continue
            buckets.setdefault((k, elem.key[:k]), []).append((part.lo, part.hi, k, elem))
        self.depths = sorted({k for k, _ in buckets})
        self.buckets = {}
        for bkey, items in buckets.items():
            items.sort(key=lambda t: (t[0], t[1]))
            los = [t[0] for t in items]
            maxhi, running = [], -1
            for t in items:
                running = max(running, t[1])
                maxhi.append(running)
            self.buckets[bkey] = (los, maxhi, items)

    def find(self, key: tuple) -> Optional[NftElement]:
        for k in self.depths:
            bucket = self.buckets.get((k, key[:k]))
            if bucket is None:
                continue
            value = key[k]
            if type(value) is not int:
                continue
            los, maxhi, items = bucket
            i = bisect_right(los, value) - 1
            while i >= 0 and maxhi[i] >= value:
                lo, hi, _, elem = items[i]
                if hi >= value and _kmatch(key, elem.key, k + 1):
                    return elem
                i -= 1
        for elem in self.globs:
            if _kmatch(key, elem.key):
                return elem
        return None


class NftSet:
    """A named or anonymous set / map / verdict map with its elements."""

    def __init__(self, name: Optional[str], kind: str = "set", key_types: tuple = (),
                 data_types: tuple = ()):
        self.name, self.kind = name, kind           # kind: set | map
        self.key_types, self.data_types = key_types, data_types
        self.decl = ""                              # `type ...` / `typeof ...` as written
        self.flags: list[str] = []
        self.timeout: Optional[float] = None
        self.size: Optional[int] = None
        self.policy: Optional[str] = None
        self.comment: Optional[str] = None
        self.options: list[str] = []                # other lines kept for printing
        self.elements: dict[tuple, NftElement] = {}
        self._ranged: dict[tuple, NftElement] = {}
        self._index: Optional[_IntervalIndex] = None
        self.handle = 0

    @property
    def is_verdict_map(self) -> bool:
        return self.data_types == ("verdict",)

    @property
    def dynamic(self) -> bool:
        return "dynamic" in self.flags or "timeout" in self.flags

    def add(self, elem: NftElement) -> None:
        self.elements[elem.key] = elem
        if not all(_exact(p) for p in elem.key):
            self._ranged[elem.key] = elem
            self._index = None

    def remove(self, key: tuple) -> bool:
        if self.elements.pop(key, None) is None:
            return False
        if self._ranged.pop(key, None) is not None:
            self._index = None
        return True

    def clear(self) -> None:
        self.elements.clear()
        self._ranged.clear()
        self._index = None

    def lookup(self, key: tuple) -> Optional[NftElement]:
        """The (static) element matching a packet's key, or None."""
        elem = self.elements.get(key)
        if elem is not None or not self._ranged:
            return elem
        if self._index is None:
            self._index = _IntervalIndex(self._ranged.values())
        return self._index.find(key)

    def sem(self):
        return (self.kind, self.key_types, self.data_types,
                frozenset(self.flags) - {"dynamic"}, self.timeout,
                frozenset(e.sem() for e in self.elements.values()))

    def render(self) -> str:
        lines = [self.decl or self._type_decl()]
        if self.size is not None:
            lines.append(f"size {self.size}")
        if self.flags:
            lines.append("flags " + ",".join(self.flags))
        if self.timeout is not None:
            lines.append(f"timeout {_time_text(self.timeout)}")
        if self.policy:
            lines.append(f"policy {self.policy}")
        lines.extend(self.options)
        if self.comment is not None:
            lines.append(f'comment "{self.comment}"')
        if self.elements:
            texts = [e.text for e in self.elements.values()]
            lines.append("elements = { " + ",\n\t\t\t     ".join(texts) + " }")
        body = "".join(f"\t\t{line}\n" for line in lines)
        return f"\t{self.kind} {self.name} {{\n{body}\t}}\n"

    def _type_decl(self) -> str:
        decl = "type " + " . ".join(self.key_types)
        if self.kind == "map":
            decl += " : " + " . ".join(self.data_types)
        return decl


class _SetSource:
    """Where a lookup goes: a named set of the table (`@name`) or an anonymous one."""
    __slots__ = ("name", "anon")

    def __init__(self, name: Optional[str] = None, anon: Optional[NftSet] = None):
        self.name, self.anon = name, anon

    def resolve(self, env: _Env) -> NftSet:
        return self.anon if self.anon is not None else env.table.sets[self.name]

    def find(self, env: _Env, key: tuple) -> Optional[NftElement]:
        if self.anon is not None:
            return self.anon.lookup(key)
        s = env.table.sets[self.name]
        elem = s.lookup(key)
        if elem is None and s.dynamic:
            store = env.ctx.nft_dynamic.get((env.family, env.table.name, self.name))
            if store:
                expiry = store.get(key)
                if expiry is not None and expiry > env.ctx.now:
                    return NftElement(key)
        return elem

    def sem(self):
        if self.anon is not None:
            return ("anon", self.anon.kind, frozenset(e.sem() for e in self.anon.elements.values()))
        return ("@", self.name)


# ---------------------------------------------------------------------------
# Rule items: matches and statements.  run(env) -> True (go on), False (no match)
# or a _Verdict (stop the rule and act).
# ---------------------------------------------------------------------------

class _Verdict:
    __slots__ = ("kind", "target", "reject_with", "nat")

    def __init__(self, kind: str, target: Optional[str] = None, reject_with: Optional[str] = None,
                 nat: Optional[NatAction] = None):
        self.kind, self.target, self.reject_with, self.nat = kind, target, reject_with, nat

    def run(self, env):
        return self

    def sem(self):
        return ("verdict", self.kind, self.target)

    def action(self) -> str:
        if self.kind in ("jump", "goto"):
            return f"{self.kind} {self.target}"
        if self.kind == "reject":
            return f"REJECT with {self.reject_with}"
        if self.kind == "nat":
            return str(self.nat)
        if self.kind in ("return", "continue"):
            return self.kind
        return self.kind.upper()


_VERDICT_WORDS = ("accept", "drop", "return", "continue", "jump", "goto", "queue")


class _Match:
    """`LHS [op] RHS`: a literal, an anonymous set, `@set`, a flag test."""
    __slots__ = ("lhs", "op", "rhs", "source", "flags")

    def __init__(self, lhs: _Expr, op: Optional[str], rhs=None, source: Optional[_SetSource] = None):
        self.lhs, self.op, self.rhs, self.source = lhs, op, rhs, source
        self.flags = len(lhs.dtypes) == 1 and lhs.dtypes[0] in _BITMASKS and \
            not isinstance(lhs, _BinOp)

    def run(self, env):
        rhs = self.rhs
        if type(rhs) is Exists:
            return (self.lhs.eval(env) is not None) == rhs.want
        if self.source is not None:
            key = self.lhs.key(env)
            if key is None:
                return False
            found = self.source.find(env, key) is not None
            return found if self.op != "!=" else not found
        value = self.lhs.eval(env)
        if value is None:
            return False
        op = self.op
        if self.flags and op is None:
            return (value & rhs) != 0
        if self.flags and op == "!=":
            return (value & rhs) == 0
        if op is None or op == "==":
            return _kmatch(value, rhs) if type(rhs) is tuple else _pmatch(value, rhs)
        if op == "!=":
            return not (_kmatch(value, rhs) if type(rhs) is tuple else _pmatch(value, rhs))
        return _COMPARE[op](value, rhs)

    def sem(self):
        if self.source is not None or not self.flags:
            op = "!=" if self.op == "!=" else self.op if self.op not in (None, "==") else None
        else:
            op = self.op
        return ("match", self.lhs.sem(), op,
                self.source.sem() if self.source is not None else self.rhs)


_COMPARE = {"<": lambda a, b: a < b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
            ">=": lambda a, b: a >= b}
_OPS = {"==": "==", "eq": "==", "!=": "!=", "ne": "!=", "<": "<", "lt": "<", ">": ">",
        "gt": ">", "<=": "<=", "le": "<=", ">=": ">=", "ge": ">="}


class _VMap:
    """`EXPR vmap @m` / `EXPR vmap { k : verdict, ... }`: no element, no match."""
    __slots__ = ("expr", "source")

    def __init__(self, expr: _Expr, source: _SetSource):
        self.expr, self.source = expr, source

    def run(self, env):
        key = self.expr.key(env)
        if key is None:
            return False
        elem = self.source.find(env, key)
        return False if elem is None or elem.data is None else elem.data

    def sem(self):
        return ("vmap", self.expr.sem(), self.source.sem())


class _Reject:
    __slots__ = ("type", "code")

    def __init__(self, type_: str, code: Optional[str]):
        self.type, self.code = type_, code

    def run(self, env):
        return _Verdict("reject", reject_with=self.reject_with(env.pkt.src.version))

    def reject_with(self, version: int) -> str:
        """The reject type in iptables' words: icmp-port-unreachable, tcp-reset, ..."""
        if self.type == "tcp reset":
            return "tcp-reset"
        code = self.code or "port-unreachable"
        kind = self.type
        if kind == "icmpx":
            if version == 4:
                code = {"no-route": "net-unreachable"}.get(code, code)
            else:
                code = {"host-unreachable": "addr-unreachable"}.get(code, code)
            kind = "icmp" if version == 4 else "icmpv6"
        if kind == "icmp":
            return "icmp-" + {"prot-unreachable": "proto-unreachable"}.get(code, code)
        return "icmp6-" + {"admin-prohibited": "adm-prohibited"}.get(code, code)

    def sem(self):
        return ("reject", self.type, self.code or "port-unreachable")


class _Nat:
    """dnat / snat / masquerade / redirect: terminating, the walker applies the binding."""
    __slots__ = ("kind", "addr", "addr_type", "port", "port_max", "flags", "lookup")

    def __init__(self, kind: str, addr=None, addr_type: str = "ipv4_addr", port=None,
                 port_max=None, flags: tuple = (), lookup: Optional[_Expr] = None):
        self.kind, self.addr, self.addr_type = kind, addr, addr_type
        self.port, self.port_max, self.flags, self.lookup = port, port_max, flags, lookup

    def run(self, env):
        addr, port = self.addr, self.port
        addr_type = self.addr_type
        if self.lookup is not None:
            data = self.lookup.eval(env)
            if data is None:
                return False
            data = data if isinstance(data, tuple) else (data,)
            addr = data[0]
            port = data[1] if len(data) > 1 else port
            addr_type = self.lookup.dtypes[0]
        ip = _to_ip(addr, addr_type) if addr is not None else None
        nat = NatAction(self.kind, ip, port, self.port_max,
                        random_fully="fully-random" in self.flags, random="random" in self.flags,
                        persistent="persistent" in self.flags)
        return _Verdict("nat", nat=nat)

    def sem(self):
        return ("nat", self.kind, self.addr, self.port, self.port_max, frozenset(self.flags),
                self.lookup.sem() if self.lookup is not None else None)


class _Mangle:
    """`meta mark set EXPR`, `ct mark set EXPR`, `meta nftrace set 1`."""
    __slots__ = ("target", "value", "text")

    def __init__(self, target: str, value, text: str):
        self.target, self.value, self.text = target, value, text

    def run(self, env):
        value = self.value.eval(env) if isinstance(self.value, _Expr) else self.value
        if value is None:
            return False
        if self.target == "meta mark":
            env.pkt.mark = value & 0xFFFFFFFF
        elif self.target == "ct mark":
            if env.conn is not None:
                env.conn.mark = value & 0xFFFFFFFF
        else:
            env.result.trace = bool(value)
        return True

    def sem(self):
        value = self.value.sem() if isinstance(self.value, _Expr) else self.value
        return ("set", self.target, value)


class _SetStmt:
    """`update|add|delete @set { EXPR [timeout T] }`: dynamic sets, in ctx.nft_dynamic."""
    __slots__ = ("op", "name", "expr", "timeout", "text")

    def __init__(self, op: str, name: str, expr: _Expr, timeout: Optional[float], text: str):
        self.op, self.name, self.expr, self.timeout, self.text = op, name, expr, timeout, text

    def run(self, env):
        key = self.expr.key(env)
        if key is None:
            return False
        ctx = env.ctx
        store = ctx.nft_dynamic.setdefault((env.family, env.table.name, self.name), {})
        if self.op == "delete":
            store.pop(key, None)
            return True
        timeout = self.timeout if self.timeout is not None else env.table.sets[self.name].timeout
        expiry = ctx.now + timeout if timeout else math.inf
        current = store.get(key)
        if self.op == "update" or current is None or current <= ctx.now:
            store[key] = expiry
        return True

    def sem(self):
        return ("setop", self.op, self.name, self.expr.sem(), self.timeout)


class _Effect:
    """Statements with no effect on the verdict: counter, limit, log, notrack."""
    __slots__ = ("kind", "arg", "text")

    def __init__(self, kind: str, arg=None, text: str = ""):
        self.kind, self.arg, self.text = kind, arg, text

    def run(self, env):
        kind = self.kind
        if kind == "limit":
            return not self.arg         # the rate is never exceeded: `limit rate over` fails
        if kind == "notrack":
            env.result.notrack = True
        elif kind == "log":
            pkt = env.pkt
            env.result.logs.append(
                f"{self.arg or ''}IN={env.ctx.in_iface or ''} OUT={env.ctx.out_iface or ''} "
                f"SRC={pkt.src} DST={pkt.dst} PROTO={pkt.proto.upper()}"
                + (f" SPT={pkt.sport} DPT={pkt.dport}" if pkt.dport is not None else ""))
        elif kind == "xt":
            raise InputError(f"xtables extension {self.arg} cannot be evaluated; "
                             "evaluate the table from iptables-save instead",
                             file=env.label, field=f"{env.chain} #{env.index}")
        return True

    def sem(self):
        return (self.kind, self.arg) if self.kind in ("limit", "xt") else (self.kind,)


# ---------------------------------------------------------------------------
# Tables, chains, rules
# ---------------------------------------------------------------------------

_NOMATCH = object()


class NftRule:
    """One rule: its text (as written), compiled items and comment."""
    __slots__ = ("text", "items", "comment", "handle", "effect")

    def __init__(self, text: str, items: list, comment: Optional[str], handle: int):
        self.text, self.items, self.comment, self.handle = text, items, comment, handle
        self.effect = "; ".join(i.text for i in items if getattr(i, "text", ""))

    def run(self, env: _Env):
        for item in self.items:
            outcome = item.run(env)
            if outcome is True:
                continue
            if outcome is False:
                return _NOMATCH
            return outcome
        return None

    def sem(self):
        return tuple(i.sem() for i in self.items)


class NftChain:
    def __init__(self, name: str):
        self.name = name
        self.type: Optional[str] = None     # filter | nat | route (base chains)
        self.hook: Optional[str] = None
        self.priority: Optional[int] = None
        self.policy: Optional[str] = None
        self.device: Optional[str] = None
        self.comment: Optional[str] = None
        self.rules: list[NftRule] = []
        self.handle = 0

    @property
    def is_base(self) -> bool:
        return self.hook is not None

    def sem(self):
        return (self.type, self.hook, self.priority, (self.policy or "accept") if self.hook else None,
                tuple(r.sem() for r in self.rules))

    def render(self, family: str) -> str:
        lines = []
        if self.comment is not None:
            lines.append(f'comment "{self.comment}"')
        if self.is_base:
            dev = f' device "{self.device}"' if self.device else ""
            lines.append(f"type {self.type} hook {self.hook}{dev} priority "
                         f"{priority_text(family, self.hook, self.priority)}; "
                         f"policy {self.policy or 'accept'};")
        lines.extend(r.text for r in self.rules)
        body = "".join(f"\t\t{line}\n" for line in lines)
        return f"\tchain {self.name} {{\n{body}\t}}\n"


class NftTable:
    def __init__(self, family: str, name: str):
        self.family, self.name = family, name
        self.comment: Optional[str] = None
        self.flags: list[str] = []
        self.chains: dict[str, NftChain] = {}
        self.sets: dict[str, NftSet] = {}
        self._handles = 0

    def next_handle(self) -> int:
        self._handles += 1
        return self._handles

    def render(self) -> str:
        head = []
        if self.flags:
            head.append(f"\tflags {','.join(self.flags)}\n")
        if self.comment is not None:
            head.append(f'\tcomment "{self.comment}"\n')
        objects = [s.render() for s in self.sets.values()]
        objects += [c.render(self.family) for c in self.chains.values()]
        return f"table {self.family} {self.name} {{\n" + "".join(head) + "\n".join(objects) + "}\n"


@dataclass(frozen=True, slots=True)
class BaseChain:
    """A base chain registered at a netfilter hook."""
    family: str
    table: str
    name: str
    type: str
    hook: str
    priority: int
    policy: str = "accept"


# ---------------------------------------------------------------------------
# The parser (both syntaxes)
# ---------------------------------------------------------------------------

class _Parser:
    """Reads nft text into a ruleset; compiles rules as it goes."""

    def __init__(self, rs: "NftRuleset", text: str, source: str):
        self.rs, self.text, self.source = rs, text, source
        self.origin: Optional[list[int]] = None     # token index before `define` expansion
        try:
            self.toks = _tokenize(text)
        except _ParseError as e:
            raise self.error(e.message, e.index) from None
        self.i = 0
        self.lim = len(self.toks)
        self.defines: dict[str, list[str]] = {}
        self.refs: list = []            # (kind, name) referenced by the rule being compiled

    # -- token helpers -----------------------------------------------------
    def line_of(self, index: int) -> int:
        """1-based line of a token (computed only for error messages)."""
        if self.origin is not None:
            index = self.origin[index] if index < len(self.origin) else len(self.text)
        return self.text.count("\n", 0, _token_offset(self.text, index)) + 1

    def error(self, message: str, index: Optional[int] = None) -> InputError:
        index = self.i if index is None else index
        return InputError(message, file=self.source, field=f"line {self.line_of(index)}")

    def peek(self, k: int = 0) -> Optional[str]:
        j = self.i + k
        return self.toks[j] if j < self.lim else None

    def next(self, what: str = "a word") -> str:
        if self.i >= self.lim:
            raise self.error(f"unexpected end of statement, expected {what}")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def word(self, what: str = "a name") -> str:
        i = self.i
        if i >= self.lim:
            raise self.error(f"unexpected end of statement, expected {what}")
        tok = self.toks[i]
        self.i = i + 1
        if tok in _PUNCT:
            raise self.error(f"expected {what}, got {tok!r}", i)
        return tok[1:-1] if tok[0] == '"' else tok

    def expect(self, tok: str) -> None:
        got = self.peek()
        if got != tok:
            raise self.error(f"expected {tok!r}, got {'end of line' if got in (None, chr(10)) else repr(got)}")
        self.i += 1

    def skip_nl(self) -> None:
        while self.i < self.lim and self.toks[self.i] == "\n":
            self.i += 1

    def skip_separators(self) -> Optional[str]:
        while self.i < self.lim and self.toks[self.i] in _SEPARATORS:
            self.i += 1
        return self.peek()

    def end_statement(self) -> None:
        tok = self.peek()
        if tok not in _END:
            raise self.error(f"unexpected {tok!r}")
        if tok in _SEPARATORS:
            self.i += 1

    def statement_end(self) -> int:
        """Index of the end of the current statement (newline or ; outside braces, or })."""
        depth, j = 0, self.i
        toks = self.toks
        while j < self.lim:
            tok = toks[j]
            if tok == "{":
                depth += 1
            elif tok == "}":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and (tok == "\n" or tok == ";"):
                break
            j += 1
        return j

    def source_text(self, first: int, end: int) -> str:
        return _join(self.toks[first:end])

    # -- top level ------------------------------------------------------------
    def parse(self) -> None:
        self._expand_defines()
        while True:
            tok = self.skip_separators()
            if tok is None:
                return
            if tok == "table":
                self.i += 1
                self._table_block()
            elif tok in ("add", "create", "insert", "replace", "delete", "destroy", "flush"):
                self._command()
            elif tok == "include":
                raise self.error("include is not supported; concatenate the files")
            else:
                raise self.error(f"unknown command {tok!r}")

    def _expand_defines(self) -> None:
        """`define NAME = VALUE` and `$NAME`, expanded before parsing."""
        if "$" not in self.text and "define" not in self.toks:
            return
        toks, out_t, out_s = self.toks, [], []
        i = 0
        while i < len(toks):
            tok = toks[i]
            at_start = not out_t or out_t[-1] in ("\n", ";")
            if tok == "define" and at_start:
                j = i + 3
                if i + 2 >= len(toks) or toks[i + 2] != "=":
                    raise self.error("expected define NAME = VALUE", i)
                while j < len(toks) and toks[j] not in ("\n", ";"):
                    j += 1
                self.defines[toks[i + 1]] = toks[i + 3:j]
                i = j
                continue
            if tok.startswith("$"):
                if tok[1:] not in self.defines:
                    raise self.error(f"undefined variable {tok}", i)
                for t in self.defines[tok[1:]]:
                    out_t.append(t)
                    out_s.append(i)
            else:
                out_t.append(tok)
                out_s.append(i)
            i += 1
        self.toks, self.origin, self.lim = out_t, out_s, len(out_t)

    def _table_ref(self) -> tuple[str, str]:
        """`[family] name` (family ip when omitted)."""
        first = self.word("a table")
        if first in FAMILIES and self.peek() not in _END and self.peek() != "{":
            return first, self.word("a table name")
        return "ip", first

    def _table(self, family: str, name: str, create: bool = True) -> NftTable:
        table = self.rs.tables.get((family, name))
        if table is None:
            if not create:
                raise self.error(f"no such table: {family} {name}", self.i - 1)
            table = self.rs.tables[(family, name)] = NftTable(family, name)
        return table

    def _chain(self, table: NftTable, name: str) -> NftChain:
        chain = table.chains.get(name)
        if chain is None:
            raise self.error(f"no such chain: {table.family} {table.name} {name}", self.i - 1)
        return chain

    def _set(self, table: NftTable, name: str) -> NftSet:
        s = table.sets.get(name)
        if s is None:
            raise self.error(f"no such set or map: {table.family} {table.name} {name}", self.i - 1)
        return s

    # -- block syntax ---------------------------------------------------------
    def _table_block(self) -> None:
        family, name = self._table_ref()
        table = self._table(family, name)
        self.expect("{")
        self._table_body(table)

    def _block(self, what: str):
        """The first token of each statement of a `{ ... }` block, whose rest the caller parses;
        ends past the closing brace."""
        while True:
            tok = self.skip_separators()
            if tok is None:
                raise self.error(f"missing '}}' at the end of {what}")
            if tok == "}":
                self.i += 1
                return
            yield tok

    def _table_body(self, table: NftTable) -> None:
        for tok in self._block("the table"):
            self.i += 1
            if tok == "comment":
                table.comment = self.word("a comment")
            elif tok == "flags":
                table.flags = self._word_list()
            elif tok == "chain":
                chain = self._ensure_chain(table, self.word("a chain name"))
                self.expect("{")
                self._chain_body(table, chain)
            elif tok in ("set", "map"):
                s = self._ensure_set(table, self.word("a set name"), tok)
                self.expect("{")
                self._set_body(table, s)
            else:
                raise self.error(f"unknown table statement {tok!r}", self.i - 1)
            self.end_statement()

    def _ensure_chain(self, table: NftTable, name: str, create_only: bool = False) -> NftChain:
        chain = table.chains.get(name)
        if chain is None:
            chain = table.chains[name] = NftChain(name)
            chain.handle = table.next_handle()
        elif create_only:
            raise self.error(f"chain {name} already exists", self.i - 1)
        return chain

    def _ensure_set(self, table: NftTable, name: str, kind: str, create_only: bool = False) -> NftSet:
        s = table.sets.get(name)
        if s is None:
            s = table.sets[name] = NftSet(name, kind)
            s.handle = table.next_handle()
        elif create_only:
            raise self.error(f"{kind} {name} already exists", self.i - 1)
        elif s.kind != kind:
            raise self.error(f"{name} is a {s.kind}, not a {kind}", self.i - 1)
        return s

    def _word_list(self) -> list[str]:
        words = [self.word()]
        while self.peek() == ",":
            self.i += 1
            words.append(self.word())
        return words

    def _chain_body(self, table: NftTable, chain: NftChain) -> None:
        for tok in self._block(f"chain {chain.name}"):
            if tok == "type":
                self.i += 1
                self._chain_type(table, chain)
            elif tok == "policy":
                self.i += 1
                chain.policy = self.word("a policy")
                if chain.policy not in ("accept", "drop"):
                    raise self.error(f"bad policy {chain.policy!r}", self.i - 1)
            elif tok == "comment" and self.peek(2) in _END:
                self.i += 1
                chain.comment = self.word("a comment")
            elif tok in ("device", "devices"):
                self.i += 1
                self._devices(chain)
            else:
                end = self.statement_end()
                chain.rules.append(self._rule(table, end))
                continue
            self.end_statement()

    def _chain_type(self, table: NftTable, chain: NftChain) -> None:
        chain.type = self.word("a chain type")
        if chain.type not in ("filter", "nat", "route"):
            raise self.error(f"unknown chain type {chain.type!r}", self.i - 1)
        if self.word("hook") != "hook":
            raise self.error("expected 'hook'", self.i - 1)
        chain.hook = self.word("a hook")
        if self.peek() == "device":
            self.i += 1
            self._devices(chain)
        if self.word("priority") != "priority":
            raise self.error("expected 'priority'", self.i - 1)
        start = self.i
        while self.peek() not in _END:
            self.i += 1
        try:
            chain.priority = _parse_priority("".join(self.toks[start:self.i]))
        except ValueError as e:
            raise self.error(str(e), start) from None
        if chain.policy is None:
            chain.policy = "accept"

    def _devices(self, chain: NftChain) -> None:
        if self.peek() == "=":
            self.i += 1
        if self.peek() == "{":
            self.i += 1
            names = []
            while self.peek() != "}":
                tok = self.next("a device")
                if tok not in (",", "\n"):
                    names.append(_unquote(tok))
            self.i += 1
            chain.device = ", ".join(names)
        else:
            chain.device = self.word("a device")

    # -- sets -------------------------------------------------------------------
    def _set_body(self, table: NftTable, s: NftSet) -> None:
        for tok in self._block(f"{s.kind} {s.name}"):
            start = self.i
            self.i += 1
            if tok == "type":
                self._set_types(s)
                s.decl = self.source_text(start, self.i)
            elif tok == "typeof":
                self._set_typeof(table, s)
                s.decl = self.source_text(start, self.i)
            elif tok == "flags":
                s.flags = self._word_list()
            elif tok in ("timeout", "gc-interval"):
                value = self.word("a time")
                try:
                    seconds = _parse_time(value)
                except ValueError as e:
                    raise self.error(str(e), self.i - 1) from None
                if tok == "timeout":
                    s.timeout = seconds
                else:
                    s.options.append(f"gc-interval {value}")
            elif tok == "size":
                s.size = self._int_token()
            elif tok == "policy":
                s.policy = self.word("a policy")
            elif tok == "comment":
                s.comment = self.word("a comment")
            elif tok in ("auto-merge", "counter"):
                s.options.append(tok)
            elif tok == "elements":
                self.expect("=")
                if not s.key_types:
                    raise self.error(f"{s.kind} {s.name} has no type", start)
                for elem in self._elements(s.key_types, s.data_types if s.kind == "map" else ()):
                    s.add(elem)
                self.defer_refs(table)
            else:
                raise self.error(f"unknown {s.kind} statement {tok!r}", start)
            self.end_statement()

    def _set_types(self, s: NftSet) -> None:
        keys = [self.word("a data type")]
        while self.peek() == ".":
            self.i += 1
            keys.append(self.word("a data type"))
        data: list[str] = []
        if self.peek() == ":":
            self.i += 1
            if self.peek() == "interval":
                self.i += 1
            data.append(self.word("a data type"))
            while self.peek() == ".":
                self.i += 1
                data.append(self.word("a data type"))
        for dtype in keys + data:
            if dtype not in TYPES and dtype != "verdict":
                raise self.error(f"unsupported data type {dtype!r}", self.i - 1)
        s.key_types, s.data_types = tuple(keys), tuple(data)
        if data and s.kind != "map":
            raise self.error("a set has no data; declare a map", self.i - 1)
        if s.kind == "map" and not data:
            raise self.error("a map needs a data type (`type KEY : DATA`)", self.i - 1)

    def _set_typeof(self, table: NftTable, s: NftSet) -> None:
        s.key_types = self._expr(table).dtypes
        if self.peek() == ":":
            self.i += 1
            if s.kind != "map":
                raise self.error("a set has no data; declare a map", self.i - 1)
            if self.peek() == "verdict":
                self.i += 1
                s.data_types = ("verdict",)
            else:
                s.data_types = self._expr(table).dtypes

    def _elements(self, key_types: tuple, data_types: tuple) -> list[NftElement]:
        """`{ elem, elem : data, ... }` with newlines anywhere inside."""
        self.expect("{")
        out = []
        while True:
            self.skip_nl()
            tok = self.peek()
            if tok == "}":
                self.i += 1
                return out
            if tok is None:
                raise self.error("missing '}' after the elements")
            out.append(self._element(key_types, data_types))
            self.skip_nl()
            tok = self.peek()
            if tok == ",":
                self.i += 1
            elif tok != "}":
                raise self.error(f"expected ',' or '}}' between elements, got {tok!r}")

    def _element(self, key_types: tuple, data_types: tuple) -> NftElement:
        start = self.i
        key = tuple(self._values(key_types))
        elem = NftElement(key)
        while self.peek() in ("timeout", "expires", "comment", "counter"):
            tok = self.next()
            if tok == "comment":
                elem.comment = self.word("a comment")
            elif tok == "counter":
                while self.peek() in ("packets", "bytes"):
                    self.i += 2
            else:
                value = self.word("a time")
                try:
                    seconds = _parse_time(value)
                except ValueError as e:
                    raise self.error(str(e), self.i - 1) from None
                if tok == "timeout":
                    elem.timeout = seconds
        if data_types:
            self.expect(":")
            if data_types == ("verdict",):
                elem.data = self._verdict()
            else:
                elem.data = tuple(self._values(data_types, partial=True))
        elem.text = self.source_text(start, self.i)
        return elem

    def _values(self, dtypes: tuple, partial: bool = False) -> list:
        """`v1 . v2 . v3` typed by dtypes (partial: fewer parts allowed)."""
        values = []
        for n, dtype in enumerate(dtypes):
            if n:
                if self.peek() != ".":
                    if partial:
                        break
                    raise self.error(f"expected '.' and a {dtype} value "
                                     f"(the key is {' . '.join(dtypes)})")
                self.i += 1
            values.append(self._value(dtype))
        return values

    def _value(self, dtype: str):
        index = self.i
        tok = self.next(f"a {dtype} value")
        if dtype in _BITMASKS and tok == "(":
            parts = []
            while self.peek() != ")":
                parts.append(self.next("')'"))
            self.i += 1
            tok = "".join(parts)
        if tok in ("{", "}", ",", ";", "\n", ")"):
            raise self.error(f"expected a {dtype} value, got {tok!r}", index)
        try:
            return _parse_value(dtype, tok)
        except ValueError as e:
            raise self.error(str(e), index) from None

    def _int_token(self) -> int:
        tok = self.next("a number")
        try:
            return _int(tok)
        except ValueError:
            raise self.error(f"expected a number, got {tok!r}", self.i - 1) from None

    def _verdict(self) -> _Verdict:
        tok = self.next("a verdict")
        if tok in ("jump", "goto"):
            target = self.word("a chain name")
            self.refs.append(("chain", target, self.i - 1))
            return _Verdict(tok, target)
        if tok in ("accept", "drop", "return", "continue", "queue"):
            return _Verdict(tok)
        raise self.error(f"expected a verdict, got {tok!r}", self.i - 1)

    # -- commands -------------------------------------------------------------
    def _command(self) -> None:
        verb = self.next()
        obj = self.word("an object (table, chain, rule, set, map, element)")
        handler = {"table": self._cmd_table, "chain": self._cmd_chain, "rule": self._cmd_rule,
                   "set": self._cmd_set, "map": self._cmd_set, "element": self._cmd_element,
                   "ruleset": self._cmd_ruleset}.get(obj)
        if handler is None:
            raise self.error(f"unsupported object {obj!r} for {verb}", self.i - 1)
        handler(verb, obj)
        self.end_statement()

    def _cmd_table(self, verb: str, obj: str) -> None:
        family, name = self._table_ref()
        key = (family, name)
        if verb in ("delete", "destroy"):
            if self.rs.tables.pop(key, None) is None and verb == "delete":
                raise self.error(f"no such table: {family} {name}", self.i - 1)
            return
        if verb == "flush":
            for chain in self._table(family, name, create=False).chains.values():
                chain.rules.clear()
            return
        if verb == "create" and key in self.rs.tables:
            raise self.error(f"table {family} {name} already exists", self.i - 1)
        table = self._table(family, name)
        if self.peek() == "{":
            self.i += 1
            self._table_body(table)

    def _cmd_chain(self, verb: str, obj: str) -> None:
        table = self._table(*self._table_ref(), create=verb in ("add", "create"))
        name = self.word("a chain name")
        if verb in ("delete", "destroy"):
            if table.chains.pop(name, None) is None and verb == "delete":
                raise self.error(f"no such chain: {name}", self.i - 1)
            return
        if verb == "flush":
            self._chain(table, name).rules.clear()
            return
        chain = self._ensure_chain(table, name, create_only=verb == "create")
        if self.peek() == "{":
            self.i += 1
            self._chain_body(table, chain)

    def _cmd_rule(self, verb: str, obj: str) -> None:
        table = self._table(*self._table_ref(), create=False)
        chain = self._chain(table, self.word("a chain name"))
        where = None
        if self.peek() in ("position", "index", "handle"):
            where = (self.next(), self._int_token())
        if verb == "delete" or verb == "destroy":
            if where is None or where[0] != "handle":
                raise self.error("delete rule needs `handle N`")
            before = len(chain.rules)
            chain.rules = [r for r in chain.rules if r.handle != where[1]]
            if len(chain.rules) == before and verb == "delete":
                raise self.error(f"no rule with handle {where[1]} in {chain.name}", self.i - 1)
            return
        if verb == "flush":
            raise self.error("use `flush chain` to delete all rules of a chain")
        rule = self._rule(table, self.statement_end())
        rules = chain.rules
        if where is None:
            pos = 0 if verb == "insert" else len(rules)
        elif where[0] == "index":
            pos = where[1] + (0 if verb == "insert" else 1)
            if not 0 <= where[1] < len(rules):
                raise self.error(f"no rule at index {where[1]} in {chain.name}")
        else:
            found = [n for n, r in enumerate(rules) if r.handle == where[1]]
            if not found:
                raise self.error(f"no rule with handle {where[1]} in {chain.name}")
            pos = found[0] + (0 if verb == "insert" else 1)
            if verb == "replace":
                rules[found[0]] = rule
                return
        if verb == "replace":
            raise self.error("replace rule needs `handle N`")
        rules.insert(pos, rule)

    def _cmd_set(self, verb: str, kind: str) -> None:
        table = self._table(*self._table_ref(), create=False)
        name = self.word(f"a {kind} name")
        if verb in ("delete", "destroy"):
            if table.sets.pop(name, None) is None and verb == "delete":
                raise self.error(f"no such {kind}: {name}", self.i - 1)
            return
        if verb == "flush":
            self._set(table, name).clear()
            return
        s = self._ensure_set(table, name, kind, create_only=verb == "create")
        if self.peek() == "{":
            self.i += 1
            self._set_body(table, s)
        if not s.key_types:
            raise self.error(f"{kind} {name} needs a type")

    def _cmd_element(self, verb: str, obj: str) -> None:
        table = self._table(*self._table_ref(), create=False)
        s = self._set(table, self.word("a set name"))
        data_types = s.data_types if s.kind == "map" and verb not in ("delete", "destroy") else ()
        elements = self._elements(s.key_types, data_types)
        self.defer_refs(table)
        for elem in elements:
            if verb in ("delete", "destroy"):
                if not s.remove(elem.key) and verb == "delete":
                    raise self.error(f"element {elem.text} is not in {s.name}", self.i - 1)
            elif verb == "create" and elem.key in s.elements:
                raise self.error(f"element {elem.text} already exists in {s.name}", self.i - 1)
            else:
                s.add(elem)

    def _cmd_ruleset(self, verb: str, obj: str) -> None:
        if verb != "flush":
            raise self.error(f"unsupported command {verb} ruleset", self.i - 1)
        family = self.word() if self.peek() in FAMILIES else None
        for key in list(self.rs.tables):
            if family is None or key[0] == family:
                del self.rs.tables[key]

    # -- rules ------------------------------------------------------------------
    def _rule(self, table: NftTable, end: int) -> NftRule:
        """Compile tokens [i, end) into a rule; leaves i at end."""
        start, saved_lim = self.i, self.lim
        self.lim = end
        items: list = []
        comment = None
        toks = self.toks
        try:
            while True:
                while self.i < end and toks[self.i] == "\n":
                    self.i += 1
                if self.i >= end:
                    break
                tok = toks[self.i]
                if tok == "comment":
                    self.i += 1
                    comment = self.word("a comment")
                    continue
                stmt = _STATEMENTS.get(tok)
                if stmt is not None and not (tok in ("add", "delete") and
                                             not (self.peek(1) or "").startswith("@")):
                    item = stmt(self, table)
                else:
                    item = self._expr_statement(table)
                items.append(item)
            if not items and comment is None:
                raise self.error("empty rule", start)
        finally:
            self.lim = saved_lim
        rule = NftRule(self.source_text(start, end), items, comment, table.next_handle())
        self.defer_refs(table)
        return rule

    def defer_refs(self, table: NftTable) -> None:
        """Chains and sets named so far are checked once the whole text is read."""
        for kind, name, index in self.refs:
            self.rs._pending.append((table, kind, name, self, index))
        self.refs = []

    def _expr_statement(self, table: NftTable):
        start = self.i
        lhs = self._expr(table)
        tok = self.peek()
        if tok == "set":
            self.i += 1
            name = lhs.name if isinstance(lhs, _Field) else ""
            if name not in _SETTABLE:
                raise self.error(f"cannot set {self.source_text(start, self.i - 1)}", start)
            value = self._value_expr(table, lhs.dtypes[0])
            return _Mangle(name, value, self.source_text(start, self.i))
        if tok == "vmap":
            self.i += 1
            return _VMap(lhs, self._set_source(table, lhs.dtypes, ("verdict",)))
        if tok == "map":
            raise self.error("a map lookup is a value: use it in a statement (dnat to ..., "
                             "meta mark set ...)")
        op = None
        if tok in _OPS:
            op = _OPS[tok]
            self.i += 1
        return self._match(table, lhs, op)

    def _match(self, table: NftTable, lhs: _Expr, op: Optional[str]) -> _Match:
        tok = self.peek()
        if tok is None:
            raise self.error("expected a value to compare with")
        if tok.startswith("@") or tok == "{":
            if op not in (None, "==", "!="):
                raise self.error(f"{op} cannot be used with a set")
            source = self._set_source(table, lhs.dtypes, ())
            anon = source.anon
            if anon is not None and len(anon.elements) == 1 and not isinstance(lhs, _Concat):
                # nft stores a one-element anonymous set as the plain value
                (key,) = anon.elements
                return _Match(lhs, op, key[0])
            return _Match(lhs, op, source=source)
        if tok in ("missing", "exists") and isinstance(lhs, _Fib) and lhs.result != "type":
            self.i += 1
            return _Match(lhs, op, Exists(tok == "exists"))
        dtypes = lhs.dtypes
        if len(dtypes) == 1 and dtypes[0] in _BITMASKS:
            value = self._flag_list(dtypes[0])
            if self.peek() == "/":          # `tcp flags syn / fin,syn,rst,ack`
                self.i += 1
                mask = self._flag_list(dtypes[0])
                return _Match(_BinOp(lhs, "&", mask), "==", value)
            return _Match(lhs, op, value)
        values = self._values(dtypes)
        return _Match(lhs, op, tuple(values) if len(values) > 1 else values[0])

    def _flag_list(self, dtype: str) -> int:
        value = self._value(dtype)
        while self.peek() == "," and self.peek(1) not in _END:
            self.i += 1
            value |= self._value(dtype)
        return value

    def _set_source(self, table: NftTable, key_types: tuple, data_types: tuple) -> _SetSource:
        tok = self.next("@set or { elements }")
        if tok.startswith("@"):
            self.refs.append(("set", tok[1:], self.i - 1))
            return _SetSource(name=tok[1:])
        if tok != "{":
            raise self.error(f"expected @set or {{ elements }}, got {tok!r}", self.i - 1)
        self.i -= 1
        anon = NftSet(None, "map" if data_types else "set", key_types, data_types)
        for elem in self._elements(key_types, data_types):
            anon.add(elem)
        return _SetSource(anon=anon)

    # -- expressions ----------------------------------------------------------
    def _expr(self, table: NftTable) -> _Expr:
        """A primary expression with binary operators, concatenated with ` . `."""
        parts = [self._binop_expr(table)]
        while self.peek() == "." and self.peek(1) in _EXPR_START:
            self.i += 1
            parts.append(self._binop_expr(table))
        return parts[0] if len(parts) == 1 else _Concat(parts)

    def _binop_expr(self, table: NftTable) -> _Expr:
        expr = self._primary(table)
        while self.peek() in _BINOPS:
            op = _BINOPS[self.next()]
            dtype = expr.dtypes[0]
            const = self._value(dtype if dtype in _BITMASKS else "integer")
            if not isinstance(const, int):
                raise self.error("expected a number", self.i - 1)
            expr = _BinOp(expr, op, const)
        return expr

    def _primary(self, table: NftTable) -> _Expr:
        index = self.i
        tok = self.next("an expression")
        name = None
        if tok in _PAYLOAD_PROTOS:
            name = f"{tok} {self.next('a header field')}"
        elif tok == "meta":
            name = f"meta {self.next('a meta key')}"
        elif tok in _BARE_META:
            name = f"meta {tok}"
        elif tok == "ct":
            key = self.next("a ct key")
            if key in ("original", "reply"):
                key = f"{key} {self.next('a ct key')}"
                if key.split()[-1] in ("ip", "ip6"):
                    key += f" {self.next('saddr or daddr')}"
            name = f"ct {key}"
        elif tok == "fib":
            return self._fib()
        elif tok == "numgen":
            mode = self.next("random or inc")
            if mode not in ("random", "inc"):
                raise self.error(f"unknown numgen mode {mode!r}", self.i - 1)
            return self._choice(f"numgen {mode}")
        elif tok in ("jhash", "symhash"):
            expr = self._expr(table) if tok == "jhash" else None
            return self._choice(tok, expr)
        field = _FIELD_CACHE.get(name)
        if field is None:
            if name not in FIELDS:
                raise self.error(f"unknown expression {name or tok!r}", index)
            field = _FIELD_CACHE[name] = _Field(name)
        return field

    def _fib(self) -> _Fib:
        flags = [self.next("saddr or daddr")]
        while self.peek() == "." and self.peek(1) in _FIB_FLAGS:
            self.i += 1
            flags.append(self.next())
        result = self.next("type, oif or oifname")
        if result not in ("type", "oif", "oifname") or flags[0] not in ("saddr", "daddr"):
            raise self.error(f"unsupported fib expression 'fib {' . '.join(flags)} {result}'",
                             self.i - 1)
        return _Fib(tuple(flags), result)

    def _choice(self, what: str, expr: Optional[_Expr] = None) -> _Choice:
        if self.next("mod") != "mod":
            raise self.error("expected 'mod N'", self.i - 1)
        mod = self._int_token()
        if mod <= 0:
            raise self.error("mod must be positive", self.i - 1)
        offset = 0
        while self.peek() in ("offset", "seed"):
            kw = self.next()
            value = self._int_token()
            if kw == "offset":
                offset = value
        return _Choice(what, mod, offset, expr)

    def _value_expr(self, table: NftTable, dtype: str):
        """The right side of `set`: a constant, or an expression (with `map`)."""
        if self.peek() in _EXPR_START:
            expr = self._expr(table)
            if self.peek() == "map":
                self.i += 1
                source = self._set_source(table, expr.dtypes, (dtype,))
                return _MapLookup(expr, source, (dtype,))
            return expr
        value = self._value(dtype)
        if not isinstance(value, int):
            raise self.error("expected a number", self.i - 1)
        return value

    # -- statements -----------------------------------------------------------
    def _st_verdict(self, table):
        return self._verdict()

    def _st_reject(self, table):
        self.i += 1
        if self.peek() != "with":
            return _Reject("icmpx" if table.family in ("inet", "bridge", "netdev")
                           else "icmpv6" if table.family == "ip6" else "icmp", None)
        self.i += 1
        kind = self.next("icmp, icmpv6, icmpx or tcp")
        if kind == "tcp":
            if self.next("reset") != "reset":
                raise self.error("expected 'reset'", self.i - 1)
            return _Reject("tcp reset", None)
        if kind not in ("icmp", "icmpv6", "icmpx"):
            raise self.error(f"unknown reject type {kind!r}", self.i - 1)
        if self.peek() == "type":
            self.i += 1
        return _Reject(kind, self.word("an icmp code"))

    def _st_nat(self, table):
        start = self.i
        kind = self.next()
        family = None
        if self.peek() in ("ip", "ip6") and self.peek(1) == "to":
            family = self.next()
        addr_type = "ipv6_addr" if family == "ip6" or table.family == "ip6" else "ipv4_addr"
        addr = port = port_max = lookup = None
        if self.peek() == "to":
            self.i += 1
            if self.peek() in _EXPR_START:
                expr = self._expr(table)
                if self.next("map") != "map":
                    raise self.error("expected 'map'", self.i - 1)
                data = (addr_type, "inet_service")
                lookup = _MapLookup(expr, self._set_source(table, expr.dtypes, data), data)
            else:
                addr, port, port_max, addr_type = self._nat_target(addr_type)
        flags = []
        while self.peek() in ("random", "fully-random", "persistent", "nodup"):
            flags.extend(self.next().split(","))
            while self.peek() == ",":
                self.i += 1
                flags.append(self.next())
        name = {"dnat": "DNAT", "snat": "SNAT", "masquerade": "MASQUERADE",
                "redirect": "REDIRECT"}[kind]
        if name in ("DNAT", "SNAT") and addr is None and lookup is None:
            raise self.error(f"{kind} needs `to ADDRESS`", start)
        if name in ("MASQUERADE", "REDIRECT") and addr is not None:
            raise self.error(f"{kind} takes only a port: `to :PORT`", start)
        return _Nat(name, addr, addr_type, port, port_max, tuple(flags), lookup)

    def _nat_target(self, addr_type: str):
        index = self.i
        tok = _unquote(self.next("an address"))
        port_text = None
        if tok.startswith("["):
            close = tok.find("]")
            addr_text, rest = tok[1:close], tok[close + 1:]
            port_text = rest[1:] if rest.startswith(":") else None
        elif tok.startswith(":"):
            addr_text, port_text = "", tok[1:]
        elif tok.count(":") == 1:
            addr_text, port_text = tok.split(":")
        else:
            addr_text = tok
        if self.peek() == ":" and port_text is None:     # `addr : port` written apart
            self.i += 1
            port_text = self.next("a port")
        if addr_text and ":" in addr_text:
            addr_type = "ipv6_addr"
        try:
            addr = None
            if addr_text:
                value = _parse_value(addr_type, addr_text)
                addr = value.lo if isinstance(value, Range) else value
            port = port_max = None
            if port_text:
                value = _parse_value("inet_service", port_text)
                port, port_max = (value.lo, value.hi) if isinstance(value, Range) else (value, None)
        except ValueError as e:
            raise self.error(str(e), index) from None
        return addr, port, port_max, addr_type

    def _st_set(self, table):
        start = self.i
        op = self.next()
        name = self.next("@set")[1:]
        self.refs.append(("set", name, self.i - 1))
        self.expect("{")
        self.skip_nl()
        expr = self._expr(table)
        timeout = None
        while self.peek() in ("timeout", "expires", "counter"):
            kw = self.next()
            if kw == "counter":
                continue
            value = self.word("a time")
            try:
                if kw == "timeout":
                    timeout = _parse_time(value)
            except ValueError as e:
                raise self.error(str(e), self.i - 1) from None
        self.skip_nl()
        self.expect("}")
        return _SetStmt(op, name, expr, timeout, self.source_text(start, self.i))

    def _st_counter(self, table):
        self.i += 1
        while self.peek() in ("packets", "bytes", "name"):
            self.i += 2
        return _Effect("counter")

    def _st_log(self, table):
        start = self.i
        self.i += 1
        prefix = None
        while self.peek() in ("prefix", "level", "flags", "group", "snaplen", "queue-threshold"):
            kw = self.next()
            value = self.next("a value")
            if kw == "prefix":
                prefix = _unquote(value)
            elif kw == "flags":
                while self.peek() == ",":
                    self.i += 2
        return _Effect("log", prefix, self.source_text(start, self.i))

    def _st_limit(self, table):
        self.i += 1
        if self.next("rate") != "rate":
            raise self.error("expected 'limit rate ...'", self.i - 1)
        over = self.peek() == "over"
        if over:
            self.i += 1
        rate = self.next("a rate")
        if "/" not in rate:
            rate += " " + self.next("a rate unit")
        if "/" not in rate or not rate[0].isdigit():
            raise self.error(f"bad rate {rate!r}", self.i - 1)
        if self.peek() == "burst":
            self.i += 2
            if self.peek() in ("packets", "bytes", "kbytes", "mbytes"):
                self.i += 1
        return _Effect("limit", over)

    def _st_notrack(self, table):
        self.i += 1
        return _Effect("notrack", text="notrack")

    def _st_queue(self, table):
        self.i += 1
        while self.peek() in ("num", "flags", "to"):
            self.i += 2
        while self.peek() in ("bypass", "fanout"):
            self.i += 1
        return _Verdict("queue")

    def _st_xt(self, table):
        self.i += 1
        kind = self.next("match or target")
        return _Effect("xt", f"{kind} {self.word('a name')}")


_STATEMENTS: dict[str, Callable] = {
    **{w: _Parser._st_verdict for w in ("accept", "drop", "return", "continue", "jump", "goto")},
    "queue": _Parser._st_queue,
    "reject": _Parser._st_reject,
    **{w: _Parser._st_nat for w in ("dnat", "snat", "masquerade", "redirect")},
    **{w: _Parser._st_set for w in ("update", "add", "delete")},
    "counter": _Parser._st_counter,
    "log": _Parser._st_log,
    "limit": _Parser._st_limit,
    "notrack": _Parser._st_notrack,
    "xt": _Parser._st_xt,
}


# ---------------------------------------------------------------------------
# nft -j JSON -> nft commands
# ---------------------------------------------------------------------------

class _JsonError(Exception):
    pass


def _jstr(value: str) -> str:
    """A JSON string as an nft word (quoted when it would not read back as one)."""
    if value == "" or re.search(r'[\s{}(),;"#]', value):
        return '"' + value.replace('"', "'") + '"'
    return value


def _jx(e) -> str:
    """A JSON expression as nft text."""
    if isinstance(e, bool):
        return "exists" if e else "missing"
    if isinstance(e, (int, float)):
        return str(int(e))
    if isinstance(e, str):
        return _jstr(e)
    if isinstance(e, list):
        return ",".join(_jx(x) for x in e)
    if not isinstance(e, dict) or len(e) != 1:
        raise _JsonError(f"unexpected expression {json.dumps(e)[:80]}")
    (kind, v), = e.items()
    if kind == "payload":
        if "protocol" not in v:
            raise _JsonError("raw payload expressions are not supported")
        return f"{v['protocol']} {v['field']}"
    if kind == "meta":
        return f"meta {v['key']}"
    if kind == "ct":
        return " ".join(p for p in ("ct", v.get("dir"), v.get("family"), v["key"]) if p)
    if kind == "fib":
        flags = v.get("flags", [])
        return f"fib {' . '.join([flags] if isinstance(flags, str) else flags)} {v['result']}"
    if kind == "numgen":
        return f"numgen {v['mode']} mod {v['mod']}" + (f" offset {v['offset']}" if v.get("offset") else "")
    if kind in ("jhash", "symhash"):
        expr = f" {_jx(v['expr'])}" if kind == "jhash" else ""
        return f"{kind}{expr} mod {v['mod']}" + (f" offset {v['offset']}" if v.get("offset") else "")
    if kind == "concat":
        return " . ".join(_jx(x) for x in v)
    if kind == "prefix":
        return f"{v['addr']}/{v['len']}"
    if kind == "range":
        return f"{_jx(v[0])}-{_jx(v[1])}"
    if kind == "set":
        items = v if isinstance(v, list) else [v]
        return "{ " + ", ".join(_jelem(x) for x in items) + " }"
    if kind == "elem":
        return _jelem(e)
    if kind in ("&", "|", "^", "<<", ">>"):
        right = v[1]
        right = "(" + "|".join(right) + ")" if isinstance(right, list) else _jx(right)
        return f"{_jx(v[0])} {kind} {right}"
    if kind == "map":
        return f"{_jx(v['key'])} map {_jx(v['data'])}"
    if kind in ("accept", "drop", "continue", "return", "jump", "goto"):
        return _jverdict(kind, v)
    raise _JsonError(f"unsupported expression {kind!r}")


def _jverdict(kind: str, v) -> str:
    return f"{kind} {_jstr(v['target'])}" if kind in ("jump", "goto") else kind


def _jelem(x) -> str:
    """A set element: a value, {"elem": {...}} or [key, data] for maps."""
    if isinstance(x, list) and len(x) == 2:
        return f"{_jelem(x[0])} : {_jx(x[1])}"
    if isinstance(x, dict) and "elem" in x:
        v = x["elem"]
        text = _jx(v["val"])
        if v.get("timeout"):
            text += f" timeout {int(v['timeout'])}s"
        if v.get("comment"):
            text += f" comment {json.dumps(v['comment'])}"
        return text
    return _jx(x)


def _jnat_target(v: dict) -> str:
    addr = v.get("addr")
    port = v.get("port")
    if isinstance(addr, dict):
        text = _jx(addr)
    else:
        text = addr or ""
        if port is not None and ":" in text:
            text = f"[{text}]"
    if port is not None:
        text += ":" + _jx(port)
    return text


def _jstmt(s) -> str:
    """A JSON statement as nft text."""
    if not isinstance(s, dict) or len(s) != 1:
        raise _JsonError(f"unexpected statement {json.dumps(s)[:80]}")
    (kind, v), = s.items()
    if kind == "match":
        op = v["op"]
        left = v["left"]
        explicit = op not in ("==", "in") or (isinstance(left, dict) and
                                              set(left) & {"&", "|", "^"})
        return f"{_jx(left)} {op + ' ' if explicit else ''}{_jx(v['right'])}"
    if kind in ("accept", "drop", "continue", "return", "jump", "goto"):
        return _jverdict(kind, v)
    if kind == "counter":
        return "counter"
    if kind == "log":
        text = "log"
        if isinstance(v, dict):
            if "prefix" in v:
                text += f" prefix {json.dumps(v['prefix'])}"
            if "level" in v:
                text += f" level {v['level']}"
            if "group" in v:
                text += f" group {v['group']}"
        return text
    if kind == "limit":
        unit = f" {v['rate_unit']}" if v.get("rate_unit") not in (None, "packets") else ""
        return f"limit rate {'over ' if v.get('inv') else ''}{v['rate']}{unit}/{v.get('per', 'second')}"
    if kind == "reject":
        if not v:
            return "reject"
        if v.get("type") == "tcp reset":
            return "reject with tcp reset"
        return f"reject with {v.get('type', 'icmpx')} {v.get('expr', 'port-unreachable')}"
    if kind == "mangle":
        return f"{_jx(v['key'])} set {_jx(v['value'])}"
    if kind in ("dnat", "snat", "masquerade", "redirect"):
        v = v or {}
        text = kind + (f" {v['family']}" if v.get("family") else "")
        if "addr" in v or "port" in v:
            text += " to " + _jnat_target(v)
        flags = v.get("flags")
        if flags:
            text += " " + ",".join([flags] if isinstance(flags, str) else flags)
        return text
    if kind == "notrack":
        return "notrack"
    if kind == "vmap":
        return f"{_jx(v['key'])} vmap {_jx(v['data'])}"
    if kind == "set":
        elem = v["elem"]
        return f"{v['op']} {v['set']} {{ {_jelem(elem)} }}"
    if kind == "queue":
        return "queue"
    if kind == "xt":
        return f'xt {v.get("type", "match")} {_jstr(v.get("name", "?"))}'
    raise _JsonError(f"unsupported statement {kind!r}")


def _jset(kind: str, v: dict) -> list[str]:
    family, table, name = v["family"], v["table"], v["name"]
    types = v["type"] if isinstance(v["type"], list) else [v["type"]]
    decl = "type " + " . ".join(types)
    if kind == "map":
        data = v["map"]
        decl += " : " + (" . ".join(data) if isinstance(data, list) else data)
    body = [decl]
    flags = v.get("flags")
    if flags:
        body.append("flags " + ",".join([flags] if isinstance(flags, str) else flags))
    if v.get("timeout"):
        body.append(f"timeout {int(v['timeout'])}s")
    if v.get("size"):
        body.append(f"size {v['size']}")
    if v.get("policy"):
        body.append(f"policy {v['policy']}")
    if v.get("comment"):
        body.append(f"comment {json.dumps(v['comment'])}")
    cmds = [f"add {kind} {family} {table} {_jstr(name)} {{ {' ; '.join(body)} ; }}"]
    elems = v.get("elem")
    if elems:
        cmds.append(f"add element {family} {table} {_jstr(name)} {{ "
                    + ", ".join(_jelem(x) for x in elems) + " }")
    return cmds


def _json_commands(kind: str, v: dict) -> list[str]:
    """One `nft -j` object as nft commands."""
    if kind in ("metainfo",):
        return []
    if kind == "table":
        opts = []
        if v.get("comment"):
            opts.append(f"comment {json.dumps(v['comment'])}")
        body = f" {{ {' ; '.join(opts)} ; }}" if opts else ""
        return [f"add table {v['family']} {v['name']}{body}"]
    if kind == "chain":
        opts = []
        if "hook" in v:
            dev = f' device "{v["dev"]}"' if isinstance(v.get("dev"), str) else ""
            opts.append(f"type {v['type']} hook {v['hook']}{dev} priority {v['prio']}")
            opts.append(f"policy {v.get('policy', 'accept')}")
        if v.get("comment"):
            opts.append(f"comment {json.dumps(v['comment'])}")
        body = f" {{ {' ; '.join(opts)} ; }}" if opts else ""
        return [f"add chain {v['family']} {v['table']} {_jstr(v['name'])}{body}"]
    if kind in ("set", "map"):
        return _jset(kind, v)
    if kind == "rule":
        text = " ".join(_jstmt(s) for s in v["expr"])
        if v.get("comment"):
            text += f" comment {json.dumps(v['comment'])}"
        return [f"add rule {v['family']} {v['table']} {_jstr(v['chain'])} {text}"]
    if kind == "element":
        return [f"add element {v['family']} {v['table']} {_jstr(v['name'])} {{ "
                + ", ".join(_jelem(x) for x in v["elem"]) + " }"]
    raise _JsonError(f"unsupported object {kind!r}")


# ---------------------------------------------------------------------------
# The ruleset
# ---------------------------------------------------------------------------

class NftRuleset:
    """An nftables ruleset: tables of sets, maps and chains."""

    def __init__(self) -> None:
        self.tables: dict[tuple[str, str], NftTable] = {}
        self._pending: list = []        # rules whose references are checked after a parse

    # -- reading ------------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, source: str = "nft") -> "NftRuleset":
        """Read `nft list ruleset` output and/or an `nft -f` script."""
        return cls().apply(text, source)

    def apply(self, text: str, source: str = "nft") -> "NftRuleset":
        """Apply more nft text (as `nft -f` would) to this ruleset."""
        _Parser(self, text, source).parse()
        self._check_references()
        return self

    @classmethod
    def parse_json(cls, obj_or_text, source: str = "nft -j") -> "NftRuleset":
        """Read `nft -j list ruleset` output (a JSON text or the decoded object)."""
        if isinstance(obj_or_text, (str, bytes)):
            try:
                obj = json.loads(obj_or_text)
            except json.JSONDecodeError as e:
                raise InputError(f"not JSON: {e.msg}", file=source, field=f"line {e.lineno}") from None
        else:
            obj = obj_or_text
        items = obj.get("nftables") if isinstance(obj, dict) else None
        if not isinstance(items, list):
            raise InputError('expected {"nftables": [...]}', file=source)
        rs = cls()
        for n, item in enumerate(items):
            where = f"nftables[{n}]"
            if not isinstance(item, dict) or len(item) != 1:
                raise InputError("expected one object per item", file=source, field=where)
            (kind, body), = item.items()
            try:
                commands = _json_commands(kind, body)
            except (_JsonError, KeyError, TypeError, IndexError) as e:
                msg = str(e) if isinstance(e, _JsonError) else f"malformed {kind}: {e!r}"
                raise InputError(msg, file=source, field=f"{where} ({kind})") from None
            for command in commands:
                try:
                    _Parser(rs, command, f"{source} {where}").parse()
                except InputError as e:
                    raise InputError(f"{e.message} (in `{command[:120]}`)", file=source,
                                     field=f"{where} ({kind})") from None
        rs._check_references()
        return rs

    def _check_references(self) -> None:
        pending, self._pending = self._pending, []
        for table, kind, name, parser, index in pending:
            found = table.chains if kind == "chain" else table.sets
            if name not in found:
                what = "chain" if kind == "chain" else "set or map"
                raise parser.error(f"no such {what} {name!r} in table {table.family} {table.name}",
                                   index)

    # -- printing -------------------------------------------------------------------
    def list_ruleset(self, exclude: Iterable[tuple[str, str]] = ()) -> str:
        """The ruleset as `nft list ruleset` prints it (tables in creation order)."""
        skip = set(exclude)
        return "".join(t.render() for key, t in self.tables.items() if key not in skip)

    def semantics(self) -> dict:
        """What decides packets, comparable across syntaxes (no comments, handles, sizes):
        {(family, table): {"chains": {name: ...}, "sets": {name: ...}}}."""
        return {key: {"chains": {n: c.sem() for n, c in t.chains.items()},
                      "sets": {n: s.sem() for n, s in t.sets.items()}}
                for key, t in self.tables.items()}

    # -- the kernel's view ----------------------------------------------------------
    def table(self, family: str, name: str) -> NftTable:
        try:
            return self.tables[(family, name)]
        except KeyError:
            raise InputError(f"no table {family} {name}", file="nft") from None

    def base_chains(self, hook: str, family: int = 4) -> list[BaseChain]:
        """Base chains at a netfilter hook for IPv4 (ip, inet) or IPv6 (ip6, inet) packets,
        in the order the kernel runs them (priority, then registration)."""
        name = hook_name(hook)
        out = [BaseChain(t.family, t.name, c.name, c.type or "filter", c.hook, c.priority or 0,
                         c.policy or "accept")
               for t in self.tables.values() if t.family in _FAMILY_TABLES.get(family, ())
               for c in t.chains.values() if c.hook == name]
        out.sort(key=lambda bc: bc.priority)
        return out

    def evaluate(self, table_family: str, table: str, chain: str, ctx: HookContext) -> ChainResult:
        """Run one (base) chain for ctx.packet; the matched rules become Steps."""
        t = self.table(table_family, table)
        c = t.chains.get(chain)
        if c is None:
            raise InputError(f"no chain {chain} in table {table_family} {table}", file="nft")
        env = _Env(ctx, t)
        verdict = self._run(env, t, c, 0)
        result = env.result
        if verdict is None:
            policy = c.policy or "accept"
            if c.is_base and (policy == "drop" or result.steps):
                result.steps.append(Step("nft", env.label, c.name, 0, f"policy {policy}",
                                         policy.upper()))
            result.verdict = "DROP" if policy == "drop" else "ACCEPT"
        elif verdict.kind == "nat":
            result.verdict, result.nat = "ACCEPT", verdict.nat
        else:
            result.verdict = verdict.kind.upper()
            result.reject_with = verdict.reject_with
        return result

    def _run(self, env: _Env, table: NftTable, chain: NftChain, depth: int) -> Optional[_Verdict]:
        """A chain's terminal verdict, or None when it returned / fell off the end."""
        if depth > _MAX_DEPTH:
            raise InputError(f"jumps nested deeper than {_MAX_DEPTH} at chain {chain.name}",
                             file=env.label)
        steps = env.result.steps
        for index, rule in enumerate(chain.rules, 1):
            env.chain, env.index, env.choices, env.note = chain.name, index, 0, ""
            outcome = rule.run(env)
            if outcome is _NOMATCH:
                continue
            steps.append(Step("nft", env.label, chain.name, index, rule.text,
                              outcome.action() if outcome is not None else rule.effect,
                              env.note))
            if outcome is None:
                continue
            kind = outcome.kind
            if kind == "jump":
                sub = self._run(env, table, table.chains[outcome.target], depth + 1)
                if sub is not None:
                    return sub
            elif kind == "goto":
                return self._run(env, table, table.chains[outcome.target], depth + 1)
            elif kind == "return":
                return None
            elif kind != "continue":
                return outcome
        return None
