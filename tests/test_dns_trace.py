"""Issue #6 part 4: names in traces are resolved as the pod would, then traced."""

from podnet import Cluster

from conftest import GUIDE_LAB, run_podnet


def _tshoot() -> str:
    c = Cluster.load([GUIDE_LAB])
    return next(p.name for p in c.pods if p.name.startswith("net-tshoot") and p.node_name.endswith("worker"))


def test_trace_to_a_service_name_shows_the_dns_exchange_then_the_connection():
    out = run_podnet("trace", "-f", str(GUIDE_LAB), "--from", f"pod/{_tshoot()}", "--to", "web.default:80",
                     "--no-reply", check=True).stdout
    # the glibc search: web.default.default.svc... NXDOMAIN, then web.default.svc.cluster.local
    assert "web.default.default.svc.cluster.local.  NXDOMAIN" in out
    assert "2 queries to 10.96.0.10 (1 NXDOMAIN); resolved by query 2." in out
    # a query goes pod -> kube-dns ClusterIP -> a coredns pod, through kube-proxy's rules
    dns_part, _, conn_part = out.partition("# then the connection itself:")
    assert "KUBE-SVC-" in dns_part and "kube-system/kube-dns:dns" in dns_part
    assert "delivered to socket udp 0.0.0.0:53 (pod kube-system/coredns-" in dns_part
    web = Cluster.load([GUIDE_LAB]).service("web")
    assert f"-> {web.cluster_ip}:80" in conn_part
    assert "container nginx" in conn_part


def test_a_name_that_does_not_resolve_is_an_error_with_the_queries():
    proc = run_podnet("trace", "-f", str(GUIDE_LAB), "--from", f"pod/{_tshoot()}", "--to", "nosuch.default:80")
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "does not resolve" in proc.stderr and "NXDOMAIN" in proc.stderr


def test_names_resolve_only_from_pods():
    proc = run_podnet("trace", "-f", str(GUIDE_LAB), "--from", "node/k8s-guide-worker", "--to", "web.default:80")
    assert proc.returncode != 0 and "only pods resolve cluster names" in proc.stderr
