"""The machines around the Kubernetes components: what kind and a cloud give you.

    internet  (203.0.113.254; answers on any address: "the outside world")
       |  eth0 <-> eth0
    gateway   (the docker host / cloud router: 172.18.0.1 on the kind network,
       |       forwards and MASQUERADEs node traffic to the internet, as docker does)
       |  L2 segment "kind" (kind's docker network 172.18.0.0/16)
    node root namespaces (eth0 172.18.0.x, default via 172.18.0.1, ip_forward=1)
       |  (the CNI wires pods in)
    pod sandboxes (lo + whatever the CNI adds; a socket per containerPort)

Listeners stand in for the processes that run there: kubelet, the API server
on control planes, kube-proxy's health check, the pods' containerPorts, the
hostNetwork pods' ports on their node.
"""

from __future__ import annotations

import hashlib
import ipaddress

from ..api.objects import Node, Pod
from ..config import ClusterConfig
from ..errors import InputError
from ..linux.state import (DataplaneState, Link, Listener, Netns, Route, Rule, Segment,
                           default_rules)

GATEWAY = "gateway"
INTERNET = "internet"
UPLINK_NET = ipaddress.ip_network("203.0.113.0/24")      # TEST-NET-3: the gateway's public side
UPLINK_GATEWAY = ipaddress.ip_address("203.0.113.1")
INTERNET_ROUTER = ipaddress.ip_address("203.0.113.254")
ANY4 = ipaddress.ip_address("0.0.0.0")
PRIVATE_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12",
                                                  "192.168.0.0/16")]   # RFC 1918, RFC 6598
ANY6 = ipaddress.ip_address("::")

# what runs in every node's root namespace (kubeadm/kind defaults)
NODE_LISTENERS = [("tcp", "0.0.0.0", 10250, "kubelet"), ("tcp", "127.0.0.1", 10248, "kubelet healthz"),
                  ("tcp", "0.0.0.0", 22, "sshd")]
PROXY_LISTENERS = [("tcp", "0.0.0.0", 10256, "kube-proxy healthz"), ("tcp", "127.0.0.1", 10249, "kube-proxy metrics")]
CONTROL_PLANE_LISTENERS = [("tcp", "0.0.0.0", 6443, "kube-apiserver"), ("tcp", "127.0.0.1", 2379, "etcd"),
                           ("tcp", "127.0.0.1", 10257, "kube-controller-manager"),
                           ("tcp", "127.0.0.1", 10259, "kube-scheduler")]


def pod_netns_name(pod: Pod) -> str:
    """containerd names sandboxes cni-<uuid>; podnet derives the id from the pod's name."""
    digest = hashlib.sha256(f"{pod.namespace}/{pod.name}".encode()).hexdigest()
    return f"cni-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"


def container_id(pod: Pod) -> str:
    return hashlib.sha256(f"sandbox/{pod.namespace}/{pod.name}".encode()).hexdigest()


def _lo(ns: Netns) -> None:
    lo = ns.add_link(Link("lo", "loopback", mtu=65536))
    lo.add_address("127.0.0.1/8", "host")
    lo.add_address("::1/128", "host")


def build_underlay(cfg: ClusterConfig, state: DataplaneState) -> None:
    gw = state.add_netns(Netns(GATEWAY, kind="gateway"))
    _lo(gw)
    gw.sysctls.update({"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"})
    inet = state.add_netns(Netns(INTERNET, kind="external"))
    _lo(inet)
    state.connect_veth(gw, "eth0", inet, "eth0")
    gw.links["eth0"].add_address(f"{UPLINK_GATEWAY}/24")
    inet.links["eth0"].add_address(f"{INTERNET_ROUTER}/24")
    gw.add_route(Route(ipaddress.ip_network("0.0.0.0/0"), "eth0", via=INTERNET_ROUTER))
    masq = []
    for sub in cfg.underlay:
        state.add_segment(Segment(sub.name, sub.cidr, description=f"{sub.name} network {sub.cidr}"))
        nic = gw.add_link(Link(f"br-{sub.name}"[:15], segment=sub.name))
        nic.add_address(f"{sub.gateway}/{sub.cidr.prefixlen}")
        # the outside world reaches node addresses and LoadBalancer IPs through the gateway
        inet.add_route(Route(sub.cidr, "eth0", via=UPLINK_GATEWAY))
        # docker: -A POSTROUTING -s 172.18.0.0/16 ! -o br-xxxx -j MASQUERADE; between the
        # node subnets the gateway is a plain router (nodes keep their addresses)
        masq += [f"-A POSTROUTING -s {sub.cidr} -d {other.cidr} -j RETURN" for other in cfg.underlay
                 if other is not sub and other.cidr.version == sub.cidr.version]
        masq.append(f"-A POSTROUTING -s {sub.cidr} ! -o {nic.name} -j MASQUERADE")
    if cfg.underlay_v6 is not None:
        gw.links[f"br-{cfg.underlay[0].name}"[:15]].add_address(
            f"{cfg.underlay_v6.network_address + 1}/{cfg.underlay_v6.prefixlen}")
    gw.iptables = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n" \
                  ":POSTROUTING ACCEPT [0:0]\n" + "\n".join(masq) + "\nCOMMIT\n"
    # AnyIP: every address outside the cluster's networks is local to the internet namespace,
    # so a trace to 1.1.1.1:443 has somewhere to arrive
    inet.add_route(Route(ipaddress.ip_network("0.0.0.0/0"), "lo", table=100, type="local", scope="host"))
    # ... except private and shared address space, which the internet does not route (a
    # ClusterIP that leaves a node without a service proxy goes nowhere)
    for private in PRIVATE_NETS:
        inet.add_route(Route(private, table=100, type="blackhole", proto="static"))
    inet.rules = [Rule(0, 255)] + [Rule(50, 254, dst=sub.cidr) for sub in cfg.underlay] + \
        [Rule(50, 254, dst=UPLINK_NET), Rule(100, 100)] + default_rules(4)[1:] + default_rules(6)
    inet.listeners.append(Listener("tcp", ANY4, 0, "the outside world (any port)"))
    inet.listeners.append(Listener("udp", ANY4, 0, "the outside world (any port)"))


def block_unreachable(cfg: ClusterConfig, state: DataplaneState, nodes: list[Node]) -> None:
    """`nodeNetwork.unreachable`: the pairs of nodes whose NICs the segment does not connect
    (a firewall between them, the weave chapter's partial-connectivity demo)."""
    from ..control.nodes import subnet_of_node
    names = {n.name for n in nodes}
    for i, (a, b) in enumerate(cfg.unreachable):
        for name in (a, b):
            if name not in names:
                raise InputError(f"no node named {name!r}", obj="PodnetConfig",
                                 field=f"nodeNetwork.unreachable[{i}]")
        seg_a, seg_b = (cfg.underlay[subnet_of_node(cfg, n)].name for n in (a, b))
        if seg_a == seg_b and a != b:
            state.segments[seg_a].blocked_pairs.add((a, b))


def build_node(cfg: ClusterConfig, state: DataplaneState, node: Node, proxy_runs: bool) -> Netns:
    ns = state.add_netns(Netns(node.name, kind="node", node=node.name))
    _lo(ns)
    from ..control.nodes import subnet_of_node
    sub = cfg.underlay[subnet_of_node(cfg, node.name)]
    eth0 = ns.add_link(Link("eth0", segment=sub.name, mtu=1500))
    for ip in node.internal_ips:
        if ip.version == 4:
            eth0.add_address(f"{ip}/{sub.cidr.prefixlen}")
            ns.add_route(Route(ipaddress.ip_network("0.0.0.0/0"), "eth0", via=sub.gateway))
        elif cfg.underlay_v6 is not None:
            eth0.add_address(f"{ip}/{cfg.underlay_v6.prefixlen}")
            ns.add_route(Route(ipaddress.ip_network("::/0"), "eth0", via=cfg.underlay_v6.network_address + 1))
    ns.sysctls.update({
        "net.ipv4.ip_forward": "1",
        "net.ipv6.conf.all.forwarding": "1",
        "net.bridge.bridge-nf-call-iptables": "1",
        "net.bridge.bridge-nf-call-ip6tables": "1",
        "net.ipv4.conf.all.rp_filter": "0",
    })
    listeners = list(NODE_LISTENERS)
    if proxy_runs:
        listeners += PROXY_LISTENERS
    if node.is_control_plane:
        listeners += CONTROL_PLANE_LISTENERS
    for proto, ip, port, owner in listeners:
        ns.listeners.append(Listener(proto, ipaddress.ip_address(ip), port, f"{owner} on {node.name}"))
    return ns


def build_pod_sandbox(state: DataplaneState, pod: Pod) -> Netns:
    ns = state.add_netns(Netns(pod_netns_name(pod), kind="pod", node=pod.node_name, pod=pod.key))
    _lo(ns)
    add_pod_listeners(ns, pod)
    return ns


def add_pod_listeners(ns: Netns, pod: Pod) -> None:
    """One socket per containerPort; all containers share the sandbox's namespace."""
    for c in pod.spec.containers:
        for p in c.ports:
            for any_addr in (ANY4, ANY6):
                ns.listeners.append(Listener(p.protocol.lower(), any_addr, p.container_port,
                                             f"pod {pod.key} container {c.name}"))
