"""kube-proxy's IPVS mode (podnet.proxy.ipvs) and IPVS in the simulator (podnet.sim.ipvs):
the guide's IPVS chapter (tests/data/reference/guide/services-clusterIP-dataplane-IPVS.md)
for the guide's lab, upstream's ipsets and rules, the schedulers, and packets' lives through
them: pod -> ClusterIP, node -> ClusterIP, NodePort from outside, externalTrafficPolicy
Local, hairpin, the 0.0.0.0-listener caveat, and the way back."""

from __future__ import annotations

import ipaddress
import re
import secrets
import subprocess

import pytest

from podnet import Cluster
from podnet.dataplane import build_dataplane
from podnet.linux.ipset import IpsetStore
from podnet.linux.netfilter import Packet
from podnet.linux.routing import route_get
from podnet.linux.state import IpvsRealServer, IpvsService
from podnet.proxy import ipvs
from podnet.proxy.model import EndpointInfo, ProxyView
from podnet.sim import ipvs as sched

from conftest import GUIDE_LAB, REFERENCE, have, is_root, run_podnet
from helpers import NODEPORTS as GUIDE_NODEPORTS, WORKER, WORKER2, walk
from test_proxy_model import endpoint, node, oracle_objects, service, slice_, view_of

ip = ipaddress.ip_address
CHAPTER = REFERENCE / "guide" / "services-clusterIP-dataplane-IPVS.md"

NODEPORTS = GUIDE_NODEPORTS + """---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: default}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"""

LOADBALANCER = """
apiVersion: v1
kind: Service
metadata: {name: web-lb, namespace: default}
spec:
  type: LoadBalancer
  selector: {app: web}
  externalIPs: [192.0.2.10]
  loadBalancerSourceRanges: [198.51.100.0/24]
  ports: [{port: 80, nodePort: 30090}]
status:
  loadBalancer:
    ingress: [{ip: 172.18.255.200}]
"""


def guide_lab(tmp_path, extra: str = NODEPORTS, kube_proxy: str = ""):
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = [GUIDE_LAB]
    if extra:
        (tmp_path / "extra.yaml").write_text(extra)
        paths.append(tmp_path / "extra.yaml")
    if kube_proxy:
        (tmp_path / "podnet.yaml").write_text("apiVersion: podnet.dev/v1alpha1\nkind: PodnetConfig\n"
                                              f"kubeProxy: {{mode: ipvs, {kube_proxy}}}\n")
        paths.append(tmp_path / "podnet.yaml")
    return build_dataplane(Cluster.load(paths, proxy_mode="ipvs"))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    return guide_lab(tmp_path_factory.mktemp("ipvs"))


def pod_named(dp, prefix, node=None):
    return next(p for p in sorted(dp.cluster.pods, key=lambda p: p.name)
                if p.name.startswith(prefix) and (node is None or p.node_name == node))


def web_ips(dp) -> dict[str, str]:
    return {p.node_name: str(p.pod_ip) for p in dp.cluster.pods if p.name.startswith("web-")}


def delivered_to(result) -> set[str]:
    return {str(b.forward.outcome.packet.dst) for b in result.branches if b.forward.outcome.result == "delivered"}


def ipvs_hops(branch) -> list[str]:
    return [h.text for h in branch.forward.hops if h.stage == "ipvs"]


def steps(branch, leg="forward") -> list[str]:
    hops = getattr(branch, leg).hops
    return [s.text for h in hops for s in h.steps if s.index]


def nat_hops(branch, leg="forward") -> list[str]:
    return [h.text for h in getattr(branch, leg).hops if h.stage == "nat"]


# ---------------------------------------------------------------------------- the chapter's shape

def chapter_block(command: str) -> list[str]:
    """The lines the chapter shows after `$ COMMAND`, whitespace collapsed."""
    text = CHAPTER.read_text()
    start = text.index(f"$ {command}\n") + len(command) + 3
    end = text.index("{{< / highlight >}}", start)
    return [" ".join(line.split()) for line in text[start:end].splitlines() if line.strip()]


def parse_ipvsadm(lines: list[str]) -> dict[tuple, list[list[str]]]:
    """(proto, vip:port, scheduler) -> the real server lines' fields."""
    out, current = {}, None
    for line in lines[3:]:
        fields = line.split()
        if fields[0] == "->":
            out[current].append(fields[1:])
        else:
            current = tuple(fields)
            out[current] = []
    return out


def test_render_ipvs_has_the_chapter_shape():
    proc = run_podnet("render", "ipvs", "--proxy-mode", "ipvs", "--node", WORKER, check=True)
    ours = [" ".join(line.split()) for line in proc.stdout.splitlines()]
    theirs = chapter_block("ipv")
    assert ours[:3] == theirs[:3]           # the banner and the two header lines
    ours_vs, theirs_vs = parse_ipvsadm(ours), parse_ipvsadm(theirs)
    dp = build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="ipvs"))
    web = str(dp.cluster.service("web").cluster_ip)
    # kubernetes, kube-dns (same ClusterIPs in both labs) and web (the chapter's 10.96.119.228)
    for mine, guide in ((("TCP", "10.96.0.1:443", "rr"),) * 2, (("TCP", "10.96.0.10:53", "rr"),) * 2,
                        (("TCP", "10.96.0.10:9153", "rr"),) * 2, (("UDP", "10.96.0.10:53", "rr"),) * 2,
                        (("TCP", f"{web}:80", "rr"), ("TCP", "10.96.119.228:80", "rr"))):
        assert mine in ours_vs and guide in theirs_vs
        reals, theirs_reals = ours_vs[mine], theirs_vs[guide]
        assert len(reals) == len(theirs_reals)
        # `-> IP:PORT Masq 1 0 0`: the same target ports, masquerading (NAT), weight 1
        assert [(r[0].rsplit(":", 1)[1], r[1], r[2]) for r in reals] == \
            [(r[0].rsplit(":", 1)[1], r[1], r[2]) for r in theirs_reals]
    # the web Service's real servers are its two pods, one per worker
    assert sorted(r[0] for r in ours_vs[("TCP", f"{web}:80", "rr")]) == \
        sorted(f"{a}:80" for a in web_ips(dp).values())
    assert ours_vs[("TCP", "10.96.0.1:443", "rr")] == [["172.18.0.2:6443", "Masq", "1", "0", "0"]]


def chapter_members(set_name: str) -> tuple[str, list[str]]:
    lines = chapter_block(f"ips {set_name}")
    kind = next(line.split(": ", 1)[1] for line in lines if line.startswith("Type:"))
    return kind, lines[lines.index("Members:") + 1:]


def test_ipsets_have_the_chapter_shape():
    proc = run_podnet("render", "ipset", "--proxy-mode", "ipvs", "--node", WORKER, check=True)
    store = IpsetStore.parse(proc.stdout, source="render ipset")
    dp = build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="ipvs"))

    kind, theirs = chapter_members("KUBE-CLUSTER-IP")
    cluster_ip = store.get("KUBE-CLUSTER-IP")
    assert cluster_ip.type == kind == "hash:ip,port"
    ours = {m.entry for m in cluster_ip.members.values()}
    # every Service port's ClusterIP, as ipset writes it: IP,proto:port
    assert ours == {f"{s.cluster_ip},{p.protocol.lower()}:{p.port}" for s in dp.cluster.services
                    if s.cluster_ips and not s.headless for p in s.ports}
    assert {m for m in theirs if m.startswith(("10.96.0.1,", "10.96.0.10,"))} <= ours
    assert all(re.fullmatch(r"[\d.]+,(tcp|udp):\d+", m) for m in ours | set(theirs))

    kind, theirs = chapter_members("KUBE-LOOP-BACK")
    loop = store.get("KUBE-LOOP-BACK")
    assert loop.type == kind == "hash:ip,port,ip"
    # the endpoints on this node, with themselves as the source: a pod reaching itself
    assert [m.entry for m in loop.members.values()] == [f"{web_ips(dp)[WORKER]},tcp:80,{web_ips(dp)[WORKER]}"]
    for member in theirs:
        addr, port, again = member.split(",")
        assert addr == again and port.startswith("tcp:")


def test_iptables_rules_have_the_chapter_shape(lab):
    save = lab.node_netns(WORKER).iptables
    rules = {}
    for line in save.splitlines():
        if line.startswith("-A "):
            rules.setdefault(line.split()[1], []).append(line)
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in rules["PREROUTING"]
    assert '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in rules["OUTPUT"]
    # the chapter's KUBE-SERVICES: mark off-cluster sources, NodePorts on local addresses, accept the
    # rest of the ClusterIP traffic; now with localhost dismissed first (and NodePort sets, LB rules)
    services = [r for r in rules["KUBE-SERVICES"] if "KUBE-NODE-PORT" in r or "KUBE-CLUSTER-IP" in r]
    assert services == [
        '-A KUBE-SERVICES -m comment --comment "Kubernetes service cluster ip + port for masquerade purpose" '
        "-m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
        "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT",
        "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"]
    assert rules["KUBE-SERVICES"][0] == "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN"
    assert rules["KUBE-POSTROUTING"] == [
        '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving '
        'hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE',
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE']
    assert rules["KUBE-MARK-MASQ"] == ["-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"]
    # NodePorts: marked for masquerade unless externalTrafficPolicy Local
    assert rules["KUBE-NODE-PORT"][:2] == [
        '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with '
        'externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN',
        '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade purpose" '
        "-m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ"]
    # the filter chains hook in as upstream prepends them
    assert [r.split("-j ")[-1] for r in rules["INPUT"]][:3] == ["KUBE-IPVS-FILTER", "KUBE-PROXY-FIREWALL",
                                                              "KUBE-NODE-PORT"]
    assert rules["KUBE-IPVS-FILTER"][-1] == ("-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW "
                                             "-m set --match-set KUBE-IPVS-IPS dst -j REJECT")
    assert "-A KUBE-SERVICES -j KUBE-SERVICES" not in save and "KUBE-SVC-" not in save


def test_kube_ipvs0_holds_every_service_address(lab):
    ns = lab.node_netns(WORKER)
    dummy = ns.links["kube-ipvs0"]
    assert dummy.kind == "dummy" and not dummy.up            # `state DOWN`, as in the chapter
    vips = {str(s.cluster_ip) for s in lab.cluster.services if s.cluster_ips and not s.headless}
    assert {str(a.interface) for a in dummy.addresses} == {f"{v}/32" for v in vips}
    # ... which makes them local addresses of the node, though the device is down
    for v in vips:
        r = route_get(ns, v)
        assert (r.type, r.route.dev) == ("local", "kube-ipvs0")
    store = IpsetStore.parse(ns.ipsets)
    assert {m.entry for m in store.get("KUBE-IPVS-IPS").members.values()} == vips
    for key, value in (("net.ipv4.vs.conntrack", "1"), ("net.ipv4.vs.expire_nodest_conn", "1"),
                       ("net.ipv4.vs.expire_quiescent_template", "1"), ("net.ipv4.ip_forward", "1")):
        assert ns.sysctls[key] == value
    assert "net.ipv4.vs.conn_reuse_mode" not in ns.sysctls    # left alone on kernels >= 5.9
    # the pods' own namespaces have none of it
    assert not lab.netns_of_pod(pod_named(lab, "web-")).ipvs


def test_nodeport_virtual_servers_on_every_node_address(lab):
    ns = lab.node_netns(WORKER)
    addresses = {str(s.vip) for s in ns.ipvs if s.port == 30080}
    # the node IP and kindnet's gateway address on the veths (the chapter's 192.168.224.4 and
    # 10.244.2.1); not 127.0.0.1 any more: upstream no longer makes NodePorts on loopback
    assert addresses == {str(lab.cluster.node(WORKER).internal_ip), "10.244.1.1"}
    local = [s for s in ns.ipvs if s.port == 30081]
    assert {str(r.ip) for s in local for r in s.reals} == {web_ips(lab)[WORKER]}
    cp = lab.node_netns("k8s-guide-control-plane")
    # no local endpoint there: the cluster's (kubernetes#97081)
    assert {str(r.ip) for s in cp.ipvs if s.port == 30081 for r in s.reals} == set(web_ips(lab).values())
    nobody = lab.cluster.service("nobody")
    assert [s.reals for s in ns.ipvs if s.vip == nobody.cluster_ip] == [[]]


# ---------------------------------------------------------------------------- the packet walks

def test_pod_to_cluster_ip_branches_over_the_real_servers(lab):
    tshoot = pod_named(lab, "net-tshoot", WORKER)
    result = walk(lab, f"pod/{tshoot.name}", "svc/web:80")
    assert len(result.branches) == 2 and all(abs(b.probability - 0.5) < 1e-9 for b in result.branches)
    assert delivered_to(result) == set(web_ips(lab).values())
    vip = str(lab.cluster.service("web").cluster_ip)
    for b in result.branches:
        assert b.forward.outcome.packet.src == tshoot.pod_ip          # pod -> ClusterIP: no SNAT
        text = ipvs_hops(b)
        assert len(text) == 1 and text[0].startswith(f"IPVS (LOCAL_IN) TCP {vip}:80 rr: next in turn -> Masq ")
        # the chapter's path: KUBE-SERVICES accepts via the set, the route is local, IPVS DNATs
        assert "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT" in steps(b)
        assert any(h.stage == "route" and h.text.startswith(f"local {vip}") for h in b.forward.hops)
        stages = [h.stage for h in b.forward.hops if h.ns == WORKER]
        assert stages.index("INPUT") < stages.index("ipvs")
        # the reply is un-NATed by conntrack: from the ClusterIP, as the client expects
        assert b.reply.outcome.result == "delivered"
        assert str(b.reply.outcome.packet.src) == vip


def test_fwmark_and_port_zero_services_are_found_as_ip_vs_service_find_does(tmp_path):
    """ip_vs_service_find: the fwmark table first (the packet's mark, set here by a mangle
    rule), then <protocol, address, port>, then the address's port-0 catch-all; a real server
    without a port keeps the packet's destination port, and -m ipvs sees the packet's own
    destination as the virtual address."""
    dp = guide_lab(tmp_path)
    tshoot = pod_named(dp, "net-tshoot", WORKER)
    node = dp.state.netns(WORKER)
    vip = dp.cluster.service("web").cluster_ip
    far = ipaddress.ip_address(web_ips(dp)[WORKER2])
    node.ipvs.append(IpvsService("TCP", ipaddress.ip_address("0.0.0.0"), 0, "rr", fwmark=100,
                                 reals=[IpvsRealServer(far, 0)]))
    # the port-0 service on the node's own address (on the ClusterIP, KUBE-IPVS-FILTER would
    # reject ports that are not a Service's before IPVS sees them)
    node_ip = dp.cluster.node(WORKER).internal_ip
    node.ipvs.append(IpvsService("TCP", node_ip, 0, "rr", reals=[IpvsRealServer(far, 80)]))
    node.invalidate()
    # unmarked: the <TCP, vip, 80> service, as before
    assert len(walk(dp, f"pod/{tshoot.name}", "svc/web:80").branches) == 2
    # any other port of the address: the port-0 service, DNAT to its real server's port
    b = walk(dp, f"pod/{tshoot.name}", f"{node_ip}:8080").branches
    assert len(b) == 1 and ipvs_hops(b[0]) == [
        f"IPVS (LOCAL_IN) TCP {node_ip}:0 rr: next in turn -> Masq {far}:80 weight 1 (real server 1 of 1)"]
    assert str(b[0].forward.outcome.packet.dst) == str(far) and b[0].forward.outcome.packet.dport == 80
    # marked in mangle PREROUTING: the fwmark service wins; its portless real keeps port 80
    mangle = ("*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n"
              ":OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n"
              f"-A PREROUTING -d {vip}/32 -p tcp -m tcp --dport 80 -j MARK --set-xmark 0x64/0xffffffff\n"
              # -m ipvs on the IPVS connection: its vaddr/vport are the packet's, not 0.0.0.0:0
              f"-A OUTPUT -m ipvs --vaddr {vip}/32 --vport 80 -j MARK --set-xmark 0x65/0xffffffff\n"
              "COMMIT\n")
    node.iptables = mangle + node.iptables
    node.invalidate()
    b = walk(dp, f"pod/{tshoot.name}", "svc/web:80").branches
    assert len(b) == 1 and ipvs_hops(b[0]) == [
        f"IPVS (LOCAL_IN) FWM 100 (mark 0x64) rr: next in turn -> Masq {far}:80 weight 1 (real server 1 of 1)"]
    assert b[0].forward.outcome.result == "delivered" and b[0].forward.outcome.packet.dport == 80
    assert f"-A OUTPUT -m ipvs --vaddr {vip}/32 --vport 80 -j MARK --set-xmark 0x65/0xffffffff" in steps(b[0])
    assert b[0].reply.outcome.result == "delivered" and str(b[0].reply.outcome.packet.src) == str(vip)


def test_node_to_cluster_ip_is_masqueraded(lab):
    result = walk(lab, f"node/{WORKER}", "svc/web:80")
    vip = str(lab.cluster.service("web").cluster_ip)
    assert delivered_to(result) == set(web_ips(lab).values())
    for b in result.branches:
        first = b.forward.hops[0]
        # the ClusterIP is a local address: the kernel picks it as the source too
        assert first.text.startswith(f"local {vip} dev lo src {vip}")
        texts = steps(b)
        assert any("KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ" in t for t in texts)
        assert ipvs_hops(b)[0].startswith(f"IPVS (LOCAL_OUT) TCP {vip}:80 rr")
        assert '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" ' \
               "-j MASQUERADE" in texts
        dst = str(b.forward.outcome.packet.dst)
        # masqueraded to the egress interface's address: eth0 towards the other node, the veth's to its own pod
        expected = "10.244.1.1" if dst == web_ips(lab)[WORKER] else str(lab.cluster.node(WORKER).internal_ip)
        assert str(b.forward.outcome.packet.src) == expected
        assert b.reply.outcome.result == "delivered"


def test_nodeport_from_outside_is_snated(lab):
    node_ip = lab.cluster.node(WORKER).internal_ip
    result = walk(lab, "ip/198.51.100.7", f"{node_ip}:30080")
    assert delivered_to(result) == set(web_ips(lab).values())
    for b in result.branches:
        assert '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port for masquerade ' \
               'purpose" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ' in steps(b)
        assert ipvs_hops(b)[0].startswith(f"IPVS (LOCAL_IN) TCP {node_ip}:30080 rr")
        assert str(b.forward.outcome.packet.src) != "198.51.100.7"        # the pod sees the node
        assert b.reply.outcome.result == "delivered"
        assert str(b.reply.outcome.packet.src) == str(node_ip)            # from the NodePort again


def test_external_traffic_policy_local(lab):
    worker_ip = lab.cluster.node(WORKER).internal_ip
    result = walk(lab, "ip/198.51.100.7", f"{worker_ip}:30081")
    (b,) = result.branches
    # a local endpoint: the NodePort-LOCAL set returns before the masquerade mark, the client IP is kept
    assert '-A KUBE-NODE-PORT -p tcp -m comment --comment "Kubernetes nodeport TCP port with ' \
           'externalTrafficPolicy=local" -m set --match-set KUBE-NODE-PORT-LOCAL-TCP dst -j RETURN' in steps(b)
    assert str(b.forward.outcome.packet.dst) == web_ips(lab)[WORKER]
    assert str(b.forward.outcome.packet.src) == "198.51.100.7"
    assert b.reply.outcome.result == "delivered"
    # a node without one forwards to the cluster's endpoints unmasqueraded: the pod's answer goes
    # back without the NodePort's address, and the client drops it (kubernetes#97081)
    cp_ip = lab.cluster.node("k8s-guide-control-plane").internal_ip
    result = walk(lab, "ip/198.51.100.7", f"{cp_ip}:30081")
    assert delivered_to(result) == set(web_ips(lab).values())
    for b in result.branches:
        assert str(b.forward.outcome.packet.src) == "198.51.100.7"
        assert b.reply.outcome.result == "dropped"
        assert "does not match the client's connection" in b.reply.outcome.reason


def test_hairpin_through_kube_loop_back(lab):
    web = pod_named(lab, "web-", WORKER)
    result = walk(lab, f"pod/{web.name}", "svc/web:80")
    to_self = next(b for b in result.branches if b.forward.outcome.packet.dst == web.pod_ip)
    assert '-A KUBE-POSTROUTING -m comment --comment "Kubernetes endpoints dst ip:port, source ip for solving ' \
           'hairpin purpose" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE' in steps(to_self)
    # masqueraded to the node's side of the veth, so the answer comes back through the node
    assert str(to_self.forward.outcome.packet.src) == "10.244.1.1"
    assert to_self.reply.outcome.result == "delivered"
    assert str(to_self.reply.outcome.packet.src) == str(lab.cluster.service("web").cluster_ip)
    other = next(b for b in result.branches if b is not to_self)
    assert not any("KUBE-LOOP-BACK" in s for s in steps(other))
    assert other.forward.outcome.packet.src == web.pod_ip


def test_host_listeners_on_every_cluster_ip(tmp_path):
    """The chapter's caveat (kubernetes#72236): ClusterIPs are local addresses of the node, so
    a node's listener on 0.0.0.0 answers on every one of them, on ports no Service has."""
    old = guide_lab(tmp_path / "old", kube_proxy="ipvsHostFilter: false")
    tshoot = pod_named(old, "net-tshoot", WORKER)
    vips = [str(s.cluster_ip) for s in old.cluster.services if s.cluster_ips and not s.headless]
    assert len(vips) >= 5
    for vip in vips:
        for port, owner in ((22, "sshd"), (10250, "kubelet")):
            (b,) = walk(old, f"pod/{tshoot.name}", f"{vip}:{port}").branches
            assert b.forward.outcome.result == "delivered", (vip, port, b.forward.outcome.reason)
            assert b.forward.outcome.listener.owner == f"{owner} on {WORKER}"
            assert not ipvs_hops(b)                     # no virtual server: the host's socket
    assert "KUBE-IPVS-FILTER" not in old.node_netns(WORKER).iptables
    # today's kube-proxy rejects new connections to kube-ipvs0's addresses on other ports
    (b,) = walk(guide_lab(tmp_path / "new"), f"pod/{tshoot.name}", f"{vips[0]}:22").branches
    assert b.forward.outcome.result == "rejected"
    assert "KUBE-IPVS-FILTER" in b.forward.outcome.reason
    # ... and the iptables mode never had the problem: a ClusterIP is no address of the node
    plain = build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="iptables"))
    (b,) = walk(plain, f"pod/{tshoot.name}", f"{vips[0]}:22").branches
    assert b.forward.outcome.listener is None or "sshd" not in b.forward.outcome.listener.owner


def test_service_without_endpoints_is_refused(lab):
    tshoot = pod_named(lab, "net-tshoot", WORKER)
    (b,) = walk(lab, f"pod/{tshoot.name}", "svc/nobody:80").branches
    assert b.forward.outcome.result == "rejected"
    assert "ICMP port unreachable" in b.forward.outcome.reason
    assert ipvs_hops(b)[0].endswith("no real servers: no destination available")


def test_external_ip_load_balancer_and_source_ranges(tmp_path):
    dp = guide_lab(tmp_path, extra=LOADBALANCER)
    ns = dp.node_netns(WORKER)
    store = IpsetStore.parse(ns.ipsets)
    members = {name: {m.entry for m in s.members.values()} for name, s in store.sets.items()}
    assert members["KUBE-EXTERNAL-IP"] == {"192.0.2.10,tcp:80"}
    assert members["KUBE-LOAD-BALANCER"] == members["KUBE-LOAD-BALANCER-FW"] == {"172.18.255.200,tcp:80"}
    assert members["KUBE-LOAD-BALANCER-SOURCE-CIDR"] == {"172.18.255.200,tcp:80,198.51.100.0/24"}
    assert members["KUBE-LOAD-BALANCER-SOURCE-IP"] == set()      # the node is outside the ranges ...
    # ... so the node's own connections to the LB IP are refused, by matching IPVS's connection
    out_filter = "-A KUBE-IPVS-OUT-FILTER -s 172.18.255.200 -m ipvs --vaddr 172.18.255.200 --vproto tcp " \
                 "--vport 80 -j DROP"
    assert out_filter in ns.iptables
    assert {"172.18.255.200/32", "192.0.2.10/32"} <= {str(a.interface) for a in ns.links["kube-ipvs0"].addresses}
    for b in walk(dp, f"node/{WORKER}", "172.18.255.200:80").branches:
        assert b.forward.outcome.result == "dropped" and out_filter in b.forward.outcome.reason
    # a client in the source range gets in; one outside is dropped by the source-range firewall
    allowed = walk(dp, "ip/198.51.100.7", "172.18.255.200:80")
    assert delivered_to(allowed) == set(web_ips(dp).values())
    assert all(b.reply.outcome.result == "delivered" for b in allowed.branches)
    (denied,) = walk(dp, "ip/203.0.113.77", "172.18.255.200:80").branches
    assert denied.forward.outcome.result == "dropped"
    assert "KUBE-SOURCE-RANGES-FIREWALL" in denied.forward.outcome.reason
    # an external IP is local on every node too (the outside world would route it to one);
    # from a pod: marked for masquerade and balanced like the ClusterIP
    ext = walk(dp, f"pod/{pod_named(dp, 'net-tshoot', WORKER).name}", "192.0.2.10:80")
    assert delivered_to(ext) == set(web_ips(dp).values())
    for b in ext.branches:
        assert any("KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ" in t for t in steps(b))
        assert b.reply.outcome.result == "delivered"


# ---------------------------------------------------------------------------- schedulers

def test_sh_scheduler_hashes_the_source_address(tmp_path):
    dp = guide_lab(tmp_path, kube_proxy="ipvsScheduler: sh")
    vip = str(dp.cluster.service("web").cluster_ip)
    for node_name in (WORKER, "k8s-guide-worker2"):
        svc = next(s for s in dp.node_netns(node_name).ipvs if str(s.vip) == vip)
        assert svc.scheduler == "sh" and [str(r.ip) for r in svc.reals] == sorted(web_ips(dp).values())
        tshoot = pod_named(dp, "net-tshoot", node_name)
        (b,) = walk(dp, f"pod/{tshoot.name}", "svc/web:80").branches    # no branch: a hash
        # include/linux/hash.h hash_32 into 256 buckets, filled in turn from the kernel's
        # destination list (the reverse of the order added): even buckets -> the last one listed
        bucket = ((int(tshoot.pod_ip) * 0x61C88647) & 0xFFFFFFFF) >> 24
        want = svc.reals[-1] if bucket % 2 == 0 else svc.reals[0]
        assert f"hash of the source address {tshoot.pod_ip} -> bucket {bucket} of 256" in ipvs_hops(b)[0]
        assert b.forward.outcome.packet.dst == want.ip
        assert b.reply.outcome.result == "delivered"


def test_mh_scheduler_sets_the_port_flag_and_hashes_the_client(tmp_path):
    dp = guide_lab(tmp_path, kube_proxy="ipvsScheduler: mh")
    ns = dp.node_netns(WORKER)
    from podnet.linux.render import ipvsadm_ln, ipvsadm_save
    from podnet.sim.siphash import hsiphash_u32
    assert "TCP  10.96.0.1:443 mh (mh-port)" in ipvsadm_ln(ns.ipvs).splitlines()
    assert "-A -t 10.96.0.1:443 -s mh -b mh-port" in ipvsadm_save(ns.ipvs).splitlines()
    vip = str(dp.cluster.service("web").cluster_ip)
    for node_name in (WORKER, "k8s-guide-worker2"):
        svc = next(s for s in dp.node_netns(node_name).ipvs if str(s.vip) == vip)
        tshoot = pod_named(dp, "net-tshoot", node_name)
        (b,) = walk(dp, f"pod/{tshoot.name}", "svc/web:80").branches     # no branch: a hash
        # ip_vs_mh_hashkey: hsiphash of address + source port (the walk's 40000) into 4093 slots
        slot = hsiphash_u32(int(tshoot.pod_ip) + 40000, sched.MH_HASH1) % 4093
        table = sched.mh_lookup(sched._mh_dests(svc, sched.kernel_order(svc), lambda r: r.weight))
        want = svc.reals[sched.kernel_order(svc)[table[slot]]]
        assert f"Maglev hash of the source address {tshoot.pod_ip} and port 40000 -> slot {slot} of 4093" \
            in ipvs_hops(b)[0]
        assert b.forward.outcome.packet.dst == want.ip
        assert b.reply.outcome.result == "delivered"


def _svc(scheduler, weights, conns=None, flags=()):
    reals = [IpvsRealServer(ip(f"10.0.0.{i + 1}"), 80, w, active_conns=(conns or [0] * len(weights))[i])
             for i, w in enumerate(weights)]
    return IpvsService("TCP", ip("10.96.0.5"), 80, scheduler, reals=reals, sched_flags=flags)


def _options(svc):
    seen = []

    def choose(key, options):
        seen.append(options)
        return len(options) - 1
    pick = sched.schedule(svc, Packet(ip("10.244.1.2"), svc.vip, "tcp", 40000, 80), choose, "k")
    return pick, seen


def test_schedulers_choose_as_the_kernel_does():
    # rr: any usable real server may be next; weight-0 ones never are
    pick, seen = _options(_svc("rr", [1, 0, 1]))
    assert [label for label, _ in seen[0]] == ["10.0.0.3:80", "10.0.0.1:80"] and pick.index == 0
    # wrr: in proportion to the weights
    _, seen = _options(_svc("wrr", [3, 1]))
    assert dict(seen[0]) == {"10.0.0.2:80": 0.25, "10.0.0.1:80": 0.75}
    # lc: least connections, ties to the first of the kernel's list (the last added); no branch
    pick, seen = _options(_svc("lc", [1, 1, 1]))
    assert (pick.index, seen) == (2, [])
    assert _options(_svc("lc", [1, 1, 1], conns=[0, 2, 1]))[0].index == 0
    # wlc: connections per weight
    assert _options(_svc("wlc", [1, 4], conns=[1, 3]))[0].index == 1
    # nq: an idle server first
    assert _options(_svc("nq", [1, 1], conns=[0, 5]))[0].index == 0
    # sh with a weight-0 server in the table: that bucket has no destination
    svc = _svc("sh", [1, 0])
    src = next(ip(f"10.244.1.{i}") for i in range(2, 250)
               if sched.bucket_table(svc)[sched.sh_bucket(ip(f"10.244.1.{i}"))] == 1)
    pick = sched.schedule(svc, Packet(src, svc.vip, "tcp", 40000, 80), lambda k, o: 0, "k")
    assert pick.index is None and "weight 0" in pick.how
    # nothing usable at all
    assert sched.schedule(_svc("rr", [0, 0]), Packet(src, svc.vip, "tcp", 1, 80), lambda k, o: 0, "k").index is None


def test_session_affinity_is_ipvs_persistence(tmp_path):
    view = view_of(tmp_path, oracle_objects())
    rules = ipvs.render(view)
    svc5 = [s for s in rules.services if str(s.vip) in ("172.30.0.45", "5.6.7.8")]
    assert {s.persistent for s in svc5} == {10800}
    assert "TCP  172.30.0.45:80 rr persistent 10800" in rules.ipvsadm().splitlines()
    assert all(s.persistent is None for s in rules.services if str(s.vip) == "172.30.0.41")


# ---------------------------------------------------------------------------- the model's endpoints

def test_terminating_endpoints_are_quiesced_not_used(tmp_path):
    objs = [*oracle_objects()[:2],
            service("ns", "term", "172.30.0.60"),
            slice_("ns", "term", [endpoint("10.180.0.10"),
                                  endpoint("10.180.0.11", ready=False, serving=True, terminating=True)]),
            service("ns", "gone", "172.30.0.61"),
            slice_("ns", "gone", [endpoint("10.180.0.12", ready=False, serving=True, terminating=True),
                                  endpoint("10.180.0.13", ready=False, serving=False, terminating=True)])]
    rules = ipvs.render(view_of(tmp_path, objs))
    by_vip = {str(s.vip): [(str(r.ip), r.weight) for r in s.reals] for s in rules.services}
    # a ready endpoint takes the connections; the terminating one drains at weight 0
    assert by_vip["172.30.0.60"] == [("10.180.0.10", 1), ("10.180.0.11", 0)]
    # no ready endpoint: the serving terminating one is used (the model's fallback); not the
    # one that stopped serving
    assert by_vip["172.30.0.61"] == [("10.180.0.12", 1)]
    svc = next(s for s in rules.services if str(s.vip) == "172.30.0.60")
    _, seen = _options(svc)
    assert seen == []                              # one usable real server: no choice to make


def test_traffic_policies_and_topology_come_from_the_shared_model(tmp_path):
    objs = [*oracle_objects()[:2],
            service("ns", "itp", "172.30.0.70", itp="Local"),
            slice_("ns", "itp", [endpoint("10.180.0.20", node="test-node"), endpoint("10.180.0.21", node="other")]),
            node("test-node", labels={"topology.kubernetes.io/zone": "a"}),
            service("ns", "zoned", "172.30.0.71", annotations={"service.kubernetes.io/topology-mode": "Auto"}),
            slice_("ns", "zoned", [endpoint("10.180.0.30", zone="a", zone_hints=["a"]),
                                   endpoint("10.180.0.31", zone="b", zone_hints=["b"])])]
    objs.pop(1)                                    # the zoned node replaces the plain one
    view = view_of(tmp_path, objs)
    by_vip = {str(s.vip): [str(r.ip) for r in s.reals] for s in ipvs.render(view).services}
    assert by_vip["172.30.0.70"] == ["10.180.0.20"]          # internalTrafficPolicy Local
    assert by_vip["172.30.0.71"] == ["10.180.0.30"]          # this node's zone
    cat = view.categorize(next(k for k in view.services if k.name == "zoned"))
    assert by_vip["172.30.0.71"] == [e.ip for e in cat.cluster]


# ---------------------------------------------------------------------------- syncs

def test_resync_touches_only_what_changed(tmp_path):
    view = view_of(tmp_path, oracle_objects())
    proxier = ipvs.IpvsProxier()
    first = proxier.sync(view)
    assert proxier.last_sync_full
    assert sum(op.startswith("ipvsadm -A ") for op in proxier.last_ops) == len(first.services)
    # one endpoint of ns4/svc4 replaced
    spn = next(k for k in view.services if k.name == "svc4")
    endpoints = dict(view.endpoints)
    endpoints[spn] = sorted([view.endpoints[spn][0], EndpointInfo("10.180.0.9", 80, is_local=True,
                                                                  node_name="test-node")],
                            key=lambda e: e.endpoint)
    changed = ProxyView(view.node, view.family, view.services, endpoints, service_cidrs=view.service_cidrs)
    second = proxier.sync(changed)
    assert not proxier.last_sync_full
    ops = [op for op in proxier.last_ops if not op.startswith("iptables-restore")]
    assert ops == [
        "ipvsadm -a -t 172.30.0.44:80 -r 10.180.0.9:80 -m -w 1",
        "ipvsadm -d -t 172.30.0.44:80 -r 10.180.0.5:80",
        "ipvsadm -a -t 192.168.99.33:80 -r 10.180.0.9:80 -m -w 1",
        "ipvsadm -d -t 192.168.99.33:80 -r 10.180.0.5:80",
        "ipset del KUBE-LOOP-BACK 10.180.0.5,tcp:80,10.180.0.5",
        "ipset add KUBE-LOOP-BACK 10.180.0.9,tcp:80,10.180.0.9 -exist"]
    # the state is what a fresh proxier computes
    fresh = ipvs.render(changed)
    from podnet.linux.render import ipvsadm_save
    assert ipvsadm_save(second.services) == ipvsadm_save(fresh.services)
    assert (second.ipsets, second.restore, second.bind_addresses) == (fresh.ipsets, fresh.restore,
                                                                      fresh.bind_addresses)
    # a Service gone: its virtual servers and addresses are removed
    services = {k: v for k, v in changed.services.items() if k.name != "svc6"}
    proxier.sync(ProxyView(view.node, view.family, services, endpoints, service_cidrs=view.service_cidrs))
    assert "ipvsadm -D -t 172.30.0.46:80" in proxier.last_ops
    assert "ip addr del 172.30.0.46/32 dev kube-ipvs0" in proxier.last_ops


def test_ipv6_sets_and_kernel_versions(tmp_path):
    assert ipvs.ipset_name("KUBE-LOOP-BACK", 6) == "KUBE-6-LOOP-BACK"
    assert ipvs.ipset_name("KUBE-LOAD-BALANCER-SOURCE-CIDR", 6) == "KUBE-6-LOAD-BALANCER-SOURCE-CID"
    from test_proxy_model import podnet_config
    objs = [podnet_config(pod_subnet="fd00:10::/56", service_subnet="fd00:30::/112", ip_family="ipv6"),
            node(ip="2001:db8::2", pod_cidr="fd00:10::/64"),
            service("ns", "web", "fd00:30::10"),
            slice_("ns", "web", [endpoint("fd00:10::5", node="test-node")], address_type="IPv6")]
    rules = ipvs.render(view_of(tmp_path, objs, family=6))
    store = IpsetStore.parse(rules.ipsets)
    assert {m.entry for m in store.get("KUBE-6-CLUSTER-IP").members.values()} == {"fd00:30::10,tcp:80"}
    assert {m.entry for m in store.get("KUBE-6-LOOP-BACK").members.values()} == {"fd00:10::5,tcp:80,fd00:10::5"}
    assert "create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536" in rules.ipsets
    assert "-A KUBE-SERVICES -s ::1/128 -j RETURN" in rules.restore
    assert rules.bind_addresses == ["fd00:30::10"]
    assert ipvs.IpvsProxier(kernel=(5, 4)).sysctls()["net.ipv4.vs.conn_reuse_mode"] == "0"
    assert "net.ipv4.vs.conn_reuse_mode" not in ipvs.IpvsProxier(kernel=(6, 1)).sysctls()
    assert ipvs.IpvsProxier(strict_arp=True).sysctls()["net.ipv4.conf.all.arp_ignore"] == "1"


# ---------------------------------------------------------------------------- the real tools

@pytest.mark.netns
@pytest.mark.skipif(not (is_root() and have("ipset") and have("iptables-restore") and have("ip")),
                    reason="needs root, ipset, iptables-restore and ip")
def test_ipset_and_iptables_restore_accept_the_rendered_state(lab, tmp_path):
    ns_model = lab.node_netns(WORKER)
    name = f"pntest-ipvs-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        def run(argv, text=None):
            proc = subprocess.run(["ip", "netns", "exec", name, *argv], input=text, capture_output=True, text=True)
            assert proc.returncode == 0, (argv, proc.stderr)
            return proc.stdout
        run(["ipset", "restore"], ns_model.ipsets)
        run(["iptables-restore"], ns_model.iptables)
        back = IpsetStore.parse(run(["ipset", "save"]), source="kernel")
        mine = IpsetStore.parse(ns_model.ipsets)
        assert {n: {m.entry for m in s.members.values()} for n, s in back.sets.items()} == \
            {n: {m.entry for m in s.members.values()} for n, s in mine.sets.items()}
        web = web_ips(lab)[WORKER]
        run(["ipset", "test", "KUBE-LOOP-BACK", f"{web},tcp:80,{web}"])
        saved = run(["iptables-save"])
        for chain in ("KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-IPVS-FILTER", "KUBE-NODE-PORT"):
            assert sum(line.startswith(f"-A {chain} ") for line in saved.splitlines()) == \
                sum(line.startswith(f"-A {chain} ") for line in ns_model.iptables.splitlines())
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_bridged_answer_of_a_same_node_real_server_is_un_natted():
    """flannel's cni0: the web pod next to the client answers over the bridge; br_netfilter's
    conntrack NAT gives the answer the ClusterIP back as its source."""
    dp = build_dataplane(Cluster.load([GUIDE_LAB], cni="flannel", proxy_mode="ipvs"))
    tshoot = pod_named(dp, "net-tshoot", WORKER)
    result = walk(dp, f"pod/{tshoot.name}", "svc/web:80")
    near = next(b for b in result.branches if str(b.forward.outcome.packet.dst) == web_ips(dp)[WORKER])
    assert any(h.stage == "bridge" for h in near.reply.hops)
    assert near.reply.outcome.result == "delivered"
    assert str(near.reply.outcome.packet.src) == str(dp.cluster.service("web").cluster_ip)
