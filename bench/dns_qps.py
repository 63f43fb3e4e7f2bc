#!/usr/bin/env python3
"""Queries per second of `podnet dns serve` for cached Service A lookups on
loopback, with dnsmasq serving the same names from a hosts file as the baseline,
in the same run.

Each server runs in its own process (podnet: `python -m podnet.dns serve`;
dnsmasq: --keep-in-foreground, 127.0.0.1 only, no upstream). The load comes from
a third process: dnsperf when installed (Debian package dnsperf), else a small
Python UDP load generator (--generator python) with a window of queries in
flight. Only 127.0.0.1 is used.

    python bench/dns_qps.py [--seconds 10] [--services 200] [--generator dnsperf|python]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import dns.message  # noqa: E402

from podnet import Cluster  # noqa: E402
from podnet.cluster import example_path  # noqa: E402


def write_cluster(directory: Path, services: int) -> None:
    lab = Path(example_path())
    for f in lab.glob("*.yaml"):
        shutil.copy(f, directory / f.name)
    with open(directory / "bench-services.yaml", "w") as f:
        for i in range(services):
            f.write(f"---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc{i}, namespace: bench}}\n"
                    f"spec: {{ports: [{{name: http, port: 80}}]}}\n")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_answering(port: int, name: str, timeout: float = 30) -> None:
    q = dns.message.make_query(name, "A").to_wire()
    end = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.3)
        while time.monotonic() < end:
            s.sendto(q, ("127.0.0.1", port))
            try:
                if s.recv(4096):
                    return
            except socket.timeout:
                pass
    raise SystemExit(f"no answer on 127.0.0.1:{port}")


# ----------------------------------------------------------------- load

def dnsperf(port: int, queries: Path, seconds: int, window: int) -> float:
    out = subprocess.run(["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                          "-l", str(seconds), "-c", "1", "-T", "1", "-q", str(window), "-t", "2"],
                         capture_output=True, text=True)
    m = re.search(r"Queries per second:\s+([\d.]+)", out.stdout)
    if not m:
        raise SystemExit(f"dnsperf failed:\n{out.stdout}{out.stderr}")
    lost = re.search(r"Queries lost:\s+(\d+)", out.stdout)
    if lost and int(lost.group(1)):
        print(f"  ({lost.group(1)} queries lost)")
    return float(m.group(1))


def _blaster(port: int, names: list[str], seconds: float, window: int, result) -> None:
    wires = [dns.message.make_query(n, "A").to_wire() for n in names]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(0.5)
    sent = received = 0
    end = time.monotonic() + seconds
    for _ in range(window):
        s.send(wires[sent % len(wires)])
        sent += 1
    while time.monotonic() < end:
        try:
            s.recv(4096)
            received += 1
        except socket.timeout:                   # a lost query: refill the window
            pass
        s.send(wires[sent % len(wires)])
        sent += 1
    result.value = received / seconds


def python_load(port: int, names: list[str], seconds: int, window: int) -> float:
    result = multiprocessing.Value("d", 0.0)
    p = multiprocessing.Process(target=_blaster, args=(port, names, seconds, window, result))
    p.start()
    p.join()
    return result.value


# -------------------------------------------------------------- servers

def start_podnet(cluster_dir: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "podnet.dns", "serve", "-f", str(cluster_dir),
                             "--listen", f"127.0.0.1:{port}", "--no-reload"], cwd=ROOT,
                            stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})


def start_dnsmasq(hosts: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
                             "--no-hosts", f"--addn-hosts={hosts}", "--listen-address=127.0.0.1",
                             "--bind-interfaces", f"--port={port}", "--cache-size=10000",
                             "--local-ttl=30", "--pid-file=", "--user=root", "--group=root"],
                            stderr=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT if proc.args[0] == sys.executable else signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--services", type=int, default=200, help="extra Services in the cluster")
    ap.add_argument("--names", type=int, default=50, help="distinct names in the query mix")
    ap.add_argument("--window", type=int, default=100, help="queries in flight")
    ap.add_argument("--generator", choices=["dnsperf", "python"],
                    default="dnsperf" if shutil.which("dnsperf") else "python")
    args = ap.parse_args()
    if not shutil.which("dnsmasq"):
        raise SystemExit("needs dnsmasq (Debian: dnsmasq-base)")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.chmod(tmp, 0o755)
        cluster_dir = tmp / "cluster"
        cluster_dir.mkdir()
        write_cluster(cluster_dir, args.services)
        cluster = Cluster.load([cluster_dir])
        zone = cluster.config.cluster_domain
        # the same names and addresses for both servers
        entries = [(str(s.cluster_ip), f"{s.name}.{s.namespace}.svc.{zone}")
                   for s in cluster.services if s.cluster_ip is not None and not s.headless]
        hosts = tmp / "hosts"
        hosts.write_text("".join(f"{ip} {name}\n" for ip, name in entries))
        os.chmod(hosts, 0o644)
        names = [name for _, name in sorted(entries, key=lambda e: e[1])][:args.names]
        queries = tmp / "queries"
        queries.write_text("".join(f"{n} A\n" for n in names))

        print(f"{len(entries)} Service A records; query mix: {len(names)} names; "
              f"load: {args.generator}, {args.window} in flight, {args.seconds}s per server, "
              f"{os.cpu_count()} CPUs")
        results = {}
        for label, start in (("podnet", lambda p: start_podnet(cluster_dir, p)),
                             ("dnsmasq", lambda p: start_dnsmasq(hosts, p))):
            port = free_port()
            proc = start(port)
            try:
                wait_answering(port, names[0])
                for n in names:                       # warm the caches
                    wait_answering(port, n)
                if args.generator == "dnsperf":
                    results[label] = dnsperf(port, queries, args.seconds, args.window)
                else:
                    results[label] = python_load(port, names, args.seconds, args.window)
            finally:
                stop(proc)
            print(f"{label:8} {results[label]:>10,.0f} queries/s")
        print(f"podnet/dnsmasq: {results['podnet'] / results['dnsmasq']:.2f}")


if __name__ == "__main__":
    main()
