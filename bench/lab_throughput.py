#!/usr/bin/env python3
"""Pod-to-pod TCP throughput in the lab, per CNI, against a plain veth pair.

    sudo .venv/bin/python bench/lab_throughput.py [--seconds 3] [--cnis kindnet,flannel/vxlan,...]

For each CNI the guide's lab is brought up (kube-proxy iptables) and iperf3
(Debian's iperf3) runs from a net-tshoot pod on k8s-guide-worker to a web pod on
k8s-guide-worker2: across nodes, so the packets take the CNI's whole path
(veths, bridges, routes, VXLAN/IPIP encapsulation, the underlay switch). The
baseline is two namespaces joined by one veth pair, measured in the same run;
the ratio is CNI / baseline. Everything lives in namespaces this script makes
and removes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from podnet.errors import PodnetError  # noqa: E402
from podnet.lab.lab import Lab  # noqa: E402

GUIDE = Path(__file__).resolve().parents[1] / "src" / "podnet" / "examples" / "guide-lab"
CNIS = "kindnet,flannel/vxlan,flannel/host-gw,calico/bgp,calico/ipip,calico/vxlan,weave"
PORT = 5201


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


def iperf(server_ns: str, server_ip: str, client_ns: str, seconds: int) -> float:
    """Gbit/s received by the server, from `iperf3 -J` on the client."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            probe = sh("ip", "netns", "exec", server_ns, "ss", "-ltn", f"sport = :{PORT}", check=False)
            if f":{PORT}" in probe.stdout:
                break
            time.sleep(0.05)
        out = sh("ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(PORT),
                 "-t", str(seconds), "-J")
        return json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"] / 1e9
    finally:
        server.kill()
        server.wait()


def veth_baseline(seconds: int) -> float:
    a, b = f"pnbench{os.getpid() % 10000}-a", f"pnbench{os.getpid() % 10000}-b"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "-n", a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", b)
        for ns, ip in ((a, "10.99.0.1/24"), (b, "10.99.0.2/24")):
            sh("ip", "-n", ns, "addr", "add", ip, "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        return iperf(b, "10.99.0.2", a, seconds)
    finally:
        for ns in (a, b):
            sh("ip", "netns", "del", ns, check=False)


def cni_throughput(cni: str, mode: str | None, seconds: int) -> float | str:
    with tempfile.TemporaryDirectory() as tmp:
        for f in GUIDE.glob("*.yaml"):
            shutil.copy(f, Path(tmp) / f.name)
        lab = Lab(f"tput{os.getpid() % 10000}")
        try:
            try:
                rec = lab.up([tmp], cni=cni, cni_mode=mode, proxy_mode="iptables")
            except PodnetError as e:
                return f"not available ({e})"
            pods = rec["pods"]
            client = next(v for k, v in pods.items() if "/net-tshoot" in k and v["node"] == "k8s-guide-worker")
            server = next(v for k, v in pods.items() if "/web-" in k and v["node"] == "k8s-guide-worker2")
            return iperf(lab.kname(server["netns"]), server["ips"][0], lab.kname(client["netns"]), seconds)
        finally:
            if lab.exists():
                lab.down()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--cnis", default=CNIS, help="CNI[/MODE],... (default: %(default)s)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    if shutil.which("iperf3") is None:
        sys.exit("needs iperf3 (Debian package iperf3; scripts/test.sh installs it)")
    base = veth_baseline(args.seconds)
    print(f"{'plain veth pair':<22} {base:7.2f} Gbit/s   1.00 (baseline)")
    for item in args.cnis.split(","):
        cni, _, mode = item.partition("/")
        got = cni_throughput(cni, mode or None, args.seconds)
        if isinstance(got, str):
            print(f"{item:<22} {got}")
        else:
            print(f"{item:<22} {got:7.2f} Gbit/s   {got / base:4.2f} of the veth pair (pod->pod across nodes)")


if __name__ == "__main__":
    main()
