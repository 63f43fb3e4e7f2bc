"""Run the netfilter base chains of one hook in one namespace.

The base chains of iptables tables (at their standard priorities) and of
nftables tables are merged and run in priority order, as the kernel does
(iptables-nft tables are nftables tables too). A DROP/REJECT ends the hook;
nat-type chains run only for the first packet of a connection, and at most
one NAT binding of each kind is made per hook.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from ..linux.netfilter import (IPTABLES_HOOKS, ChainResult, ConnView, HookContext, NatAction,
                               Packet, Step)
from ..linux.state import Netns
from ..linux.routing import tables_of
from .runtime import Runtime


@dataclass(slots=True)
class BaseChainRef:
    priority: int
    engine: str                     # iptables | ip6tables | nft
    table: str                      # iptables table, or nft table name
    chain: str
    type: str                       # filter | nat | route
    family: str = ""                # nft table family (ip, ip6, inet)
    ruleset: object = None


@dataclass(slots=True)
class HookOutcome:
    verdict: str = "ACCEPT"
    reject_with: Optional[str] = None
    nat: list[tuple[BaseChainRef, NatAction]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    notrack: bool = False
    chains_run: list[str] = field(default_factory=list)
    # a route chain (iptables mangle OUTPUT, nft `type route`) changed the mark or an address:
    # the kernel routes the packet again (ip_route_me_harder)
    reroute: bool = False


def iptables_ruleset(ns: Netns, family: int):
    text = ns.iptables if family == 4 else ns.ip6tables
    if not text or text.isspace():         # O(1) on real text, unlike strip()
        return None
    from ..linux.iptables import Ruleset
    key = "iptables" if family == 4 else "ip6tables"
    return ns.cached(key, lambda: Ruleset.parse(text, source=f"{ns.name}:{key}-save"))


def nft_ruleset(ns: Netns):
    if not ns.nft or ns.nft.isspace():
        return None
    from ..linux.nftables import NftRuleset
    return ns.cached("nft", lambda: NftRuleset.parse(ns.nft, source=f"{ns.name}:nft"))


def ipset_store(ns: Netns):
    if not ns.ipsets or ns.ipsets.isspace():
        return None
    from ..linux.ipset import IpsetStore
    return ns.cached("ipset", lambda: IpsetStore.parse(ns.ipsets, source=f"{ns.name}:ipset"))


def base_chains(ns: Netns, hook: str, family: int) -> list[BaseChainRef]:
    def build():
        out: list[BaseChainRef] = []
        ipt = iptables_ruleset(ns, family)
        engine = "iptables" if family == 4 else "ip6tables"
        if ipt is not None:
            for table, prio in IPTABLES_HOOKS[hook]:
                t = ipt.tables.get(table)
                if t is not None and hook in t.chains:
                    kind = "nat" if table == "nat" else "route" if (table, hook) == ("mangle", "OUTPUT") \
                        else "filter"
                    out.append(BaseChainRef(prio, engine, table, hook, kind, ruleset=ipt))
        nft = nft_ruleset(ns)
        if nft is not None:
            for bc in nft.base_chains(hook, family):
                out.append(BaseChainRef(bc.priority, "nft", bc.table, bc.name, bc.type, bc.family,
                                        ruleset=nft))
        out.sort(key=lambda c: c.priority)      # stable: iptables first on equal priority
        return out
    return ns.cached(f"hook:{hook}:{family}", build)


def run_hook(ns: Netns, hook: str, pkt: Packet, conn: ConnView, runtime: Runtime, *,
             in_iface: Optional[str] = None, out_iface: Optional[str] = None,
             physdev_in: Optional[str] = None, physdev_out: Optional[str] = None,
             bridged: bool = False, first_packet: bool = True,
             priorities: Optional[tuple] = None, ipvs: Optional[tuple] = None) -> HookOutcome:
    """`priorities` (lo, hi): only the base chains with lo <= priority < hi (None: unbounded),
    for what the kernel runs between them (IPVS at LOCAL_OUT); `ipvs`: the packet's IPVS
    connection (vaddr, vport, protocol, direction), for `-m ipvs`."""
    chains = base_chains(ns, hook, pkt.family)
    if priorities is not None:
        lo, hi = priorities
        chains = [c for c in chains if (lo is None or c.priority >= lo) and (hi is None or c.priority < hi)]
    outcome = HookOutcome()
    if not chains:
        return outcome
    routing = tables_of(ns)
    ctx = HookContext(hook=hook, packet=pkt, conn=conn, in_iface=in_iface, out_iface=out_iface,
                      physdev_in=physdev_in, physdev_out=physdev_out, bridged=bridged,
                      addr_type=routing.addr_type, ipsets=ipset_store(ns),
                      recent=runtime.recent_lists(ns), now=runtime.now, choose=runtime.choose,
                      nft_dynamic=runtime.nft_sets(ns), namespace=ns.name,
                      nfacct={"*"}, ipvs=ipvs, counters=runtime.counters(ns))
    nat_done = False
    view = pkt          # what the next chain sees: the kernel rewrites the header in the nat chain
    for ref in chains:
        if ref.type == "nat" and (not first_packet or nat_done or bridged and hook != "PREROUTING"):
            continue
        route_chain = ref.type == "route" and hook == "OUTPUT"
        seen = (view.mark, view.src, view.dst) if route_chain else None
        if ref.engine == "nft":
            result: ChainResult = ref.ruleset.evaluate(ref.family, ref.table, ref.chain, ctx)
        else:
            result = ref.ruleset.evaluate(ref.table, ref.chain, ctx, engine=ref.engine)
        if route_chain and (view.mark, view.src, view.dst) != seen:
            outcome.reroute = True
        outcome.chains_run.append(f"{ref.engine}:{ref.family + ' ' if ref.family else ''}{ref.table}/{ref.chain}")
        outcome.steps.extend(result.steps)
        outcome.logs.extend(result.logs)
        if result.notrack:
            outcome.notrack = True
        if result.nat is not None:
            outcome.nat.append((ref, result.nat))
            nat_done = True
            view = translated(ns, hook, result.nat, view, in_iface)
            ctx.packet = view
        if result.verdict in ("DROP", "REJECT"):
            outcome.verdict = result.verdict
            outcome.reject_with = result.reject_with
            break
    pkt.mark = view.mark
    return outcome


def nat_destination(ns: Netns, hook: str, nat: NatAction, pkt: Packet, in_iface: Optional[str]):
    """The (address, port) a DNAT or REDIRECT sends the packet to. For REDIRECT the address is
    None where the kernel drops the packet instead."""
    if nat.kind == "REDIRECT":
        # nf_nat_redirect: the loopback address for locally generated packets, else the first
        # address of the incoming interface (of the packet's family); none there: NF_DROP
        port = nat.port if nat.port is not None else pkt.dport
        if hook == "OUTPUT":
            return ipaddress.ip_address("127.0.0.1" if pkt.dst.version == 4 else "::1"), port
        link = ns.links.get(in_iface or "")
        own = [a.ip for a in (link.addresses if link else []) if a.ip.version == pkt.dst.version]
        return (own[0] if own else None), port
    return (nat.addr if nat.addr is not None else pkt.dst), (nat.port if nat.port is not None else pkt.dport)


def translated(ns: Netns, hook: str, nat: NatAction, pkt: Packet, in_iface: Optional[str]) -> Packet:
    """The packet as chains after a NAT binding see it. MASQUERADE's address depends on the
    route and is left to the walker (nothing after POSTROUTING's nat chain looks at it)."""
    out = pkt.copy()
    if nat.kind in ("DNAT", "REDIRECT"):
        addr, port = nat_destination(ns, hook, nat, pkt, in_iface)
        if addr is not None:            # None: the walker drops the packet
            out.dst, out.dport = addr, port
    elif nat.kind == "SNAT":
        out.src = nat.addr if nat.addr is not None else pkt.src
        out.sport = nat.port if nat.port is not None else pkt.sport
    return out
