"""The lab's per-node workload process: every pod's servers, in the pods' own namespaces.

    python -m podnet.lab.agent SPEC.json        (or python .../podnet/lab/agent.py SPEC.json)

SPEC (written by podnet.lab.lab from podnet.lab.workloads)::

    {"name": "k8s-guide-worker", "ready_file": "...",
     "namespaces": [{"netns": "lab-cni-...", "self": false,
                     "sockets": [{"proto": "tcp", "ip": "0.0.0.0", "port": 80, "kind": "http",
                                  "name": "default/web-abc"}, ...]}]}

The agent starts in the node's namespace (`ip netns exec`), enters each pod's
namespace just long enough to open that pod's sockets (a socket stays in the
namespace it was made in), and serves them all from one event loop:

- tcp: one line (podnet.lab.echo.describe) as soon as a client connects, then
  echoes what it receives;
- http: reads a request, answers `HTTP/1.1 200` with that line as the body;
- udp: answers every datagram with the line, from the address it was sent to
  (IP_PKTINFO), so replies also leave AnyIP and multi-address namespaces right;
- arp: answers ARP requests for a LoadBalancer IP (MetalLB's layer 2 speaker).

kube-dns pods' port 53 is not the agent's: the lab runs `python -m podnet.dns
serve` there.

Once every socket is bound it writes {"ok": true} (or the errors) to the ready
file. SIGTERM stops it.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal
import socket
import struct
import sys
import time

if __package__:
    from .echo import describe, http_response
    from .nsutil import entered
else:
    # run as a file (python .../podnet/lab/agent.py): starts without importing the podnet
    # package (the cluster model), which matters with a few dozen agents on a small machine
    from echo import describe, http_response      # type: ignore[no-redef]
    from nsutil import entered                    # type: ignore[no-redef]


IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)


IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78


ETH_P_ARP = 0x0806


DEVICE_WAIT = 20.0      # seconds an ARP responder waits for its device (see open_arp_socket)


def open_arp_socket(dev: str, wait: float = DEVICE_WAIT) -> socket.socket:
    """A packet socket for ARP frames on `dev` (what MetalLB's speaker answers from).

    The agent starts while the lab is still wiring the node, so `dev` may not exist yet
    (ENODEV): unlike an IP socket, which IP_FREEBIND lets bind early, a packet socket needs
    the device, so this waits for it to appear."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP))
    deadline = time.monotonic() + wait
    while True:
        try:
            s.bind((dev, ETH_P_ARP))
            break
        except OSError as e:
            if e.errno != errno.ENODEV or time.monotonic() > deadline:
                s.close()
                raise
            time.sleep(0.02)
    s.setblocking(False)
    return s


def arp_reply(frame: bytes, ip: str, mac: bytes) -> bytes | None:
    """The reply to an Ethernet ARP request for `ip`, from `mac`; None for anything else."""
    if len(frame) < 42 or frame[12:14] != b"\x08\x06":
        return None
    htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", frame[14:22])
    sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
    if (htype, ptype, hlen, plen, oper) != (1, 0x0800, 6, 4, 1) or tpa != socket.inet_aton(ip):
        return None
    return sha + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac + tpa + sha + spa


def open_socket(proto: str, ip: str, port: int, transparent: bool = False, dev: str = "") -> socket.socket:
    if proto == "arp":
        return open_arp_socket(dev)
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # the lab starts the agents while it is still configuring the namespaces: an address
    # (127.0.0.1 before lo is up) may not be there yet
    if family == socket.AF_INET:
        s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    if transparent:
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    if proto == "udp":
        if family == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    s.bind((ip, port))
    if proto == "tcp":
        s.listen(512)
    s.setblocking(False)
    return s


def _plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr


class Agent:
    def __init__(self, spec: dict):
        self.spec = spec
        self.sockets: list[tuple[socket.socket, dict]] = []
        self.errors: list[str] = []

    # ------------------------------------------------------------------ setup
    def bind_all(self) -> None:
        for entry in self.spec.get("namespaces", []):
            socks = entry.get("sockets") or []
            if not socks:
                continue
            if entry.get("self"):
                self._bind(entry["netns"], socks)
                continue
            try:
                with entered(entry["netns"]):
                    self._bind(entry["netns"], socks)
            except OSError as e:
                self.errors.append(f"{entry['netns']}: {e}")

    def _bind(self, netns: str, socks: list[dict]) -> None:
        for s in socks:
            try:
                self.sockets.append((open_socket(s["proto"], s["ip"], s["port"], s.get("transparent", False),
                                                 s.get("dev", "")), s))
            except OSError as e:
                if ":" in s["ip"] and e.errno in (97, 99):     # no IPv6 in this namespace
                    continue
                self.errors.append(f"{netns}: {s['name']}: bind {s['proto']} {s['ip']}:{s['port']}: "
                                   f"{e.strerror or e}")

    # ------------------------------------------------------------------ serving
    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        for sock, s in self.sockets:
            if s["proto"] == "tcp":
                handler = self._http if s["kind"] == "http" else self._tcp
                await asyncio.start_server(lambda r, w, h=handler, s=s: h(r, w, s), sock=sock)
            elif s["proto"] == "arp":
                loop.add_reader(sock.fileno(), self._arp, sock, s)
            else:
                loop.add_reader(sock.fileno(), self._udp, sock, s)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()

    async def _tcp(self, reader, writer, s) -> None:
        try:
            local = writer.get_extra_info("sockname")
            peer = writer.get_extra_info("peername")
            writer.write(describe(s["name"], (_plain(local[0]), local[1]), (_plain(peer[0]), peer[1]), "tcp"))
            await writer.drain()
            while True:
                data = await asyncio.wait_for(reader.read(65536), 60)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _http(self, reader, writer, s) -> None:
        try:
            local = writer.get_extra_info("sockname")
            peer = writer.get_extra_info("peername")
            try:
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError):
                pass
            body = describe(s["name"], (_plain(local[0]), local[1]), (_plain(peer[0]), peer[1]), "http")
            writer.write(http_response(body))
            await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.close()

    def _arp(self, sock: socket.socket, s: dict) -> None:
        try:
            frame = sock.recv(65535)
        except OSError:
            return
        reply = arp_reply(frame, s["ip"], sock.getsockname()[4])
        if reply is not None:
            try:
                sock.send(reply)
            except OSError:
                pass

    def _udp(self, sock: socket.socket, s: dict) -> None:
        v6 = sock.family == socket.AF_INET6
        try:
            data, anc, _, peer = sock.recvmsg(65535, socket.CMSG_SPACE(64))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
        local_ip = None
        cmsg = []
        for level, ctype, cdata in anc:
            if not v6 and level == socket.IPPROTO_IP and ctype == IP_PKTINFO and len(cdata) >= 12:
                local_ip = socket.inet_ntop(socket.AF_INET, cdata[8:12])
                cmsg = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, cdata[8:12], b"\0" * 4))]
            elif v6 and level == socket.IPPROTO_IPV6 and ctype == IPV6_PKTINFO and len(cdata) >= 20:
                local_ip = socket.inet_ntop(socket.AF_INET6, cdata[:16])
                cmsg = [(socket.IPPROTO_IPV6, IPV6_PKTINFO, cdata[:16] + struct.pack("=I", 0))]
        local = (local_ip or sock.getsockname()[0], sock.getsockname()[1])
        reply = describe(s["name"], (_plain(local[0]), local[1]), (_plain(peer[0]), peer[1]), "udp")
        try:
            sock.sendmsg([reply], cmsg, 0, peer)
        except OSError:
            pass


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.exit("usage: python -m podnet.lab.agent SPEC.json")
    with open(argv[0]) as f:
        spec = json.load(f)
    agent = Agent(spec)
    agent.bind_all()
    ready = spec.get("ready_file")
    if ready:
        tmp = ready + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"ok": not agent.errors, "errors": agent.errors, "sockets": len(agent.sockets),
                       "pid": os.getpid()}, f)
        os.replace(tmp, ready)
    if agent.errors:
        for e in agent.errors:
            print(f"agent {spec.get('name')}: {e}", file=sys.stderr)
    try:
        asyncio.run(agent.serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
