"""Issue #7, parts 1 and 2: the Kubernetes e2e netpol model and its truth tables.

As in test/e2e/network/netpol: namespaces x, y, z (labelled ns=x, ...), pods a, b, c
in each (labelled pod=a, ...), every pod serving ports 80 and 81 on TCP, UDP and
SCTP under names like serve-80-tcp. Each test applies the policies of one e2e
case and compares the whole 9x9 table, the diagonal (loopback) excepted, as the
e2e tests do.
"""

import ipaddress
import textwrap

import pytest

from podnet import Cluster
from podnet.policy import PolicyEngine, reachability

from conftest import run_podnet

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
ALL = [f"{ns}/{p}" for ns in NAMESPACES for p in PODS]


def model_yaml() -> str:
    docs = []
    for ns in NAMESPACES:
        docs.append(f"apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{ns: {ns}}}}}\n")
        for pod in PODS:
            ports = ", ".join(f"{{name: serve-{n}-{proto.lower()}, containerPort: {n}, protocol: {proto}}}"
                              for n in (80, 81) for proto in ("TCP", "UDP", "SCTP"))
            docs.append(textwrap.dedent(f"""\
                apiVersion: v1
                kind: Pod
                metadata: {{name: {pod}, namespace: {ns}, labels: {{pod: {pod}}}}}
                spec:
                  containers: [{{name: cont, image: agnhost, ports: [{ports}]}}]
                """))
    return "---\n".join(docs)


@pytest.fixture
def model(tmp_path):
    """model(policies_yaml, semantics="plugin") -> (engine, cluster)."""
    def make(policies: str, semantics: str = "plugin"):
        (tmp_path / "model.yaml").write_text(model_yaml())
        (tmp_path / "policies.yaml").write_text(textwrap.dedent(policies))
        cluster = Cluster.load([tmp_path])
        return PolicyEngine(cluster, semantics), cluster
    return make


def table(engine, cluster, port=80, protocol="TCP") -> dict[tuple[str, str], bool]:
    pods = [p for p in cluster.pods if p.namespace in NAMESPACES]
    m = reachability(engine, pods, port, protocol)
    return {(s, d): m.get(s, d) for s in m.names for d in m.names if s != d}


def expect(allowed) -> dict[tuple[str, str], bool]:
    """The expected table from a predicate allowed(src, dst)."""
    return {(s, d): bool(allowed(s, d)) for s in ALL for d in ALL if s != d}


def ns(pod: str) -> str:
    return pod.split("/")[0]


def test_no_policies_everything_allowed(model):
    engine, cluster = model("")
    assert table(engine, cluster) == expect(lambda s, d: True)


def test_default_deny_ingress(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-ingress, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        """)
    assert table(engine, cluster) == expect(lambda s, d: ns(d) != "x")


def test_default_deny_all_ingress_and_egress(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-all, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
        """)
    assert table(engine, cluster) == expect(lambda s, d: ns(s) != "x" and ns(d) != "x")


def test_deny_egress_only(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-egress, namespace: x}
        spec: {podSelector: {}, policyTypes: [Egress]}
        """)
    assert table(engine, cluster) == expect(lambda s, d: ns(s) != "x")


def test_policy_types_default_to_ingress_plus_egress_when_egress_rules_exist(model):
    # no policyTypes, egress rules present: the API defaults to [Ingress, Egress]
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: egress-to-y, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
        """)
    assert [p.types for p in engine.policies] == [("ingress", "egress")]
    assert table(engine, cluster) == expect(
        lambda s, d: (s != "x/a" or ns(d) == "y") and d != "x/a")


def test_allow_from_same_namespace(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-same-ns, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress: [{from: [{podSelector: {}}]}]
        """)
    assert table(engine, cluster) == expect(lambda s, d: d != "x/a" or ns(s) == "x")


def test_allow_from_namespace_by_label(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-ns-y, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress:
          - from:
            - namespaceSelector:
                matchExpressions: [{key: ns, operator: In, values: [y]}]
        """)
    assert table(engine, cluster) == expect(lambda s, d: d != "x/a" or ns(s) == "y")


def test_pod_and_namespace_selector_in_one_peer_is_an_and(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-y-b, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {ns: y}}
              podSelector: {matchLabels: {pod: b}}
        """)
    assert table(engine, cluster) == expect(lambda s, d: d != "x/a" or s == "y/b")


def test_pod_and_namespace_selector_in_two_peers_is_an_or(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-y-or-b, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress:
          - from:
            - namespaceSelector: {matchLabels: {ns: y}}
            - podSelector: {matchLabels: {pod: b}}
        """)
    # the podSelector peer alone means pod=b *in the policy's namespace*
    assert table(engine, cluster) == expect(lambda s, d: d != "x/a" or ns(s) == "y" or s == "x/b")


def test_named_ports_resolve_on_the_destination(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-81-by-name, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress: [{ports: [{port: serve-81-tcp}, {port: serve-80-udp, protocol: UDP}]}]
        """)
    assert table(engine, cluster, 81) == expect(lambda s, d: True)
    assert table(engine, cluster, 80) == expect(lambda s, d: d != "x/a")
    assert table(engine, cluster, 80, "UDP") == expect(lambda s, d: True)
    assert table(engine, cluster, 81, "UDP") == expect(lambda s, d: d != "x/a")


def test_named_port_the_pod_does_not_declare_allows_nothing(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-unknown-name, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress: [{ports: [{port: serve-81-tcp, protocol: UDP}]}]   # named for TCP only
        """)
    a = cluster.pod("x/a")
    assert engine.connections(cluster.pod("y/b"), a).is_empty


def test_egress_named_port_resolves_per_destination_pod(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: egress-by-name, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Egress]
          egress: [{ports: [{port: serve-80-tcp}]}]
        """)
    assert table(engine, cluster, 80) == expect(lambda s, d: True)
    assert table(engine, cluster, 81) == expect(lambda s, d: s != "x/a")
    # towards addresses outside the cluster a name means nothing
    assert not engine.allowed(cluster.pod("x/a"), "8.8.8.8", 80).allowed


def test_end_port_ranges(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-range, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress: [{ports: [{port: 81, endPort: 90, protocol: TCP}]}]
        """)
    assert table(engine, cluster, 80) == expect(lambda s, d: d != "x/a")
    for port in (81, 85, 90):
        assert table(engine, cluster, port) == expect(lambda s, d: True)
    assert table(engine, cluster, 91) == expect(lambda s, d: d != "x/a")
    assert str(engine.connections(cluster.pod("y/a"), cluster.pod("x/a"))) == "TCP 81-90"


def test_ip_block_with_except_on_egress(model, tmp_path):
    # e2e "should enforce except clause while egress access to server in CIDR block"
    engine, cluster = model("")
    b_ip = cluster.pod("x/b").pod_ip
    net = ipaddress.ip_network(f"{b_ip}/24", strict=False)
    engine, cluster = model(f"""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: egress-cidr-except, namespace: x}}
        spec:
          podSelector: {{matchLabels: {{pod: a}}}}
          policyTypes: [Egress]
          egress:
          - to: [{{ipBlock: {{cidr: "{net}", except: ["{b_ip}/32"]}}}}]
        """)
    assert all(p.pod_ip in net for p in cluster.pods if p.namespace in NAMESPACES)
    assert table(engine, cluster) == expect(lambda s, d: s != "x/a" or d != "x/b")
    # netpol-analyzer's model: ipBlocks never select pods, so x/a reaches no pod at all
    analyzer, same_inputs = model(tmp_path.joinpath("policies.yaml").read_text(), "analyzer")
    assert table(analyzer, same_inputs) == expect(lambda s, d: s != "x/a")


def test_ip_block_on_ingress(model):
    engine, cluster = model("")
    c_ip = cluster.pod("y/c").pod_ip
    engine, cluster = model(f"""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {{name: ingress-cidr, namespace: x}}
        spec:
          podSelector: {{matchLabels: {{pod: a}}}}
          ingress: [{{from: [{{ipBlock: {{cidr: "{c_ip}/32"}}}}]}}]
        """)
    assert table(engine, cluster) == expect(lambda s, d: d != "x/a" or s == "y/c")


def test_egress_to_dns_only(model, tmp_path):
    engine, cluster = model("""
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
    assert table(engine, cluster) == expect(lambda s, d: ns(s) != "x")
    coredns = [p for p in cluster.pods if p.meta.labels.get("k8s-app") == "kube-dns"]
    assert len(coredns) == 2
    a = cluster.pod("x/a")
    for proto in ("UDP", "TCP"):
        v = engine.allowed(a, coredns[0], 53, proto)
        assert v.allowed and v.deciding == ("x/dns-only egress rule #1",)
    assert not engine.allowed(a, coredns[0], 9153).allowed
    assert not engine.allowed(a, "1.1.1.1", 53, "UDP").allowed
    # the matrix with the system pods shows the same
    m = reachability(engine, [a, cluster.pod("y/a")] + coredns, 53, "UDP")
    assert m.get("x/a", coredns[0].key) and m.get("x/a", coredns[1].key)
    assert not m.get("x/a", "y/a") and m.get("y/a", "x/a")


def test_ingress_and_egress_together(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: both, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Ingress, Egress]
          ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
          egress: [{to: [{podSelector: {matchLabels: {pod: c}}}]}]
        """)
    assert table(engine, cluster) == expect(
        lambda s, d: (d != "x/a" or s == "x/b") and (s != "x/a" or d == "x/c"))


def test_policies_are_additive(model):
    engine, cluster = model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: allow-from-z, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress: [{from: [{namespaceSelector: {matchLabels: {ns: z}}}], ports: [{port: 80}]}]
        """)
    assert table(engine, cluster, 80) == expect(lambda s, d: ns(d) != "x" or (d == "x/a" and ns(s) == "z"))
    assert table(engine, cluster, 81) == expect(lambda s, d: ns(d) != "x")


def test_matrix_command_prints_the_e2e_table(model, tmp_path):
    model("""
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny-ingress, namespace: x}
        spec: {podSelector: {}, policyTypes: [Ingress]}
        """)
    out = run_podnet("policy", "matrix", "-f", str(tmp_path), "--port", "80", check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "\t".join(["-"] + ALL)
    assert lines[1] == "\t".join(["x/a", ".", "X", "X", ".", ".", ".", ".", ".", "."])
    assert lines[4] == "\t".join(["y/a", "X", "X", "X", ".", ".", ".", ".", ".", "."])
