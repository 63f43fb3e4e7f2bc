"""What runs in the lab's namespaces: a plan made from the rendered cluster.

Each node gets one agent process (podnet.lab.agent), started in the node's
namespace the way a kubelet runs the node's pods: for every pod sandbox on the
node it opens the pod's sockets inside the pod's namespace (all containers of a
pod share it), and the node's own sockets (kubelet, sshd, the API server,
hostNetwork pods) in the node's namespace. The sockets are exactly the model's
listeners (`Netns.listeners`), so the kernel listens where the simulator thinks
something listens. Every socket answers with podnet.lab.echo's line naming the
pod, the address it was reached on and the client address it sees; HTTP ports
(named http*, appProtocol http, 80, 8080) answer as an HTTP server.

kube-dns pods answer DNS on their port 53 with `python -m podnet.dns serve` in
the pod's namespace (podnet's DNS server, CoreDNS's records), started by the lab
beside the agents.

Each pod's /etc/resolv.conf (per dnsPolicy) is written for `lab exec`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..api.objects import Pod
from ..dataplane import Dataplane
from ..dataplane.topology import INTERNET
from ..dns.client import resolv_conf
from ..dns.records import DNSRecords
from ..errors import InputError

HTTP_PORTS = {80, 8080, 8000, 8008, 8888, 3000, 5000, 9153, 10248, 10256}
INTERNET_TCP = (80, 443, 8080)
INTERNET_UDP = (53, 123)
INTERNET_HTTP = (80, 8080)


@dataclass
class Socket:
    proto: str                      # tcp | udp
    ip: str
    port: int
    kind: str                       # tcp | http | udp | arp
    name: str                       # who answers: pod key, node/NAME, internet
    # answer from addresses that are local only through a route in another table than `local`
    # (the internet namespace's AnyIP): the kernel needs IP_TRANSPARENT to send from them
    transparent: bool = False
    dev: str = ""                   # arp: the device the responder's packet socket is bound to

    def as_json(self) -> dict:
        out = {"proto": self.proto, "ip": self.ip, "port": self.port, "kind": self.kind, "name": self.name}
        if self.transparent:
            out["transparent"] = True
        if self.dev:
            out["dev"] = self.dev
        return out


@dataclass
class AgentPlan:
    """One agent process: where it runs and the sockets it opens, per namespace."""
    name: str                       # node name, or "internet"
    netns: str                      # model namespace the agent runs in
    sockets: dict[str, list[Socket]] = field(default_factory=dict)   # model netns -> sockets

    def spec(self, kname) -> dict:
        return {"name": self.name,
                "namespaces": [{"netns": kname(ns), "self": ns == self.netns,
                                "sockets": [s.as_json() for s in socks]}
                               for ns, socks in sorted(self.sockets.items())]}


@dataclass
class DnsPlan:
    pod: str                        # pod key
    netns: str                      # model netns
    ip: str


@dataclass
class WorkloadPlan:
    agents: dict[str, AgentPlan] = field(default_factory=dict)
    dns: list[DnsPlan] = field(default_factory=list)
    dns_serial: int = 0             # the cluster zone's SOA serial: changes restart the DNS servers
    resolv: dict[str, str] = field(default_factory=dict)           # pod key -> resolv.conf text


def dns_pods(cluster) -> set[str]:
    """Pods that serve the cluster DNS: the kube-system/kube-dns Service's endpoints, or k8s-app=kube-dns."""
    svc = cluster.find_service("kube-system/kube-dns")
    out = set()
    if svc is not None and svc.selector:
        for pod in cluster.pods:
            if pod.namespace == svc.namespace and all(pod.meta.labels.get(k) == v for k, v in svc.selector.items()):
                out.add(pod.key)
    if not out:
        out = {p.key for p in cluster.pods if p.meta.labels.get("k8s-app") == "kube-dns"}
    return out


def _http_ports(cluster, pod: Pod) -> set[int]:
    ports = set()
    for c in pod.spec.containers:
        for p in c.ports:
            if p.protocol.upper() != "TCP":
                continue
            if p.container_port in HTTP_PORTS or p.name.lower().startswith("http"):
                ports.add(p.container_port)
    for svc in cluster.services:
        for sp in svc.ports:
            if sp.app_protocol.lower() in ("http", "kubernetes.io/h2c") or sp.name.lower().startswith("http"):
                target = sp.target
                if isinstance(target, int):
                    ports.add(target)
                else:
                    port = pod.spec.port_by_name(target, sp.protocol)
                    if port:
                        ports.add(port)
    return ports


def plan_workloads(dp: Dataplane) -> WorkloadPlan:
    cluster = dp.cluster
    plan = WorkloadPlan()
    dns_keys = dns_pods(cluster)
    owners: dict[str, Pod] = {}
    for pod in cluster.pods:
        owners[pod.key] = pod
    for node in cluster.nodes:
        if node.name in dp.state.namespaces:
            plan.agents[node.name] = AgentPlan(node.name, node.name)
    # pod sandboxes and the node's own listeners
    for ns in dp.state.namespaces.values():
        if ns.kind not in ("pod", "node") or not ns.node or ns.node not in plan.agents:
            continue
        pod = owners.get(ns.pod) if ns.kind == "pod" else None
        socks: list[Socket] = []
        claimed: dict[tuple, str] = {}
        for lst in ns.listeners:
            name, who = _owner(ns, lst.owner, pod)
            http = set()
            who_pod = owners.get(name)
            if who_pod is not None:
                http = _http_ports(cluster, who_pod)
            elif lst.port in HTTP_PORTS:
                http = {lst.port}
            key = (lst.proto, lst.ip.version, lst.port)
            wildcard = lst.ip.is_unspecified
            conflict = claimed.get(key) if wildcard else None
            if conflict is not None and conflict != who:
                if conflict.startswith("node ") or who.startswith("node "):
                    continue            # a static pod is the node's own listener (kube-apiserver...)
                raise InputError(f"port {lst.port}/{lst.proto.upper()} is claimed by both {conflict} and {who} "
                                 f"in network namespace {ns.name} (hostNetwork pods share the node's namespace)",
                                 obj=f"Pod {name}" if who_pod else None)
            if wildcard:
                claimed[key] = who
            if any(s.proto == lst.proto and s.ip == str(lst.ip) and s.port == lst.port for s in socks):
                continue
            if who_pod is not None and who_pod.key in dns_keys and lst.port == 53:
                continue                # the pod's DNS server (podnet.dns serve) binds it
            kind = lst.proto
            if lst.proto == "tcp" and lst.port in http:
                kind = "http"
            if lst.proto not in ("tcp", "udp"):
                continue                # sctp: not served
            socks.append(Socket(lst.proto, str(lst.ip), lst.port, kind, name))
        # userspace ARP responders (MetalLB's layer 2 speaker on a node)
        socks += [Socket("arp", str(r.ip), 0, "arp", r.owner, dev=r.dev) for r in ns.arp_responders]
        if ns.kind == "pod" and pod is not None and pod.key in dns_keys:
            ip = str(pod.pod_ip) if pod.pod_ip else ""
            plan.dns.append(DnsPlan(pod.key, ns.name, ip))
        if socks:
            plan.agents[ns.node].sockets[ns.name] = socks
    # the outside world: a few well-known ports on any address (the namespace is AnyIP)
    if INTERNET in dp.state.namespaces:
        inet = AgentPlan(INTERNET, INTERNET)
        families = {a.ip.version for _, a in dp.state.namespaces[INTERNET].addresses() if not a.ip.is_loopback}
        socks = []
        for fam in sorted(families or {4}):
            any_ip = "0.0.0.0" if fam == 4 else "::"
            socks += [Socket("tcp", any_ip, p, "http" if p in INTERNET_HTTP else "tcp", INTERNET, True)
                      for p in INTERNET_TCP]
            socks += [Socket("udp", any_ip, p, "udp", INTERNET, True) for p in INTERNET_UDP]
        inet.sockets[INTERNET] = socks
        plan.agents[INTERNET] = inet
    plan.dns_serial = DNSRecords.from_cluster(cluster).serial
    for pod in cluster.pods:
        if pod.node_name and not pod.terminal:
            plan.resolv[pod.key] = resolv_conf_text(cluster, pod)
    return plan


def _owner(ns, owner: str, pod: Optional[Pod]) -> tuple[str, str]:
    """(the name the echo server says, who claims the socket) for a model listener."""
    if pod is not None:
        return pod.key, f"pod {pod.key}"
    if owner.startswith("pod "):
        key = owner.split()[1]
        return key, f"pod {key}"
    return f"node/{ns.name}", f"node {ns.name} ({owner})"


def resolv_conf_text(cluster, pod: Pod) -> str:
    """The pod's /etc/resolv.conf, as the kubelet writes it for its dnsPolicy."""
    return resolv_conf(pod, cluster).text()
