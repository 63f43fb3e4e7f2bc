"""The cluster DNS server: UDP and TCP on one address, served from `DNSRecords`.

    server = DNSServer.from_cluster(cluster, upstreams=["127.0.0.1:5300"])
    with ServerThread(server, "127.0.0.1", 5353) as (host, port):   # or: await server.start(...)
        ...                                                           # dig @127.0.0.1 -p 5353 ...
        server.update(new_cluster)        # the lab changed: swap the records atomically

What it does, in CoreDNS's plugin order (cache, autopath, kubernetes, forward):

- cache: answers for repeated questions come from `podnet.dns.cache` (positive
  and negative entries, TTL-respecting); a hit is served without parsing.
- autopath (option): for a query from a pod (found by source IP) whose name
  ends in the pod's first search domain, the server walks the pod's search
  path itself and answers the first name that exists, with a CNAME from the
  name asked, so the client's own walk stops after one query. Unlike CoreDNS it
  does not need `pods verified`: podnet always knows the pods.
- kubernetes: the cluster zone and the reverse zones from `DNSRecords.lookup`;
  reverse misses fall through to the upstreams (CoreDNS `fallthrough
  in-addr.arpa ip6.arpa`); ExternalName targets outside the zone are resolved
  upstream and appended after the CNAME.
- forward: every other name goes to the upstreams (`podnet.dns.forward`);
  without upstreams such names get SERVFAIL.

Wire rules: EDNS0 (the client's UDP payload size is honoured, version > 0 gets
BADVERS, the DO bit is echoed); an answer that does not fit drops the
additional section, then sets TC with empty sections so the client retries
over TCP; malformed queries get FORMERR (header only), unknown opcodes NOTIMP,
classes other than IN REFUSED, zone transfers REFUSED; packets shorter than a
header, and responses (QR set), are dropped. Nothing a client sends can stop
the server.
"""

from __future__ import annotations

import asyncio
import copy
import errno
import os
import socket
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME

from ..errors import PodnetError
from .cache import Cache
from .forward import Forwarder
from .records import DNSRecords

OUR_PAYLOAD = 1232          # the EDNS0 UDP size podnet advertises (DNS flag day 2020)
MAX_INFLIGHT = 2000         # queries being answered at once; more are dropped
TCP_IDLE_TIMEOUT = 10.0
NO_RETRY = (dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP)


@dataclass(slots=True)
class Result:
    """One name's answer inside the server (before it becomes a message)."""
    rcode: int
    answer: list = field(default_factory=list)
    authority: list = field(default_factory=list)
    additional: list = field(default_factory=list)
    aa: bool = False
    ra: bool = False
    ad: bool = False
    tc: bool = False
    # cluster | upstream | no-upstream | upstream-failed | not-sent | refused
    source: str = "cluster"
    walk: list = field(default_factory=list)    # autopath: [(name, rcode, source)]


@dataclass(slots=True)
class Reply:
    message: dns.message.Message
    source: str
    walk: list = field(default_factory=list)


class _State:
    """What one generation of the cluster serves: records and their cache."""
    __slots__ = ("records", "cache", "client_ns")

    def __init__(self, records: DNSRecords, cache: Cache):
        self.records = records
        self.cache = cache
        self.client_ns: dict[str, Optional[str]] = {}

    def namespace_of(self, ip: str) -> Optional[str]:
        try:
            return self.client_ns[ip]
        except KeyError:
            ns = self.client_ns[ip] = self.records.client_namespace(ip)
            return ns


# ---------------------------------------------------------------------------
# wire helpers
# ---------------------------------------------------------------------------

def raw_key(data: bytes) -> Optional[tuple[tuple, int]]:
    """(cache key, UDP size limit) of a plain query, read from its bytes without
    parsing it; None for anything unusual (that takes the full path)."""
    n = len(data)
    if n < 17 or data[2] & 0xF8 or data[4:10] != b"\x00\x01\x00\x00\x00\x00":
        return None
    arcount = (data[10] << 8) | data[11]
    if arcount > 1:
        return None
    i = 12
    while True:
        if i >= n:
            return None
        length = data[i]
        if length == 0:
            i += 1
            break
        if length > 63:
            return None
        i += length + 1
    if i - 12 > 255 or i + 4 > n:
        return None
    qend = i + 4
    question = data[12:qend]
    if arcount == 0:
        if qend != n:
            return None
        return (data[2] & 0x01, data[3] & 0x10, question, False, False), 512
    opt = data[qend:]
    if len(opt) < 11 or opt[0] != 0 or opt[1:3] != b"\x00\x29" or opt[6] != 0:
        return None
    if 11 + ((opt[9] << 8) | opt[10]) != len(opt):
        return None
    payload = (opt[3] << 8) | opt[4]
    return (data[2] & 0x01, data[3] & 0x10, question, True, bool(opt[7] & 0x80)), max(512, payload)


def header_reply(data: bytes, rcode: int) -> bytes:
    """A header-only answer (FORMERR, NOTIMP) to a query we could not read."""
    return data[:2] + bytes([0x80 | (data[2] & 0x79), rcode & 0x0F]) + b"\x00" * 8


def parse_query(data: bytes):
    """A query Message, or the bytes to answer with (FORMERR, NOTIMP, BADVERS),
    or None to drop the packet."""
    if len(data) < 12 or data[2] & 0x80:
        return None
    if (data[2] >> 3) & 0x0F != dns.opcode.QUERY:
        return header_reply(data, dns.rcode.NOTIMP)
    try:
        query = dns.message.from_wire(data)
    except Exception:                       # noqa: BLE001 - anything malformed is FORMERR
        return header_reply(data, dns.rcode.FORMERR)
    if len(query.question) != 1 or query.answer or query.authority:
        return header_reply(data, dns.rcode.FORMERR)
    if query.edns > 0:
        resp = dns.message.make_response(query, our_payload=OUR_PAYLOAD)
        resp.use_edns(0, 0, OUR_PAYLOAD)
        resp.set_rcode(dns.rcode.BADVERS)
        return resp.to_wire()
    return query


def udp_size(query: dns.message.Message) -> int:
    return 512 if query.edns < 0 else max(512, query.payload)


def render(msg: dns.message.Message, max_size: int) -> bytes:
    """The message's bytes within `max_size`: without the additional section if
    need be (RFC 2181 9), else truncated (TC) to the question."""
    try:
        return msg.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        pass
    short = copy.copy(msg)
    short.sections = [msg.question, msg.answer, msg.authority, []]
    try:
        return short.to_wire(max_size=max_size)
    except dns.exception.TooBig:
        pass
    short.sections = [msg.question, [], [], []]
    short.flags |= dns.flags.TC
    return short.to_wire(max_size=max_size)


def _cnamer(res: Result, original: dns.name.Name) -> None:
    """CoreDNS autopath: make the answer start with `original` CNAME <found name>."""
    for rrset in res.answer:
        if rrset.name != original:
            cname = dns.rrset.RRset(original, dns.rdataclass.IN, dns.rdatatype.CNAME)
            cname.update_ttl(rrset.ttl)
            cname.add(CNAME(dns.rdataclass.IN, dns.rdatatype.CNAME, rrset.name))
            res.answer.insert(0, cname)
            return


def log_line(addr, proto: str, query_wire: bytes, response_wire: Optional[bytes], seconds: float) -> str:
    """A query as CoreDNS's log plugin prints it."""
    try:
        q = dns.message.from_wire(query_wire)
        qs = q.question[0]
        question = (f"{dns.rdatatype.to_text(qs.rdtype)} {dns.rdataclass.to_text(qs.rdclass)} "
                    f"{qs.name.to_text()}")
        do = "true" if q.ednsflags & dns.flags.DO else "false"
        size = q.payload if q.edns >= 0 else 512
    except Exception:                       # noqa: BLE001
        question, do, size = "- - -", "false", 512
        q = None
    qid = int.from_bytes(query_wire[:2], "big") if len(query_wire) >= 2 else 0
    if response_wire is None:
        outcome = "DROPPED - 0"
    else:
        r = dns.message.from_wire(response_wire, question_only=True) if len(response_wire) >= 12 else None
        flags = ",".join(f for f in ("qr", "aa", "tc", "rd", "ra")
                         if r is not None and r.flags & getattr(dns.flags, f.upper()))
        rcode = dns.rcode.to_text(r.rcode()) if r is not None else "-"
        outcome = f"{rcode} {flags} {len(response_wire)}"
    return (f'[INFO] {addr[0]}:{addr[1]} - {qid} "{question} {proto} {len(query_wire)} {do} {size}" '
            f"{outcome} {seconds:.7f}s")


# ---------------------------------------------------------------------------
# the server
# ---------------------------------------------------------------------------

class DNSServer:
    def __init__(self, records: DNSRecords, *, upstreams: Iterable[str] = (), autopath: bool = False,
                 cache_ttl: int = 30, cache_size: int = 10000, timeout: float = 2.0,
                 not_sent: bool = False, log: Optional[Callable[[str], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        """`not_sent`: instead of SERVFAIL, names that would go upstream get an empty
        answer marked `not-sent` (for `podnet dns resolve` without upstreams)."""
        self.forwarder = Forwarder(upstreams, timeout=timeout)
        self.autopath = autopath
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.not_sent = not_sent
        self.log = log
        self.clock = clock
        self._state = _State(records, Cache(cache_ttl, cache_size, clock))
        self._udp = None
        self._tcp = None
        self._tasks: set = set()
        self.address: Optional[tuple[str, int]] = None
        self.errors = 0

    @classmethod
    def from_cluster(cls, cluster, *, local_ips: Iterable[str] = ("127.0.0.1",),
                     upstreams: Optional[Iterable[str]] = None, autopath: Optional[bool] = None,
                     **kwargs) -> "DNSServer":
        """A server for a reconciled cluster; upstreams and autopath default to the
        cluster's `dns` config."""
        cfg = cluster.config.dns
        return cls(DNSRecords.from_cluster(cluster, local_ips=local_ips),
                   upstreams=cfg.upstreams if upstreams is None else upstreams,
                   autopath=cfg.autopath if autopath is None else autopath, **kwargs)

    @property
    def records(self) -> DNSRecords:
        return self._state.records

    @property
    def cache(self) -> Cache:
        return self._state.cache

    def update(self, source, *, local_ips: Iterable[str] = ("127.0.0.1",)) -> None:
        """Serve a new cluster (or DNSRecords) from the next query on, with an empty
        cache. Safe to call from any thread."""
        records = source if isinstance(source, DNSRecords) else \
            DNSRecords.from_cluster(source, local_ips=local_ips)
        self._state = _State(records, Cache(self.cache_ttl, self.cache_size, self.clock))

    # ---------------------------------------------------------------- answering
    async def answer(self, query: dns.message.Message, client_ip: str = "127.0.0.1") -> Reply:
        """The reply to a parsed query from `client_ip` (no cache)."""
        return await self._answer(query, client_ip, self._state)

    async def _answer(self, query, client_ip, state: _State) -> Reply:
        q = query.question[0]
        resp = dns.message.make_response(query, our_payload=OUR_PAYLOAD)
        resp.flags |= query.flags & dns.flags.CD
        if query.edns >= 0:
            resp.ednsflags |= query.ednsflags & dns.flags.DO
        if q.rdclass != dns.rdataclass.IN:
            res = Result(dns.rcode.REFUSED, source="refused")
        else:
            res = await self._resolve_autopath(q.name, q.rdtype, client_ip, state)
        resp.set_rcode(res.rcode)
        resp.answer.extend(res.answer)
        resp.authority.extend(res.authority)
        resp.additional.extend(res.additional)
        for flag, on in ((dns.flags.AA, res.aa), (dns.flags.RA, res.ra), (dns.flags.AD, res.ad),
                         (dns.flags.TC, res.tc)):
            if on:
                resp.flags |= flag
        return Reply(resp, res.source, res.walk)

    async def _resolve_autopath(self, qname, rdtype, client_ip, state: _State) -> Result:
        records = state.records
        if self.autopath and records.in_cluster_zone(qname):
            ns = state.namespace_of(client_ip)
            search = records.search_path(ns) if ns else None
            if search and qname.is_subdomain(search[0]) and qname != search[0]:
                base = qname.relativize(search[0])
                walk, first = [], None
                for domain in search:
                    name = base.derelativize(domain)
                    res = await self._resolve(name, rdtype, state)
                    walk.append((name, res.rcode, res.source))
                    first = first or res
                    if res.rcode in NO_RETRY or res.rcode == dns.rcode.NXDOMAIN:
                        continue
                    _cnamer(res, qname)
                    res.walk = walk
                    return res
                first.walk = walk
                return first
        return await self._resolve(qname, rdtype, state)

    async def _resolve(self, qname, rdtype, state: _State) -> Result:
        ans = state.records.lookup(qname, rdtype)
        can_forward = bool(self.forwarder) or self.not_sent
        if ans is None or (ans.fallthrough and can_forward):
            return await self.forward(qname, rdtype)
        res = Result(ans.rcode, list(ans.answer), list(ans.authority), list(ans.additional), aa=True)
        if ans.rcode == dns.rcode.REFUSED:
            res.aa, res.source = False, "refused"
        if ans.chase and self.forwarder:
            up = await self.forward(*ans.chase)
            res.answer += up.answer
            res.tc = res.tc or up.tc
        return res

    async def forward(self, qname, rdtype) -> Result:
        """Ask the upstreams (what the forward plugin does)."""
        if not self.forwarder:
            if self.not_sent:
                return Result(dns.rcode.NOERROR, source="not-sent")
            return Result(dns.rcode.SERVFAIL, source="no-upstream")
        up = await self.forwarder.query(qname, rdtype)
        if up is None:
            return Result(dns.rcode.SERVFAIL, source="upstream-failed")
        f = up.flags
        return Result(up.rcode(), list(up.answer), list(up.authority), list(up.additional),
                      aa=bool(f & dns.flags.AA), ra=bool(f & dns.flags.RA), ad=bool(f & dns.flags.AD),
                      tc=bool(f & dns.flags.TC), source="upstream")

    # ------------------------------------------------------------- wire level
    def _key(self, key, client_ip: str, state: _State):
        return (key, state.namespace_of(client_ip)) if self.autopath else key

    def cached(self, data: bytes, client_ip: str, tcp: bool) -> Optional[bytes]:
        """The answer to `data` from the cache, without parsing it; None on a miss."""
        rk = raw_key(data)
        if rk is None:
            return None
        state = self._state
        got = state.cache.get(self._key(rk[0], client_ip, state))
        if got is None:
            return None
        entry, age = got
        size = 65535 if tcp else rk[1]
        wire = entry.renders.get((age, size))
        if wire is None:
            if len(entry.renders) > 8:
                entry.renders.clear()
            wire = entry.renders[(age, size)] = render(entry.aged(age), size)
        return data[:2] + wire[2:]

    async def respond(self, query: dns.message.Message, data: bytes, client_ip: str, tcp: bool) -> bytes:
        """Answer a parsed query; cache the answer under its raw key."""
        state = self._state
        reply = await self._answer(query, client_ip, state)
        rk = raw_key(data)
        if rk is not None and reply.source in ("cluster", "upstream"):
            state.cache.put(self._key(rk[0], client_ip, state), reply.message)
        return render(reply.message, 65535 if tcp else udp_size(query))

    async def handle(self, data: bytes, client_ip: str = "127.0.0.1", tcp: bool = False) -> Optional[bytes]:
        """The bytes to send back for the bytes received (None: send nothing)."""
        out = self.cached(data, client_ip, tcp)
        if out is not None:
            return out
        parsed = parse_query(data)
        if not isinstance(parsed, dns.message.Message):
            return parsed
        return await self.respond(parsed, data, client_ip, tcp)

    def _failed(self, where: str) -> None:
        self.errors += 1
        if self.log:
            self.log(f"[ERROR] {where}: {traceback.format_exc(limit=3).strip()}")

    # ---------------------------------------------------------------- sockets
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on UDP and TCP `host:port` (0: any free port); returns the address."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        for attempt in range(20 if port == 0 else 1):
            try:
                udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UDPProtocol(self), local_addr=(host, port), family=family)
            except OSError as e:
                raise _listen_error(host, port, e) from None
            sock = udp.get_extra_info("socket")
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            except OSError:
                pass
            bound = sock.getsockname()[1]
            try:
                tcp = await asyncio.start_server(self._tcp_client, host, bound, family=family,
                                                 reuse_address=True)
            except OSError as e:
                udp.close()
                if port == 0 and e.errno == errno.EADDRINUSE:
                    continue
                raise _listen_error(host, bound, e) from None
            self._udp, self._tcp = udp, tcp
            self.address = (host, bound)
            return self.address
        raise PodnetError(f"cannot listen on {host}: no free port for both UDP and TCP")

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
            await self._tcp.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        self._udp = self._tcp = None

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                data = await asyncio.wait_for(reader.readexactly(int.from_bytes(head, "big")),
                                              TCP_IDLE_TIMEOUT)
                start = time.perf_counter()
                try:
                    out = await self.handle(data, peer[0], tcp=True)
                except Exception:               # noqa: BLE001
                    self._failed("tcp")
                    out = header_reply(data, dns.rcode.SERVFAIL) if len(data) >= 12 else None
                if self.log:
                    self.log(log_line(peer, "tcp", data, out, time.perf_counter() - start))
                if out:
                    writer.write(len(out).to_bytes(2, "big") + out)
                    await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, OSError):
            pass
        except Exception:                       # noqa: BLE001
            self._failed("tcp connection")
        finally:
            writer.close()


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer):
        self.server = server
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def error_received(self, exc) -> None:      # ICMP errors from clients that went away
        pass

    def datagram_received(self, data: bytes, addr) -> None:
        server = self.server
        start = time.perf_counter()
        try:
            out = server.cached(data, addr[0], False)
            if out is None:
                parsed = parse_query(data)
                if isinstance(parsed, dns.message.Message):
                    if len(server._tasks) >= MAX_INFLIGHT:
                        return
                    task = asyncio.get_running_loop().create_task(self._answer(parsed, data, addr, start))
                    server._tasks.add(task)
                    task.add_done_callback(server._tasks.discard)
                    return
                out = parsed
        except Exception:                       # noqa: BLE001
            server._failed("udp")
            return
        if server.log:
            server.log(log_line(addr, "udp", data, out, time.perf_counter() - start))
        if out:
            self.transport.sendto(out, addr)

    async def _answer(self, query, data, addr, start) -> None:
        server = self.server
        try:
            out = await server.respond(query, data, addr[0], tcp=False)
        except Exception:                       # noqa: BLE001
            server._failed("udp")
            out = header_reply(data, dns.rcode.SERVFAIL)
        if server.log:
            server.log(log_line(addr, "udp", data, out, time.perf_counter() - start))
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(out, addr)


def _listen_error(host: str, port: int, e: OSError) -> PodnetError:
    reason = os.strerror(e.errno).lower() if e.errno else str(e)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return PodnetError(f"cannot listen on {where}: {reason}")


class ServerThread:
    """A DNSServer on its own event loop in a background thread (tests, the lab).

        with ServerThread(server, "127.0.0.1", 0) as (host, port): ...
    """

    def __init__(self, server: DNSServer, host: str = "127.0.0.1", port: int = 0):
        self.server, self.host, self.port = server, host, port
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.thread: Optional[threading.Thread] = None
        self.address: Optional[tuple[str, int]] = None
        self._error: Optional[BaseException] = None

    def start(self) -> tuple[str, int]:
        ready = threading.Event()

        def run() -> None:
            loop = self.loop = asyncio.new_event_loop()
            try:
                self.address = loop.run_until_complete(self.server.start(self.host, self.port))
            except BaseException as e:          # noqa: BLE001 - reported by start()
                self._error = e
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.close())
                loop.close()

        self.thread = threading.Thread(target=run, name="podnet-dns", daemon=True)
        self.thread.start()
        ready.wait()
        if self._error is not None:
            raise self._error
        return self.address

    def stop(self) -> None:
        if self.loop is not None and self.thread is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    def __enter__(self) -> tuple[str, int]:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


async def watch_manifests(paths: list[str], server: DNSServer, *, interval: float = 2.0,
                          local_ips: Iterable[str] = ("127.0.0.1",),
                          report: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> None:
    """Reload the cluster when a manifest file changes, and serve it (`serve --reload`)."""
    from ..api.loader import iter_manifest_files
    from ..cluster import Cluster

    def signature():
        out = []
        for f in iter_manifest_files(paths):
            try:
                st = f.stat()
                out.append((str(f), st.st_mtime_ns, st.st_size))
            except OSError:
                pass
        return out

    loop = asyncio.get_running_loop()
    seen = await loop.run_in_executor(None, signature)
    while True:
        await asyncio.sleep(interval)
        now = await loop.run_in_executor(None, signature)
        if now == seen:
            continue
        seen = now
        try:
            cluster = await loop.run_in_executor(None, Cluster.load, paths)
        except PodnetError as e:
            report(f"reload failed, still serving the previous cluster: {e}")
            continue
        server.update(cluster, local_ips=local_ips)
        report(f"reloaded: {len(cluster.services)} services, {len(cluster.pods)} pods "
               f"(serial {server.records.serial})")
