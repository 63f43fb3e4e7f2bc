"""The cluster definition.

kind's Cluster config is accepted as is::

    kind: Cluster
    apiVersion: kind.x-k8s.io/v1alpha4
    name: k8s-guide
    networking: {podSubnet, serviceSubnet, ipFamily, kubeProxyMode, disableDefaultCNI}
    nodes: [{role: control-plane|worker, labels: {...}}]

What kind lacks goes into a separate document, so the kind file still works
with kind itself::

    apiVersion: podnet.dev/v1alpha1
    kind: PodnetConfig
    cni: {plugin: kindnet|flannel|calico|weave|kubenet|none, mode: ..., mtu: 1500}
    nodeNetwork:
      subnet: 172.18.0.0/16          # kind's docker network
      gateway: 172.18.0.1
      addresses: {k8s-guide-worker: 172.18.0.11}
      subnets: [{name: rack2, subnet: 172.19.0.0/16, gateway: 172.19.0.1, nodes: [..]}]
      unreachable: [[node-a, node-b]]  # pairs of nodes that cannot reach each other
    nodeCIDRMaskSize: 24
    nodeCIDRMaskSizeIPv6: 64
    clusterDomain: cluster.local
    loadBalancer: {pools: ["172.18.255.200-172.18.255.250"]}
    kubeProxy: {mode: iptables, masqueradeBit: 14, masqueradeAll: false,
                nodePortAddresses: [], localhostNodePorts: true, ipvsScheduler: rr,
                ipvsHostFilter: true, disabledOnNodes: []}           # node names, or a role (control-plane, worker)
    dns: {ttl: 30, pods: insecure}
    bootstrap: true                    # add what a fresh kind cluster has

Without a kind config the inputs are a dump of a real cluster: nodes come from
Node objects (or, if there are none, from the nodes pods name) and nothing a
fresh cluster would have is added.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from .api.fields import Fields
from .api.loader import Manifests
from .errors import InputError

CNI_PLUGINS = ("kindnet", "flannel", "calico", "weave", "kubenet", "none")
CNI_MODES = {
    "kindnet": ("ptp",),
    "flannel": ("vxlan", "host-gw"),
    "calico": ("bgp", "ipip", "ipip-crosssubnet", "vxlan", "vxlan-crosssubnet"),
    "weave": ("fastdp", "sleeve"),
    "kubenet": ("cloud-routes", "gke", "aks", "aws"),
    "none": ("none",),
}
PROXY_MODES = ("iptables", "ipvs", "nftables", "ebpf", "userspace", "none")
IP_FAMILIES = ("ipv4", "ipv6", "dual")

DEFAULT_POD_SUBNETS = {"ipv4": "10.244.0.0/16", "ipv6": "fd00:10:244::/56",
                       "dual": "10.244.0.0/16,fd00:10:244::/56"}
DEFAULT_SERVICE_SUBNETS = {"ipv4": "10.96.0.0/12", "ipv6": "fd00:10:96::/112",
                           "dual": "10.96.0.0/12,fd00:10:96::/112"}
KIND_NETWORK_V4 = "172.18.0.0/16"
KIND_NETWORK_V6 = "fc00:f853:ccd:e793::/64"


@dataclass
class NodeDef:
    name: str
    role: str = "worker"            # control-plane | worker
    labels: dict[str, str] = field(default_factory=dict)
    address: Optional[ipaddress.IPv4Address | ipaddress.IPv6Address] = None
    subnet: str = ""                # the underlay subnet (segment) name


@dataclass
class UnderlaySubnet:
    name: str
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address
    nodes: list[str] = field(default_factory=list)


@dataclass
class CNIConfig:
    plugin: str = "kindnet"
    mode: str = ""
    mtu: int = 1500
    options: dict = field(default_factory=dict)


@dataclass
class ProxyConfig:
    mode: str = "iptables"
    masquerade_bit: int = 14
    masquerade_all: bool = False
    node_port_addresses: list[str] = field(default_factory=list)
    localhost_node_ports: bool = True
    ipvs_scheduler: str = "rr"
    # IPVS mode's KUBE-IPVS-FILTER (kubernetes#108460); false: the older kube-proxy of the
    # guide's lab, where a node's 0.0.0.0 listeners answer on every ClusterIP
    ipvs_host_filter: bool = True
    disabled_on_nodes: list[str] = field(default_factory=list)

    @property
    def masquerade_mark(self) -> int:
        return 1 << self.masquerade_bit


@dataclass
class DNSOptions:
    ttl: int = 30
    pods: str = "insecure"          # disabled | insecure | verified
    upstreams: list[str] = field(default_factory=list)
    autopath: bool = False


@dataclass
class ClusterConfig:
    name: str = "kind"
    origin: str = "kind"            # kind | dump
    nodes: list[NodeDef] = field(default_factory=list)
    ip_family: str = "ipv4"
    pod_subnets: list = field(default_factory=list)
    service_subnets: list = field(default_factory=list)
    service_subnet_explicit: bool = True
    node_cidr_mask_v4: int = 24
    node_cidr_mask_v6: int = 64
    underlay: list[UnderlaySubnet] = field(default_factory=list)
    underlay_v6: Optional[ipaddress.IPv6Network] = None
    unreachable: list[tuple[str, str]] = field(default_factory=list)
    cluster_domain: str = "cluster.local"
    lb_pools: list[tuple] = field(default_factory=list)    # (first, last) address pairs
    cni: CNIConfig = field(default_factory=CNIConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    dns: DNSOptions = field(default_factory=DNSOptions)
    bootstrap: bool = True
    node_port_range: tuple[int, int] = (30000, 32767)
    api_server_port: int = 6443
    sources: list[str] = field(default_factory=list)

    @property
    def pod_subnet(self):
        return self.pod_subnets[0]

    @property
    def service_subnet(self):
        return self.service_subnets[0]

    def pod_subnet_of(self, family: int):
        for n in self.pod_subnets:
            if n.version == family:
                return n
        return None

    def service_subnet_of(self, family: int):
        for n in self.service_subnets:
            if n.version == family:
                return n
        return None

    @property
    def families(self) -> list[int]:
        return [n.version for n in self.pod_subnets]

    def node_mask(self, family: int) -> int:
        return self.node_cidr_mask_v4 if family == 4 else self.node_cidr_mask_v6


def _cidrs(f: Fields, key: str, value: str) -> list:
    out = []
    for part in value.split(","):
        part = part.strip()
        try:
            out.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise f.error(key, f"not a CIDR: {part!r}") from None
    return out


def _kind_node_names(name: str, roles: list[str]) -> list[str]:
    """kind's naming: <name>-control-plane, -control-plane2, <name>-worker, -worker2..."""
    counts: dict[str, int] = {}
    out = []
    for role in roles:
        counts[role] = counts.get(role, 0) + 1
        suffix = "" if counts[role] == 1 else str(counts[role])
        out.append(f"{name}-{role}{suffix}")
    return out


def build_config(bag: Manifests) -> ClusterConfig:
    cfg = ClusterConfig()
    if len(bag.cluster_configs) > 1:
        files = ", ".join(f for f, _ in bag.cluster_configs)
        raise InputError(f"more than one kind Cluster config ({files})",
                         file=bag.cluster_configs[1][0], obj="Cluster")
    if len(bag.podnet_configs) > 1:
        raise InputError("more than one PodnetConfig", file=bag.podnet_configs[1][0],
                         obj="PodnetConfig")
    explicit_svc_subnet = False
    kind_proxy_mode = None
    disable_default_cni = False

    if bag.cluster_configs:
        file, doc = bag.cluster_configs[0]
        f = Fields(doc, file=file, obj=f"Cluster {doc.get('name', 'kind')}")
        cfg.sources.append(file)
        cfg.name = f.str("name", "kind") or "kind"
        net = f.dict("networking")
        cfg.ip_family = net.str("ipFamily", "ipv4", choices=IP_FAMILIES)
        if net.has("podSubnet"):
            cfg.pod_subnets = _cidrs(net, "podSubnet", net.str("podSubnet"))
        if net.has("serviceSubnet"):
            cfg.service_subnets = _cidrs(net, "serviceSubnet", net.str("serviceSubnet"))
            explicit_svc_subnet = True
        kind_proxy_mode = net.str("kubeProxyMode", None, choices=("iptables", "ipvs", "nftables", "none"))
        disable_default_cni = bool(net.bool("disableDefaultCNI", False))
        cfg.api_server_port = 6443
        node_docs = f.dicts("nodes") or [Fields({"role": "control-plane"}, file=file,
                                                obj=f.obj, path="nodes[0]")]
        roles = [n.str("role", "control-plane", choices=("control-plane", "worker")) for n in node_docs]
        # kind creates control-plane nodes first whatever the order in the file
        ordered = sorted(range(len(roles)), key=lambda i: (roles[i] != "control-plane", i))
        names = _kind_node_names(cfg.name, [roles[i] for i in ordered])
        for name, i in zip(names, ordered):
            cfg.nodes.append(NodeDef(name, roles[i], node_docs[i].str_map("labels")))
        cfg.origin = "kind"
    else:
        has_nodes = bool(bag.nodes) or any(p.node_name for p in bag.pods)
        cfg.origin = "dump" if has_nodes else "kind"
        if cfg.origin == "kind":
            cfg.nodes.append(NodeDef(f"{cfg.name}-control-plane", "control-plane"))

    cfg.bootstrap = cfg.origin == "kind"
    if disable_default_cni:
        cfg.cni.plugin = "none"

    if bag.podnet_configs:
        file, doc = bag.podnet_configs[0]
        _apply_podnet_config(cfg, Fields(doc, file=file, obj="PodnetConfig"))
        explicit_svc_subnet = explicit_svc_subnet or bool(doc.get("serviceSubnet"))

    if kind_proxy_mode and not (bag.podnet_configs and
                                Fields(bag.podnet_configs[0][1]).dict("kubeProxy").has("mode")):
        cfg.proxy.mode = kind_proxy_mode
    if not cfg.pod_subnets:
        cfg.pod_subnets = [ipaddress.ip_network(c) for c in DEFAULT_POD_SUBNETS[cfg.ip_family].split(",")]
    if not cfg.service_subnets:
        cfg.service_subnets = [ipaddress.ip_network(c)
                               for c in DEFAULT_SERVICE_SUBNETS[cfg.ip_family].split(",")]
    cfg.service_subnet_explicit = explicit_svc_subnet or cfg.origin == "kind"
    if not cfg.cni.mode:
        cfg.cni.mode = CNI_MODES[cfg.cni.plugin][0]
    if not cfg.underlay:
        net = ipaddress.ip_network(KIND_NETWORK_V4)
        cfg.underlay.append(UnderlaySubnet("kind", net, net.network_address + 1))
    if cfg.ip_family != "ipv4" and cfg.underlay_v6 is None:
        cfg.underlay_v6 = ipaddress.ip_network(KIND_NETWORK_V6)
    if not cfg.lb_pools:
        first = cfg.underlay[0].cidr
        if first.version == 4 and first.prefixlen <= 16:
            base = first.network_address + (255 << 8)
            cfg.lb_pools.append((base + 200, base + 250))
    _check_families(cfg)
    return cfg


def _check_families(cfg: ClusterConfig) -> None:
    fams = [n.version for n in cfg.pod_subnets]
    want = {"ipv4": [4], "ipv6": [6], "dual": None}[cfg.ip_family]
    if want is not None and fams != want:
        raise InputError(f"podSubnet {','.join(map(str, cfg.pod_subnets))} does not match "
                         f"ipFamily {cfg.ip_family}", obj="Cluster", field="networking.podSubnet")
    if cfg.ip_family == "dual" and sorted(fams) != [4, 6]:
        raise InputError("dual-stack needs one IPv4 and one IPv6 podSubnet", obj="Cluster",
                         field="networking.podSubnet")


def _apply_podnet_config(cfg: ClusterConfig, f: Fields) -> None:
    cfg.sources.append(f.file or "")
    cni = f.dict("cni")
    if cni.data:
        cfg.cni.plugin = cni.str("plugin", cfg.cni.plugin, choices=CNI_PLUGINS)
        cfg.cni.mode = cni.str("mode", "", choices=CNI_MODES[cfg.cni.plugin] + ("",)) or ""
        cfg.cni.mtu = cni.int("mtu", 1500, minimum=576, maximum=65535)
        cfg.cni.options = dict(cni.raw("options", {}) or {})
    if f.has("podSubnet"):
        cfg.pod_subnets = _cidrs(f, "podSubnet", f.str("podSubnet"))
    if f.has("serviceSubnet"):
        cfg.service_subnets = _cidrs(f, "serviceSubnet", f.str("serviceSubnet"))
    if f.has("ipFamily"):
        cfg.ip_family = f.str("ipFamily", choices=IP_FAMILIES)
    nn = f.dict("nodeNetwork")
    if nn.data:
        if nn.has("subnet"):
            cidr = nn.cidr("subnet")
            gw = nn.ip("gateway", cidr.network_address + 1)
            if gw not in cidr:
                raise nn.error("gateway", f"{gw} is not in {cidr}")
            cfg.underlay = [UnderlaySubnet("kind" if not nn.has("name") else nn.str("name"), cidr, gw)]
        for s in nn.dicts("subnets"):
            cidr = s.cidr("subnet", required=True)
            gw = s.ip("gateway", cidr.network_address + 1)
            if not cfg.underlay:
                net = ipaddress.ip_network(KIND_NETWORK_V4)
                cfg.underlay.append(UnderlaySubnet("kind", net, net.network_address + 1))
            cfg.underlay.append(UnderlaySubnet(s.str("name", required=True), cidr, gw, s.strs("nodes")))
        addrs = nn.str_map("addresses")
        by_name = {n.name: n for n in cfg.nodes}
        for name, value in addrs.items():
            try:
                ip = ipaddress.ip_address(value)
            except ValueError:
                raise nn.error(f"addresses.{name}", f"not an IP address: {value!r}") from None
            node = by_name.get(name)
            if node is None and cfg.origin == "kind":
                raise nn.error(f"addresses.{name}", "no such node in the cluster config")
            if node is not None:
                node.address = ip
        for i, pair in enumerate(nn.list("unreachable")):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
                raise nn.error(f"unreachable[{i}]", "expected a pair of node names")
            cfg.unreachable.append((pair[0], pair[1]))
        if nn.has("subnetIPv6"):
            cfg.underlay_v6 = nn.cidr("subnetIPv6")
    cfg.node_cidr_mask_v4 = f.int("nodeCIDRMaskSize", cfg.node_cidr_mask_v4, minimum=8, maximum=30)
    cfg.node_cidr_mask_v6 = f.int("nodeCIDRMaskSizeIPv6", cfg.node_cidr_mask_v6, minimum=48, maximum=126)
    cfg.cluster_domain = f.str("clusterDomain", cfg.cluster_domain) or cfg.cluster_domain
    lb = f.dict("loadBalancer")
    for i, pool in enumerate(lb.strs("pools")):
        cfg.lb_pools.append(_pool(lb, f"pools[{i}]", pool))
    kp = f.dict("kubeProxy")
    if kp.data:
        p = cfg.proxy
        p.mode = kp.str("mode", p.mode, choices=PROXY_MODES)
        p.masquerade_bit = kp.int("masqueradeBit", p.masquerade_bit, minimum=0, maximum=31)
        p.masquerade_all = bool(kp.bool("masqueradeAll", p.masquerade_all))
        p.node_port_addresses = kp.strs("nodePortAddresses")
        for i, c in enumerate(p.node_port_addresses):
            if c != "primary":
                _cidrs(kp, f"nodePortAddresses[{i}]", c)
        p.localhost_node_ports = bool(kp.bool("localhostNodePorts", p.localhost_node_ports))
        p.ipvs_scheduler = kp.str("ipvsScheduler", p.ipvs_scheduler,
                                  choices=("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "mh", "sed", "nq"))
        p.ipvs_host_filter = bool(kp.bool("ipvsHostFilter", p.ipvs_host_filter))
        p.disabled_on_nodes = []
        for i, entry in enumerate(kp.strs("disabledOnNodes")):
            names = [n.name for n in cfg.nodes]
            if entry in ("control-plane", "worker") and entry not in names:
                # a role: every node of it (the cluster-ip-routing question's master)
                p.disabled_on_nodes += [n.name for n in cfg.nodes if n.role == entry]
            elif cfg.origin == "kind" and entry not in names:
                raise kp.error(f"disabledOnNodes[{i}]", f"no node {entry!r} in the cluster "
                               f"(nodes: {', '.join(names)}; or a role: control-plane, worker)")
            else:
                p.disabled_on_nodes.append(entry)
    dns = f.dict("dns")
    if dns.data:
        cfg.dns.ttl = dns.int("ttl", cfg.dns.ttl, minimum=0, maximum=3600)
        cfg.dns.pods = dns.str("pods", cfg.dns.pods, choices=("disabled", "insecure", "verified"))
        cfg.dns.upstreams = dns.strs("upstreams")
        cfg.dns.autopath = bool(dns.bool("autopath", False))
    if f.has("bootstrap"):
        cfg.bootstrap = bool(f.bool("bootstrap"))
    rng = f.str("serviceNodePortRange")
    if rng:
        try:
            lo, hi = (int(x) for x in rng.split("-"))
        except ValueError:
            raise f.error("serviceNodePortRange", f"expected FIRST-LAST, got {rng!r}") from None
        cfg.node_port_range = (lo, hi)


def _pool(f: Fields, key: str, value: str) -> tuple:
    if "-" in value:
        a, _, b = value.partition("-")
        try:
            first, last = ipaddress.ip_address(a.strip()), ipaddress.ip_address(b.strip())
        except ValueError:
            raise f.error(key, f"not an address range: {value!r}") from None
        if first.version != last.version or last < first:
            raise f.error(key, f"not an address range: {value!r}")
        return (first, last)
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise f.error(key, f"not a CIDR or address range: {value!r}") from None
    return (net.network_address, net.broadcast_address)
