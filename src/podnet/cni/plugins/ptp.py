"""ptp (containernetworking/plugins plugins/main/ptp/ptp.go): a routed veth per container.

ADD, as upstream:
1. the IPAM plugin allocates (its result's IPs all go to the container, interface 1);
2. IP forwarding is enabled for the families used;
3. a veth pair: CNI_IFNAME in the container, "vethXXXXXXXX" on the host;
4. in the container (ipam.ConfigureIface, then ptp's own routes): the address
   with the subnet's prefix, the IPAM routes via the gateway, and instead of the
   kernel's prefix route `GW/32 dev eth0 scope link src IP` plus
   `SUBNET via GW dev eth0 src IP`, so all traffic, even to neighbours in the
   subnet, goes through the gateway;
5. on the host: the gateway as a /32 (/128) on the host veth and the host route
   `IP/32 dev vethXXXXXXXX scope host`;
6. with ipMasq, the CNI-xxxx masquerade chain (see netfilter.setup_ip_masq).
The result lists [host veth, container veth]. DEL releases the IPAM allocation,
deletes the veth and the masquerade chain; CHECK validates prevResult against
the container.
"""

from __future__ import annotations

import ipaddress

from ...linux.state import Route
from ..spec import Call, Interface, Plugin, Result, fail
from .netfilter import check_ip_masq, masquerade, setup_ip_masq, teardown_ip_masq
from .netlink import (add_address, add_host_route, add_route, configure_iface, container_interface, delete_link,
                      enable_forward, host_prefix, setup_veth, validate_container_veth,
                      validate_expected_interface_ips, validate_expected_routes)


class PTP(Plugin):
    type = "ptp"

    def add(self, call: Call) -> Result:
        return call.with_ipam(call.ipam_type(), lambda result: self._add(call, result))

    def _add(self, call: Call, result: Result) -> Result:
        conf = call.conf
        if not result.ips:
            raise fail("IPAM plugin returned missing IP config")
        host = call.host.ns
        enable_forward(host, result.ips)
        sandbox = call.sandbox()
        host_veth, cont_veth = setup_veth(call, sandbox, int(conf.get("mtu") or 0))
        for ipc in result.ips:
            ipc.interface = 1
        result.interfaces = [Interface(host_veth.name, host_veth.mac or ""),
                             Interface(cont_veth.name, cont_veth.mac or "", call.netns)]
        configure_iface(sandbox, call.ifname, result)
        for ipc in result.ips:
            if ipc.gateway is None:
                raise fail(f"IPAM result for {ipc.address} has no gateway: ptp needs one")
            # the kernel's prefix route is replaced (same destination, device and
            # metric in the model: IPv6 prefix routes carry metric 256)
            metric = 256 if ipc.version == 6 else 0
            add_route(sandbox, Route(host_prefix(ipc.gateway), call.ifname, scope="link", src=ipc.address.ip))
            sandbox.add_route(Route(ipc.address.network, call.ifname, via=ipc.gateway, src=ipc.address.ip,
                                    metric=metric))
        for ipc in result.ips:
            add_address(host, host_veth, ipaddress.ip_interface(host_prefix(ipc.gateway)))
            add_host_route(host, ipc.address.ip, host_veth.name)
        if conf.get("ipMasq"):
            masquerade(call, [ipc.address for ipc in result.ips], setup_ip_masq)
        if call.dns.is_set():
            result.dns = call.dns
        return result

    def delete(self, call: Call) -> None:
        call.delegate(call.ipam_type(), "DEL")
        if not call.netns:
            return
        sandbox = call.sandbox_if_exists()
        if sandbox is None:
            return
        addrs = delete_link(call.state, sandbox, call.ifname)
        if addrs and call.conf.get("ipMasq"):
            masquerade(call, addrs, teardown_ip_masq)

    def check(self, call: Call) -> None:
        sandbox = call.sandbox()
        call.delegate(call.ipam_type(), "CHECK")
        prev = call.prev_result()
        if prev is None:
            raise fail("ptp: Required prevResult missing")
        iface = container_interface(prev, call)
        validate_container_veth(call, sandbox, iface, "ptp")
        validate_expected_interface_ips(sandbox, call.ifname, prev.sandbox_ips(call.ifname))
        validate_expected_routes(sandbox, prev.routes)
        if call.conf.get("ipMasq"):
            masquerade(call, [ipc.address for ipc in prev.sandbox_ips(call.ifname)], check_ip_masq)
