"""Cluster DNS: the Kubernetes DNS-based service discovery spec, served for real.

    records.py   DNSRecords: the zone built from the reconciled cluster, looked up
                 the way CoreDNS's kubernetes plugin answers
    server.py    DNSServer: UDP + TCP, EDNS0, truncation, cache, autopath, forwarding;
                 ServerThread to run one in the background; server.update(cluster)
    cache.py     the answer cache (positive and negative, TTL-respecting)
    forward.py   the forwarder to upstream resolvers
    client.py    a pod's resolv.conf per dnsPolicy, and glibc's search algorithm

For the lab and traces:

    server = DNSServer.from_cluster(cluster)           # or DNSRecords.from_cluster(cluster)
    with ServerThread(server, "10.244.0.2", 53): ...    # or python -m podnet.dns serve -f DIR
    resolv_conf(pod, cluster).text()
    resolve_for_pod(cluster, pod, "tkng.io").queries
"""

from .client import ResolvConf, cluster_dns_ip, resolv_conf, resolve_for_pod, resolve_sequence
from .records import Answer, DNSRecords
from .server import DNSServer, ServerThread

__all__ = ["Answer", "DNSRecords", "DNSServer", "ResolvConf", "ServerThread", "cluster_dns_ip",
           "resolv_conf", "resolve_for_pod", "resolve_sequence"]
