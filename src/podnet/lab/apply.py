"""The dataplane state written into real network namespaces.

    applier = Applier("lab", caps)
    applier.sync(None, state)          # bring a whole DataplaneState up
    applier.sync(old_state, new_state) # apply only what changed (lab apply)

Every model namespace X becomes the named namespace `<lab>-X`; every L2 segment
S a namespace `<lab>-seg-S` holding a bridge with one veth per member NIC (the
member's end keeps the model's name and MAC). Links, addresses, routes (every
table), rules, neighbours (permanent and proxy), FDB entries and sysctls go in
over netlink with pyroute2; iptables, ip6tables, ipsets, nft and IPVS with the
real tools (`iptables-restore`, `ipset restore`, `nft -f`, `ipvsadm-restore`)
run inside the namespace.

Routes: only the model's `ns.routes` are written. The kernel derives the rest
from the addresses itself (table local, prefix routes) exactly as
podnet.linux.routing.kernel_routes models it; a model route with the same
destination, table and metric as a kernel-derived one replaces it (what the ptp
plugin does to the pod's prefix route), so routes go in with NLM_F_REPLACE.

What this kernel lacks is handled in one place (`Capabilities`): a dummy link
becomes an ifb device (also NOARP, also drops what it is sent), an ipip link that
no route uses is left out, one that routes use stops `lab up` with a message,
nfacct matches (counters only) are dropped from the rules.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import os
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from ..errors import PodnetError
from ..linux.render import ipvsadm_save
from ..linux.state import DataplaneState, FdbEntry, Link, Neighbour, Netns, Route, Rule, default_rules
from . import nsutil


class LabError(PodnetError):
    """Something the lab could not do to the kernel (one line, names namespace and object)."""


# iproute2's rt_protos
RT_PROTOS = {"unspec": 0, "redirect": 1, "kernel": 2, "boot": 3, "static": 4, "gated": 8, "ra": 9, "mrt": 10,
             "zebra": 11, "bird": 12, "dnrouted": 13, "xorp": 14, "ntk": 15, "dhcp": 16, "keepalived": 18,
             "babel": 42, "openr": 99, "bgp": 186, "isis": 187, "ospf": 188, "rip": 189, "eigrp": 192}
RT_TYPES = {"unicast": 1, "local": 2, "broadcast": 3, "anycast": 4, "multicast": 5, "blackhole": 6,
            "unreachable": 7, "prohibit": 8, "throw": 9}
RT_SCOPES = {"global": 0, "universe": 0, "site": 200, "link": 253, "host": 254, "nowhere": 255}
FR_ACTIONS = {"to_tbl": 1, "goto": 2, "nop": 3, "blackhole": 6, "unreachable": 7, "prohibit": 8}
NUD = {"INCOMPLETE": 0x01, "REACHABLE": 0x02, "STALE": 0x04, "DELAY": 0x08, "PROBE": 0x10, "FAILED": 0x20,
       "NOARP": 0x40, "PERMANENT": 0x80}
NTF_SELF, NTF_MASTER, NTF_PROXY = 0x02, 0x04, 0x08
IFF_NOARP = 0x80
IFF_PROMISC = 0x100
IFA_F_NODAD = 0x02
RTNH_F_ONLINK = 0x04
FIB_RULE_INVERT = 0x02
NLM_F_APPEND = 0x800

# sysctls every lab namespace gets, to the model's value or the model's default ("0"): a new
# namespace inherits IPv4 settings from the host's (rp_filter, forwarding...), and br_netfilter
# turns bridge-nf-call-* on; the model reads an unset key as 0
NORMALISED_SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter",
    "net.ipv4.conf.all.proxy_arp", "net.ipv4.conf.default.proxy_arp",
    "net.ipv4.conf.all.route_localnet", "net.ipv4.conf.default.route_localnet",
    "net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.default.arp_ignore",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables",
)
# sysctls that only make sense for the segment switches the lab adds
SEGMENT_SYSCTLS = {"net.bridge.bridge-nf-call-iptables": "0", "net.bridge.bridge-nf-call-ip6tables": "0",
                   "net.bridge.bridge-nf-call-arptables": "0", "net.ipv6.conf.all.disable_ipv6": "1",
                   "net.ipv6.conf.default.disable_ipv6": "1"}


@dataclass
class Capabilities:
    """What this kernel can do that the lab needs."""
    dummy: bool = True
    ipip: bool = True
    ipvs: bool = True
    nfacct: bool = True

    @classmethod
    def probe(cls, netns: str) -> "Capabilities":
        """Try each feature inside a namespace the lab owns (never the host's)."""
        caps = cls()
        with nsutil.entered(netns):
            from pyroute2 import IPRoute
            ipr = IPRoute()
            try:
                for kind, attr, extra in (("dummy", "dummy", {}), ("ipip", "ipip", {})):
                    try:
                        ipr.link("add", ifname=f"pnprobe-{kind}"[:15], kind=kind, **extra)
                    except Exception:
                        setattr(caps, attr, False)
                    else:
                        with contextlib.suppress(Exception):
                            ipr.link("del", index=ipr.link_lookup(ifname=f"pnprobe-{kind}"[:15])[0])
            finally:
                ipr.close()
            caps.ipvs = _exists("/proc/thread-self/net/ip_vs")
        return caps


def _exists(path: str) -> bool:
    try:
        open(path).close()
        return True
    except OSError:
        return False


def segment_port_name(ns: str, ifname: str) -> str:
    """The switch-side end of a member NIC: p + 8 hex digits (15-character limit)."""
    return "p" + hashlib.sha256(f"{ns}/{ifname}".encode()).hexdigest()[:8]


def segment_bridge_name(segment: str) -> str:
    return ("br-" + segment)[:15]


# ----------------------------------------------------------------------------- keys for diffs

def _nh_key(nh) -> tuple:
    return (str(nh.via) if nh.via else None, nh.dev, nh.weight, nh.onlink)


def route_key(r: Route) -> tuple:
    return (r.table, r.type, str(r.dst), r.dev, str(r.via) if r.via else None, str(r.src) if r.src else None,
            r.scope, r.proto, r.metric, r.onlink, tuple(_nh_key(n) for n in r.nexthops))


def rule_key(r: Rule) -> tuple:
    return (r.family, r.priority, r.table, r.action, str(r.src) if r.src else None, str(r.dst) if r.dst else None,
            r.iif, r.oif, r.fwmark, r.fwmask, r.invert)


def neigh_key(n: Neighbour) -> tuple:
    return (str(n.ip), n.dev, (n.lladdr or "").lower(), n.state, n.proxy)


def fdb_key(f: FdbEntry) -> tuple:
    return (f.mac.lower(), f.dev, f.master, str(f.dst) if f.dst else None, f.vlan, f.self_, f.permanent,
            f.static, f.vni)


def link_shape(link: Link) -> tuple:
    """What cannot change without recreating the link."""
    vx = link.vxlan
    tun = link.tunnel
    return (link.kind, link.peer, link.segment,
            (vx.vni, str(vx.local), vx.dstport, vx.learning, vx.dev, str(vx.remote)) if vx else None,
            (str(tun.local), str(tun.remote), tun.dev) if tun else None)


def addr_keys(link: Link) -> set:
    return {(str(a.interface), a.scope, str(a.peer) if a.peer else None) for a in link.addresses}


# ----------------------------------------------------------------------------- the applier

@dataclass
class Substitution:
    netns: str
    link: str
    model_kind: str
    kernel_kind: Optional[str]      # None: left out
    why: str


@dataclass
class Applier:
    prefix: str
    caps: Capabilities = field(default_factory=Capabilities)
    notes: list[str] = field(default_factory=list)
    substitutions: list[Substitution] = field(default_factory=list)
    workers: int = 8
    progress: Optional[Callable[[str], None]] = None

    # ------------------------------------------------------------- names
    def kname(self, model_ns: str) -> str:
        return f"{self.prefix}-{model_ns}"

    def seg_ns(self, segment: str) -> str:
        return f"{self.prefix}-seg-{segment}"

    def planned_namespaces(self, state: DataplaneState) -> list[str]:
        return [self.seg_ns(s) for s in sorted(self.used_segments(state))] + \
               [self.kname(n) for n in state.namespaces]

    @staticmethod
    def used_segments(state: DataplaneState) -> set[str]:
        used = set(state.segments)
        for ns in state.namespaces.values():
            for link in ns.links.values():
                if link.segment:
                    used.add(link.segment)
        return used

    def _say(self, text: str) -> None:
        if self.progress:
            self.progress(text)

    # ------------------------------------------------------------- entry point
    def sync(self, old: Optional[DataplaneState], new: DataplaneState) -> None:
        old = old or DataplaneState()
        self.check_supported(new)
        gone = [n for n in old.namespaces if n not in new.namespaces]
        added = [n for n in new.namespaces if n not in old.namespaces]
        old_segs, new_segs = self.used_segments(old), self.used_segments(new)
        if gone:
            nsutil.delete_netns([self.kname(n) for n in gone])
        seg_added = sorted(new_segs - old_segs)
        # `lab up` creates every namespace beforehand (one batch, recorded first); apply creates its new ones here
        missing = [n for n in [self.seg_ns(s) for s in seg_added] + [self.kname(n) for n in added]
                   if not nsutil.exists(n)]
        nsutil.create_netns(missing)
        if missing:
            self._say(f"{len(missing)} namespaces created")
        for s in seg_added:
            self._setup_segment(new, s)
        empty = {}
        pairs_done: set = set()
        # phase 1: links (veths and segment NICs first: VXLAN devices need their underlay device)
        for name, ns in new.namespaces.items():
            before = old.namespaces.get(name) or empty.setdefault(name, Netns(name, rules=[]))
            self._links_remove(name, before, ns, old)
        for name, ns in new.namespaces.items():
            before = old.namespaces.get(name) or empty[name]
            self._links_create(name, before, ns, new, pairs_done, pass_=1)
        for name, ns in new.namespaces.items():
            before = old.namespaces.get(name) or empty[name]
            self._links_create(name, before, ns, new, pairs_done, pass_=2)
        self._say("links created")
        # phase 2: everything else, namespace by namespace (pyroute2 is CPU-bound: big labs fan
        # out over one process per CPU)
        items = [(name, old.namespaces.get(name) or empty[name], ns, name in added)
                 for name, ns in new.namespaces.items()]
        self._configure_all(items)
        self._say("addresses, routes, neighbours, FDB and sysctls written")
        for s in sorted(old_segs - new_segs):
            nsutil.delete_netns([self.seg_ns(s)])
        self._segment_blocks(old, new)
        # phase 3: netfilter and IPVS with the real tools, in parallel across namespaces
        jobs = []
        for name, ns in new.namespaces.items():
            before = old.namespaces.get(name) or empty[name]
            if (before.iptables, before.ip6tables, before.ipsets, before.nft, _ipvs_text(before)) != \
                    (ns.iptables, ns.ip6tables, ns.ipsets, ns.nft, _ipvs_text(ns)):
                jobs.append((name, before, ns))
        if jobs:
            with concurrent.futures.ThreadPoolExecutor(self.workers) as pool:
                for f in [pool.submit(self._netfilter, name, before, ns) for name, before, ns in jobs]:
                    f.result()
            self._say("netfilter rules and ipsets restored")

    # ------------------------------------------------------------- support checks
    def check_supported(self, state: DataplaneState) -> None:
        for ns in state.namespaces.values():
            for link in ns.links.values():
                if link.kind == "ipip" and not self.caps.ipip:
                    users = [r for r in ns.routes if r.dev == link.name or any(n.dev == link.name for n in r.nexthops)]
                    if users:
                        raise LabError(f"{ns.name}: link {link.name}: this kernel lacks the ipip link type, and "
                                       f"{len(users)} route(s) send traffic through it; the lab cannot run IPIP "
                                       "encapsulation here (use an overlay mode this kernel has, e.g. calico bgp "
                                       "or vxlan)")
                if link.kind == "tun":
                    raise LabError(f"{ns.name}: link {link.name}: tun devices (userspace datapaths) are not "
                                   "supported by the lab")
            if ns.socket_lb is not None:
                raise LabError(f"{ns.name}: the eBPF socket load-balancer (proxy mode ebpf) is simulated only: "
                               "the lab loads no BPF programs (trace it, or run the lab with --proxy-mode "
                               "iptables, nftables or ipvs)")
            if any(l.relays for l in ns.listeners):
                raise LabError(f"{ns.name}: kube-proxy's userspace proxy (proxy mode userspace) is simulated "
                               "only: the lab runs no relaying proxy (trace it, or run the lab with "
                               "--proxy-mode iptables, nftables or ipvs)")
            if ns.ipvs and not self.caps.ipvs:
                raise LabError(f"{ns.name}: this kernel lacks IPVS (no /proc/net/ip_vs), which the rendered "
                               "service proxy needs; run `lab up --ipvs-fallback iptables` to let kube-proxy "
                               "fall back to iptables mode")

    # ------------------------------------------------------------- segments
    def _setup_segment(self, state: DataplaneState, segment: str) -> None:
        from pyroute2 import IPRoute
        seg = state.segments.get(segment)
        mtu = seg.mtu if seg else 1500
        with nsutil.entered(self.seg_ns(segment)):
            for key, value in SEGMENT_SYSCTLS.items():
                with contextlib.suppress(OSError):
                    nsutil.write_sysctl(key, value)
            ipr = IPRoute()
        try:
            br = segment_bridge_name(segment)
            self._nl(ipr, self.seg_ns(segment), f"link add {br} type bridge", "link", "add", ifname=br,
                     kind="bridge", br_stp_state=0, br_forward_delay=0, br_mcast_snooping=0, mtu=mtu)
            idx = ipr.link_lookup(ifname=br)[0]
            ipr.link("set", index=idx, state="up")
            ipr.link("set", index=1, state="up")
        finally:
            ipr.close()

    def _segment_blocks(self, old: DataplaneState, new: DataplaneState) -> None:
        """Pairs of NICs a segment does not connect: an nft bridge filter on the switch."""
        for segment in sorted(self.used_segments(new)):
            seg_new = new.segments.get(segment)
            seg_old = old.segments.get(segment)
            blocked = sorted(tuple(sorted(p)) for p in (seg_new.blocked_pairs if seg_new else ()))
            before = sorted(tuple(sorted(p)) for p in (seg_old.blocked_pairs if seg_old else ()))
            if blocked == before:
                continue
            ports: dict[str, list[str]] = {}
            for ns, link in new.segment_members(segment):
                ports.setdefault(ns.name, []).append(segment_port_name(ns.name, link.name))
            lines = ["table bridge podnet-lab {}", "delete table bridge podnet-lab"]
            if blocked:
                lines.append("table bridge podnet-lab {\n  chain forward {\n    type filter hook forward priority 0;")
                for a, b in blocked:
                    for pa in ports.get(a, []):
                        for pb in ports.get(b, []):
                            lines.append(f'    iifname "{pa}" oifname "{pb}" drop')
                            lines.append(f'    iifname "{pb}" oifname "{pa}" drop')
                lines.append("  }\n}")
            proc = nsutil.run_in(self.seg_ns(segment), ["nft", "-f", "-"], "\n".join(lines) + "\n")
            if proc.returncode != 0:
                raise LabError(f"segment {segment}: could not block {blocked}: {proc.stderr.strip()}")

    # ------------------------------------------------------------- links
    def _ipr(self, model_ns: str):
        from pyroute2 import IPRoute
        with nsutil.entered(self.kname(model_ns)):
            return IPRoute()

    def _nl(self, ipr, where: str, what: str, method: str, *args, **kwargs):
        try:
            return getattr(ipr, method)(*args, **kwargs)
        except Exception as e:          # NetlinkError and pyroute2's argument errors
            raise LabError(f"{where}: {what}: {_errtext(e)}") from None

    def _kernel_kind(self, ns: Netns, link: Link) -> Optional[str]:
        if link.kind == "dummy" and not self.caps.dummy:
            self._substitute(ns.name, link, "ifb", "this kernel lacks the dummy link type; an ifb device is "
                                                   "also NOARP and drops what it is sent")
            return "ifb"
        if link.kind == "ipip" and not self.caps.ipip:
            self._substitute(ns.name, link, None, "this kernel lacks the ipip link type; no route uses it, "
                                                  "so it is left out")
            return None
        return link.kind

    def _substitute(self, ns: str, link: Link, kind: Optional[str], why: str) -> None:
        if any(s.netns == ns and s.link == link.name for s in self.substitutions):
            return
        self.substitutions.append(Substitution(ns, link.name, link.kind, kind, why))
        self.notes.append(f"{ns}: link {link.name} ({link.kind}): " +
                          (f"created as {kind}: {why}" if kind else why))

    def _links_remove(self, name: str, before: Netns, ns: Netns, old: DataplaneState) -> None:
        doomed = [l for l in before.links.values()
                  if l.name not in ns.links or link_shape(ns.links[l.name]) != link_shape(l)]
        doomed = [l for l in doomed if l.kind != "loopback"]
        if not doomed or not nsutil.exists(self.kname(name)):
            return
        ipr = self._ipr(name)
        try:
            for link in doomed:
                idx = ipr.link_lookup(ifname=link.name)
                if idx:
                    with contextlib.suppress(Exception):    # a veth whose peer went with its namespace
                        ipr.link("del", index=idx[0])
        finally:
            ipr.close()

    def _links_create(self, name: str, before: Netns, ns: Netns, state: DataplaneState, pairs_done: set,
                      pass_: int) -> None:
        todo = []
        for link in ns.links.values():
            if link.kind == "loopback":
                continue
            prev = before.links.get(link.name)
            if prev is not None and link_shape(prev) == link_shape(link):
                continue
            if link.peer is not None and link.segment is None and \
                    frozenset([(name, link.name), tuple(link.peer)]) in pairs_done:
                continue
            first = link.segment is not None or link.kind in ("veth", "ether")
            if (pass_ == 1) == first:
                todo.append(link)
        if not todo:
            return
        ipr = self._ipr(name)
        where = self.kname(name)
        try:
            for link in todo:
                common = {"ifname": link.name, "mtu": link.mtu}
                if link.mac:
                    common["address"] = link.mac
                if link.segment is not None or (link.kind == "ether" and link.peer is None):
                    seg = link.segment or "unplugged"
                    port = segment_port_name(name, link.name)
                    if not nsutil.exists(self.seg_ns(seg)):
                        nsutil.create_netns([self.seg_ns(seg)])
                        self._setup_segment(state, seg)
                    self._nl(ipr, where, f"link add {link.name} type veth peer {port} (segment {seg})", "link",
                             "add", kind="veth", peer={"ifname": port, "net_ns_fd": self.seg_ns(seg),
                                                       "mtu": link.mtu}, **common)
                    self._plug(seg, port, f"{name}/{link.name}")
                elif link.kind in ("veth", "ether"):
                    if link.peer is None:
                        raise LabError(f"{where}: link {link.name}: a veth without a peer")
                    pair = frozenset([(name, link.name), tuple(link.peer)])
                    if pair in pairs_done:
                        continue
                    peer_ns, peer_if = link.peer
                    peer = state.namespaces.get(peer_ns, Netns("")).links.get(peer_if)
                    if peer is None:
                        raise LabError(f"{where}: link {link.name}: its peer {peer_ns}/{peer_if} is not in the state")
                    pspec = {"ifname": peer_if, "mtu": peer.mtu}
                    if peer.mac:
                        pspec["address"] = peer.mac
                    if peer_ns != name:
                        pspec["net_ns_fd"] = self.kname(peer_ns)
                        # the peer's namespace may still hold the old end (recreated pair)
                        self._drop_stale(peer_ns, peer_if)
                    self._nl(ipr, where, f"link add {link.name} type veth peer {peer_if} netns "
                                         f"{self.kname(peer_ns)}", "link", "add", kind="veth", peer=pspec, **common)
                    pairs_done.add(pair)
                elif link.kind == "bridge":
                    extra = {"br_vlan_filtering": 1} if link.vlan_filtering else {}
                    self._nl(ipr, where, f"link add {link.name} type bridge", "link", "add", kind="bridge",
                             br_stp_state=0, **extra, **common)
                elif link.kind == "vxlan":
                    vx = link.vxlan
                    if vx is None:
                        raise LabError(f"{where}: link {link.name}: a vxlan device without VXLAN settings")
                    spec = {"vxlan_id": vx.vni, "vxlan_port": vx.dstport, "vxlan_learning": int(vx.learning)}
                    if vx.local is not None:
                        spec["vxlan_local6" if vx.local.version == 6 else "vxlan_local"] = str(vx.local)
                    if vx.remote is not None:
                        spec["vxlan_group6" if vx.remote.version == 6 else "vxlan_group"] = str(vx.remote)
                    if vx.dev:
                        idx = ipr.link_lookup(ifname=vx.dev)
                        if not idx:
                            raise LabError(f"{where}: link {link.name}: its underlay device {vx.dev} does not exist")
                        spec["vxlan_link"] = idx[0]
                    self._nl(ipr, where, f"link add {link.name} type vxlan id {vx.vni}", "link", "add",
                             kind="vxlan", **spec, **common)
                elif link.kind in ("dummy", "ipip"):
                    kind = self._kernel_kind(ns, link)
                    if kind is None:
                        continue
                    spec = {}
                    if kind == "ipip" and link.tunnel:
                        if link.tunnel.local:
                            spec["ipip_local"] = str(link.tunnel.local)
                        if link.tunnel.remote:
                            spec["ipip_remote"] = str(link.tunnel.remote)
                    if kind == "ipip":
                        common.pop("address", None)
                        fallback = ipr.link_lookup(ifname="tunl0") if link.name == "tunl0" else []
                        if fallback:
                            # the ipip module's fallback device, in every namespace once the module is
                            # loaded: calico's tunl0 is that device, configured rather than created
                            self._nl(ipr, where, f"link set tunl0 mtu {link.mtu}", "link", "set",
                                     index=fallback[0], mtu=link.mtu)
                            continue
                    self._nl(ipr, where, f"link add {link.name} type {kind}", "link", "add", kind=kind,
                             **spec, **common)
                else:
                    raise LabError(f"{where}: link {link.name}: the lab cannot create {link.kind} devices")
        finally:
            ipr.close()

    def _drop_stale(self, model_ns: str, ifname: str) -> None:
        if not nsutil.exists(self.kname(model_ns)):
            return
        ipr = self._ipr(model_ns)
        try:
            idx = ipr.link_lookup(ifname=ifname)
            if idx:
                with contextlib.suppress(Exception):
                    ipr.link("del", index=idx[0])
        finally:
            ipr.close()

    def _plug(self, segment: str, port: str, alias: str) -> None:
        from pyroute2 import IPRoute
        with nsutil.entered(self.seg_ns(segment)):
            ipr = IPRoute()
        try:
            br = ipr.link_lookup(ifname=segment_bridge_name(segment))
            idx = ipr.link_lookup(ifname=port)[0]
            if br:
                ipr.link("set", index=idx, master=br[0])
            with contextlib.suppress(Exception):
                ipr.link("set", index=idx, ifalias=alias)
            ipr.link("set", index=idx, state="up")
        finally:
            ipr.close()

    # ------------------------------------------------------------- addresses, routes, ...
    def _configure_all(self, items: list) -> None:
        procs = min(os.cpu_count() or 1, 8)
        if len(items) < 48 or procs < 2:
            for item in items:
                self._configure(*item)
            return
        import multiprocessing
        chunks = [items[i::procs] for i in range(procs)]
        ctx = multiprocessing.get_context("fork")
        with concurrent.futures.ProcessPoolExecutor(procs, mp_context=ctx) as pool:
            for notes in pool.map(self._configure_chunk, chunks):
                self.notes.extend(n for n in notes if n not in self.notes)

    def _configure_chunk(self, items: list) -> list[str]:
        self.notes = []
        self.progress = None
        for item in items:
            self._configure(*item)
        return self.notes

    def _configure(self, name: str, before: Netns, ns: Netns, is_new: bool) -> None:
        where = self.kname(name)
        ipr = self._ipr(name)
        try:
            idx = {l["index"]: l.get_attr("IFLA_IFNAME") for l in ipr.get_links()}
            index = {v: k for k, v in idx.items()}
            skipped = {s.link for s in self.substitutions if s.netns == name and s.kernel_kind is None}

            def ifindex(dev: str, what: str) -> int:
                if dev not in index:
                    raise LabError(f"{where}: {what}: no device {dev}")
                return index[dev]

            # global sysctls first: `default` values are copied into interfaces created later
            self._sysctls(name, before, ns, is_new, per_interface=False)
            for link in ns.links.values():
                if link.name in skipped:
                    continue
                prev = before.links.get(link.name)
                fresh = prev is None or link_shape(prev) != link_shape(link)
                i = ifindex(link.name, f"link {link.name}")
                if link.kind != "loopback":
                    if not fresh and prev.mtu != link.mtu:
                        self._nl(ipr, where, f"link set {link.name} mtu {link.mtu}", "link", "set", index=i,
                                 mtu=link.mtu)
                    if not fresh and link.mac and (prev.mac or "").lower() != link.mac.lower():
                        self._nl(ipr, where, f"link set {link.name} address {link.mac}", "link", "set", index=i,
                                 address=link.mac)
                    if fresh or prev.master != link.master:
                        if link.master:
                            self._nl(ipr, where, f"link set {link.name} master {link.master}", "link", "set",
                                     index=i, master=ifindex(link.master, f"link {link.name} master"))
                        elif not fresh:
                            self._nl(ipr, where, f"link set {link.name} nomaster", "link", "set", index=i, master=0)
                    if link.master and (fresh or (prev.hairpin, prev.learning) != (link.hairpin, link.learning)):
                        if link.hairpin or not link.learning or not fresh:
                            # IFLA_BRPORT_MODE is the hairpin flag; pyroute2 ignores unknown keywords
                            self._nl(ipr, where, f"link set {link.name} type bridge_slave hairpin "
                                                 f"{'on' if link.hairpin else 'off'}", "brport", "set", index=i,
                                     mode=int(link.hairpin), learning=int(link.learning))
                    if link.noarp and (fresh or not prev.noarp):
                        self._nl(ipr, where, f"link set {link.name} arp off", "link", "set", index=i,
                                 flags=IFF_NOARP, change=IFF_NOARP)
                    if fresh and link.promisc or not fresh and prev.promisc != link.promisc:
                        self._nl(ipr, where, f"link set {link.name} promisc {'on' if link.promisc else 'off'}",
                                 "link", "set", index=i, flags=IFF_PROMISC if link.promisc else 0,
                                 change=IFF_PROMISC)
                    if link.alias and (fresh or prev.alias != link.alias):
                        with contextlib.suppress(Exception):
                            ipr.link("set", index=i, ifalias=link.alias)
                # addresses: the old ones go first (deleting a primary address takes the secondaries
                # of its subnet with it, so a renumbered pod's new address would go too)
                have = set() if fresh else addr_keys(prev)
                want = addr_keys(link)
                auto = {("127.0.0.1/8", "host", None), ("::1/128", "host", None)} if link.kind == "loopback" else set()
                for key in have - want:
                    iface = ipaddress.ip_interface(key[0])
                    with contextlib.suppress(Exception):
                        ipr.addr("del", index=i, address=str(iface.ip), prefixlen=iface.network.prefixlen)
                for a in link.addresses:
                    key = (str(a.interface), a.scope, str(a.peer) if a.peer else None)
                    if key in have or key in auto:
                        continue
                    spec = {"index": i, "address": str(a.ip), "prefixlen": a.interface.network.prefixlen,
                            "scope": RT_SCOPES.get(a.scope, 0)}
                    if a.peer is not None:
                        spec.update(local=str(a.ip), address=str(a.peer))
                    if a.ip.version == 6:
                        spec["flags"] = IFA_F_NODAD
                    self._nl(ipr, where, f"addr add {a.interface} dev {link.name}", "addr", "add", **spec)
                if (fresh or prev.up != link.up) and (link.up or not fresh):
                    self._nl(ipr, where, f"link set {link.name} {'up' if link.up else 'down'}", "link", "set",
                             index=i, state="up" if link.up else "down")
            # routes: remove the ones that went, then add (replace) the new ones until they all fit
            old_routes = {route_key(r): r for r in before.routes}
            new_routes = {route_key(r): r for r in ns.routes}
            for key, r in old_routes.items():
                if key not in new_routes:
                    with contextlib.suppress(Exception):
                        ipr.route("del", **self._route_spec(r, index, where, lenient=True))
            pending = [r for k, r in new_routes.items() if k not in old_routes]
            pending = [r for r in pending if r.dev not in skipped]
            pending.sort(key=lambda r: (r.scope != "host", r.scope != "link", r.via is not None or bool(r.nexthops)))
            for _ in range(6):
                failed = []
                for r in pending:
                    try:
                        ipr.route("replace", **self._route_spec(r, index, where))
                    except LabError:
                        raise
                    except Exception as e:
                        failed.append((r, e))
                if not failed or len(failed) == len(pending):
                    pending = [r for r, _ in failed]
                    break
                pending = [r for r, _ in failed]
            if pending:
                from ..linux.render import route_line
                r, err = pending[0], None
                try:
                    ipr.route("replace", **self._route_spec(r, index, where))
                except Exception as e:
                    err = e
                raise LabError(f"{where}: ip route add {route_line(r, show_table=True)}: {_errtext(err)}")
            # rules
            self._rules(ipr, where, before, ns, is_new)
            # neighbours and FDB
            old_n = {neigh_key(n) for n in before.neighbours}
            for n in ns.neighbours:
                if neigh_key(n) in old_n or n.dev in skipped:
                    continue
                i = ifindex(n.dev, f"neighbour {n.ip}")
                family = socket.AF_INET6 if n.ip.version == 6 else socket.AF_INET
                if n.proxy:
                    self._nl(ipr, where, f"neigh add proxy {n.ip} dev {n.dev}", "neigh", "replace", dst=str(n.ip),
                             ifindex=i, flags=NTF_PROXY, family=family)
                else:
                    spec = {"dst": str(n.ip), "ifindex": i, "state": NUD.get(n.state.upper(), NUD["PERMANENT"]),
                            "family": family}
                    if n.lladdr:
                        spec["lladdr"] = n.lladdr
                    self._nl(ipr, where, f"neigh replace {n.ip} lladdr {n.lladdr} dev {n.dev} nud {n.state.lower()}",
                             "neigh", "replace", **spec)
            new_nk = {neigh_key(n) for n in ns.neighbours}
            for n in before.neighbours:
                if neigh_key(n) not in new_nk and n.dev in index:
                    with contextlib.suppress(Exception):
                        ipr.neigh("del", dst=str(n.ip), ifindex=index[n.dev],
                                  **({"flags": NTF_PROXY} if n.proxy else {}))
            old_f = {fdb_key(f) for f in before.fdb}
            for f in ns.fdb:
                if fdb_key(f) in old_f or f.dev in skipped:
                    continue
                self._fdb(ipr, where, f, ifindex(f.dev, f"fdb {f.mac}"), "append" if f.self_ and f.dst else "add")
            new_fk = {fdb_key(f) for f in ns.fdb}
            for f in before.fdb:
                if fdb_key(f) not in new_fk and f.dev in index:
                    with contextlib.suppress(Exception):
                        self._fdb(ipr, where, f, index[f.dev], "del")
            self._sysctls(name, before, ns, is_new, per_interface=True)
        finally:
            ipr.close()

    def _fdb(self, ipr, where: str, f: FdbEntry, ifindex: int, command: str) -> None:
        master = bool(f.master) and not f.self_
        # bridge: NUD_PERMANENT makes a local entry, NUD_NOARP a static one (pyroute2 adds
        # PERMANENT unless REACHABLE is given, hence REACHABLE|NOARP for static)
        if master and f.static and not f.permanent:
            state = NUD["NOARP"] | NUD["REACHABLE"]
        else:
            state = NUD["PERMANENT"] | NUD["NOARP"]
        spec = {"ifindex": ifindex, "lladdr": f.mac.lower(), "state": state,
                "flags": NTF_MASTER if master else NTF_SELF}
        if f.dst is not None:
            spec["dst"] = str(f.dst)
        if f.vlan is not None:
            spec["vlan"] = f.vlan
        if f.vni is not None:
            spec["vni"] = f.vni
        text = f"bridge fdb {command} {f.mac} dev {f.dev}" + (f" dst {f.dst}" if f.dst else "") + \
               (" master" if master else " self")
        try:
            ipr.fdb(command, **spec)
        except Exception as e:
            if getattr(e, "code", None) == 17 and command != "del":      # EEXIST: already there
                return
            raise LabError(f"{where}: {text}: {_errtext(e)}") from None

    def _route_spec(self, r: Route, index: dict, where: str, lenient: bool = False) -> dict:
        spec: dict = {"dst": str(r.dst), "table": r.table, "type": RT_TYPES.get(r.type, 1),
                      "family": socket.AF_INET6 if r.dst.version == 6 else socket.AF_INET}
        spec["proto"] = RT_PROTOS.get(r.proto, int(r.proto) if str(r.proto).isdigit() else 3)
        spec["scope"] = RT_SCOPES.get(r.scope, 0)
        if r.metric:
            spec["priority"] = r.metric
        if r.src is not None:
            spec["prefsrc"] = str(r.src)

        def dev_index(dev):
            if dev not in index:
                if lenient:
                    return None
                raise LabError(f"{where}: route {r.dst}: no device {dev}")
            return index[dev]
        if r.nexthops:
            hops = []
            for nh in r.nexthops:
                hop = {"hops": max(nh.weight, 1) - 1}
                if nh.via is not None:
                    hop["gateway"] = str(nh.via)
                if nh.dev:
                    hop["oif"] = dev_index(nh.dev)
                if nh.onlink:
                    hop["flags"] = RTNH_F_ONLINK
                hops.append(hop)
            spec["multipath"] = hops
        else:
            if r.via is not None:
                spec["gateway"] = str(r.via)
            if r.dev and r.type not in ("blackhole", "unreachable", "prohibit", "throw"):
                oif = dev_index(r.dev)
                if oif is not None:
                    spec["oif"] = oif
            if r.onlink:
                spec["flags"] = RTNH_F_ONLINK
        return spec

    def _rules(self, ipr, where: str, before: Netns, ns: Netns, is_new: bool) -> None:
        for family in (4, 6):
            want = [r for r in ns.rules if r.family == family]
            if not want and family == 6:
                continue                        # the model does not track IPv6 rules here
            # a fresh namespace holds the kernel's default rules
            had = default_rules(family) if is_new else [r for r in before.rules if r.family == family]
            if family == 6 and is_new:          # IPv6 has no `default` table rule
                had = [r for r in had if r.table != 253]
            want_k = {rule_key(r) for r in want}
            had_k = {rule_key(r) for r in had}
            for r in had:
                if rule_key(r) not in want_k:
                    with contextlib.suppress(Exception):
                        ipr.rule("del", **self._rule_spec(r))
            for r in want:
                if rule_key(r) not in had_k:
                    text = f"ip -{family} rule add pref {r.priority} lookup {r.table}"
                    self._nl(ipr, where, text, "rule", "add", **self._rule_spec(r))

    @staticmethod
    def _rule_spec(r: Rule) -> dict:
        spec: dict = {"priority": r.priority, "family": socket.AF_INET6 if r.family == 6 else socket.AF_INET,
                      "action": FR_ACTIONS.get(r.action, 1)}
        if r.action == "to_tbl":
            spec["table"] = r.table
        if r.src is not None:
            spec.update(src=str(r.src.network_address), src_len=r.src.prefixlen)
        if r.dst is not None:
            spec.update(dst=str(r.dst.network_address), dst_len=r.dst.prefixlen)
        if r.iif:
            spec["iifname"] = r.iif
        if r.oif:
            spec["oifname"] = r.oif
        if r.fwmark is not None:
            spec["fwmark"] = r.fwmark
            if r.fwmask is not None:
                spec["fwmask"] = r.fwmask
        if r.invert:
            spec["flags"] = FIB_RULE_INVERT
        return spec

    def _sysctls(self, name: str, before: Netns, ns: Netns, is_new: bool, per_interface: bool) -> None:
        def is_if(key: str) -> bool:
            parts = key.split(".")
            return len(parts) > 4 and parts[1] in ("ipv4", "ipv6") and parts[2] in ("conf", "neigh") \
                and parts[3] not in ("all", "default")
        wanted: dict[str, str] = {}
        if not per_interface and is_new:
            wanted.update({k: "0" for k in NORMALISED_SYSCTLS})
        for key, value in ns.sysctls.items():
            if is_if(key) == per_interface and (is_new or before.sysctls.get(key) != value):
                wanted[key] = value
        for key in before.sysctls:
            if key not in ns.sysctls and is_if(key) == per_interface:
                wanted[key] = "0"
        if not wanted:
            return
        order = sorted(wanted, key=lambda k: (".all." not in k and ".default." not in k, k))
        with nsutil.entered(self.kname(name)):
            for key in order:
                try:
                    nsutil.write_sysctl(key, wanted[key])
                except OSError as e:
                    if key in NORMALISED_SYSCTLS and key not in ns.sysctls:
                        continue
                    if key.startswith("net.ipv4.vs.") and not self.caps.ipvs:
                        continue
                    self.notes.append(f"{self.kname(name)}: sysctl {key} = {wanted[key]}: {e.strerror or e}")

    # ------------------------------------------------------------- netfilter, IPVS
    def _netfilter(self, name: str, before: Netns, ns: Netns) -> None:
        where = self.kname(name)
        if ns.ipsets != before.ipsets and ns.ipsets.strip():
            self._run(where, ["ipset", "restore", "-exist"], _ipset_replacing(ns.ipsets), "ipset restore")
        if ns.nft != before.nft:
            text = "".join(f"table {fam} {tbl} {{}}\ndelete table {fam} {tbl}\n"
                           for fam, tbl in _nft_tables(before.nft))
            self._run(where, ["nft", "-f", "-"], text + ns.nft, "nft -f")
        for tool, old_text, new_text in (("iptables-restore", before.iptables, ns.iptables),
                                         ("ip6tables-restore", before.ip6tables, ns.ip6tables)):
            if old_text == new_text:
                continue
            payload = new_text
            for table in _ipt_tables(old_text) - _ipt_tables(new_text):
                payload += f"*{table}\nCOMMIT\n"
            if payload.strip():
                payload = self._without_nfacct(where, tool, payload)
                self._run(where, [tool, "-w", "5"], payload, tool)
        if before.ipsets != ns.ipsets:
            gone = _ipset_names(before.ipsets) - _ipset_names(ns.ipsets)
            for s in sorted(gone):
                nsutil.run_in(where, ["ipset", "destroy", s])
        if _ipvs_text(before) != _ipvs_text(ns):
            if not self.caps.ipvs:
                raise LabError(f"{where}: this kernel lacks IPVS")
            self._run(where, ["ipvsadm-restore"], "-C\n" + _ipvs_text(ns), "ipvsadm-restore")

    def _without_nfacct(self, where: str, tool: str, text: str) -> str:
        if "-m nfacct" not in text or self.caps.nfacct:
            return text
        stripped, n = NFACCT_RE.subn("", text)
        self.notes.append(f"{where}: this kernel lacks nfacct: {n} counting match(es) (-m nfacct) left out of "
                          f"the {tool} rules (they only count packets)")
        return stripped

    def _run(self, where: str, argv: list[str], text: str, what: str) -> None:
        proc = nsutil.run_in(where, argv, text)
        if proc.returncode != 0 and argv[0].endswith("tables-restore") and "nfacct" in text and self.caps.nfacct:
            self.caps.nfacct = False
            proc = nsutil.run_in(where, argv, self._without_nfacct(where, argv[0], text))
        if proc.returncode != 0:
            msg = (proc.stderr or proc.stdout).strip().splitlines()
            raise LabError(f"{where}: {what} failed: {msg[0] if msg else 'exit ' + str(proc.returncode)}"
                           + (f" ({len(msg) - 1} more lines)" if len(msg) > 1 else ""))


NFACCT_RE = re.compile(r" -m nfacct --nfacct-name \S+")


def _errtext(e: Exception) -> str:
    code = getattr(e, "code", None)
    if isinstance(code, int) and code > 0:
        import os
        return f"{os.strerror(code)} (errno {code})"
    return str(e) or e.__class__.__name__


def _ipt_tables(text: str) -> set[str]:
    return {line[1:].strip() for line in text.splitlines() if line.startswith("*")}


def _nft_tables(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        m = re.match(r"\s*(?:add\s+)?table\s+(\w+)\s+([\w.-]+)", line)
        if m and (m[1], m[2]) not in out:
            out.append((m[1], m[2]))
    return out


def _ipset_names(text: str) -> set[str]:
    return {line.split()[1] for line in text.splitlines() if line.startswith("create ") and len(line.split()) > 1}


def _ipset_replacing(text: str) -> str:
    """`ipset save` text as a restore that also empties sets that already exist (lab apply)."""
    out = []
    for line in text.splitlines():
        out.append(line)
        if line.startswith("create ") and len(line.split()) > 1:
            out.append(f"flush {line.split()[1]}")
    return "\n".join(out) + "\n"


def _ipvs_text(ns: Netns) -> str:
    """`ipvsadm -Sn` text for the namespace's IPVS table, its real servers in the order
    ipvsadm-restore adds them (so the kernel's list is the model's)."""
    text = ipvsadm_save(ns.ipvs, order="restore")
    return text + "\n" if text else ""


def iter_model_links(state: DataplaneState) -> Iterable[tuple[Netns, Link]]:
    for ns in state.namespaces.values():
        for link in ns.links.values():
            yield ns, link
