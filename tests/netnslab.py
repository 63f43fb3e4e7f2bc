"""Throwaway network namespaces for tests that compare podnet with the kernel.

Every namespace is named with a random per-test prefix and deleted in
`cleanup()` (the fixture calls it even when the test fails); servers started
here are killed there. Nothing outside these namespaces is touched.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLIENT = r"""
import socket, sys
proto, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=timeout)
        data = s.recv(4096)
    else:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        s.connect((host, port))
        s.send(b"hello")
        data = s.recv(4096)
    print(data.decode().strip())
except ConnectionRefusedError:
    print("REFUSED")
except (socket.timeout, TimeoutError):
    print("TIMEOUT")
except OSError as e:
    print("ERROR", e.errno, e.strerror)
"""


class NetnsLab:
    def __init__(self):
        self.prefix = "pnt" + secrets.token_hex(3)
        self.names: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.tmp = Path(tempfile.mkdtemp(prefix="podnet-netns-"))
        self.veth_pairs: list[tuple[str, str, str, str]] = []
        self.segments: dict[str, list[tuple[str, str]]] = {}

    # -- namespaces and commands ---------------------------------------------
    def ns(self, short: str) -> str:
        name = f"{self.prefix}-{short}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        self.run(name, "ip link set lo up")
        return name

    def run(self, ns: str, cmd: str, check: bool = True) -> str:
        proc = subprocess.run(["ip", "netns", "exec", ns, "sh", "-c", cmd], capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{ns}: {cmd}: {proc.stderr.strip()}")
        return proc.stdout

    def veth(self, ns_a: str, if_a: str, ns_b: str, if_b: str) -> None:
        subprocess.run(["ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
                        "netns", ns_b], check=True)
        self.run(ns_a, f"ip link set {if_a} up")
        self.run(ns_b, f"ip link set {if_b} up")
        self.veth_pairs.append((ns_a, if_a, ns_b, if_b))

    def sysctl(self, ns: str, key: str, value: str) -> None:
        self.run(ns, f"echo {value} > /proc/sys/{key.replace('.', '/')}")

    # -- traffic -----------------------------------------------------------------
    def server(self, ns: str, name: str, tcp=(), udp=(), http=()) -> None:
        ready = self.tmp / f"ready-{len(self.procs)}"
        args = [sys.executable, "-m", "podnet.lab.echo", "--name", name, "--ready-file", str(ready)]
        for p in tcp:
            args += ["--tcp", str(p)]
        for p in udp:
            args += ["--udp", str(p)]
        for p in http:
            args += ["--http", str(p)]
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
        proc = subprocess.Popen(["ip", "netns", "exec", ns] + args, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.procs.append(proc)
        for _ in range(200):
            if ready.exists():
                return
            if proc.poll() is not None:
                raise RuntimeError(f"echo server in {ns} failed: {proc.stderr.read().decode()}")
            time.sleep(0.02)
        raise RuntimeError(f"echo server in {ns} did not start")

    def connect(self, ns: str, host: str, port: int, proto: str = "tcp", timeout: float = 3.0) -> str:
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, proto, host, str(port),
                              str(timeout)], capture_output=True, text=True)
        return out.stdout.strip()

    def ping(self, ns: str, host: str) -> bool:
        script = ("import socket,sys\n"
                  "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM,socket.IPPROTO_ICMP)\n"
                  "s.settimeout(3)\n"
                  "s.sendto(b'\\x08\\x00\\xf7\\xff\\x00\\x00\\x00\\x00',(sys.argv[1],0))\n"
                  "try:\n  s.recv(64); print('ok')\nexcept Exception: print('timeout')\n")
        self.sysctl(ns, "net.ipv4.ping_group_range", "0 2147483647")
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script, host],
                             capture_output=True, text=True)
        return out.stdout.strip() == "ok"

    def conntrack(self, ns: str) -> str:
        return self.run(ns, "conntrack -L 2>/dev/null", check=False)

    # -- podnet's view -------------------------------------------------------------
    def snapshot(self):
        from podnet.snapshot.capture import capture
        from podnet.snapshot.load import load_snapshot
        topo = {"version": 1, "namespaces": {n: {"kind": "host"} for n in self.names},
                "segments": {k: {"members": [list(m) for m in v]} for k, v in self.segments.items()},
                "veth_pairs": [list(p) for p in self.veth_pairs]}
        out = self.tmp / f"snap-{len(list(self.tmp.glob('snap-*')))}"
        capture(out, self.names, include_root=False, topology=topo)
        return load_snapshot(out)

    def cleanup(self) -> None:
        for p in self.procs:
            try:
                p.kill()
                p.wait(timeout=5)
            except Exception:
                pass
        for name in self.names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["rm", "-rf", str(self.tmp)])
