"""Network namespace primitives for the lab: create, enter, run in, delete.

Namespaces are the named ones iproute2 manages (/run/netns/NAME, bind mounts of a
namespace file), so `ip netns exec NAME ...` and `ip -n NAME ...` work on them.

    create_netns(["lab-a", "lab-b"])        one `ip -batch` for all of them
    with entered("lab-a"): sock = socket.socket(...)   # a socket that lives in lab-a
    run_in("lab-a", ["iptables-restore"], input=text)
    delete_netns(["lab-a", "lab-b"])        kills what runs there first

`entered` switches only the calling thread (setns(2) on a thread changes that
thread's network namespace); sockets and netlink sockets opened inside stay in
that namespace after the thread has switched back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import subprocess
import time
from typing import Iterable, Optional, Sequence

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def netns_path(name: str) -> str:
    return os.path.join(NETNS_RUN_DIR, name)


def exists(name: str) -> bool:
    return os.path.exists(netns_path(name))


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_RUN_DIR))
    except FileNotFoundError:
        return []


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(name: str):
    """Run the body with the calling thread in network namespace `name`."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        fd = os.open(netns_path(name), os.O_RDONLY)
    except FileNotFoundError:
        os.close(home)
        raise OSError(errno.ENOENT, f"no network namespace {name}") from None
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(fd)
        os.close(home)


def _batch(lines: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "-force", "-batch", "-"], input="\n".join(lines) + "\n",
                          capture_output=True, text=True)


def create_netns(names: Sequence[str]) -> None:
    """Create named namespaces (all in one `ip -batch`); fails if one exists."""
    names = list(names)
    if not names:
        return
    taken = [n for n in names if exists(n)]
    if taken:
        raise FileExistsError(f"network namespace {taken[0]} already exists")
    proc = _batch([f"netns add {n}" for n in names])
    missing = [n for n in names if not exists(n)]
    if missing:
        raise OSError(f"could not create network namespace {missing[0]}: {proc.stderr.strip()}")


def pids_in(name: str) -> list[int]:
    """The processes whose network namespace is `name` (as `ip netns pids` finds them)."""
    try:
        target = os.stat(netns_path(name))
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            out.append(int(entry))
    return out


def pids_in_many(names: Iterable[str]) -> dict[int, str]:
    """pid -> namespace for every process in one of `names` (one pass over /proc)."""
    inodes = {}
    for n in names:
        try:
            st = os.stat(netns_path(n))
        except FileNotFoundError:
            continue
        inodes[(st.st_dev, st.st_ino)] = n
    out: dict[int, str] = {}
    if not inodes:
        return out
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        name = inodes.get((st.st_dev, st.st_ino))
        if name is not None:
            out[int(entry)] = name
    return out


def kill_pids(pids: Iterable[int], grace: float = 1.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after `grace` seconds."""
    pids = [p for p in set(pids) if p != os.getpid()]
    for p in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + grace
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.02)
    for p in alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)
    for p in alive:
        for _ in range(100):
            if not _alive(p):
                break
            time.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return False
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def delete_netns(names: Sequence[str]) -> list[str]:
    """Kill every process in the namespaces, then delete them. Returns those that were deleted."""
    names = [n for n in names if exists(n)]
    if not names:
        return []
    kill_pids(pids_in_many(names))
    _batch([f"netns del {n}" for n in names])
    for n in names:                     # what the batch could not remove (e.g. a busy mount)
        if exists(n):
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
    return names


def run_in(name: Optional[str], argv: list[str], input: Optional[str] = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", name] if name else []) + argv
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)


def sysctl_path(key: str) -> str:
    """/proc/sys path of a dotted key; interface names may contain dots (flannel.1):
    net.ipv4.conf.flannel.1.rp_filter -> net/ipv4/conf/flannel.1/rp_filter."""
    parts = key.split(".")
    for head in (("net", "ipv4", "conf"), ("net", "ipv6", "conf"), ("net", "ipv4", "neigh"),
                 ("net", "ipv6", "neigh")):
        if tuple(parts[:3]) == head and len(parts) > 4:
            return "/proc/sys/" + "/".join(head) + "/" + ".".join(parts[3:-1]) + "/" + parts[-1]
    return "/proc/sys/" + "/".join(parts)


def write_sysctl(key: str, value: str) -> None:
    """Write a sysctl in the calling thread's namespace (use inside `entered`)."""
    with open(sysctl_path(key), "w") as f:
        f.write(str(value))


def read_sysctl(key: str) -> Optional[str]:
    try:
        with open(sysctl_path(key)) as f:
            return f.read().strip()
    except OSError:
        return None
