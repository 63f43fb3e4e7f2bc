"""The lab's pieces that need no root: plans, normalisers, errors."""

import ipaddress

import pytest
from click.testing import CliRunner

from podnet.cluster import Cluster, example_path
from podnet.dataplane import build_dataplane
from podnet.errors import InputError
from podnet.lab import nsutil
from podnet.lab.apply import _ipset_replacing, _ipvs_text, _nft_tables, segment_port_name
from podnet.lab.lab import check_name
from podnet.lab.verify import _nft_lines, _norm_rule, normalise_iptables
from podnet.dns.records import DNSRecords
from podnet.lab.workloads import plan_workloads, resolv_conf_text
from podnet.linux.state import IpvsRealServer, IpvsService, Netns


@pytest.fixture(scope="module")
def guide():
    cluster = Cluster.load([example_path()], proxy_mode="none")
    return cluster, build_dataplane(cluster)


def test_sysctl_paths_keep_dotted_interface_names():
    assert nsutil.sysctl_path("net.ipv4.ip_forward") == "/proc/sys/net/ipv4/ip_forward"
    assert nsutil.sysctl_path("net.ipv4.conf.flannel.1.rp_filter") == "/proc/sys/net/ipv4/conf/flannel.1/rp_filter"
    assert nsutil.sysctl_path("net.ipv6.conf.all.forwarding") == "/proc/sys/net/ipv6/conf/all/forwarding"
    assert nsutil.sysctl_path("net.bridge.bridge-nf-call-iptables") == \
        "/proc/sys/net/bridge/bridge-nf-call-iptables"


def test_lab_names():
    assert check_name("demo-2") == "demo-2"
    for bad in ("Demo", "2lab", "a--b", "x" * 21, "a_b", "-a"):
        with pytest.raises(InputError):
            check_name(bad)
    assert len(segment_port_name("k8s-guide-worker2", "eth0")) <= 15


def test_workload_plan_mirrors_the_model_listeners(guide):
    cluster, dp = guide
    plan = plan_workloads(dp)
    assert set(plan.agents) == {n.name for n in cluster.nodes} | {"internet"}
    web = [p for p in cluster.pods if p.name.startswith("web-")]
    for pod in web:
        socks = plan.agents[pod.node_name].sockets[dp.pod_ns[pod.key]]
        assert {(s.proto, s.ip, s.port, s.kind, s.name) for s in socks} == {
            ("tcp", "0.0.0.0", 80, "http", pod.key), ("tcp", "::", 80, "http", pod.key)}
    dns_pod = next(p for p in cluster.pods if p.name.startswith("coredns-"))
    kinds = {(s.proto, s.port): s.kind for s in plan.agents[dns_pod.node_name].sockets[dp.pod_ns[dns_pod.key]]}
    # port 53 is the DNS server's (podnet.dns serve), the metrics port the agent's
    assert kinds == {("tcp", 9153): "http"}
    assert dns_pod.key in {d.pod for d in plan.dns}
    # the node's own sockets (kubelet...) answer in the node's namespace, named after the node
    node_socks = plan.agents["k8s-guide-worker"].sockets["k8s-guide-worker"]
    assert ("tcp", "0.0.0.0", 10250, "node/k8s-guide-worker") in {(s.proto, s.ip, s.port, s.name) for s in node_socks}
    # the outside world answers from any address
    inet = plan.agents["internet"].sockets["internet"]
    assert all(s.transparent for s in inet) and {s.port for s in inet} >= {80, 443, 53}
    # net-tshoot declares no ports: nothing listens in its sandbox
    tshoot = next(p for p in cluster.pods if p.name.startswith("net-tshoot"))
    assert dp.pod_ns[tshoot.key] not in plan.agents[tshoot.node_name].sockets


def test_two_host_network_pods_on_one_port_is_an_error(tmp_path):
    (tmp_path / "kind.yaml").write_text(open(example_path() + "/kind.yaml").read())
    (tmp_path / "hn.yaml").write_text("""
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default}
spec:
  nodeName: k8s-guide-worker
  hostNetwork: true
  containers: [{name: c, image: x, ports: [{containerPort: 8081}]}]
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default}
spec:
  nodeName: k8s-guide-worker
  hostNetwork: true
  containers: [{name: c, image: x, ports: [{containerPort: 8081}]}]
""")
    cluster = Cluster.load([str(tmp_path)], proxy_mode="none")
    with pytest.raises(InputError, match="8081/TCP is claimed by both pod default/a and pod default/b"):
        plan_workloads(build_dataplane(cluster))


def test_two_containers_of_a_pod_on_one_port_is_an_error(tmp_path):
    (tmp_path / "p.yaml").write_text("""
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default}
spec:
  containers:
  - {name: one, image: x, ports: [{containerPort: 80}]}
  - {name: two, image: x, ports: [{containerPort: 80}]}
""")
    with pytest.raises(InputError, match="already used by container one"):
        Cluster.load([example_path() + "/kind.yaml", str(tmp_path / "p.yaml")])


def test_dns_serial_and_resolv_conf(guide):
    cluster, dp = guide
    # the lab restarts its DNS servers when the zone's serial changes
    assert plan_workloads(dp).dns_serial == DNSRecords.from_cluster(cluster).serial != 0
    tshoot = next(p for p in cluster.pods if p.name.startswith("net-tshoot"))
    text = resolv_conf_text(cluster, tshoot)
    assert "nameserver 10.96.0.10" in text and "search default.svc.cluster.local" in text and "ndots:5" in text


def test_iptables_normaliser_matches_iptables_save_spellings():
    assert _norm_rule("-m comment --comment x -p tcp -d 10.96.0.1 --dport 443 -j KUBE-SVC-A", 4) == \
        _norm_rule("-d 10.96.0.1/32 -p tcp -m comment --comment x -m tcp --dport 443 -j KUBE-SVC-A", 4)
    assert _norm_rule("-j MARK --xor-mark 0x4000", 4) == _norm_rule("-j MARK --set-xmark 0x4000/0x0", 4)
    assert _norm_rule("-j MARK --or-mark 0x4000", 4) == _norm_rule("-j MARK --set-xmark 0x4000/0x4000", 4)
    assert _norm_rule("-j REJECT", 4) == _norm_rule("-j REJECT --reject-with icmp-port-unreachable", 4)
    assert _norm_rule("-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", 4) == \
        _norm_rule("-m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT", 4)
    assert _norm_rule("-m statistic --mode random --probability 0.5 -j X", 4) == \
        _norm_rule("-m statistic --mode random --probability 0.50000000000 -j X", 4)
    assert _norm_rule("-s 10.0.0.1 -j DROP", 4) != _norm_rule("-s 10.0.0.2 -j DROP", 4)
    text = "*nat\n:PREROUTING ACCEPT [3:180]\n:FOO - [0:0]\n-A PREROUTING -j FOO\nCOMMIT\n*raw\n" \
           ":PREROUTING ACCEPT [0:0]\nCOMMIT\n"
    tables = normalise_iptables(text)
    assert set(tables) == {"nat"} and tables["nat"]["chains"]["PREROUTING"] == ["-j FOO"]


def test_nft_normaliser_accepts_input_and_listing_spellings():
    model = ('table ip t {\n comment "x"\n set s {\n type ipv4_addr\n elements = { 10.0.0.2,\n 10.0.0.1 }\n }\n'
             ' chain c {\n mark set mark or 0x4000\n ip daddr { 10.96.0.0/12 } drop\n reject\n }\n}\n'
             'table ip nat {\n chain POSTROUTING {\n }\n}\n')
    kernel = ('table ip t { # handle 4\n set s { # handle 1\n type ipv4_addr\n elements = { 10.0.0.1, 10.0.0.2 }\n'
              ' }\n chain c { # handle 2\n meta mark set meta mark | 16384 # handle 5\n'
              ' ip daddr 10.96.0.0/12 drop\n reject with icmp port-unreachable\n }\n}\n')
    assert _nft_lines(model) == _nft_lines(kernel)
    assert _nft_tables("add table ip kube-proxy { comment \"x\" ; }\ntable inet f {\n}\n") == \
        [("ip", "kube-proxy"), ("inet", "f")]


def test_restore_payloads():
    assert _ipset_replacing("create S hash:ip family inet\nadd S 10.0.0.1\n") == \
        "create S hash:ip family inet\nflush S\nadd S 10.0.0.1\n"
    ns = Netns("n")
    ns.ipvs.append(IpvsService("TCP", ipaddress.ip_address("10.96.0.1"), 443, "rr",
                               reals=[IpvsRealServer(ipaddress.ip_address("172.18.0.2"), 6443)]))
    assert _ipvs_text(ns) == "-A -t 10.96.0.1:443 -s rr\n-a -t 10.96.0.1:443 -r 172.18.0.2:6443 -m -w 1\n"


def test_fwmark_ipvs_services_are_parsed_and_round_trip():
    """`ipvsadm -Sn` names a fwmark service `-f MARK` (IPv6: `-f MARK -6`); the model keeps it
    as the kernel does (protocol TCP, address 0.0.0.0 / ::, port 0, the fwmark), and the
    renderer, the lab's ipvsadm-restore text and `ipvsadm -Ln` name it the same way."""
    from podnet.linux.render import ipvsadm_ln, ipvsadm_save
    from podnet.snapshot.load import parse_ipvsadm
    saved = ("-A -t 10.96.0.1:443 -s rr\n"
             "-a -t 10.96.0.1:443 -r 172.18.0.2:6443 -m -w 1\n"
             "-A -f 100 -s rr\n"
             "-a -f 100 -r 10.0.0.1:80 -m -w 1\n"
             "-a -f 100 -r 10.0.0.2:0 -g -w 3\n"
             "-A -f 200 -6 -s sh -b sh-port -p 60\n"
             "-a -f 200 -6 -r [fd00::1]:443 -m -w 1")
    services = parse_ipvsadm(saved)
    fwm = {s.fwmark: s for s in services if s.fwmark is not None}
    assert sorted(fwm) == [100, 200]
    assert (fwm[100].protocol, str(fwm[100].vip), fwm[100].port, fwm[100].scheduler) == \
        ("TCP", "0.0.0.0", 0, "rr")
    # the dump lists the kernel's list, newest first: the model keeps the order added
    assert [(str(r.ip), r.port, r.method, r.weight) for r in fwm[100].reals] == \
        [("10.0.0.2", 0, "Route", 3), ("10.0.0.1", 80, "Masq", 1)]
    assert str(fwm[200].vip) == "::" and fwm[200].persistent == 60 and fwm[200].sched_flags == ("sh-port",)
    assert ipvsadm_save(services) == ipvsadm_save(services, "nosort") == saved
    ns = Netns("n")
    ns.ipvs.extend(services)
    # what the lab hands ipvsadm-restore: the real servers in the order to add them
    assert _ipvs_text(ns) == saved.replace("-a -f 100 -r 10.0.0.1:80 -m -w 1\n-a -f 100 -r 10.0.0.2:0 -g -w 3",
                                           "-a -f 100 -r 10.0.0.2:0 -g -w 3\n-a -f 100 -r 10.0.0.1:80 -m -w 1") + "\n"
    listed = ipvsadm_ln(services).splitlines()
    assert "FWM  100 rr" in listed and "FWM  200 IPv6 sh (sh-port) persistent 60" in listed
    # ipvsadm-restore also takes a real server without a port
    assert parse_ipvsadm("-A -f 7 -s rr\n-a -f 7 -r 10.0.0.9 -m")[0].reals[0].port == 0


def test_ipvs_real_servers_keep_the_kernels_list_order():
    """The kernel adds a real server at the head of its service's list (ip_vs_add_dest), and
    sh, dh and mh walk that list. `ipvsadm -Sn` sorts the real servers (ipvs_cmp_dests, an
    int of an unsigned difference: 200.0.0.1 sorts before 10.0.0.1); snapshots take
    `-Sn --nosort`, the kernel's list, so the model gets back the order they were added in
    and the schedulers see the kernel's list."""
    from podnet.linux.render import ipvsadm_ln, ipvsadm_save
    from podnet.sim.ipvs import bucket_table, kernel_order
    from podnet.snapshot.capture import COMMANDS
    from podnet.snapshot.load import parse_ipvsadm
    nosort = ("-A -t 10.96.0.10:53 -s sh\n"
              "-a -t 10.96.0.10:53 -r 10.0.0.9:53 -m -w 1\n"
              "-a -t 10.96.0.10:53 -r 200.0.0.1:53 -m -w 1\n"
              "-a -t 10.96.0.10:53 -r 10.0.0.1:53 -m -w 1")
    svc, = parse_ipvsadm(nosort)
    assert [str(r.ip) for r in svc.reals] == ["10.0.0.1", "200.0.0.1", "10.0.0.9"]      # as added
    assert [str(svc.reals[i].ip) for i in kernel_order(svc)] == ["10.0.0.9", "200.0.0.1", "10.0.0.1"]
    assert str(svc.reals[bucket_table(svc)[0]].ip) == "10.0.0.9"     # sh: bucket 0 is the list head
    assert ipvsadm_save([svc], "nosort") == nosort
    assert [line.split()[4] for line in ipvsadm_save([svc]).splitlines()[1:]] == \
        ["200.0.0.1:53", "10.0.0.1:53", "10.0.0.9:53"]
    assert [line.split()[1] for line in ipvsadm_ln([svc]).splitlines()[4:]] == \
        ["200.0.0.1:53", "10.0.0.1:53", "10.0.0.9:53"]
    assert [line.split()[4] for line in ipvsadm_save([svc], "restore").splitlines()[1:]] == \
        ["10.0.0.1:53", "200.0.0.1:53", "10.0.0.9:53"]
    assert COMMANDS["ipvs.txt"] == ["ipvsadm", "-Sn", "--nosort"]


def test_lab_commands_need_root(monkeypatch):
    from podnet.cli.main import cli
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    for args in (["lab", "up"], ["lab", "down"], ["lab", "status"], ["lab", "verify"],
                 ["lab", "exec", "x", "--", "true"], ["lab", "snapshot", "/tmp/x"], ["lab", "apply"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (args, result.output)
        lines = [l for l in result.output.splitlines() if l.strip()]
        assert lines == ["error: podnet lab creates network namespaces: run it as root (sudo)"], args
