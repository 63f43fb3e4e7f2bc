"""The service proxies' shared model (podnet.proxy.model), and the inputs of
upstream's TestOverallIPTablesRules / TestOverallNFTablesRules as manifests
(used by test_proxy_iptables.py and test_proxy_nftables.py)."""

from __future__ import annotations

from pathlib import Path

import yaml

from podnet import Cluster
from podnet.proxy.model import (EndpointInfo, NodePortAddresses, ServicePortInfo, ServicePortName,
                                categorize_endpoints, proxy_view)

# ---------------------------------------------------------------------------
# manifest builders
# ---------------------------------------------------------------------------


def node(name="test-node", ip="192.168.0.2", pod_cidr="10.0.0.0/24", labels=None, ipv6=None):
    addresses = [{"type": "InternalIP", "address": ip}]
    if ipv6:
        addresses.append({"type": "InternalIP", "address": ipv6})
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]},
            "status": {"addresses": addresses}}


def service(ns, name, cluster_ip, *, type="ClusterIP", port=80, port_name="p80", protocol="TCP",
            node_port=None, external_ips=(), lb_ips=(), etp=None, itp=None, hcnp=None,
            source_ranges=(), affinity=None, annotations=None, labels=None):
    p = {"name": port_name, "port": port, "protocol": protocol, "targetPort": port}
    if node_port:
        p["nodePort"] = node_port
    spec = {"type": type, "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": [p]}
    if external_ips:
        spec["externalIPs"] = list(external_ips)
    if etp:
        spec["externalTrafficPolicy"] = etp
    if itp:
        spec["internalTrafficPolicy"] = itp
    if hcnp:
        spec["healthCheckNodePort"] = hcnp
    if source_ranges:
        spec["loadBalancerSourceRanges"] = list(source_ranges)
    if affinity:
        spec["sessionAffinity"] = "ClientIP"
        spec["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": affinity}}
    meta = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    if labels:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec,
            "status": {"loadBalancer": {"ingress": [{"ip": i} for i in lb_ips]} if lb_ips else {}}}


def endpoint(ip, node=None, ready=True, serving=None, terminating=None, zone=None,
             zone_hints=(), node_hints=()):
    cond = {"ready": ready}
    if serving is not None:
        cond["serving"] = serving
    if terminating is not None:
        cond["terminating"] = terminating
    ep = {"addresses": [ip], "conditions": cond}
    if node:
        ep["nodeName"] = node
    if zone:
        ep["zone"] = zone
    hints = {}
    if zone_hints:
        hints["forZones"] = [{"name": z} for z in zone_hints]
    if node_hints:
        hints["forNodes"] = [{"name": n} for n in node_hints]
    if hints:
        ep["hints"] = hints
    return ep


def slice_(ns, svc, endpoints, *, name=None, port=80, port_name="p80", protocol="TCP",
           address_type="IPv4"):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name or f"{svc}-abc12", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": address_type, "endpoints": list(endpoints),
            "ports": [{"name": port_name, "port": port, "protocol": protocol}]}


def podnet_config(pod_subnet="10.0.0.0/8", service_subnet="172.30.0.0/16", ip_family=None, **kube_proxy):
    cfg = {"apiVersion": "podnet.dev/v1alpha1", "kind": "PodnetConfig",
           "podSubnet": pod_subnet, "serviceSubnet": service_subnet, "bootstrap": False}
    if ip_family:
        cfg["ipFamily"] = ip_family
    kp = {"mode": "iptables"}
    kp.update(kube_proxy)
    cfg["kubeProxy"] = kp
    return cfg


def oracle_objects(**kube_proxy) -> list[dict]:
    """The six services of upstream's TestOverall*Rules (oracles/kube-proxy/README.md).

    Two departures from the upstream fixtures that leave kube-proxy's output
    unchanged but that podnet's (like the apiserver's) allocators would not
    accept: ns4/svc4 is type ClusterIP (upstream: NodePort without a nodePort;
    podnet would allocate one), and ns5/svc5 (externalTrafficPolicy Cluster,
    so kube-proxy ignores its health check port) has no healthCheckNodePort
    (upstream reuses ns2/svc2's 30000)."""
    return [
        podnet_config(**kube_proxy),
        node(),
        service("ns1", "svc1", "172.30.0.41"),
        slice_("ns1", "svc1", [endpoint("10.180.0.1")]),
        service("ns2", "svc2", "172.30.0.42", type="LoadBalancer", node_port=3001, etp="Local",
                hcnp=30000, lb_ips=["1.2.3.4"], external_ips=["192.168.99.22"]),
        slice_("ns2", "svc2", [endpoint("10.180.0.2", node="host2")]),
        service("ns3", "svc3", "172.30.0.43", type="NodePort", node_port=3003),
        slice_("ns3", "svc3", [endpoint("10.180.0.3", node="host2")]),
        service("ns4", "svc4", "172.30.0.44", external_ips=["192.168.99.33"]),
        slice_("ns4", "svc4", [endpoint("10.180.0.4", node="host2"),
                               endpoint("10.180.0.5", node="test-node")]),
        service("ns5", "svc5", "172.30.0.45", type="LoadBalancer", node_port=3002, etp="Cluster",
                lb_ips=["5.6.7.8"], source_ranges=["203.0.113.0/25"], affinity=10800),
        slice_("ns5", "svc5", [endpoint("10.180.0.3", node="host2")]),
        service("ns6", "svc6", "172.30.0.46"),
    ]


def load(tmp_path: Path, objects: list[dict], name: str = "cluster.yaml") -> Cluster:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(objects, sort_keys=False))
    return Cluster.load([path])


def view_of(tmp_path, objects, family=4, node_name="test-node"):
    return proxy_view(load(tmp_path, objects), node_name, family)


# ---------------------------------------------------------------------------
# model tests
# ---------------------------------------------------------------------------

def test_service_port_name_prints_as_upstream():
    assert str(ServicePortName("ns1", "svc1", "p80", "TCP")) == "ns1/svc1:p80"
    assert str(ServicePortName("ns1", "svc1", "", "UDP")) == "ns1/svc1"


def test_oracle_view(tmp_path):
    view = view_of(tmp_path, oracle_objects())
    names = [str(s) for s in view.services]
    assert names == [f"ns{i}/svc{i}:p80" for i in range(1, 7)]
    svc2 = view.services[ServicePortName("ns2", "svc2", "p80")]
    assert (svc2.node_port, svc2.external_ips, svc2.load_balancer_vips) == (3001, ("192.168.99.22",), ("1.2.3.4",))
    assert svc2.external_policy_local and svc2.health_check_node_port == 30000
    svc5 = view.services[ServicePortName("ns5", "svc5", "p80")]
    assert svc5.health_check_node_port == 0 and svc5.client_ip_affinity and svc5.sticky_max_age_seconds == 10800
    assert svc5.load_balancer_source_ranges == ("203.0.113.0/25",)
    eps = view.endpoints[ServicePortName("ns4", "svc4", "p80")]
    assert [(e.endpoint, e.is_local) for e in eps] == [("10.180.0.4:80", False), ("10.180.0.5:80", True)]
    assert ServicePortName("ns6", "svc6", "p80") not in view.endpoints
    assert view.local_detector.cidr == "10.0.0.0/8"
    assert view.node_ip == "192.168.0.2" and view.masquerade_mark == "0x4000"
    assert view.total_endpoints == 6


def test_endpoints_sorted_by_string_and_deduplicated_across_slices(tmp_path):
    objs = [podnet_config(), node(), service("ns", "s", "172.30.0.10"),
            slice_("ns", "s", [endpoint("10.1.0.9"), endpoint("10.1.0.10", terminating=True, ready=False)],
                   name="s-a"),
            # the same endpoint in a second slice (moving between slices): the
            # non-terminating copy wins
            slice_("ns", "s", [endpoint("10.1.0.10"), endpoint("10.1.0.2")], name="s-b")]
    eps = view_of(tmp_path, objs).endpoints[ServicePortName("ns", "s", "p80")]
    assert [e.endpoint for e in eps] == ["10.1.0.10:80", "10.1.0.2:80", "10.1.0.9:80"]   # string order
    assert eps[0].ready and not eps[0].terminating


def test_ipv6_view_and_address_type_filter(tmp_path):
    objs = [podnet_config(pod_subnet="fd00:10::/56", service_subnet="fd00:30::/112", ip_family="ipv6"),
            node(ip="2001:db8::2", pod_cidr="fd00:10::/64"),
            service("ns", "s", "fd00:30::10"),
            slice_("ns", "s", [endpoint("fd00:10::0:5")], address_type="IPv6"),
            slice_("ns", "s", [endpoint("10.0.0.5")], name="s-v4")]
    view = view_of(tmp_path, objs, family=6)
    eps = view.endpoints[ServicePortName("ns", "s", "p80")]
    assert [e.endpoint for e in eps] == ["[fd00:10::5]:80"]
    assert view.local_detector.if_not_local_nft() == "ip6 saddr != fd00:10::/56"


def test_service_proxy_name_label_and_headless_excluded(tmp_path):
    objs = [podnet_config(), node(),
            service("ns", "other", "172.30.0.11", labels={"service.kubernetes.io/service-proxy-name": "x"}),
            service("ns", "mine", "172.30.0.12")]
    assert [str(s) for s in view_of(tmp_path, objs).services] == ["ns/mine:p80"]


def _svc(**kw):
    base = dict(name=ServicePortName("ns", "s", "p", "TCP"), cluster_ip="172.30.0.1", port=80)
    base.update(kw)
    return ServicePortInfo(**base)


def _ep(ip, **kw):
    return EndpointInfo(ip=ip, port=80, **kw)


def test_categorize_cluster_policy_ready_only():
    eps = [_ep("10.0.0.1"), _ep("10.0.0.2", ready=False, serving=False), _ep("10.0.0.3", ready=False,
                                                                           serving=True, terminating=True)]
    cat = categorize_endpoints(eps, _svc(), "n1", {})
    assert [e.ip for e in cat.cluster] == ["10.0.0.1"] and cat.local == [] and cat.has_any
    assert cat.all_reachable is cat.cluster


def test_categorize_terminating_fallback():
    eps = [_ep("10.0.0.2", ready=False, serving=False, terminating=True),
           _ep("10.0.0.3", ready=False, serving=True, terminating=True)]
    cat = categorize_endpoints(eps, _svc(), "n1", {})
    assert [e.ip for e in cat.cluster] == ["10.0.0.3"] and cat.has_any
    none = categorize_endpoints(eps[:1], _svc(), "n1", {})
    assert none.cluster == [] and not none.has_any


def test_categorize_topology_zone_hints():
    labels = {"topology.kubernetes.io/zone": "a"}
    eps = [_ep("10.0.0.1", zone_hints=frozenset({"a"})), _ep("10.0.0.2", zone_hints=frozenset({"b"}))]
    cat = categorize_endpoints(eps, _svc(), "n1", labels)
    assert [e.ip for e in cat.cluster] == ["10.0.0.1"]
    # one ready endpoint without hints: topology is off
    cat = categorize_endpoints(eps + [_ep("10.0.0.3")], _svc(), "n1", labels)
    assert len(cat.cluster) == 3
    # no endpoint for this zone: off
    cat = categorize_endpoints(eps, _svc(), "n1", {"topology.kubernetes.io/zone": "c"})
    assert len(cat.cluster) == 2
    # node hints win over zone hints
    eps = [_ep("10.0.0.1", zone_hints=frozenset({"a"}), node_hints=frozenset({"n2"})),
           _ep("10.0.0.2", zone_hints=frozenset({"a"}), node_hints=frozenset({"n1"}))]
    assert [e.ip for e in categorize_endpoints(eps, _svc(), "n1", labels).cluster] == ["10.0.0.2"]
    assert len(categorize_endpoints(eps, _svc(), "n1", labels, prefer_same_node=False).cluster) == 2


def test_categorize_local_policies():
    svc = _svc(node_port=30080, external_policy_local=True)
    eps = [_ep("10.0.0.1", is_local=True), _ep("10.0.0.2")]
    cat = categorize_endpoints(eps, svc, "n1", {})
    assert [e.ip for e in cat.local] == ["10.0.0.1"] and len(cat.cluster) == 2
    assert [e.ip for e in cat.all_reachable] == ["10.0.0.1", "10.0.0.2"]
    # internal policy Local and not externally accessible: only local endpoints matter
    itp = _svc(internal_policy_local=True)
    cat = categorize_endpoints(eps, itp, "n1", {})
    assert cat.cluster == [] and [e.ip for e in cat.all_reachable] == ["10.0.0.1"]
    # local serving-terminating fallback: merged with the (ready, remote) cluster endpoints
    eps = [_ep("10.0.0.1", is_local=True, ready=False, serving=True, terminating=True), _ep("10.0.0.2")]
    cat = categorize_endpoints(eps, svc, "n1", {})
    assert [e.ip for e in cat.local] == ["10.0.0.1"] and [e.ip for e in cat.cluster] == ["10.0.0.2"]
    assert [e.ip for e in cat.all_reachable] == ["10.0.0.1", "10.0.0.2"]
    # no local endpoints at all: has_any stays true (remote endpoints exist)
    cat = categorize_endpoints([_ep("10.0.0.2")], svc, "n1", {})
    assert cat.local == [] and cat.has_any


def test_node_port_addresses():
    npa = NodePortAddresses(4, [])
    assert npa.match_all and npa.contains_ipv4_loopback
    npa = NodePortAddresses(4, ["192.168.0.0/24", "fd00::/64"])
    assert not npa.match_all and not npa.contains_ipv4_loopback
    assert npa.get_node_ips(["192.168.0.2", "10.0.0.1", "127.0.0.1"]) == ["192.168.0.2"]
    assert NodePortAddresses(4, ["127.0.0.0/8"]).contains_ipv4_loopback
    assert NodePortAddresses(6, ["192.168.0.0/24"]).match_all


def test_node_port_addresses_primary(tmp_path):
    view = view_of(tmp_path, oracle_objects(nodePortAddresses=["primary"]))
    assert view.node_port_addresses == ("192.168.0.2/32",)
