"""CNI: the specification's contract, the reference plugins, and the solutions built on them.

`solution_for(cfg)` returns the cluster's CNI solution (kindnet, flannel, calico,
weave, kubenet); see base.CNISolution for what a solution does to each node.
"""

from __future__ import annotations

import importlib

from .base import CNISolution

# plugin name -> "module:Class"
SOLUTIONS = {
    "kindnet": "podnet.cni.kindnet:Kindnet",
    "flannel": "podnet.cni.flannel:Flannel",
    "calico": "podnet.cni.calico:Calico",
    "weave": "podnet.cni.weave:Weave",
    "kubenet": "podnet.cni.kubenet:Kubenet",
    "none": "podnet.cni.base:CNISolution",
}


def solution_for(cfg) -> CNISolution:
    target = SOLUTIONS[cfg.cni.plugin]
    module, _, cls = target.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)(cfg)
    except ModuleNotFoundError as e:
        from ..errors import PodnetError
        raise PodnetError(f"the {cfg.cni.plugin} CNI is not available yet ({e.name})") from None
