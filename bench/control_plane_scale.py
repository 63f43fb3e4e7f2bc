#!/usr/bin/env python3
"""Load + reconcile a cluster at Kubernetes' published scalability limits.

5,000 nodes, 150,000 pods (10,000 Deployments x 15 replicas), 10,000 Services,
written as manifests and loaded with `Cluster.load`, as a user would. Prints
the time of each phase and the peak resident memory.

    python bench/control_plane_scale.py [--nodes 5000] [--deployments 10000] [--replicas 15]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from podnet import Cluster  # noqa: E402
from podnet.api.loader import load_manifests  # noqa: E402


def write_inputs(directory: Path, nodes: int, deployments: int, replicas: int) -> None:
    with open(directory / "kind.yaml", "w") as f:
        f.write("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: scale\n"
                "networking: {podSubnet: 10.0.0.0/8, serviceSubnet: 10.96.0.0/12}\nnodes:\n"
                "- role: control-plane\n")
        f.write("- role: worker\n" * (nodes - 1))
    with open(directory / "apps.yaml", "w") as f:
        for i in range(deployments):
            ns = f"ns{i % 100}"
            f.write(f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app{i}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: app{i}}}}}
  template:
    metadata: {{labels: {{app: app{i}, tier: t{i % 7}}}}}
    spec:
      containers: [{{name: main, image: nginx, ports: [{{name: http, containerPort: 8080}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: app{i}, namespace: {ns}}}
spec:
  selector: {{app: app{i}}}
  ports: [{{name: http, port: 80, targetPort: http}}]
""")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=5000)
    ap.add_argument("--deployments", type=int, default=10000)
    ap.add_argument("--replicas", type=int, default=15)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="podnet-bench-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        write_inputs(d, args.nodes, args.deployments, args.replicas)
        size = sum(p.stat().st_size for p in d.iterdir())
        t1 = time.perf_counter()
        bag = load_manifests([d])
        t2 = time.perf_counter()
        cluster = Cluster.from_manifests(bag)
        t3 = time.perf_counter()
    pods = len(cluster.pods)
    print(f"inputs: {args.nodes} nodes, {args.deployments} Deployments x {args.replicas} replicas, "
          f"{args.deployments} Services ({size / 1e6:.1f} MB of YAML, written in {t1 - t0:.1f} s)")
    print(f"result: {len(cluster.nodes)} nodes, {pods} pods, {len(cluster.services)} services, "
          f"{len(cluster.endpoint_slices)} EndpointSlices")
    print(f"load (parse + validate):  {t2 - t1:7.2f} s")
    print(f"reconcile (controllers):  {t3 - t2:7.2f} s")
    print(f"load + reconcile:         {t3 - t1:7.2f} s")
    print(f"peak memory (max RSS):    {peak_rss_mib():7.0f} MiB")


if __name__ == "__main__":
    main()
