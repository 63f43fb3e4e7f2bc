"""The `podnet` command.

    podnet get pods -o wide -f lab/                  the control plane's decisions
    podnet render --node NODE iptables -f lab/       what a node's components program
    podnet trace -f lab/ --from pod/A --to svc/web:80   the life of a packet
    podnet demo                                       all of it on the built-in guide lab

Every command takes manifests with -f (files or directories, repeatable); with
no -f, the built-in example (the Kubernetes Networking Guide's lab) is used.
"""

from __future__ import annotations

import functools
import json
import sys
import traceback

import click
import yaml

from ..cluster import Cluster, example_path
from ..errors import PodnetError

CONTEXT = dict(help_option_names=["-h", "--help"], max_content_width=100)


class State:
    debug = False


def handle_errors(fn):
    """One line and a non-zero exit for errors a user can act on; tracebacks with --debug."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PodnetError as e:
            if State.debug:
                traceback.print_exc()
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
    return wrapper


def manifests_option(fn):
    return click.option("-f", "--filename", "paths", multiple=True, type=click.Path(),
                        help="Manifest file or directory (repeatable). Default: the built-in guide lab.")(fn)


def load_cluster(paths, quiet: bool = False, **overrides) -> Cluster:
    """The cluster the -f paths define (the built-in guide lab when none are given)."""
    cluster = Cluster.load(list(paths) or [example_path()], **overrides)
    if not quiet:
        for w in cluster.warnings:
            click.echo(f"warning: {w}", err=True)
    return cluster


@click.group(context_settings=CONTEXT)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="podnet")
def cli(debug: bool):
    """podnet: Kubernetes cluster networking you can read, trace and run.

    podnet loads Kubernetes manifests (a kind Cluster config plus your objects,
    or a `kubectl get -A -o yaml` dump of a real cluster), decides what the
    control plane would (pod CIDRs, pod IPs, ClusterIPs, NodePorts, EndpointSlices),
    renders what each node's CNI and kube-proxy would program, and walks packets
    through it hop by hop.

    \b
    Start here:
      podnet demo                                   what podnet decides for the guide's lab
      podnet get pods -A -o wide                    pods, IPs and nodes
      podnet get svc -A                             Services and their ClusterIPs
      podnet get nodes -o wide                      node IPs and pod CIDRs
      podnet render --node k8s-guide-worker routes  what `ip route` shows on that node
      podnet trace --from pod/net-tshoot-4lgv2 --to svc/web:80   the life of a packet
    """
    State.debug = debug


def emit_objects(objs, output: str) -> None:
    manifests = [o.to_manifest() for o in objs]
    doc = manifests[0] if len(manifests) == 1 else {"apiVersion": "v1", "kind": "List", "items": manifests}
    if output == "json":
        click.echo(json.dumps(doc, indent=4, default=str))
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False).rstrip())


# Subcommands live in their own modules and register themselves on `cli`.
from . import get as _get  # noqa: E402,F401
from . import demo as _demo  # noqa: E402,F401


def _register_optional() -> None:
    """Commands of packages that may be absent while podnet grows."""
    import importlib
    for name in ("render", "trace", "snapshot", "policy", "dns", "lab"):
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__package__}.{name}":
                raise


_register_optional()


def main() -> None:
    cli(prog_name="podnet")


