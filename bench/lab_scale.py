"""How long `lab up` and `lab down` take: 3 nodes + 10 pods, and 20 nodes + 300 pods.

    sudo .venv/bin/python bench/lab_scale.py [--cni kindnet] [--proxy-mode iptables] [--runs 3]

"pods" counts the workload pods the manifests ask for (a Deployment behind a
Service, and a client DaemonSet); the system pods of a kind cluster (CoreDNS,
kindnet, kube-proxy, the control plane's static pods) come on top. Every pod
gets its namespace, veth, routes and its echo server, every node its proxy rules;
`lab up` returns when every server answers. Prints one line per size.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from podnet.lab.lab import Lab  # noqa: E402


def manifests(directory: Path, nodes: int, pods: int, cni: str) -> None:
    workers = "\n".join("- role: worker" for _ in range(nodes - 1))
    clients = nodes                                 # one client pod per node (DaemonSet)
    web = max(pods - clients, 1)
    (directory / "kind.yaml").write_text(textwrap.dedent(f"""\
        kind: Cluster
        apiVersion: kind.x-k8s.io/v1alpha4
        name: bench
        nodes:
        - role: control-plane
        """) + workers + "\n")
    (directory / "apps.yaml").write_text(textwrap.dedent(f"""\
        apiVersion: apps/v1
        kind: DaemonSet
        metadata: {{name: client, namespace: default}}
        spec:
          selector: {{matchLabels: {{app: client}}}}
          template:
            metadata: {{labels: {{app: client}}}}
            spec:
              tolerations: [{{operator: Exists}}]
              containers: [{{name: c, image: netshoot}}]
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web, namespace: default}}
        spec:
          replicas: {web}
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              containers: [{{name: nginx, image: nginx, ports: [{{containerPort: 80}}]}}]
        ---
        apiVersion: v1
        kind: Service
        metadata: {{name: web, namespace: default}}
        spec:
          selector: {{app: web}}
          ports: [{{port: 80}}]
        """))
    if nodes * 110 < pods:
        raise SystemExit("too many pods for the nodes")


def run(nodes: int, pods: int, cni: str, proxy: str, runs: int) -> None:
    ups, downs = [], []
    info = None
    for i in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            manifests(Path(tmp), nodes, pods, cni)
            lab = Lab(f"bench{os.getpid() % 1000}")
            t = time.perf_counter()
            try:
                rec = lab.up([tmp], cni=cni, proxy_mode=proxy)
                ups.append(time.perf_counter() - t)
                info = (len(rec["nodes"]), len(rec["pods"]), len(rec["namespaces"]))
            finally:
                t = time.perf_counter()
                if lab.exists():
                    lab.down()
                    downs.append(time.perf_counter() - t)
    n, p, ns = info
    print(f"{nodes:>3} nodes + {pods:>3} pods ({p} pods incl. system, {ns} namespaces, {cni}, kube-proxy {proxy}): "
          f"lab up {statistics.median(ups):6.2f}s   lab down {statistics.median(downs):5.2f}s   "
          f"(median of {runs}; up min {min(ups):.2f}s max {max(ups):.2f}s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cni", default="kindnet")
    ap.add_argument("--proxy-mode", default="iptables")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="3x10,20x300", help="NODESxPODS,...")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    for size in args.sizes.split(","):
        nodes, pods = (int(x) for x in size.split("x"))
        run(nodes, pods, args.cni, args.proxy_mode, args.runs)


if __name__ == "__main__":
    main()
