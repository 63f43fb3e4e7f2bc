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
    does; then what the CNI programs on a worker (`podnet render routes`) and the life
    of one packet from a pod there to a Service (`podnet trace`, one random draw).
    """
    cluster = load_cluster(paths)
    cfg = cluster.config
    click.echo(f"# cluster {cfg.name}: {len(cluster.nodes)} nodes, CNI {cfg.cni.plugin} ({cfg.cni.mode}), "
               f"kube-proxy {cfg.proxy.mode}, pods {','.join(map(str, cfg.pod_subnets))}, "
               f"services {','.join(map(str, cfg.service_subnets))}")
    for kind, wide in SECTIONS:
        click.echo(f"\n$ podnet get {kind} -A{' -o wide' if wide else ''}")
        print_kind(cluster, kind, wide)
    show_dataplane(cluster)


def show_dataplane(cluster) -> None:
    """A worker's routes, then a pod there reaching a Service with endpoints."""
    from ..dataplane import build_dataplane, resolve_endpoints
    from ..sim.trace import explain_text, trace
    from .render import section
    from .trace import build_request
    dp = build_dataplane(cluster)
    node = next((n for n in cluster.nodes if not n.is_control_plane), cluster.nodes[0] if cluster.nodes else None)
    if node is None:
        return
    click.echo(f"\n$ podnet render routes --node {node.name}")
    click.echo(section(dp, dp.node_netns(node.name), "routes"))
    system = ("kube-system", "local-path-storage")
    client = next((p for p in cluster.pods_on(node.name) if p.key in dp.pod_ns and p.namespace not in system), None)
    service = next((s for s in sorted(cluster.services, key=lambda s: (s.namespace in system, s.key))
                    if s.cluster_ips and not s.headless and s.ports and s.key != "default/kubernetes"
                    and any(e.ready is not False for sl in cluster.slices_of(s) for e in sl.endpoints)), None)
    if client is None or service is None:
        return
    port = service.ports[0]
    where = f"svc/{service.namespace}/{service.name}:{port.port}"
    click.echo(f"\n$ podnet trace --from pod/{client.name} --to svc/{service.name}:{port.port} --seed 1")
    src, dst, preamble = resolve_endpoints(dp, f"pod/{client.key}", where, port.protocol.lower())
    click.echo(preamble)
    result = trace(dp.state, build_request(src, dst, port.protocol.lower(), 40000, 84, True, 1, None, dp.state))
    click.echo(explain_text(dp.state, result))
