"""bridge (containernetworking/plugins plugins/main/bridge/bridge.go).

ADD, as upstream:
1. the bridge (`bridge`, default cni0) is created if missing, up, with `mtu`,
   promiscuous with `promiscMode`, its MAC fixed to itself;
2. a veth pair: CNI_IFNAME in the container (MAC from the `mac` capability,
   args.cni.mac or CNI_ARGS MAC=, else deterministic), "vethXXXXXXXX" on the host,
   enslaved to the bridge, hairpin mode per `hairpinMode`;
3. with an IPAM section: the IPAM result goes to the container (interface 2),
   the gateway defaulting to the subnet's .1 with `isGateway`; `isDefaultGateway`
   (which implies isGateway) adds a default route via it unless the IPAM gave
   one; the address and routes are configured (the kernel's prefix route stays:
   the pod talks to its neighbours over the bridge);
4. `isGateway`: the gateway address with the subnet's prefix on the bridge
   (another IPv4 address there is an error unless `forceAddress`), forwarding on;
5. `ipMasq`: the CNI-xxxx masquerade chain, as ptp.
The result lists [bridge, host veth, container veth]. DEL releases the IPAM
allocation and deletes the veth (the bridge stays); CHECK validates the bridge,
the veth pair and prevResult's addresses and routes.

Not modelled (an error with code 2, "unsupported field", if set): vlan,
vlanTrunk, macspoofchk. Promiscuous mode is recorded as the device's flags in
/sys/class/net/<bridge>/flags (Netns.files), the model having no such field.
"""

from __future__ import annotations

import ipaddress

from ...linux.state import Link, Netns
from ..spec import Call, CNIError, Code, Interface, Plugin, Result, RouteEntry, fail
from .netfilter import check_ip_masq, masquerade, setup_ip_masq, teardown_ip_masq
from .netlink import (any_network, configure_iface, container_interface, delete_link, enable_forward,
                      link_set_up, set_sysctl, setup_veth, validate_container_veth, validate_expected_interface_ips,
                      validate_expected_routes)

DEFAULT_BRIDGE = "cni0"
UNSUPPORTED = ("vlan", "vlanTrunk", "macspoofchk")
def is_promisc(ns: Netns, dev: str) -> bool:
    link = ns.links.get(dev)
    return bool(link and link.promisc)


def ensure_bridge(ns: Netns, name: str, mtu: int, promisc: bool) -> Link:
    """ensureBridge: create (or reuse) the bridge, set it up; accept_ra off."""
    br = ns.links.get(name)
    if br is None:
        br = ns.add_link(Link(name, "bridge", mtu=mtu or 1500))
    elif br.kind != "bridge":
        raise fail(f"{name!r} already exists but is not a bridge")
    link_set_up(ns, br)
    br.promisc = br.promisc or promisc
    set_sysctl(ns, f"net.ipv6.conf.{name}.accept_ra", "0")
    return br


def ensure_addr(ns: Netns, br: Link, gw: ipaddress.IPv4Interface | ipaddress.IPv6Interface, force: bool) -> None:
    """ensureAddr: the gateway on the bridge; a different IPv4 address (or an
    overlapping IPv6 one) is replaced with forceAddress, an error otherwise."""
    for a in list(br.addresses):
        if a.interface == gw:
            return
        if a.ip.version != gw.version:
            continue
        if gw.version == 4 or a.ip in gw.network or gw.ip in a.network:
            if not force:
                raise fail(f'"{br.name}" already has an IP address different from {gw}')
            br.addresses.remove(a)
    br.add_address(gw)
    ns.invalidate()


class Bridge(Plugin):
    type = "bridge"

    @staticmethod
    def _conf(call: Call) -> dict:
        """loadNetConf: defaults, the implied isGateway, the checks podnet makes."""
        conf = dict(call.conf)
        for key in UNSUPPORTED:
            if conf.get(key):
                raise CNIError(Code.UNSUPPORTED_FIELD,
                               f"unsupported field in network configuration: {key!r}: {conf[key]!r}",
                               "podnet's bridge plugin does not model VLANs or MAC spoof checking")
        conf.setdefault("bridge", DEFAULT_BRIDGE)
        if conf.get("isDefaultGateway"):
            conf["isGateway"] = True
        if conf.get("hairpinMode") and conf.get("promiscMode"):
            raise CNIError(Code.INVALID_CONFIG, "cannot set hairpin mode and promiscuous mode at the same time")
        return conf

    @staticmethod
    def _mac(call: Call) -> str:
        """The container MAC: CNI_ARGS MAC=, overridden by args.cni.mac, then the `mac` capability."""
        mac = call.load_args(["MAC"]).get("MAC", "")
        args = call.conf.get("args")
        if isinstance(args, dict):
            mac = (args.get("cni") or {}).get("mac") or mac
        return call.runtime_config.get("mac") or mac

    def add(self, call: Call) -> Result:
        conf = self._conf(call)
        host = call.host.ns
        mtu = int(conf.get("mtu") or 0)
        br = ensure_bridge(host, conf["bridge"], mtu, bool(conf.get("promiscMode")))
        sandbox = call.sandbox()
        host_veth, cont_veth = setup_veth(call, sandbox, mtu, self._mac(call) or None)
        host_veth.master = br.name
        host_veth.hairpin = bool(conf.get("hairpinMode"))
        result = Result(call.cni_version, [Interface(br.name, br.mac or ""),
                                           Interface(host_veth.name, host_veth.mac or ""),
                                           Interface(cont_veth.name, cont_veth.mac or "", call.netns)])
        if call.ipam.get("type"):
            result = call.with_ipam(call.ipam["type"],
                                    lambda ipam: self._layer3(call, conf, result, ipam, sandbox, br))
        else:
            link_set_up(sandbox, cont_veth)         # L2 only
        if call.dns.is_set():
            result.dns = call.dns
        return result

    @staticmethod
    def _layer3(call: Call, conf: dict, result: Result, ipam: Result, sandbox: Netns, br: Link) -> Result:
        result.ips, result.routes, result.dns = ipam.ips, ipam.routes, ipam.dns
        if not result.ips:
            raise fail("IPAM plugin returned missing IP config")
        gateways = []
        with_default: set[int] = set()
        for ipc in result.ips:                       # calcGateways
            ipc.interface = 2
            if ipc.gateway is None and conf.get("isGateway"):
                ipc.gateway = ipc.address.network.network_address + 1
            if conf.get("isDefaultGateway") and ipc.version not in with_default:
                if not any(r.gw is not None and r.dst == any_network(ipc.version) for r in result.routes):
                    result.routes.append(RouteEntry(any_network(ipc.version), ipc.gateway))
                with_default.add(ipc.version)
            if conf.get("isGateway"):
                gateways.append(ipaddress.ip_interface(f"{ipc.gateway}/{ipc.address.network.prefixlen}"))
        if not conf.get("enabledad"):
            set_sysctl(sandbox, f"net.ipv6.conf.{call.ifname}.accept_dad", "0")
        set_sysctl(sandbox, f"net.ipv4.conf.{call.ifname}.arp_notify", "1")
        configure_iface(sandbox, call.ifname, result)
        host = call.host.ns
        for gw in gateways:
            ensure_addr(host, br, gw, bool(conf.get("forceAddress")))
        enable_forward(host, [ipc for ipc in result.ips if conf.get("isGateway")])
        if conf.get("ipMasq"):
            masquerade(call, [ipc.address for ipc in result.ips], setup_ip_masq)
        return result

    def delete(self, call: Call) -> None:
        conf = self._conf(call)
        ipam_type = call.ipam.get("type", "")
        sandbox = call.sandbox_if_exists() if call.netns else None
        addrs = delete_link(call.state, sandbox, call.ifname) if sandbox is not None else None
        if ipam_type:
            call.delegate(ipam_type, "DEL")
        if addrs and ipam_type and conf.get("ipMasq"):
            masquerade(call, addrs, teardown_ip_masq)

    def check(self, call: Call) -> None:
        conf = self._conf(call)
        sandbox = call.sandbox()
        if call.ipam.get("type"):
            call.delegate(call.ipam["type"], "CHECK")
        prev = call.prev_result()
        if prev is None:
            raise fail("Required prevResult missing")
        host = call.host.ns
        br_iface = next((i for i in prev.interfaces if i.name == conf["bridge"]), None)
        br = host.links.get(conf["bridge"]) if br_iface else None
        if br is None:
            raise fail(f"CNI created bridge {conf['bridge']} in host namespace was not found")
        if br.kind != "bridge":
            raise fail(f"Interface {br.name} does not have link type of bridge")
        if br_iface.mac and br_iface.mac != br.mac:
            raise fail(f"Bridge interface {br.name} Mac doesn't match: {br_iface.mac}")
        if is_promisc(host, br.name) != bool(conf.get("promiscMode")):
            raise fail(f"Bridge interface {br.name} configured Promisc Mode {bool(conf.get('promiscMode'))} "
                       f"doesn't match current state: {is_promisc(host, br.name)}")
        cont = validate_container_veth(call, sandbox, container_interface(prev, call), "bridge")
        peer = call.state.veth_peer(sandbox, cont)
        if peer is None or peer[0] is not host or peer[1].master != br.name:
            raise fail(f"CNI veth created for bridge {br.name} was not found")
        validate_expected_interface_ips(sandbox, call.ifname, prev.sandbox_ips(call.ifname))
        validate_expected_routes(sandbox, prev.routes)
        if conf.get("ipMasq"):
            masquerade(call, [ipc.address for ipc in prev.sandbox_ips(call.ifname)], check_ip_masq)
