"""A lab: one cluster brought up for real in network namespaces, and everything it owns.

    lab = Lab("demo")
    lab.up(["lab/"])                # namespaces, links, routes, rules, workloads
    lab.exec_argv("net-tshoot-4lgv2", ["curl", "-s", "web"])
    lab.apply(["lab/"])             # the inputs changed: apply the difference
    lab.snapshot("dump/")           # the kernel's state, in podnet's snapshot format
    lab.down()                      # nothing left behind

What a lab owns is written down before it is created, in
/run/podnet/labs/<name>.json (namespaces, processes, /etc/netns entries, the
inputs it was made from), so `lab down`, `lab status`, a second `lab up`, a
crashed or killed `lab up` (a guard process tears down what a `lab up` killed
with SIGKILL leaves) all know exactly what to remove. Only namespaces named
`<name>-...` are ever created or changed; the host's own namespace is only read.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from ..errors import InputError, NotRootError, PodnetError
from . import nsutil
from .apply import Applier, Capabilities, LabError

LABS_DIR = Path(os.environ.get("PODNET_LABS_DIR", "/run/podnet/labs"))
ETC_NETNS = Path("/etc/netns")
NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME = 20
DEFAULT_NAME = "podnet"
READY_TIMEOUT = 30.0
AGENT_SCRIPT = str(Path(__file__).resolve().parent / "agent.py")
AGENT_MARKER = "podnet/lab/agent"
ALLOCATIONS = "allocations.yaml"


def require_root(what: str = "podnet lab") -> None:
    if os.geteuid() != 0:
        raise NotRootError(f"{what} creates network namespaces: run it as root (sudo)")


def check_name(name: str) -> str:
    if not NAME_RE.match(name) or len(name) > MAX_NAME:
        raise InputError(f"lab name {name!r}: use lowercase letters, digits and single dashes "
                         f"(at most {MAX_NAME} characters, starting with a letter)", field="--name")
    return name


def ipvs_available() -> bool:
    """IPVS is there when the ip_vs module is loaded (read-only look at the host's /proc)."""
    return os.path.exists("/proc/net/ip_vs")


def list_labs() -> list[str]:
    if not LABS_DIR.is_dir():
        return []
    return sorted(p.stem for p in LABS_DIR.glob("*.json"))


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _src_dir() -> str:
    return str(Path(__file__).resolve().parents[2])


def _child_env() -> dict:
    env = dict(os.environ)
    src = _src_dir()
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("PYTHONSTARTUP", None)
    return env


def _ours(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return marker.encode() in f.read()
    except OSError:
        return False


class Lab:
    def __init__(self, name: str = DEFAULT_NAME, progress: Optional[Callable[[str], None]] = None):
        self.name = check_name(name)
        self.dir = LABS_DIR / name
        self.state_path = LABS_DIR / f"{name}.json"
        self.lock_path = LABS_DIR / f".{name}.lock"
        self.record: dict = {}
        self.progress = progress
        self._lock_fd: Optional[int] = None
        self._t0 = time.monotonic()

    # ------------------------------------------------------------------ bookkeeping
    def say(self, text: str) -> None:
        if self.progress:
            self.progress(f"{text} ({time.monotonic() - self._t0:.2f}s)")

    def kname(self, model_ns: str) -> str:
        return f"{self.name}-{model_ns}"

    def exists(self) -> bool:
        return self.state_path.exists()

    def load(self) -> dict:
        try:
            self.record = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            raise LabError(f"no lab named {self.name!r} (labs: {', '.join(list_labs()) or 'none'})") from None
        except json.JSONDecodeError as e:
            raise LabError(f"{self.state_path}: unreadable lab state ({e.msg}); remove it by hand") from None
        return self.record

    def save(self) -> None:
        LABS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.state_path)

    @contextlib.contextmanager
    def locked(self, wait: bool = True):
        LABS_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                raise LabError(f"lab {self.name!r} is busy (another podnet lab command is working on it)") from None
            self._lock_fd = fd
            yield
        finally:
            self._lock_fd = None
            os.close(fd)

    # ------------------------------------------------------------------ rendering
    def render(self, paths: list[str], overrides: dict, ipvs_fallback: Optional[str] = None,
               notes: Optional[list] = None):
        """The cluster and its dataplane from the lab's copy of the inputs. With `ipvs_fallback`
        set, kube-proxy's ipvs mode is checked against the kernel first (refuse / fall back)."""
        from ..cluster import Cluster
        from ..dataplane import build_dataplane
        cluster = Cluster.load(paths, cni=overrides.get("cni"), cni_mode=overrides.get("cni_mode"),
                               proxy_mode=overrides.get("proxy_mode"))
        if ipvs_fallback is not None and cluster.config.proxy.mode == "ipvs" and not ipvs_available():
            if ipvs_fallback not in ("iptables", "nftables"):
                raise LabError("this kernel lacks IPVS (no ip_vs module), which kube-proxy's ipvs mode needs; "
                               "use --ipvs-fallback iptables (or nftables) to let kube-proxy fall back as it "
                               "does on such nodes")
            if notes is not None:
                notes.append(f"this kernel lacks IPVS: kube-proxy falls back to {ipvs_fallback} mode, as the "
                             "real one does when the ip_vs modules are missing")
            overrides.update(proxy_mode=ipvs_fallback)
            cluster = cluster.with_overrides(proxy_mode=ipvs_fallback)
        dp = build_dataplane(cluster)
        if ipvs_fallback is not None and any(ns.ipvs for ns in dp.state.namespaces.values()) \
                and not ipvs_available():
            raise LabError("the rendered state holds IPVS services and this kernel lacks IPVS")
        return cluster, dp

    def _render_for_kernel(self, paths: list[str], overrides: dict, ipvs_fallback: str, notes: list[str]):
        overrides = dict(overrides)
        cluster, dp = self.render(paths, overrides, ipvs_fallback or "refuse", notes)
        return cluster, dp, overrides

    def _copy_inputs(self, sources: list[str], into: Path) -> list[str]:
        if into.exists():
            shutil.rmtree(into)
        into.mkdir(parents=True)
        out = []
        for i, src in enumerate(sources):
            p = Path(src)
            if not p.exists():
                raise InputError("no such file or directory", file=str(src))
            dest = into / f"{i:02d}-{p.name}"
            if p.is_dir():
                shutil.copytree(p, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py", "*.pyc"))
            else:
                shutil.copy2(p, dest)
            out.append(str(dest))
        return out

    def _write_allocations(self, cluster) -> str:
        """The controllers' decisions, loaded with the inputs by every later render (see
        podnet.control.allocations): `lab apply` never moves or renumbers what runs."""
        import yaml
        from ..control.allocations import Allocations
        path = self.dir / ALLOCATIONS
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(Allocations.of(cluster).to_manifest(), sort_keys=False))
        os.replace(tmp, path)
        return str(path)

    def applier(self) -> Applier:
        caps = Capabilities(**self.record["caps"]) if self.record.get("caps") else None
        a = Applier(self.name, caps or Capabilities(), progress=self.say)
        return a

    # ------------------------------------------------------------------ up
    def up(self, paths: list[str], *, cni: Optional[str] = None, cni_mode: Optional[str] = None,
           proxy_mode: Optional[str] = None, ipvs_fallback: str = "refuse", guard: bool = True,
           workloads: bool = True) -> dict:
        require_root()
        from ..cluster import example_path
        sources = [str(Path(p).resolve()) for p in paths] or [example_path()]
        self._t0 = time.monotonic()
        with self.locked(wait=False):
            if self.exists():
                self.load()
                status = self.record.get("status")
                pid = self.record.get("pid")
                if status != "up" and pid and not _ours(pid, "podnet"):
                    raise LabError(f"a lab named {self.name!r} was left half-built by a `lab up` that died; "
                                   f"run `podnet lab down --name {self.name}` first")
                raise LabError(f"a lab named {self.name!r} is already {status or 'there'} "
                               f"({len(self.record.get('namespaces', []))} namespaces, since "
                               f"{self.record.get('created', '?')}); use another --name or "
                               f"`podnet lab down --name {self.name}`")
            notes: list[str] = []
            overrides = {"cni": cni, "cni_mode": cni_mode, "proxy_mode": proxy_mode}
            # render from the sources first: bad inputs fail before anything is created
            cluster, dp, overrides = self._render_for_kernel(sources, overrides, ipvs_fallback, notes)
            self.say(f"rendered {len(cluster.nodes)} nodes, {len(dp.pod_ns)} pod sandboxes "
                     f"({cluster.config.cni.plugin}, kube-proxy {cluster.config.proxy.mode})")
            from .workloads import plan_workloads
            plan = plan_workloads(dp) if workloads else None
            applier = Applier(self.name, progress=self.say)
            planned = applier.planned_namespaces(dp.state)
            clash = [n for n in planned if nsutil.exists(n)]
            if clash:
                raise LabError(f"network namespace {clash[0]} already exists and is not this lab's; "
                               f"choose another --name")
            self.record = {"version": 1, "name": self.name, "status": "starting", "pid": os.getpid(),
                           "created": _now(), "sources": sources, "overrides": overrides,
                           "namespaces": planned, "pods": {}, "nodes": {}, "agents": {}, "dns": {},
                           "etc_netns": [], "notes": notes, "inputs": [], "cni": cluster.config.cni.plugin,
                           "cni_mode": cluster.config.cni.mode, "proxy_mode": cluster.config.proxy.mode,
                           "workloads": workloads, "ipvs_fallback": ipvs_fallback}
            self.save()
            guard_proc = self._start_guard() if guard else None
            old_handlers = self._trap_signals()
            try:
                self.dir.mkdir(parents=True, exist_ok=True)
                self.record["inputs"] = self._copy_inputs(sources, self.dir / "inputs") + \
                    [self._write_allocations(cluster)]
                self.save()
                nsutil.create_netns(planned)
                self.say(f"{len(planned)} network namespaces created")
                applier.caps = Capabilities.probe(planned[-1])
                self.record["caps"] = vars(applier.caps)
                self.save()
                # the workloads start while the network is being wired (their sockets bind to
                # any address); they are waited for at the end
                waiters = self._spawn_workloads(plan, cluster, set(plan.agents), {d.pod for d in plan.dns}) \
                    if plan is not None else None
                applier.sync(None, dp.state)
                notes.extend(applier.notes)
                self.record["substitutions"] = [vars(s) for s in applier.substitutions]
                self._record_objects(cluster, dp)
                self._write_files(dp)
                if plan is not None:
                    self._write_resolv(plan, dp)
                    self._wait_workloads(plan, cluster, waiters)
                self.record["status"] = "up"
                self.record["ready"] = _now()
                self.record["seconds"] = round(time.monotonic() - self._t0, 3)
                self.save()
            except BaseException:
                self.record["status"] = "failed"
                with contextlib.suppress(Exception):
                    self.save()
                self._teardown()
                raise
            finally:
                self._restore_signals(old_handlers)
                if guard_proc is not None:
                    self._stop_guard(guard_proc)
        self.say(f"lab {self.name} is up")
        return self.record

    # ------------------------------------------------------------------ crash safety
    def _trap_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def interrupt(signum, frame):
            raise KeyboardInterrupt(f"signal {signum}")
        old = {}
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            old[sig] = signal.signal(sig, interrupt)
        return old

    @staticmethod
    def _restore_signals(old) -> None:
        if old:
            for sig, handler in old.items():
                signal.signal(sig, handler)

    def _start_guard(self) -> subprocess.Popen:
        """A process that tears the lab down if this one dies before the lab is up (even SIGKILL)."""
        return subprocess.Popen([sys.executable, "-m", "podnet.lab.guard", self.name, str(os.getpid())],
                                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env=_child_env())

    @staticmethod
    def _stop_guard(proc: subprocess.Popen) -> None:
        with contextlib.suppress(Exception):
            proc.stdin.write(b"done\n")
            proc.stdin.close()
        with contextlib.suppress(Exception):
            proc.wait(timeout=5)

    # ------------------------------------------------------------------ what the lab holds
    def _record_objects(self, cluster, dp) -> None:
        pods = {}
        for pod in cluster.pods:
            if not pod.node_name or pod.terminal or not pod.pod_ips:
                continue
            model_ns = dp.pod_ns.get(pod.key) or (pod.node_name if pod.host_network else None)
            if model_ns is None:
                continue
            pods[pod.key] = {"netns": model_ns, "node": pod.node_name, "ips": [str(i) for i in pod.pod_ips],
                             "host_network": pod.host_network,
                             "ports": [f"{p.container_port}/{p.protocol}" for p in pod.spec.all_ports()]}
        nodes = {}
        for node in cluster.nodes:
            nodes[node.name] = {"netns": node.name, "ips": [str(i) for i in node.internal_ips],
                                "pod_cidrs": [str(c) for c in node.pod_cidrs],
                                "roles": node.roles}
        self.record["pods"] = pods
        self.record["nodes"] = nodes
        self.record["model_namespaces"] = sorted(dp.state.namespaces)
        self.record["segments"] = sorted(Applier.used_segments(dp.state))
        self.save()

    def _write_files(self, dp) -> None:
        """Files the renderers wrote on nodes (CNI config, IPAM state...), for reading."""
        base = self.dir / "files"
        if base.exists():
            shutil.rmtree(base)
        for ns in dp.state.namespaces.values():
            for path, text in ns.files.items():
                dest = base / ns.name / path.lstrip("/")
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(text)

    def _write_resolv(self, plan, dp) -> None:
        rdir = self.dir / "resolv"
        rdir.mkdir(parents=True, exist_ok=True)
        etc = set(self.record.get("etc_netns", []))
        wanted = set()
        for key, text in plan.resolv.items():
            (rdir / (key.replace("/", "_") + ".conf")).write_text(text)
            model_ns = dp.pod_ns.get(key)
            if model_ns is None:
                continue
            d = ETC_NETNS / self.kname(model_ns)
            d.mkdir(parents=True, exist_ok=True)
            (d / "resolv.conf").write_text(text)
            wanted.add(str(d))
        for stale in etc - wanted:
            shutil.rmtree(stale, ignore_errors=True)
        self.record["etc_netns"] = sorted(wanted)
        self.save()

    # ------------------------------------------------------------------ workloads
    def _start_workloads(self, plan, cluster, agents: set[str], dns: set[str]) -> None:
        self._wait_workloads(plan, cluster, self._spawn_workloads(plan, cluster, agents, dns))

    def _spawn_workloads(self, plan, cluster, agents: set[str], dns: set[str]):
        adir = self.dir / "agents"
        adir.mkdir(parents=True, exist_ok=True)
        env = _child_env()
        waiting = {}
        for name in sorted(agents):
            ap = plan.agents.get(name)
            if ap is None:
                continue
            spec = ap.spec(self.kname)
            ready = adir / f"{name}.ready"
            ready.unlink(missing_ok=True)
            spec.update(ready_file=str(ready))
            spec_path = adir / f"{name}.json"
            spec_path.write_text(json.dumps(spec, indent=1, sort_keys=True))
            with open(adir / f"{name}.log", "ab") as log:
                proc = subprocess.Popen(["ip", "netns", "exec", self.kname(ap.netns), sys.executable,
                                         AGENT_SCRIPT, str(spec_path)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
            self.record["agents"][name] = {"pid": proc.pid, "netns": self.kname(ap.netns),
                                           "spec": str(spec_path), "digest": _digest(spec_path.read_text())}
            waiting[name] = (proc, ready)
        dns_waiting = {}
        for d in plan.dns:
            if d.pod not in dns:
                continue
            log_path = adir / f"dns-{d.pod.replace('/', '_')}.log"
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(["ip", "netns", "exec", self.kname(d.netns), sys.executable, "-m",
                                         "podnet.dns", "serve", *sum((["-f", p] for p in self.record["inputs"]), []),
                                         "--listen", "0.0.0.0:53"],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, env=env)
            self.record["dns"][d.pod] = {"pid": proc.pid, "netns": self.kname(d.netns), "log": str(log_path)}
            dns_waiting[d.pod] = (proc, self.kname(d.netns), log_path)
        self.save()
        return agents, waiting, dns_waiting

    def _wait_workloads(self, plan, cluster, waiters) -> None:
        agents, waiting, dns_waiting = waiters
        adir = self.dir / "agents"
        zone = cluster.config.cluster_domain.rstrip(".")
        deadline = time.monotonic() + READY_TIMEOUT
        for name, (proc, ready) in waiting.items():
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = (adir / f"{name}.log").read_text(errors="replace").strip().splitlines()
                    raise LabError(f"the workload agent of {name} did not start: "
                                   f"{log[-1] if log else 'exit ' + str(proc.returncode)}")
                time.sleep(0.01)
            status = json.loads(ready.read_text())
            if not status.get("ok"):
                raise LabError(f"{name}: {status['errors'][0]}" +
                               (f" (and {len(status['errors']) - 1} more)" if len(status["errors"]) > 1 else ""))
        if waiting:
            self.say(f"{len(waiting)} workload agents serving "
                     f"{sum(len(s) for a in plan.agents.values() if a.name in agents for s in a.sockets.values())} "
                     "sockets")
        from .client import dns_query
        for pod, (proc, netns, log_path) in dns_waiting.items():
            while True:
                status, _, _ = dns_query(netns, "127.0.0.1", f"kubernetes.default.svc.{zone}", timeout=0.3)
                if status in ("ok", "nxdomain"):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log = log_path.read_text(errors="replace").strip().splitlines()
                    raise LabError(f"the DNS server of {pod} (python -m podnet.dns serve) did not answer: "
                                   f"{log[-1] if log else 'exit ' + str(proc.returncode)}")
                time.sleep(0.05)
        if dns_waiting:
            self.say(f"{len(dns_waiting)} DNS servers (podnet.dns) answering")

    def _stop_processes(self, agents: Optional[set[str]] = None, dns: Optional[set[str]] = None) -> None:
        pids = []
        for name, info in list(self.record.get("agents", {}).items()):
            if agents is None or name in agents:
                if _ours(info["pid"], AGENT_MARKER):
                    pids.append(info["pid"])
                self.record["agents"].pop(name, None)
        for pod, info in list(self.record.get("dns", {}).items()):
            if dns is None or pod in dns:
                if _ours(info["pid"], "podnet.dns"):
                    pids.append(info["pid"])
                self.record["dns"].pop(pod, None)
        nsutil.kill_pids(pids)

    # ------------------------------------------------------------------ down
    def down(self) -> list[str]:
        """Remove everything the lab made. Returns the namespaces deleted."""
        require_root()
        with self.locked():
            if not self.exists():
                raise LabError(f"no lab named {self.name!r} (labs: {', '.join(list_labs()) or 'none'})")
            with contextlib.suppress(LabError):
                self.load()
            return self._teardown()

    def _teardown(self) -> list[str]:
        rec = self.record
        with contextlib.suppress(Exception):
            self._stop_processes()
        names = list(rec.get("namespaces", []))
        # namespaces `lab apply` added later are recorded too; processes in any of them are killed
        deleted = nsutil.delete_netns(names)
        for d in rec.get("etc_netns", []):
            shutil.rmtree(d, ignore_errors=True)
        for n in names:
            d = ETC_NETNS / n
            if d.is_dir() and set(os.listdir(d)) <= {"resolv.conf"}:
                shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        self.state_path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.lock_path.unlink()
        return deleted

    # ------------------------------------------------------------------ apply
    def apply(self, paths: list[str]) -> dict:
        """Bring the lab to the state the (new) inputs describe, changing only what differs."""
        require_root()
        self._t0 = time.monotonic()
        with self.locked(wait=False):
            self.load()
            if self.record.get("status") != "up":
                raise LabError(f"lab {self.name!r} is {self.record.get('status')}, not up")
            rec = self.record
            overrides = rec["overrides"]
            sources = [str(Path(p).resolve()) for p in paths] or rec["sources"]
            notes: list[str] = []
            _, old_dp = self.render(rec["inputs"], overrides)
            new_inputs = self._copy_inputs(sources, self.dir / "inputs.new")
            # running pods keep their nodes and addresses, Services theirs (the lab's etcd)
            cluster, dp, _ = self._render_for_kernel(new_inputs + [str(self.dir / ALLOCATIONS)], overrides,
                                                     rec.get("ipvs_fallback", "refuse"), notes)
            from .workloads import plan_workloads
            plan = plan_workloads(dp)
            old_plan = plan_workloads(old_dp)
            applier = self.applier()
            planned = applier.planned_namespaces(dp.state)
            def spec_of(p, n):
                return json.dumps(p.agents[n].spec(self.kname), sort_keys=True) if n in p.agents else None
            changed_agents = {n for n in set(plan.agents) | set(old_plan.agents)
                              if spec_of(plan, n) != spec_of(old_plan, n)}
            records_changed = plan.dns_serial != old_plan.dns_serial
            old_dns = {d.pod: d for d in old_plan.dns}
            new_dns = {d.pod: d for d in plan.dns}
            changed_dns = {p for p in set(old_dns) | set(new_dns)
                           if records_changed or (p in old_dns) != (p in new_dns)
                           or (p in new_dns and vars(old_dns[p]) != vars(new_dns[p]))}
            # sockets in namespaces about to go would keep them alive: stop their holders first
            self._stop_processes(agents=changed_agents, dns=changed_dns)
            # the new namespaces are recorded before they exist
            rec["namespaces"] = sorted(set(rec["namespaces"]) | set(planned))
            self.save()
            applier.sync(old_dp.state, dp.state)
            gone = set(rec["namespaces"]) - set(planned)
            rec["namespaces"] = planned
            inputs_dir = self.dir / "inputs"
            shutil.rmtree(inputs_dir, ignore_errors=True)
            os.replace(self.dir / "inputs.new", inputs_dir)
            rec["inputs"] = [str(inputs_dir / Path(p).name) for p in new_inputs] + [self._write_allocations(cluster)]
            rec["sources"] = sources
            rec["notes"] = list(dict.fromkeys(rec.get("notes", []) + notes + applier.notes))
            self._record_objects(cluster, dp)
            self._write_files(dp)
            self._write_resolv(plan, dp)
            self._start_workloads(plan, cluster, {n for n in changed_agents if n in plan.agents},
                                  {p for p in changed_dns if p in new_dns})
            self.save()
            summary = {"namespaces_added": sorted(set(planned) - set(applier.planned_namespaces(old_dp.state))),
                       "namespaces_removed": sorted(gone),
                       "agents_restarted": sorted(n for n in changed_agents if n in plan.agents),
                       "dns_restarted": sorted(p for p in changed_dns if p in new_dns),
                       "seconds": round(time.monotonic() - self._t0, 3)}
            return summary

    # ------------------------------------------------------------------ queries
    def status(self) -> dict:
        rec = self.load()
        present = set(nsutil.list_netns())
        out = {"name": self.name, "status": rec.get("status"), "created": rec.get("created"),
               "cni": f"{rec.get('cni')}" + (f" ({rec.get('cni_mode')})" if rec.get("cni_mode") else ""),
               "proxy": rec.get("proxy_mode"), "sources": rec.get("sources"),
               "namespaces": len(rec.get("namespaces", [])),
               "namespaces_present": sum(1 for n in rec.get("namespaces", []) if n in present),
               "notes": rec.get("notes", []), "nodes": [], "pods": []}
        agents = rec.get("agents", {})
        for name, info in rec.get("nodes", {}).items():
            agent = agents.get(name)
            out["nodes"].append({"name": name, "netns": self.kname(info["netns"]), "ips": info["ips"],
                                 "pod_cidrs": info["pod_cidrs"], "present": self.kname(info["netns"]) in present,
                                 "agent": agent["pid"] if agent and _ours(agent["pid"], AGENT_MARKER) else None})
        for key, info in sorted(rec.get("pods", {}).items()):
            dns = rec.get("dns", {}).get(key)
            out["pods"].append({"pod": key, "node": info["node"], "ips": info["ips"],
                                "netns": self.kname(info["netns"]), "host_network": info["host_network"],
                                "ports": info["ports"], "present": self.kname(info["netns"]) in present,
                                "dns": dns["pid"] if dns and _ours(dns["pid"], "podnet.dns") else None})
        return out

    def find_pod(self, name: str) -> tuple[str, dict]:
        """A pod by name, ns/name or unambiguous prefix (as podnet's other commands take it)."""
        pods = self.record.get("pods") or self.load().get("pods", {})
        if name in pods:
            return name, pods[name]
        namespace = None
        if "/" in name:
            namespace, name = name.split("/", 1)
        cands = [k for k in pods if k.split("/", 1)[1] == name and (namespace is None or k.startswith(namespace + "/"))]
        if not cands:
            cands = [k for k in pods if k.split("/", 1)[1].startswith(name)
                     and (namespace is None or k.startswith(namespace + "/"))]
        if len(cands) == 1:
            return cands[0], pods[cands[0]]
        if not cands:
            raise InputError(f"lab {self.name}: no pod named {name!r}")
        raise InputError(f"{name!r} names several pods ({', '.join(sorted(cands)[:6])}); give the full name")

    def exec_argv(self, target: str, cmd: list[str]) -> list[str]:
        """The command line that runs `cmd` in a pod's (or node's) namespace."""
        rec = self.record or self.load()
        if not cmd:
            cmd = [os.environ.get("SHELL", "/bin/sh")]
        if target.startswith("node/"):
            node = target[5:]
            if node not in rec.get("nodes", {}):
                raise InputError(f"lab {self.name}: no node named {node!r} "
                                 f"(nodes: {', '.join(rec.get('nodes', {}))})")
            return ["ip", "netns", "exec", self.kname(node)] + cmd
        if target.startswith("netns/") or target in ("gateway", "internet"):
            model = target.split("/", 1)[1] if "/" in target else target
            if self.kname(model) not in rec.get("namespaces", []):
                raise InputError(f"lab {self.name}: no namespace {model!r}")
            return ["ip", "netns", "exec", self.kname(model)] + cmd
        key, info = self.find_pod(target[4:] if target.startswith("pod/") else target)
        netns = self.kname(info["netns"])
        resolv = self.dir / "resolv" / (key.replace("/", "_") + ".conf")
        if info["host_network"] and resolv.exists():
            # the node's namespace is shared: bind the pod's resolv.conf in this command's own
            # mount namespace (ip netns exec makes one, private to the command)
            return ["ip", "netns", "exec", netns, "sh", "-c", 'mount --bind "$0" /etc/resolv.conf && exec "$@"',
                    str(resolv)] + cmd
        return ["ip", "netns", "exec", netns] + cmd

    def snapshot(self, directory: str | os.PathLike, workers: int = 8) -> Path:
        """The lab's namespaces dumped with podnet.snapshot.capture, under the model's names
        (topology.json says which NICs share a segment and which veths pair up)."""
        import concurrent.futures

        from ..snapshot.capture import capture_netns
        rec = self.record or self.load()
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        _, dp = self.render(rec["inputs"], dict(rec["overrides"], proxy_mode=rec["proxy_mode"]))
        state = dp.state
        topo = {"version": 1, "lab": self.name, "namespaces": {}, "segments": {}, "veth_pairs": []}
        for ns in state.namespaces.values():
            meta = {"kind": ns.kind, "netns": self.kname(ns.name)}
            if ns.node:
                meta["node"] = ns.node
            if ns.pod:
                meta["pod"] = ns.pod
            topo["namespaces"][ns.name] = meta
            for link in ns.links.values():
                if link.segment:
                    topo["segments"].setdefault(link.segment, {"members": []})["members"].append([ns.name, link.name])
                if link.peer and (ns.name, link.name) < tuple(link.peer):
                    topo["veth_pairs"].append([ns.name, link.name, link.peer[0], link.peer[1]])
        for seg in state.segments.values():
            entry = topo["segments"].setdefault(seg.name, {"members": []})
            entry["description"] = seg.description
            if seg.blocked_pairs:
                entry["blocked"] = sorted([list(p) for p in seg.blocked_pairs])
        # the switches the lab put in for the segments are dumped too (as `seg-<name>`, kind
        # underlay): a member NIC is a veth into that switch, as a kind node's eth0 is a veth into
        # docker's bridge, so the dump holds the whole L2 path
        from .apply import segment_port_name
        jobs = [(self.kname(n), n) for n in state.namespaces if nsutil.exists(self.kname(n))]
        for segment in sorted(Applier.used_segments(state)):
            model = f"seg-{segment}"
            if model in state.namespaces or not nsutil.exists(f"{self.name}-seg-{segment}"):
                continue
            jobs.append((f"{self.name}-seg-{segment}", model))
            topo["namespaces"][model] = {"kind": "underlay", "netns": f"{self.name}-seg-{segment}",
                                         "segment": segment}
            for ns_name, ifname in topo["segments"].get(segment, {}).get("members", []):
                topo["veth_pairs"].append([ns_name, ifname, model, segment_port_name(ns_name, ifname)])
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(capture_netns, kns, out / model) for kns, model in jobs]:
                f.result()
        (out / "topology.json").write_text(json.dumps(topo, indent=2, sort_keys=True) + "\n")
        return out


def _digest(text: str) -> str:
    import hashlib
    return hashlib.sha256(text.encode()).hexdigest()[:16]
