"""CNI plugins that act on the dataplane model, registered by type name.

The reference plugins mirror containernetworking/plugins:

    loopback    plugins/main/loopback    lo up, 127.0.0.1/8 and ::1
    ptp         plugins/main/ptp         a veth per container, routed (no bridge)
    bridge      plugins/main/bridge      a veth per container on a Linux bridge (cni0)
    host-local  plugins/ipam/host-local  addresses from ranges, state in dataDir files
    portmap     plugins/meta/portmap     hostPort DNAT in iptables (CNI-HOSTPORT-*)
    bandwidth   plugins/meta/bandwidth   tc tbf shaping (recorded, not simulated)

A CNI solution adds its own plugin (flannel's, calico's...) with

    from podnet.cni.plugins import register
    register("calico", "podnet.cni.calico_plugin:CalicoPlugin")      # lazy, or
    register("calico", CalicoPlugin)                                  # a Plugin subclass

and it is then found by `type` in any network configuration list, and by
`Call.delegate(type)` (an IPAM plugin, or the plugin flannel delegates to).
Shared building blocks for plugin authors are in `podnet.cni.plugins.netlink`
(veths, addresses, routes, sysctls, CHECK validation) and
`podnet.cni.plugins.netfilter` (iptables rules as iptables-save prints them, the
CNI-xxxx masquerade chain).
"""

from __future__ import annotations

import importlib
from typing import Union

from ..spec import CNIError, Code, Plugin

# type -> "module:Class" (imported on first use) or a Plugin subclass
PLUGINS: dict[str, Union[str, type[Plugin]]] = {
    "loopback": "podnet.cni.plugins.loopback:Loopback",
    "ptp": "podnet.cni.plugins.ptp:PTP",
    "bridge": "podnet.cni.plugins.bridge:Bridge",
    "host-local": "podnet.cni.plugins.host_local:HostLocal",
    "portmap": "podnet.cni.plugins.portmap:PortMap",
    "bandwidth": "podnet.cni.plugins.bandwidth:Bandwidth",
}

_instances: dict[str, Plugin] = {}


def register(plugin_type: str, target: Union[str, type[Plugin]]) -> None:
    """Make `plugin_type` available to network configuration lists ("module:Class" or a class)."""
    PLUGINS[plugin_type] = target
    _instances.pop(plugin_type, None)


def plugin_types() -> list[str]:
    return sorted(PLUGINS)


def plugin_for(plugin_type: str, cni_path: str = "/opt/cni/bin") -> Plugin:
    """The plugin binary for `type` (invoke.FindInPath): an error names the search path."""
    plugin = _instances.get(plugin_type)
    if plugin is not None:
        return plugin
    target = PLUGINS.get(plugin_type)
    if target is None:
        paths = " ".join((cni_path or "").split(":"))
        raise CNIError(Code.INTERNAL, f'failed to find plugin "{plugin_type}" in path [{paths}]')
    if isinstance(target, str):
        module, _, cls = target.partition(":")
        target = getattr(importlib.import_module(module), cls)
    plugin = target()
    _instances[plugin_type] = plugin
    return plugin
