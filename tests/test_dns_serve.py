"""`podnet dns serve` for the guide's lab, queried with bind9's dig.

The lab (examples/guide-lab) plus the Headless chapter's consul StatefulSet
(services-Headless.md: three consul-server pods behind the headless Service
consul-server, 8 ports) and an ExternalName Service.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from podnet import Cluster

from conftest import GUIDE_LAB, ROOT, have
from test_dns_support import wait_until

pytestmark = pytest.mark.skipif(not have("dig"), reason="needs dig (bind9-dnsutils)")

# The consul server as the guide's `make headless` installs it (hashicorp/consul-helm):
# a headless Service and a 3-replica StatefulSet whose pods are its endpoints.
CONSUL = """
apiVersion: v1
kind: Service
metadata:
  name: consul-server
  namespace: default
  labels: {app: consul, component: server}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector: {app: consul, component: server}
  ports:
  - {name: http, port: 8500, targetPort: 8500}
  - {name: serflan-tcp, protocol: TCP, port: 8301, targetPort: 8301}
  - {name: serflan-udp, protocol: UDP, port: 8301, targetPort: 8301}
  - {name: serfwan-tcp, protocol: TCP, port: 8302, targetPort: 8302}
  - {name: serfwan-udp, protocol: UDP, port: 8302, targetPort: 8302}
  - {name: server, port: 8300, targetPort: 8300}
  - {name: dns-tcp, protocol: TCP, port: 8600, targetPort: dns-tcp}
  - {name: dns-udp, protocol: UDP, port: 8600, targetPort: dns-udp}
---
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: consul-server
  namespace: default
spec:
  serviceName: consul-server
  podManagementPolicy: Parallel
  replicas: 3
  selector:
    matchLabels: {app: consul, component: server}
  template:
    metadata:
      labels: {app: consul, component: server}
    spec:
      containers:
      - name: consul
        image: hashicorp/consul:1.9
        ports:
        - {name: http, containerPort: 8500}
        - {name: serflan-tcp, containerPort: 8301, protocol: TCP}
        - {name: serflan-udp, containerPort: 8301, protocol: UDP}
        - {name: serfwan-tcp, containerPort: 8302, protocol: TCP}
        - {name: serfwan-udp, containerPort: 8302, protocol: UDP}
        - {name: server, containerPort: 8300}
        - {name: dns-tcp, containerPort: 8600, protocol: TCP}
        - {name: dns-udp, containerPort: 8600, protocol: UDP}
---
apiVersion: v1
kind: Service
metadata: {name: docs, namespace: default}
spec: {type: ExternalName, externalName: kubernetes.io}
"""

ZONE = "cluster.local"


class Serve:
    """`podnet dns serve` in its own process."""

    def __init__(self, *paths, extra=()):
        args = [sys.executable, "-m", "podnet", "dns", "serve", "--listen", "127.0.0.1:0"]
        for p in paths:
            args += ["-f", str(p)]
        self.proc = subprocess.Popen([*args, *extra], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        m = re.search(r" on 127\.0\.0\.1:(\d+) ", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"server did not start: {line}{self.proc.stderr.read()}")
        self.port = int(m.group(1))

    def dig(self, *args) -> str:
        out = subprocess.run(["dig", "@127.0.0.1", "-p", str(self.port), "+time=3", "+tries=1", *args],
                             capture_output=True, text=True, timeout=20)
        return out.stdout

    def short(self, *args) -> list[str]:
        return sorted(self.dig("+short", *args).split("\n")[:-1])

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("lab")
    (d / "consul.yaml").write_text(CONSUL)
    cluster = Cluster.load([GUIDE_LAB, d])
    server = Serve(GUIDE_LAB, d)
    try:
        yield server, cluster
    finally:
        server.stop()


def test_web_a_record(lab):
    server, cluster = lab
    web = cluster.service("web")
    out = server.dig(f"web.default.svc.{ZONE}", "A")
    assert "status: NOERROR" in out and "flags: qr aa rd;" in out
    assert re.search(rf"^web\.default\.svc\.cluster\.local\.\s+30\s+IN\s+A\s+{web.cluster_ip}$", out, re.M)
    # case-insensitive names; the answer keeps the question's spelling
    assert server.short(f"WEB.Default.svc.{ZONE}") == [str(web.cluster_ip)]


def test_srv_lookup(lab):
    server, _ = lab
    assert server.short(f"_dns._udp.kube-dns.kube-system.svc.{ZONE}", "SRV") == [
        f"0 100 53 kube-dns.kube-system.svc.{ZONE}."]
    out = server.dig(f"_https._tcp.kubernetes.default.svc.{ZONE}", "SRV")
    assert re.search(r"ADDITIONAL SECTION:\nkubernetes\.default\.svc\.cluster\.local\.\s+30\s+IN\s+A\s+10\.96\.0\.1",
                     out)


def test_ptr_of_the_cluster_dns(lab):
    server, _ = lab
    assert server.short("-x", "10.96.0.10") == [f"kube-dns.kube-system.svc.{ZONE}."]


def test_headless_statefulset_one_a_per_pod(lab):
    server, cluster = lab
    ips = sorted(str(p.pod_ip) for p in cluster.pods if p.name.startswith("consul-server-"))
    assert len(ips) == 3
    assert server.short(f"consul-server.default.svc.{ZONE}") == ips
    # the guide runs `dig consul-server +search` from a pod of the default namespace
    out = server.dig("consul-server", "+search", "+domain=default.svc.cluster.local")
    assert "ANSWER: 3," in out
    # each pod by its hostname
    for i in range(3):
        pod = cluster.pod(f"default/consul-server-{i}")
        assert server.short(f"consul-server-{i}.consul-server.default.svc.{ZONE}") == [str(pod.pod_ip)]


def test_headless_statefulset_srv_per_pod_and_port(lab):
    server, cluster = lab
    srv = server.short(f"consul-server.default.svc.{ZONE}", "SRV")
    # the guide's answer: 3 pods x 5 distinct ports, weight 100/24 = 4
    want = sorted(f"0 4 {port} consul-server-{i}.consul-server.default.svc.{ZONE}."
                  for i in range(3) for port in (8300, 8301, 8302, 8500, 8600))
    assert srv == want
    # SRV targets are never compressed: 15 of them fill dig's default 1232 bytes, so the
    # optional additional records are left out (no TC: the answer is whole) ...
    out = server.dig(f"consul-server.default.svc.{ZONE}", "SRV")
    assert "ANSWER: 15, AUTHORITY: 0, ADDITIONAL: 1" in out and " tc" not in out
    # ... and come along when the client takes more
    out = server.dig("+bufsize=4096", f"consul-server.default.svc.{ZONE}", "SRV")
    assert "ANSWER: 15, AUTHORITY: 0, ADDITIONAL: 4" in out     # three pods' A records + OPT
    # one named port, both protocols of a port name
    assert server.short(f"_serflan-udp._udp.consul-server.default.svc.{ZONE}", "SRV") == sorted(
        f"0 33 8301 consul-server-{i}.consul-server.default.svc.{ZONE}." for i in range(3))


def test_external_name_cname(lab):
    server, _ = lab
    assert server.short(f"docs.default.svc.{ZONE}", "CNAME") == ["kubernetes.io."]
    out = server.dig(f"docs.default.svc.{ZONE}", "A")
    # no upstream: the CNAME alone (the client follows it)
    assert re.search(r"^docs\.default\.svc\.cluster\.local\.\s+30\s+IN\s+CNAME\s+kubernetes\.io\.$", out, re.M)


def test_negative_answers_carry_the_soa(lab):
    server, _ = lab
    out = server.dig(f"nope.default.svc.{ZONE}")
    assert "status: NXDOMAIN" in out
    assert re.search(r"AUTHORITY SECTION:\ncluster\.local\.\s+30\s+IN\s+SOA\s+ns\.dns\.cluster\.local\. "
                     r"hostmaster\.cluster\.local\. \d+ 7200 1800 86400 30", out)
    out = server.dig(f"web.default.svc.{ZONE}", "AAAA")
    assert "status: NOERROR" in out and "ANSWER: 0" in out and "IN\tSOA" in out


def test_dns_version_txt_and_tcp(lab):
    server, _ = lab
    assert server.short(f"dns-version.{ZONE}", "TXT") == ['"1.1.0"']
    assert server.short("+tcp", f"web.default.svc.{ZONE}") == server.short(f"web.default.svc.{ZONE}")


def test_out_of_zone_without_upstream_is_servfail(lab):
    server, _ = lab
    assert "status: SERVFAIL" in server.dig("example.invalid")


def test_port_in_use_is_one_line(lab):
    server, _ = lab
    proc = subprocess.run([sys.executable, "-m", "podnet", "dns", "serve", "-f", str(GUIDE_LAB),
                           "--listen", f"127.0.0.1:{server.port}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == \
        f"error: cannot listen on 127.0.0.1:{server.port}: address already in use"
    assert "Traceback" not in proc.stderr


def test_module_entry_and_reload(tmp_path):
    """`python -m podnet.dns serve` (the lab's entry) serves a changed cluster."""
    (tmp_path / "kind.yaml").write_text((GUIDE_LAB / "kind.yaml").read_text())
    (tmp_path / "web.yaml").write_text((GUIDE_LAB / "web.yaml").read_text())
    proc = subprocess.Popen([sys.executable, "-m", "podnet.dns", "serve", "-f", str(tmp_path),
                             "--listen", "127.0.0.1:0"], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = int(re.search(r":(\d+) udp", proc.stderr.readline()).group(1))

        def short(name):
            return subprocess.run(["dig", "@127.0.0.1", "-p", str(port), "+short", "+time=2", name],
                                  capture_output=True, text=True).stdout.split()
        assert short(f"web.default.svc.{ZONE}")
        assert short(f"api.default.svc.{ZONE}") == []
        time.sleep(1.1)                  # a visibly newer mtime
        (tmp_path / "api.yaml").write_text(
            "apiVersion: v1\nkind: Service\nmetadata: {name: api, namespace: default}\n"
            "spec: {clusterIP: 10.96.200.200, ports: [{port: 8080}]}\n")
        assert wait_until(lambda: short(f"api.default.svc.{ZONE}") == ["10.96.200.200"], timeout=20)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
