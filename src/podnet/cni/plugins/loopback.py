"""loopback (containernetworking/plugins plugins/main/loopback/loopback.go).

ADD sets CNI_IFNAME (the runtime passes "lo") up; the kernel then holds
127.0.0.1/8 and ::1. The result names the interface with MAC 00:00:00:00:00:00
and both addresses on it, unless a previous plugin's result is passed through.
DEL sets it down; CHECK wants it up.
"""

from __future__ import annotations

from ..spec import Call, Interface, IPConfig, Plugin, Result, fail
from .netlink import link_set_up


class Loopback(Plugin):
    type = "loopback"

    def add(self, call: Call) -> Result:
        ns = call.sandbox()
        link = ns.links.get(call.ifname)
        if link is None:
            raise fail(f"failed to find link {call.ifname!r}: Link not found")
        link_set_up(ns, link)
        prev = call.prev_result()
        if prev is not None:
            return prev
        result = Result(call.cni_version, [Interface(call.ifname, "00:00:00:00:00:00", call.netns)])
        for version in (4, 6):
            addr = next((a for a in link.addresses if a.ip.version == version and a.ip.is_loopback), None)
            if addr is not None:
                result.ips.append(IPConfig(addr.interface, interface=0))
        return result

    def delete(self, call: Call) -> None:
        ns = call.sandbox_if_exists()
        if ns is None or call.ifname not in ns.links:
            return
        ns.links[call.ifname].up = False
        ns.invalidate()

    def check(self, call: Call) -> None:
        ns = call.sandbox()
        link = ns.links.get(call.ifname)
        if link is None or not link.up:
            raise fail("loopback interface is down")
