"""Names and ids the real controllers would generate, derived deterministically.

Kubernetes draws pod name suffixes and UIDs at random; podnet derives them from
hashes of the owner's identity so the same inputs always give the same names.
The shapes are the real ones: `web-5d9c8b7f6d-x2kqp`, `coredns-7db6d8ff4d-abcde`.
"""

from __future__ import annotations

import hashlib
import json
import uuid

# k8s.io/apimachinery/pkg/util/rand: vowels and confusable characters removed
ALPHANUMS = "bcdfghjklmnpqrstvwxz2456789"
_UID_NAMESPACE = uuid.UUID("6ba7b811-9dad-11d1-80b4-00c04fd430c8")


def safe_encode(s: str) -> str:
    """rand.SafeEncodeString: each character mapped into the safe alphabet."""
    return "".join(ALPHANUMS[ord(c) % len(ALPHANUMS)] for c in s)


def fnv32a(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def pod_template_hash(template: dict, collision_count: int = 0) -> str:
    """controller.ComputeHash: fnv32a of the template, SafeEncodeString'd.

    Upstream hashes Go's spew dump of the struct; podnet hashes the canonical
    JSON of the template, which gives the same shape and stability properties.
    """
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += str(collision_count).encode()
    return safe_encode(str(fnv32a(data)))


def random_suffix(*seed: str, length: int = 5) -> str:
    """utilrand.String(n), derived from `seed` instead of a random source."""
    digest = hashlib.sha256("\x00".join(seed).encode()).digest()
    return "".join(ALPHANUMS[b % len(ALPHANUMS)] for b in digest[:length])


def uid_for(kind: str, namespace: str, name: str) -> str:
    return str(uuid.uuid5(_UID_NAMESPACE, f"{kind}/{namespace}/{name}"))


def stable_offset(key: str, size: int) -> int:
    """A stable pseudo-random offset in [0, size) (for ClusterIP / NodePort picks)."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % size
