"""`podnet dns`: the cluster's DNS, served for real, and the client side explained.

(The group function is not called `dns`, so dnspython's `dns` package stays
importable here and in podnet.dns.)
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import click

from ..errors import InputError
from .main import cli, handle_errors, load_cluster, manifests_option

HELP = dict(help_option_names=["-h", "--help"], max_content_width=100)


@cli.group("dns", context_settings=HELP)
def dns_group():
    """Cluster DNS: the Kubernetes DNS spec as CoreDNS serves it.

    \b
      podnet dns serve -f lab/ --listen 127.0.0.1:5353     a real server for dig
      podnet dns records -f lab/                           every record of the zone
      podnet dns resolv-conf -f lab/ --pod POD             a pod's /etc/resolv.conf
      podnet dns resolve -f lab/ --pod POD tkng.io         the queries one lookup costs
    """


def _local_ips(host: str) -> tuple[str, ...]:
    return ("127.0.0.1",) if host in ("0.0.0.0", "::", "") else (host,)


@dns_group.command("serve", context_settings=HELP)
@manifests_option
@click.option("--listen", default="127.0.0.1:5353", show_default=True,
              help="ADDR:PORT for UDP and TCP ([::1]:5353 for IPv6).")
@click.option("--upstream", "upstreams", multiple=True,
              help="IP[:PORT] to forward names outside the cluster to (repeatable; default: the "
                   "cluster's dns.upstreams; none: SERVFAIL).")
@click.option("--autopath/--no-autopath", default=None,
              help="Walk a pod's search path on the server (CoreDNS autopath @kubernetes). "
                   "Default: the cluster's dns.autopath.")
@click.option("--reload/--no-reload", "reload", default=True, show_default=True,
              help="Serve the new cluster when a manifest file changes.")
@click.option("--log", "log", is_flag=True, help="Print each query as CoreDNS's log plugin does.")
@handle_errors
def serve(paths, listen, upstreams, autopath, reload, log):
    """Serve the cluster's DNS on UDP and TCP until Ctrl-C (or SIGTERM).

    Answers the cluster zone and the reverse zones from the reconciled cluster,
    caches answers, forwards other names to the upstreams.

    \b
    Examples:
      podnet dns serve -f lab/ --listen 127.0.0.1:5353
      dig @127.0.0.1 -p 5353 web.default.svc.cluster.local
      dig @127.0.0.1 -p 5353 -x 10.96.0.10
      podnet dns serve -f lab/ --upstream 127.0.0.1:5300 --autopath --log
    """
    from ..dns.forward import parse_hostport
    from ..dns.server import DNSServer, watch_manifests

    host, port = parse_hostport(listen, default_port=53, what="--listen")
    cluster = load_cluster(paths)
    local = _local_ips(host)
    server = DNSServer.from_cluster(cluster, local_ips=local, upstreams=list(upstreams) or None,
                                    autopath=autopath,
                                    log=(lambda line: click.echo(line, err=True)) if log else None)
    records = server.records

    async def main():
        bound = await server.start(host, port)
        where = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
        ups = ", ".join(f"{h}:{p}" for h, p in server.forwarder.upstreams) or "none (SERVFAIL)"
        click.echo(f"serving {records.zone.to_text()} (+ in-addr.arpa, ip6.arpa) on {where} udp+tcp; "
                   f"ttl {records.ttl}, pods {records.pods_mode}, autopath "
                   f"{'on' if server.autopath else 'off'}, upstreams {ups}", err=True)
        tasks = []
        if reload and paths:
            tasks.append(asyncio.ensure_future(watch_manifests(
                list(paths), server, local_ips=local, report=lambda s: click.echo(s, err=True))))
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await server.close()
        click.echo("stopped", err=True)

    asyncio.run(main())


@dns_group.command("records", context_settings=HELP)
@manifests_option
@click.option("-n", "--namespace", default=None, help="Only names of this namespace (and the apex).")
@handle_errors
def records_cmd(paths, namespace):
    """Every record of the cluster zone and its PTRs, in zone-file syntax.

    With pods insecure every a-b-c-d.<ns>.pod name answers; the pods that exist
    are listed.
    """
    from ..dns.records import DNSRecords

    cluster = load_cluster(paths)
    recs = DNSRecords.from_cluster(cluster)
    for rrset in recs.dump():
        if namespace and not _mentions(rrset, namespace, recs.zone):
            continue
        click.echo(rrset.to_text())


def _mentions(rrset, namespace: str, zone) -> bool:
    """The zone's own records (SOA, NS, dns-version), and those whose name or PTR
    target is in `namespace`."""
    from dns.rdatatype import PTR

    def where(name):
        if not name.is_subdomain(zone):
            return None
        rel = [label.decode("latin-1").lower() for label in name.relativize(zone).labels]
        if rel[-1:] not in (["svc"], ["pod"]):
            return "zone"
        return rel[-2] if len(rel) >= 2 else None
    names = [rrset.name, *(rd.target for rd in rrset if rd.rdtype == PTR)]
    places = [where(n) for n in names]
    return "zone" in places[:1] or namespace in places


@dns_group.command("resolv-conf", context_settings=HELP)
@manifests_option
@click.option("--pod", "pod_name", required=True, help="Pod name, ns/name or a unique prefix.")
@handle_errors
def resolv_conf_cmd(paths, pod_name):
    """The /etc/resolv.conf the kubelet writes for a pod (per dnsPolicy and dnsConfig)."""
    from ..dns.client import resolv_conf

    cluster = load_cluster(paths)
    click.echo(resolv_conf(cluster.pod(pod_name), cluster).text(), nl=False)


@dns_group.command("resolve", context_settings=HELP)
@manifests_option
@click.option("--pod", "pod_name", required=True, help="The pod that looks the name up.")
@click.argument("name")
@click.argument("qtype", metavar="[TYPE]", default="A")
@click.option("--upstream", "upstreams", multiple=True,
              help="IP[:PORT] the cluster DNS forwards to; without one, names leaving the cluster "
                   "are shown as forwarded but not sent.")
@click.option("--autopath/--no-autopath", default=None, help="CoreDNS autopath on the server.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@handle_errors
def resolve_cmd(paths, pod_name, name, qtype, upstreams, autopath, output):
    """The queries a pod's resolver sends for NAME, and each answer.

    Emulates glibc (ndots, the search list, absolute names) with the pod's
    resolv.conf, against podnet's DNS server for the cluster.

    TYPE is A (default, like `dig +search`), AAAA, SRV, PTR, TXT... or ADDR for
    what getaddrinfo() sends: an A and an AAAA query for each candidate name.

    \b
    Examples:
      podnet dns resolve --pod net-tshoot-4lgv2 kubernetes          one query
      podnet dns resolve --pod net-tshoot-4lgv2 tkng.io             three NXDOMAINs, then upstream
      podnet dns resolve --pod net-tshoot-4lgv2 tkng.io --autopath  one query
      podnet dns resolve --pod net-tshoot-4lgv2 tkng.io. ADDR       absolute: no search list
    """
    from ..dns.client import format_lookup, lookup_json, resolve_for_pod
    import dns.rdatatype as rdatatype

    if qtype.upper() != "ADDR":
        try:
            rdatatype.from_text(qtype.upper())
        except Exception:   # noqa: BLE001
            raise InputError(f"unknown query type {qtype!r}", field="TYPE") from None
    cluster = load_cluster(paths)
    pod = cluster.pod(pod_name)
    lookup = resolve_for_pod(cluster, pod, name, qtype, upstreams=list(upstreams) or None,
                             autopath=autopath)
    if output == "json":
        click.echo(json.dumps(lookup_json(lookup), indent=2))
    else:
        click.echo(format_lookup(lookup, pod))
    sys.exit(0 if lookup.answered_by else 1)
