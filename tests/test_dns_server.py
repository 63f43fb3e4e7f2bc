"""The DNS server on the wire: EDNS0 and truncation, malformed and fuzzed input,
concurrent clients, forwarding and the cache, autopath, swapping the cluster.

All traffic stays on 127.0.0.0/8; the upstream is a FakeUpstream."""

from __future__ import annotations

import concurrent.futures
import ipaddress
import random
import socket
import struct
import subprocess
import time

import dns.flags
import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from podnet import Cluster
from podnet.dns import DNSServer, ServerThread

from conftest import GUIDE_LAB, have
from test_dns_support import FakeUpstream, ask, rrs

ZONE = "cluster.local"

EXTRA = """
apiVersion: v1
kind: Namespace
metadata: {name: apps}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: apps}
spec: {nodeName: k8s-guide-worker, containers: [{name: c, image: busybox}]}
status: {phase: Running, podIP: 127.0.0.5, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: big, namespace: apps}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: big-1, namespace: apps, labels: {kubernetes.io/service-name: big}}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
""" + "".join(f"- addresses: [10.250.0.{i}]\n" for i in range(1, 61)) + """
---
apiVersion: v1
kind: Service
metadata: {name: docs, namespace: default}
spec: {type: ExternalName, externalName: kubernetes.io}
"""


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    d = tmp_path_factory.mktemp("extra")
    (d / "extra.yaml").write_text(EXTRA)
    return Cluster.load([GUIDE_LAB, d])


@pytest.fixture(scope="module")
def upstream():
    up = FakeUpstream({("www.example.org.", "A"): ["192.0.2.1"],
                       ("kubernetes.io.", "A"): ["192.0.2.10"],
                       ("tkng.io.", "A"): ["172.67.201.112", "104.21.21.243"],
                       ("55.2.0.192.in-addr.arpa.", "PTR"): ["host55.example.net."],
                       ("slow.example.", "A"): ["192.0.2.99"]},
                      ttl=300, negative_ttl=60, delay={"slow.example.": 1.5})
    up.start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def served(cluster, upstream):
    clock = Clock()
    server = DNSServer.from_cluster(cluster, upstreams=[upstream.spec], autopath=True, clock=clock)
    thread = ServerThread(server)
    address = thread.start()
    yield server, address, clock
    thread.stop()


def name(svc, ns="default"):
    return f"{svc}.{ns}.svc.{ZONE}"


# ---------------------------------------------------------------- EDNS0, TC

def test_truncation_and_tcp_fallback(served):
    server, addr, _ = served
    big = name("big", "apps")
    plain = ask(addr, big, edns=None)                    # no EDNS: 512 bytes
    assert plain.flags & dns.flags.TC and not plain.answer
    small = ask(addr, big, payload=600)                  # EDNS0 size honoured
    assert small.flags & dns.flags.TC
    fits = ask(addr, big, payload=1232)
    assert not fits.flags & dns.flags.TC and len(fits.answer[0]) == 60
    tcp = ask(addr, big, tcp=True, edns=None)
    assert not tcp.flags & dns.flags.TC
    assert sorted(ipaddress.ip_address(r.address) for r in tcp.answer[0]) == \
        [ipaddress.ip_address(f"10.250.0.{i}") for i in range(1, 61)]


@pytest.mark.skipif(not have("dig"), reason="needs dig")
def test_dig_retries_over_tcp(served):
    _, (host, port), _ = served
    out = subprocess.run(["dig", f"@{host}", "-p", str(port), "+noedns", name("big", "apps")],
                         capture_output=True, text=True, timeout=20).stdout
    assert "Truncated, retrying in TCP mode" in out and "ANSWER: 60," in out


def test_edns_version_do_bit_and_payload(served):
    _, addr, _ = served
    q = dns.message.make_query(name("web"), "A", use_edns=1)
    r = dns.query.udp(q, addr[0], port=addr[1], timeout=3)
    assert r.rcode() == dns.rcode.BADVERS and r.edns == 0
    q = dns.message.make_query(name("web"), "A", use_edns=0, want_dnssec=True)
    r = dns.query.udp(q, addr[0], port=addr[1], timeout=3)
    assert r.ednsflags & dns.flags.DO and r.payload == 1232 and r.answer


def test_refused_and_notimp(served):
    _, addr, _ = served
    q = dns.message.make_query(name("web"), "A", rdclass=dns.rdataclass.CH)
    assert dns.query.udp(q, addr[0], port=addr[1], timeout=3).rcode() == dns.rcode.REFUSED
    q = dns.message.make_query(ZONE, "AXFR")
    assert dns.query.tcp(q, addr[0], port=addr[1], timeout=3).rcode() == dns.rcode.REFUSED
    q = dns.message.make_query(ZONE, "SOA")
    q.set_opcode(dns.opcode.NOTIFY)
    r = raw_exchange(addr, q.to_wire())
    assert len(r) == 1 and rcode_of(r[0]) == dns.rcode.NOTIMP


# --------------------------------------------------------- malformed, fuzzed

def rcode_of(wire: bytes) -> int:
    return wire[3] & 0x0F


PROBE = dns.message.make_query(name("web"), "A")


def raw_exchange(addr, packet: bytes, timeout: float = 5.0) -> list[bytes]:
    """Send `packet`, then a probe query; what came back for `packet` before the
    probe's answer (the server answers in order)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        PROBE.id = (int.from_bytes(packet[:2] or b"\0\0", "big") + 1) & 0xFFFF
        s.sendto(packet, addr)
        s.sendto(PROBE.to_wire(), addr)
        replies = []
        while True:
            data = s.recv(65535)
            if data[:2] == PROBE.id.to_bytes(2, "big") and data[12:12 + 5] == PROBE.to_wire()[12:17]:
                return replies
            replies.append(data)


def well_formed(packet: bytes) -> bool:
    try:
        m = dns.message.from_wire(packet)
    except Exception:       # noqa: BLE001
        return False
    return (not m.flags & dns.flags.QR and m.opcode() == dns.opcode.QUERY and len(m.question) == 1
            and not m.answer and not m.authority and m.edns <= 0)


def check_reply(packet: bytes, replies: list[bytes]) -> None:
    assert len(replies) <= 1
    if len(packet) < 12 or packet[2] & 0x80:
        assert replies == []                # too short, or a response: dropped
        return
    if not replies:
        return
    r = replies[0]
    assert r[:2] == packet[:2] and r[2] & 0x80
    if not well_formed(packet):
        assert rcode_of(r) in (dns.rcode.FORMERR, dns.rcode.NOTIMP) or \
            dns.message.from_wire(r).rcode() == dns.rcode.BADVERS


VALID = dns.message.make_query(name("web"), "A", use_edns=0).to_wire()

MALFORMED = [
    b"", b"\x12", VALID[:11], VALID[:12], VALID[:20], VALID[:-1],
    VALID + b"junk",                                             # trailing bytes
    VALID[:4] + b"\xff\xff" + VALID[6:],                         # 65535 questions
    VALID[:6] + b"\xff\xff\xff\xff\xff\xff" + VALID[12:],        # huge answer/authority/extra counts
    VALID[:12] + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01",  # a 64-byte label
    VALID[:12] + b"\xc0\x0c\x00\x01\x00\x01",                    # a compression pointer to itself
    VALID[:12] + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 4 + b"\x00\x00\x01\x00\x01",  # > 255
    VALID[:4] + b"\x00\x00" + VALID[6:],                         # no question
    VALID[:2] + b"\x80" + VALID[3:],                             # a response: dropped
    VALID[:2] + b"\x28" + VALID[3:],                             # opcode UPDATE
    bytes(range(256)) * 4,
]


@pytest.mark.parametrize("packet", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_get_formerr_or_are_dropped(served, packet):
    server, addr, _ = served
    check_reply(packet, raw_exchange(addr, packet))
    assert server.errors == 0


def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(3)
        if op == 0 and b:
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        elif op == 1 and b:
            del b[rnd.randrange(len(b)):]
        else:
            b[rnd.randrange(len(b) + 1):0] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 8)))
    return bytes(b)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=600),
                 st.integers(0, 2**32).map(lambda seed: mutate(VALID, random.Random(seed))),
                 st.binary(min_size=12, max_size=12).map(          # any header, a valid question
                     lambda h: bytes([h[0], h[1], h[2] & 0x7F]) + h[3:] + VALID[12:])))
def test_fuzzed_queries_never_crash_the_server(served, packet):
    server, addr, _ = served
    check_reply(packet, raw_exchange(addr, packet))
    assert server.errors == 0


def test_tcp_garbage_then_service_as_usual(served):
    server, addr, _ = served
    rnd = random.Random(7)
    for payload in (b"\x00", b"\x00\x05abc", b"\xff\xff" + b"x" * 100, b"\x00\x00",
                    struct.pack("!H", 40) + bytes(rnd.randrange(256) for _ in range(40)),
                    struct.pack("!H", len(VALID)) + VALID[:-3] + b"\x00\x00\x01"):
        with socket.create_connection(addr, timeout=3) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            try:
                while s.recv(65535):
                    pass
            except OSError:
                pass
    assert ask(addr, name("web"), tcp=True).answer
    assert ask(addr, name("web")).answer
    assert server.errors == 0


# --------------------------------------------------------------- concurrency

def test_concurrent_clients(served, cluster):
    _, addr, _ = served
    want = {name("web"): str(cluster.service("web").cluster_ip),
            name("kubernetes"): "10.96.0.1", name("kube-dns", "kube-system"): "10.96.0.10"}
    names = sorted(want)

    def client(i):
        rnd = random.Random(i)
        for _ in range(100):
            n = rnd.choice(names)
            r = ask(addr, n, tcp=rnd.random() < 0.2)
            assert [rd.address for rd in r.answer[0]] == [want[n]]
        return True

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert all(pool.map(client, range(32)))


def test_a_slow_upstream_does_not_hold_other_clients(served):
    _, addr, _ = served
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as slow:
        slow.settimeout(5)
        slow.sendto(dns.message.make_query("slow.example", "A").to_wire(), addr)
        start = time.monotonic()
        assert ask(addr, name("web")).answer
        assert ask(addr, "fast.example.org").rcode() == dns.rcode.NXDOMAIN     # forwarded meanwhile
        assert time.monotonic() - start < 1.0
        late = dns.message.from_wire(slow.recv(65535))
        assert late.answer and time.monotonic() - start >= 1.0


# ---------------------------------------------------------- forward + cache

def test_forward_and_positive_cache(served, upstream):
    server, addr, clock = served
    before = len(upstream.asked)
    r = ask(addr, "www.example.org")
    assert rrs(r.answer) == ["www.example.org. 300 A 192.0.2.1"]     # relayed as is
    assert r.flags & dns.flags.RA and not r.flags & dns.flags.AA
    assert len(upstream.asked) == before + 1
    r = ask(addr, "www.example.org")
    assert rrs(r.answer) == ["www.example.org. 30 A 192.0.2.1"]      # cached: capped at 30
    clock.now += 7
    assert rrs(ask(addr, "www.example.org").answer) == ["www.example.org. 23 A 192.0.2.1"]
    assert len(upstream.asked) == before + 1
    clock.now += 30
    ask(addr, "www.example.org")
    assert len(upstream.asked) == before + 2


def test_negative_cache(served, upstream):
    server, addr, clock = served
    before = len(upstream.asked)
    r = ask(addr, "missing.example.org")
    assert r.rcode() == dns.rcode.NXDOMAIN and r.authority
    r = ask(addr, "missing.example.org")
    assert r.rcode() == dns.rcode.NXDOMAIN
    assert r.authority[0].ttl == 30          # min(SOA TTL 300, minimum 60), capped at 30
    assert len(upstream.asked) == before + 1
    # NODATA is cached too
    ask(addr, "www.example.org", "AAAA")
    r = ask(addr, "www.example.org", "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert len(upstream.asked) == before + 2
    clock.now += 31
    ask(addr, "missing.example.org")
    assert len(upstream.asked) == before + 3


def test_cluster_answers_are_cached_with_decreasing_ttl(served):
    server, addr, clock = served
    n = name("kube-dns", "kube-system")
    first = ask(addr, n, "SRV")
    clock.now += 4
    again = ask(addr, n, "SRV")
    assert {r.ttl for r in again.answer} == {26} and rrs(first.additional) == \
        [line.replace(" 26 ", " 30 ") for line in rrs(again.additional)]


def test_external_name_target_resolved_upstream(served):
    _, addr, _ = served
    r = ask(addr, name("docs"))
    assert [x.rdtype for x in r.answer] == [dns.rdatatype.CNAME, dns.rdatatype.A]
    assert rrs(r.answer) == ["docs.default.svc.cluster.local. 30 CNAME kubernetes.io.",
                             "kubernetes.io. 300 A 192.0.2.10"]
    assert r.flags & dns.flags.AA


def test_reverse_misses_fall_through_upstream(served):
    _, addr, _ = served
    assert rrs(ask(addr, "55.2.0.192.in-addr.arpa.", "PTR").answer) == \
        ["55.2.0.192.in-addr.arpa. 300 PTR host55.example.net."]
    assert rrs(ask(addr, "10.0.96.10.in-addr.arpa.", "PTR").answer) == \
        ["10.0.96.10.in-addr.arpa. 30 PTR kube-dns.kube-system.svc.cluster.local."]


# ------------------------------------------------------------------ autopath

def test_autopath_walks_the_pods_search_path(served, cluster):
    _, addr, _ = served
    pod_ip = "127.0.0.5"         # the apps/client pod; Linux lets us send from it on lo
    r = ask(addr, f"tkng.io.apps.svc.{ZONE}", source=pod_ip)
    assert r.rcode() == dns.rcode.NOERROR
    assert rrs(r.answer) == sorted([f"tkng.io.apps.svc.{ZONE}. 300 CNAME tkng.io.",
                                    "tkng.io. 300 A 104.21.21.243", "tkng.io. 300 A 172.67.201.112"])
    assert r.answer[0].rdtype == dns.rdatatype.CNAME
    web = str(cluster.service("web").cluster_ip)
    r = ask(addr, f"web.default.apps.svc.{ZONE}", source=pod_ip)
    assert rrs(r.answer) == [f"web.default.apps.svc.{ZONE}. 30 CNAME web.default.svc.{ZONE}.",
                             f"web.default.svc.{ZONE}. 30 A {web}"]
    # a client that is no pod gets the plain answer, also after the pod's answer was cached
    assert ask(addr, f"tkng.io.apps.svc.{ZONE}").rcode() == dns.rcode.NXDOMAIN
    # names not under the pod's first search domain are answered as they are
    assert ask(addr, f"tkng.io.svc.{ZONE}", source=pod_ip).rcode() == dns.rcode.NXDOMAIN


# ------------------------------------------------------------------- update

def test_update_swaps_the_cluster(cluster, tmp_path):
    server = DNSServer.from_cluster(cluster)
    with ServerThread(server) as addr:
        assert ask(addr, name("api")).rcode() == dns.rcode.NXDOMAIN
        serial = server.records.serial
        (tmp_path / "api.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n"
            "spec: {clusterIP: 10.96.200.200, ports: [{port: 8080}]}\n")
        server.update(Cluster.load([GUIDE_LAB, tmp_path]))
        assert rrs(ask(addr, name("api")).answer) == [f"{name('api')}. 30 A 10.96.200.200"]
        assert server.records.serial != serial
        assert rrs(ask(addr, "200.200.96.10.in-addr.arpa", "PTR").answer) == \
            [f"200.200.96.10.in-addr.arpa. 30 PTR {name('api')}."]
