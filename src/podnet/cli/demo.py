"""`podnet demo`: podnet's main job on the built-in example, no root needed."""

from __future__ import annotations

import click

from .main import cli, handle_errors, load_cluster, manifests_option
from .tables import AgeClock, find_kind, render_table

SECTIONS = [("nodes", True), ("pods", True), ("services", False), ("endpointslices", False)]


def print_kind(cluster, kind: str, wide: bool, all_namespaces: bool = True) -> None:
    table = find_kind(kind)
    clock = AgeClock(cluster)
    items = sorted(table.items(cluster), key=lambda o: (o.meta.namespace, o.meta.name))
    headers = (["NAMESPACE"] if table.namespaced else []) + table.headers + (table.wide_headers if wide else [])
    rows = []
    for item in items:
        row = table.row(cluster, clock, item) + (table.wide_row(cluster, clock, item) if wide and table.wide_row else [])
        rows.append(([item.meta.namespace] if table.namespaced else []) + row)
    click.echo(render_table(headers, rows))


@cli.command()
@manifests_option
@handle_errors
def demo(paths):
    """Load a cluster (default: the guide's lab) and show what podnet decides for it.

    Prints the reconciled nodes, pods, Services and EndpointSlices, as `podnet get`
    does; `podnet render` and `podnet trace` show the dataplane.
    """
    cluster = load_cluster(paths)
    cfg = cluster.config
    click.echo(f"# cluster {cfg.name}: {len(cluster.nodes)} nodes, CNI {cfg.cni.plugin} ({cfg.cni.mode}), "
               f"kube-proxy {cfg.proxy.mode}, pods {','.join(map(str, cfg.pod_subnets))}, "
               f"services {','.join(map(str, cfg.service_subnets))}")
    for kind, wide in SECTIONS:
        click.echo(f"\n$ podnet get {kind} -A{' -o wide' if wide else ''}")
        print_kind(cluster, kind, wide)
