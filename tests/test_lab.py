"""The lab, for real (issue #5): the guide's lab in network namespaces, per CNI and service proxy.

Every test makes labs with its own random name and removes them in `finally`;
nothing outside the lab's namespaces is changed (test_down_leaves_nothing checks
the host's namespace before and after).
"""

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from podnet.errors import PodnetError
from podnet.lab import client, nsutil
from podnet.lab.apply import LabError
from podnet.lab.lab import LABS_DIR, Lab, ipvs_available

from conftest import ROOT
from helpers import NODEPORTS, SPREAD_TRIES, guide_inputs, lab_name, leftovers, wait_clean

pytestmark = pytest.mark.netns

# what a CNI needs besides the guide's inputs: weave allocates from its own IPALLOC_RANGE
# (10.32.0.0/12), so kube-proxy's cluster CIDR is set to match, as weave's docs tell kubeadm
# users (otherwise kube-proxy masquerades pod -> ClusterIP traffic from outside its cluster CIDR)
EXTRA = {"weave": """
---
apiVersion: podnet.dev/v1alpha1
kind: PodnetConfig
podSubnet: 10.32.0.0/12
"""}

# (cni, mode, kube-proxy mode)
CONFIGS = [
    ("kindnet", None, "iptables"), ("kindnet", None, "nftables"),
    ("flannel", "vxlan", "iptables"), ("flannel", "vxlan", "nftables"),
    ("flannel", "host-gw", "iptables"), ("flannel", "host-gw", "nftables"),
    ("calico", "bgp", "iptables"), ("calico", "bgp", "nftables"),
    ("calico", "vxlan", "iptables"), ("calico", "vxlan", "nftables"), ("calico", "vxlan-crosssubnet", "iptables"),
    ("weave", None, "iptables"), ("weave", None, "nftables"),
]


def bring_up(name, inputs, **kwargs) -> Lab:
    lab = Lab(name)
    try:
        lab.up([str(inputs)], **kwargs)
    except PodnetError as e:
        text = str(e)
        if "not available yet" in text:
            pytest.skip(f"{kwargs.get('cni') or 'kindnet'} not available yet: {text}"
                        if "CNI" in text else f"{kwargs.get('proxy_mode')} proxy not available yet: {text}")
        raise
    return lab


def sh(argv, check=True) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {proc.stderr.strip()}")
    return proc.stdout


def echo_fields(text: str) -> dict:
    return client.parse_echo(text)


# ============================================================================ per CNI and proxy

@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{c}-{m or 'default'}-{p}" for c, m, p in CONFIGS])
def guide(request, tmp_path_factory):
    cni, mode, proxy = request.param
    inputs = guide_inputs(tmp_path_factory.mktemp("guide"), extra=NODEPORTS + EXTRA.get(cni, ""))
    name = lab_name()
    lab = None
    try:
        try:
            lab = bring_up(name, inputs, cni=cni, cni_mode=mode, proxy_mode=proxy)
        except PodnetError as e:
            if cni != "kindnet" and ("not available" in str(e) or "no mode" in str(e)):
                pytest.skip(f"{cni} not available yet: {e}")
            raise
        lab.config = request.param
        yield lab
    finally:
        if lab is not None and lab.exists():
            lab.down()
        left = wait_clean(name, 5)
        assert not left, left


def pods(lab, prefix):
    return {k: v for k, v in lab.record["pods"].items() if k.split("/", 1)[1].startswith(prefix)}


def test_curl_web_by_name_from_net_tshoot_reaches_both_web_pods(guide):
    """`lab exec net-tshoot -- curl -s web`: the pod's resolv.conf, the cluster DNS, the ClusterIP."""
    tshoot, info = next((k, v) for k, v in sorted(pods(guide, "net-tshoot").items())
                        if v["node"].endswith("worker"))
    webs = set(pods(guide, "web-"))
    seen = set()
    argv = guide.exec_argv(tshoot, ["curl", "-s", "-m", "3", "web"])
    for _ in range(SPREAD_TRIES):
        fields = echo_fields(sh(argv))
        seen.add(fields["pod"])
        assert fields["client"].rsplit(":", 1)[0] == info["ips"][0]      # no SNAT pod -> ClusterIP
        if seen == webs:
            break
    assert seen == webs


def test_dig_the_cluster_dns(guide):
    tshoot = sorted(pods(guide, "net-tshoot"))[0]
    out = sh(guide.exec_argv(tshoot, ["dig", "+short", "+search", "+time=2", "web"]))
    _, dp = guide.render(guide.record["inputs"], guide.record["overrides"])
    assert out.split() == [str(dp.cluster.service("web").cluster_ip)]


def test_pod_to_pod_across_nodes(guide):
    tshoots = pods(guide, "net-tshoot")
    for web, winfo in pods(guide, "web-").items():
        for key, info in tshoots.items():
            if info["node"] == winfo["node"]:
                continue
            r = client.request(guide.kname(info["netns"]), winfo["ips"][0], 80, http=True)
            assert (r.status, r.server, r.client) == ("ok", web, info["ips"][0]), (key, web, r)


def test_node_to_clusterip(guide):
    _, dp = guide.render(guide.record["inputs"], guide.record["overrides"])
    vip = str(dp.cluster.service("web").cluster_ip)
    seen = set()
    for _ in range(SPREAD_TRIES):
        r = client.request(guide.kname("k8s-guide-worker"), vip, 80, http=True)
        assert r.status == "ok", r
        seen.add(r.server)
        if len(seen) == 2:
            break
    assert seen == set(pods(guide, "web-"))


def test_nodeport_from_the_underlay_and_external_traffic_policy(guide):
    nodes = guide.record["nodes"]
    _, dp = guide.render(guide.record["inputs"], guide.record["overrides"])
    web_nodes = {v["node"]: k for k, v in pods(guide, "web-").items()}
    gateway = guide.kname("gateway")
    for node, info in nodes.items():
        node_ip = info["ips"][0]
        # externalTrafficPolicy Cluster: any node answers, the backend sees the node, not the client
        r = client.request(gateway, node_ip, 30080, http=True)
        assert r.status == "ok" and r.server in web_nodes.values(), (node, r)
        # the node's own addresses: its IP, a bridge's .1 (cni0, cbr0) or a VTEP's .0 (flannel.1)
        own = {node_ip} | {str(ipaddress.ip_network(c).network_address + k) for c in info["pod_cidrs"] for k in (0, 1)}
        # ... or any other address of the node (weave's bridge holds one from the ring)
        own |= {str(a.ip) for _, a in dp.node_netns(node).addresses()}
        peers = {n["ips"][0] for n in nodes.values()}
        assert r.client in own | peers and r.client != "172.18.0.1", (node, r)
        # externalTrafficPolicy Local: only nodes with a web pod answer, and the pod sees the real client
        r = client.request(gateway, node_ip, 30081, http=True, timeout=1.0)
        if node in web_nodes:
            assert (r.status, r.server, r.client) == ("ok", web_nodes[node], "172.18.0.1"), (node, r)
        else:
            assert r.status != "ok", (node, r)


def test_lab_verify_passes(guide):
    from podnet.lab.verify import verify
    report = verify(guide)
    assert not report.diffs, report.text()
    bad = [f for f in report.flows if not f.ok]
    kinds = {f.flow.kind.split(" (")[0] for f in report.flows}
    assert {"pod->pod", "pod->ClusterIP", "node->ClusterIP", "NodePort from the underlay", "pod->outside",
            "DNS"} <= kinds
    assert not bad, report.text()


# ============================================================================ the lab's life cycle

def host_view() -> dict:
    """What the lab must never change in the host's namespace."""
    def read(path):
        try:
            return open(path).read()
        except OSError:
            return None
    return {"links": sorted(l["ifname"] for l in json.loads(sh(["ip", "-j", "link", "show"]))),
            "addrs": sh(["ip", "-br", "addr"]), "routes": sh(["ip", "route", "show", "table", "all"]),
            "rules": sh(["ip", "rule"]), "neigh-permanent": sh(["ip", "neigh", "show", "nud", "permanent"]),
            "iptables": [l for l in sh(["iptables-save"], check=False).splitlines() if not l.startswith("#")],
            "sysctls": {k: read(f"/proc/sys/{k}") for k in (
                "net/ipv4/ip_forward", "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter",
                "net/bridge/bridge-nf-call-iptables", "net/ipv6/conf/all/forwarding")}}


def test_up_down_leaves_nothing_and_never_touches_the_host(tmp_path):
    before = host_view()
    name = lab_name("d")
    inputs = guide_inputs(tmp_path / "in", extra=NODEPORTS)
    lab = Lab(name)
    try:
        lab = bring_up(name, inputs)
        assert host_view() == before
        rec = json.loads((LABS_DIR / f"{name}.json").read_text())
        assert rec["status"] == "up" and all(n.startswith(name + "-") for n in rec["namespaces"])
        pids = [a["pid"] for a in rec["agents"].values()] + [d["pid"] for d in rec["dns"].values()]
        assert pids and all(os.path.exists(f"/proc/{p}") for p in pids)
        # `lab status` from the command line
        out = subprocess.run([sys.executable, "-m", "podnet", "lab", "status", "--name", name, "-o", "json"],
                             capture_output=True, text=True, cwd=ROOT)
        status = json.loads(out.stdout)
        assert status["namespaces_present"] == status["namespaces"] == len(rec["namespaces"])
        assert all(n["agent"] for n in status["nodes"])
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []
    assert host_view() == before


def test_two_labs_coexist_and_a_second_up_with_the_same_name_says_so(tmp_path):
    a, b = lab_name("a"), lab_name("b")
    inputs = guide_inputs(tmp_path / "in", extra="")
    labs = []
    try:
        labs.append(bring_up(a, inputs, proxy_mode="iptables"))
        labs.append(bring_up(b, inputs, proxy_mode="iptables"))
        # the same addresses in both, each lab answers on its own
        for lab in labs:
            tshoot = next(v for k, v in lab.record["pods"].items() if "net-tshoot" in k)
            web = next(v for k, v in lab.record["pods"].items() if "/web-" in k)
            r = client.request(lab.kname(tshoot["netns"]), web["ips"][0], 80, http=True)
            assert r.status == "ok"
        with pytest.raises(LabError, match=f"a lab named '{a}' is already up"):
            Lab(a).up([str(inputs)])
        out = subprocess.run([sys.executable, "-m", "podnet", "lab", "up", "-q", "--name", b, "-f", str(inputs)],
                             capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 1 and out.stderr.strip().splitlines() == [
            l for l in out.stderr.strip().splitlines() if l.startswith("error: a lab named")]
    finally:
        for n in (a, b):
            if Lab(n).exists():
                Lab(n).down()
    assert wait_clean(a, 5) == [] and wait_clean(b, 5) == []


def _bigger_inputs(directory: Path) -> Path:
    guide_inputs(directory, extra="")
    text = (directory / "web.yaml").read_text().replace("replicas: 2", "replicas: 40")
    (directory / "web.yaml").write_text(text)
    return directory


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "sigkill"])
def test_killing_lab_up_midway_leaves_nothing(tmp_path, sig):
    """Ctrl-C: `lab up` removes what it made; SIGKILL: its guard process does."""
    name = lab_name("k")
    inputs = _bigger_inputs(tmp_path / "in")
    proc = subprocess.Popen([sys.executable, "-m", "podnet", "lab", "up", "--name", name, "-f", str(inputs)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if len([n for n in nsutil.list_netns() if n.startswith(name + "-")]) > 10 or proc.poll() is not None:
                break
            time.sleep(0.005)
        assert proc.poll() is None, "lab up finished before it could be interrupted"
        proc.send_signal(sig)
        proc.communicate(timeout=30)
        left = wait_clean(name, 20)
        assert left == []
    finally:
        if proc.poll() is None:
            proc.kill()
        if Lab(name).exists():
            Lab(name).down()
        for n in [n for n in nsutil.list_netns() if n.startswith(name + "-")]:
            nsutil.delete_netns([n])


def test_apply_scales_adds_a_service_and_deletes_a_pod(tmp_path):
    name = lab_name("p")
    inputs = guide_inputs(tmp_path / "in", extra="""
apiVersion: v1
kind: Pod
metadata: {name: debug, namespace: default}
spec:
  nodeName: k8s-guide-worker2
  containers: [{name: c, image: busybox, ports: [{containerPort: 7000, name: http-alt}]}]
""")
    lab = Lab(name)
    try:
        lab = bring_up(name, inputs)
        debug = lab.record["pods"]["default/debug"]
        tshoot = next(v for k, v in lab.record["pods"].items() if "net-tshoot" in k)
        src = lab.kname(tshoot["netns"])
        r = client.request(src, debug["ips"][0], 7000, http=True)
        assert (r.status, r.server) == ("ok", "default/debug")
        # scale web to 3, add a Service, delete the bare pod
        (inputs / "web.yaml").write_text((inputs / "web.yaml").read_text().replace("replicas: 2", "replicas: 3"))
        (inputs / "extra.yaml").write_text("""
apiVersion: v1
kind: Service
metadata: {name: web2, namespace: default}
spec:
  selector: {app: web}
  ports: [{port: 8080, targetPort: 80}]
""")
        summary = lab.apply([str(inputs)])
        assert len(summary["namespaces_added"]) == 1 and len(summary["namespaces_removed"]) == 1
        assert not nsutil.exists(lab.kname(debug["netns"]))
        webs = {k for k in lab.record["pods"] if "/web-" in k}
        assert len(webs) == 3
        _, dp = lab.render(lab.record["inputs"], lab.record["overrides"])
        vip = str(dp.cluster.service("web2").cluster_ip)
        seen = set()
        for _ in range(30):
            r = client.request(src, vip, 8080, http=True)
            assert r.status == "ok", r
            seen.add(r.server)
            if seen == webs:
                break
        assert seen == webs
        # the new name resolves too (the DNS servers were restarted with the new records)
        status, addrs, _ = client.dns_query(src, "10.96.0.10", "web2.default.svc.cluster.local")
        assert (status, addrs) == ("ok", [vip])
        from podnet.lab.verify import verify
        report = verify(lab, state_only=True)
        assert report.ok, report.text()
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []


def test_host_network_pods_and_exec(tmp_path):
    """hostNetwork pods run in their node's namespace; lab exec gives each pod its resolv.conf."""
    name = lab_name("h")
    inputs = guide_inputs(tmp_path / "in", extra="""
apiVersion: v1
kind: Pod
metadata: {name: hostnet, namespace: default}
spec:
  nodeName: k8s-guide-worker
  hostNetwork: true
  dnsPolicy: ClusterFirstWithHostNet
  containers: [{name: c, image: x, ports: [{containerPort: 8081}]}]
""")
    lab = Lab(name)
    try:
        lab = bring_up(name, inputs, proxy_mode="iptables")
        info = lab.record["pods"]["default/hostnet"]
        assert info["host_network"] and info["netns"] == "k8s-guide-worker"
        r = client.request(lab.kname("gateway"), info["ips"][0], 8081)
        assert (r.status, r.server, r.client) == ("ok", "default/hostnet", "172.18.0.1")
        # lab exec through the CLI: a pod's resolv.conf, and the hostNetwork pod's (bound for this command)
        def podnet_exec(target, *cmd):
            return subprocess.run([sys.executable, "-m", "podnet", "lab", "exec", "--name", name, target, "--",
                                   *cmd], capture_output=True, text=True, cwd=ROOT, timeout=30)
        out = podnet_exec("net-tshoot-4lgv2", "cat", "/etc/resolv.conf").stdout
        assert "nameserver 10.96.0.10" in out and "search default.svc.cluster.local" in out
        out = podnet_exec("hostnet", "cat", "/etc/resolv.conf").stdout
        assert "nameserver 10.96.0.10" in out
        out = podnet_exec("node/k8s-guide-worker", "ip", "-br", "addr", "show", "eth0").stdout
        assert "172.18.0.3/16" in out
        assert open("/etc/resolv.conf").read() == open("/etc/resolv.conf").read()   # untouched
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []


def test_lab_snapshot_is_a_podnet_snapshot(tmp_path):
    """`lab snapshot`: podnet.snapshot's format under the model's names; the simulator traces it."""
    from podnet.linux.netfilter import Packet
    from podnet.sim.trace import TraceRequest, trace
    from podnet.snapshot.load import load_snapshot
    name = lab_name("s")
    lab = Lab(name)
    try:
        lab = bring_up(name, guide_inputs(tmp_path / "in", extra=""), proxy_mode="iptables")
        out = subprocess.run([sys.executable, "-m", "podnet", "lab", "snapshot", str(tmp_path / "snap"), "--name",
                              name], capture_output=True, text=True, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        state = load_snapshot(tmp_path / "snap")
        # the model's namespaces, and the switch the lab put in for the kind segment (its
        # ports are veths to the nodes' eth0, as docker's bridge is for kind's nodes)
        assert set(state.namespaces) == set(lab.record["model_namespaces"]) | {"seg-kind"}
        assert state.namespaces["seg-kind"].kind == "underlay"
        assert state.namespaces["k8s-guide-worker"].links["eth0"].segment == "kind"
        web = next(v for k, v in lab.record["pods"].items() if "/web-" in k)
        tshoot = next(v for k, v in lab.record["pods"].items() if "net-tshoot" in k)
        pkt = Packet(ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address(web["ips"][0]), "tcp", 40000, 80)
        result = trace(state, TraceRequest(tshoot["netns"], pkt, reply=False))
        assert {b.forward.outcome.result for b in result.branches} == {"delivered"}
    finally:
        if lab.exists():
            lab.down()


@pytest.mark.skipif(ipvs_available(), reason="this kernel has IPVS")
def test_ipvs_mode_on_a_kernel_without_ipvs(tmp_path):
    name = lab_name("v")
    inputs = guide_inputs(tmp_path / "in", extra="")
    with pytest.raises(LabError, match="this kernel lacks IPVS.*--ipvs-fallback"):
        Lab(name).up([str(inputs)], proxy_mode="ipvs")
    assert leftovers(name) == []
    lab = Lab(name)
    try:
        rec = lab.up([str(inputs)], proxy_mode="ipvs", ipvs_fallback="iptables")
        assert rec["proxy_mode"] == "iptables"
        assert any("lacks IPVS" in n and "falls back to iptables" in n for n in rec["notes"])
    finally:
        if lab.exists():
            lab.down()
    assert wait_clean(name, 5) == []
