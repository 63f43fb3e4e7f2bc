"""`podnet trace`: the life of a packet, hop by hop, rule by rule."""

from __future__ import annotations

import ipaddress

import click
from click.core import ParameterSource

from ..errors import InputError
from ..linux.netfilter import Packet
from ..sim.endpoints import resolve_destination, resolve_source, split_proto
from ..sim.trace import TraceRequest, explain_json, explain_text, trace
from .main import cli, handle_errors, load_cluster, manifests_option


def build_request(src, dst, proto: str, sport: int, size: int, reply: bool, seed, picks,
                  state=None, df: bool = True) -> TraceRequest:
    family_any = ipaddress.ip_address("0.0.0.0" if dst.ip.version == 4 else "::")
    if src.ip is None and src.inject_iface is None and state is not None and src.ns in state.namespaces:
        # an unbound client socket: connect() takes the source address of the route
        # (127.0.0.1 towards localhost, the pod's IP towards anything else)
        from ..linux.routing import route_get
        chosen = route_get(state.netns(src.ns), dst.ip).src
        src = type(src)(src.ns, chosen, src.inject_iface, src.label) if chosen is not None else src
    proto = dst.proto or proto
    if proto == "icmp" and dst.ip.version == 6:
        proto = "icmpv6"
    port = dst.port if proto not in ("icmp", "icmpv6") else None
    if proto in ("tcp", "udp", "sctp") and port is None:
        raise InputError(f"{dst.label}: a {proto} trace needs a destination port (IP:PORT)", field="--to")
    pkt = Packet(src.ip or family_any, dst.ip, proto, sport if port is not None else None, port,
                 icmp_type=8 if proto == "icmp" else (128 if proto == "icmpv6" else None),
                 length=size, df=df)
    return TraceRequest(src.ns, pkt, src.inject_iface, reply=reply, seed=seed, picks=picks,
                        label=f"{src.label} -> {dst.label}".strip())


@cli.command("trace", context_settings=dict(help_option_names=["-h", "--help"]))
@click.option("--from", "source", required=True,
              help="pod/NAME, node/NAME, ip/IP, IP[@NETNS[/IFACE]] or @NETNS.")
@click.option("--to", "destination", required=True,
              help="pod/NAME[:PORT], svc/NAME[:PORT], NAME.NAMESPACE[:PORT] (DNS), IP:PORT[/proto].")
@click.option("-p", "--protocol", type=click.Choice(["tcp", "udp", "sctp", "icmp"]), default="tcp",
              show_default=True)
@click.option("--sport", type=int, default=40000, show_default=True, help="Client source port.")
@click.option("--size", type=int, default=84, show_default=True, help="Packet size in bytes (MTU checks).")
@click.option("--df/--no-df", default=True, show_default=True,
              help="Don't-fragment bit: a DF packet too big for a link is dropped (ICMP fragmentation needed; "
                   "EMSGSIZE for the sender's own link), without DF it is fragmented. TCP always fits its segments.")
@click.option("--reply/--no-reply", default=True, show_default=True, help="Also walk the answer back.")
@click.option("--seed", type=int, default=None, help="Follow one random draw instead of listing every outcome.")
@click.option("--pick", "pick", multiple=True, metavar="KEY=N",
              help="Follow option N (0 first) of the random choice KEY, as -o json names the "
                   "choices (e.g. nat/KUBE-SVC-...#2=1); other choices take their first option.")
@click.option("--snapshot", "snapshot_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Trace through a snapshot of real machines (podnet snapshot DIR) instead of a cluster.")
@click.option("--cni", default=None, help="Override the cluster's CNI (kindnet, flannel, calico, weave, kubenet).")
@click.option("--cni-mode", default=None, help="Override the CNI's mode (e.g. flannel host-gw, calico vxlan).")
@click.option("--proxy-mode", default=None,
              help="Override kube-proxy's mode (iptables, nftables, ipvs, ebpf, userspace, none).")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text", show_default=True)
@manifests_option
@handle_errors
def trace_cmd(source, destination, protocol, sport, size, df, reply, seed, pick, snapshot_dir, cni, cni_mode,
              proxy_mode, output, paths):
    """Walk a packet through the dataplane and explain every hop.

    Each hop says where the packet is (node, namespace, interface), what the kernel
    decided (route, ARP, bridge FDB, VXLAN, conntrack) and which netfilter rules
    matched, with their text. Random choices (a Service's endpoints, IPVS, eBPF
    slots) are listed as outcomes with their probabilities; --seed follows one.

    \b
    Examples:
      podnet trace --from pod/net-tshoot-4lgv2 --to svc/web:80     (the guide's lab)
      podnet trace -f lab/ --from node/k8s-guide-worker --to svc/web:80
      podnet trace -f lab/ --from pod/net-tshoot-abcde --to 1.1.1.1:443
      podnet trace --snapshot dump/ --from 10.244.1.3 --to 10.96.0.10:53/udp
    """
    picks = _picks(pick) if pick else None
    if snapshot_dir:
        if paths:
            raise InputError("use either --snapshot or -f, not both")
        from ..snapshot.load import load_snapshot
        state = load_snapshot(snapshot_dir)
        src = resolve_source(state, source)
        dst = resolve_destination(destination, None)
        req = build_request(src, dst, protocol, sport, size, reply, seed, picks, df=df)
    else:
        from ..dataplane import build_dataplane, resolve_endpoints
        if (click.get_current_context().get_parameter_source("protocol") is not ParameterSource.DEFAULT
                and split_proto(destination)[1] is None):
            destination = f"{destination}/{protocol}"      # -p wins over a Service's or pod's port protocol
        cluster = load_cluster(paths, cni=cni, cni_mode=cni_mode, proxy_mode=proxy_mode)
        dp = build_dataplane(cluster)
        state = dp.state
        src, dst, preamble = resolve_endpoints(dp, source, destination, protocol)
        req = build_request(src, dst, protocol, sport, size, reply, seed, picks, state, df=df)
        if preamble and output == "text":
            click.echo(preamble)
        if dst.dns_server is not None:
            server, port, queries = dst.dns_server
            dns_dst = type(dst)(server, port, "udp", label=f"kube-dns {server}:{port}/udp")
            dns_req = build_request(src, dns_dst, "udp", 53000, size, reply, seed, picks, state)
            dns_result = trace(state, dns_req)
            if output == "text":
                click.echo(f"\n# each of the {queries} DNS quer{'y' if queries == 1 else 'ies'} travels like this:")
                click.echo(explain_text(state, dns_result))
                click.echo("\n# then the connection itself:")
    result = trace(state, req)
    click.echo(explain_json(state, result) if output == "json" else explain_text(state, result))


def _picks(values) -> dict[str, int]:
    """--pick KEY=N (repeatable) -> {KEY: N}."""
    out = {}
    for value in values:
        key, sep, index = value.rpartition("=")
        if not sep or not key or not index.isdigit():
            raise InputError(f"expected KEY=N (N a number), got {value!r}", field="--pick")
        out[key] = int(index)
    return out
