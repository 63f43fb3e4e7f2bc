"""`podnet policy`: who may talk to whom under NetworkPolicy, and why."""

from __future__ import annotations

import json
import re

import click

from ..errors import InputError
from ..policy.analysis import Owners, connection_list, pods_in_scope
from ..policy.engine import SEMANTICS, PolicyEngine
from ..policy.explain import explain_json, explain_text
from ..policy.matrix import reachability
from ..policy.output import FORMATS, render
from .main import cli, handle_errors, load_cluster, manifests_option

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


def semantics_option(default: str):
    return click.option(
        "--semantics", type=click.Choice(sorted(SEMANTICS)), default=default, show_default=True,
        help="plugin: ipBlocks match pod IPs, host-network pods are node traffic, a pod's own node "
             "may always connect (Calico, kube-router, the e2e tests). analyzer: as "
             "np-guard/netpol-analyzer (ipBlocks are external only, host-network pods are pods).")


system_pods_option = click.option(
    "--system-pods", is_flag=True,
    help="Also report the pods podnet adds for a fresh kind cluster (coredns, kube-proxy, ...).")


@cli.group("policy", context_settings=CONTEXT)
def policy():
    """NetworkPolicy: allowed connections, truth tables and explanations.

    \b
    Examples:
      podnet policy list -f app/                      who may talk to whom (netpol-analyzer's lines)
      podnet policy list -f app/ -o md                the same as a Markdown table (json, csv, dot)
      podnet policy matrix -f app/ --port 5432        pod x pod truth table, e2e style
      podnet policy explain -f app/ frontend db 5432  which policy and rule decides, and where it drops
    """


@policy.command("list", context_settings=CONTEXT)
@click.option("-o", "--output", type=click.Choice(FORMATS), default="txt", show_default=True)
@semantics_option("analyzer")
@system_pods_option
@manifests_option
@handle_errors
def list_cmd(output, semantics, system_pods, paths):
    """The allowed connections between workloads and external address ranges.

    One line per allowed pair, `src => dst : connections`, sorted, as
    np-guard/netpol-analyzer's `list` prints them: workloads are `ns/name[Kind]`,
    addresses outside the cluster `first-last[External]`, connections
    `All Connections` or protocols with ports (`TCP 8080-8081,UDP 53`).
    """
    cluster = load_cluster(paths)
    result = connection_list(cluster, semantics=semantics, include_system=system_pods)
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    text = render(result, output)
    if text:
        click.echo(text)


@policy.command("matrix", context_settings=CONTEXT)
@click.option("-p", "--port", type=click.IntRange(1, 65535), default=80, show_default=True)
@click.option("--protocol", type=click.Choice(["TCP", "UDP", "SCTP"], case_sensitive=False),
              default="TCP", show_default=True)
@click.option("-n", "--namespace", "namespaces", multiple=True,
              help="Only pods of this namespace (repeatable).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@semantics_option("plugin")
@system_pods_option
@manifests_option
@handle_errors
def matrix_cmd(port, protocol, namespaces, output, semantics, system_pods, paths):
    """Pod x pod reachability for one port, like the Kubernetes e2e netpol tables.

    Rows are sources, columns destinations: `.` allowed, `X` blocked.
    """
    cluster = load_cluster(paths)
    engine = PolicyEngine(cluster, semantics)
    pods = pods_in_scope(cluster, system_pods)
    if namespaces:
        unknown = sorted(set(namespaces) - set(cluster.namespaces))
        if unknown:
            raise InputError(f"no namespace {', '.join(unknown)}", field="--namespace")
        pods = [p for p in pods if p.namespace in namespaces]
    if not pods:
        raise InputError("no pods to tabulate" + ("" if system_pods else " (try --system-pods)"))
    m = reachability(engine, pods, port, protocol)
    click.echo(json.dumps(m.to_json(), indent=2) if output == "json" else m.text())


@policy.command("explain", context_settings=CONTEXT)
@click.argument("source")
@click.argument("destination")
@click.argument("port")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@semantics_option("plugin")
@manifests_option
@handle_errors
def explain_cmd(source, destination, port, output, semantics, paths):
    """Why SOURCE may or may not connect to DESTINATION on PORT[/PROTOCOL].

    SOURCE and DESTINATION are pods (`ns/name`, a unique name or prefix, `pod/NAME`, or a
    workload `ns/name[Kind]`, which stands for its first pod) or IP addresses. PORT is a
    number or a named port of the destination, with an optional /tcp, /udp or /sctp.

    Lists every policy that selects either side, each of its rules with why it matches
    or not, and where the connection is dropped.
    """
    cluster = load_cluster(paths)
    engine = PolicyEngine(cluster, semantics)
    owners = Owners(cluster.workloads)
    src = _endpoint(cluster, owners, source, "SOURCE")
    dst = _endpoint(cluster, owners, destination, "DESTINATION")
    number, protocol = _port(port, dst)
    verdict = engine.allowed(src, dst, number, protocol)
    if output == "json":
        click.echo(json.dumps(explain_json(verdict, owners), indent=2))
    else:
        click.echo(explain_text(verdict, owners))


_WORKLOAD = re.compile(r"^(?P<ns>[^/\[\]]+)/(?P<name>[^/\[\]]+)\[(?P<kind>[A-Za-z]+)\]$")


def _endpoint(cluster, owners: Owners, text: str, what: str):
    """A pod or an IP address (as a string) from a command-line argument."""
    import ipaddress
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    m = _WORKLOAD.match(text)
    if m:
        pods = sorted((p for p in cluster.pods if str(owners.workload_of(p)) == text), key=lambda p: p.name)
        if not pods:
            raise InputError(f"no pods of workload {text}", field=what)
        return pods[0]
    name = text[4:] if text.startswith("pod/") else text
    try:
        return cluster.pod(name)
    except InputError as e:
        # several replicas of one workload: any of them stands for the others
        ns, _, short = name.rpartition("/")
        candidates = sorted((p for p in cluster.pods if p.name.startswith(short)
                             and (not ns or p.namespace == ns)), key=lambda p: p.key)
        workloads = {str(owners.workload_of(p)) for p in candidates}
        if candidates and len(workloads) == 1:
            return candidates[0]
        raise InputError(str(e), field=what) from None


def _port(text: str, dst) -> tuple[int, str]:
    value, _, proto = text.partition("/")
    protocol = (proto or "tcp").upper()
    if protocol not in ("TCP", "UDP", "SCTP"):
        raise InputError(f"unknown protocol {proto!r} (tcp, udp or sctp)", field="PORT")
    if value.isdigit():
        number = int(value)
        if not 1 <= number <= 65535:
            raise InputError(f"port must be between 1 and 65535, got {number}", field="PORT")
        return number, protocol
    if isinstance(dst, str):
        raise InputError(f"a named port ({value!r}) needs a pod as destination", field="PORT")
    number = dst.spec.port_by_name(value, protocol)
    if number is None:
        raise InputError(f"{dst.key} declares no {protocol} port named {value!r}", field="PORT")
    return number, protocol
