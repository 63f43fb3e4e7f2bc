"""Mutable state of one walk, layered over the (immutable) dataplane state.

Each run of a walk (one branch of random choices) gets a fresh Runtime, so a
trace never changes the state it reads and branches never see each other's
conntrack entries, `recent` lists or learned FDB entries. A Runtime can also be
kept across walks (a request, then its reply) to follow one connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from ..linux.netfilter import RecentList
from ..linux.state import DataplaneState, Netns
from .conntrack import ConntrackTable


@dataclass
class Runtime:
    state: DataplaneState
    choose: Callable = lambda key, options: 0
    now: float = 1_000_000.0
    conntrack: dict[str, ConntrackTable] = field(default_factory=dict)
    recent: dict[str, dict[str, RecentList]] = field(default_factory=dict)
    nft_dynamic: dict[str, dict] = field(default_factory=dict)
    rule_counters: dict[str, dict] = field(default_factory=dict)   # ns -> HookContext.counters
    learned_fdb: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)  # (ns, bridge) -> mac -> port
    # eBPF socket-LB: connected sockets whose peer was translated at connect()
    sock_lb_reverse: dict[tuple, tuple] = field(default_factory=dict)
    # client sockets opened by the walk: (ns, proto, ip, port) -> peer (ip, port) as connected
    client_sockets: dict[tuple, tuple] = field(default_factory=dict)
    # multipath routes: the nexthop each flow hashed to, (ns, route, flow) -> index
    ecmp: dict[tuple, int] = field(default_factory=dict)

    def ct(self, ns: Netns) -> ConntrackTable:
        table = self.conntrack.get(ns.name)
        if table is None:
            table = ConntrackTable.from_entries(ns.conntrack)
            table.clock = lambda: self.now
            self.conntrack[ns.name] = table
        return table

    def recent_lists(self, ns: Netns) -> dict[str, RecentList]:
        return self.recent.setdefault(ns.name, {})

    def counters(self, ns: Netns) -> dict:
        return self.rule_counters.setdefault(ns.name, {})

    def nft_sets(self, ns: Netns) -> dict:
        return self.nft_dynamic.setdefault(ns.name, {})

    def fdb(self, ns: Netns, bridge: str) -> dict[str, str]:
        return self.learned_fdb.setdefault((ns.name, bridge), {})
