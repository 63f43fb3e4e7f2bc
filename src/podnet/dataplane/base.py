"""Dataplane assembly and the names users give to things in it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from ..api.objects import Node, Pod
from ..cluster import Cluster
from ..errors import InputError
from ..linux.iptables_builder import IptablesBuilder
from ..linux.state import DataplaneState, Listener, Netns
from ..sim.endpoints import (Destination, Source, is_ip, parse_port, resolve_destination, split_hostport,
                             split_proto)
from . import topology


@dataclass
class NodeContext:
    """What a component sees while rendering one node."""
    dp: "Dataplane"
    node: Node
    ns: Netns
    iptables: IptablesBuilder = field(default_factory=IptablesBuilder)
    ip6tables: IptablesBuilder = field(default_factory=IptablesBuilder)
    nft: list[str] = field(default_factory=list)
    ipsets: list[str] = field(default_factory=list)

    @property
    def cfg(self):
        return self.dp.cluster.config

    def pods(self) -> list[tuple[Pod, Netns]]:
        """The node's pods that have their own sandbox (not hostNetwork)."""
        return [(p, self.dp.state.namespaces[self.dp.pod_ns[p.key]]) for p in self.dp.cluster.pods_on(self.node.name)
                if p.key in self.dp.pod_ns]


@dataclass
class Dataplane:
    cluster: Cluster
    state: DataplaneState
    pod_ns: dict[str, str] = field(default_factory=dict)      # pod key -> netns name
    contexts: dict[str, NodeContext] = field(default_factory=dict)
    proxy_nodes: set[str] = field(default_factory=set)         # nodes that run a service proxy
    notes: list[str] = field(default_factory=list)

    @property
    def cfg(self):
        return self.cluster.config

    def node_netns(self, node: str) -> Netns:
        return self.state.netns(node)

    def netns_of_pod(self, pod: Pod) -> Netns:
        if pod.host_network:
            return self.state.netns(pod.node_name)
        name = self.pod_ns.get(pod.key)
        if name is None:
            raise InputError(f"pod {pod.key} has no network namespace (not scheduled or not running)")
        return self.state.netns(name)


def build_dataplane(cluster: Cluster, cni: Optional[str] = None, proxy_mode: Optional[str] = None) -> Dataplane:
    if (cni and cni != cluster.config.cni.plugin) or (proxy_mode and proxy_mode != cluster.config.proxy.mode):
        cluster = cluster.with_overrides(cni=cni, proxy_mode=proxy_mode)
    cfg = cluster.config
    state = DataplaneState(description=f"cluster {cfg.name}")
    dp = Dataplane(cluster, state)
    topology.build_underlay(cfg, state)
    disabled = set(cfg.proxy.disabled_on_nodes)
    for node in cluster.nodes:
        runs_proxy = cfg.proxy.mode != "none" and node.name not in disabled
        ns = topology.build_node(cfg, state, node, runs_proxy)
        dp.contexts[node.name] = NodeContext(dp, node, ns)
        if runs_proxy:
            dp.proxy_nodes.add(node.name)
    topology.block_unreachable(cfg, state, cluster.nodes)

    from ..cni import solution_for
    solution = solution_for(cfg)
    for ctx in dp.contexts.values():
        solution.setup_node(ctx)
    for pod in cluster.pods:
        ctx = dp.contexts.get(pod.node_name)
        if ctx is None or pod.terminal or not pod.pod_ips:
            continue
        if pod.host_network:
            _host_network_listeners(ctx.ns, pod)
            continue
        pod_ns = topology.build_pod_sandbox(state, pod)
        dp.pod_ns[pod.key] = pod_ns.name
        solution.add_pod(ctx, pod, pod_ns)
    solution.connect_nodes(dp)
    from .loadbalancer import announce_load_balancers
    announce_load_balancers(dp)

    from ..proxy.install import install_proxy
    for name in sorted(dp.proxy_nodes, key=lambda n: [x.name for x in cluster.nodes].index(n)):
        install_proxy(dp.contexts[name], cfg.proxy.mode)

    _install_policy(dp)

    for ctx in dp.contexts.values():
        if ctx.iptables.tables:
            ctx.ns.iptables = ctx.iptables.render()
        if ctx.ip6tables.tables:
            ctx.ns.ip6tables = ctx.ip6tables.render()
        if ctx.nft:
            ctx.ns.nft = "\n".join(ctx.nft) + "\n"
        if ctx.ipsets:
            ctx.ns.ipsets = "\n".join(ctx.ipsets) + "\n"
        ctx.ns.invalidate()
    return dp


def _install_policy(dp: Dataplane) -> None:
    """NetworkPolicy enforcement, when the policy package provides it."""
    try:
        from ..policy.enforce import install_policy
    except ImportError:
        return
    install_policy(dp)


def _host_network_listeners(ns: Netns, pod: Pod) -> None:
    for c in pod.spec.containers:
        for p in c.ports:
            ns.listeners.append(Listener(p.protocol.lower(), ipaddress.ip_address("0.0.0.0"), p.container_port,
                                         f"pod {pod.key} container {c.name} (hostNetwork)"))


# ---------------------------------------------------------------------- names

def _split_port(text: str) -> tuple[str, Optional[str]]:
    name, sep, port = text.partition(":")
    return name, (port if sep else None)


def _service_port(svc, port_text: Optional[str], proto: Optional[str] = None):
    """The Service port named or numbered `port_text` (any port when it is None); of those the
    first, or the first of protocol `proto` when there is one (kube-dns: 53/UDP and 53/TCP)."""
    if not svc.ports:
        raise InputError(f"service {svc.key} has no ports")
    found = [p for p in svc.ports if port_text is None or p.name == port_text or str(p.port) == port_text]
    if found:
        return next((p for p in found if p.protocol.lower() == proto), found[0])
    raise InputError(f"service {svc.key} has no port {port_text!r} "
                     f"(ports: {', '.join(p.name or str(p.port) for p in svc.ports)})")


def resolve_endpoints(dp: Dataplane, source: str, destination: str, protocol: str
                      ) -> tuple[Source, Destination, str]:
    """`--from` and `--to` as the user names them: pods, nodes, Services, IPs, DNS names."""
    notes: list[str] = []
    try:
        src = _resolve_source(dp, source, notes)
    except InputError as e:
        raise e.at(field_prefix=None if e.field else "--from") from None
    try:
        dst = _resolve_destination(dp, src, destination, protocol, notes)
    except InputError as e:
        raise e.at(field_prefix=None if e.field else "--to") from None
    return src, dst, "\n".join(f"# {n}" for n in notes)


def _resolve_source(dp: Dataplane, source: str, notes: list[str]) -> Source:
    cluster = dp.cluster
    if source.startswith("pod/"):
        pod = cluster.pod(source[4:])
        ns = dp.netns_of_pod(pod)
        src = Source(ns.name, None, label=f"pod {pod.key}")     # unbound: the route picks the address
        notes.append(f"from pod {pod.key} ({pod.pod_ip}) on node {pod.node_name}")
    elif source.startswith("node/"):
        node = cluster.node(source[5:])
        src = Source(node.name, None, label=f"node {node.name}")
        notes.append(f"from node {node.name} ({node.internal_ip})")
    else:
        text = source[3:] if source.startswith("ip/") else source
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise InputError(f"expected pod/NAME, node/NAME or an IP address, got {source!r}",
                             field="--from") from None
        from ..sim.endpoints import owner_of
        owner = owner_of(dp.state, ip)
        if owner is None:
            owner = topology.INTERNET
            notes.append(f"from {ip}: an external client on the internet")
        else:
            notes.append(f"from {ip} ({owner})")
        src = Source(owner, ip, label=f"{ip}")
    return src


def _resolve_destination(dp: Dataplane, src: Source, destination: str, protocol: str,
                         notes: list[str]) -> Destination:
    cluster = dp.cluster
    body, proto = split_proto(destination)
    explicit = proto is not None            # DEST/proto: it wins over the port's own protocol
    proto = proto or protocol
    if body.startswith("svc/") or body.startswith("lb/"):
        kind, _, rest = body.partition("/")
        name, port_text = _split_port(rest)
        svc = cluster.service(name)
        sp = _service_port(svc, port_text, proto if explicit else None)
        proto = proto if explicit else sp.protocol.lower()
        if kind == "lb":
            if not svc.lb_ips:
                raise InputError(f"service {svc.key} has no LoadBalancer IP")
            ip = svc.lb_ips[0]
            what = "LoadBalancer IP"
        else:
            if svc.headless or not svc.cluster_ips:
                raise InputError(f"service {svc.key} has no ClusterIP ({'headless' if svc.headless else svc.type}); "
                                 "trace to one of its pods instead")
            ip = svc.cluster_ip
            what = "ClusterIP"
        dst = Destination(ip, sp.port, proto, label=f"{kind}/{svc.key}:{sp.name or sp.port}")
        notes.append(f"to {what} of service {svc.key}: {ip}:{sp.port}/{proto}")
    elif body.startswith("pod/"):
        name, port_text = _split_port(body[4:])
        pod = cluster.pod(name)
        if port_text is None:
            ports = pod.spec.all_ports()
            port = ports[0].container_port if ports else None
            proto = proto if explicit or not ports else ports[0].protocol.lower()
        else:
            port = parse_port(port_text)
        dst = Destination(pod.pod_ip, port, proto, label=f"pod/{pod.key}")
        notes.append(f"to pod {pod.key} ({pod.pod_ip}) on node {pod.node_name}")
    elif body.startswith("node/"):
        name, port_text = _split_port(body[5:])
        node = cluster.node(name)
        dst = Destination(node.internal_ip, parse_port(port_text) if port_text else None, proto,
                          label=f"node/{name}")
        notes.append(f"to node {name} ({node.internal_ip})")
    else:
        try:
            dst = resolve_destination(destination, protocol)
        except InputError:
            if is_ip(split_hostport(body)[0]):
                raise                   # an address with a bad port: not a name to look up
            dns = _resolve_name(dp, src, body, proto)
            if dns is None:
                raise
            dst, note = dns
            notes.append(note)
    return dst


def _resolve_name(dp: Dataplane, src: Source, body: str, proto: str):
    """NAME[.NAMESPACE...][:PORT]: a DNS name, resolved as the client would (podnet.dns)."""
    try:
        from ..dns.trace import resolve_for_trace
    except ImportError:
        return None
    return resolve_for_trace(dp, src, body, proto)
