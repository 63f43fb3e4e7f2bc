"""`podnet render`: what each node's components program, printed as the Linux tools print it."""

from __future__ import annotations

import click

from ..errors import InputError
from ..linux import render as fmt
from .main import cli, handle_errors, load_cluster, manifests_option

WHAT = ("links", "addr", "routes", "neigh", "fdb", "iptables", "ip6tables", "nft", "ipset", "ipvs", "cni",
        "sysctl", "bpf-lb", "cilium-svc", "all")


def _cni_files(ns) -> str:
    out = []
    for path in sorted(ns.files):
        if path.startswith("/etc/cni/") or path.startswith("/run/flannel/"):
            out.append(f"# {path}\n{ns.files[path].rstrip()}")
    return "\n".join(out)


def section(dp, ns, what: str) -> str:
    if what == "links":
        return fmt.ip_br_link(ns, dp.state)
    if what == "addr":
        return fmt.ip_br_addr(ns, dp.state)
    if what == "routes":
        text = fmt.ip_route(ns)
        v6 = fmt.ip_route(ns, family=6)
        return text + ("\n" + v6 if v6 else "")
    if what == "neigh":
        return fmt.ip_neigh(ns)
    if what == "fdb":
        return fmt.bridge_fdb(ns)
    if what == "iptables":
        return ns.iptables.rstrip()
    if what == "ip6tables":
        return ns.ip6tables.rstrip()
    if what == "nft":
        if not ns.nft.strip():
            return ""
        from ..linux.nftables import NftRuleset
        return NftRuleset.parse(ns.nft, source=f"{ns.name}:nft").list_ruleset().rstrip()
    if what == "ipset":
        return ns.ipsets.rstrip()
    if what == "ipvs":
        return fmt.ipvsadm_ln(ns.ipvs) if ns.ipvs else ""
    if what == "cni":
        return _cni_files(ns)
    if what == "sysctl":
        return "\n".join(f"{k} = {v}" for k, v in sorted(ns.sysctls.items()))
    if what in ("bpf-lb", "cilium-svc"):
        if ns.socket_lb is None:
            return ""
        from ..proxy import ebpf
        return ebpf.bpf_lb_list(ns.socket_lb) if what == "bpf-lb" else ebpf.service_list(ns.socket_lb)
    raise InputError(f"unknown WHAT {what!r}")


COMMANDS = {"links": "ip -br link", "addr": "ip -br addr", "routes": "ip route", "neigh": "ip neigh",
            "fdb": "bridge fdb", "iptables": "iptables-save", "ip6tables": "ip6tables-save",
            "nft": "nft list ruleset", "ipset": "ipset save", "ipvs": "ipvsadm -Ln",
            "cni": "cat /etc/cni/net.d/*", "sysctl": "sysctl net", "bpf-lb": "cilium-dbg bpf lb list",
            "cilium-svc": "cilium-dbg service list"}


@cli.command("render", context_settings=dict(help_option_names=["-h", "--help"]))
@click.argument("what", type=click.Choice(WHAT), default="all")
@click.option("--node", "node_name", default=None, help="Only this node (default: every node).")
@click.option("--pod", "pod_name", default=None, help="A pod's network namespace instead of a node's.")
@click.option("--cni", default=None, help="Override the cluster's CNI.")
@click.option("--cni-mode", default=None, help="Override the CNI's mode (e.g. flannel host-gw, calico vxlan).")
@click.option("--proxy-mode", default=None, help="Override kube-proxy's mode.")
@manifests_option
@handle_errors
def render_cmd(what, node_name, pod_name, cni, cni_mode, proxy_mode, paths):
    """Print what the real components would program on a node (or in a pod).

    WHAT is links | addr | routes | neigh | fdb | iptables | ip6tables | nft | ipset |
    ipvs | cni | sysctl | bpf-lb | cilium-svc | all, printed as `ip -br link`, `ip route`,
    `ip neigh`, `bridge fdb`, `iptables-save`, `nft list ruleset`, `ipset save`,
    `ipvsadm -Ln`, the CNI conflist, `cilium-dbg bpf lb list` and `cilium-dbg service
    list` would show them, so the output diffs against a real node.

    \b
    Examples:
      podnet render routes --node k8s-guide-worker2 -f lab/
      podnet render iptables --node k8s-guide-worker -f lab/
      podnet render routes --pod net-tshoot-abcde -f lab/
      podnet render all --node k8s-guide-worker --cni flannel --proxy-mode ipvs -f lab/
    """
    from ..dataplane import build_dataplane
    cluster = load_cluster(paths, cni=cni, cni_mode=cni_mode, proxy_mode=proxy_mode)
    dp = build_dataplane(cluster)
    if pod_name:
        targets = [dp.netns_of_pod(cluster.pod(pod_name))]
    elif node_name:
        targets = [dp.node_netns(cluster.node(node_name).name)]
    else:
        targets = [dp.node_netns(n.name) for n in cluster.nodes]
    whats = [w for w in WHAT if w not in ("all",)] if what == "all" else [what]
    blocks = []
    for ns in targets:
        for w in whats:
            text = section(dp, ns, w)
            if what == "all" and not text:
                continue
            header = []
            if len(targets) > 1 or what == "all":
                title = f"pod {ns.pod}" if ns.kind == "pod" else f"node {ns.name}"
                header.append(f"# {title}: {COMMANDS[w]}")
            blocks.append("\n".join(header + ([text] if text else [])))
    click.echo("\n\n".join(b for b in blocks if b))
