"""Issue #7, parts 1 and 2: NetworkPolicy semantics, validation, verdicts, explanations
and the per-pod views an enforcement renderer consumes."""

import ipaddress

import pytest

from podnet import Cluster, InputError
from podnet.policy import ALL_CONNECTIONS, NO_CONNECTIONS, Connections, PolicyEngine, connection_list
from podnet.policy import addresses
from podnet.policy.model import EGRESS, INGRESS

from conftest import run_podnet

# ---------------------------------------------------------------- connection sets


def test_connections_text_is_netpol_analyzers():
    c = Connections.of("UDP", 9090) | Connections.of("TCP", 8080, 8081) | Connections.of("SCTP", 7070)
    assert str(c) == "SCTP 7070,TCP 8080-8081,UDP 9090"
    assert str(Connections.of("TCP", 10053) | Connections.of("TCP", 10054)) == "TCP 10053-10054"
    assert str(Connections.of("TCP", 9090) | Connections.of("TCP", 8080)) == "TCP 8080,9090"
    assert str(NO_CONNECTIONS) == "No Connections"
    full = Connections.union(Connections.all_ports(p) for p in ("TCP", "UDP", "SCTP"))
    assert full.is_all and str(full) == "All Connections" and full == ALL_CONNECTIONS
    assert str(Connections.all_ports("TCP")) == "TCP 1-65535"


def test_connections_algebra():
    a = Connections.of("TCP", 80, 90) | Connections.of("UDP", 53)
    b = Connections.of("TCP", 85, 100)
    assert str(a & b) == "TCP 85-90"
    assert (a & ALL_CONNECTIONS) == a and (a | ALL_CONNECTIONS).is_all
    assert (a & Connections.of("SCTP", 1)).is_empty
    assert a.contains("tcp", 80) and not a.contains("TCP", 91) and a.contains("UDP", 53)


def test_atomic_ranges_cut_at_every_ipblock_boundary():
    ten = addresses.block_ranges(ipaddress.ip_network("0.0.0.0/0"),
                                 [ipaddress.ip_network("10.0.0.0/8")])
    ranges = addresses.atomic_ranges([ten])
    assert [addresses.format_range(r) for r in ranges] == [
        "0.0.0.0-9.255.255.255", "10.0.0.0-10.255.255.255", "11.0.0.0-255.255.255.255"]
    assert addresses.range_cidrs(ranges[1]) == [ipaddress.ip_network("10.0.0.0/8")]


# ---------------------------------------------------------------- the three tiers

THREE_TIERS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: fe, namespace: shop}
spec:
  replicas: 3
  selector: {matchLabels: {tier: fe}}
  template:
    metadata: {labels: {tier: fe}}
    spec: {containers: [{name: web, image: nginx, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: be, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {tier: be}}
  template:
    metadata: {labels: {tier: be}}
    spec: {containers: [{name: api, image: api, ports: [{name: api, containerPort: 9090}]}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {tier: db}}
  template:
    metadata: {labels: {tier: db}}
    spec: {containers: [{name: pg, image: postgres, ports: [{name: pg, containerPort: 5432}]}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-be, namespace: shop}
spec:
  podSelector: {matchLabels: {tier: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {tier: be}}}]
    ports: [{port: pg}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: be-from-fe, namespace: shop}
spec:
  podSelector: {matchLabels: {tier: be}}
  ingress:
  - from: [{podSelector: {matchLabels: {tier: fe}}}]
    ports: [{port: 9090, protocol: TCP}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: fe-egress, namespace: shop}
spec:
  podSelector: {matchLabels: {tier: fe}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {tier: be}}}]
    ports: [{port: api}]
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{port: 53, protocol: UDP}]
"""


@pytest.fixture
def shop(manifest):
    path = manifest("shop.yaml", THREE_TIERS)
    cluster = Cluster.load([path])
    return cluster, PolicyEngine(cluster), path


def pod_of(cluster, prefix):
    return sorted((p for p in cluster.pods if p.name.startswith(prefix)), key=lambda p: p.name)[0]


def test_fe_never_reaches_around_to_the_db(shop):
    cluster, engine, _ = shop
    fe, be, db = pod_of(cluster, "fe-"), pod_of(cluster, "be-"), pod_of(cluster, "db-")
    v = engine.allowed(fe, db, 5432)
    assert not v.allowed
    assert v.dropped_at == EGRESS                      # fe's own egress policy stops it first
    assert v.egress.policies == ("shop/fe-egress",)
    assert not v.ingress.allowed and v.ingress.policies == ("shop/db-from-be",)
    assert v.deciding == ("shop/fe-egress", "shop/db-from-be")
    assert "blocked on egress of shop/fe-" in v.reason
    ok = engine.allowed(be, db, 5432)
    assert ok.allowed and ok.deciding == ("shop/db-from-be ingress rule #1",)
    chain = engine.allowed(fe, be, 9090)
    assert chain.deciding == ("shop/fe-egress egress rule #1", "shop/be-from-fe ingress rule #1")
    # IPs stand for their pods
    assert engine.allowed(str(be.pod_ip), str(db.pod_ip), 5432).allowed


def test_three_tier_connection_list(shop):
    cluster, engine, _ = shop
    lines = [str(c) for c in connection_list(cluster, semantics="plugin", engine=engine).connections]
    assert "shop/fe[Deployment] => shop/be[Deployment] : TCP 9090" in lines
    assert "shop/be[Deployment] => shop/db[StatefulSet] : TCP 5432" in lines
    assert "0.0.0.0-255.255.255.255[External] => shop/fe[Deployment] : All Connections" in lines
    # fe may only reach be and the cluster's DNS pods (not reported: system pods)
    assert [line for line in lines if line.startswith("shop/fe[Deployment]")] == [
        "shop/fe[Deployment] => shop/be[Deployment] : TCP 9090"]
    assert not any(line.startswith("shop/fe[Deployment] => shop/db") for line in lines)
    assert not any(line.startswith("0.0.0.0") and "shop/db" in line for line in lines)


def test_replicas_share_one_equivalence_class(shop):
    cluster, engine, _ = shop
    fe_pods = [p for p in cluster.pods if p.name.startswith("fe-")]
    assert len(fe_pods) == 3 and len({id(engine.class_of(p)) for p in fe_pods}) == 1
    # the StatefulSet's per-pod labels are not looked at by any policy
    db_pods = [p for p in cluster.pods if p.name.startswith("db-")]
    assert len({id(engine.class_of(p)) for p in db_pods}) == 1


def test_explain_names_policies_rules_and_the_drop_point(shop):
    cluster, _, path = shop
    fe, db = pod_of(cluster, "fe-"), pod_of(cluster, "db-")
    out = run_podnet("policy", "explain", "-f", str(path), fe.key, db.key, "5432", check=True).stdout
    assert "(shop/fe[Deployment])" in out and "(shop/db[StatefulSet])" in out
    assert "isolated by shop/fe-egress" in out
    assert "egress rule #1: to podSelector tier=be (in the policy's namespace); ports TCP api" in out
    assert f"no: {db.key} does not match podSelector tier=be" in out
    assert "isolated by shop/db-from-be" in out
    assert "Verdict: BLOCKED - dropped on egress, as it leaves" in out
    assert "ingress of shop/db-0 would drop it too (shop/db-from-be)" in out
    # a workload name stands for its first pod; a named port resolves on the destination
    out = run_podnet("policy", "explain", "-f", str(path), "shop/be[Deployment]", "db-1", "pg/tcp",
                     check=True).stdout
    assert "TCP/5432" in out and "Verdict: ALLOWED by shop/db-from-be ingress rule #1" in out
    bad = run_podnet("policy", "explain", "-f", str(path), "fe", "db-0", "80/icmp")
    assert bad.returncode == 1 and bad.stderr.strip() == "error: PORT: unknown protocol 'icmp' (tcp, udp or sctp)"


def test_policies_selecting_a_pod_for_the_other_direction_are_named(shop):
    cluster, engine, _ = shop
    fe, be = pod_of(cluster, "fe-"), pod_of(cluster, "be-")
    v = engine.allowed(fe, be, 9090)
    assert v.egress.bystanders == ()
    # fe-egress selects fe for Egress only: fe's ingress is open, and explain says why
    w = engine.allowed(be, fe, 8080)
    assert w.allowed and not w.ingress.isolated and w.ingress.bystanders == ("shop/fe-egress",)


def test_ingress_view_for_renderers(shop):
    cluster, engine, _ = shop
    db, be = pod_of(cluster, "db-"), [p for p in cluster.pods if p.name.startswith("be-")]
    view = engine.ingress_view(db)
    assert view.isolated and view.policies == ("shop/db-from-be",)
    (entry,) = view.entries
    assert str(entry.rule) == "shop/db-from-be ingress rule #1"
    assert str(entry.connections) == "TCP 5432"
    assert sorted(p.name for p in entry.pods) == sorted(p.name for p in be)
    assert entry.addresses() == sorted(ipaddress.ip_network(p.pod_ip) for p in be)
    node = cluster.node(db.node_name)
    assert view.own_node_ips == tuple(node.internal_ips)
    assert not engine.egress_view(db).isolated


def test_egress_view_resolves_named_ports_per_destination(shop):
    cluster, engine, _ = shop
    fe = pod_of(cluster, "fe-")
    view = engine.egress_view(fe)
    assert view.isolated and not view.own_node_ips
    by_rule = {}
    for e in view.entries:
        by_rule.setdefault(e.rule.index, []).append(e)
    (to_be,) = by_rule[0]
    assert str(to_be.connections) == "TCP 9090" and all(p.name.startswith("be-") for p in to_be.pods)
    (dns,) = by_rule[1]
    assert str(dns.connections) == "UDP 53"
    assert sorted(p.name for p in dns.pods) == sorted(p.name for p in cluster.pods
                                                       if p.meta.labels.get("k8s-app") == "kube-dns")


def test_list_cli_shows_the_story(shop):
    _, _, path = shop
    out = run_podnet("policy", "list", "-f", str(path), check=True).stdout.splitlines()
    assert "shop/be[Deployment] => shop/db[StatefulSet] : TCP 5432" in out
    assert not any(line.startswith("shop/fe[Deployment] => shop/db") for line in out)


# ---------------------------------------------------------------- host network, nodes

HOST = """
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: default, labels: {app: agent}}
spec:
  hostNetwork: true
  containers: [{name: a, image: agent}]
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {containers: [{name: w, image: nginx}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-agent, namespace: default}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress: [{from: [{podSelector: {matchLabels: {app: agent}}}]}]
"""


def test_host_network_pods_under_both_semantics(manifest):
    cluster = Cluster.load([manifest("host.yaml", HOST)])
    agent, web = cluster.pod("agent"), cluster.pod("web")
    assert agent.pod_ips == cluster.node(agent.node_name).internal_ips
    plugin = PolicyEngine(cluster, "plugin")
    analyzer = PolicyEngine(cluster, "analyzer")
    # plugin: the host-network pod is its node. The policy's podSelector cannot select it,
    # neither as a target (its egress stays open) nor as a peer; it reaches web only
    # because a pod's own node may always connect to it.
    v = plugin.allowed(agent, web, 80)
    assert v.allowed and not v.egress.applies
    assert "own node" in v.ingress.note and v.ingress.allowed_by == ()
    assert plugin.ingress_view(agent).applies is False
    # analyzer: an ordinary pod, selected on both sides; web's ingress rule lets it in,
    # but agent's own egress is isolated by the same policy
    w = analyzer.allowed(agent, web, 80)
    assert not w.allowed and w.dropped_at == EGRESS
    assert analyzer.allowed(web, agent, 80).allowed is False


def test_own_node_exemption_applies_to_node_ips_only(manifest):
    cluster = Cluster.load([manifest("host.yaml", HOST)])
    engine = PolicyEngine(cluster)
    web = cluster.pod("web")
    node_ip = cluster.node(web.node_name).internal_ip
    v = engine.allowed(str(node_ip), web, 8080)
    assert v.allowed and v.src.kind == "node" and "own node" in v.ingress.note
    assert not engine.allowed("192.0.2.1", web, 8080).allowed


# ---------------------------------------------------------------- validation

POLICY = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: bad, namespace: default}}
spec:
{spec}
"""

BAD_SPECS = [
    ("  podSelector: {matchExpressions: [{key: app, operator: Equals, values: [a]}]}",
     "spec.podSelector.matchExpressions[0].operator: must be one of In, NotIn, Exists, DoesNotExist, "
     "got 'Equals'"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]",
     "spec.ingress[0].ports[0].port: must be between 1 and 65535, got 70000"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: 0}]}]",
     "spec.ingress[0].ports[0].port: must be between 1 and 65535, got 0"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: 80, protocol: ICMP}]}]",
     "spec.ingress[0].ports[0].protocol: must be one of TCP, UDP, SCTP, got 'ICMP'"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: 90, endPort: 80}]}]",
     "spec.ingress[0].ports[0].endPort: must be at least port (90), got 80"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: http, endPort: 80}]}]",
     "spec.ingress[0].ports[0].endPort: may not be used with a named port ('http')"),
    ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.300/8}}]}]",
     "spec.egress[0].to[0].ipBlock.cidr: not a CIDR: '10.0.0.300/8'"),
    ("  podSelector: {}\n  egress: [{to: [{ipBlock: {cidr: 10.1.2.3}}]}]",
     "spec.egress[0].to[0].ipBlock.cidr: not a CIDR: '10.1.2.3' (write 10.1.2.3/32 for one address)"),
    ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 192.168.0.0/16, except: [10.1.0.0/16]}}]}]",
     "spec.ingress[0].from[0].ipBlock.except[0]: 10.1.0.0/16 is not strictly inside the cidr 192.168.0.0/16"),
    ("  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
     "spec.ingress[0].from[0].ipBlock: may not be combined with podSelector or namespaceSelector"),
    ("  podSelector: {}\n  ingress: [{from: [{}]}]",
     "spec.ingress[0].from[0]: a peer needs podSelector, namespaceSelector or ipBlock"),
    ("  podSelector: {}\n  policyTypes: [Ingress, Both]",
     "spec.policyTypes[1]: must be Ingress or Egress, got 'Both'"),
    ("  podSelector: {}\n  ingress: [{ports: [{port: Not_A_Name}]}]",
     "spec.ingress[0].ports[0].port: not a valid port name 'Not_A_Name' (lowercase letters, digits "
     "and '-', at most 15 characters, at least one letter)"),
]


@pytest.mark.parametrize("spec,message", BAD_SPECS, ids=[m.split(":")[0] for _, m in BAD_SPECS])
def test_invalid_policies_name_file_object_and_field(manifest, spec, message):
    path = manifest("bad.yaml", POLICY.format(spec=spec))
    cluster = Cluster.load([path])
    with pytest.raises(InputError) as err:
        PolicyEngine(cluster)
    assert str(err.value) == f"{path}: NetworkPolicy default/bad: {message}"


def test_invalid_policy_on_the_command_line_is_one_line(manifest):
    path = manifest("bad.yaml", POLICY.format(spec="  podSelector: {}\n  ingress: [{ports: [{port: 70000}]}]"))
    proc = run_podnet("policy", "list", "-f", str(path))
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"error: {path}: NetworkPolicy default/bad: spec.ingress[0].ports[0].port: "
        "must be between 1 and 65535, got 70000"]


def test_duplicate_policy(manifest):
    path = manifest("dup.yaml", POLICY.format(spec="  podSelector: {}") + "---" + POLICY.format(
        spec="  podSelector: {}"))
    with pytest.raises(InputError, match="NetworkPolicy default/bad: defined twice"):
        PolicyEngine(Cluster.load([path]))


# ---------------------------------------------------------------- analysis details

def test_label_gap_that_matters_is_reported_and_unioned(manifest):
    path = manifest("gap.yaml", """
        apiVersion: v1
        kind: Pod
        metadata:
          name: p1
          labels: {role: reader}
          ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: rs, controller: true}]
        spec: {containers: [{name: c, image: i}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata:
          name: p2
          labels: {role: writer}
          ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: rs, controller: true}]
        spec: {containers: [{name: c, image: i}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: db, labels: {app: db}}
        spec: {containers: [{name: c, image: i}]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: db}
        spec:
          podSelector: {matchLabels: {app: db}}
          ingress: [{from: [{podSelector: {matchLabels: {role: writer}}}], ports: [{port: 5432}]}]
        """)
    result = connection_list(Cluster.load([path]))
    assert result.warnings == ["pods of default/rs[ReplicaSet] differ in labels or named ports that "
                               "policies look at; its lines show what any of its pods may do"]
    assert "default/rs[ReplicaSet] => default/db[Pod] : TCP 5432" in map(str, result.connections)


def test_ipv6_blocks_add_the_ipv6_space(manifest):
    path = manifest("v6.yaml", """
        apiVersion: v1
        kind: Pod
        metadata: {name: web, labels: {app: web}}
        spec: {containers: [{name: c, image: i}]}
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: v6}
        spec:
          podSelector: {}
          ingress: [{from: [{ipBlock: {cidr: "2001:db8::/32"}}]}]
        """)
    lines = [str(c) for c in connection_list(Cluster.load([path])).connections]
    assert lines == [
        "2001:db8::-2001:db8:ffff:ffff:ffff:ffff:ffff:ffff[External] => default/web[Pod] : All Connections",
        "default/web[Pod] => 0.0.0.0-255.255.255.255[External] : All Connections",
        "default/web[Pod] => ::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff[External] : All Connections",
    ]


def test_directions_and_defaults_of_parsed_policies(shop):
    _, engine, _ = shop
    db = engine.policy("shop/db-from-be")
    assert db.types == (INGRESS,) and db.ingress[0].ports[0].protocol == "TCP"
    assert engine.policy("shop/fe-egress").types == (EGRESS,)


# ---------------------------------------------------------------- two paths agree

def _random_policies(rng, ips) -> str:
    pods, namespaces = ["a", "b", "c"], ["x", "y", "z"]

    def selector():
        kind = rng.choice(["empty", "labels", "in", "notin", "exists"])
        if kind == "empty":
            return "{}"
        if kind == "labels":
            return f"{{matchLabels: {{pod: {rng.choice(pods)}}}}}"
        if kind == "exists":
            return "{matchExpressions: [{key: pod, operator: Exists}]}"
        op = "In" if kind == "in" else "NotIn"
        return f"{{matchExpressions: [{{key: pod, operator: {op}, values: [{rng.choice(pods)}]}}]}}"

    def ns_selector():
        return rng.choice(["{}", f"{{matchLabels: {{ns: {rng.choice(namespaces)}}}}}"])

    def peer():
        kind = rng.choice(["pod", "ns", "both", "ip"])
        if kind == "pod":
            return f"{{podSelector: {selector()}}}"
        if kind == "ns":
            return f"{{namespaceSelector: {ns_selector()}}}"
        if kind == "both":
            return f"{{namespaceSelector: {ns_selector()}, podSelector: {selector()}}}"
        ip = rng.choice(ips)
        net = ipaddress.ip_network(f"{ip}/{rng.choice([24, 30, 32])}", strict=False)
        if net.prefixlen < 32 and rng.random() < 0.5:
            return f'{{ipBlock: {{cidr: "{net}", except: ["{ip}/32"]}}}}'
        return f'{{ipBlock: {{cidr: "{net}"}}}}'

    def port():
        return rng.choice(["{port: 80}", "{port: 81, protocol: UDP}", "{port: serve-80-tcp}",
                           "{port: 79, endPort: 81}", "{protocol: UDP}", "{port: serve-81-udp, protocol: UDP}"])

    def rules(word):
        out = []
        for _ in range(rng.randint(0, 2)):
            parts = []
            if rng.random() < 0.8:
                parts.append(f"{word}: [{', '.join(peer() for _ in range(rng.randint(1, 2)))}]")
            if rng.random() < 0.7:
                parts.append(f"ports: [{', '.join(port() for _ in range(rng.randint(1, 2)))}]")
            out.append("{" + ", ".join(parts) + "}")
        return "[" + ", ".join(out) + "]"

    docs = []
    for i in range(rng.randint(1, 4)):
        types = rng.choice(["", "policyTypes: [Ingress]", "policyTypes: [Egress]",
                            "policyTypes: [Ingress, Egress]"])
        docs.append(f"""apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: p{i}, namespace: {rng.choice(namespaces)}}}
spec:
  podSelector: {selector()}
  {types}
  ingress: {rules("from")}
  egress: {rules("to")}
""")
    return "---\n".join(docs)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("semantics", ["plugin", "analyzer"])
def test_class_sets_agree_with_rule_by_rule_verdicts(tmp_path, seed, semantics):
    import random

    from test_policy_matrix import model_yaml
    rng = random.Random(seed)
    (tmp_path / "model.yaml").write_text(model_yaml())
    ips = [str(p.pod_ip) for p in Cluster.load([tmp_path]).pods if p.namespace in "xyz"]
    (tmp_path / "policies.yaml").write_text(_random_policies(rng, ips))
    cluster = Cluster.load([tmp_path])
    engine = PolicyEngine(cluster, semantics)
    pods = [p for p in cluster.pods if p.namespace in ("x", "y", "z")]
    classes = sorted({id(engine.class_of(p)): engine.class_of(p) for p in pods}.values(),
                     key=lambda c: c.index)
    matrix = engine.class_matrix(classes, classes)
    for s in classes:
        for d in classes:
            assert matrix.get((s.index, d.index), NO_CONNECTIONS) == engine.class_connections(s, d)
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            conns = engine.connections(src, dst)
            for port, proto in ((80, "TCP"), (81, "TCP"), (80, "UDP"), (81, "UDP"), (79, "TCP")):
                v = engine.allowed(src, dst, port, proto)
                assert v.allowed == conns.contains(proto, port), (src.key, dst.key, port, proto, v.reason)


def test_egress_view_keeps_selector_peers_beside_ip_blocks(tmp_path):
    from test_policy_matrix import model_yaml
    (tmp_path / "model.yaml").write_text(model_yaml())
    (tmp_path / "policy.yaml").write_text("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: out, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - ports: [{port: serve-80-tcp}, {port: 53, protocol: UDP}]
  - to: [{ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}, {podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 443}]
""")
    cluster = Cluster.load([tmp_path])
    view = PolicyEngine(cluster).egress_view(cluster.pod("x/a"))
    entries = [(e.rule.index, str(e.connections), e.any_peer, [str(n) for n in e.addresses()])
               for e in view.entries]
    named = [f"{ip}/32" for ip in sorted(p.pod_ip for p in cluster.pods if p.namespace in ("x", "y", "z"))]
    assert entries == [
        (0, "UDP 53", True, []),                          # any address, numeric ports only
        (0, "TCP 80,UDP 53", False, named),               # serve-80-tcp, resolved on each pod
        (1, "TCP 443", False, ["192.0.2.0/25"]),          # the ipBlock minus its except
        (1, "TCP 443", False, [f"{cluster.pod('x/b').pod_ip}/32"]),   # the podSelector peer
    ]


def test_explain_says_when_a_named_port_is_not_declared(tmp_path):
    from test_policy_matrix import model_yaml
    (tmp_path / "model.yaml").write_text(model_yaml())
    (tmp_path / "policy.yaml").write_text("""
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: by-name, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-tcp, protocol: UDP}]}]
""")
    cluster = Cluster.load([tmp_path])
    v = PolicyEngine(cluster).allowed(cluster.pod("y/b"), cluster.pod("x/a"), 81, "UDP")
    assert not v.allowed and v.dropped_at == INGRESS
    (check,) = v.ingress.checks
    assert check.peer_ok and not check.port_ok
    assert check.why == ("any source; UDP/81 not in the listed ports "
                         "(the destination declares no port serve-81-tcp/UDP)")
