"""IPVS schedulers: which real server the kernel gives a new connection (net/netfilter/ipvs/ip_vs_*.c).

    pick = schedule(service, packet, runtime.choose)
    pick.index      # into service.reals, or None: no destination (ICMP port unreachable)
    pick.how        # the explanation for the trace

What the choice depends on decides how it is shown:

- rr and wrr walk a cursor kept by the service: which real server is next
  depends on the connections before, so every real server is a branch
  (wrr's in proportion to its weight);
- sh and dh hash the source (dh: destination) address into a 256-bucket table
  filled with the real servers in turn, so the same client always gets the
  same one: no branch;
- mh (Maglev, ip_vs_mh.c) hashes the source address (and port, mh-port) with
  the kernel's hsiphash under fixed keys into a 4093-slot table each real
  server fills along its own permutation: no branch either, except where the
  table depends on history the state does not show (weight 0, below);
- lblc and lblcr remember which server took a destination before: not
  modelled, a branch per real server;
- lc, wlc, sed and nq compare the real servers' connection counts (the
  model's ActiveConn / InActConn): no branch, ties go to the first in the
  kernel's list.

Real servers of weight 0 (quiesced: upstream's graceful termination) never
get a new connection. The kernel's list of a service's destinations is in the
reverse of the order they were added (list_add); podnet adds them as
`IpvsService.reals` lists them (as ipvsadm-restore does in the lab), so that
list is walked from the end.

mh and weight 0: the kernel fills its table from each destination's
last_weight, the latest non-zero weight it was given (or 0 when it was added
with weight 0, as ipvsadm-restore does in the lab), and only the lookup checks
the current weight. A weight-0 real server quiesced from weight 1 (kube-proxy's
graceful termination) keeps its slots, and its clients get no destination
(mh-fallback: another, by rehashing); one added at weight 0 has none. The state does
not say which, so where the two tables send this client to different places,
both are branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from typing import Callable, Optional

from ..linux.netfilter import Packet
from ..linux.render import hostport
from ..linux.state import IpvsRealServer, IpvsService, Netns
from .siphash import hsiphash_u32

TAB_BITS = 8                        # CONFIG_IP_VS_SH_TAB_BITS / IP_VS_DH_TAB_BITS
TAB_SIZE = 1 << TAB_BITS
GOLDEN_RATIO_32 = 0x61C88647         # include/linux/hash.h

# ip_vs_mh.c: CONFIG_IP_VS_MH_TAB_INDEX (Kconfig default 12, range 8..17) picks the table size
MH_PRIMES = (251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071)
MH_TAB_INDEX = 12
MH_TAB_SIZE = MH_PRIMES[MH_TAB_INDEX - 8]            # 4093
MH_TAB_BITS = MH_TAB_INDEX // 2                      # for ip_vs_mh_shift_weight
# generate_hash_secret: fixed keys (not random per boot), so the table is the same on every
# host; hsiphash_key_t is two unsigned longs (u64 on 64-bit kernels)
MH_HASH1 = (2654435761, 2654435761)
MH_HASH2 = (2654446892, 2654446892)


@dataclass(frozen=True, slots=True)
class Pick:
    index: Optional[int]            # into IpvsService.reals; None: no destination available
    how: str


def _real_name(r: IpvsRealServer) -> str:
    return hostport(r.ip, r.port)


def _fold(addr, version: int | None = None) -> int:
    """The address as one host-order 32-bit word (IPv6: the four words XORed). `version`:
    the service's family when it differs from the address's (mh folds a destination by
    svc->af: an IPv6 destination of an IPv4 service is its first word)."""
    value = int(addr)
    if addr.version == 4:
        return value
    if version == 4:
        return value >> 96
    return (value >> 96 ^ value >> 64 ^ value >> 32 ^ value) & 0xFFFFFFFF


def hash_32(value: int, bits: int = TAB_BITS) -> int:
    return ((value * GOLDEN_RATIO_32) & 0xFFFFFFFF) >> (32 - bits)


def kernel_order(svc: IpvsService) -> list[int]:
    """Indexes of `svc.reals` in the order of the kernel's destination list."""
    return list(range(len(svc.reals) - 1, -1, -1))


def bucket_table(svc: IpvsService) -> list[int]:
    """ip_vs_sh_reassign / ip_vs_dh_reassign: bucket -> real server index; each real server
    takes `weight` consecutive buckets in turn (at least one)."""
    order = kernel_order(svc)
    table = []
    i = count = 0
    for _ in range(TAB_SIZE):
        j = order[i % len(order)]
        table.append(j)
        count += 1
        if count >= svc.reals[j].weight:
            i += 1
            count = 0
    return table


def sh_bucket(addr, port: int = 0) -> int:
    """ip_vs_sh_hashkey (port only with the sh-port flag)."""
    return hash_32((port + _fold(addr)) & 0xFFFFFFFF)


def dh_bucket(addr) -> int:
    """ip_vs_dh_hashkey."""
    return (_fold(addr) * 2654435761) & (TAB_SIZE - 1)


def mh_hashkey(fold: int, port: int, key: tuple[int, int], offset: int = 0) -> int:
    """ip_vs_mh_hashkey: hsiphash of the u32 offset + port + folded address (host order)."""
    return hsiphash_u32(offset + port + fold, key)


@lru_cache(maxsize=256)
def mh_lookup(dests: tuple[tuple[int, int, int], ...]) -> tuple[Optional[int], ...]:
    """ip_vs_mh_permutate + ip_vs_mh_populate: slot -> position in `dests`, None when no
    destination has a non-zero last_weight (ip_vs_mh_reset). `dests`: (folded address,
    port, last_weight) in the order of the kernel's destination list."""
    g = 0                                           # ip_vs_mh_gcd_weight
    for _, _, w in dests:
        if w > 0:
            g = gcd(w, g) if g > 0 else w
    if g < 1:
        return (None,) * MH_TAB_SIZE
    rshift = max((max(w for _, _, w in dests) // g).bit_length() - MH_TAB_BITS, 0)   # fls()
    size = MH_TAB_SIZE
    perm, skip, turns = [], [], []
    for fold, port, w in dests:
        perm.append(mh_hashkey(fold, port, MH_HASH1) % size)            # offset
        skip.append(mh_hashkey(fold, port, MH_HASH2) % (size - 1) + 1)
        turns.append(((w // g) >> rshift) or int(w != 0))
    lookup: list[Optional[int]] = [None] * size
    taken = [False] * size
    n = 0
    # each round, every destination in list order takes `turns` slots, each the next free
    # one along its permutation offset, offset + skip, offset + 2 skip ... (mod size)
    while True:
        for d in range(len(dests)):
            for _ in range(turns[d]):
                c = perm[d]
                while taken[c]:
                    c = perm[d] = (c + skip[d]) % size
                taken[c] = True
                lookup[c] = d
                n += 1
                if n == size:
                    return tuple(lookup)


def _mh_dests(svc: IpvsService, order: list[int], last_weight) -> tuple:
    return tuple((_fold(svc.reals[i].ip, svc.vip.version), svc.reals[i].port, last_weight(svc.reals[i]))
                 for i in order)


def _mh_get(svc: IpvsService, lookup: tuple, order: list[int], fold: int, port: int,
            fallback: bool) -> tuple[Optional[int], str]:
    """ip_vs_mh_get / ip_vs_mh_get_fallback: the real server index, and how it was found."""
    size = MH_TAB_SIZE
    ihash = mh_hashkey(fold, port, MH_HASH1) % size
    if lookup[ihash] is None:
        return None, f"slot {ihash} of {size}, which is empty"
    first = order[lookup[ihash]]
    how = f"slot {ihash} of {size}"
    if svc.reals[first].weight > 0:
        return first, how
    how += f" -> {_real_name(svc.reals[first])}, which has weight 0"
    if not fallback:
        return None, how
    # mh-fallback: rehash with offsets ihash, ihash + 1, ... until a usable one
    for offset in range(size):
        slot = mh_hashkey(fold, port, MH_HASH1, (offset + ihash) % size) % size
        i = order[lookup[slot]]
        if svc.reals[i].weight > 0:
            return i, how + f"; mh-fallback: rehash {offset + 1} -> slot {slot}"
    return None, how + f"; mh-fallback: no usable slot in {size} rehashes"


def _mh_schedule(svc: IpvsService, pkt: Packet, choose: Callable, key: str) -> Pick:
    order = kernel_order(svc)
    port = (pkt.sport or 0) if "mh-port" in svc.sched_flags and \
        pkt.proto.lower() in ("tcp", "udp", "sctp") else 0      # ip_vs_mh_get_port
    fold = _fold(pkt.src)
    fallback = "mh-fallback" in svc.sched_flags
    what = f"Maglev hash of the source address {pkt.src}" + (f" and port {port}" if "mh-port" in svc.sched_flags else "")
    # last_weight = weight: each real server added with its weight (ipvsadm-restore, the lab)
    added = _mh_get(svc, mh_lookup(_mh_dests(svc, order, lambda r: r.weight)), order, fold, port, fallback)
    if all(r.weight > 0 for r in svc.reals):
        return Pick(added[0], f"{what} -> {added[1]}")
    # weight-0 ones quiesced from weight 1 (kube-proxy's graceful termination) keep their slots
    quiesced = _mh_get(svc, mh_lookup(_mh_dests(svc, order, lambda r: r.weight or 1)), order, fold, port,
                       fallback)
    if added[0] == quiesced[0]:
        return Pick(added[0], f"{what} -> {added[1]} (the same whether its weight-0 real servers "
                              "were added so or quiesced from weight 1)")
    histories = [(added, "weight-0 real servers added with weight 0"),
                 (quiesced, "weight-0 real servers quiesced from weight 1")]
    options = [(f"{_real_name(svc.reals[p[0]]) if p[0] is not None else 'no destination'} "
                f"({label})", 0.5) for p, label in histories]
    (index, how), label = histories[choose(key, options)]
    return Pick(index, f"{what} -> {how} (if {label})")


def _overhead(r: IpvsRealServer) -> int:
    """ip_vs_dest_conn_overhead (the model keeps no inactive count: 0)."""
    return r.active_conns << 8


def schedule(svc: IpvsService, pkt: Packet, choose: Callable, key: str) -> Pick:
    reals = svc.reals
    if not reals:
        return Pick(None, "no real servers")
    sched = svc.scheduler
    usable = [i for i in kernel_order(svc) if reals[i].weight > 0]
    if sched in ("sh", "dh"):
        if sched == "sh":
            port = (pkt.sport or 0) if "sh-port" in svc.sched_flags else 0
            bucket, what = sh_bucket(pkt.src, port), f"source address {pkt.src}"
        else:
            bucket, what = dh_bucket(pkt.dst), f"destination address {pkt.dst}"
        i = bucket_table(svc)[bucket]
        if reals[i].weight <= 0:
            return Pick(None, f"hash of the {what} -> bucket {bucket} -> {_real_name(reals[i])}, "
                              "which has weight 0")
        return Pick(i, f"hash of the {what} -> bucket {bucket} of {TAB_SIZE}")
    if sched == "mh":
        return _mh_schedule(svc, pkt, choose, key)
    if not usable:
        return Pick(None, "every real server has weight 0")
    if sched in ("lc", "wlc", "sed", "nq"):
        return Pick(_least(sched, reals, usable), "the real server with the least "
                    f"{'connections' if sched == 'lc' else 'connections per weight'} (ties: first in the list)")
    # cursor or unmodelled table: one branch per usable real server
    if sched == "wrr":
        total = sum(reals[i].weight for i in usable)
        options = [(_real_name(reals[i]), reals[i].weight / total) for i in usable]
        how = "next in the weighted round"
    else:
        options = [(_real_name(reals[i]), 1 / len(usable)) for i in usable]
        how = "next in turn" if sched == "rr" else "by locality (not modelled)"
    chosen = usable[choose(key, options)] if len(options) > 1 else usable[0]
    return Pick(chosen, how)


def _least(sched: str, reals: list[IpvsRealServer], usable: list[int]) -> int:
    """ip_vs_lc / wlc / sed / nq_schedule over the kernel's list."""
    if sched == "nq":
        for i in usable:
            if reals[i].active_conns == 0:
                return i
    best = usable[0]
    for i in usable[1:]:
        r, b = reals[i], reals[best]
        if sched == "lc":
            if _overhead(r) < _overhead(b):
                best = i
        elif sched == "wlc":
            if _overhead(b) * r.weight > _overhead(r) * b.weight:
                best = i
        else:       # sed, nq: (active + 1) / weight
            if (b.active_conns + 1) * r.weight > (r.active_conns + 1) * b.weight:
                best = i
    return best


IPVS_PROTOCOLS = ("TCP", "UDP", "SCTP")     # the protocols ip_vs_in schedules (ip_vs_proto_get)


def find_service(ns: Netns, pkt: Packet) -> Optional[IpvsService]:
    """The virtual service a packet is for, as ip_vs_service_find looks it up: the fwmark
    table first (the packet's mark and family), then <protocol, address, port>, then the
    address's catch-all port 0 service."""
    proto = pkt.proto.upper()
    if not ns.ipvs or pkt.dport is None or proto not in IPVS_PROTOCOLS:
        return None
    by_mark, by_addr = ns.cached("ipvs", lambda: _service_index(ns.ipvs))
    if pkt.mark and (svc := by_mark.get((pkt.dst.version, pkt.mark))) is not None:
        return svc
    return by_addr.get((proto, pkt.dst, pkt.dport)) or by_addr.get((proto, pkt.dst, 0))


def _service_index(services: list[IpvsService]) -> tuple[dict, dict]:
    by_mark = {(s.vip.version, s.fwmark): s for s in services if s.fwmark is not None}
    by_addr = {(s.protocol, s.vip, s.port): s for s in services if s.fwmark is None}
    return by_mark, by_addr


def service_name(svc: IpvsService) -> str:
    """The service as a trace names it: `TCP 10.96.0.1:443`, `FWM 100`, `FWM 200 IPv6`
    (`ipvsadm -Ln`'s heading with single spaces)."""
    if svc.fwmark is not None:
        return f"FWM {svc.fwmark}" + (" IPv6" if svc.vip.version == 6 else "")
    return f"{svc.protocol} {hostport(svc.vip, svc.port)}"
