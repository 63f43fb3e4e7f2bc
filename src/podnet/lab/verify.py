"""`podnet lab verify`: the kernel against the model, and the simulator against the kernel.

1. State. The lab's namespaces are dumped with podnet.snapshot (the same files
   as `podnet lab snapshot`), loaded back, and compared, namespace by namespace,
   with the rendered state: links (kind, master, MTU, MAC, up, VXLAN settings),
   addresses, the routes podnet wrote (every table) and the prefix routes the
   kernel derived, rules, neighbours (permanent and proxy), FDB entries, sysctls,
   iptables / ip6tables rules (normalised the way iptables-save prints them),
   ipsets, nft tables, IPVS and the listening sockets.

2. Flows. For a set of flows (pod->pod on the same node and across nodes,
   pod->ClusterIP, node->ClusterIP, NodePort from the underlay, pod->outside,
   DNS) podnet.sim.trace predicts every possible outcome; the flow is then sent
   for real, several times, from inside the source namespace. Each real answer
   names the backend that answered and the client address it saw; it must be one
   of the predicted outcomes.

Differences come back as `Diff`s; `report()` prints them, and the command fails
when there is one.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..linux.iptables_builder import restore_statements
from ..linux.state import DataplaneState, Link, Netns, Route
from .apply import NORMALISED_SYSCTLS, Applier, _ipvs_text, fdb_key


@dataclass
class Diff:
    netns: str
    section: str
    model: list[str]
    kernel: list[str]

    def text(self) -> str:
        lines = [f"--- model  {self.netns} {self.section}", f"+++ kernel {self.netns} {self.section}"]
        for line in difflib.unified_diff(self.model, self.kernel, lineterm="", n=1):
            if line.startswith(("---", "+++")):
                continue
            lines.append(line)
        return "\n".join(lines)


# ============================================================================ state

def _link_line(link: Link, kind: str) -> str:
    parts = [link.name, kind, f"mtu {link.mtu}", "up" if link.up else "down"]
    if link.master:
        parts.append(f"master {link.master}")
    if link.mac and kind != "loopback":
        parts.append(link.mac.lower())
    if link.vxlan is not None:
        vx = link.vxlan
        parts.append(f"vxlan id {vx.vni} local {vx.local} dstport {vx.dstport} "
                     f"{'learning' if vx.learning else 'nolearning'} dev {vx.dev}")
    if link.master:
        parts.append("hairpin on" if link.hairpin else "hairpin off")
    return " ".join(parts)


def _model_kind(ns: Netns, link: Link, subs: dict) -> Optional[str]:
    sub = subs.get((ns.name, link.name))
    if sub is not None:
        return None if sub["kernel_kind"] is None else "ether"      # the loader reads ifb as a plain NIC
    if link.segment is not None or link.kind == "ether":
        return "veth"               # a physical NIC is a veth into the segment's switch
    return link.kind


def compare_links(model: Netns, kernel: Netns, subs: dict) -> list[Diff]:
    m, k = [], []
    for link in model.links.values():
        kind = _model_kind(model, link, subs)
        if kind is None:
            continue
        m.append(_link_line(link, kind))
    for link in kernel.links.values():
        k.append(_link_line(link, link.kind))
    out = []
    if sorted(m) != sorted(k):
        out.append(Diff(model.name, "links", sorted(m), sorted(k)))
    ma = sorted(f"{l.name} {a.interface}" for l in model.links.values() for a in l.addresses
                if _model_kind(model, l, subs) is not None)
    ka = sorted(f"{l.name} {a.interface}" for l in kernel.links.values() for a in l.addresses
                if not (a.ip.version == 6 and a.ip.is_link_local))
    if ma != ka:
        out.append(Diff(model.name, "addresses", ma, ka))
    return out


def _route_text(r: Route) -> str:
    from ..linux.render import route_line
    rr = Route(r.dst, None if r.type in ("blackhole", "unreachable", "prohibit", "throw") else r.dev,
               r.via, r.src, r.table, r.type,
               r.scope if r.type == "unicast" else "global", r.proto,
               1024 if (r.dst.version == 6 and r.metric == 0) else r.metric, r.onlink,
               list(r.nexthops))
    text = route_line(rr, show_table=True)
    return " ".join(text.split())


def compare_routes(model: Netns, kernel: Netns, subs: dict) -> list[Diff]:
    from ..linux.routing import kernel_routes
    skipped = {l for (ns, l), s in subs.items() if ns == model.name and s["kernel_kind"] is None}
    m = sorted(_route_text(r) for r in model.routes if r.proto != "kernel" and r.dev not in skipped)
    k = sorted(_route_text(r) for r in kernel.routes if r.proto != "kernel")
    out = []
    if m != k:
        out.append(Diff(model.name, "routes", m, k))
    # the prefix routes the kernel derived from addresses, as podnet.linux.routing derives them
    written = {(r.table, r.dst, r.metric) for r in model.routes}
    md = sorted(f"{r.dst} dev {r.dev} scope {r.scope}" for r in kernel_routes(model)
                if r.table == 254 and r.dst.version == 4 and (r.table, r.dst, r.metric) not in written
                and r.dev not in skipped)
    kd = sorted(f"{r.dst} dev {r.dev} scope {r.scope}" for r in kernel.routes
                if r.proto == "kernel" and r.table == 254 and r.dst.version == 4)
    if md != kd:
        out.append(Diff(model.name, "kernel prefix routes", md, kd))
    return out


def _rule_text(r) -> str:
    parts = [f"{r.priority}:", "not" if r.invert else "", f"from {r.src or 'all'}"]
    if r.dst:
        parts.append(f"to {r.dst}")
    if r.fwmark is not None:
        parts.append(f"fwmark {r.fwmark:#x}" + (f"/{r.fwmask:#x}" if r.fwmask not in (None, 0xFFFFFFFF) else ""))
    if r.iif:
        parts.append(f"iif {r.iif}")
    if r.oif:
        parts.append(f"oif {r.oif}")
    parts.append(f"lookup {r.table}" if r.action == "to_tbl" else r.action)
    return f"-{r.family} " + " ".join(p for p in parts if p)


def compare_rules(model: Netns, kernel: Netns) -> list[Diff]:
    fams = {4} | {r.family for r in model.rules}
    m = sorted(_rule_text(r) for r in model.rules if r.family in fams)
    k = sorted(_rule_text(r) for r in kernel.rules if r.family in fams)
    return [Diff(model.name, "rules", m, k)] if m != k else []


def compare_neighbours(model: Netns, kernel: Netns, subs: dict) -> list[Diff]:
    skipped = {l for (ns, l), s in subs.items() if ns == model.name and s["kernel_kind"] is None}

    def line(n):
        if n.proxy:
            return f"proxy {n.ip} dev {n.dev}"
        return f"{n.ip} dev {n.dev} lladdr {(n.lladdr or '').lower()} {n.state.upper()}"
    m = sorted(line(n) for n in model.neighbours if n.dev not in skipped and (n.proxy or n.state.upper() in
                                                                               ("PERMANENT", "NOARP")))
    k = sorted(line(n) for n in kernel.neighbours if n.proxy or n.state.upper() == "PERMANENT")
    return [Diff(model.name, "neighbours", m, k)] if m != k else []


def compare_fdb(model: Netns, kernel: Netns) -> list[Diff]:
    local_macs = {(l.mac or "").lower() for l in kernel.links.values()}

    def line(f):
        kind = "self" if f.self_ or not f.master else f"master {f.master}"
        return f"{f.mac.lower()} dev {f.dev}" + (f" dst {f.dst}" if f.dst else "") + \
            (f" vni {f.vni}" if f.vni else "") + (f" vlan {f.vlan}" if f.vlan else "") + f" {kind}"
    m = sorted(line(f) for f in model.fdb)
    k = list(line(f) for f in kernel.fdb
               if (f.permanent or f.static) and not (f.permanent and f.mac.lower() in local_macs)
               and not f.mac.lower().startswith(("33:33:", "01:00:5e:")))
    # the model may list the bridges' own entries too
    # the model may also list entries the kernel makes by itself (a port's own MAC...)
    k_all = {line(f) for f in kernel.fdb}
    k = sorted(set(k) | (set(m) & k_all))
    return [Diff(model.name, "fdb", m, k)] if m != k else []


def compare_sysctls(model: Netns, kernel: Netns) -> list[Diff]:
    keys = set(model.sysctls) | set(NORMALISED_SYSCTLS)
    m, k = [], []
    for key in sorted(keys):
        if key not in kernel.sysctls:
            continue                    # not captured (podnet.snapshot reads a fixed list)
        want = model.sysctls.get(key, "0")
        have = kernel.sysctls[key]
        if want.split() != have.split():
            m.append(f"{key} = {want}")
            k.append(f"{key} = {have}")
    return [Diff(model.name, "sysctls", m, k)] if m else []


# ---------------------------------------------------------------------------- iptables

BASIC_ORDER = ("-s", "-d", "-i", "-o", "-p", "-f")
CTSTATE_OPTS = ("--ctstate", "--state", "--ctstatus")


def _norm_rule(rule: str, family: int) -> str:
    try:
        toks = shlex.split(rule)
    except ValueError:
        toks = rule.split()
    basic: dict[str, list[str]] = {}
    rest: list[str] = []
    i = 0
    while i < len(toks):
        t = toks[i]
        neg = False
        if t == "!" and i + 1 < len(toks) and toks[i + 1] in BASIC_ORDER:
            neg, i, t = True, i + 1, toks[i + 1]
        long = {"--source": "-s", "--src": "-s", "--destination": "-d", "--dst": "-d", "--in-interface": "-i",
                "--out-interface": "-o", "--protocol": "-p"}.get(t, t)
        if long in BASIC_ORDER and long != "-f" and i + 1 < len(toks):
            value = toks[i + 1]
            if long in ("-s", "-d") and "/" not in value:
                value += "/32" if family == 4 else "/128"
            basic[long] = (["!"] if neg else []) + [long, value]
            i += 2
            continue
        rest.append(t)
        i += 1
    proto = basic.get("-p", [None])[-1]
    out: list[str] = []
    j = 0
    while j < len(rest):
        t = rest[j]
        if t == "-m" and j + 1 < len(rest) and rest[j + 1] == proto and proto in ("tcp", "udp", "sctp", "icmp"):
            j += 2                      # iptables-save prints the implicit -m tcp after -p tcp; drop both ways
            continue
        if t in CTSTATE_OPTS and j + 1 < len(rest):
            out += [t, ",".join(sorted(rest[j + 1].split(",")))]
            j += 2
            continue
        if t == "--probability" and j + 1 < len(rest):
            out += [t, f"{float(rest[j + 1]):.6f}"]
            j += 2
            continue
        if t == "--or-mark" and j + 1 < len(rest):
            out += ["--set-xmark", f"{rest[j + 1]}/{rest[j + 1]}"]
            j += 2
            continue
        if t == "--xor-mark" and j + 1 < len(rest):
            out += ["--set-xmark", f"{rest[j + 1]}/0x0"]
            j += 2
            continue
        if t == "--set-mark" and j + 1 < len(rest):
            v = rest[j + 1]
            out += ["--set-xmark", v if "/" in v else f"{v}/0xffffffff"]
            j += 2
            continue
        if t.startswith("0x") and re.fullmatch(r"0x[0-9a-fA-F]+(/0x[0-9a-fA-F]+)?", t):
            t = "/".join(hex(int(x, 16)) for x in t.split("/"))
        out.append(t)
        j += 1
    if "-j" in out and out[out.index("-j") + 1:out.index("-j") + 2] == ["REJECT"] and "--reject-with" not in out:
        out += ["--reject-with", "icmp-port-unreachable" if family == 4 else "icmp6-port-unreachable"]
    head = []
    for key in BASIC_ORDER:
        head += basic.get(key, [])
    return " ".join(shlex.quote(t) if (" " in t or not t) else t for t in head + out)


def normalise_iptables(text: str, family: int = 4) -> dict[str, dict]:
    """{table: {"policies": {chain: policy}, "chains": {chain: [normalised rule, ...]}}}"""
    tables: dict[str, dict] = {}
    for kind, name, chain, rest in restore_statements(text):
        if kind == "table":
            tables.setdefault(name, {"policies": {}, "chains": {}})
        elif kind == "chain" and name is not None:
            tables[name]["chains"].setdefault(chain, [])
            if rest != "-":
                tables[name]["policies"][chain] = rest
        elif kind == "rule" and name is not None:
            tables[name]["chains"].setdefault(chain, []).append(_norm_rule(rest, family))
    # empty tables say nothing (iptables-save leaves out tables nobody touched)
    return {name: t for name, t in tables.items() if any(t["chains"].values()) or
            any(p != "ACCEPT" for p in t["policies"].values())}


def _ipt_lines(tables: dict) -> list[str]:
    out = []
    for name in sorted(tables):
        t = tables[name]
        out.append(f"*{name}")
        for chain in sorted(t["chains"]):
            pol = t["policies"].get(chain)
            out.append(f":{chain} {pol or '-'}")
        for chain in sorted(t["chains"]):
            out += [f"-A {chain} {r}" for r in t["chains"][chain]]
    return out


def compare_iptables(model: Netns, kernel: Netns, nfacct_stripped: bool) -> list[Diff]:
    out = []
    for section, mtext, ktext, fam in (("iptables", model.iptables, kernel.iptables, 4),
                                       ("ip6tables", model.ip6tables, kernel.ip6tables, 6)):
        if nfacct_stripped:
            mtext = re.sub(r" -m nfacct --nfacct-name \S+", "", mtext)
        m = _ipt_lines(normalise_iptables(mtext, fam))
        k = _ipt_lines(normalise_iptables(ktext, fam))
        if m != k:
            out.append(Diff(model.name, section, m, k))
    return out


# ---------------------------------------------------------------------------- ipsets, nft, ipvs

def _ipset_lines(text: str) -> list[str]:
    out = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "create":
            # options the kernel adds or reorders (hashsize, maxelem, bucketsize, initval) are left out
            keep = [p for i, p in enumerate(parts[3:]) if p in ("family", "inet", "inet6", "timeout", "comment",
                                                                  "counters") or
                    (i > 0 and parts[3:][i - 1] in ("family", "timeout"))]
            out.append(" ".join(parts[:3] + keep))
        elif parts[0] == "add":
            out.append(" ".join(parts[:3]))
    return sorted(out)


_REJECT_DEFAULT = {"ip": "icmp port-unreachable", "ip6": "icmpv6 port-unreachable",
                   "inet": "icmpx port-unreachable", "bridge": "icmpx port-unreachable"}


def _nft_norm(line: str, family: str) -> str:
    """Spellings nft accepts on input but prints one way (or that podnet's reading of the
    kernel's JSON prints differently): `mark` / `meta mark`, or/and/xor / | & ^, hex / decimal,
    one-element anonymous sets, reject's default type."""
    line = re.sub(r"(?<!meta )(?<!ct )(?<![\w-])mark\b", "meta mark", line)
    line = re.sub(r" or ", " | ", line)
    line = re.sub(r" and ", " & ", line)
    line = re.sub(r" xor ", " ^ ", line)
    line = re.sub(r"\b0x[0-9a-fA-F]+\b", lambda m: str(int(m[0], 16)), line)
    line = re.sub(r"\{ ([^,{}]+) \}", r"\1", line)
    line = re.sub(r"\breject(?! with)\b", f"reject with {_REJECT_DEFAULT.get(family, 'icmp port-unreachable')}",
                  line)
    return line


def _nft_lines(text: str) -> list[str]:
    out = []
    skip = False
    depth = 0
    family = "ip"
    pending: Optional[list[str]] = None       # an `elements = { ... }` list spread over lines
    for raw in text.splitlines():
        line = re.sub(r"\s+#\s*handle\s+\d+", "", raw).strip()
        line = re.sub(r"\s+", " ", line)
        if not line or line.startswith("#"):
            continue
        m = re.match(r"table (\w+) ([\w.-]+)", line)
        if m and depth == 0:
            family = m[1]
            skip = (m[1], m[2]) in _XTABLES
        depth += line.count("{") - line.count("}")
        if skip:
            if depth <= 0:
                skip, depth = False, 0
            continue
        if re.fullmatch(r'comment ".*"', line):
            continue                    # table and chain comments (not in every kernel's JSON)
        if pending is not None or line.startswith("elements = {"):
            body = line[len("elements = {"):] if pending is None else line
            pending = (pending or []) + [e.strip() for e in body.rstrip("}").split(",") if e.strip()]
            if line.endswith("}"):
                out.append("elements = { " + ", ".join(sorted(_nft_norm(e, family) for e in pending)) + " }")
                pending = None
            continue
        out.append(_nft_norm(line, family))
    return out


_XTABLES = {(f, t) for f in ("ip", "ip6") for t in ("filter", "nat", "mangle", "raw", "security")}


def _canonical_nft(text: str) -> str:
    """The ruleset as `nft list ruleset` prints it, whichever form it was written in (kube-proxy
    writes `nft -f` commands), through podnet's own nft parser."""
    if not text.strip():
        return ""
    try:
        from ..linux.nftables import NftRuleset
        return NftRuleset.parse(text, source="nft").list_ruleset(exclude=_XTABLES)
    except Exception:
        return text


def compare_netfilter_rest(model: Netns, kernel: Netns) -> list[Diff]:
    out = []
    m, k = _ipset_lines(model.ipsets), _ipset_lines(kernel.ipsets)
    if m != k:
        out.append(Diff(model.name, "ipsets", m, k))
    m, k = _nft_lines(_canonical_nft(model.nft)), _nft_lines(_canonical_nft(kernel.nft))
    if m != k:
        out.append(Diff(model.name, "nft", m, k))
    m, k = sorted(_ipvs_text(model).splitlines()), sorted(_ipvs_text(kernel).splitlines())
    if m != k:
        out.append(Diff(model.name, "ipvs", m, k))
    return out


def _vxlan_sockets(ns: Netns, families: set) -> set[str]:
    """The UDP socket the kernel opens for every VXLAN device that is up (`ss -uln` lists it):
    on the wildcard address of the local address's family (IPv4 without one)."""
    out = set()
    for link in ns.links.values():
        vx = link.vxlan
        if link.kind == "vxlan" and vx is not None and link.up:
            family = vx.local.version if vx.local is not None else 4
            if family in families:
                out.add(f"udp {'0.0.0.0' if family == 4 else '::'}:{vx.dstport}")
    return out


def compare_listeners(model: Netns, kernel: Netns) -> list[Diff]:
    """Sockets of the families the namespace has addresses of (an IPv4-only pod's [::]:80 listener
    is unreachable from outside, and kube-dns's server may bind 0.0.0.0 only)."""
    families = {a.ip.version for l, a in model.addresses() if l.kind != "loopback"} or {4}

    def line(l):
        return f"{l.proto} {l.ip}:{l.port}"
    m = sorted({line(l) for l in model.listeners if l.port and l.proto in ("tcp", "udp")
                and l.ip.version in families} | _vxlan_sockets(model, families))
    k = sorted({line(l) for l in kernel.listeners if l.ip.version in families})
    # the outside world answers on any port; the lab serves a few of them
    if model.kind == "external":
        return []
    return [Diff(model.name, "listeners", m, k)] if m != k else []


def compare_state(model: DataplaneState, kernel: DataplaneState, substitutions: list[dict] | None = None,
                  nfacct_stripped: bool = False, listeners: bool = True) -> list[Diff]:
    subs = {(s["netns"], s["link"]): s for s in substitutions or []}
    diffs: list[Diff] = []
    for name, ns in model.namespaces.items():
        k = kernel.namespaces.get(name)
        if k is None:
            diffs.append(Diff(name, "namespace", [name], []))
            continue
        diffs += compare_links(ns, k, subs)
        diffs += compare_routes(ns, k, subs)
        diffs += compare_rules(ns, k)
        diffs += compare_neighbours(ns, k, subs)
        diffs += compare_fdb(ns, k)
        diffs += compare_sysctls(ns, k)
        diffs += compare_iptables(ns, k, nfacct_stripped)
        diffs += compare_netfilter_rest(ns, k)
        if listeners:
            diffs += compare_listeners(ns, k)
    return diffs


# ============================================================================ flows

@dataclass
class Flow:
    kind: str                       # pod->pod (same node), pod->ClusterIP, ...
    src: str                        # model namespace the client runs in
    src_label: str
    dst: str                        # IP
    port: int
    proto: str = "tcp"
    http: bool = False
    dst_label: str = ""
    dns_name: Optional[str] = None  # DNS flows: the name asked, and the address it must resolve to
    dns_expect: Optional[str] = None
    observe_ct: Optional[str] = None    # DNS flows: the namespace whose conntrack shows the backend

    @property
    def label(self) -> str:
        return f"{self.src_label} -> {self.dst_label or self.dst}:{self.port}/{self.proto}"


@dataclass
class FlowResult:
    flow: Flow
    predicted: set
    observed: list
    ok: bool
    note: str = ""


def _server_name(state: DataplaneState, outcome) -> Optional[str]:
    ns = state.namespaces.get(outcome.ns)
    if ns is None:
        return outcome.ns
    if ns.kind == "pod" and ns.pod:
        return ns.pod
    if ns.kind == "external":
        return "internet"
    owner = outcome.listener.owner if outcome.listener is not None else ""
    if owner.startswith("pod "):
        return owner.split()[1]
    return f"node/{ns.name}"


def predict(state: DataplaneState, flow: Flow) -> set:
    from ..linux.netfilter import Packet
    from ..sim.trace import TraceRequest, trace
    any_ip = ipaddress.ip_address("0.0.0.0" if ipaddress.ip_address(flow.dst).version == 4 else "::")
    pkt = Packet(any_ip, ipaddress.ip_address(flow.dst), flow.proto, 40000, flow.port)
    result = trace(state, TraceRequest(flow.src, pkt, reply=False))
    out = set()
    for b in result.branches:
        o = b.forward.outcome
        if o.result in ("delivered", "answered"):
            out.add(("ok", _server_name(state, o), str(o.packet.src) if o.packet else None))
        elif o.result == "rejected":
            out.add(("refused", None, None))
        else:
            out.add(("timeout", None, None))
    return out


def _speaks_http(cluster, sp, backends) -> bool:
    """Whether the echo servers behind a Service port answer HTTP on its target port
    (the port the backends really listen on: a number, or a named containerPort)."""
    from .workloads import _http_ports
    for b in backends:
        target = sp.target if isinstance(sp.target, int) else b.spec.port_by_name(sp.target, sp.protocol)
        if target is not None:
            return target in _http_ports(cluster, b)
    return sp.app_protocol == "http"


def plan_flows(dp, limit: Optional[int] = None) -> list[Flow]:
    """The flows `lab verify` checks, chosen from the cluster."""
    from ..dataplane.topology import GATEWAY, INTERNET
    cluster = dp.cluster
    state = dp.state
    pods = [p for p in cluster.pods if p.key in dp.pod_ns and p.pod_ips]

    def listening(p):
        ns = state.namespaces[dp.pod_ns[p.key]]
        return [l for l in ns.listeners if l.proto == "tcp" and l.ip.version == p.pod_ip.version and l.port]
    from .workloads import _http_ports, dns_pods
    dns_keys = dns_pods(cluster)
    servers = [p for p in pods if listening(p) and p.key not in dns_keys]
    system = ("kube-system", "local-path-storage", "kube-public", "kube-node-lease")
    clients = sorted([p for p in pods if not listening(p)] or pods, key=lambda p: p.namespace in system)
    # one client per node, the first pod there that serves nothing (net-tshoot in the guide's lab)
    by_node: dict[str, object] = {}
    for p in clients:
        by_node.setdefault(p.node_name, p)
    flows: list[Flow] = []

    def pod_flow(kind, client, server):
        port = listening(server)[0].port
        flows.append(Flow(kind, dp.pod_ns[client.key], f"pod {client.key}", str(server.pod_ip), port,
                          http=port in _http_ports(cluster, server), dst_label=f"pod {server.key}"))
    for node, client in by_node.items():
        same = [s for s in servers if s.node_name == node and s.key != client.key]
        other = [s for s in servers if s.node_name != node]
        if same:
            pod_flow("pod->pod (same node)", client, same[0])
        if other:
            pod_flow("pod->pod (other node)", client, other[0])
    first_client = next(iter(by_node.values()), None)
    services = [s for s in cluster.services if s.cluster_ips and not s.headless and s.ports
                and s.key != "kube-system/kube-dns"]
    workers = [n for n in cluster.nodes if not n.is_control_plane] or cluster.nodes
    for svc in services:
        sp = next((p for p in svc.ports if p.protocol.upper() == "TCP"), None)
        if sp is None:
            continue
        backends = [p for p in pods if p.namespace == svc.namespace and svc.selector
                    and all(p.meta.labels.get(k) == v for k, v in svc.selector.items())]
        http = _speaks_http(cluster, sp, backends)
        if first_client is not None:
            flows.append(Flow("pod->ClusterIP", dp.pod_ns[first_client.key], f"pod {first_client.key}",
                              str(svc.cluster_ip), sp.port, http=http, dst_label=f"svc {svc.key}"))
        if workers:
            node = workers[0].name
            flows.append(Flow("node->ClusterIP", node, f"node {node}", str(svc.cluster_ip), sp.port, http=http,
                              dst_label=f"svc {svc.key}"))
        if sp.node_port and GATEWAY in state.namespaces:
            for n in cluster.nodes[:3]:
                ip = n.internal_ip_of(4)
                if ip is not None:
                    flows.append(Flow(f"NodePort from the underlay ({svc.external_traffic_policy or 'Cluster'})",
                                      GATEWAY, "gateway (underlay)", str(ip), sp.node_port, http=http,
                                      dst_label=f"node {n.name} nodePort of svc {svc.key}"))
    if first_client is not None and INTERNET in state.namespaces:
        flows.append(Flow("pod->outside", dp.pod_ns[first_client.key], f"pod {first_client.key}",
                          "198.51.100.10", 80, http=True, dst_label="the internet"))
    dns_svc = cluster.find_service("kube-system/kube-dns")
    if first_client is not None and dns_svc is not None and dns_svc.cluster_ips and dns_keys:
        zone = cluster.config.cluster_domain.rstrip(".")
        k8s = cluster.find_service("default/kubernetes")
        flows.append(Flow("DNS", dp.pod_ns[first_client.key], f"pod {first_client.key}", str(dns_svc.cluster_ip),
                          53, "udp", dst_label="kube-dns", dns_name=f"kubernetes.default.svc.{zone}",
                          dns_expect=str(k8s.cluster_ip) if k8s and k8s.cluster_ips else None,
                          observe_ct=first_client.node_name))
    if limit is not None:
        # keep the variety: one flow of each kind first, then the rest
        seen, first, rest = set(), [], []
        for f in flows:
            (rest if f.kind in seen else first).append(f)
            seen.add(f.kind)
        flows = (first + rest)[:limit]
    return flows


def observe(lab, flow: Flow, pods_by_ip: dict) -> tuple:
    from . import client
    netns = lab.kname(flow.src)
    if flow.dns_name is None:
        r = client.request(netns, flow.dst, flow.port, flow.proto, http=flow.http)
        if r.status == "unreachable":
            return ("timeout", None, None)
        if r.status == "error":
            return ("error: " + r.text[:80], None, None)
        return r.key()
    status, addrs, sport = client.dns_query(netns, flow.dst, flow.dns_name)
    if status == "timeout":
        return ("timeout", None, None)
    if status != "ok" or (flow.dns_expect and flow.dns_expect not in addrs):
        return (f"dns {status} {','.join(addrs) or '-'}", None, None)
    backend, seen = _conntrack_backend(lab.kname(flow.observe_ct), flow.dst, sport) if flow.observe_ct else (None, None)
    return ("ok", pods_by_ip.get(backend, backend), seen)


def _conntrack_backend(netns: str, dst: str, sport: Optional[int]) -> tuple:
    """(backend address, client address it saw) of a DNATed UDP flow, from conntrack in `netns`."""
    from . import nsutil
    if sport is None:
        return None, None
    proc = nsutil.run_in(netns, ["conntrack", "-L", "-p", "udp", "--orig-dst", dst, "--sport", str(sport)])
    for line in proc.stdout.splitlines():
        pairs = re.findall(r"(src|dst)=(\S+)", line)
        if len(pairs) >= 4:
            # original src, dst; reply src (the backend), dst (what the backend saw)
            return pairs[2][1], pairs[3][1]
    return None, None


def run_flows(lab, dp, flows: list[Flow], tries: int = 0) -> list[FlowResult]:
    pods_by_ip = {str(ip): p.key for p in dp.cluster.pods if not p.host_network for ip in p.pod_ips}
    results = []
    for flow in flows:
        try:
            predicted = predict(dp.state, flow)
        except Exception as e:          # a simulator failure is a result too
            predicted = set()
            note = f"simulator failed: {e.__class__.__name__}: {e}"
        else:
            note = ""
        if flow.dns_name is not None:
            # the DNS answer is checked for itself; the backend comes from conntrack
            predicted = {p if p[0] != "ok" else ("ok", p[1], p[2]) for p in predicted}
        oks = [p for p in predicted if p[0] == "ok"]
        n = tries or (1 if not oks else min(16, max(4, 4 * len(oks))))
        observed = [observe(lab, flow, pods_by_ip) for _ in range(n)]
        bad = [o for o in observed if o not in predicted]
        if flow.dns_name is not None:
            # conntrack may already have expired or been unreadable: then only the verdict counts
            bad = [o for o in bad if not (o[0] == "ok" and o[1] is None and oks)]
        results.append(FlowResult(flow, predicted, observed, not bad and not note, note))
    return results


# ============================================================================ the whole check

@dataclass
class Report:
    diffs: list[Diff] = field(default_factory=list)
    flows: list[FlowResult] = field(default_factory=list)
    namespaces: int = 0
    snapshot: Optional[str] = None

    @property
    def ok(self) -> bool:
        return not self.diffs and all(f.ok for f in self.flows)

    def text(self) -> str:
        lines = [f"state: {self.namespaces} namespaces compared with the rendered state: "
                 f"{len(self.diffs) or 'no'} difference{'s' if len(self.diffs) != 1 else ''}"]
        for d in self.diffs:
            lines.append(d.text())
        if self.flows:
            lines.append(f"flows: {sum(f.ok for f in self.flows)}/{len(self.flows)} as the simulator predicts")
            for f in self.flows:
                seen = {}
                for o in f.observed:
                    seen[o] = seen.get(o, 0) + 1
                obs = ", ".join(_outcome(o) + (f" x{c}" if c > 1 else "") for o, c in seen.items())
                lines.append(f"  {'ok  ' if f.ok else 'FAIL'} {f.flow.kind}: {f.flow.label}")
                lines.append(f"       kernel:    {obs}")
                if not f.ok or len(f.predicted) > 1:
                    pred = ", ".join(sorted(_outcome(p) for p in f.predicted)) or "nothing"
                    lines.append(f"       simulator: {pred}")
                if f.note:
                    lines.append(f"       {f.note}")
        lines.append("verify: " + ("OK" if self.ok else "FAILED"))
        return "\n".join(lines)

    def as_json(self) -> dict:
        return {"ok": self.ok, "namespaces": self.namespaces,
                "diffs": [{"netns": d.netns, "section": d.section, "model": d.model, "kernel": d.kernel}
                          for d in self.diffs],
                "flows": [{"kind": f.flow.kind, "flow": f.flow.label, "ok": f.ok, "note": f.note,
                           "predicted": sorted([list(p) for p in f.predicted], key=str),
                           "observed": [list(o) for o in f.observed]} for f in self.flows]}


def _outcome(o: tuple) -> str:
    status, server, client = o
    if status != "ok":
        return status
    if server is None:
        return "answered"
    return f"{server} saw {client}" if client else server


def verify(lab, flows: Optional[int] = None, tries: int = 0, state_only: bool = False,
           keep_snapshot: Optional[str] = None) -> Report:
    from ..snapshot.load import load_snapshot
    rec = lab.record or lab.load()
    _, dp = lab.render(rec["inputs"], dict(rec["overrides"], proxy_mode=rec["proxy_mode"]))
    report = Report(namespaces=len(dp.state.namespaces))
    with tempfile.TemporaryDirectory(prefix="podnet-lab-verify-") as tmp:
        where = Path(keep_snapshot) if keep_snapshot else Path(tmp)
        lab.snapshot(where)
        report.snapshot = str(where) if keep_snapshot else None
        try:
            kernel = load_snapshot(where)
        except Exception:
            # the nft JSON could not be read: fall back to the text form
            for p in where.glob("*/nft.json"):
                p.unlink()
            kernel = load_snapshot(where)
    nfacct_stripped = any("nfacct" in n for n in rec.get("notes", []))
    report.diffs = compare_state(dp.state, kernel, rec.get("substitutions"), nfacct_stripped,
                                 listeners=rec.get("workloads", True))
    if not state_only and rec.get("workloads", True):
        report.flows = run_flows(lab, dp, plan_flows(dp, flows), tries)
    return report
