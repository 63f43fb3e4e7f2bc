"""Forwarding names outside the cluster's zones, after CoreDNS's forward plugin
(`forward . /etc/resolv.conf` in kind's Corefile).

Upstreams are tried in the order given (CoreDNS picks at random; podnet stays
deterministic), each with a timeout; an upstream answer with TC set is asked
again over TCP. The upstream's answer is relayed as is (rcode, flags RA/AA/AD,
records).
"""

from __future__ import annotations

from typing import Iterable, Optional

import dns.asyncquery
import dns.exception
import dns.message
import dns.name

from ..errors import InputError
from ..sim.endpoints import is_ip, split_hostport

UPSTREAM_PAYLOAD = 1232


def parse_hostport(text: str, default_port: int = 53, what: str = "address") -> tuple[str, int]:
    """'10.0.0.1', '10.0.0.1:5300', '[::1]:53', '::1' -> (host, port); port 0 (listen on any) is fine."""
    host, port = split_hostport(text.strip())
    if not is_ip(host) or (port is not None and not (port.isdigit() and int(port) <= 65535)):
        raise InputError(f"not an IP:PORT: {text!r}", field=what)
    return host, int(port) if port is not None else default_port


class Forwarder:
    def __init__(self, upstreams: Iterable[str], timeout: float = 2.0):
        self.upstreams = [parse_hostport(u, what="upstream") for u in upstreams]
        self.timeout = timeout

    def __bool__(self) -> bool:
        return bool(self.upstreams)

    async def query(self, qname: dns.name.Name, rdtype: int) -> Optional[dns.message.Message]:
        """The first upstream's answer, or None when none answered."""
        q = dns.message.make_query(qname, rdtype, use_edns=0, payload=UPSTREAM_PAYLOAD)
        for host, port in self.upstreams:
            try:
                response, _ = await dns.asyncquery.udp_with_fallback(
                    q, host, timeout=self.timeout, port=port)
                return response
            except (dns.exception.DNSException, OSError, EOFError):
                continue
        return None
