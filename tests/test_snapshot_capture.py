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


def test_a_negated_policy_rule_keeps_its_not(tmp_path):
    """`ip -j rule` prints `"not": null` for `ip rule add not ...`: the rule still inverts."""
    from podnet.linux.routing import route_get
    ns = f"pnsnap{secrets.token_hex(3)}-r"
    try:
        ip("netns", "add", ns)
        for cmd in ("link add v0 type veth peer name v1", "link set v0 up", "link set v1 up",
                    "addr add 192.0.2.1/24 dev v0", "addr add 198.51.100.1/24 dev v1",
                    "route add 10.0.0.0/8 via 192.0.2.2", "route add table 200 10.0.0.0/8 dev v1",
                    "rule add not fwmark 0x1/0x1 table 200 pref 100"):
            ip("-n", ns, *cmd.split())
        state = load_snapshot(capture(tmp_path / "snap", [ns], include_root=False))
        rule = next(r for r in state.netns(ns).rules if r.priority == 100)
        assert rule.invert
        # as `ip route get 10.1.2.3 [mark 1]` answers in that namespace
        assert route_get(state.netns(ns), "10.1.2.3").dev == "v1"
        assert route_get(state.netns(ns), "10.1.2.3", mark=1).dev == "v0"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
