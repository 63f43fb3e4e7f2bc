"""IPVS mh (Maglev hashing) as net/netfilter/ipvs/ip_vs_mh.c computes it, and the kernel's
hsiphash it is built on (lib/siphash.c). No kernel differential: this kernel has no ip_vs
(tests/test_lab_ipvs.py skips), so the hash is checked against lib/test_siphash.c's
published vectors and the table against the Maglev paper's own formulation."""

from __future__ import annotations

import ipaddress
from collections import Counter

from podnet.linux.netfilter import Packet
from podnet.linux.state import IpvsRealServer, IpvsService
from podnet.sim import ipvs as sched
from podnet.sim.siphash import hsiphash, hsiphash_u32, siphash

ip = ipaddress.ip_address

# lib/test_siphash.c: key 00 01 .. 0f, input 00 01 .. (i-1) for vector i
TEST_KEY = (0x0706050403020100, 0x0F0E0D0C0B0A0908)
TEST_VECTORS_SIPHASH = [
    0x726fdb47dd0e0e31, 0x74f839c593dc67fd, 0x0d6c8009d9a94f5a, 0x85676696d7fb7e2d,
    0xcf2794e0277187b7, 0x18765564cd99a68d, 0xcbc9466e58fee3ce, 0xab0200f58b01d137,
    0x93f5f5799a932462, 0x9e0082df0ba9e4b0, 0x7a5dbbc594ddb9f3, 0xf4b32f46226bada7,
    0x751e8fbc860ee5fb, 0x14ea5627c0843d90, 0xf723ca908e7af2ee, 0xa129ca6149be45e5,
    0x3f2acc7f57c29bdb, 0x699ae9f52cbe4794, 0x4bc1b3f0968dd39c, 0xbb6dc91da77961bd,
    0xbed65cf21aa2ee98, 0xd0f2cbb02e3b67c7, 0x93536795e3a33e88, 0xa80c038ccd5ccec8,
    0xb8ad50c6f649af94, 0xbce192de8a85b8ea, 0x17d835b85bbb15f3, 0x2f2e6163076bcfad,
    0xde4daaaca71dc9a5, 0xa6a2506687956571, 0xad87a3535c49ef28, 0x32d892fad841c342,
    0x7127512f72f27cce, 0xa7f32346f95978e3, 0x12e0b01abb051238, 0x15e034d40fa197ae,
    0x314dffbe0815a3b4, 0x027990f029623981, 0xcadcd4e59ef40c4d, 0x9abfd8766a33735c,
    0x0e3ea96b5304a7d0, 0xad0c42d6fc585992, 0x187306c89bc215a9, 0xd4a60abcf3792b95,
    0xf935451de4f21df2, 0xa9538f0419755787, 0xdb9acddff56ca510, 0xd06c98cd5c0975eb,
    0xe612a3cb9ecba951, 0xc766e62cfcadaf96, 0xee64435a9752fe72, 0xa192d576b245165a,
    0x0a8787bf8ecb74b2, 0x81b3e73d20b49b6f, 0x7fa8220ba3b2ecea, 0x245731c13ca42499,
    0xb78dbfaf3a8d83bd, 0xea1ad565322a1a0b, 0x60e61c23a3795013, 0x6606d7e446282b93,
    0x6ca4ecb15c5f91e1, 0x9f626da15c9625f3, 0xe51b38608ef25f57, 0x958a324ceb064572,
]
# the BITS_PER_LONG == 64 hsiphash vectors (SipHash-1-3 truncated to u32)
TEST_VECTORS_HSIPHASH = [
    0x050fc4dc, 0x7d57ca93, 0x4dc7d44d, 0xe7ddf7fb, 0x88d38328, 0x49533b67, 0xc59f22a7, 0x9bb11140,
    0x8d299a8e, 0x6c063de4, 0x92ff097f, 0xf94dc352, 0x57b4d9a2, 0x1229ffa7, 0xc0f95d34, 0x2a519956,
    0x7d908b66, 0x63dbd80c, 0xb473e63e, 0x8d297d1c, 0xa6cce040, 0x2b45f844, 0xa320872e, 0xdae6c123,
    0x67349c8c, 0x705b0979, 0xca9913a5, 0x4ade3b35, 0xef6cd00d, 0x4ab1e1f4, 0x43c5e663, 0x8c21d1bc,
    0x16a7b60d, 0x7a8ff9bf, 0x1f2a753e, 0xbf186b91, 0xada26206, 0xa3c33057, 0xae3a36a1, 0x7b108392,
    0x99e41531, 0x3f1ad944, 0xc8138825, 0xc28949a6, 0xfaf8876b, 0x9f042196, 0x68b1d623, 0x8b5114fd,
    0xdf074c46, 0x12cc86b3, 0x0a52098f, 0x9d292f9a, 0xa2f41f12, 0x43a71ed0, 0x73f0bce6, 0x70a7e980,
    0x243c6d75, 0xfdb71513, 0xa67d8a08, 0xb7e8f148, 0xf7a644ee, 0x0f1837f2, 0x4b6694e0, 0xb7bbb3a8,
]


def test_siphash_and_hsiphash_match_the_kernel_self_test():
    for i in range(64):
        data = bytes(range(i))
        assert siphash(data, TEST_KEY) == TEST_VECTORS_SIPHASH[i], i
        assert hsiphash(data, TEST_KEY) == TEST_VECTORS_HSIPHASH[i], i
    # hsiphash_1u32(0x03020100): a u32 in memory, as ip_vs_mh_hashkey hashes one
    assert hsiphash_u32(0x03020100, TEST_KEY) == TEST_VECTORS_HSIPHASH[4]


def test_mh_constants_are_the_kernels():
    assert sched.MH_TAB_SIZE == 4093 and sched.MH_TAB_BITS == 6     # CONFIG_IP_VS_MH_TAB_INDEX=12
    assert sched.MH_HASH1 == (2654435761, 2654435761) and sched.MH_HASH2 == (2654446892, 2654446892)
    # the key: hsiphash of offset + port + address as one u32 (wrapping)
    fold = int(ip("10.244.1.2"))
    assert sched.mh_hashkey(fold, 40000, sched.MH_HASH1, 7) == hsiphash_u32(fold + 40007, sched.MH_HASH1)
    assert sched.mh_hashkey(0xFFFFFFFF, 2, sched.MH_HASH1) == hsiphash_u32(1, sched.MH_HASH1)


def _svc(weights, flags=("mh-port",), base="10.244"):
    reals = [IpvsRealServer(ip(f"{base}.{i}.5"), 8080, w) for i, w in enumerate(weights)]
    return IpvsService("TCP", ip("10.96.0.5"), 80, "mh", reals=reals, sched_flags=flags)


def _table(svc, last_weight=lambda r: r.weight):
    order = sched.kernel_order(svc)
    return sched.mh_lookup(sched._mh_dests(svc, order, last_weight))


def _paper_fill(dests):
    """The Maglev paper's populate (3.4, Pseudocode 1) over whole permutation lists, each
    destination taking `turns` entries per round; offset/skip/turns as ip_vs_mh_permutate."""
    size = sched.MH_TAB_SIZE
    weights = [w for _, _, w in dests if w > 0]
    g = 0
    for w in weights:
        while w:
            g, w = w, g % w
    shift = max((max(weights) // g).bit_length() - sched.MH_TAB_BITS, 0)
    perms, turns = [], []
    for fold, port, w in dests:
        offset = hsiphash_u32(fold + port, sched.MH_HASH1) % size
        skip = hsiphash_u32(fold + port, sched.MH_HASH2) % (size - 1) + 1
        perms.append([(offset + j * skip) % size for j in range(size)])
        turns.append((w // g) >> shift or (1 if w else 0))
    nxt = [0] * len(dests)
    entry = [None] * size
    filled = 0
    while filled < size:
        for d in range(len(dests)):
            for _ in range(turns[d]):
                while entry[perms[d][nxt[d]]] is not None:
                    nxt[d] += 1
                entry[perms[d][nxt[d]]] = d
                nxt[d] += 1
                filled += 1
                if filled == size:
                    return entry
    return entry


def test_mh_table_is_the_maglev_fill_in_proportion_to_the_weights():
    even = _table(_svc([1, 1, 1]))
    assert sorted(Counter(even).values()) == [1364, 1364, 1365]       # 4093 = 3 * 1364 + 1
    # weights 1:2:3 take 1, 2 and 3 slots a round (kernel order: the last added first)
    weighted = _table(_svc([1, 2, 3]))
    assert Counter(weighted) == {0: 3 * 682 + 1, 1: 2 * 682, 2: 682}   # 4093 = 6 * 682 + 1
    assert _table(_svc([2, 4, 6])) == weighted                         # divided by their gcd
    # big weights are shifted to 6 bits (ip_vs_mh_shift_weight): 1000 -> 62 turns, 1 -> 1
    assert Counter(_table(_svc([1, 1000]))) == {0: 4093 - 4093 // 63, 1: 4093 // 63}
    for weights in ([1, 1, 1], [3, 1, 0, 2], [5, 7]):
        svc = _svc(weights)
        dests = sched._mh_dests(svc, sched.kernel_order(svc), lambda r: r.weight)
        assert list(_table(svc)) == _paper_fill(dests), weights
    # nothing with a weight: an empty table (ip_vs_mh_reset)
    assert set(_table(_svc([0, 0]))) == {None}


def _pick(svc, src, sport, choose=None):
    def no_branch(key, options):
        raise AssertionError(f"unexpected branch {options}")
    return sched.schedule(svc, Packet(ip(src), svc.vip, "tcp", sport, 80), choose or no_branch, "k")


def test_mh_sends_a_client_to_the_real_server_its_slot_names():
    svc = _svc([1, 1, 1, 1])
    table, order = _table(svc), sched.kernel_order(svc)
    for n in range(40):
        src, sport = f"10.244.7.{n + 1}", 40000 + 17 * n
        pick = _pick(svc, src, sport)
        slot = hsiphash_u32(int(ip(src)) + sport, sched.MH_HASH1) % 4093
        assert pick.index == order[table[slot]]
        assert f"Maglev hash of the source address {src} and port {sport} -> slot {slot} of 4093" == pick.how
        assert _pick(svc, src, sport).index == pick.index                # the same client: the same one


def test_mh_port_flag_decides_whether_the_source_port_counts():
    with_port, without = _svc([1, 1, 1]), _svc([1, 1, 1], flags=())
    ports = range(40000, 40060)
    assert len({_pick(without, "10.244.9.9", p).index for p in ports}) == 1
    assert "and port" not in _pick(without, "10.244.9.9", 40000).how
    assert {_pick(with_port, "10.244.9.9", p).index for p in ports} == {0, 1, 2}
    # ICMP has no port to hash (ip_vs_mh_get_port)
    icmp = sched.schedule(with_port, Packet(ip("10.244.9.9"), with_port.vip, "icmp", None, None),
                          lambda k, o: 0, "k")
    assert icmp.index == _pick(without, "10.244.9.9", 1).index


def test_mh_keeps_most_clients_where_they_were_when_a_real_server_goes():
    before, after = _svc([1, 1, 1, 1, 1]), _svc([1, 1, 1, 1, 1])
    del after.reals[2]
    moved = stayed = 0
    for n in range(300):
        src, sport = f"10.244.{n % 7}.{n % 250 + 1}", 30000 + 101 * n
        was = before.reals[_pick(before, src, sport).index]
        now = after.reals[_pick(after, src, sport).index]
        if was.ip != before.reals[2].ip:
            stayed += was == now
            moved += was != now
    assert moved < 0.1 * (moved + stayed)           # consistent hashing: a few, not most


def test_mh_weight_zero_without_and_with_fallback():
    # added at weight 0 (ipvsadm-restore) the real server has no slot; quiesced from weight 1
    # (graceful termination) it keeps its slots and its clients get no destination, or
    # another one with mh-fallback. Both are possible: a branch where they differ.
    for flags in (("mh-port",), ("mh-port", "mh-fallback")):
        svc = _svc([1, 0, 1], flags=flags)
        quiesced, order = _table(svc, lambda r: r.weight or 1), sched.kernel_order(svc)
        clients = [(f"10.244.8.{n % 200 + 1}", 40000 + n) for n in range(200)]
        hit = [c for c in clients
               if order[quiesced[hsiphash_u32(int(ip(c[0])) + c[1], sched.MH_HASH1) % 4093]] == 1]
        def options(c):
            seen = []
            _pick(svc, *c, lambda k, o: seen.append(o) or 0)
            return seen
        # without mh-fallback every client of its slots is a branch; with it, those whose
        # rehash lands elsewhere than the table without it
        branching = [c for c in hit if options(c)]
        assert branching and (branching == hit) == ("mh-fallback" not in flags)
        src, sport = branching[0]
        seen = options(branching[0])
        added = _pick(svc, src, sport, lambda k, o: 0)
        assert added.index in (0, 2) and "(if weight-0 real servers added with weight 0)" in added.how
        gone = _pick(svc, src, sport, lambda k, o: 1)
        assert "10.244.1.5:8080, which has weight 0" in gone.how
        if "mh-fallback" not in flags:
            assert gone.index is None and seen[0][1][0].startswith("no destination")
        else:
            assert gone.index in (0, 2) and "; mh-fallback: rehash " in gone.how
        # a client the quiesced server's slots do not matter to: no branch
        other = next(c for c in clients if c not in hit and
                     _pick(svc, *c, lambda k, o: 0).index == _pick(svc, *c, lambda k, o: 1).index)
        assert _pick(svc, *other).index in (0, 2)
    # every real server quiesced: no destination either way, no branch
    assert _pick(_svc([0, 0]), "10.244.8.1", 40000).index is None


def test_mh_folds_ipv6_addresses():
    svc = IpvsService("TCP", ip("fd00::5"), 80, "mh", sched_flags=(),
                      reals=[IpvsRealServer(ip(f"fd00:10:244:{i}::5"), 8080, 1) for i in range(3)])
    src = ip("fd00:10:244:9::7")
    words = [int(src) >> s & 0xFFFFFFFF for s in (96, 64, 32, 0)]
    slot = hsiphash_u32(words[0] ^ words[1] ^ words[2] ^ words[3], sched.MH_HASH1) % 4093
    pick = sched.schedule(svc, Packet(src, svc.vip, "tcp", 40000, 80), lambda k, o: 0, "k")
    assert pick.index == sched.kernel_order(svc)[_table(svc)[slot]] and f"slot {slot} " in pick.how
