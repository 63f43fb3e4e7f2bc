"""kube-proxy's historical userspace mode (podnet.proxy.userspace): the proxy port, the
portal rules as upstream's pkg/proxy/userspace writes them, and the relay."""

from __future__ import annotations

import ipaddress
import re
import secrets
import subprocess

import pytest

from podnet import Cluster
from podnet.dataplane import build_dataplane
from podnet.linux.iptables_builder import IptablesBuilder
from podnet.proxy import userspace
from podnet.proxy.userspace import (CONTAINER_NODEPORT, CONTAINER_PORTAL, HOST_NODEPORT, HOST_PORTAL,
                                    NON_LOCAL_NODEPORT, save_string)

from conftest import GUIDE_LAB, have
from helpers import walk
from test_proxy_ebpf import guide_lab, node_ip, web_pods
from test_proxy_model import oracle_objects, view_of

ip = ipaddress.ip_address


def _rules(dp, node):
    return dp.state.netns(node).iptables.splitlines()


def _proxy_port(dp, node, comment):
    for line in _rules(dp, node):
        if line.startswith(f"-A {CONTAINER_PORTAL} ") and f'--comment "{comment}" ' in line:
            return int(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no portal for {comment}")


def test_portal_rules_shape(tmp_path):
    view = view_of(tmp_path, oracle_objects())
    rules = userspace.render(view)
    port = rules.proxy_ports
    # the ClusterIP: REDIRECT for the containers' side, DNAT to the node for the host's
    p1 = port["ns1/svc1:p80"]
    assert (f'-d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80" -m tcp --dport 80 '
            f"-j REDIRECT --to-ports {p1}") in rules.nat[CONTAINER_PORTAL]
    assert (f'-d 172.30.0.41/32 -p tcp -m comment --comment "ns1/svc1:p80" -m tcp --dport 80 '
            f"-j DNAT --to-destination 192.168.0.2:{p1}") in rules.nat[HOST_PORTAL]
    # an external IP: twice on the containers' side, once (to local addresses) on the host's
    p2 = port["ns2/svc2:p80"]
    svc2 = [r for r in rules.nat[CONTAINER_PORTAL] if "192.168.99.22" in r]
    assert svc2 == [
        f'-d 192.168.99.22/32 -p tcp -m comment --comment "ns2/svc2:p80" -m tcp --dport 80 '
        f"-m physdev ! --physdev-is-in -j REDIRECT --to-ports {p2}",
        f'-d 192.168.99.22/32 -p tcp -m comment --comment "ns2/svc2:p80" -m tcp --dport 80 '
        f"-m addrtype --dst-type LOCAL -j REDIRECT --to-ports {p2}"]
    assert [r for r in rules.nat[HOST_PORTAL] if "192.168.99.22" in r] == [
        f'-d 192.168.99.22/32 -p tcp -m comment --comment "ns2/svc2:p80" -m tcp --dport 80 '
        f"-m addrtype --dst-type LOCAL -j DNAT --to-destination 192.168.0.2:{p2}"]
    # a LoadBalancer ingress IP is a portal like the ClusterIP
    assert any(r.startswith("-d 1.2.3.4/32 ") and r.endswith(f"REDIRECT --to-ports {p2}")
               for r in rules.nat[CONTAINER_PORTAL])
    # NodePorts: no address (the jump has --dst-type LOCAL); the proxy port accepted in filter INPUT
    p3 = port["ns3/svc3:p80"]
    assert (f'-p tcp -m comment --comment "ns3/svc3:p80" -m tcp --dport 3003 -j REDIRECT --to-ports {p3}'
            in rules.nat[CONTAINER_NODEPORT])
    assert (f'-p tcp -m comment --comment "ns3/svc3:p80" -m tcp --dport 3003 -j DNAT --to-destination '
            f"192.168.0.2:{p3}" in rules.nat[HOST_NODEPORT])
    assert (f'-p tcp -m comment --comment "ns3/svc3:p80" -m tcp --dport {p3} -m state --state NEW -j ACCEPT'
            in rules.filter[NON_LOCAL_NODEPORT])
    # one proxy port per Service port, all different, in the ephemeral range, stable
    assert len(set(port.values())) == len(port) == len(view.services)
    assert all(32768 <= p <= 60999 for p in port.values())
    assert userspace.render(view).proxy_ports == port
    # the proxy sockets: bound to any address, relaying to the ready endpoints
    by_port = {l.port: l for l in rules.listeners}
    assert by_port[port["ns4/svc4:p80"]].relay_to == [(ip("10.180.0.4"), 80), (ip("10.180.0.5"), 80)]
    assert by_port[p1].ip == ip("0.0.0.0") and by_port[p1].relays
    assert by_port[port["ns6/svc6:p80"]].relay_to == []          # no endpoints
    # bound to one address instead, the containers' side DNATs to it
    bound = userspace.render(view, listen_ip="192.168.0.2")
    assert all("-j DNAT --to-destination 192.168.0.2:" in r for r in bound.nat[CONTAINER_PORTAL])


def test_jumps_and_iptables_save_quoting():
    assert save_string("default/web") == '"default/web"'
    assert save_string("plain-name_1") == "plain-name_1"
    b = IptablesBuilder()
    userspace.UserspaceRules().apply(b)
    b.jump("nat", "PREROUTING", "-j OTHER")            # another component's rule, appended later
    text = b.render()
    pre = [l for l in text.splitlines() if l.startswith("-A PREROUTING")]
    assert pre == ['-A PREROUTING -m comment --comment "handle ClusterIPs; NOTE: this must be before the '
                   'NodePort rules" -j KUBE-PORTALS-CONTAINER',
                   '-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment "handle service NodePorts; '
                   'NOTE: this must be the last rule in the chain" -j KUBE-NODEPORT-CONTAINER',
                   "-A PREROUTING -j OTHER"]
    assert '-A INPUT -m comment --comment "Ensure that non-local NodePort traffic can flow" ' \
           '-j KUBE-NODEPORT-NON-LOCAL' in text


def test_pod_to_cluster_ip_through_the_proxy_port(tmp_path):
    dp = guide_lab(tmp_path, mode="userspace")
    port = _proxy_port(dp, "k8s-guide-worker", "default/web")
    gateway = ip("10.244.1.1")          # kindnet's address on the pod's host-side veth
    result = walk(dp, "pod/net-tshoot-4lgv2", "svc/web:80")
    assert len(result.branches) == 2
    reached = set()
    vip = dp.cluster.service("web").cluster_ip
    for branch in result.branches:
        hops = branch.forward.hops
        redirect = next(h for h in hops if h.stage == "nat")
        assert redirect.node == "k8s-guide-worker"
        assert redirect.text == f"REDIRECT: destination {vip}:80 -> {gateway}:{port}"
        assert any(s.chain == CONTAINER_PORTAL for h in hops for s in h.steps)
        relay = next(h for h in hops if h.stage == "userspace")
        assert f"accepted the connection on {gateway}:{port}" in relay.text
        # the proxy's own connection: from the node (the address its route picks) to a pod
        out = branch.forward.outcome
        local = out.node == "k8s-guide-worker"
        assert out.delivered and out.packet.dport == 80
        assert out.packet.src == (gateway if local else node_ip(dp, "k8s-guide-worker"))
        reached.add(out.packet.dst)
        # the answer goes back through the proxy, which relays it on the client's connection
        reply = branch.reply
        assert any(h.stage == "userspace" and "relays the answer" in h.text for h in reply.hops)
        assert reply.outcome.delivered
        assert reply.outcome.reason.endswith(f"from {vip}:80 as the client expects")
    assert reached == set(web_pods(dp).values())


def test_node_and_nodeport_through_the_proxy_port(tmp_path):
    dp = guide_lab(tmp_path, mode="userspace")
    worker = node_ip(dp, "k8s-guide-worker")
    port = _proxy_port(dp, "k8s-guide-worker", "default/web")
    # from the node itself: KUBE-PORTALS-HOST DNATs to the node's address
    branch = walk(dp, "node/k8s-guide-worker", "svc/web:80", seed=3).branches[0]
    dnat = next(h for h in branch.forward.hops if h.stage == "nat")
    assert dnat.text.endswith(f"-> {worker}:{port}")
    assert any(s.chain == HOST_PORTAL for h in branch.forward.hops for s in h.steps)
    assert branch.forward.outcome.delivered and branch.reply.outcome.delivered
    # a NodePort from outside: KUBE-NODEPORT-CONTAINER, accepted by KUBE-NODEPORT-NON-LOCAL
    np_port = _proxy_port(dp, "k8s-guide-worker", "default/web-np")
    result = walk(dp, "ip/198.51.100.7", f"{worker}:30080")
    assert len(result.branches) == 2
    for branch in result.branches:
        hops = branch.forward.hops
        chains = {s.chain for h in hops for s in h.steps}
        assert {CONTAINER_NODEPORT, NON_LOCAL_NODEPORT} <= chains
        assert any(h.stage == "nat" and h.text.endswith(f"-> {worker}:{np_port}") for h in hops)
        out = branch.forward.outcome
        assert out.delivered and out.packet.sport != 40000        # the proxy's own connection
        assert out.packet.src in (worker, ip("10.244.1.1"))
        assert branch.reply.outcome.delivered
        assert branch.reply.outcome.packet.src == worker and branch.reply.outcome.packet.sport == 30080


def test_service_without_endpoints_closes_the_connection(tmp_path):
    dp = guide_lab(tmp_path, mode="userspace")
    out = walk(dp, "pod/net-tshoot-4lgv2", "svc/nobody:80").branches[0].forward.outcome
    assert out.result == "rejected" and "no backend" in out.reason
    assert out.listener is not None and out.listener.relays


@pytest.mark.netns
def test_iptables_restore_and_save_round_trip(tmp_path):
    """The rules are written as the kernel's iptables-save prints them back."""
    if not have("iptables-restore"):
        pytest.skip("needs iptables")
    view = view_of(tmp_path, oracle_objects())
    b = IptablesBuilder()
    userspace.render(view).apply(b)
    text = b.render()
    ns = f"pntest-us-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore"], input=text,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        back = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True, text=True,
                              check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)

    def rules(t):
        return [l for l in t.splitlines() if l.startswith("-A ")]
    assert sorted(rules(back)) == sorted(rules(text))


def test_calico_pods_cannot_use_the_proxy_port():
    """REDIRECT sends a pod's packet to the address of the interface it came in on; calico's
    cali* veths have none, so the kernel drops it (nf_nat_redirect) instead of relaying it."""
    dp = build_dataplane(Cluster.load([GUIDE_LAB], cni="calico", proxy_mode="userspace"))
    [branch] = walk(dp, "pod/net-tshoot-4lgv2", "svc/web:80").branches
    out = branch.forward.outcome
    assert out.result == "dropped" and out.node == "k8s-guide-worker"
    assert re.fullmatch(r"REDIRECT: cali[0-9a-f]{11} has no IPv4 address to redirect to \(the kernel drops the packet\)",
                        out.reason), out.reason
