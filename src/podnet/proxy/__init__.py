"""Service proxies: what kube-proxy (and its alternatives) program on a node.

model.py      the shared input: ProxyView (Service ports, endpoints, node, options),
              CategorizeEndpoints, change tracking between syncs
iptables.py   kube-proxy's iptables mode (restore payload, jump rules, partial syncs)
nftables.py   kube-proxy's nftables mode (the kube-proxy table, transactions)
ipvs.py       kube-proxy's IPVS mode (kube-ipvs0, virtual servers, ipsets and the rules
              around them; the schedulers the simulator runs: sim/ipvs.py)
ebpf.py       Cilium's kube-proxy replacement: the socket-LB / tc service maps, and their
              `cilium-dbg bpf lb list` / `service list` printing (programs: sim/bpf_lb.py)
userspace.py  kube-proxy's historical userspace mode (proxy ports, KUBE-PORTALS-* rules)
"""
