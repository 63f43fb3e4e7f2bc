#!/usr/bin/env python3
"""`podnet policy list` at scale: 5,000 pods in 200 namespaces under 1,000 NetworkPolicies.

The inputs are generated here and written as YAML to a temporary directory, then
loaded with `Cluster.load` as a user's would be (loading is timed separately from
the analysis). Each namespace holds five tiers (web, api, worker, cache, db), each a
Deployment of 5 replicas, and five policies: a default-deny ingress, web -> api on
a named port, api/worker -> db on 5432 with an endPort range, ingress to api from
the namespaces of the same team (namespaceSelector AND podSelector), and egress
of db limited to DNS plus an ipBlock with except. Prints the time of each phase
and the peak resident memory.

    python bench/policy_scale.py [--namespaces 200] [--replicas 5] [--nodes N]
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
from podnet.policy import PolicyEngine, connection_list  # noqa: E402
from podnet.policy.output import render  # noqa: E402

TIERS = ("web", "api", "worker", "cache", "db")
PORTS = {"web": 8080, "api": 9090, "worker": 7000, "cache": 6379, "db": 5432}


def write_inputs(directory: Path, namespaces: int, replicas: int, nodes: int) -> None:
    with open(directory / "kind.yaml", "w") as f:
        f.write("kind: Cluster\napiVersion: kind.x-k8s.io/v1alpha4\nname: policy-scale\n"
                "networking: {podSubnet: 10.0.0.0/8, serviceSubnet: 10.96.0.0/12}\nnodes:\n"
                "- role: control-plane\n" + "- role: worker\n" * (nodes - 1))
    with open(directory / "apps.yaml", "w") as f:
        for n in range(namespaces):
            ns = f"ns{n:03d}"
            f.write(f"---\napiVersion: v1\nkind: Namespace\n"
                    f"metadata: {{name: {ns}, labels: {{team: team{n % 20}, env: env{n % 3}}}}}\n")
            for tier in TIERS:
                port = PORTS[tier]
                f.write(f"""---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {tier}, namespace: {ns}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{tier: {tier}}}}}
  template:
    metadata: {{labels: {{tier: {tier}, app: {ns}-{tier}}}}}
    spec:
      containers: [{{name: main, image: img, ports: [{{name: serve, containerPort: {port}}}]}}]
""")
    with open(directory / "policies.yaml", "w") as f:
        for n in range(namespaces):
            ns = f"ns{n:03d}"
            f.write(f"""---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: default-deny, namespace: {ns}}}
spec: {{podSelector: {{}}, policyTypes: [Ingress]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-to-api, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: api}}}}
  ingress: [{{from: [{{podSelector: {{matchLabels: {{tier: web}}}}}}], ports: [{{port: serve}}]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: to-db, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: db}}}}
  ingress:
  - from:
    - podSelector: {{matchExpressions: [{{key: tier, operator: In, values: [api, worker]}}]}}
    ports: [{{port: 5432, endPort: 5440, protocol: TCP}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: team-to-api, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: api}}}}
  ingress:
  - from:
    - namespaceSelector: {{matchLabels: {{team: team{n % 20}}}}}
      podSelector: {{matchLabels: {{tier: worker}}}}
    - ipBlock: {{cidr: 172.16.0.0/12, except: [172.16.{n % 250}.0/24]}}
    ports: [{{port: 9090}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: db-egress, namespace: {ns}}}
spec:
  podSelector: {{matchLabels: {{tier: db}}}}
  policyTypes: [Egress]
  egress:
  - to: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{k8s-app: kube-dns}}}}}}]
    ports: [{{port: 53, protocol: UDP}}, {{port: 53, protocol: TCP}}]
  - to: [{{ipBlock: {{cidr: 192.168.0.0/16, except: [192.168.{n % 250}.0/24]}}}}]
""")


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--namespaces", type=int, default=200)
    ap.add_argument("--replicas", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=None,
                    help="kind nodes (default: enough for 100 pods per worker)")
    ap.add_argument("--semantics", choices=["analyzer", "plugin"], default="analyzer",
                    help="analyzer: what `podnet policy list` uses by default")
    args = ap.parse_args()
    if args.nodes is None:
        args.nodes = args.namespaces * len(TIERS) * args.replicas // 100 + 2
    with tempfile.TemporaryDirectory(prefix="podnet-policy-bench-") as tmp:
        d = Path(tmp)
        t0 = time.perf_counter()
        write_inputs(d, args.namespaces, args.replicas, args.nodes)
        size = sum(p.stat().st_size for p in d.iterdir())
        t1 = time.perf_counter()
        cluster = Cluster.load([d])
        t2 = time.perf_counter()
    rss_loaded = peak_rss_mib()
    engine = PolicyEngine(cluster, args.semantics)
    t3 = time.perf_counter()
    result = connection_list(cluster, engine=engine)
    t4 = time.perf_counter()
    text = render(result, "txt")
    t5 = time.perf_counter()
    pods = sum(1 for p in cluster.pods if p.meta.source)
    print(f"inputs: {args.namespaces} namespaces, {args.namespaces * len(TIERS)} Deployments x "
          f"{args.replicas} replicas = {pods} pods, {len(engine.policies)} NetworkPolicies "
          f"({size / 1e6:.1f} MB of YAML, written in {t1 - t0:.1f} s)")
    print(f"load + reconcile (Cluster.load):     {t2 - t1:6.2f} s")
    print(f"policy engine (parse, classes):      {t3 - t2:6.2f} s   "
          f"{len(engine.classes)} equivalence classes for {len(cluster.pods)} pods")
    print(f"connection list (workloads, ranges): {t4 - t3:6.2f} s   "
          f"{len(result.connections)} lines, {len(result.workloads)} workloads, "
          f"{len({c.src for c in result.connections if c.src.endswith('[External]')})} external source ranges")
    print(f"render txt:                          {t5 - t4:6.2f} s   {len(text) / 1e6:.1f} MB")
    print(f"policy list total (engine+list+txt): {t5 - t2:6.2f} s   ({args.semantics} semantics)")
    print(f"peak RSS: {peak_rss_mib():.0f} MiB (after loading: {rss_loaded:.0f} MiB)")


if __name__ == "__main__":
    main()
