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
  same one: no branch; mh (Maglev), lblc and lblcr also hash or remember, but
  their tables are not modelled: a branch per real server;
- lc, wlc, sed and nq compare the real servers' connection counts (the
  model's ActiveConn / InActConn): no branch, ties go to the first in the
  kernel's list.

Real servers of weight 0 (quiesced: upstream's graceful termination) never
get a new connection. The kernel's list of a service's destinations is in the
reverse of the order they were added (list_add); podnet adds them as
`IpvsService.reals` lists them (as ipvsadm-restore does in the lab), so that
list is walked from the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from ..linux.netfilter import Packet
from ..linux.state import IpvsRealServer, IpvsService, Netns

TAB_BITS = 8                        # CONFIG_IP_VS_SH_TAB_BITS / IP_VS_DH_TAB_BITS
TAB_SIZE = 1 << TAB_BITS
GOLDEN_RATIO_32 = 0x61C88647         # include/linux/hash.h


@dataclass(frozen=True, slots=True)
class Pick:
    index: Optional[int]            # into IpvsService.reals; None: no destination available
    how: str


def _hostport(r: IpvsRealServer) -> str:
    return f"[{r.ip}]:{r.port}" if r.ip.version == 6 else f"{r.ip}:{r.port}"


def _fold(addr) -> int:
    """The address as one host-order 32-bit word (IPv6: the four words XORed)."""
    value = int(addr)
    if addr.version == 4:
        return value
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
            return Pick(None, f"hash of the {what} -> bucket {bucket} -> {_hostport(reals[i])}, "
                              "which has weight 0")
        return Pick(i, f"hash of the {what} -> bucket {bucket} of {TAB_SIZE}")
    if not usable:
        return Pick(None, "every real server has weight 0")
    if sched in ("lc", "wlc", "sed", "nq"):
        return Pick(_least(sched, reals, usable), "the real server with the least "
                    f"{'connections' if sched == 'lc' else 'connections per weight'} (ties: first in the list)")
    # cursor or unmodelled table: one branch per usable real server
    if sched == "wrr":
        total = sum(reals[i].weight for i in usable)
        options = [(_hostport(reals[i]), reals[i].weight / total) for i in usable]
        how = "next in the weighted round"
    else:
        options = [(_hostport(reals[i]), 1 / len(usable)) for i in usable]
        how = {"rr": "next in turn",
               "mh": "Maglev hash of the source address" + (" and port" if "mh-port" in svc.sched_flags else ""),
               }.get(sched, "by locality / hash (not modelled)")
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


def find_service(ns: Netns, pkt: Packet) -> Optional[IpvsService]:
    """The virtual service a packet is for (ip_vs_service_find: protocol, address, port)."""
    if not ns.ipvs or pkt.dport is None:
        return None
    index = ns.cached("ipvs", lambda: {(s.protocol, s.vip, s.port): s for s in ns.ipvs})
    return index.get((pkt.proto.upper(), pkt.dst, pkt.dport))
