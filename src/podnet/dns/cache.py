"""The answer cache, after CoreDNS's cache plugin (`cache 30` in kind's Corefile).

Positive answers are kept for the smallest TTL of their records, negative
answers (NXDOMAIN, NODATA) for min(SOA TTL, SOA minimum), both capped at
`max_ttl`; answers without an SOA, SERVFAIL and truncated upstream answers are
not kept (CoreDNS keeps SERVFAIL for 5s; podnet retries instead). On a hit every
record's TTL is what remains of the entry's TTL, as CoreDNS shows it.

Entries are keyed by the raw question (the name's exact bytes, so 0x20-mixed
case gets its own entry and answers always echo the question's case), the RD
and CD bits, EDNS presence and the DO bit, and when autopath is on the client's
namespace. Each entry memoizes its rendered bytes per (age in seconds, size
limit), so a hit costs a dictionary lookup and an ID patch.
"""

from __future__ import annotations

import copy
import time
from typing import Callable, Optional

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype


def cache_ttl(msg: dns.message.Message, max_ttl: int) -> int:
    """How long `msg` may be cached (0: not at all)."""
    if msg.flags & dns.flags.TC:
        return 0
    rcode = msg.rcode()
    if rcode == dns.rcode.NOERROR and msg.answer:
        ttl = min(r.ttl for r in (*msg.answer, *msg.authority))
    elif rcode in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        soa = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
        if not soa:
            return 0
        ttl = min(soa[0].ttl, soa[0][0].minimum)
    else:
        return 0
    return max(0, min(ttl, max_ttl))


class Entry:
    __slots__ = ("message", "stored", "ttl", "renders")

    def __init__(self, message: dns.message.Message, stored: float, ttl: int):
        self.message = message
        self.stored = stored
        self.ttl = ttl
        self.renders: dict[tuple[int, int], bytes] = {}

    def aged(self, age: int) -> dns.message.Message:
        """The answer as served `age` seconds after it was stored."""
        remaining = self.ttl - age
        if all(r.ttl <= remaining for section in self.message.sections[1:] for r in section):
            return self.message
        m = copy.copy(self.message)
        m.sections = [list(self.message.question)]
        for section in self.message.sections[1:]:
            out = []
            for rrset in section:
                rr = rrset.copy()
                rr.ttl = min(rr.ttl, remaining)
                out.append(rr)
            m.sections.append(out)
        return m


class Cache:
    def __init__(self, max_ttl: int = 30, capacity: int = 10000,
                 clock: Callable[[], float] = time.monotonic):
        self.max_ttl = max_ttl
        self.capacity = capacity
        self.clock = clock
        self.entries: dict = {}
        self.hits = self.misses = 0

    def get(self, key) -> Optional[tuple[Entry, int]]:
        """(entry, age in whole seconds), or None when absent or expired."""
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        age = int(self.clock() - entry.stored)
        if age >= entry.ttl:
            del self.entries[key]
            self.misses += 1
            return None
        self.hits += 1
        return entry, age

    def put(self, key, message: dns.message.Message) -> Optional[Entry]:
        ttl = cache_ttl(message, self.max_ttl)
        if ttl <= 0 or key is None:
            return None
        if len(self.entries) >= self.capacity:
            self.entries.pop(next(iter(self.entries)))     # the oldest
        entry = Entry(message, self.clock(), ttl)
        self.entries[key] = entry
        return entry

    def __len__(self) -> int:
        return len(self.entries)
