"""What many tests share: the guide's lab as inputs and its pods, packets traced as `podnet
trace` traces them, hops matched against a chapter's walk, and labs brought up for real
(random names, and whatever a lab may leave behind on the machine)."""

from __future__ import annotations

import os
import secrets
import shutil
import time
from pathlib import Path

from podnet.cli.trace import build_request
from podnet.dataplane import resolve_endpoints
from podnet.lab import nsutil
from podnet.lab.lab import ETC_NETNS, LABS_DIR
from podnet.sim.trace import trace

from conftest import GUIDE_LAB

CONTROL, WORKER, WORKER2 = "k8s-guide-control-plane", "k8s-guide-worker", "k8s-guide-worker2"
# connections a lab test makes to see every backend of a two-endpoint Service: the tests stop
# once they have, and a fair 50/50 choice sends 40 in a row to one pod once in 2^39 runs
# (12 were too few: CI saw it happen)
SPREAD_TRIES = 40

# web as a NodePort, with externalTrafficPolicy Cluster and Local
NODEPORTS = """
apiVersion: v1
kind: Service
metadata: {name: web-np, namespace: default}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-local, namespace: default}
spec:
  type: NodePort
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, nodePort: 30081}]
"""


# web as two LoadBalancers, with externalTrafficPolicy Cluster and Local (IPs from the pool)
LOAD_BALANCERS = """
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, nodePort: 30080}]
---
apiVersion: v1
kind: Service
metadata: {name: web-lb-local, namespace: default}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  selector: {app: web}
  ports: [{port: 80, nodePort: 30081}]
"""


def guide_inputs(directory: Path, extra: str = "", config: str = "") -> Path:
    """The guide's lab copied into `directory`, plus `extra` objects (extra.yaml) and `config`
    lines of a PodnetConfig (podnet.yaml)."""
    directory.mkdir(parents=True, exist_ok=True)
    for f in GUIDE_LAB.glob("*.yaml"):
        shutil.copy(f, directory / f.name)
    if extra:
        (directory / "extra.yaml").write_text(extra)
    if config:
        (directory / "podnet.yaml").write_text("apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n" + config)
    return directory


def tshoot(dp, node: str):
    """The net-tshoot DaemonSet's pod on `node`."""
    return next(p for p in dp.cluster.pods if p.name.startswith("net-tshoot-") and p.node_name == node)


def host_veth(dp, pod) -> str:
    """The node's end of the pod's eth0."""
    return dp.netns_of_pod(pod).links["eth0"].peer[1]


# ---------------------------------------------------------------------------- traces

def walk(dp, source: str, destination: str, proto: str = "tcp", *, reply: bool = True, size: int = 84,
         seed=None, picks=None):
    """`podnet trace --from SOURCE --to DESTINATION -p PROTO` on a dataplane: the TraceResult."""
    src, dst, _ = resolve_endpoints(dp, source, destination, proto)
    return trace(dp.state, build_request(src, dst, proto, 40000, size, reply, seed, picks, dp.state))


def walk_one(dp, source: str, destination: str, proto: str = "tcp", **kwargs):
    """The only branch of a walk without random choices."""
    result = walk(dp, source, destination, proto, **kwargs)
    assert len(result.branches) == 1, [b.forward.outcome for b in result.branches]
    return result.branches[0]


def hops(leg, stages=("route", "neigh", "xmit")) -> list[tuple[str, str, str]]:
    """(netns, stage, text) of the hops of these stages, of a leg (or a list of hops)."""
    return [(h.ns, h.stage, h.text) for h in getattr(leg, "hops", leg) if h.stage in stages]


def assert_hops(got, wanted) -> None:
    """Hop for hop: the same netns and stage, and the wanted text within the hop's."""
    assert len(got) == len(wanted), "\n".join(map(str, got))
    for (ns, stage, text), (w_ns, w_stage, w_text) in zip(got, wanted):
        assert (ns, stage) == (w_ns, w_stage) and w_text in text, (ns, stage, text, w_text)


# ---------------------------------------------------------------------------- labs, for real

def lab_name(tag: str = "t") -> str:
    return f"pt{tag}{secrets.token_hex(3)}"


def leftovers(name: str) -> list[str]:
    """Anything of lab `name` still on the machine: namespaces, /etc/netns entries, its record
    and run directory, live processes."""
    out = [f"netns {n}" for n in nsutil.list_netns() if n.startswith(name + "-")]
    if ETC_NETNS.is_dir():
        out += [f"/etc/netns/{n}" for n in os.listdir(ETC_NETNS) if n.startswith(name + "-")]
    for p in (LABS_DIR / f"{name}.json", LABS_DIR / name):
        if p.exists():
            out.append(str(p))
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if (f"/labs/{name}/" in cmd or f"guard {name} " in cmd) and int(pid) != os.getpid():
                try:
                    state = open(f"/proc/{pid}/stat").read().split(") ", 1)[1][:1]
                except OSError:
                    continue
                if state != "Z":
                    out.append(f"process {pid}: {cmd[:80]}")
    return out


def wait_clean(name: str, seconds: float = 15) -> list[str]:
    """leftovers(name), given its processes `seconds` to exit."""
    deadline = time.monotonic() + seconds
    left = leftovers(name)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = leftovers(name)
    return left
