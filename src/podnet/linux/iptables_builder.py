"""Assemble one node's iptables-save text from what several components program.

kube-proxy, the CNI's masquerade agent and the policy enforcer each own their
chains and hook them into the built-in chains with jump rules, as the real
daemons do (`iptables -I PREROUTING -j KUBE-SERVICES ...`). Each contributes:

    builder.add_restore(text)              # "*nat\\n:KUBE-SERVICES - [0:0]\\n-A KUBE-SERVICES ...\\nCOMMIT"
    builder.jump("nat", "PREROUTING", '-m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
                 prepend=True)

and `render()` prints the node's iptables-save: built-in chains with their
policies, then the components' chains, in the order the kernel would list them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUILTIN = {
    "raw": ["PREROUTING", "OUTPUT"],
    "mangle": ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
    "nat": ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
    "filter": ["INPUT", "FORWARD", "OUTPUT"],
}
TABLE_ORDER = ["raw", "mangle", "nat", "filter"]


@dataclass
class _Table:
    chains: dict[str, list[str]] = field(default_factory=dict)   # chain -> rule args (after -A CHAIN)
    policies: dict[str, str] = field(default_factory=dict)


class IptablesBuilder:
    def __init__(self):
        self.tables: dict[str, _Table] = {}
        self.prepended: set[tuple[str, str, str]] = set()

    def table(self, name: str) -> _Table:
        t = self.tables.get(name)
        if t is None:
            t = _Table()
            for chain in BUILTIN.get(name, []):
                t.chains[chain] = []
                t.policies[chain] = "ACCEPT"
            self.tables[name] = t
        return t

    def policy(self, table: str, chain: str, policy: str) -> None:
        self.table(table).policies[chain] = policy

    def chain(self, table: str, chain: str) -> None:
        self.table(table).chains.setdefault(chain, [])

    def append(self, table: str, chain: str, rule: str) -> None:
        self.table(table).chains.setdefault(chain, []).append(rule)

    def jump(self, table: str, chain: str, rule: str, prepend: bool = False) -> None:
        rules = self.table(table).chains.setdefault(chain, [])
        if rule in rules:
            return
        if prepend:
            # prepended rules keep the order they were made in, ahead of appended ones
            n = sum(1 for r in rules if (table, chain, r) in self.prepended)
            rules.insert(n, rule)
            self.prepended.add((table, chain, rule))
        else:
            rules.append(rule)

    def insert(self, table: str, chain: str, rule: str) -> None:
        """`iptables -I CHAIN 1 rule`: first in the chain, ahead of earlier prepends (kube-router
        keeps its top-level jumps at position 1)."""
        rules = self.table(table).chains.setdefault(chain, [])
        if rule in rules:
            rules.remove(rule)
        rules.insert(0, rule)
        self.prepended.add((table, chain, rule))

    def add_restore(self, text: str) -> None:
        """Merge an iptables-restore payload (chain declarations and -A rules)."""
        for kind, table, chain, rest in restore_statements(text):
            if kind == "table":
                self.table(table)
            elif kind == "chain":
                self.chain(table, chain)
                if rest != "-":
                    self.policy(table, chain, rest)
            elif kind == "rule":
                self.append(table, chain, rest)
            elif not rest.startswith(("-X ", "-F ")):
                raise ValueError(f"unexpected iptables-restore line: {rest}")

    def render(self) -> str:
        out = []
        for name in sorted(self.tables, key=lambda n: (TABLE_ORDER.index(n) if n in TABLE_ORDER else 9, n)):
            t = self.tables[name]
            out.append(f"*{name}")
            builtins = [c for c in BUILTIN.get(name, []) if c in t.chains]
            others = sorted(c for c in t.chains if c not in builtins)
            for c in builtins:
                out.append(f":{c} {t.policies.get(c, 'ACCEPT')} [0:0]")
            for c in others:
                out.append(f":{c} - [0:0]")
            for c in builtins + others:
                for rule in t.chains[c]:
                    out.append(f"-A {c} {rule}")
            out.append("COMMIT")
        return "\n".join(out) + ("\n" if out else "")


def restore_statements(text: str):
    """The statements of iptables-save / iptables-restore text, with the table they are in:
    ("table", TABLE, None, None), ("chain", TABLE, CHAIN, POLICY or "-"), ("rule", TABLE, CHAIN,
    the rule after `-A CHAIN`), ("other", TABLE, None, the line). Comments, blank lines and
    COMMIT are left out."""
    table = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or line == "COMMIT":
            continue
        if line.startswith("*"):
            table = line[1:]
            yield "table", table, None, None
        elif line.startswith(":"):
            name, policy = (line[1:].split() + ["-"])[:2]
            yield "chain", table, name, policy
        elif line.startswith("-A "):
            _, chain, *rest = line.split(" ", 2)
            yield "rule", table, chain, rest[0] if rest else ""
        else:
            yield "other", table, None, line
