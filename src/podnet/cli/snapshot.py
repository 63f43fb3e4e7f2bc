"""`podnet snapshot DIR`: dump this machine's network namespaces for later traces."""

from __future__ import annotations

import os

import click

from ..errors import NotRootError
from .main import cli, handle_errors


@cli.command("snapshot", context_settings=dict(help_option_names=["-h", "--help"]))
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--netns", "names", multiple=True, help="Only these named namespaces (repeatable).")
@click.option("--no-root", is_flag=True, help="Leave out the root (host) namespace.")
@click.option("--root-name", default=None, help="Name for the root namespace (default: the hostname).")
@handle_errors
def snapshot_cmd(directory, names, no_root, root_name):
    """Capture network namespaces with the standard tools (ip -j, bridge -j, iptables-save,
    ipset save, nft -j, conntrack -L, ipvsadm -Sn, ss) into DIR.

    Only reads: nothing is changed. Then trace through it:

    \b
      sudo podnet snapshot /tmp/node1
      podnet trace --snapshot /tmp/node1 --from 10.244.1.3 --to 10.96.0.10:53/udp

    The same files taken on a real Kubernetes node load the same way; edit
    DIR/topology.json to say which NICs share an L2 segment.
    """
    if os.geteuid() != 0:
        raise NotRootError("podnet snapshot reads other namespaces' state: run it as root (sudo)")
    from ..snapshot.capture import capture
    out = capture(directory, list(names) if names else None, root_name, not no_root)
    click.echo(f"snapshot written to {out}")
