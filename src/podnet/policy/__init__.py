"""NetworkPolicy: semantics, analysis and explanations.

    from podnet.policy import PolicyEngine, connection_list
    engine = PolicyEngine(cluster)                        # every pod, plugin semantics
    engine.allowed(src_pod_or_ip, dst_pod_or_ip, 5432, "TCP")   # -> Verdict (rules that decided)
    engine.ingress_view(pod), engine.egress_view(pod)     # -> DirectionView (for rule renderers)
    connection_list(cluster)                              # netpol-analyzer's workload list

Modules: model (parse + validate), ports (connection sets), addresses (ipBlock
ranges), engine (the semantics, per equivalence class of pods), analysis
(workloads and external ranges), matrix (e2e truth tables), explain, output.
"""

from .analysis import ConnectionList, Workload, connection_list
from .engine import (ANALYZER, PLUGIN, AllowEntry, DirectionDecision, DirectionView, Endpoint,
                     PolicyEngine, RuleCheck, Semantics, Verdict)
from .matrix import Matrix, reachability
from .model import NetworkPolicy, RuleRef, parse_policy
from .ports import ALL_CONNECTIONS, NO_CONNECTIONS, Connections

__all__ = [
    "ALL_CONNECTIONS", "ANALYZER", "AllowEntry", "ConnectionList", "Connections", "DirectionDecision",
    "DirectionView", "Endpoint", "Matrix", "NO_CONNECTIONS", "NetworkPolicy", "PLUGIN",
    "PolicyEngine", "RuleCheck", "RuleRef", "Semantics", "Verdict", "Workload", "connection_list",
    "parse_policy", "reachability",
]
