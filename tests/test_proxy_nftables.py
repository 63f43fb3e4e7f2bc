"""kube-proxy's nftables mode (podnet.proxy.nftables) against upstream's
TestOverallNFTablesRules, partial syncs, and the rendered table loaded into a
real kernel with `nft -f`."""

from __future__ import annotations

import re
import secrets
import subprocess

import pytest

from podnet.proxy.model import EndpointInfo, ProxyNode, ProxyView, ServicePortInfo, ServicePortName
from podnet.proxy.nftables import NftablesProxier, NftTable, Transaction, render

from conftest import ORACLES, have, is_root
from test_proxy_model import endpoint, node, oracle_objects, podnet_config, service, slice_, view_of

OBJECT_ORDER = {"table": 10, "chain": 9, "rule": 8, "set": 7, "map": 6, "element": 5}


def sort_nftables_transaction(text: str) -> list[str]:
    """helpers_test.go sortNFTablesTransaction: drop blank lines and comments, then
    sort by object type (table, chain, rule, set, map, element), then object
    name; rules keep their order within a chain, other lines sort as text."""
    lines = [l for l in text.split("\n") if l and not l.startswith("#")]

    def key(item):
        i, line = item
        w = line.split(" ")
        return (-OBJECT_ORDER.get(w[1], 0), w[4], i if w[1] == "rule" else line)
    return [line for _, line in sorted(enumerate(lines), key=key)]


def oracle_text() -> str:
    return (ORACLES / "kube-proxy" / "nftables-overall.expected").read_text()


@pytest.fixture
def oracle_view(tmp_path):
    return view_of(tmp_path, oracle_objects(nodePortAddresses=["192.168.0.2/32"]))


def rules_of(text: str, chain: str) -> list[str]:
    prefix = f"add rule ip kube-proxy {chain} "
    return [l[len(prefix):] for l in text.splitlines() if l.startswith(prefix)]


def test_overall_rules_match_upstream(oracle_view):
    assert sort_nftables_transaction(render(oracle_view)) == sort_nftables_transaction(oracle_text())


def test_render_is_fake_dump_order(oracle_view):
    lines = render(oracle_view).splitlines()
    kinds = [l.split(" ")[1] for l in lines]
    # objects before contents: what `nft -f` needs (chains before the rules that jump to them)
    assert kinds[0] == "table"
    assert kinds.index("rule") > max(i for i, k in enumerate(kinds) if k in ("chain", "set", "map"))
    assert kinds.index("element") > max(i for i, k in enumerate(kinds) if k == "rule")


def test_match_all_node_port_addresses(tmp_path):
    text = render(view_of(tmp_path, oracle_objects()))
    assert "nodeport-ips" not in text
    assert rules_of(text, "services")[1] == (
        "fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports")
    assert rules_of(text, "nodeport-endpoints-check") == [
        "ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports"]


def test_masquerade_all_and_ipv6(tmp_path):
    text = render(view_of(tmp_path, oracle_objects(masqueradeAll=True)))
    assert rules_of(text, "service-ULMVA6XW-ns1/svc1/tcp/p80")[0] == "ip daddr 172.30.0.41 jump mark-for-masquerade"
    objs = [podnet_config(pod_subnet="fd00:10::/56", service_subnet="fd00:30::/112", ip_family="ipv6"),
            node(ip="2001:db8::2", pod_cidr="fd00:10::/64"),
            service("ns", "web", "fd00:30::10"),
            slice_("ns", "web", [endpoint("fd00:10::5")], address_type="IPv6")]
    text6 = render(view_of(tmp_path, objs, family=6))
    assert text6.startswith("add table ip6 kube-proxy")
    assert "endpoint-" in text6 and "__fd00.10..5/80 meta l4proto tcp dnat to [fd00:10::5]:80" in text6
    assert "ip6 saddr != fd00:10::/56 jump mark-for-masquerade" in text6
    assert "type ipv6_addr . inet_proto . inet_service : verdict" in text6


def _table_after(*transactions: str) -> NftTable:
    """Replay transaction texts (as `nft -f` would) on an empty table."""
    table = NftTable("ip")
    for text in transactions:
        tx = Transaction("ip")
        for line in text.splitlines():
            tx.ops.append(_parse_op(line))
        table.apply(tx)
    return table


def _parse_op(line: str) -> tuple:
    verb, kind, _family, _table, rest = line.split(" ", 4) if line.count(" ") >= 4 else (*line.split(" "), "")
    if kind == "table":
        return (verb, kind, "", rest)
    name, _, arg = rest.partition(" ")
    if kind == "element":
        body = arg[2:-2]
        value = None
        if " : " in body:
            body, value = body.split(" : ", 1)
        comment = None
        m = re.match(r'(.*) comment "(.*)"$', body)
        if m:
            body, comment = m.groups()
        return (verb, kind, name, (body, comment, value))
    return (verb, kind, name, arg)


def test_partial_sync(tmp_path):
    objs = oracle_objects(nodePortAddresses=["192.168.0.2/32"])
    proxier = NftablesProxier()
    first = proxier.sync(view_of(tmp_path, objs))
    assert proxier.last_sync_full
    # the real first transaction: base chains re-created, every chain flushed
    assert "delete chain ip kube-proxy nat-prerouting" in first
    assert "flush chain ip kube-proxy services" in first
    assert _table_after(first).dump() == render(view_of(tmp_path, objs))

    # nothing changed: an empty transaction
    assert proxier.sync(view_of(tmp_path, objs)) == ""
    assert not proxier.last_sync_full

    # svc4 gets a third endpoint: only its chains, and no element changes
    objs[9] = slice_("ns4", "svc4", [endpoint("10.180.0.4", node="host2"),
                                     endpoint("10.180.0.5", node="test-node"), endpoint("10.180.0.6")])
    part = proxier.sync(view_of(tmp_path, objs))
    touched = {l.split(" ")[4] for l in part.splitlines()}
    assert all("ns4/svc4" in name for name in touched), touched
    assert "numgen random mod 3 vmap" in part and "add element" not in part

    # svc1 goes: its elements are deleted, its chains flushed now and deleted next sync
    del objs[2:4]
    gone = proxier.sync(view_of(tmp_path, objs))
    assert "delete element ip kube-proxy service-ips { 172.30.0.41 . tcp . 80 }" in gone
    assert "delete element ip kube-proxy cluster-ips { 172.30.0.41 }" in gone
    assert "flush chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80" in gone
    later = proxier.sync(view_of(tmp_path, objs))
    assert later.splitlines() == ["delete chain ip kube-proxy endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80",
                                  "delete chain ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80"]

    # svc2 gains a local endpoint: no-endpoint elements go, a local- chain appears
    objs[3] = slice_("ns2", "svc2", [endpoint("10.180.0.2", node="test-node")])
    local = proxier.sync(view_of(tmp_path, objs))
    assert "delete element ip kube-proxy no-endpoint-services { 1.2.3.4 . tcp . 80 }" in local
    assert "add chain ip kube-proxy local-42NFTM6N-ns2/svc2/tcp/p80" in local
    # the kernel's table now equals a fresh full render
    assert sort_nftables_transaction(proxier.table.dump()) == \
        sort_nftables_transaction(render(view_of(tmp_path, objs)))


def test_session_affinity_set_removed_with_affinity(tmp_path):
    objs = oracle_objects(nodePortAddresses=["192.168.0.2/32"])
    proxier = NftablesProxier()
    proxier.sync(view_of(tmp_path, objs))
    objs[10]["spec"].pop("sessionAffinity")
    objs[10]["spec"].pop("sessionAffinityConfig")
    text = proxier.sync(view_of(tmp_path, objs))
    assert "delete set ip kube-proxy affinity-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80" in text


def test_bench_sized_view_renders():
    node_ = ProxyNode("n1", {4: ("192.168.0.2",)}, cluster_cidrs={4: "10.0.0.0/8"})
    services, endpoints = {}, {}
    for i in range(50):
        spn = ServicePortName("ns", f"s{i}", "http")
        services[spn] = ServicePortInfo(spn, f"172.30.1.{i + 1}", 80)
        endpoints[spn] = [EndpointInfo(f"10.2.{i}.{j + 1}", 8080) for j in range(3)]
    text = render(ProxyView(node_, services=services, endpoints=endpoints, service_cidrs=("172.30.0.0/16",)))
    assert text.count("dnat to") == 150 and text.count("numgen random mod 3") == 50


# ---------------------------------------------------------------------------
# packets through the rendered table (needs podnet.linux.nftables' evaluator)
# ---------------------------------------------------------------------------

LOCAL = {"127.0.0.1", "192.168.0.2"}


@pytest.fixture
def oracle_nft(oracle_view):
    mod = pytest.importorskip("podnet.linux.nftables")
    if not hasattr(mod, "NftRuleset"):
        pytest.skip("the nftables evaluator is not there yet")
    return mod.NftRuleset.parse(render(oracle_view))


@pytest.mark.parametrize("src,dst,dport,want", [
    ("10.0.0.2", "172.30.0.41", 80, [("10.180.0.1:80", False)]),
    ("192.168.0.2", "172.30.0.41", 80, [("10.180.0.1:80", True)]),
    ("10.0.0.2", "172.30.0.44", 80, [("10.180.0.4:80", False), ("10.180.0.5:80", False)]),
    ("203.0.113.1", "192.168.0.2", 3003, [("10.180.0.3:80", True)]),
    ("203.0.113.1", "5.6.7.8", 80, [("10.180.0.3:80", True)]),
])
def test_packet_flows(oracle_nft, src, dst, dport, want):
    from podnet.linux.netfilter import ConnView, HookContext, Packet, ip
    from podnet.sim.branches import explore

    def run(chooser):
        pkt = Packet(ip(src), ip(dst), "tcp", 40000, dport)
        ctx = HookContext("PREROUTING", pkt, ConnView(), in_iface="eth0", choose=chooser,
                          addr_type=lambda a, iface=None: "LOCAL" if str(a) in LOCAL else "UNICAST")
        res = oracle_nft.evaluate("ip", "kube-proxy", "nat-prerouting", ctx)
        target = f"{res.nat.addr}:{res.nat.port}" if res.nat is not None else None
        return target, bool(ctx.packet.mark & 0x4000)
    assert [b.result for b in explore(run)] == want


@pytest.mark.parametrize("src,dst,hook,chain,verdict", [
    ("203.0.113.200", "5.6.7.8", "PREROUTING", "filter-prerouting-pre-dnat", "DROP"),   # source ranges
    ("203.0.113.1", "5.6.7.8", "PREROUTING", "filter-prerouting-pre-dnat", "ACCEPT"),
    ("10.0.0.2", "172.30.0.46", "FORWARD", "filter-forward", "REJECT"),               # no endpoints
    ("203.0.113.1", "1.2.3.4", "FORWARD", "filter-forward", "DROP"),                  # eTP Local
    ("10.0.0.2", "172.30.0.99", "FORWARD", "filter-forward", "DROP"),                 # unallocated
])
def test_filter_verdicts(oracle_nft, src, dst, hook, chain, verdict):
    from podnet.linux.netfilter import ConnView, HookContext, Packet, ip
    ctx = HookContext(hook, Packet(ip(src), ip(dst), "tcp", 40000, 80), ConnView(), in_iface="eth0")
    assert oracle_nft.evaluate("ip", "kube-proxy", chain, ctx).verdict == verdict


# ---------------------------------------------------------------------------
# the real kernel
# ---------------------------------------------------------------------------

@pytest.mark.netns
@pytest.mark.skipif(not (is_root() and have("nft") and have("ip")), reason="needs root, nft and ip")
def test_nft_accepts_rendered_table(oracle_view, tmp_path):
    ns = f"pntest-kpnft-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proxier = NftablesProxier()
        for i, text in enumerate([proxier.sync(oracle_view), render(oracle_view)]):
            path = tmp_path / f"kp{i}.nft"
            path.write_text(text)
            if i == 1:       # the dump form loads into a fresh table too
                subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "ip", "kube-proxy"],
                               check=True)
            proc = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(path)],
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
        listed = subprocess.run(["ip", "netns", "exec", ns, "nft", "list", "table", "ip", "kube-proxy"],
                                capture_output=True, text=True, check=True).stdout
        assert "chain endpoint-GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80" in listed
        assert "172.30.0.44 . tcp . 80 : goto service-LAUZTJTB-ns4/svc4/tcp/p80" in listed
        assert "type filter hook prerouting priority dstnat - 10" in listed
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_installed_into_the_guide_lab_dataplane():
    from podnet import Cluster
    from podnet.dataplane import build_dataplane
    from conftest import GUIDE_LAB
    dp = build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="nftables"))
    ns = dp.state.netns("k8s-guide-worker")
    web = dp.cluster.service("web")
    assert ns.nft.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }')
    assert f"add element ip kube-proxy service-ips {{ {web.cluster_ip} . tcp . 80 : goto service-" in ns.nft
