"""`podnet trace --to` with a bad port: one line naming the flag and the value, a non-zero exit,
no traceback, and an address with a bad port is not taken for a DNS name."""

import pytest

from conftest import run_podnet

TSHOOT = "pod/net-tshoot-4lgv2"


@pytest.mark.parametrize("to, bad", [
    ("pod/web-6d4777fb8c-bp7w6:abc", "abc"),        # was a ValueError traceback
    ("pod/web-6d4777fb8c-bp7w6:99999", "99999"),
    ("node/k8s-guide-worker:x", "x"),
    ("10.0.0.1:abc", "abc"),                        # was looked up as a DNS name
    ("10.0.0.1:0", "0"),
    ("[fd00::1]:x", "x"),
    ("web.default:70000", "70000"),                 # was accepted
    ("web:abc", "abc"),                             # was looked up as the name 'web:abc'
])
def test_a_bad_destination_port_is_one_line(to, bad):
    proc = run_podnet("trace", "--from", TSHOOT, "--to", to)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: --to: expected a port number (1-65535), got {bad!r}"]


@pytest.mark.parametrize("to", ["pod/web-6d4777fb8c-bp7w6:80", "10.0.0.1:80", "[fd00::1]:53/udp", "web:80"])
def test_good_destination_ports_still_trace(to):
    proc = run_podnet("trace", "--no-reply", "--from", TSHOOT, "--to", to)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args, header", [
    # -p (or /proto) wins over the protocol of the Service's or the pod's port: it was ignored
    (["--to", "svc/web:80", "-p", "icmp"], "trace icmp 10.244.1.2 -> 10.107.164.13 "),
    (["--to", "svc/web:80/icmp"], "trace icmp 10.244.1.2 -> 10.107.164.13 "),
    (["--to", "pod/web-6d4777fb8c-2d89v", "-p", "icmp"], "trace icmp 10.244.1.2 -> 10.244.2.3 "),
    (["--to", "svc/kube-dns:53", "-p", "tcp"], "trace tcp 10.244.1.2:40000 -> 10.96.0.10:53 "),
    # without it, the port's own protocol
    (["--to", "svc/kube-dns:53"], "trace udp 10.244.1.2:40000 -> 10.96.0.10:53 "),
    (["--to", "pod/web-6d4777fb8c-2d89v"], "trace tcp 10.244.1.2:40000 -> 10.244.2.3:80 "),
])
def test_the_protocol_asked_for_is_traced(args, header):
    out = run_podnet("trace", "--no-reply", "--from", TSHOOT, *args, check=True).stdout
    line = next(l for l in out.splitlines() if l.startswith("trace "))
    assert line.startswith(header), line
    if "kube-dns" in line and "tcp" in header:
        assert line.endswith("svc/kube-system/kube-dns:dns-tcp")       # the Service's TCP port


def test_junk_after_a_bracketed_address_is_an_error():
    """`[fd00::1]x` is no address (it was read as fd00::1 without a port)."""
    proc = run_podnet("trace", "--from", TSHOOT, "--to", "[fd00::1]x", "-p", "icmp")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("args, line", [
    (["--from", "pod/nope", "--to", "svc/web:80"], "error: --from: no pod named 'nope'"),
    (["--from", "node/nope", "--to", "svc/web:80"], "error: --from: no node named 'nope'"),
    (["--from", TSHOOT, "--to", "svc/nope:80"], "error: --to: no service named 'nope'"),
    (["--from", TSHOOT, "--to", "pod/nope:80"], "error: --to: no pod named 'nope'"),
])
def test_an_unknown_name_says_which_flag_named_it(args, line):
    proc = run_podnet("trace", *args)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [line], proc.stderr


def test_pick_follows_one_given_choice():
    """--pick KEY=N follows option N of the choice KEY (the key -o json lists)."""
    import json
    key = "nat/KUBE-SVC-LOLE4ISW44XBNF3G#2"
    every = json.loads(run_podnet("trace", "--no-reply", "-o", "json", "--from", TSHOOT,
                                  "--to", "svc/web:80").stdout)["outcomes"]
    assert [o["choices"][0]["key"] for o in every] == [key, key]
    for index in (0, 1):
        proc = run_podnet("trace", "--no-reply", "-o", "json", "--from", TSHOOT, "--to", "svc/web:80",
                          "--pick", f"{key}={index}")
        outcomes = json.loads(proc.stdout)["outcomes"]
        assert len(outcomes) == 1
        assert outcomes[0]["forward"]["netns"] == every[index]["forward"]["netns"]
        assert outcomes[0]["choices"][0]["option"] == every[index]["choices"][0]["option"]
    proc = run_podnet("trace", "--from", TSHOOT, "--to", "svc/web:80", "--pick", "nokey")
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: --pick: expected KEY=N")


def test_json_hops_say_what_changed_and_the_hooks_verdict():
    import json
    (outcome,) = json.loads(run_podnet("trace", "-o", "json", "--seed", "1", "--from", TSHOOT,
                                       "--to", "svc/web:80").stdout)["outcomes"]
    hops = outcome["forward"]["hops"]
    nat = next(h for h in hops if h["stage"] == "nat")
    (field,) = nat["changed"]
    assert field == "dst" and nat["changed"]["dst"][1] == outcome["forward"]["packet"].split(" -> ")[1].split(":")[0]
    assert all(h["changed"] == {} for h in hops if h["stage"] in ("route", "neigh", "xmit"))
    assert {h["verdict"] for h in hops if h["stage"] in ("PREROUTING", "FORWARD", "POSTROUTING")} == {"ACCEPT"}
    unsnat = [h for h in outcome["reply"]["hops"] if h["changed"]]
    assert [list(h["changed"]) for h in unsnat] == [["src"]]     # the reply's un-DNAT


@pytest.mark.parametrize("df, result", [("--df", "dropped"), ("--no-df", "delivered")])
def test_df_decides_whether_a_big_datagram_is_dropped_or_fragmented(df, result):
    """The pod's eth0 has the MTU 1500 (kindnet): a 1600-byte DF datagram fails at the sender."""
    import json
    proc = run_podnet("trace", "-o", "json", "--no-reply", "--seed", "1", "--size", "1600", df,
                      "--from", TSHOOT, "--to", "svc/kube-dns:53/udp")
    (outcome,) = json.loads(proc.stdout)["outcomes"]
    assert outcome["forward"]["result"] == result, outcome["forward"]["reason"]
