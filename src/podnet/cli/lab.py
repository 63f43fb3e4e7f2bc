"""`podnet lab`: the cluster's network, for real, in Linux network namespaces."""

from __future__ import annotations

import json
import os
import sys

import click

from ..errors import InputError
from .main import cli, handle_errors

HELP = dict(help_option_names=["-h", "--help"], max_content_width=100)


def _name_option(fn):
    return click.option("--name", "name", default=None, envvar="PODNET_LAB",
                        help="The lab's name (prefix of its namespaces). Default: podnet, or the only lab "
                             "there is.")(fn)


def _pick(name):
    from ..lab.lab import DEFAULT_NAME, list_labs
    if name:
        return name
    labs = list_labs()
    return labs[0] if len(labs) == 1 else DEFAULT_NAME


def _lab(name, progress=None):
    from ..lab.lab import Lab, require_root
    require_root()
    return Lab(_pick(name), progress=progress)


def _progress(line: str) -> None:
    click.echo(f"  {line}", err=True)


@cli.group("lab", context_settings=HELP)
def lab_group():
    """The same cluster, for real: nodes and pods as network namespaces on this machine.

    Every node becomes a network namespace on an underlay switch (kind's docker
    network), every pod a namespace wired exactly as its CNI renders it; the
    service proxy's rules go in with iptables-restore / nft / ipset; every pod runs
    a small echo server on its containerPorts that names itself and the client it
    sees, kube-dns pods answer DNS. Needs root; the host's own namespace is never
    changed.

    \b
      sudo podnet lab up                                    the guide's lab
      sudo podnet lab exec net-tshoot-4lgv2 -- curl -s web  a pod curls a Service
      sudo podnet lab exec node/k8s-guide-worker -- iptables-save -t nat
      sudo podnet lab verify                                kernel vs model vs simulator
      sudo podnet lab down
    """


@lab_group.command("up", context_settings=HELP)
@click.option("-f", "--filename", "paths", multiple=True, type=click.Path(),
              help="Manifest file or directory (repeatable). Default: the built-in guide lab.")
@_name_option
@click.option("--cni", default=None, help="Override the cluster's CNI (kindnet, flannel, calico, weave, kubenet).")
@click.option("--cni-mode", default=None, help="Override the CNI's mode (flannel: vxlan, host-gw; calico: bgp...).")
@click.option("--proxy-mode", default=None, help="Override kube-proxy's mode (iptables, nftables, ipvs, none).")
@click.option("--ipvs-fallback", type=click.Choice(["refuse", "iptables", "nftables"]), default="refuse",
              show_default=True, help="When the kernel lacks IPVS and kube-proxy runs in ipvs mode: refuse, or "
                                      "let kube-proxy fall back to this mode.")
@click.option("--no-workloads", is_flag=True, help="Only the network: no echo servers, no DNS.")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines.")
@handle_errors
def up_cmd(paths, name, cni, cni_mode, proxy_mode, ipvs_fallback, no_workloads, quiet):
    """Bring the cluster up in network namespaces named <name>-<node>, <name>-cni-..., ...

    Returns when every namespace is wired and every workload answers; the lab stays
    up until `podnet lab down`. Ctrl-C (or any failure) on the way removes what
    was made.
    """
    from ..lab.lab import Lab, require_root
    require_root()
    lab = Lab(name or "podnet", progress=None if quiet else _progress)
    rec = lab.up(list(paths), cni=cni, cni_mode=cni_mode, proxy_mode=proxy_mode, ipvs_fallback=ipvs_fallback,
                 workloads=not no_workloads)
    for note in rec.get("notes", []):
        click.echo(f"note: {note}", err=True)
    click.echo(f"lab {lab.name} is up: {len(rec['nodes'])} nodes, {len(rec['pods'])} pods, "
               f"{len(rec['namespaces'])} namespaces ({rec['cni']}, kube-proxy {rec['proxy_mode']}) "
               f"in {rec.get('seconds', 0):.1f}s")
    pod = next((k for k, p in sorted(rec["pods"].items()) if not p["host_network"]
                and k.startswith("default/")), None)
    if pod:
        click.echo(f"try: sudo podnet lab exec {pod.split('/', 1)[1]} -- curl -s <service>")


@lab_group.command("down", context_settings=HELP)
@_name_option
@click.option("--all", "all_", is_flag=True, help="Every lab on this machine.")
@handle_errors
def down_cmd(name, all_):
    """Remove a lab: its processes, namespaces (and with them every link), /etc/netns entries."""
    from ..lab.lab import Lab, list_labs, require_root
    require_root()
    names = list_labs() if all_ else [_pick(name)]
    if all_ and not names:
        click.echo("no labs")
        return
    for n in names:
        deleted = Lab(n).down()
        click.echo(f"lab {n} is down ({len(deleted)} namespaces removed)")


@lab_group.command("status", context_settings=HELP)
@_name_option
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def status_cmd(name, output):
    """The lab's nodes, pods and namespaces (every lab when there are several and no --name)."""
    from ..lab.lab import Lab, list_labs, require_root
    require_root()
    labs = [name] if name else list_labs()
    if not labs:
        click.echo("no labs" if output == "text" else "[]")
        return
    statuses = [Lab(n).status() for n in labs]
    if output == "json":
        click.echo(json.dumps(statuses if len(statuses) > 1 else statuses[0], indent=2))
        return
    from .tables import render_table
    for st in statuses:
        click.echo(f"lab {st['name']}: {st['status']}, {st['cni']}, kube-proxy {st['proxy']}, "
                   f"{st['namespaces_present']}/{st['namespaces']} namespaces, since {st['created']}")
        rows = [[n["name"], ",".join(n["ips"]), ",".join(n["pod_cidrs"]), n["netns"],
                 str(n["agent"] or "-") if n["present"] else "MISSING"] for n in st["nodes"]]
        click.echo(render_table(["NODE", "IP", "POD CIDR", "NETNS", "AGENT"], rows))
        rows = [[p["pod"], p["node"], ",".join(p["ips"]), p["netns"] if not p["host_network"] else
                 p["netns"] + " (hostNetwork)", ",".join(p["ports"]) or "-"] for p in st["pods"]]
        click.echo(render_table(["POD", "NODE", "IP", "NETNS", "PORTS"], rows))
        for note in st["notes"]:
            click.echo(f"note: {note}")


@lab_group.command("exec", context_settings=dict(HELP, ignore_unknown_options=True, allow_interspersed_args=False))
@_name_option
@click.argument("target")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def exec_cmd(name, target, command):
    """Run COMMAND in a pod's namespace (POD, ns/POD, a unique prefix), a node's (node/NODE),
    `gateway` or `internet`, with the pod's /etc/resolv.conf.

    \b
      sudo podnet lab exec net-tshoot-4lgv2 -- curl -s web
      sudo podnet lab exec net-tshoot-4lgv2 -- dig +search web
      sudo podnet lab exec node/k8s-guide-worker -- tcpdump -ni eth0 udp port 8472
    """
    lab = _lab(name)
    lab.load()
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    argv = lab.exec_argv(target, command)
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        raise InputError(f"cannot run {argv[0]}: {e.strerror}") from None


@lab_group.command("apply", context_settings=HELP)
@click.option("-f", "--filename", "paths", multiple=True, type=click.Path(),
              help="The lab's inputs, as they should be now (default: the ones it was made from, re-read).")
@_name_option
@handle_errors
def apply_cmd(paths, name):
    """Apply changed inputs to a running lab (scale a Deployment, add a Service, delete a Pod):
    only namespaces, links, routes, rules and workloads that differ are touched."""
    lab = _lab(name, progress=_progress)
    summary = lab.apply(list(paths))
    click.echo(f"lab {lab.name}: {len(summary['namespaces_added'])} namespaces added, "
               f"{len(summary['namespaces_removed'])} removed, "
               f"{len(summary['agents_restarted'])} workload agents restarted in {summary['seconds']:.1f}s")


@lab_group.command("snapshot", context_settings=HELP)
@click.argument("directory", type=click.Path(file_okay=False))
@_name_option
@handle_errors
def snapshot_cmd(directory, name):
    """Dump the lab's kernel state (podnet snapshot format, the model's namespace names).

    \b
      sudo podnet lab snapshot /tmp/lab
      podnet trace --snapshot /tmp/lab --from 10.244.1.2 --to 10.96.0.10:53/udp
    """
    lab = _lab(name)
    lab.load()
    out = lab.snapshot(directory)
    click.echo(f"snapshot of lab {lab.name} written to {out}")


@lab_group.command("verify", context_settings=HELP)
@_name_option
@click.option("--flows", "flows", type=int, default=None, help="Check at most N flows (default: all planned).")
@click.option("--tries", type=int, default=0, help="Requests per flow (default: enough to meet every backend).")
@click.option("--state-only", is_flag=True, help="Only compare the kernel's state with the rendered state.")
@click.option("--keep-snapshot", type=click.Path(file_okay=False), default=None,
              help="Keep the kernel snapshot verify takes in this directory.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def verify_cmd(name, flows, tries, state_only, keep_snapshot, output):
    """Compare the kernel with the model, and the simulator with the kernel.

    For every namespace: links, addresses, routes, rules, neighbours, FDB,
    sysctls, iptables, ipsets, nft, IPVS and listening sockets, from a snapshot,
    against the rendered state. Then flows (pod->pod on one node and across,
    pod->ClusterIP, node->ClusterIP, NodePort from the underlay, pod->outside,
    DNS) sent for real and compared with `podnet trace`'s prediction: which
    backend answered and which client address it saw. Any difference fails.
    """
    from ..lab.verify import verify
    lab = _lab(name)
    lab.load()
    report = verify(lab, flows=flows, tries=tries, state_only=state_only, keep_snapshot=keep_snapshot)
    click.echo(json.dumps(report.as_json(), indent=2) if output == "json" else report.text())
    if not report.ok:
        sys.exit(1)
