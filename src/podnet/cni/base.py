"""What a CNI solution does to a node, in three steps the real ones also take:

1. `setup_node(ctx)`: when its daemon starts: devices (cni0, flannel.1, tunl0...),
   sysctls, the conflist in /etc/cni/net.d, masquerade rules.
2. `add_pod(ctx, pod, pod_ns)`: the kubelet's CNI ADD for one sandbox: interfaces,
   addresses, routes inside the pod and on the host.
3. `connect_nodes(dp)`: the daemon's reachability work across nodes: routes to
   peers' pod CIDRs, VXLAN FDB and neighbour entries, BGP routes, cloud routes.

Pod IPs are the control plane's decision (podnet.control.ipam, which runs the
same algorithm as the solution's IPAM plugin); CNI ADD configures that address.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from typing import Optional

from ..api.objects import Pod
from ..linux.state import Link, Netns, Route
from ..dataplane.topology import container_id


class CNISolution:
    name = "none"
    conflist_name = ""

    def __init__(self, cfg):
        self.cfg = cfg

    def setup_node(self, ctx) -> None:
        pass

    def add_pod(self, ctx, pod: Pod, pod_ns: Netns) -> None:
        pass

    def connect_nodes(self, dp) -> None:
        pass

    def conflist(self, ctx) -> Optional[dict]:
        return None

    def write_conflist(self, ctx) -> None:
        conf = self.conflist(ctx)
        if conf is not None:
            ctx.ns.files[f"/etc/cni/net.d/{self.conflist_name}"] = json.dumps(conf, indent=2) + "\n"


def random_veth_name(pod: Pod, prefix: str = "veth") -> str:
    """ip.RandomVethName(): "veth" + 8 hex digits, derived here from the sandbox id."""
    return prefix + hashlib.sha256(container_id(pod).encode()).hexdigest()[:8]


def pod_addresses(pod: Pod, ctx) -> list[tuple]:
    """(pod IP, the node's pod CIDR it belongs to) per family."""
    out = []
    for ip in pod.pod_ips:
        cidr = next((c for c in ctx.node.pod_cidrs if ip in c), None)
        out.append((ip, cidr))
    return out


def create_veth(ctx, pod: Pod, pod_ns: Netns, host_name: str, mtu: int = 1500,
                host_mac: Optional[str] = None) -> tuple[Link, Link]:
    """The sandbox's eth0 and its host-side peer."""
    eth0, host = ctx.dp.state.connect_veth(pod_ns, "eth0", ctx.ns, host_name, mtu=mtu, mac_b=host_mac)
    host.alias = f"pod {pod.key}"
    return eth0, host


def record_host_local(ctx, network: str, pod: Pod) -> None:
    """host-local's state: /var/lib/cni/networks/<network>/<ip> holds the container id,
    last_reserved_ip.<range> the last address handed out."""
    cid = container_id(pod)
    for i, ip in enumerate(pod.pod_ips):
        ctx.ns.files[f"/var/lib/cni/networks/{network}/{ip}"] = f"{cid}\neth0\n"
        ctx.ns.files[f"/var/lib/cni/networks/{network}/last_reserved_ip.{i}"] = f"{ip}\n"


def ptp_wire(ctx, pod: Pod, pod_ns: Netns, host_name: str, mtu: int = 1500) -> Link:
    """The ptp plugin's ADD: a veth whose host end holds the range's gateway as a /32,
    the pod's subnet and default routes via that gateway, a host route to the pod."""
    eth0, host = create_veth(ctx, pod, pod_ns, host_name, mtu)
    for ip, cidr in pod_addresses(pod, ctx):
        if cidr is None:
            cidr = ipaddress.ip_network(f"{ip}/{ip.max_prefixlen}")
        gw = cidr.network_address + 1
        host_len = ip.max_prefixlen
        eth0.add_address(f"{ip}/{cidr.prefixlen}")
        if not any(a.ip == gw for a in host.addresses):
            host.add_address(f"{gw}/{host_len}")
        any_net = ipaddress.ip_network("0.0.0.0/0" if ip.version == 4 else "::/0")
        # ptp replaces the kernel's subnet route with one via the gateway
        pod_ns.add_route(Route(any_net, "eth0", via=gw))
        pod_ns.add_route(Route(cidr, "eth0", via=gw, src=ip))
        pod_ns.add_route(Route(ipaddress.ip_network(f"{gw}/{host_len}"), "eth0", scope="link", src=ip))
        ctx.ns.add_route(Route(ipaddress.ip_network(f"{ip}/{host_len}"), host.name, scope="host"))
    ctx.ns.sysctls["net.ipv4.ip_forward"] = "1"
    return host
