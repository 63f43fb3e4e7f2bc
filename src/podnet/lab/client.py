"""Clients that talk from inside a lab namespace, without starting a process.

A socket is made inside the namespace (podnet.lab.nsutil.entered) and used from
outside it; the kernel keeps it in the namespace it was made in.

    request("lab-cni-...", "10.96.12.4", 80, "tcp")   -> Reply(status="ok", server=..., client=...)
    dns_query("lab-cni-...", "10.96.0.10", "web.default.svc.cluster.local")
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Optional

from . import nsutil


@dataclass
class Reply:
    status: str                     # ok | refused | timeout | error
    server: Optional[str] = None    # who answered (pod key, node/NAME, internet)
    client: Optional[str] = None    # the client address the server saw
    local: Optional[str] = None     # the address the server was reached on
    text: str = ""
    sport: Optional[int] = None     # the client's source port

    def key(self) -> tuple:
        return (self.status, self.server, self.client)


def parse_echo(text: str) -> dict:
    """`pod=NAME ip=IP port=P client=IP:PORT proto=tcp` (podnet.lab.echo.describe)."""
    line = next((l for l in text.splitlines() if l.startswith("pod=")), "")
    out = {}
    for part in line.split():
        k, _, v = part.partition("=")
        out[k] = v
    return out


def _reply(text: str, sport=None) -> Reply:
    fields = parse_echo(text)
    if "pod" not in fields:
        return Reply("error", text=text.strip()[:200], sport=sport)
    client = fields.get("client", "")
    host = client.rsplit(":", 1)[0].strip("[]") if client else None
    return Reply("ok", fields["pod"], host, fields.get("ip"), text.strip(), sport)


def _socket(netns: str, family: int, kind: int, sport: int = 0) -> socket.socket:
    with nsutil.entered(netns):
        s = socket.socket(family, kind)
    if sport:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
    return s


def request(netns: str, host: str, port: int, proto: str = "tcp", timeout: float = 1.5, http: bool = False,
            sport: int = 0) -> Reply:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if proto == "udp":
        s = _socket(netns, family, socket.SOCK_DGRAM, sport)
        try:
            s.settimeout(timeout)
            s.connect((host, port))
            s.send(b"hello\n")
            data = s.recv(4096)
            return _reply(data.decode(errors="replace"), s.getsockname()[1])
        except ConnectionRefusedError:
            return Reply("refused")
        except (socket.timeout, TimeoutError):
            return Reply("timeout")
        except OSError as e:
            return Reply("error", text=str(e))
        finally:
            s.close()
    s = _socket(netns, family, socket.SOCK_STREAM, sport)
    try:
        s.settimeout(timeout)
        s.connect((host, port))
        local_port = s.getsockname()[1]
        if http:
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: podnet-lab\r\nConnection: close\r\n\r\n"
                      .encode())
        data = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in data.split(b"\r\n\r\n", 1)[-1] and time.monotonic() < deadline:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return _reply(data.decode(errors="replace"), local_port)
    except ConnectionRefusedError:
        return Reply("refused")
    except (socket.timeout, TimeoutError):
        return Reply("timeout")
    except OSError as e:
        if e.errno in (113, 101):           # EHOSTUNREACH, ENETUNREACH
            return Reply("unreachable", text=str(e))
        return Reply("error", text=str(e))
    finally:
        s.close()


def dns_query(netns: str, server: str, name: str, rdtype: str = "A", timeout: float = 1.5,
              sport: int = 0) -> tuple[str, list[str], Optional[int]]:
    """(status, addresses, source port): status ok | nxdomain | servfail | refused | timeout."""
    import dns.message
    import dns.rcode
    import dns.rdatatype
    q = dns.message.make_query(name, rdtype)
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    s = _socket(netns, family, socket.SOCK_DGRAM, sport)
    try:
        s.settimeout(timeout)
        s.connect((server, 53))
        s.send(q.to_wire())
        data = s.recv(65535)
        resp = dns.message.from_wire(data)
        rcode = resp.rcode()
        addrs = [r.to_text() for rrset in resp.answer for r in rrset
                 if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)]
        status = {dns.rcode.NOERROR: "ok", dns.rcode.NXDOMAIN: "nxdomain", dns.rcode.SERVFAIL: "servfail",
                  dns.rcode.REFUSED: "refused"}.get(rcode, dns.rcode.to_text(rcode).lower())
        return status, addrs, s.getsockname()[1]
    except ConnectionRefusedError:
        return "refused", [], None
    except (socket.timeout, TimeoutError):
        return "timeout", [], None
    except Exception as e:          # malformed answers
        return f"error: {e}", [], None
    finally:
        s.close()
