"""kube-proxy's iptables mode (podnet.proxy.iptables) against upstream's
TestOverallIPTablesRules, plus the behaviours upstream's other tests cover."""

from __future__ import annotations

import re

import pytest

from podnet.linux.iptables_builder import IptablesBuilder
from podnet.proxy.iptables import IptablesProxier, jump_rules, render
from podnet.proxy.model import (EndpointInfo, ProxyNode, ProxyView, ServicePortInfo, ServicePortName)

from conftest import ORACLES, have, is_root
from test_proxy_model import (endpoint, node, oracle_objects, podnet_config, service, slice_,
                              view_of)

KUBE_NODEPORTS, KUBE_SERVICES = "KUBE-NODEPORTS", "KUBE-SERVICES"


# ---------------------------------------------------------------------------
# upstream's sortIPTablesRules and checkIPTablesRuleJumps
# ---------------------------------------------------------------------------

def _comment(rule: str):
    m = re.search(r'--comment ("[^"]*"|\S+)', rule)
    return m.group(1).strip('"') if m else None


def _service_name(rule: str) -> str:
    """orderByCommentServiceName: the comment up to the first space or colon."""
    comment = _comment(rule) or ""
    return re.split(r"[ :]", comment, maxsplit=1)[0]


def parse_restore(text: str) -> list[dict]:
    tables, table = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("*"):
            table = {"name": line[1:], "chains": [], "rules": {}, "deleted": []}
            tables.append(table)
        elif line.startswith(":"):
            name = line[1:].split()[0]
            if name not in table["rules"]:
                table["chains"].append(name)
                table["rules"][name] = []
        elif line.startswith("-A "):
            chain = line.split()[1]
            assert chain in table["rules"], f"rule for undeclared chain: {line}"
            table["rules"][chain].append(line)
        elif line.startswith("-X "):
            table["deleted"].append(line.split()[1])
        elif line != "COMMIT":
            raise AssertionError(f"unexpected line {line!r}")
    return tables


def sort_iptables_rules(text: str) -> str:
    """proxier_test.go sortIPTablesRules: tables by name; chains KUBE-NODEPORTS,
    KUBE-SERVICES, other KUBE-* alphabetically, the rest; KUBE-NODEPORTS and
    KUBE-SERVICES rules stable-sorted by the service name in their comment (the
    "must be the last rule" rule last)."""
    out = []
    for t in sorted(parse_restore(text), key=lambda t: t["name"]):
        def chain_key(c):
            rank = 0 if c == KUBE_NODEPORTS else 1 if c == KUBE_SERVICES else 2 if c.startswith("KUBE-") else 3
            return (rank, c)
        chains = sorted(t["chains"], key=chain_key)
        rules = t["rules"]
        for c in (KUBE_NODEPORTS, KUBE_SERVICES):
            if c in rules:
                rules[c] = sorted(rules[c], key=lambda r: ("must be the last rule" in (_comment(r) or ""),
                                                          _service_name(r)))
        out.append(f"*{t['name']}")
        out += [f":{c} - [0:0]" for c in chains]
        out += [r for c in chains for r in rules[c]]
        out += [f"-X {c}" for c in t["deleted"]]
        out.append("COMMIT")
    return "\n".join(out) + "\n"


TOP_LEVEL = {"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
             "KUBE-PROXY-FIREWALL", "KUBE-FIREWALL", "KUBE-POSTROUTING"}
TARGETS = {"ACCEPT", "DROP", "REJECT", "RETURN", "MARK", "MASQUERADE", "DNAT", "SNAT"}


def check_rule_jumps(text: str) -> None:
    """checkIPTablesRuleJumps: every jump goes to a declared chain with rules,
    every declared chain (but the top-level ones) is jumped to."""
    for t in parse_restore(text):
        jumped = set()
        for rules in t["rules"].values():
            for r in rules:
                m = re.search(r" -j (\S+)", r)
                if m and m.group(1) not in TARGETS:
                    target = m.group(1)
                    assert target in TOP_LEVEL or t["rules"].get(target), f"{t['name']}: {r} jumps to a missing/empty chain"
                    jumped.add(target)
        for c in t["chains"]:
            if c not in TOP_LEVEL and c not in t["deleted"] and c != "KUBE-MARK-MASQ":
                assert c in jumped, f"{t['name']}: chain {c} is never jumped to"


def oracle_text() -> str:
    lines = (ORACLES / "kube-proxy" / "iptables-overall.expected").read_text().splitlines()
    return "\n".join(l for l in lines if not l.startswith("#")) + "\n"


def nat_rules(text: str, chain: str) -> list[str]:
    nat = next(t for t in parse_restore(text) if t["name"] == "nat")
    return nat["rules"].get(chain, [])


def filter_rules(text: str, chain: str) -> list[str]:
    flt = next(t for t in parse_restore(text) if t["name"] == "filter")
    return flt["rules"].get(chain, [])


def chains_of(text: str, table: str = "nat") -> list[str]:
    return next(t for t in parse_restore(text) if t["name"] == table)["chains"]


@pytest.fixture
def oracle_view(tmp_path):
    return view_of(tmp_path, oracle_objects())


# ---------------------------------------------------------------------------
# the oracle
# ---------------------------------------------------------------------------

def test_overall_rules_match_upstream(oracle_view):
    restore = render(oracle_view, nfacct=True).restore
    assert sort_iptables_rules(restore) == sort_iptables_rules(oracle_text())
    # the oracle is already in sorted form
    assert sort_iptables_rules(oracle_text()) == oracle_text()
    check_rule_jumps(restore)


def test_without_nfacct_localhost_nodeports_use_the_plain_rule(oracle_view):
    restore = render(oracle_view).restore
    assert "nfacct" not in restore
    expected = "\n".join(l for l in oracle_text().splitlines()
                         if "localhost_nps_accepted_pkts" not in l).replace(
        " -m nfacct --nfacct-name ct_state_invalid_dropped_pkts", "") + "\n"
    assert sort_iptables_rules(restore) == sort_iptables_rules(expected)


def test_jump_rules_into_builtin_chains(oracle_view):
    rules = render(oracle_view)
    save = rules.iptables_save()
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in save
    assert '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in save
    assert '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING' in save
    # each jump is inserted at the top, so the last one kube-proxy ensures comes first
    inputs = [l for l in save.splitlines() if l.startswith("-A INPUT ")]
    assert inputs == [
        "-A INPUT -j KUBE-FIREWALL",
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" '
        "-j KUBE-PROXY-FIREWALL",
        '-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS',
        '-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service '
        'portals" -j KUBE-EXTERNAL-SERVICES']
    forwards = [l.split(" -j ")[1] for l in save.splitlines() if l.startswith("-A FORWARD ")]
    assert forwards == ["KUBE-PROXY-FIREWALL", "KUBE-FORWARD", "KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"]
    # a builder that already holds other components' rules keeps them after ours
    b = IptablesBuilder()
    b.append("nat", "POSTROUTING", "-s 10.244.0.0/16 -j MASQUERADE")
    rules.apply(b)
    post = [l for l in b.render().splitlines() if l.startswith("-A POSTROUTING")]
    assert post[0].endswith("-j KUBE-POSTROUTING") and post[1].endswith("-j MASQUERADE")
    assert len({(j.table, j.chain, j.rule) for j in jump_rules()}) == 14


# ---------------------------------------------------------------------------
# behaviours
# ---------------------------------------------------------------------------

def test_partial_sync_rewrites_only_changed_services(tmp_path):
    objs = oracle_objects()
    proxier = IptablesProxier()
    full = proxier.sync(view_of(tmp_path, objs))
    assert proxier.last_sync_full and "KUBE-SEP-SXIVWICOYRO3J4NJ" in full

    # nothing changed: top-level chains only, KUBE-SERVICES/NODEPORTS and filter complete
    again = proxier.sync(view_of(tmp_path, objs))
    assert not proxier.last_sync_full
    assert chains_of(again) == ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]
    assert len(nat_rules(again, "KUBE-SERVICES")) == len(nat_rules(full, "KUBE-SERVICES"))
    assert filter_rules(again, "KUBE-EXTERNAL-SERVICES") == filter_rules(full, "KUBE-EXTERNAL-SERVICES")

    # a third endpoint for svc4: only svc4's chains are written
    objs[9] = slice_("ns4", "svc4", [endpoint("10.180.0.4", node="host2"),
                                     endpoint("10.180.0.5", node="test-node"), endpoint("10.180.0.6")])
    part = proxier.sync(view_of(tmp_path, objs))
    own = [c for c in chains_of(part) if c.startswith(("KUBE-SVC", "KUBE-SEP", "KUBE-EXT", "KUBE-FW"))]
    assert own[:2] == ["KUBE-EXT-4SW47YFZTEDKD3PK", "KUBE-SVC-4SW47YFZTEDKD3PK"]
    assert len(own) == 5 and all(c.startswith("KUBE-SEP-") for c in own[2:])
    probs = [re.search(r"--probability (\S+)", r) for r in nat_rules(part, "KUBE-SVC-4SW47YFZTEDKD3PK")]
    assert [p.group(1) for p in probs if p] == ["0.3333333333", "0.5000000000"]

    # svc1 deleted: its chains are flushed and deleted (-X)
    del objs[2:4]
    gone = proxier.sync(view_of(tmp_path, objs))
    assert "-X KUBE-SVC-XPGD46QRK7WJZT7O" in gone and "-X KUBE-SEP-SXIVWICOYRO3J4NJ" in gone
    assert ":KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]" in gone
    assert not any("ns1/svc1" in r for r in nat_rules(gone, "KUBE-SERVICES"))

    # a forced resync is full again
    proxier.force_full_sync()
    proxier.sync(view_of(tmp_path, objs))
    assert proxier.last_sync_full


def test_partial_sync_equivalent_to_full(tmp_path):
    """Applying the partial payload over the previous state gives the full render."""
    objs = oracle_objects()
    proxier = IptablesProxier()
    b = IptablesBuilder()
    b.add_restore(proxier.sync(view_of(tmp_path, objs)))
    objs[5] = slice_("ns2", "svc2", [endpoint("10.180.0.2", node="test-node")])
    v2 = view_of(tmp_path, objs)
    part = proxier.sync(v2)
    _apply_restore(b, part)
    want = IptablesBuilder()
    want.add_restore(render(v2).restore)
    assert b.render() == want.render()


def _apply_restore(builder: IptablesBuilder, text: str) -> None:
    """iptables-restore --noflush semantics: a chain line flushes the chain, -X deletes it."""
    table = None
    for line in text.splitlines():
        if line.startswith("*"):
            table = builder.table(line[1:])
        elif line.startswith(":"):
            table.chains[line[1:].split()[0]] = []
        elif line.startswith("-X "):
            del table.chains[line.split()[1]]
        elif line.startswith("-A "):
            _, chain, rest = line.split(" ", 2)
            table.chains[chain].append(rest)


def test_topology_hints_keep_same_zone_endpoints(tmp_path):
    objs = [podnet_config(), node(labels={"topology.kubernetes.io/zone": "zone-a"}),
            service("ns", "web", "172.30.0.50"),
            slice_("ns", "web", [endpoint("10.1.0.1", zone_hints=["zone-a"]),
                                 endpoint("10.1.0.2", zone_hints=["zone-b"])])]
    restore = render(view_of(tmp_path, objs)).restore
    assert "10.1.0.1:80" in restore and "10.1.0.2" not in restore
    check_rule_jumps(restore)


def test_terminating_endpoints_fallback(tmp_path):
    objs = [podnet_config(), node(), service("ns", "web", "172.30.0.50"),
            slice_("ns", "web", [endpoint("10.1.0.1", ready=False, serving=True, terminating=True),
                                 endpoint("10.1.0.2", ready=False, serving=False, terminating=True)])]
    restore = render(view_of(tmp_path, objs)).restore
    assert "--to-destination 10.1.0.1:80" in restore and "10.1.0.2" not in restore
    assert not filter_rules(restore, "KUBE-SERVICES")


def test_masquerade_all(tmp_path):
    restore = render(view_of(tmp_path, oracle_objects(masqueradeAll=True))).restore
    svc1 = nat_rules(restore, "KUBE-SVC-XPGD46QRK7WJZT7O")
    assert svc1[0] == ('-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" '
                       "-m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-MARK-MASQ")


def test_no_endpoints_reject(tmp_path):
    objs = [podnet_config(), node(),
            service("ns", "web", "172.30.0.50", type="NodePort", node_port=30080, external_ips=["192.168.99.5"])]
    restore = render(view_of(tmp_path, objs)).restore
    assert filter_rules(restore, "KUBE-SERVICES") == [
        '-A KUBE-SERVICES -m comment --comment "ns/web:p80 has no endpoints" -m tcp -p tcp '
        "-d 172.30.0.50 --dport 80 -j REJECT"]
    assert filter_rules(restore, "KUBE-EXTERNAL-SERVICES") == [
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns/web:p80 has no endpoints" -m tcp -p tcp '
        "-d 192.168.99.5 --dport 80 -j REJECT",
        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns/web:p80 has no endpoints" '
        "-m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j REJECT"]
    assert not nat_rules(restore, "KUBE-NODEPORTS")
    assert chains_of(restore) == ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"]


def test_session_affinity(oracle_view):
    restore = render(oracle_view).restore
    svc = nat_rules(restore, "KUBE-SVC-NUKIZ6OKUXPJNT4C")
    assert "-m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --rcheck --seconds 10800 --reap" in svc[1]
    sep = nat_rules(restore, "KUBE-SEP-I77PXRDZVX7PMWMN")
    assert "-m recent --name KUBE-SEP-I77PXRDZVX7PMWMN --set" in sep[1]


def test_external_traffic_policy_local_with_local_endpoint(tmp_path):
    objs = [podnet_config(), node(),
            service("ns", "lb", "172.30.0.60", type="LoadBalancer", node_port=30090, etp="Local",
                    hcnp=31000, lb_ips=["5.5.5.5"]),
            slice_("ns", "lb", [endpoint("10.1.0.1", node="test-node"), endpoint("10.1.0.2", node="other")])]
    restore = render(view_of(tmp_path, objs)).restore
    ext = [c for c in chains_of(restore) if c.startswith("KUBE-EXT-")][0]
    svl = "KUBE-SVL-" + ext[len("KUBE-EXT-"):]
    svc = "KUBE-SVC-" + ext[len("KUBE-EXT-"):]
    assert nat_rules(restore, ext)[-1] == f"-A {ext} -j {svl}"
    assert [r.split(" -j ")[0] for r in nat_rules(restore, svl)] == [
        f'-A {svl} -m comment --comment "ns/lb:p80 -> 10.1.0.1:80"']
    assert len(nat_rules(restore, svc)) == 1 + 2                  # masq + both endpoints
    assert filter_rules(restore, "KUBE-NODEPORTS") == [
        '-A KUBE-NODEPORTS -m comment --comment "ns/lb:p80 health check node port" -m tcp -p tcp '
        "--dport 31000 -j ACCEPT"]
    assert not filter_rules(restore, "KUBE-EXTERNAL-SERVICES")
    check_rule_jumps(restore)


def test_internal_traffic_policy_local_without_local_endpoints(tmp_path):
    objs = [podnet_config(), node(), service("ns", "web", "172.30.0.50", itp="Local"),
            slice_("ns", "web", [endpoint("10.1.0.2", node="other")])]
    restore = render(view_of(tmp_path, objs)).restore
    assert filter_rules(restore, "KUBE-SERVICES") == [
        '-A KUBE-SERVICES -m comment --comment "ns/web:p80 has no local endpoints" -m tcp -p tcp '
        "-d 172.30.0.50 --dport 80 -j DROP"]


def test_localhost_node_ports_off(tmp_path):
    restore = render(view_of(tmp_path, oracle_objects(localhostNodePorts=False)), nfacct=True).restore
    assert "KUBE-FIREWALL" not in restore and "127.0.0.0/8 --dport" not in restore
    assert nat_rules(restore, "KUBE-SERVICES")[-1].endswith(
        "-m addrtype --dst-type LOCAL ! -d 127.0.0.0/8 -j KUBE-NODEPORTS")


def test_node_port_addresses(tmp_path):
    restore = render(view_of(tmp_path, oracle_objects(nodePortAddresses=["192.168.0.0/24"]))).restore
    assert nat_rules(restore, "KUBE-SERVICES")[-1] == (
        '-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last '
        'rule in this chain" -d 192.168.0.2 -j KUBE-NODEPORTS')
    # 192.168.0.0/24 does not cover 127.0.0.1: localhost NodePorts are off
    assert "KUBE-FIREWALL" not in restore


def test_ipv6(tmp_path):
    objs = [podnet_config(pod_subnet="fd00:10::/56", service_subnet="fd00:30::/112", ip_family="ipv6"),
            node(ip="2001:db8::2", pod_cidr="fd00:10::/64"),
            service("ns", "web", "fd00:30::10", type="NodePort", node_port=30080),
            slice_("ns", "web", [endpoint("fd00:10::5"), endpoint("fd00:10::10")], address_type="IPv6")]
    view = view_of(tmp_path, objs, family=6)
    restore = render(view, nfacct=True).restore
    assert "--to-destination [fd00:10::5]:80" in restore
    assert '--comment "ns/web:p80 -> [fd00:10::10]:80"' in restore          # string order: "1" < "5"
    assert "! -s fd00:10::/56 -j KUBE-MARK-MASQ" in restore
    assert nat_rules(restore, "KUBE-SERVICES")[-1].endswith("--dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS")
    assert "KUBE-FIREWALL" not in restore and "127.0.0.0/8" not in restore
    check_rule_jumps(restore)


def test_large_cluster_mode_drops_endpoint_comments():
    node_ = ProxyNode("n1", {4: ("192.168.0.2",)}, cluster_cidrs={4: "10.0.0.0/8"})
    spn = ServicePortName("ns", "big", "http")
    svc = ServicePortInfo(spn, "172.30.1.1", 80)
    eps = [EndpointInfo(f"10.2.{i // 250}.{i % 250 + 1}", 8080) for i in range(1001)]
    restore = render(ProxyView(node_, services={spn: svc}, endpoints={spn: eps})).restore
    seps = [r for r in restore.splitlines() if r.startswith("-A KUBE-SEP-")]
    assert len(seps) == 2002 and not any("--comment" in r for r in seps)
    svc_rules = [r for r in restore.splitlines() if r.startswith("-A KUBE-SVC-")]
    assert "--comment" in svc_rules[0] and not any("--comment" in r for r in svc_rules[1:])
    small = render(ProxyView(node_, services={spn: svc}, endpoints={spn: eps[:1000]})).restore
    assert all("--comment ns/big:http" in r for r in small.splitlines() if r.startswith("-A KUBE-SEP-"))


# ---------------------------------------------------------------------------
# packets through the rendered rules (needs podnet.linux.iptables)
# ---------------------------------------------------------------------------

LOCAL = {"127.0.0.1", "192.168.0.2", "192.168.1.2", "192.168.99.11"}


def _flow(ruleset, src, dst, dport):
    """nat PREROUTING for one new TCP connection: every outcome as (DNAT target or,
    without DNAT, the filter FORWARD verdict; marked for masquerade)."""
    from podnet.linux.netfilter import ConnView, HookContext, Packet, ip
    from podnet.sim.branches import explore

    def run(chooser):
        pkt = Packet(ip(src), ip(dst), "tcp", 40000, dport)
        ctx = HookContext("PREROUTING", pkt, ConnView(), in_iface="eth0", choose=chooser,
                          addr_type=lambda a, iface=None: "LOCAL" if str(a) in LOCAL else "UNICAST")
        res = ruleset.evaluate("nat", "PREROUTING", ctx, engine="iptables")
        if res.nat is not None and res.nat.kind == "DNAT":
            return f"{res.nat.addr}:{res.nat.port}", bool(ctx.packet.mark & 0x4000)
        # not DNATed: routed on (FORWARD), where kube-proxy's filter chains decide
        fwd = HookContext("FORWARD", pkt, ConnView(), in_iface="eth0", out_iface="eth1", choose=chooser,
                          addr_type=ctx.addr_type)
        return ruleset.evaluate("filter", "FORWARD", fwd, engine="iptables").verdict, False
    return [b.result for b in explore(run)]


@pytest.fixture
def oracle_ruleset(oracle_view):
    mod = pytest.importorskip("podnet.linux.iptables")
    if not hasattr(mod, "Ruleset"):
        pytest.skip("the iptables evaluator is not there yet")
    return mod.Ruleset.parse(render(oracle_view).iptables_save(), source="kube-proxy")


@pytest.mark.parametrize("src,dst,dport,want", [
    ("10.0.0.2", "172.30.0.41", 80, [("10.180.0.1:80", False)]),
    ("192.168.0.2", "172.30.0.41", 80, [("10.180.0.1:80", True)]),
    ("10.0.0.2", "172.30.0.44", 80, [("10.180.0.4:80", False), ("10.180.0.5:80", False)]),
    ("203.0.113.1", "192.168.0.2", 3003, [("10.180.0.3:80", True)]),
    ("203.0.113.1", "5.6.7.8", 80, [("10.180.0.3:80", True)]),
    ("203.0.113.200", "5.6.7.8", 80, [("DROP", False)]),      # loadBalancerSourceRanges
    ("203.0.113.1", "1.2.3.4", 80, [("DROP", False)]),        # eTP Local, no local endpoint
    ("10.0.0.2", "172.30.0.46", 80, [("REJECT", False)]),     # no endpoints
])
def test_packet_flows(oracle_ruleset, src, dst, dport, want):
    assert _flow(oracle_ruleset, src, dst, dport) == want


# ---------------------------------------------------------------------------
# the real kernel
# ---------------------------------------------------------------------------

def _chain_sizes(save: str) -> dict[tuple[str, str], int]:
    sizes: dict[tuple[str, str], int] = {}
    table = None
    for line in save.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            key = (table, line.split()[1])
            sizes[key] = sizes.get(key, 0) + 1
    return sizes


@pytest.mark.netns
@pytest.mark.skipif(not (is_root() and have("iptables-restore") and have("ip")),
                    reason="needs root, iptables-restore and ip")
def test_iptables_restore_accepts_rendered_rules(oracle_view, tmp_path):
    import secrets
    import subprocess
    ns = f"pntest-kpipt-{secrets.token_hex(3)}"
    save = render(oracle_view).iptables_save()        # no nfacct: the lab kernels lack it
    path = tmp_path / "kube-proxy.save"
    path.write_text(save)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, "iptables-restore", str(path)],
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        back = subprocess.run(["ip", "netns", "exec", ns, "iptables-save"], capture_output=True,
                              text=True, check=True).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    assert _chain_sizes(back) == _chain_sizes(save)
    # the kernel's own rendering of the rules routes packets the same way
    mod = pytest.importorskip("podnet.linux.iptables")
    kernel = mod.Ruleset.parse(back, source="iptables-save")
    assert _flow(kernel, "10.0.0.2", "172.30.0.44", 80) == [("10.180.0.4:80", False), ("10.180.0.5:80", False)]
    assert _flow(kernel, "203.0.113.200", "5.6.7.8", 80) == [("DROP", False)]


def test_installed_into_the_guide_lab_dataplane():
    from podnet import Cluster
    from podnet.dataplane import build_dataplane
    from conftest import GUIDE_LAB
    dp = build_dataplane(Cluster.load([GUIDE_LAB], proxy_mode="iptables"))
    ns = dp.state.netns("k8s-guide-worker")
    assert '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES' in ns.iptables
    web = dp.cluster.service("web")
    assert f'--comment "default/web cluster IP" -m tcp -p tcp -d {web.cluster_ip} --dport 80' in ns.iptables
    assert ns.sysctls["net.ipv4.conf.all.route_localnet"] == "1"
