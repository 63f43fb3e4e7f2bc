"""What a CNI solution does to a node, in three steps the real ones also take:

1. `setup_node(ctx)`: when its daemon starts: devices (cni0, flannel.1, tunl0...),
   sysctls, the conflist in /etc/cni/net.d, masquerade rules.
2. `add_pod(ctx, pod, pod_ns)`: the kubelet's CNI ADD for one sandbox: interfaces,
   addresses, routes inside the pod and on the host.
3. `connect_nodes(dp)`: the daemon's reachability work across nodes: routes to
   peers' pod CIDRs, VXLAN FDB and neighbour entries, BGP routes, cloud routes.

Pod IPs are the control plane's decision (podnet.control.ipam, which runs the
same algorithm as the solution's IPAM plugin); CNI ADD configures that address.

For step 2 a solution normally just writes its conflist in setup_node and calls
`self.runtime_add(ctx, pod, pod_ns)`: that is what containerd does for a new
sandbox — the loopback network, then the first network configuration in the
node's /etc/cni/net.d, run through the CNI plugins (podnet.cni.plugins) with
podnet.cni.spec.invoke, with the kubelet's CNI_ARGS and capability arguments
(portMappings from hostPorts, bandwidth from annotations).
"""

from __future__ import annotations

import json
import re
from typing import Optional

from ..api.objects import Pod
from ..dataplane.topology import container_id
from ..errors import PodnetError
from ..linux.state import Netns
from .spec import NetworkConfigList, Result, format_args, invoke

CNI_CONF_DIR = "/etc/cni/net.d"
CNI_BIN_DIR = "/opt/cni/bin"
# containerd's loopback network (go-cni), run with CNI_IFNAME=lo before the pod's network
LOOPBACK_CONFLIST = {"cniVersion": "0.3.1", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}


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
            ctx.ns.files[f"{CNI_CONF_DIR}/{self.conflist_name}"] = json.dumps(conf, indent=2) + "\n"

    # ---------------------------------------------------------------- the runtime's part
    def runtime_add(self, ctx, pod: Pod, pod_ns: Netns, ifname: str = "eth0",
                    conflist: Optional[NetworkConfigList] = None, pin_ips: bool = True) -> Result:
        """CNI ADD of a new sandbox, as containerd does it; returns the network's result.

        The pod's addresses were decided by the control plane with the IPAM
        plugin's algorithm, so the plugins hand out the same ones. When they do not
        (a recorded pod IP that is not next in round-robin order, e.g. from a dump
        of a real cluster), the ADD is undone and redone asking for the recorded
        addresses (`args.cni.ips`, the CNI convention IPAM plugins honour)."""
        state = ctx.dp.state
        env = pod_cni_env(pod, pod_ns)
        invoke(LOOPBACK_CONFLIST, "ADD", {**env, "CNI_IFNAME": "lo"}, state, ctx)
        conflist = conflist or node_conflist(ctx)
        env["CNI_IFNAME"] = ifname
        caps = pod_capability_args(pod)
        result = invoke(conflist, "ADD", env, state, ctx, runtime_config=caps)
        if not pin_ips or not pod.pod_ips or _result_ips(result) == set(pod.pod_ips):
            return result
        invoke(conflist, "DEL", env, state, ctx, runtime_config=caps)
        pinned = _with_requested_ips(conflist, pod.pod_ips)
        result = invoke(pinned, "ADD", env, state, ctx, runtime_config=caps)
        if _result_ips(result) != set(pod.pod_ips):
            raise PodnetError(f"CNI ADD of pod {pod.key} on {ctx.node.name} gave "
                              f"{', '.join(sorted(map(str, _result_ips(result))))}, the control plane decided "
                              f"{', '.join(map(str, pod.pod_ips))}")
        return result

    def runtime_del(self, ctx, pod: Pod, pod_ns: Optional[Netns], ifname: str = "eth0",
                    conflist: Optional[NetworkConfigList] = None) -> None:
        """CNI DEL of a sandbox (network first, then loopback), as containerd does it."""
        state = ctx.dp.state
        env = pod_cni_env(pod, pod_ns)
        invoke(conflist or node_conflist(ctx), "DEL", {**env, "CNI_IFNAME": ifname}, state, ctx,
               runtime_config=pod_capability_args(pod))
        invoke(LOOPBACK_CONFLIST, "DEL", {**env, "CNI_IFNAME": "lo"}, state, ctx)


def node_conflist(ctx) -> NetworkConfigList:
    """The network configuration the runtime uses: the lexically first .conflist/.conf/.json
    file in the node's /etc/cni/net.d."""
    names = sorted(p for p in ctx.ns.files if p.startswith(CNI_CONF_DIR + "/")
                   and p.rsplit(".", 1)[-1] in ("conflist", "conf", "json"))
    if not names:
        raise PodnetError(f"node {ctx.node.name}: no network config found in {CNI_CONF_DIR} "
                          "(cni plugin not initialized)")
    return NetworkConfigList.parse(ctx.ns.files[names[0]], source=f"{ctx.node.name}:{names[0]}")


def pod_cni_env(pod: Pod, pod_ns: Optional[Netns], ifname: str = "eth0") -> dict[str, str]:
    """The CNI_* variables containerd sets for a pod sandbox (CNI_COMMAND comes from invoke)."""
    from ..control.naming import uid_for
    cid = container_id(pod)
    args = format_args([("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", pod.namespace),
                        ("K8S_POD_NAME", pod.name), ("K8S_POD_INFRA_CONTAINER_ID", cid),
                        ("K8S_POD_UID", pod.meta.uid or uid_for("Pod", pod.namespace, pod.name))])
    return {"CNI_CONTAINERID": cid, "CNI_NETNS": f"/var/run/netns/{pod_ns.name}" if pod_ns else "",
            "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": CNI_BIN_DIR}


def pod_capability_args(pod: Pod) -> dict:
    """Capability arguments containerd derives from the pod: portMappings from the
    containers' hostPorts, bandwidth from the kubernetes.io/*-bandwidth annotations."""
    caps: dict = {}
    mappings = []
    for c in pod.spec.containers:
        for p in c.ports:
            if p.host_port:
                m = {"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol.lower()}
                if p.host_ip:
                    m["hostIP"] = p.host_ip
                mappings.append(m)
    if mappings:
        caps["portMappings"] = mappings
    bandwidth = {}
    for key, rate, burst in (("kubernetes.io/ingress-bandwidth", "ingressRate", "ingressBurst"),
                             ("kubernetes.io/egress-bandwidth", "egressRate", "egressBurst")):
        text = pod.meta.annotations.get(key)
        if text:
            bandwidth[rate] = _quantity(text, pod, key)
            bandwidth[burst] = 0xFFFFFFFF         # containerd: math.MaxUint32 (no burst annotation)
    if bandwidth:
        caps["bandwidth"] = bandwidth
    return caps


_SUFFIX = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def _quantity(text: str, pod: Pod, key: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?", text.strip())
    if not m:
        from ..errors import InputError
        raise InputError(f"not a quantity: {text!r}", obj=f"Pod {pod.key}", field=f"metadata.annotations[{key}]")
    return int(float(m[1]) * _SUFFIX[m[2] or ""])


def _result_ips(result: Result) -> set:
    return {ipc.address.ip for ipc in result.ips}


def _with_requested_ips(conflist: NetworkConfigList, ips) -> NetworkConfigList:
    """The list with `args.cni.ips` on every plugin that has an IPAM section."""
    raw = conflist.to_json()
    for plugin in raw["plugins"]:
        if "ipam" in plugin:
            plugin.setdefault("args", {}).setdefault("cni", {})["ips"] = [str(ip) for ip in ips]
    return NetworkConfigList.parse(raw, source=conflist.source)
