"""LoadBalancer Services for real: the elected node's MetalLB-style speaker answers ARP for
the LB IP on the kind network, so a client outside the cluster reaches it; with
externalTrafficPolicy Local the pod sees the client's own address."""

import socket
import threading

import pytest

from podnet.cluster import Cluster
from podnet.dataplane import build_dataplane
from podnet.lab import client
from podnet.lab.agent import arp_reply, open_arp_socket
from podnet.lab.nsutil import entered
from podnet.lab.lab import Lab

from helpers import LOAD_BALANCERS, guide_inputs, lab_name, wait_clean, walk
from netnslab import NetnsLab




def test_arp_reply_answers_requests_for_its_address_only():
    mac, asker = bytes.fromhex("020000000001"), bytes.fromhex("020000000002")
    request = (b"\xff" * 6 + asker + b"\x08\x06" + bytes.fromhex("0001080006040001") + asker
               + socket.inet_aton("172.18.0.1") + b"\0" * 6 + socket.inet_aton("172.18.255.200"))
    reply = arp_reply(request, "172.18.255.200", mac)
    assert reply[:6] == asker and reply[6:12] == mac and reply[20:22] == b"\x00\x02"
    assert reply[22:28] == mac and reply[28:32] == socket.inet_aton("172.18.255.200")
    assert reply[38:42] == socket.inet_aton("172.18.0.1")
    assert arp_reply(request, "172.18.255.201", mac) is None


@pytest.mark.netns
def test_arp_responder_waits_for_its_device():
    # the agent starts while the lab is still wiring the node: the speaker's device may
    # appear only after it (CI once failed with "bind arp ...: No such device")
    net = NetnsLab()
    try:
        node = net.ns("node")
        later = threading.Timer(0.3, net.run, (node, "ip link add eth0 type veth peer name eth1"))
        later.start()
        with entered(node):
            sock = open_arp_socket("eth0", wait=10)
        later.join()
        assert sock.getsockname()[0] == "eth0"
        sock.close()
        with entered(node), pytest.raises(OSError, match="No such device"):
            open_arp_socket("eth9", wait=0.1)
    finally:
        net.cleanup()


@pytest.mark.netns
def test_load_balancer_ips_from_outside_the_cluster(tmp_path):
    inputs = guide_inputs(tmp_path / "in", extra=LOAD_BALANCERS)
    dp = build_dataplane(Cluster.load([str(inputs)]))
    lb = str(dp.cluster.service("web-lb").lb_ips[0])
    local = str(dp.cluster.service("web-lb-local").lb_ips[0])
    webs = {p.key for p in dp.cluster.pods if p.name.startswith("web-")}
    name = lab_name("b")
    lab = Lab(name)
    try:
        lab.up([str(inputs)])
        internet = lab.kname("internet")
        seen = set()
        for _ in range(30):
            r = client.request(internet, lb, 80, http=True)
            assert r.status == "ok", r
            # externalTrafficPolicy Cluster: SNATed by the node that took it
            assert r.client != "203.0.113.254", r
            seen.add(r.server)
            if seen == webs:
                break
        assert seen == webs
        r = client.request(internet, local, 80, http=True)
        assert (r.status, r.client) == ("ok", "203.0.113.254"), r
        # the simulator predicts the same entry node and what the pod sees
        outcomes = walk(dp, "ip/203.0.113.254", "lb/web-lb-local")
        assert {str(b.forward.outcome.packet.src) for b in outcomes.branches} == {"203.0.113.254"}
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []
