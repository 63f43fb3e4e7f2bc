"""What netfilter rule engines (iptables, nftables) see and decide.

The walker (podnet.sim) calls every base chain registered at a hook, in
priority order, with a `HookContext`. An engine evaluates its rules for real
(the rule text as iptables-save / nft print it) and returns a `ChainResult`.

Random choices (`-m statistic --mode random`, `numgen random mod N`, IPVS
schedulers...) are never made by the engine itself: it asks `ctx.choose(...)`.
Deterministic per-rule counters (`-m statistic --mode nth`, `numgen inc`) are
no choice: they live in `ctx.counters`.
The simulator runs the whole walk once per combination of choices, so the same
deterministic code yields every possible outcome with its probability (see
podnet.sim.branches).

State an engine changes (packet mark, conntrack mark, `recent` lists, nft
dynamic sets) is changed on the objects in the context; each exploration run
gets fresh copies, so engines may mutate freely.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence

from .state import IPAddress

# Standard priorities of the iptables tables at each hook (as nftables names them).
PRIO_RAW = -300
PRIO_MANGLE = -150
PRIO_DSTNAT = -100
PRIO_FILTER = 0
PRIO_SECURITY = 50
PRIO_SRCNAT = 100
# IPVS's hooks (ip_vs_ops4): requests at LOCAL_OUT right after the nat table, at LOCAL_IN
# before it (NF_IP_PRI_NAT_DST + 2, NF_IP_PRI_NAT_SRC - 1)
PRIO_IPVS_LOCAL_OUT = -98
PRIO_IPVS_LOCAL_IN = 99

# hook -> [(table, priority)] in the order the kernel runs them
IPTABLES_HOOKS: dict[str, list[tuple[str, int]]] = {
    "PREROUTING": [("raw", PRIO_RAW), ("mangle", PRIO_MANGLE), ("nat", PRIO_DSTNAT)],
    "INPUT": [("mangle", PRIO_MANGLE), ("filter", PRIO_FILTER), ("nat", PRIO_SRCNAT)],
    "FORWARD": [("mangle", PRIO_MANGLE), ("filter", PRIO_FILTER)],
    "OUTPUT": [("raw", PRIO_RAW), ("mangle", PRIO_MANGLE), ("nat", PRIO_DSTNAT),
               ("filter", PRIO_FILTER)],
    "POSTROUTING": [("mangle", PRIO_MANGLE), ("nat", PRIO_SRCNAT)],
}

NFT_PRIORITY_NAMES = {"raw": PRIO_RAW, "mangle": PRIO_MANGLE, "dstnat": PRIO_DSTNAT,
                      "filter": PRIO_FILTER, "security": PRIO_SECURITY,
                      "srcnat": PRIO_SRCNAT}

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")


@dataclass(slots=True)
class Packet:
    """An IP packet as netfilter sees it (L3/L4 header fields that rules can match)."""
    src: IPAddress
    dst: IPAddress
    proto: str = "tcp"              # tcp | udp | sctp | icmp | icmpv6
    sport: Optional[int] = None
    dport: Optional[int] = None
    icmp_type: Optional[int] = None
    icmp_code: Optional[int] = None
    tcp_flags: frozenset = frozenset({"SYN"})
    ttl: int = 64
    length: int = 84
    mark: int = 0
    # L2 header, when known
    src_mac: Optional[str] = None
    dst_mac: Optional[str] = None
    df: bool = True                 # IP don't-fragment (path MTU discovery; `ping -M do`)

    @property
    def family(self) -> int:
        return self.src.version

    def tuple(self) -> tuple:
        return (self.proto, self.src, self.sport, self.dst, self.dport)

    def copy(self) -> "Packet":
        return Packet(self.src, self.dst, self.proto, self.sport, self.dport,
                      self.icmp_type, self.icmp_code, self.tcp_flags, self.ttl,
                      self.length, self.mark, self.src_mac, self.dst_mac, self.df)


@dataclass(slots=True)
class ConnView:
    """The packet's conntrack entry as rules see it (`-m conntrack`, `ct ...`)."""
    state: str = "NEW"              # NEW | ESTABLISHED | RELATED | INVALID | UNTRACKED
    status: set = field(default_factory=set)   # DNAT, SNAT, CONFIRMED, SEEN_REPLY, ASSURED
    direction: str = "ORIGINAL"     # ORIGINAL | REPLY
    orig_src: Optional[IPAddress] = None
    orig_dst: Optional[IPAddress] = None
    orig_sport: Optional[int] = None
    orig_dport: Optional[int] = None
    mark: int = 0                   # connmark
    notrack: bool = False


@dataclass(frozen=True, slots=True)
class NatAction:
    """A NAT target: what the engine asked for; the walker applies it to conntrack."""
    kind: str                       # DNAT | SNAT | MASQUERADE | REDIRECT
    addr: Optional[IPAddress] = None
    port: Optional[int] = None      # or first port of a range
    port_max: Optional[int] = None
    random_fully: bool = False
    random: bool = False
    persistent: bool = False

    def __str__(self) -> str:
        if self.kind == "MASQUERADE":
            return "MASQUERADE" + (" random-fully" if self.random_fully else "")
        if self.kind == "REDIRECT":
            return f"REDIRECT to port {self.port}"
        target = str(self.addr) if self.addr is not None else ""
        if self.port is not None:
            if self.addr is not None and self.addr.version == 6:
                target = f"[{target}]"
            target += f":{self.port}" + (f"-{self.port_max}" if self.port_max else "")
        return f"{self.kind} to {target}"


@dataclass(slots=True)
class Step:
    """One rule that matched (or a policy that applied) while evaluating a hook."""
    engine: str                     # iptables | ip6tables | nft | ipvs | ...
    table: str                      # iptables table or nft "family table"
    chain: str
    index: int                      # 1-based position of the rule in its chain (0 = policy)
    text: str                       # the rule as iptables-save / nft print it
    action: str = ""                # jump KUBE-SVC-..., DNAT to ..., ACCEPT, ...
    note: str = ""                  # e.g. "probability 0.5: taken"

    def where(self) -> str:
        return f"{self.table}/{self.chain}" + (f" #{self.index}" if self.index else " policy")


@dataclass(slots=True)
class ChainResult:
    """The outcome of one base chain for one packet."""
    verdict: str = "ACCEPT"         # ACCEPT | DROP | REJECT | QUEUE  (fall off = policy)
    reject_with: Optional[str] = None   # icmp-port-unreachable, tcp-reset, ...
    nat: Optional[NatAction] = None
    steps: list[Step] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    notrack: bool = False
    trace: bool = False


class Chooser(Protocol):
    def __call__(self, key: str, options: Sequence[tuple[str, float]]) -> int:
        """Pick one of `options` (label, probability); returns its index."""


class IpsetLookup(Protocol):
    """The ipsets of a namespace, as rules see them (podnet.linux.ipset.IpsetStore)."""

    def __contains__(self, name: str) -> bool:
        """Does a set of that name exist?"""

    def match_packet(self, name: str, flags: Sequence[str], packet: Packet, *,
                     return_nomatch: bool = False) -> bool:
        """`-m set --match-set NAME src,dst,...`: each flag picks the packet's source or
        destination for that dimension. A missing set never matches."""

    def test(self, name: str, entry: str) -> bool:
        """`ipset test NAME ENTRY` (entry as ipset writes it: 10.96.0.1,tcp:443)."""

    def add(self, name: str, entry: str, options: str = "") -> None:
        """`ipset add NAME ENTRY [timeout N] [comment "..."] [nomatch]`."""


@dataclass(slots=True)
class RecentList:
    """One `-m recent --name` list: address -> timestamps of --set."""
    entries: dict = field(default_factory=dict)


@dataclass(slots=True)
class HookContext:
    """Everything a rule may look at, besides the packet itself."""
    hook: str                       # PREROUTING | INPUT | FORWARD | OUTPUT | POSTROUTING
    packet: Packet
    conn: ConnView
    in_iface: Optional[str] = None
    out_iface: Optional[str] = None
    physdev_in: Optional[str] = None
    physdev_out: Optional[str] = None
    bridged: bool = False           # in the bridge path (bridge-nf-call-iptables)
    # addrtype / fib type of an address in this namespace, e.g. "LOCAL", "UNICAST",
    # "BROADCAST", "MULTICAST", "BLACKHOLE", "UNREACHABLE", "PROHIBIT";
    # with iface given, as `--limit-iface-in/out` restricts it.
    addr_type: Callable[[IPAddress, Optional[str]], str] = lambda addr, iface=None: "UNICAST"
    ipsets: Optional[IpsetLookup] = None
    recent: dict[str, RecentList] = field(default_factory=dict)
    nfacct: set = field(default_factory=set)     # counters that exist (for -m nfacct)
    # the per-rule counters of `-m statistic --mode nth` and nft `numgen inc`, which the kernel
    # keeps in the rule (xt_statistic_priv.count, nft_ng_inc.counter): keyed by the match or
    # expression object, so every packet through that rule shares one, and a ruleset parsed
    # again starts afresh (as after iptables-restore / nft -f)
    counters: dict = field(default_factory=dict)
    now: float = 0.0
    choose: Chooser = lambda key, options: 0
    # mutable state owned by the nft engine across calls (dynamic sets), keyed by set
    nft_dynamic: dict = field(default_factory=dict)
    namespace: str = ""
    # the IPVS connection the packet belongs to, (vaddr, vport, protocol, ORIGINAL|REPLY),
    # as `-m ipvs` sees it; None: not an IPVS packet
    ipvs: Optional[tuple] = None


def ip(value: str) -> IPAddress:
    return ipaddress.ip_address(value)
