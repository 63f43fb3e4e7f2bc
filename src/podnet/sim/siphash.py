"""The kernel's hsiphash (lib/siphash.c) as a 64-bit little-endian kernel computes it.

    hsiphash(data, (k0, k1)) -> u32

On BITS_PER_LONG == 64 the kernel's "HalfSipHash" is SipHash-1-3 (one
compression round per 8-byte word, three finalisation rounds) keyed with two
u64 words, and the u64 result is truncated to the u32 the function returns
("on 64-bit, we make HalfSipHash1-3 actually be SipHash1-3, for performance
reasons"). 32-bit kernels run the real HalfSipHash-1-3 with u32 keys and get
other values: not modelled. The data is read as little-endian words
(le64_to_cpup / get_unaligned_le32), so a u32 hashed from memory, as IPVS mh
does, is its value on x86-64 and arm64 (a big-endian kernel would hash its
bytes swapped). lib/test_siphash.c's vectors check this (tests/test_ipvs_mh.py).
"""

from __future__ import annotations

MASK64 = (1 << 64) - 1


def _rol(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK64


def _sipround(v0: int, v1: int, v2: int, v3: int) -> tuple[int, int, int, int]:
    v0 = (v0 + v1) & MASK64; v1 = _rol(v1, 13); v1 ^= v0; v0 = _rol(v0, 32)
    v2 = (v2 + v3) & MASK64; v3 = _rol(v3, 16); v3 ^= v2
    v0 = (v0 + v3) & MASK64; v3 = _rol(v3, 21); v3 ^= v0
    v2 = (v2 + v1) & MASK64; v1 = _rol(v1, 17); v1 ^= v2; v2 = _rol(v2, 32)
    return v0, v1, v2, v3


def siphash(data: bytes, key: tuple[int, int], c_rounds: int = 2, d_rounds: int = 4) -> int:
    """SipHash-c-d of `data` with the 128-bit key as two u64 words (siphash_key_t); u64."""
    k0, k1 = key
    # PREAMBLE: "somepseudorandomlygeneratedbytes" xor the key
    v0 = 0x736F6D6570736575 ^ k0
    v1 = 0x646F72616E646F6D ^ k1
    v2 = 0x6C7967656E657261 ^ k0
    v3 = 0x7465646279746573 ^ k1
    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(data[i:i + 8], "little")
        v3 ^= m
        for _ in range(c_rounds):
            v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
        v0 ^= m
    # the last word: the remaining bytes, the length in its top byte
    b = ((len(data) & 0xFF) << 56) | int.from_bytes(data[full:], "little")
    v3 ^= b
    for _ in range(c_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    v0 ^= b
    v2 ^= 0xFF
    for _ in range(d_rounds):
        v0, v1, v2, v3 = _sipround(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def hsiphash(data: bytes, key: tuple[int, int]) -> int:
    """hsiphash() on a 64-bit kernel: SipHash-1-3, the u64 result truncated to u32."""
    return siphash(data, key, 1, 3) & 0xFFFFFFFF


def hsiphash_u32(value: int, key: tuple[int, int]) -> int:
    """hsiphash(&v, sizeof(v), key) of a u32 `v` in memory (little-endian), = hsiphash_1u32."""
    return hsiphash((value & 0xFFFFFFFF).to_bytes(4, "little"), key)
