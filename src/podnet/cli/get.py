"""`podnet get`: the reconciled cluster, as kubectl would show it."""

from __future__ import annotations

import click

from ..api.objects import LabelSelector
from ..errors import InputError
from .main import cli, emit_objects, handle_errors, load_cluster, manifests_option
from .tables import AgeClock, find_kind, kind_tables, render_table


def _meta(item):
    return item[0].meta if isinstance(item, tuple) else item.meta


@cli.command(context_settings=dict(help_option_names=["-h", "--help"]))
@click.argument("kind")
@click.argument("name", required=False)
@click.option("-n", "--namespace", default=None, help="Namespace (default: default).")
@click.option("-A", "--all-namespaces", is_flag=True, help="List objects of every namespace.")
@click.option("-o", "--output", type=click.Choice(["wide", "yaml", "json", "name"]), default=None,
              help="wide: more columns; yaml/json: the reconciled objects.")
@click.option("-l", "--selector", default=None, help="Label selector, e.g. app=web.")
@click.option("--cni", default=None, help="Override the cluster's CNI (its IPAM decides pod IPs).")
@click.option("--cni-mode", default=None, help="Override the CNI's mode (e.g. calico vxlan).")
@manifests_option
@handle_errors
def get(kind, name, namespace, all_namespaces, output, selector, cni, cni_mode, paths):
    """Show objects of the reconciled cluster, like `kubectl get`.

    KIND is pods, services, endpointslices, endpoints, nodes, namespaces, deployments,
    replicasets, statefulsets, daemonsets, networkpolicies, ingresses, ingressclasses,
    gateways, gatewayclasses, httproutes (kubectl's short names work: po, svc, no, ns,
    deploy, ds, netpol...).

    \b
    Examples:
      podnet get pods -o wide -f lab/               which node and IP each pod got
      podnet get svc -A -f lab/                     ClusterIPs, NodePorts, LB IPs
      podnet get endpointslices -f lab/             which pods back each Service
      podnet get nodes -o wide -f lab/              node IPs and pod CIDRs
      podnet get svc web -o yaml -f lab/            the Service as the API server would store it
      podnet get pods -o wide --cni calico          pod IPs from calico-ipam's /26 blocks
    """
    table = find_kind(kind)
    if table is None:
        names = ", ".join(t.name for t in kind_tables())
        raise InputError(f"unknown resource type {kind!r} (known: {names})")
    cluster = load_cluster(paths, cni=cni, cni_mode=cni_mode)
    items = table.items(cluster)
    if table.namespaced and not all_namespaces:
        ns = namespace or "default"
        items = [i for i in items if _meta(i).namespace == ns]
    if name:
        items = [i for i in items if _meta(i).name == name]
        if not items:
            where = f" in namespace {namespace or 'default'}" if table.namespaced else ""
            raise InputError(f'{table.name} "{name}" not found{where}')
    if selector:
        wanted = LabelSelector.from_text(selector)
        items = [i for i in items if wanted.matches(_meta(i).labels)]
    if output in ("yaml", "json"):
        objs = [i[0] if isinstance(i, tuple) else i for i in items]
        if not objs:
            raise InputError(f"no {table.name} found")
        emit_objects(objs, output)
        return
    if output == "name":
        for i in items:
            click.echo(f"{table.name.rstrip('s') if table.name != 'endpoints' else 'endpoints'}/{_meta(i).name}")
        return
    if not items:
        where = f" in {namespace or 'default'} namespace" if table.namespaced and not all_namespaces else ""
        click.echo(f"No resources found{where}.", err=True)
        return
    clock = AgeClock(cluster)
    headers = list(table.headers)
    if output == "wide" and table.wide_row:
        headers += table.wide_headers
    show_ns = table.namespaced and all_namespaces
    if show_ns:
        headers = ["NAMESPACE"] + headers
    rows = []
    for item in sorted(items, key=lambda i: (_meta(i).namespace, _meta(i).name)) if show_ns else items:
        row = table.row(cluster, clock, item)
        if output == "wide" and table.wide_row:
            row += table.wide_row(cluster, clock, item)
        if show_ns:
            row = [_meta(item).namespace] + row
        rows.append(row)
    click.echo(render_table(headers, rows))
