"""The hook runner: base chains of iptables and nftables in priority order, as the kernel runs them."""

import ipaddress

from podnet.linux.netfilter import ConnView, Packet
from podnet.linux.state import DataplaneState, Netns
from podnet.sim.hooks import run_hook
from podnet.sim.runtime import Runtime

NFT = """
table ip t {
  set cluster-ips { type ipv4_addr; elements = { 10.96.0.20 } }
  chain nat-output { type nat hook output priority -100; policy accept;
    ip daddr 10.96.0.20 tcp dport 80 meta mark set mark or 0x4000 dnat to 10.244.1.3:8080 }
  chain filter-output { type filter hook output priority 0; policy accept;
    ip daddr @cluster-ips reject }
  chain early { type filter hook output priority -110; policy accept;
    ip daddr 10.244.1.3 drop }
}
"""


def _run(nft_text):
    state = DataplaneState()
    ns = state.add_netns(Netns("n"))
    ns.nft = nft_text
    pkt = Packet(ipaddress.ip_address("172.18.0.3"), ipaddress.ip_address("10.96.0.20"), "tcp", 40000, 80)
    return pkt, run_hook(ns, "OUTPUT", pkt, ConnView(), Runtime(state))


def test_chains_after_the_nat_chain_see_the_translated_destination():
    """kube-proxy's nftables filter-output (priority 0) runs after nat-output's DNAT (-100):
    its cluster-ips reject must not catch a connection that was just DNATed to a pod."""
    pkt, out = _run(NFT)
    assert out.verdict == "ACCEPT"
    assert [n.addr for _, n in out.nat] == [ipaddress.ip_address("10.244.1.3")]
    # the walker applies the binding to the packet itself; marks set on the way are kept
    assert pkt.dst == ipaddress.ip_address("10.96.0.20") and pkt.mark == 0x4000


def test_chains_before_the_nat_chain_see_the_original_destination():
    """A chain at priority -110 (kube-proxy's pre-DNAT filter chains) sees the ClusterIP."""
    _, out = _run(NFT)          # its rule for the pod IP does not match: it ran first
    assert out.verdict == "ACCEPT"
    _, out = _run(NFT.replace("ip daddr 10.244.1.3 drop", "ip daddr 10.96.0.20 drop"))
    assert out.verdict == "DROP" and not out.nat
