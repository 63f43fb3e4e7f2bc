"""`lab verify`'s flows speak the protocol the backends' echo servers speak on the target port."""

import shutil

from podnet.cluster import Cluster
from podnet.dataplane import build_dataplane
from podnet.lab.verify import plan_flows

from conftest import GUIDE_LAB

APP = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: be, namespace: default}
spec:
  replicas: 1
  selector: {matchLabels: {app: be}}
  template:
    metadata: {labels: {app: be}}
    spec:
      containers: [{name: c, image: x, ports: [{containerPort: 9090}, {containerPort: 7000, name: http-alt}]}]
---
apiVersion: v1
kind: Service
metadata: {name: be, namespace: default}
spec:
  selector: {app: be}
  ports: [{port: 80, targetPort: 9090}]
---
apiVersion: v1
kind: Service
metadata: {name: be-named, namespace: default}
spec:
  selector: {app: be}
  ports: [{port: 8000, targetPort: http-alt}]
"""


def test_service_flows_use_http_only_where_the_target_port_serves_it(tmp_path):
    for f in GUIDE_LAB.glob("*.yaml"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "app.yaml").write_text(APP)
    flows = plan_flows(build_dataplane(Cluster.load([str(tmp_path)])))
    by_svc = {}
    for f in flows:
        if f.kind in ("pod->ClusterIP", "node->ClusterIP"):
            by_svc.setdefault(f.dst_label, set()).add(f.http)
    assert by_svc["svc default/be"] == {False}          # port 80, but a plain TCP echo on 9090
    assert by_svc["svc default/be-named"] == {True}     # the named port http-alt
    assert by_svc["svc default/web"] == {True}
