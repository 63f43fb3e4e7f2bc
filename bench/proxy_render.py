#!/usr/bin/env python3
"""kube-proxy iptables, nftables and IPVS renders at scale.

Builds a ProxyView directly (10,000 Services x 10 endpoints by default: a mix
of ClusterIP and NodePort Services, a tenth of the endpoints on this node),
then for each mode times the first (full) sync and prints the payload size,
changes one endpoint of one Service and times the partial re-sync. For IPVS
the size is that of the IPVS table (`ipvsadm -Sn`), the ipsets (`ipset save`)
and the iptables-restore payload, and the re-sync also prints how many
kernel operations (ipvsadm / ipset / ip commands) it takes.

    python bench/proxy_render.py [--services 10000] [--endpoints 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from podnet.linux.render import ipvsadm_save  # noqa: E402
from podnet.proxy.iptables import IptablesProxier  # noqa: E402
from podnet.proxy.ipvs import IpvsProxier  # noqa: E402
from podnet.proxy.model import (EndpointInfo, ProxyNode, ProxyView, ServicePortInfo,  # noqa: E402
                                ServicePortName)
from podnet.proxy.nftables import NftablesProxier  # noqa: E402
from podnet.proxy.nftables import render as render_nft  # noqa: E402


def build_view(services: int, per_service: int) -> ProxyView:
    node = ProxyNode("bench-node", {4: ("192.168.0.2",)}, cluster_cidrs={4: "10.0.0.0/8"})
    svcs, eps = {}, {}
    for i in range(services):
        spn = ServicePortName(f"ns{i % 100}", f"svc{i}", "http")
        svcs[spn] = ServicePortInfo(spn, f"172.30.{i // 250}.{i % 250 + 1}", 80,
                                    node_port=30000 + i // 4 if i % 4 == 0 else 0)
        eps[spn] = [EndpointInfo(f"10.{1 + (i * per_service + j) // 64000}.{(i * per_service + j) // 250 % 256}."
                                 f"{(i * per_service + j) % 250 + 1}", 8080, is_local=(j == 0),
                                 node_name="bench-node" if j == 0 else "other")
                    for j in range(per_service)]
    return ProxyView(node, 4, dict(sorted(svcs.items())), eps, service_cidrs=("172.30.0.0/16",))


def with_one_endpoint_changed(view: ProxyView) -> ProxyView:
    spn = next(iter(view.services))
    eps = list(view.endpoints[spn])
    old = eps[-1]
    eps[-1] = EndpointInfo("10.250.0.1", old.port, node_name="other")
    endpoints = dict(view.endpoints)
    endpoints[spn] = sorted(eps, key=lambda e: e.endpoint)
    return ProxyView(view.node, view.family, view.services, endpoints,
                     service_cidrs=view.service_cidrs)


def size(text: str) -> str:
    return f"{text.count(chr(10)):,} lines, {len(text.encode()):,} bytes"


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10_000)
    ap.add_argument("--endpoints", type=int, default=10)
    args = ap.parse_args()

    view, t = timed(lambda: build_view(args.services, args.endpoints))
    print(f"view: {len(view.services):,} services x {args.endpoints} endpoints "
          f"({view.total_endpoints:,} endpoints) built in {t:.2f} s")
    changed = with_one_endpoint_changed(view)

    ipt = IptablesProxier()
    text, t = timed(lambda: ipt.sync(view))
    print(f"iptables full sync:    {t:6.2f} s  {size(text)}")
    text, t = timed(lambda: ipt.sync(changed))
    print(f"iptables partial sync: {t:6.2f} s  {size(text)}  (one endpoint changed)")

    nft = NftablesProxier()
    text, t = timed(lambda: nft.sync(view))
    print(f"nftables full sync:    {t:6.2f} s  {size(text)}  (transaction)")
    dump, t = timed(lambda: render_nft(view))
    print(f"nftables render():     {t:6.2f} s  {size(dump)}  (the table, Fake.Dump form)")
    text, t = timed(lambda: nft.sync(changed))
    print(f"nftables partial sync: {t:6.2f} s  {size(text)}  (one endpoint changed)")

    ipvs = IpvsProxier()
    rules, t = timed(lambda: ipvs.sync(view))
    table = ipvsadm_save(rules.services)
    reals = sum(len(v.reals) for v in rules.services)
    print(f"ipvs full sync:        {t:6.2f} s  {len(rules.services):,} virtual servers, {reals:,} real servers, "
          f"{len(rules.bind_addresses):,} addresses on kube-ipvs0")
    print(f"  ipvsadm -Sn {size(table)}; ipset save {size(rules.ipsets)}; "
          f"iptables-restore {size(rules.restore)}")
    rules, t = timed(lambda: ipvs.sync(changed))
    ops = [op for op in ipvs.last_ops if not op.startswith("iptables-restore")]
    print(f"ipvs re-sync:          {t:6.2f} s  {len(ops)} kernel operations (one endpoint changed): "
          + "; ".join(ops))


if __name__ == "__main__":
    main()
