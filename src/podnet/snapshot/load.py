"""Load a snapshot directory (podnet's own, or the same files taken on a real node)
into the dataplane model.

Everything is read from the standard tools' output: `ip -j` JSON for links,
addresses, routes, rules and neighbours, `bridge -j fdb`, iptables-save /
ipset save text, `nft -j` JSON, `conntrack -L`, `ipvsadm -Sn`, `ss -Hlntu`.
veth pairs are matched by ifindex/peer ifindex (or listed in topology.json);
physical NICs join the L2 segments topology.json names.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Optional

from ..errors import InputError
from ..linux.state import (TABLE_IDS, ConntrackEntry, DataplaneState, FdbEntry, IpvsRealServer,
                           IpvsService, Link, Listener, Neighbour, Netns, Nexthop, Route, Rule,
                           Segment, TunnelInfo, VxlanInfo)

KIND_MAP = {"veth": "veth", "bridge": "bridge", "vxlan": "vxlan", "dummy": "dummy", "ipip": "ipip",
            "tun": "tun", "gre": "ipip", "sit": "ipip"}


def _read_json(path: Path, default):
    if not path.exists():
        return default
    text = path.read_text().strip()
    if not text:
        return default
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"malformed JSON: {e.msg}", file=str(path), field=f"line {e.lineno}") from None


def _read_text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _table(value) -> int:
    if value is None:
        return 254
    if isinstance(value, int):
        return value
    return TABLE_IDS.get(value, int(value) if str(value).isdigit() else 254)


def _net(dst: str, family: int):
    if dst == "default":
        return ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")
    return ipaddress.ip_network(dst, strict=False)


def load_links(ns: Netns, links_json: list, addrs_json: list) -> dict[int, dict]:
    raw_by_index = {}
    for e in links_json:
        info = e.get("linkinfo") or {}
        kind = "loopback" if e.get("link_type") == "loopback" else KIND_MAP.get(info.get("info_kind"), "ether")
        flags = e.get("flags") or []
        link = Link(e["ifname"], kind, mac=e.get("address") if kind != "loopback" else None,
                    mtu=int(e.get("mtu", 1500)), up="UP" in flags, ifindex=int(e["ifindex"]),
                    master=e.get("master"), noarp="NOARP" in flags, promisc="PROMISC" in flags,
                    alias=e.get("ifalias"))
        data = info.get("info_data") or {}
        if kind == "vxlan":
            local = data.get("local") or data.get("local6")
            remote = data.get("remote") or data.get("group")
            link.vxlan = VxlanInfo(int(data.get("id", 0)), ipaddress.ip_address(local) if local else None,
                                   int(data.get("port", 8472)), bool(data.get("learning", True)),
                                   data.get("link"), ipaddress.ip_address(remote) if remote else None)
            link.learning = bool(data.get("learning", True))
        if kind == "ipip":
            local, remote = data.get("local"), data.get("remote")
            link.tunnel = TunnelInfo(ipaddress.ip_address(local) if local and local != "any" else None,
                                     ipaddress.ip_address(remote) if remote and remote != "any" else None)
            link.noarp = True
        slave = info.get("info_slave_data") or {}
        if info.get("info_slave_kind") == "bridge":
            link.hairpin = bool(slave.get("hairpin", False))
            link.learning = bool(slave.get("learning", True))
        ns.links[link.name] = link
        raw_by_index[link.ifindex] = e
    for e in addrs_json:
        link = ns.links.get(e.get("ifname"))
        if link is None:
            continue
        for a in e.get("addr_info") or []:
            if a.get("family") not in ("inet", "inet6"):
                continue
            addr = link.add_address(f"{a['local']}/{a['prefixlen']}", a.get("scope", "global"))
            if a.get("address") and a.get("address") != a.get("local"):
                addr.peer = ipaddress.ip_address(a["address"])
    ns._next_ifindex = max([l.ifindex for l in ns.links.values()] + [0]) + 1
    return raw_by_index


def load_routes(ns: Netns, routes_json: list, family: int) -> None:
    for r in routes_json:
        dst = r.get("dst")
        if dst is None:
            continue
        rtype = r.get("type", "unicast")
        route = Route(_net(dst, family), r.get("dev"),
                      via=ipaddress.ip_address(r["gateway"]) if r.get("gateway") else None,
                      src=ipaddress.ip_address(r["prefsrc"]) if r.get("prefsrc") else None,
                      table=_table(r.get("table")), type=rtype,
                      scope=r.get("scope", "global" if rtype == "unicast" else "host"),
                      proto=str(r.get("protocol", "boot")), metric=int(r.get("metric", 0)),
                      onlink="onlink" in (r.get("flags") or []))
        for nh in r.get("nexthops") or []:
            route.nexthops.append(Nexthop(ipaddress.ip_address(nh["gateway"]) if nh.get("gateway") else None,
                                          nh.get("dev"), int(nh.get("weight", 1)),
                                          "onlink" in (nh.get("flags") or [])))
        if route.nexthops and route.dev is None:
            route.dev, route.via = route.nexthops[0].dev, route.nexthops[0].via
        ns.routes.append(route)


def load_rules(rules_json: list, family: int) -> list[Rule]:
    out = []
    for r in rules_json:
        action = r.get("action", "to_tbl")
        src = r.get("src")
        dst = r.get("dst")
        fwmark = r.get("fwmark")
        out.append(Rule(
            int(r.get("priority", 0)), _table(r.get("table")) if action == "to_tbl" else 0, action,
            src=_net(f"{src}/{r.get('srclen', 32 if family == 4 else 128)}", family)
            if src and src != "all" else None,
            dst=_net(f"{dst}/{r.get('dstlen', 32 if family == 4 else 128)}", family)
            if dst and dst != "all" else None,
            iif=r.get("iif"), oif=r.get("oif"),
            fwmark=int(fwmark, 0) if fwmark else None,
            fwmask=int(r["fwmask"], 0) if r.get("fwmask") else None,
            invert="not" in r and r["not"] is not False,   # iproute2 prints "not": null
            family=family))
    return out


CONNTRACK_RE = re.compile(r"(\w+)=(\S+)")


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """`conntrack -L` lines: proto num [timeout] [STATE] src= dst= sport= dport= ... src= dst= ..."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or "src=" not in line:
            continue
        proto = parts[0]
        state = next((p for p in parts[2:5] if p.isupper() and "=" not in p and not p.startswith("[")), "")
        kv = CONNTRACK_RE.findall(line)
        tuples = []
        current: dict = {}
        for k, v in kv:
            if k == "src" and current:
                tuples.append(current)
                current = {}
            if k in ("src", "dst", "sport", "dport"):
                current[k] = v
        if current:
            tuples.append(current)
        if len(tuples) < 2:
            continue
        o, r = tuples[0], tuples[1]
        mark = int(dict(kv).get("mark", "0"), 0)
        flags = set(re.findall(r"\[(\w+)\]", line))
        if "UNREPLIED" not in flags:
            flags.add("SEEN_REPLY")         # conntrack -L marks only the entries without a reply
        flags = frozenset(flags)

        def port(d, key):
            return int(d[key]) if key in d else None
        out.append(ConntrackEntry(proto, ipaddress.ip_address(o["src"]), ipaddress.ip_address(o["dst"]),
                                  port(o, "sport"), port(o, "dport"),
                                  ipaddress.ip_address(r["src"]), ipaddress.ip_address(r["dst"]),
                                  port(r, "sport"), port(r, "dport"), state, mark, flags))
    return out


def _split_hostport(value: str) -> tuple:
    """`10.0.0.1:80`, `[fd00::1]:80`; without a port (ipvsadm-restore takes `-r 10.0.0.1`): 0."""
    if value.startswith("["):
        host, _, port = value[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, colon, port = value.rpartition(":")
        if not colon:
            host, port = value, ""
    return ipaddress.ip_address(host), int(port or 0)


def _ipvs_virtual(parts: list[str]) -> Optional[tuple]:
    """The virtual service an `-A` / `-a` line names: (protocol, address, port, fwmark).
    A fwmark service (`-f 100`, IPv6 with `-6`) is kept as ipvsadm hands it to the kernel:
    protocol TCP, address 0.0.0.0 / ::, port 0."""
    if parts[1] == "-f":
        return "TCP", ipaddress.ip_address("::" if "-6" in parts else "0.0.0.0"), 0, int(parts[2], 0)
    proto = {"-t": "TCP", "-u": "UDP", "--sctp-service": "SCTP"}.get(parts[1])
    if proto is None:
        return None
    return (proto, *_split_hostport(parts[2]), None)


def parse_ipvsadm(text: str) -> list[IpvsService]:
    """`ipvsadm -Sn --nosort` (the same syntax as ipvsadm-restore). Its real servers are the
    kernel's list, newest first; the model keeps them in the order they were added, so
    each service's are reversed (podnet.linux.render.ipvs_dests). A plain `-Sn` dump is
    sorted by address: the kernel's order, which sh, dh and mh depend on, is lost."""
    services: dict[tuple, IpvsService] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3 or parts[0] not in ("-A", "-a"):
            continue
        key = _ipvs_virtual(parts)
        if key is None:
            continue
        if parts[0] == "-A":
            proto, vip, port, fwmark = key
            sched = parts[parts.index("-s") + 1] if "-s" in parts else "wlc"
            persistent = int(parts[parts.index("-p") + 1]) if "-p" in parts else None
            svc = services[key] = IpvsService(proto, vip, port, sched, persistent, fwmark=fwmark)
            if "-b" in parts:
                svc.sched_flags = tuple(parts[parts.index("-b") + 1].split(","))
        else:
            rip, rport = _split_hostport(parts[parts.index("-r") + 1])
            method = "Masq" if "-m" in parts else ("Tunnel" if "-i" in parts else "Route")
            weight = int(parts[parts.index("-w") + 1]) if "-w" in parts else 1
            svc = services.get(key)
            if svc is not None:
                svc.reals.append(IpvsRealServer(rip, rport, weight, method))
    for svc in services.values():
        svc.reals.reverse()
    return list(services.values())


def parse_listeners(text: str) -> list[Listener]:
    """`ss -Hlntu`: Netid State Recv-Q Send-Q Local:Port Peer:Port"""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 5 or parts[0] not in ("tcp", "udp", "sctp"):
            continue
        local = parts[4]
        host, _, port = local.rpartition(":")
        host = host.strip("[]").split("%")[0]
        if host in ("*", ""):
            host = "0.0.0.0"
        try:
            out.append(Listener(parts[0], ipaddress.ip_address(host), int(port)))
        except ValueError:
            continue
    return out


def load_netns(name: str, directory: Path, meta: dict) -> Netns:
    ns = Netns(name, kind=meta.get("kind", "host"), node=meta.get("node"), pod=meta.get("pod"))
    ns.rules = []
    load_links(ns, _read_json(directory / "link.json", []), _read_json(directory / "addr.json", []))
    load_routes(ns, _read_json(directory / "route.json", []), 4)
    load_routes(ns, _read_json(directory / "route6.json", []), 6)
    ns.rules = load_rules(_read_json(directory / "rule.json", []), 4) + \
        load_rules(_read_json(directory / "rule6.json", []), 6)
    if not any(r.family == 4 for r in ns.rules):
        from ..linux.state import default_rules
        ns.rules += default_rules(4)
    ns.routes_complete = (directory / "route.json").exists()
    for n in _read_json(directory / "neigh.json", []):
        if not n.get("dst") or not n.get("dev"):
            continue
        state = (n.get("state") or ["REACHABLE"])
        ns.neighbours.append(Neighbour(ipaddress.ip_address(n["dst"]), n["dev"], n.get("lladdr"),
                                       state[0] if isinstance(state, list) else str(state)))
    for n in _read_json(directory / "neigh-proxy.json", []):
        if n.get("dst") and n.get("dev"):
            ns.neighbours.append(Neighbour(ipaddress.ip_address(n["dst"]), n["dev"], None, "PERMANENT", proxy=True))
    for f in _read_json(directory / "fdb.json", []):
        flags = f.get("flags") or []
        state = f.get("state", "")
        dev = f.get("ifname") or f.get("dev")
        if not dev or (f.get("mac", "").startswith(("33:33:", "01:00:5e")) and "self" in flags):
            continue
        ns.fdb.append(FdbEntry(f["mac"], dev, master=f.get("master"),
                               dst=ipaddress.ip_address(f["dst"]) if f.get("dst") else None,
                               vlan=f.get("vlan"), self_="self" in flags,
                               permanent=state == "permanent", static=state == "static",
                               vni=f.get("vni")))
    for line in _read_text(directory / "sysctl.txt").splitlines():
        if "=" in line:
            key, _, value = line.partition("=")
            ns.sysctls[key.strip()] = value.strip()
    ns.iptables = _read_text(directory / "iptables.txt")
    ns.ip6tables = _read_text(directory / "ip6tables.txt")
    ns.ipsets = _read_text(directory / "ipset.txt")
    nft_json = directory / "nft.json"
    if nft_json.exists() and '"table"' in nft_json.read_text():
        from ..linux.nftables import NftRuleset
        ruleset = NftRuleset.parse_json(nft_json.read_text(), source=str(nft_json))
        ns.nft = ruleset.list_ruleset()
        # iptables-nft tables show up in `nft list ruleset` too; they are evaluated from
        # iptables-save, so keep only the tables iptables does not own
        if ns.iptables or ns.ip6tables:
            ns.nft = _without_xtables(ruleset)
    elif (directory / "nft.txt").exists():
        ns.nft = _read_text(directory / "nft.txt")
    ns.conntrack = parse_conntrack(_read_text(directory / "conntrack.txt"))
    ns.ipvs = parse_ipvsadm(_read_text(directory / "ipvs.txt"))
    ns.listeners = parse_listeners(_read_text(directory / "listen.txt"))
    return ns


XTABLES = {("ip", "filter"), ("ip", "nat"), ("ip", "mangle"), ("ip", "raw"), ("ip", "security"),
           ("ip6", "filter"), ("ip6", "nat"), ("ip6", "mangle"), ("ip6", "raw"), ("ip6", "security")}


def _without_xtables(ruleset) -> str:
    return ruleset.list_ruleset(exclude=XTABLES)


def load_snapshot(directory: str | Path) -> DataplaneState:
    root = Path(directory)
    if not root.is_dir():
        raise InputError("not a snapshot directory", file=str(root))
    topo = _read_json(root / "topology.json", {"namespaces": {}, "segments": {}})
    state = DataplaneState(description=f"snapshot {root}")
    names = sorted(set(topo.get("namespaces", {})) |
                   {p.name for p in root.iterdir() if p.is_dir() and (p / "link.json").exists()})
    raw_links: dict[str, dict[int, dict]] = {}
    netns_ids: dict[str, dict[int, str]] = {}
    for name in names:
        d = root / name
        if not (d / "link.json").exists():
            continue
        meta = topo.get("namespaces", {}).get(name, {})
        ns = load_netns(name, d, meta)
        state.add_netns(ns)
        raw_links[name] = {e["ifindex"]: e for e in _read_json(d / "link.json", [])}
        netns_ids[name] = {e["nsid"]: e["name"] for e in _read_json(d / "netns-ids.json", []) if "name" in e}
    roots = [n for n, meta in topo.get("namespaces", {}).items() if meta.get("root")]
    _pair_veths(state, raw_links, topo, netns_ids, roots[0] if len(roots) == 1 else None)
    for seg_name, seg in (topo.get("segments") or {}).items():
        state.add_segment(Segment(seg_name, description=seg.get("description", ""),
                                  blocked_pairs={tuple(p) for p in seg.get("blocked", [])}))
        for ns_name, ifname in seg.get("members", []):
            link = state.namespaces.get(ns_name, Netns("")).links.get(ifname)
            if link is None:
                raise InputError(f"segment {seg_name}: no interface {ifname} in namespace {ns_name}",
                                 file=str(root / "topology.json"))
            link.segment = seg_name
    return state


def _peer_namespace(ns_name: str, nsid: int, raw: dict, netns_ids: dict, root: Optional[str]) -> Optional[str]:
    """The namespace a link_netnsid names, from `ip netns list-id` in `ns_name`; an nsid
    without a name there is the host's own namespace (it has none in /var/run/netns)."""
    ids = netns_ids.get(ns_name) or {}
    if not ids:
        return None                             # an older snapshot: match by ifindex instead
    name = ids.get(nsid)
    if name is None:
        return root if root != ns_name else None
    return name if name in raw else None


def _pair_veths(state: DataplaneState, raw: dict[str, dict[int, dict]], topo: dict,
                netns_ids: Optional[dict] = None, root: Optional[str] = None) -> None:
    for a_ns, a_if, b_ns, b_if in topo.get("veth_pairs", []):
        la = state.namespaces[a_ns].links.get(a_if)
        lb = state.namespaces[b_ns].links.get(b_if)
        if la and lb:
            la.peer, lb.peer = (b_ns, b_if), (a_ns, a_if)
    for ns_name, links in raw.items():
        ns = state.namespaces[ns_name]
        for ifindex, e in links.items():
            link = ns.links.get(e["ifname"])
            if link is None or link.kind != "veth" or link.peer is not None:
                continue
            peer_index = e.get("link_index")
            if peer_index is None:
                continue
            if "link_netnsid" not in e:           # both ends in this namespace
                for other in ns.links.values():
                    if other.ifindex == peer_index and other.name != link.name:
                        link.peer, other.peer = (ns_name, other.name), (ns_name, link.name)
                continue
            candidates = []
            named = _peer_namespace(ns_name, e["link_netnsid"], raw, netns_ids or {}, root)
            for other_ns, other_links in raw.items():
                if other_ns == ns_name or (named is not None and other_ns != named):
                    continue
                oe = other_links.get(peer_index)
                if oe and oe.get("link_index") == ifindex and (oe.get("linkinfo") or {}).get("info_kind") == "veth":
                    candidates.append((other_ns, oe["ifname"]))
            if len(candidates) == 1:
                other_ns, other_if = candidates[0]
                olink = state.namespaces[other_ns].links[other_if]
                if olink.peer is None:
                    link.peer, olink.peer = (other_ns, other_if), (ns_name, link.name)
