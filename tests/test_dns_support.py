"""Helpers shared by the DNS tests (this module has no tests of its own).

FakeUpstream is a local DNS server on 127.0.0.1 standing in for the resolvers
podnet forwards to: it answers from a small table, counts what it was asked,
and can truncate over UDP or answer late. No test sends anything elsewhere.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.rrset


class FakeUpstream:
    """answers: {("name.", "A"): ["1.2.3.4", ...]}; any other name: NXDOMAIN with
    an SOA (minimum `negative_ttl`). `truncate_udp`: names answered with TC over
    UDP (full answer over TCP). `delay`: {name: seconds} before answering."""

    def __init__(self, answers: dict, *, ttl: int = 5, negative_ttl: int = 60,
                 truncate_udp=(), delay=None):
        self.answers = {(dns.name.from_text(n), dns.rdatatype.from_text(t)): v
                        for (n, t), v in answers.items()}
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.truncate_udp = {dns.name.from_text(n) for n in truncate_udp}
        self.delay = {dns.name.from_text(n): s for n, s in (delay or {}).items()}
        self.asked: list[tuple[str, str, str]] = []     # (name, type, udp|tcp)
        self.address = None
        self._loop = None
        self._thread = None

    # ------------------------------------------------------------ answers
    def reply(self, query: dns.message.Message, tcp: bool) -> dns.message.Message:
        q = query.question[0]
        self.asked.append((q.name.to_text(), dns.rdatatype.to_text(q.rdtype), "tcp" if tcp else "udp"))
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.RA
        values = self.answers.get((q.name, q.rdtype))
        if q.name in self.truncate_udp and not tcp:
            resp.flags |= dns.flags.TC
        elif values is not None:
            resp.answer.append(dns.rrset.from_text_list(q.name, self.ttl, "IN", q.rdtype, values))
        elif any(name == q.name for name, _ in self.answers):
            resp.authority.append(self._soa())
        else:
            resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(self._soa())
        return resp

    def _soa(self):
        return dns.rrset.from_text(".", 300, "IN", "SOA",
                                   f"a.root. nstld.verisign. 1 1800 900 604800 {self.negative_ttl}")

    # ------------------------------------------------------------ serving
    def start(self) -> tuple[str, int]:
        ready = threading.Event()

        def run():
            loop = self._loop = asyncio.new_event_loop()
            upstream = self

            class UDP(asyncio.DatagramProtocol):
                def connection_made(self, transport):
                    self.transport = transport

                def datagram_received(self, data, addr):
                    query = dns.message.from_wire(data)
                    wait = upstream.delay.get(query.question[0].name, 0)

                    def send():
                        self.transport.sendto(upstream.reply(query, False).to_wire(), addr)
                    loop.call_later(wait, send)

            async def tcp_client(reader, writer):
                try:
                    while True:
                        n = int.from_bytes(await reader.readexactly(2), "big")
                        query = dns.message.from_wire(await reader.readexactly(n))
                        out = upstream.reply(query, True).to_wire()
                        writer.write(len(out).to_bytes(2, "big") + out)
                        await writer.drain()
                except (asyncio.IncompleteReadError, ConnectionError):
                    writer.close()

            async def setup():
                udp, _ = await loop.create_datagram_endpoint(UDP, local_addr=("127.0.0.1", 0))
                port = udp.get_extra_info("socket").getsockname()[1]
                await asyncio.start_server(tcp_client, "127.0.0.1", port)
                return ("127.0.0.1", port)

            self.address = loop.run_until_complete(setup())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait()
        return self.address

    @property
    def spec(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"

    def stop(self):
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def ask(address, name: str, rdtype: str = "A", *, tcp: bool = False, edns: int | None = 0,
        payload: int = 1232, source: str = "", timeout: float = 3.0) -> dns.message.Message:
    """One query to the server at `address` ((host, port))."""
    q = dns.message.make_query(name, rdtype, use_edns=edns if edns is not None else False,
                               payload=payload)
    host, port = address
    if tcp:
        return dns.query.tcp(q, host, port=port, timeout=timeout, source=source or None)
    return dns.query.udp(q, host, port=port, timeout=timeout, source=source or None,
                         ignore_unexpected=True)


def rrs(section) -> list[str]:
    """A message section as sorted 'name ttl type rdata' lines."""
    return sorted(f"{r.name.to_text()} {r.ttl} {dns.rdatatype.to_text(r.rdtype)} {rd.to_text()}"
                  for r in section for rd in r)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False
