"""The lab's built-in workload: TCP, UDP and HTTP echo servers that say who answered.

Every reply names the server (`--name`, e.g. the pod), the address it was
reached on and the client address it sees, so NAT is visible from both ends:

    $ curl -s 10.96.23.4
    pod=default/web-5d9c8b7f6d-x2kqp ip=10.244.1.3 port=80 client=10.244.2.2:43512 proto=http

    python -m podnet.lab.echo --name default/web-abc --tcp 80 --udp 53 --http 8080

TCP: answers one line for each connection (and echoes what it receives).
UDP: answers every datagram. HTTP ports: a minimal HTTP/1.1 response.
Stdlib only, so it runs inside any namespace with the system Python.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import sys


def describe(name: str, local, peer, proto: str) -> bytes:
    return (f"pod={name} ip={local[0]} port={local[1]} client={peer[0]}:{peer[1]} proto={proto}\n").encode()


def http_response(body: bytes) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


def serve(name: str, tcp: list[int], udp: list[int], http: list[int], bind: str = "0.0.0.0",
          ready_file: str | None = None) -> None:
    sel = selectors.DefaultSelector()
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    for port, kind in [(p, "tcp") for p in tcp] + [(p, "http") for p in http]:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, port))
        s.listen(128)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("accept", kind))
    for port in udp:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, ("udp", "udp"))
    if ready_file:
        with open(ready_file, "w") as f:
            f.write("ready\n")
    while True:
        for key, _ in sel.select():
            sock, (what, kind) = key.fileobj, key.data
            try:
                if what == "accept":
                    conn, peer = sock.accept()
                    conn.settimeout(2)
                    local = conn.getsockname()
                    try:
                        data = conn.recv(4096) if kind == "http" else b""
                        if kind == "http":
                            conn.sendall(http_response(describe(name, local, peer, "http")))
                        else:
                            conn.sendall(describe(name, local, peer, "tcp"))
                    except OSError:
                        pass
                    finally:
                        conn.close()
                else:
                    data, peer = sock.recvfrom(65535)
                    local = sock.getsockname()
                    sock.sendto(describe(name, local, peer, "udp"), peer)
            except OSError:
                continue


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True)
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    ap.add_argument("--http", type=int, action="append", default=[])
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--ready-file")
    args = ap.parse_args(argv)
    try:
        serve(args.name, args.tcp, args.udp, args.http, args.bind, args.ready_file)
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
