"""eBPF socket load-balancing, Cilium's kube-proxy replacement (podnet.proxy.ebpf,
podnet.sim.bpf_lb): the maps, their printing, and the packet's life through them."""

from __future__ import annotations

import ipaddress
import json
import re

import pytest

from podnet import Cluster
from podnet.dataplane import build_dataplane
from podnet.linux.state import LB_SCOPE_EXT, LB_SCOPE_INT, LBKey
from podnet.proxy import ebpf
from podnet.sim import bpf_lb

from conftest import GUIDE_LAB, run_podnet
from helpers import NODEPORTS, walk
from test_proxy_model import oracle_objects, view_of

ip = ipaddress.ip_address

# the shared NodePorts (Cluster and Local), a LoadBalancer and a Service without endpoints
SERVICES = NODEPORTS + """
---
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  selector: {app: nobody}
  ports: [{port: 80, targetPort: 80}]
"""


def guide_lab(tmp_path, mode="ebpf", extra: str = SERVICES, config: str = ""):
    paths = [GUIDE_LAB]
    if extra:
        (tmp_path / "extra.yaml").write_text(extra)
        paths.append(tmp_path / "extra.yaml")
    if config:
        (tmp_path / "podnet.yaml").write_text(config)
        paths.append(tmp_path / "podnet.yaml")
    return build_dataplane(Cluster.load(paths, proxy_mode=mode))


def node_ip(dp, name):
    return dp.cluster.node(name).internal_ip


def pod_ip(dp, prefix):
    return next(p.pod_ip for p in dp.cluster.pods if p.name.startswith(prefix))


def web_pods(dp):
    return {p.node_name: p.pod_ip for p in dp.cluster.pods if p.name.startswith("web-")}


# ---------------------------------------------------------------------------
# the maps
# ---------------------------------------------------------------------------

def test_two_level_service_map(tmp_path):
    """Slot 0 holds the count, slots 1..count the backend ids; backends and rev NAT by id."""
    dp = guide_lab(tmp_path)
    lb = dp.state.netns("k8s-guide-worker").socket_lb
    web = dp.cluster.service("web")
    master = lb.services[LBKey(web.cluster_ip, 80, "tcp", LB_SCOPE_EXT, 0)]
    assert master.count == 2 and master.backend_id == 0 and master.svc_type == "ClusterIP"
    assert "routable" not in master.flags          # ClusterIPs are not served from outside
    slots = [lb.services[LBKey(web.cluster_ip, 80, "tcp", LB_SCOPE_EXT, i)] for i in (1, 2)]
    assert all(s.count == 0 and s.rev_nat_index == master.rev_nat_index for s in slots)
    backends = {(lb.backends[s.backend_id].address, lb.backends[s.backend_id].port) for s in slots}
    assert backends == {(a, 80) for a in web_pods(dp).values()}
    assert LBKey(web.cluster_ip, 80, "tcp", LB_SCOPE_EXT, 3) not in lb.services
    assert lb.rev_nat[master.rev_nat_index] == (web.cluster_ip, 80)
    assert lb.names[master.rev_nat_index] == "default/web"
    # backends are shared between services: web-np's slots name the same backend ids
    np_master = lb.services[LBKey(node_ip(dp, "k8s-guide-worker"), 30080, "tcp", LB_SCOPE_EXT, 0)]
    np_ids = {lb.services[LBKey(node_ip(dp, "k8s-guide-worker"), 30080, "tcp", 0, i)].backend_id
              for i in (1, 2)}
    assert np_ids == {s.backend_id for s in slots} and np_master.svc_type == "NodePort"
    # a service without endpoints keeps its master entry, with no slot
    nobody = dp.cluster.service("nobody")
    assert lb.services[LBKey(nobody.cluster_ip, 80, "tcp", 0, 0)].count == 0


def test_external_traffic_policy_local_gets_two_scopes(tmp_path):
    dp = guide_lab(tmp_path)
    worker = node_ip(dp, "k8s-guide-worker")
    for node, local_count in (("k8s-guide-worker", 1), ("k8s-guide-control-plane", 0)):
        lb = dp.state.netns(node).socket_lb
        addr = node_ip(dp, node)
        ext = lb.services[LBKey(addr, 30081, "tcp", LB_SCOPE_EXT, 0)]
        internal = lb.services[LBKey(addr, 30081, "tcp", LB_SCOPE_INT, 0)]
        assert {"ext-local", "two-scopes", "routable"} <= ext.flags
        assert ext.count == local_count and internal.count == 2
        # the surrogate entry used by wildcard lookups, never served from outside
        surrogate = lb.services[LBKey(ip("0.0.0.0"), 30081, "tcp", LB_SCOPE_EXT, 0)]
        assert "routable" not in surrogate.flags
    lb = dp.state.netns("k8s-guide-worker").socket_lb
    local = lb.services[LBKey(worker, 30081, "tcp", LB_SCOPE_EXT, 1)]
    assert lb.backends[local.backend_id].address == web_pods(dp)["k8s-guide-worker"]


def test_oracle_services_flags_and_source_ranges(tmp_path):
    view = view_of(tmp_path, oracle_objects())
    lb = ebpf.render([view], host_ips=["192.168.0.2"], endpoints=["10.180.0.5"])
    svc5 = lb.services[LBKey(ip("5.6.7.8"), 80, "tcp", 0, 0)]
    assert svc5.svc_type == "LoadBalancer" and svc5.affinity_timeout == 10800
    assert bpf_lb.flags_text(svc5) == "LoadBalancer, sessionAffinity, check source-range"
    assert lb.source_ranges[svc5.rev_nat_index] == [ipaddress.ip_network("203.0.113.0/25")]
    ext_ip = lb.services[LBKey(ip("192.168.99.22"), 80, "tcp", 0, 0)]
    assert bpf_lb.flags_text(ext_ip) == "ExternalIPs, Local, two-scopes"
    assert bpf_lb.key_text(LBKey(ip("192.168.99.22"), 80, "tcp", LB_SCOPE_INT, 1)) == "192.168.99.22:80/TCP/i (1)"

    never = lambda key, options: 0      # noqa: E731  (always the first option)
    # loadBalancerSourceRanges at tc: inside the range load-balanced, outside dropped
    inside = bpf_lb.nodeport_lb(lb, ip("203.0.113.9"), ip("5.6.7.8"), 80, "tcp", never)
    assert inside.error == "" and inside.backend.address == ip("10.180.0.3")
    assert inside.snat == ip("192.168.0.2")        # 10.180.0.3 is not a local endpoint
    outside = bpf_lb.nodeport_lb(lb, ip("203.0.113.200"), ip("5.6.7.8"), 80, "tcp", never)
    assert outside.error.startswith("DROP_NOT_IN_SRC_RANGE")
    # a ClusterIP is non-routable: tc leaves it alone
    assert bpf_lb.nodeport_lb(lb, ip("203.0.113.9"), ip("172.30.0.41"), 80, "tcp", never) is None
    # externalIPs that are not the host's are not translated at the socket
    sel = bpf_lb.sock_xlate_fwd(lb, ip("192.168.99.33"), 80, "tcp", True, never)
    assert sel.error.startswith("EPERM")
    # a service without endpoints: connect() fails
    assert bpf_lb.sock_xlate_fwd(lb, ip("172.30.0.46"), 80, "tcp", True, never).error == "EHOSTUNREACH"
    # IDs: every frontend its own service id, one backend id per address:port/proto
    assert sorted(lb.rev_nat) == list(range(1, len(lb.rev_nat) + 1))
    assert len(lb.backends) == len({(b.address, b.port, b.proto) for b in lb.backends.values()})


def test_render_prints_as_cilium(tmp_path):
    dp = guide_lab(tmp_path)
    lb = dp.state.netns("k8s-guide-worker").socket_lb
    web = dp.cluster.service("web")
    rev = lb.services[LBKey(web.cluster_ip, 80, "tcp", 0, 0)].rev_nat_index
    table = ebpf.bpf_lb_list(lb).splitlines()
    assert table[0].split() == ["SERVICE", "ADDRESS", "BACKEND", "ADDRESS", "(REVNAT_ID)", "(SLOT)"]
    rows = [re.split(r"\s{3,}", line) for line in table[1:]]
    assert [f"{web.cluster_ip}:80/TCP (0)", f"0.0.0.0:0 ({rev}) (0) [ClusterIP, non-routable]"] in rows
    for slot, addr in enumerate(sorted(web_pods(dp).values()), 1):
        assert [f"{web.cluster_ip}:80/TCP ({slot})", f"{addr}:80/TCP ({rev}) ({slot})"] in rows
    worker = node_ip(dp, "k8s-guide-worker")
    assert any(r[0] == f"{worker}:30081/TCP/i (0)" and r[1].endswith("(0) [NodePort, Local, two-scopes]")
               for r in rows)
    # columns line up as Go's tabwriter pads them (widest cell + 3)
    width = max(len(r[0]) for r in rows) + 3
    assert all(line[width - 3:width] == "   " for line in table[1:])

    services = ebpf.service_list(lb).splitlines()
    assert services[0].split() == ["ID", "Frontend", "Service", "Type", "Backend"]
    line = next(l for l in services if f"{web.cluster_ip}:80/TCP" in l)
    assert re.split(r"\s{3,}", line)[:3] == [str(rev), f"{web.cluster_ip}:80/TCP", "ClusterIP"]
    assert line.rstrip().endswith("(active)") and "1 => " in line

    out = run_podnet("render", "bpf-lb", "--node", "k8s-guide-worker", "--proxy-mode", "ebpf", check=True).stdout
    assert out.splitlines()[0].startswith("SERVICE ADDRESS")
    assert f"{web.cluster_ip}:80/TCP (0)" in out
    # a node without the agent has no maps to print
    out = run_podnet("render", "cilium-svc", "--node", "k8s-guide-worker", check=True).stdout
    assert out.strip() == ""


# ---------------------------------------------------------------------------
# the packet's life
# ---------------------------------------------------------------------------

def test_cli_trace_first_packet_already_addressed_to_the_pod():
    """`podnet trace --proxy-mode ebpf`: connect4 picks the backend, so no packet on the
    wire carries the ClusterIP, and no node translates it; getpeername shows it again."""
    proc = run_podnet("trace", "--proxy-mode", "ebpf", "--from", "pod/net-tshoot-4lgv2", "--to", "svc/web:80",
                      "-o", "json", check=True)
    data = json.loads(proc.stdout)
    cluster = Cluster.load([GUIDE_LAB])
    vip = str(cluster.service("web").cluster_ip)
    pods = {p.pod_ip for p in cluster.pods if p.name.startswith("web-")}
    assert len(data["outcomes"]) == 2
    reached = set()
    for outcome in data["outcomes"]:
        hops = outcome["forward"]["hops"]
        first = hops[0]
        assert first["stage"] == "socket-lb" and "cgroup/connect4" in first["text"]
        assert first["node"] == "k8s-guide-worker" and first["netns"].startswith("cni-")
        backend = first["packet"].split(" -> ")[1].split(":")[0]
        assert ipaddress.ip_address(backend) in pods
        reached.add(ipaddress.ip_address(backend))
        on_wire = [h for h in hops[1:] if h["packet"]]
        assert on_wire and all(f" -> {vip}:" not in h["packet"] for h in on_wire)
        assert not any(h["stage"] in ("nat", "ipvs", "tc-ingress") for h in hops)
        assert not any("DNAT" in h["text"] for h in hops[1:])
        assert outcome["forward"]["result"] == "delivered"
        reply = outcome["reply"]
        assert reply["result"] == "delivered"
        rev = [h for h in reply["hops"] if h["stage"] == "socket-lb"]
        assert len(rev) == 1 and "getpeername4" in rev[0]["text"] and f"as {vip}:80" in rev[0]["text"]
        assert reply["reason"].endswith(f"from {vip}:80 as the client expects")
    assert reached == pods
    # the same trace in iptables mode translates on the node: the difference the test is about
    proc = run_podnet("trace", "--from", "pod/net-tshoot-4lgv2", "--to", "svc/web:80", "-o", "json", check=True)
    hops = json.loads(proc.stdout)["outcomes"][0]["forward"]["hops"]
    assert any(h["stage"] == "nat" and "DNAT" in h["text"] for h in hops)


def test_host_and_udp_use_the_socket_hooks(tmp_path):
    dp = guide_lab(tmp_path)
    # the node's own processes: the programs hang off the root cgroup
    result = walk(dp, "node/k8s-guide-worker2", "svc/web:80", seed=1)
    hops = result.branches[0].forward.hops
    assert hops[0].stage == "socket-lb" and hops[0].ns == "k8s-guide-worker2"
    assert result.branches[0].reply.outcome.delivered
    # DNS over UDP: sendmsg4 on the way out, recvmsg4 for the answer
    dns = dp.cluster.service("kube-dns")
    result = walk(dp, "pod/net-tshoot-4lgv2", f"{dns.cluster_ip}:53/udp", "udp", seed=2)
    branch = result.branches[0]
    assert "cgroup/sendmsg4" in branch.forward.hops[0].text
    assert branch.forward.outcome.delivered
    back = [h for h in branch.reply.hops if h.stage == "socket-lb"]
    assert back and "cgroup/recvmsg4" in back[0].text and f"{dns.cluster_ip}:53" in back[0].text


def test_service_without_backends_fails_connect(tmp_path):
    dp = guide_lab(tmp_path)
    result = walk(dp, "pod/net-tshoot-4lgv2", "svc/nobody:80")
    out = result.branches[0].forward
    assert out.outcome.result == "rejected" and "EHOSTUNREACH" in out.outcome.reason
    assert len(out.hops) == 2 and out.hops[0].stage == "socket-lb"     # nothing left the pod


def test_nodeport_from_outside_at_tc_with_snat(tmp_path):
    """externalTrafficPolicy Cluster: bpf_host DNATs at the NIC, and SNATs to the node when
    the backend is elsewhere (the extra hop); the answer comes back the same way."""
    dp = guide_lab(tmp_path)
    cp = node_ip(dp, "k8s-guide-control-plane")
    result = walk(dp, "ip/198.51.100.7", f"{cp}:30080")
    assert len(result.branches) == 2
    for branch in result.branches:
        fwd = branch.forward
        tc = [h for h in fwd.hops if h.stage == "tc-ingress"]
        assert len(tc) == 1 and tc[0].node == "k8s-guide-control-plane" and tc[0].iface == "eth0"
        assert "nodeport_lb4" in tc[0].text and "SNAT" in tc[0].text
        assert not any(h.stage == "PREROUTING" and h.node == "k8s-guide-control-plane" for h in fwd.hops)
        assert fwd.outcome.delivered and fwd.outcome.node != "k8s-guide-control-plane"
        assert fwd.outcome.packet.src == cp                   # the pod sees the node, not the client
        reply = branch.reply.outcome
        assert reply.delivered and reply.packet.src == cp and reply.packet.sport == 30080
        assert reply.packet.dst == ip("198.51.100.7")
        assert any("un-DNAT (eBPF NAT of service" in h.text for h in branch.reply.hops)


def test_load_balancer_ip_from_outside_at_tc(tmp_path):
    dp = guide_lab(tmp_path)
    svc = dp.cluster.service("web-lb")
    vip = svc.lb_ips[0]
    result = walk(dp, "ip/198.51.100.7", "lb/web-lb:80")
    assert len(result.branches) == 2
    for branch in result.branches:
        tc = [h for h in branch.forward.hops if h.stage == "tc-ingress"]
        assert len(tc) == 1 and f"{vip}:80/TCP (0)" in tc[0].text and "[LoadBalancer]" in tc[0].text
        assert branch.forward.outcome.delivered
        reply = branch.reply.outcome
        assert reply.delivered and (reply.packet.src, reply.packet.sport) == (vip, 80)
    # from inside the cluster the socket hook takes the VIP: no packet carries it
    branch = walk(dp, "pod/net-tshoot-4lgv2", "lb/web-lb:80", seed=1).branches[0]
    assert branch.forward.hops[0].stage == "socket-lb" and "[LoadBalancer]" in branch.forward.hops[0].text
    assert all(f"-> {vip}:" not in h.packet for h in branch.forward.hops[1:] if h.packet)


def test_external_traffic_policy_local_keeps_client_ip_and_drops_without_endpoint(tmp_path):
    dp = guide_lab(tmp_path)
    worker = node_ip(dp, "k8s-guide-worker")
    result = walk(dp, "ip/198.51.100.7", f"{worker}:30081")
    assert len(result.branches) == 1                     # only the local backend
    fwd = result.branches[0].forward
    assert fwd.outcome.delivered and fwd.outcome.node == "k8s-guide-worker"
    assert fwd.outcome.packet.src == ip("198.51.100.7")  # client IP kept
    assert fwd.outcome.packet.dst == web_pods(dp)["k8s-guide-worker"]
    assert "client address 198.51.100.7 is kept" in next(h.text for h in fwd.hops if h.stage == "tc-ingress")
    assert result.branches[0].reply.outcome.delivered
    cp = node_ip(dp, "k8s-guide-control-plane")
    result = walk(dp, "ip/198.51.100.7", f"{cp}:30081")
    out = result.branches[0].forward.outcome
    assert out.result == "dropped" and "DROP_NO_SERVICE" in out.reason and out.node == "k8s-guide-control-plane"
    # from inside the cluster the same NodePort uses the internal scope: every backend
    result = walk(dp, "pod/net-tshoot-4s4gm", f"{cp}:30081")
    assert len(result.branches) == 2 and all(b.forward.outcome.delivered for b in result.branches)
    assert all("/i (0)" in b.forward.hops[0].text for b in result.branches)


def test_pod_to_another_nodes_nodeport_translated_at_the_socket(tmp_path):
    dp = guide_lab(tmp_path)
    w2 = node_ip(dp, "k8s-guide-worker2")
    result = walk(dp, "pod/net-tshoot-4lgv2", f"{w2}:30080", seed=5)
    hops = result.branches[0].forward.hops
    assert hops[0].stage == "socket-lb" and "wildcard lookup" in hops[0].text
    assert "0.0.0.0:30080/TCP (0)" in hops[0].text
    assert not any(h.stage == "tc-ingress" for h in hops)
    assert result.branches[0].reply.outcome.delivered


def test_node_without_the_agent_does_not_translate(tmp_path):
    config = ("apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n"
              "kubeProxy: {mode: ebpf, disabledOnNodes: [control-plane]}\n")
    dp = guide_lab(tmp_path, config=config)
    assert dp.state.netns("k8s-guide-control-plane").socket_lb is None
    assert dp.state.netns("k8s-guide-worker").socket_lb is not None
    result = walk(dp, "pod/net-tshoot-4s4gm", "svc/web:80")
    out = result.branches[0].forward
    assert not any(h.stage == "socket-lb" for h in out.hops)
    assert out.outcome.result == "dropped"
    # its NodePort is not served either: nothing listens there
    cp = node_ip(dp, "k8s-guide-control-plane")
    assert walk(dp, "ip/198.51.100.7", f"{cp}:30080").branches[0].forward.outcome.result == "rejected"


def test_the_lab_refuses_what_it_cannot_run(tmp_path):
    """The lab loads no BPF programs and runs no relaying proxy: it says so, in one line."""
    from podnet.lab.apply import Applier, LabError
    for mode, words in (("ebpf", "eBPF socket load-balancer"), ("userspace", "userspace proxy")):
        dp = guide_lab(tmp_path, mode=mode, extra="")
        with pytest.raises(LabError, match=words) as info:
            Applier(prefix="pntest-unused").check_supported(dp.state)
        assert "\n" not in str(info.value)
    Applier(prefix="pntest-unused").check_supported(guide_lab(tmp_path, mode="iptables", extra="").state)
