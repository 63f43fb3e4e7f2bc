"""portmap (containernetworking/plugins plugins/meta/portmap, iptables backend).

A chained plugin: it needs the previous result (the container's addresses) and
the `portMappings` capability ([{hostPort, containerPort, protocol, hostIP}],
which the runtime fills from the pod's hostPorts). In the nat table of the host:

    PREROUTING, OUTPUT:  -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    CNI-HOSTPORT-DNAT:   -p tcp -m comment --comment "dnat name: ... id: ..." -m multiport --dports 8080
                         -j CNI-DN-<hash>         (one per protocol and 15 ports; newest container first)
    CNI-DN-<hash>:       -s <pod subnet> -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK   (hairpin)
                         -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK   (localhost, IPv4)
                         -p tcp -m tcp --dport 8080 -j DNAT --to-destination <pod>:80
    CNI-HOSTPORT-SETMARK: -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
    CNI-HOSTPORT-MASQ:   -m mark --mark 0x2000/0x2000 -j MASQUERADE
    POSTROUTING:         -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ

(shown as iptables-save prints them). The SNAT rules exist unless `snat: false`;
`markMasqBit` (default 13), `externalSetMarkChain`, `masqAll`, `conditionsV4/V6`
are honoured. With SNAT on IPv4, route_localnet is set on the interface that
routes to the container (so 127.0.0.1 may be DNATed), and stale UDP conntrack
entries for the host ports are deleted. DEL removes the container's chain and
its jumps; CHECK verifies them.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Optional

from ...linux.routing import route_get
from ..spec import Call, CNIError, Code, Plugin, Result, fail
from .netfilter import (chain_exists, delete_chain, delete_rules_jumping_to, ensure_chain, format_chain_name,
                        has_rule, insert_unique, save_rule)
from .netlink import set_sysctl

TOP_LEVEL_DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SET_MARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MARK_MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
OLD_TOP_LEVEL_SNAT_CHAIN = "CNI-HOSTPORT-SNAT"
DEFAULT_MARK_BIT = 13


@dataclass
class Chain:
    """portmap's chain struct: rules of its own plus entry rules jumping to it."""
    name: str
    entry_chains: list[str] = field(default_factory=list)
    entry_rules: list[list[str]] = field(default_factory=list)
    rules: list[list[str]] = field(default_factory=list)
    prepend_entry: bool = False
    table: str = "nat"

    def setup(self, b) -> None:
        ensure_chain(b, self.table, self.name)
        for rule in self.rules:
            insert_unique(b, self.table, self.name, rule, prepend=False)
        for entry_chain in self.entry_chains:
            for rule in self.entry_rules:
                insert_unique(b, self.table, entry_chain, rule + ["-j", self.name], prepend=self.prepend_entry)

    def teardown(self, b) -> None:
        for entry_chain in self.entry_chains:
            delete_rules_jumping_to(b, self.table, entry_chain, self.name)
        delete_chain(b, self.table, self.name)

    def check(self, b) -> None:
        if not chain_exists(b, self.table, self.name):
            raise fail(f"chain {self.name} not found in iptables table {self.table}")
        for rule in self.rules:
            if not has_rule(b, self.table, self.name, rule):
                raise fail(f"rule {save_rule(rule)} in chain {self.name} not found in table {self.table}")
        for entry_chain in self.entry_chains:
            for rule in self.entry_rules:
                if not has_rule(b, self.table, entry_chain, rule + ["-j", self.name]):
                    raise fail(f"rule {save_rule(rule + ['-j', self.name])} in chain {entry_chain} "
                               f"not found in table {self.table}")


@dataclass
class PortMapConf:
    name: str
    container_id: str
    mappings: list[dict]
    snat: bool = True
    mark_bit: int = DEFAULT_MARK_BIT
    external_set_mark_chain: Optional[str] = None
    masq_all: bool = False
    conditions: dict = field(default_factory=dict)       # family -> extra match args
    container_nets: dict = field(default_factory=dict)   # family -> IPInterface

    @property
    def mark(self) -> str:
        value = 1 << self.mark_bit
        return f"{value:#x}/{value:#x}"


def parse_config(call: Call, prev: Optional[Result]) -> PortMapConf:
    conf = call.conf
    if conf.get("markMasqBit") is not None and conf.get("externalSetMarkChain") is not None:
        raise CNIError(Code.INVALID_CONFIG, "Cannot specify externalSetMarkChain and markMasqBit")
    bit = conf.get("markMasqBit")
    bit = DEFAULT_MARK_BIT if bit is None else bit
    if not isinstance(bit, int) or not 0 <= bit <= 31:
        raise CNIError(Code.INVALID_CONFIG, "MasqMarkBit must be between 0 and 31")
    mappings = list(call.runtime_config.get("portMappings") or [])
    for pm in mappings:
        if int(pm.get("containerPort") or 0) <= 0:
            raise CNIError(Code.INVALID_CONFIG, f"Invalid container port number: {pm.get('containerPort', 0)}")
        if int(pm.get("hostPort") or 0) <= 0:
            raise CNIError(Code.INVALID_CONFIG, f"Invalid host port number: {pm.get('hostPort', 0)}")
    pmc = PortMapConf(call.name, call.container_id, mappings, conf.get("snat", True) is not False, bit,
                      conf.get("externalSetMarkChain"), bool(conf.get("masqAll")),
                      {4: list(conf.get("conditionsV4") or []), 6: list(conf.get("conditionsV6") or [])})
    if prev is not None:
        for ipc in prev.sandbox_ips(call.ifname):
            pmc.container_nets.setdefault(ipc.version, ipc.address)
    return pmc


def _fmt_ip_port(ip, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def toplevel_dnat_chain() -> Chain:
    return Chain(TOP_LEVEL_DNAT_CHAIN, ["PREROUTING", "OUTPUT"], [["-m", "addrtype", "--dst-type", "LOCAL"]])


def set_mark_chain(conf: PortMapConf) -> Chain:
    return Chain(SET_MARK_CHAIN, rules=[["-m", "comment", "--comment", "CNI portfwd masquerade mark",
                                         "-j", "MARK", "--set-xmark", conf.mark]])


def mark_masq_chain(conf: PortMapConf) -> Chain:
    # prepended, or the ptp/bridge masquerade rules would stomp on it
    return Chain(MARK_MASQ_CHAIN, ["POSTROUTING"], [["-m", "comment", "--comment", "CNI portfwd requiring masquerade"]],
                 [["-m", "mark", "--mark", conf.mark, "-j", "MASQUERADE"]], prepend_entry=True)


def dnat_chain(conf: PortMapConf, container_net=None) -> Chain:
    """genDnatChain + fillDnatRules for one container address."""
    chain = Chain(format_chain_name(conf.name, conf.container_id, "DN-"), [TOP_LEVEL_DNAT_CHAIN], prepend_entry=True)
    if container_net is None:
        return chain
    family = container_net.version
    comment = f'dnat name: "{conf.name}" id: "{conf.container_id}"'
    if len(comment) > 255:
        comment = comment[:253] + "..."
    set_mark = conf.external_set_mark_chain or SET_MARK_CHAIN
    ports_by_proto: dict[str, list[int]] = {}
    for pm in conf.mappings:
        ports_by_proto.setdefault(pm.get("protocol", ""), []).append(int(pm["hostPort"]))
    for proto in sorted(ports_by_proto):
        ports = ports_by_proto[proto]
        for i in range(0, len(ports), 15):          # multiport takes 15 ports at most
            chain.entry_rules.append(["-m", "comment", "--comment", comment, "-m", "multiport", "-p", proto,
                                      "--destination-ports", ",".join(str(p) for p in ports[i:i + 15])]
                                     + conf.conditions.get(family, []))
    for pm in conf.mappings:
        base = ["-p", pm.get("protocol", ""), "--dport", str(pm["hostPort"])]
        host_ip = pm.get("hostIP") or ""
        if host_ip:
            hip = ipaddress.ip_address(host_ip)
            if hip.version != family:
                continue
            if not hip.is_unspecified:
                base += ["-d", host_ip]
        if conf.snat:
            masq_cidr = ("0.0.0.0/0" if family == 4 else "::/0") if conf.masq_all else str(container_net)
            chain.rules.append(base + ["-s", masq_cidr, "-j", set_mark])
            if family == 4 and not conf.masq_all:
                chain.rules.append(base + ["-s", "127.0.0.1", "-j", set_mark])
        chain.rules.append(base + ["-j", "DNAT", "--to-destination",
                                   _fmt_ip_port(container_net.ip, int(pm["containerPort"]))])
    return chain


def forward_ports(call: Call, conf: PortMapConf, container_net) -> None:
    host = call.host
    b = host.builder(container_net.version)
    if conf.snat:
        if conf.external_set_mark_chain is None:
            set_mark_chain(conf).setup(b)
            mark_masq_chain(conf).setup(b)
        if container_net.version == 4:
            dev = route_get(host.ns, container_net.ip).dev
            if dev:
                set_sysctl(host.ns, f"net.ipv4.conf.{dev}.route_localnet", "1")
    toplevel_dnat_chain().setup(b)
    dnat_chain(conf, container_net).setup(b)


def delete_stale_udp_conntrack(call: Call, conf: PortMapConf, family: int) -> None:
    """deletePortmapStaleConnections: UDP entries to the mapped host ports."""
    ports = {int(pm["hostPort"]) for pm in conf.mappings if str(pm.get("protocol", "")).lower() == "udp"}
    ns = call.host.ns
    ns.conntrack = [e for e in ns.conntrack
                    if not (e.proto == "udp" and e.orig_dst.version == family and e.orig_dport in ports)]


class PortMap(Plugin):
    type = "portmap"

    def add(self, call: Call) -> Result:
        prev = call.prev_result()
        conf = parse_config(call, prev)
        if prev is None:
            raise fail("must be called as chained plugin")
        if not conf.mappings:
            return prev
        for family in (4, 6):
            net = conf.container_nets.get(family)
            if net is not None:
                forward_ports(call, conf, net)
                delete_stale_udp_conntrack(call, conf, family)
        return prev

    def delete(self, call: Call) -> None:
        conf = parse_config(call, call.prev_result())
        if not conf.mappings:
            return
        for family in (4, 6):
            b = call.host.builder(family)
            dnat_chain(conf).teardown(b)
            Chain(format_chain_name(conf.name, conf.container_id, "SN-"), [OLD_TOP_LEVEL_SNAT_CHAIN]).teardown(b)

    def check(self, call: Call) -> None:
        prev = call.prev_result()
        conf = parse_config(call, prev)
        if prev is None:
            raise fail("Required prevResult missing")
        if not conf.mappings:
            return
        for family in (4, 6):
            net = conf.container_nets.get(family)
            if net is not None:
                dnat_chain(conf, net).check(call.host.builder(family))
