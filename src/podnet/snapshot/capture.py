"""`podnet snapshot DIR`: dump network namespaces with the standard tools.

Layout (see docs/snapshot.md)::

    DIR/topology.json          namespaces (kind, node, pod), segments, veth pairs
    DIR/<netns>/link.json      ip -d -j link show
    DIR/<netns>/addr.json      ip -j addr show
    DIR/<netns>/route.json     ip -j route show table all      (+ route6.json: ip -6 ...)
    DIR/<netns>/rule.json      ip -j rule show                 (+ rule6.json)
    DIR/<netns>/neigh.json     ip -j neigh show                (+ neigh-proxy.json: ... proxy)
    DIR/<netns>/fdb.json       bridge -j fdb show
    DIR/<netns>/sysctl.txt     key = value (forwarding, rp_filter, proxy_arp, ...)
    DIR/<netns>/iptables.txt   iptables-save                   (+ ip6tables.txt)
    DIR/<netns>/ipset.txt      ipset save
    DIR/<netns>/nft.json       nft -j list ruleset             (+ nft.txt: nft list ruleset)
    DIR/<netns>/conntrack.txt  conntrack -L
    DIR/<netns>/ipvs.txt       ipvsadm -Sn --nosort
    DIR/<netns>/listen.txt     ss -Hlntu
    DIR/<netns>/netns-ids.json ip -j netns list-id             (a peer's link_netnsid -> its name)

Only reads: nothing in the namespaces is changed. Tools that are missing or
fail (no IPVS in this kernel, no ipset...) leave their file out.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterable, Optional

COMMANDS = {
    "link.json": ["ip", "-d", "-j", "link", "show"],
    "addr.json": ["ip", "-j", "addr", "show"],
    "route.json": ["ip", "-j", "-4", "route", "show", "table", "all"],
    "route6.json": ["ip", "-j", "-6", "route", "show", "table", "all"],
    "rule.json": ["ip", "-j", "-4", "rule", "show"],
    "rule6.json": ["ip", "-j", "-6", "rule", "show"],
    "neigh.json": ["ip", "-j", "neigh", "show"],
    "neigh-proxy.json": ["ip", "-j", "neigh", "show", "proxy"],
    "fdb.json": ["bridge", "-j", "fdb", "show"],
    "iptables.txt": ["iptables-save"],
    "ip6tables.txt": ["ip6tables-save"],
    "ipset.txt": ["ipset", "save"],
    "nft.json": ["nft", "-j", "list", "ruleset"],
    "nft.txt": ["nft", "list", "ruleset"],
    "conntrack.txt": ["conntrack", "-L"],
    # --nosort: the real servers in the kernel's list order, which the sh, dh and mh
    # schedulers depend on (plain -Sn sorts them by address)
    "ipvs.txt": ["ipvsadm", "-Sn", "--nosort"],
    "listen.txt": ["ss", "-Hlntu"],
    # which namespace a peer's link_netnsid means (veths across namespaces)
    "netns-ids.json": ["ip", "-j", "netns", "list-id"],
}

SYSCTL_GLOBS = [
    "/proc/sys/net/ipv4/ip_forward",
    "/proc/sys/net/ipv6/conf/all/forwarding",
    "/proc/sys/net/ipv4/conf/*/rp_filter",
    "/proc/sys/net/ipv4/conf/*/proxy_arp",
    "/proc/sys/net/ipv4/conf/*/route_localnet",
    "/proc/sys/net/ipv4/conf/*/arp_ignore",
    "/proc/sys/net/ipv4/conf/*/forwarding",
    "/proc/sys/net/ipv4/conf/*/src_valid_mark",
    "/proc/sys/net/ipv4/fib_multipath_hash_policy",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
    "/proc/sys/net/ipv4/vs/conntrack",
]


def list_netns() -> list[str]:
    out = subprocess.run(["ip", "-j", "netns", "list"], capture_output=True, text=True)
    try:
        return sorted(e["name"] for e in json.loads(out.stdout or "[]"))
    except (json.JSONDecodeError, KeyError):
        return []


def _exec(netns: Optional[str], argv: list[str]) -> Optional[str]:
    if shutil.which(argv[0]) is None:
        return None
    cmd = (["ip", "netns", "exec", netns] if netns else []) + argv
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return proc.stdout


def _sysctls(netns: Optional[str]) -> str:
    script = ("import glob\n"
              f"for pattern in {SYSCTL_GLOBS!r}:\n"
              "    for path in sorted(glob.glob(pattern)):\n"
              "        try:\n"
              "            value = open(path).read().strip()\n"
              "        except OSError:\n"
              "            continue\n"
              "        print(path[len('/proc/sys/'):].replace('/', '.'), '=', value)\n")
    return _exec(netns, ["python3", "-c", script]) or ""


def capture_netns(netns: Optional[str], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, argv in COMMANDS.items():
        text = _exec(netns, argv)
        if text is None or (name.endswith(".txt") and name != "listen.txt" and not text.strip()):
            continue
        (directory / name).write_text(text)
    (directory / "sysctl.txt").write_text(_sysctls(netns))


def capture(directory: str | os.PathLike, netns: Iterable[str] | None = None,
            root_name: Optional[str] = None, include_root: bool = True,
            topology: Optional[dict] = None) -> Path:
    """Dump the given namespaces (default: every named one) and the root namespace."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    names = list(netns) if netns is not None else list_netns()
    topo = topology or {"version": 1, "namespaces": {}, "segments": {}}
    if include_root:
        root = root_name or socket.gethostname()
        capture_netns(None, out / root)
        topo["namespaces"].setdefault(root, {"kind": "host", "root": True})
    for name in names:
        capture_netns(name, out / name)
        topo["namespaces"].setdefault(name, {"kind": "host"})
    (out / "topology.json").write_text(json.dumps(topo, indent=2, sort_keys=True) + "\n")
    return out
