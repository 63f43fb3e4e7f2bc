"""`podnet snapshot` of real namespaces: veths pair up by the peer's namespace id, not by
guessing from interface numbers (which repeat in every fresh namespace)."""

import secrets
import subprocess

import pytest

from podnet.snapshot.capture import capture
from podnet.snapshot.load import load_snapshot

pytestmark = pytest.mark.netns


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_veths_between_fresh_namespaces_pair_with_their_own_peers(tmp_path):
    tag = secrets.token_hex(3)
    a, b, c, d = (f"pnsnap{tag}-{x}" for x in "abcd")
    try:
        for ns in (a, b, c, d):
            ip("netns", "add", ns)
        # two pairs whose ends all have ifindex 2 and peer index 2
        ip("-n", a, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", b)
        ip("-n", c, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", d)
        state = load_snapshot(capture(tmp_path / "snap", [a, b, c, d], include_root=False))
        assert state.namespaces[a].links["v0"].peer == (b, "v1")
        assert state.namespaces[c].links["v0"].peer == (d, "v1")
        assert state.namespaces[d].links["v1"].peer == (c, "v0")
    finally:
        for ns in (a, b, c, d):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
