"""Issue #7, part 3: NetworkPolicy enforcement in the dataplane (podnet.policy.enforce).

A differential test between two independent paths: the policy engine's verdict
(the semantics) and the simulator walking real packets through the rendered
iptables-save text and ipsets (kube-router's chains). For every pod pair -- on
the same node and across nodes, directly and through a ClusterIP -- and several
ports and protocols, the walk delivers (and its reply returns) exactly when the
engine allows; when it does not, the walk is rejected on the side the engine
names (the source's node for egress, the destination's for ingress), in that
pod's KUBE-POD-FW chain, after jumps naming the isolating policies.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import textwrap

import pytest

from podnet import Cluster
from podnet.dataplane import build_dataplane
from podnet.linux.ipset import IpsetStore
from podnet.linux.netfilter import Packet
from podnet.policy import PolicyEngine
from podnet.policy.enforce import pod_chain_name
from podnet.sim.trace import TraceRequest, trace

from conftest import run_podnet
from test_policy_matrix import model_yaml
from test_policy_semantics import THREE_TIERS, _random_policies

KIND = """\
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
name: np
nodes:
- role: control-plane
- role: worker
- role: worker
"""

# a host-network pod: node traffic under the plugin semantics (never selected, always its node)
HOSTNET = """\
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: x, labels: {pod: h}}
spec:
  nodeName: np-worker
  hostNetwork: true
  containers: [{name: c, image: agnhost, ports: [%s]}]
""" % ", ".join(f"{{containerPort: {n}, protocol: {p}}}" for n in (80, 81) for p in ("TCP", "UDP", "SCTP"))

PROBES = [(80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "SCTP")]


def services(namespaces=("x", "y", "z"), pods=("a", "b", "c")) -> str:
    """A ClusterIP Service in front of each pod."""
    return "---\n".join(textwrap.dedent(f"""\
        apiVersion: v1
        kind: Service
        metadata: {{name: s-{p}, namespace: {ns}}}
        spec:
          selector: {{pod: {p}}}
          ports: [{{name: t80, port: 8080, targetPort: 80}}, {{name: u80, port: 8080, targetPort: 80, protocol: UDP}}]
        """) for ns in namespaces for p in pods)


@pytest.fixture
def e2e(tmp_path):
    """e2e(policies) -> (cluster, dataplane, engine) for the e2e model on two workers."""
    def make(policies: str, extra: str = HOSTNET):
        (tmp_path / "kind.yaml").write_text(KIND)
        (tmp_path / "model.yaml").write_text(model_yaml() + "---\n" + services() + ("---\n" + extra if extra else ""))
        (tmp_path / "policies.yaml").write_text(textwrap.dedent(policies))
        cluster = Cluster.load([tmp_path])
        return cluster, build_dataplane(cluster), PolicyEngine(cluster)
    return make


def model_pods(cluster, namespaces=("x", "y", "z")):
    return sorted((p for p in cluster.pods if p.namespace in namespaces), key=lambda p: p.key)


# ---------------------------------------------------------------------------- the walk's verdict

def walk(dp, src, dst_ip, port: int, proto: str):
    """Every outcome of a connection from pod `src` to dst_ip:port: [(pod reached or None, branch)].

    A pod is reached when a socket of it took the connection, or when the packet got into its
    namespace and found nothing listening there (the policy let it through)."""
    any_ip = ipaddress.ip_address("0.0.0.0" if dst_ip.version == 4 else "::")
    pkt = Packet(any_ip, dst_ip, proto.lower(), 40000, port)
    result = trace(dp.state, TraceRequest(dp.netns_of_pod(src).name, pkt))
    out = []
    for b in result.branches:
        o = b.forward.outcome
        ns = dp.state.namespaces[o.ns]
        if o.delivered and o.listener and o.listener.owner:
            reached = o.listener.owner.split()[1]
        elif o.result == "rejected" and ns.kind == "pod" and "nothing listens" in o.reason:
            reached = ns.pod
        else:
            reached = None
        out.append((reached, b))
    return out


def check_blocked(branch, verdict, src, dst) -> None:
    """The walk stops where the engine says, in that pod's firewall chain, naming the policies."""
    o = branch.forward.outcome
    assert o.result == "rejected", (o.result, o.reason, verdict.reason)
    side = verdict.egress if verdict.dropped_at == "egress" else verdict.ingress
    pod = src if verdict.dropped_at == "egress" else dst
    assert o.node == pod.node_name, (o.node, verdict.reason)
    assert f"filter/{pod_chain_name(pod.namespace, pod.name)} #" in o.reason, (o.reason, verdict.reason)
    named = set(re.findall(r"run through nw policy ([\w.-]+)", o.reason))
    assert named == {p.split("/", 1)[1] for p in side.policies}, (o.reason, side.policies)


def differential(cluster, dp, engine, pods, probes=PROBES, via_services=True) -> int:
    """Compare every pair; returns how many walks were compared."""
    n = 0
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            for port, proto in probes:
                v = engine.allowed(src, dst, port, proto)
                for backend, branch in walk(dp, src, dst.pod_ip, port, proto):
                    n += 1
                    if v.allowed:
                        assert backend == dst.key, (src.key, dst.key, port, proto, branch.forward.outcome.reason)
                        if branch.forward.outcome.delivered:        # and the answer comes back
                            assert branch.reply is not None and branch.reply.outcome.delivered, (src.key, dst.key)
                    else:
                        assert backend is None, (src.key, dst.key, port, proto, v.reason)
                        check_blocked(branch, v, src, dst)
    if not via_services:
        return n
    # through each pod's ClusterIP: judged against the backend it is DNATed to
    for src in pods:
        if src.host_network:
            continue
        for svc in cluster.services:
            if not svc.name.startswith("s-"):
                continue
            for sp in svc.ports:
                for backend, branch in walk(dp, src, svc.cluster_ip, sp.port, sp.protocol):
                    target = next(p for p in pods if p.namespace == svc.namespace
                                  and p.meta.labels.get("pod") == svc.name[2:])
                    if target is src:
                        continue            # hairpin: see docs/networkpolicy.md
                    n += 1
                    v = engine.allowed(src, target, 80, sp.protocol)
                    assert (backend == target.key) == v.allowed, (src.key, svc.key, sp.protocol, v.reason,
                                                                  branch.forward.outcome.reason)
                    if not v.allowed:
                        check_blocked(branch, v, src, target)
    return n


# ---------------------------------------------------------------------------- the three tiers

THREE_TIER_EXTRAS = """
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  selector: {tier: db}
  ports: [{port: 5432, targetPort: pg}]
---
apiVersion: v1
kind: Service
metadata: {name: be, namespace: shop}
spec:
  selector: {tier: be}
  ports: [{port: 80, targetPort: 9090}]
"""


@pytest.fixture
def shop(tmp_path):
    (tmp_path / "kind.yaml").write_text(KIND)
    (tmp_path / "shop.yaml").write_text(THREE_TIERS + THREE_TIER_EXTRAS)
    cluster = Cluster.load([tmp_path])
    return cluster, build_dataplane(cluster), PolicyEngine(cluster), tmp_path


def test_three_tiers_fe_never_reaches_around_to_the_db(shop):
    cluster, dp, engine, _ = shop
    pods = model_pods(cluster, ("shop",))
    tier = {p.key: p.meta.labels["tier"] for p in pods}
    nodes = {p.node_name for p in pods}
    assert len(nodes) == 2, "the tiers spread over both workers: same-node and cross-node pairs"
    seen = {}
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            for port in (8080, 9090, 5432):
                v = engine.allowed(src, dst, port)
                for backend, branch in walk(dp, src, dst.pod_ip, port, "TCP"):
                    assert (backend == dst.key) == v.allowed, (src.key, dst.key, port, v.reason)
                    if not v.allowed:
                        check_blocked(branch, v, src, dst)
                    same = src.node_name == dst.node_name
                    seen.setdefault((tier[src.key], tier[dst.key], port, same), set()).add(v.allowed)
    assert seen[("fe", "be", 9090, True)] == seen[("fe", "be", 9090, False)] == {True}
    assert seen[("be", "db", 5432, True)] == seen[("be", "db", 5432, False)] == {True}
    assert seen[("fe", "db", 5432, True)] == seen[("fe", "db", 5432, False)] == {False}
    assert seen[("be", "fe", 8080, False)] == {True}       # nothing isolates fe's ingress or be's egress
    assert seen[("db", "be", 9090, True)] == {False}       # be admits only fe
    # and through the Services, every backend
    fe = next(p for p in pods if tier[p.key] == "fe")
    be = next(p for p in pods if tier[p.key] == "be")
    for src, svc, port, ok in ((fe, "shop/be", 80, True), (be, "shop/db", 5432, True), (fe, "shop/db", 5432, False)):
        outcomes = walk(dp, src, cluster.service(svc).cluster_ip, port, "TCP")
        assert len(outcomes) == 2                        # two backends each
        assert all((backend is not None) == ok for backend, _ in outcomes), (src.key, svc)


def test_fe_to_db_is_rejected_at_the_fe_with_the_policys_name_in_text_and_json(shop):
    cluster, dp, engine, path = shop
    fe = sorted((p for p in cluster.pods if p.name.startswith("fe-")), key=lambda p: p.name)[0]
    proc = run_podnet("trace", "-f", str(path), "--from", f"pod/{fe.key}", "--to", "svc/shop/db:5432")
    assert proc.returncode == 0, proc.stderr
    chain = pod_chain_name(fe.namespace, fe.name)
    finals = [l for l in proc.stdout.splitlines() if l.strip().startswith("=>")]
    assert len(finals) == 2 and all("rejected" in l and f"filter/{chain}" in l for l in finals), proc.stdout
    assert all("run through nw policy fe-egress" in l for l in finals)
    assert all(f"POD name:{fe.name} namespace: shop" in l for l in finals)
    # the hop shows the rules: the pod's chain, the policy's chain, the REJECT
    assert '--comment "run through nw policy fe-egress" -j KUBE-NWPLCY-' in proc.stdout
    proc = run_podnet("trace", "-f", str(path), "--from", f"pod/{fe.key}", "--to", "svc/shop/db:5432", "-o", "json")
    doc = json.loads(proc.stdout)
    for outcome in doc["outcomes"]:
        fwd = outcome["forward"]
        assert fwd["result"] == "rejected" and "fe-egress" in fwd["reason"]
        assert fwd["node"] == fe.node_name
        last = fwd["hops"][-2]                           # the FORWARD hop, before the final one
        assert last["stage"] == "FORWARD" and last["rules"][-1]["action"].startswith("REJECT")
        assert any("run through nw policy fe-egress" in r["rule"] for r in last["rules"])


def test_rules_are_kube_routers_and_merge_with_kube_proxys(shop):
    cluster, dp, engine, path = shop
    node = next(n for n in cluster.nodes if n.name == "np-worker")
    text = dp.state.netns(node.name).iptables
    lines = text.splitlines()
    filt = lines[lines.index("*filter"):]
    # the top-level jumps come first in the built-in chains, ahead of kube-proxy's
    for hook, chain in (("INPUT", "KUBE-ROUTER-INPUT"), ("FORWARD", "KUBE-ROUTER-FORWARD"),
                        ("OUTPUT", "KUBE-ROUTER-OUTPUT")):
        first = next(l for l in filt if l.startswith(f"-A {hook} "))
        assert re.fullmatch(rf'-A {hook} -m comment --comment "kube-router netpol - [A-Z2-7]{{16}}" -j {chain}',
                            first), first
    assert any(l.startswith("-A FORWARD") and "KUBE-FORWARD" in l for l in filt)        # kube-proxy's, kept
    assert any(l.startswith("-A KUBE-SERVICES") for l in lines[:lines.index("*filter")])   # nat untouched
    # one firewall chain per local pod, none for pods elsewhere
    local = [p for p in cluster.pods_on(node.name) if not p.host_network]
    chains = {l.split()[0][1:] for l in filt if l.startswith(":KUBE-POD-FW-")}
    assert chains == {pod_chain_name(p.namespace, p.name) for p in local}
    db = next(p for p in local if p.name.startswith("db-"))
    fw = [l for l in filt if l.startswith(f"-A {pod_chain_name(db.namespace, db.name)} ")]
    assert "--ctstate RELATED,ESTABLISHED -j ACCEPT" in fw[0]
    assert "-m addrtype --src-type LOCAL -j ACCEPT" in fw[1]
    assert any('"run through nw policy db-from-be" -j KUBE-NWPLCY-' in l and f"-d {db.pod_ip}/32" in l for l in fw)
    assert any("default egress network policy" in l for l in fw)           # db's egress is not isolated
    assert any(f"REJECT traffic destined for POD name:{db.name} namespace: shop" in l and "-j REJECT" in l
               for l in fw)
    # the policy chains match ipsets of pod IPs, never devices
    assert not re.search(r"KUBE-(ROUTER|POD-FW|NWPLCY)\S* .*-[io] ", "\n".join(filt))
    sets = IpsetStore.parse(dp.state.netns(node.name).ipsets)
    be_ips = {str(p.pod_ip) for p in cluster.pods if p.name.startswith("be-")}
    assert any({str(k[0]) for k in s.members} == be_ips and s.name.startswith("KUBE-SRC-")
               for s in sets.sets.values())
    # every node holds the same sets
    assert len({dp.state.netns(n.name).ipsets for n in cluster.nodes}) == 1
    # deterministic
    again = build_dataplane(Cluster.load([path]))
    assert again.state.netns(node.name).iptables == text


def test_no_policies_no_rules(e2e):
    cluster, dp, _ = e2e("")
    for node in cluster.nodes:
        assert "KUBE-ROUTER" not in dp.state.netns(node.name).iptables
        assert "KUBE-SRC-" not in dp.state.netns(node.name).ipsets


# ---------------------------------------------------------------------------- the e2e cases

E2E_CASES = {
    "default-deny-ingress": """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-ingress, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        """,
    "deny-egress": """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-egress, namespace: x}
        spec: {podSelector: {}, policyTypes: [Egress]}
        """,
    "ingress-and-egress-in-one-policy": """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: both, namespace: x}
        spec:
          podSelector: {}
          policyTypes: [Ingress, Egress]
          ingress: [{from: [{podSelector: {}}]}]
          egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]
        """,
    "named-ports": """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: named, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress:
          - from: [{namespaceSelector: {matchLabels: {ns: y}}}]
            ports: [{port: serve-80-tcp}, {port: serve-81-sctp, protocol: SCTP}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: egress-named, namespace: y}
        spec:
          podSelector: {matchLabels: {pod: b}}
          policyTypes: [Egress]
          egress: [{ports: [{port: serve-80-udp, protocol: UDP}, {port: serve-81-tcp}]}]
        """,
    "pod-and-namespace-selector": """
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: and-or, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: b}}
          ingress:
          - from: [{namespaceSelector: {matchLabels: {ns: y}}, podSelector: {matchLabels: {pod: a}}}]
          - from: [{namespaceSelector: {matchLabels: {ns: z}}}, {podSelector: {matchLabels: {pod: c}}}]
            ports: [{port: 80, endPort: 81}]
        """,
}


@pytest.mark.parametrize("case", sorted(E2E_CASES))
def test_e2e_cases_rendered_rules_agree_with_the_engine(e2e, case):
    cluster, dp, engine = e2e(E2E_CASES[case])
    pods = model_pods(cluster)
    assert len({p.node_name for p in pods}) == 2
    assert differential(cluster, dp, engine, pods) > 400


def test_ip_block_with_except(e2e):
    # e2e "should enforce except clause while egress access to server in CIDR block", and the
    # same on ingress; the hostNetwork pod's node address sits in another ipBlock
    cluster, _, _ = e2e("")
    b, c = cluster.pod("x/b").pod_ip, cluster.pod("y/c").pod_ip
    net = ipaddress.ip_network(f"{b}/24", strict=False)
    node_ip = cluster.find_node("np-worker").internal_ip
    cluster, dp, engine = e2e(f"""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: egress-cidr-except, namespace: x}}
        spec:
          podSelector: {{matchLabels: {{pod: a}}}}
          policyTypes: [Egress]
          egress:
          - to: [{{ipBlock: {{cidr: "{net}", except: ["{b}/32"]}}}}, {{ipBlock: {{cidr: "{node_ip}/32"}}}}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: ingress-cidr-except, namespace: y}}
        spec:
          podSelector: {{}}
          ingress:
          - from: [{{ipBlock: {{cidr: "10.244.0.0/16", except: ["{c}/32", "10.244.1.0/24"]}}}}]
            ports: [{{port: 80}}]
        """)
    pods = model_pods(cluster)
    assert differential(cluster, dp, engine, pods) > 400
    sets = IpsetStore.parse(dp.state.netns("np-worker").ipsets)
    nomatch = [m.entry for s in sets.sets.values() for m in s.members.values() if m.nomatch]
    assert f"{b}/32" in nomatch and "10.244.1.0/24" in nomatch        # kube-router's nomatch entries


def test_egress_to_dns_only(e2e):
    cluster, dp, engine = e2e("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: dns-only, namespace: x}
        spec:
          podSelector: {}
          policyTypes: [Egress]
          egress:
          - to:
            - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
              podSelector: {matchLabels: {k8s-app: kube-dns}}
            ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
        """)
    pods = model_pods(cluster)
    coredns = [p for p in cluster.pods if p.meta.labels.get("k8s-app") == "kube-dns"]
    assert differential(cluster, dp, engine, pods, via_services=False) > 300
    # the cluster DNS through its ClusterIP: allowed on 53, nothing else
    dns_ip = cluster.service("kube-system/kube-dns").cluster_ip
    for src in pods:
        if src.host_network:
            continue
        for port, proto, ok in ((53, "UDP", True), (53, "TCP", True), (9153, "TCP", src.namespace != "x")):
            outcomes = walk(dp, src, dns_ip, port, proto)
            for backend, branch in outcomes:
                assert (backend is not None) == ok, (src.key, port, proto, branch.forward.outcome.reason)
                if backend is not None:
                    assert backend in {p.key for p in coredns}
    x_a = cluster.pod("x/a")
    assert all(b is None for b, _ in walk(dp, x_a, cluster.pod("y/a").pod_ip, 53, "UDP"))


@pytest.mark.parametrize("seed", range(6))
def test_random_policies_rendered_rules_agree_with_the_engine(e2e, seed):
    """The engine's own random policy generator (selectors, both peer kinds in one peer,
    ipBlocks with excepts, named ports, endPort, protocol-only ports, all policyTypes)."""
    cluster, _, _ = e2e("")
    ips = [str(p.pod_ip) for p in model_pods(cluster)]
    cluster, dp, engine = e2e(_random_policies(random.Random(seed), ips))
    pods = model_pods(cluster)
    assert differential(cluster, dp, engine, pods, probes=[(80, "TCP"), (81, "UDP"), (80, "SCTP")]) > 200


def test_a_pod_may_always_be_reached_from_its_node(e2e):
    cluster, dp, engine = e2e(E2E_CASES["default-deny-ingress"])
    a = cluster.pod("x/a")
    node = dp.node_netns(a.node_name)
    pkt = Packet(ipaddress.ip_address("0.0.0.0"), a.pod_ip, "tcp", 40000, 80)
    result = trace(dp.state, TraceRequest(node.name, pkt))
    assert [b.forward.outcome.result for b in result.branches] == ["delivered"]
    assert "traffic to pods when source is the pod" in json.dumps([h.as_dict() for h in result.branches[0].forward.hops])
    other = next(n for n in cluster.nodes if n.name not in (a.node_name,) and n.name != "np-control-plane")
    result = trace(dp.state, TraceRequest(other.name, pkt))
    assert [b.forward.outcome.result for b in result.branches] == ["rejected"]
    assert not engine.allowed(other.internal_ip, a, 80).allowed and engine.allowed(
        cluster.find_node(a.node_name).internal_ip, a, 80).allowed
