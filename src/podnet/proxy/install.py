"""Put a node's service proxy into its dataplane: which renderer runs for which mode,
and where its output goes (iptables, nft, ipsets, IPVS table, socket-LB maps).
"""

from __future__ import annotations

import importlib

from ..errors import PodnetError

# mode -> "module:function(ctx)"
INSTALLERS = {
    "iptables": "podnet.proxy.iptables:install",
    "nftables": "podnet.proxy.nftables:install",
    "ipvs": "podnet.proxy.ipvs:install",
    "ebpf": "podnet.proxy.ebpf:install",
    "userspace": "podnet.proxy.userspace:install",
}


def install_proxy(ctx, mode: str) -> None:
    if mode == "none":
        return
    module, _, fn = INSTALLERS[mode].partition(":")
    try:
        installer = getattr(importlib.import_module(module), fn)
    except (ModuleNotFoundError, AttributeError) as e:
        raise PodnetError(f"the {mode} service proxy is not available yet ({e})") from None
    installer(ctx)
