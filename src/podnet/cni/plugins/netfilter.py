"""iptables rules as the plugins write them, in the form iptables-save prints them.

Plugins pass go-iptables argument lists (`-d 10.244.1.3/24 -j ACCEPT -m comment
--comment ...`); the kernel stores the rule and iptables-save prints it in its
canonical order: addresses (masked, with a prefix), interfaces, protocol, the
matches in order (a bare `--dport` after `-p tcp` loads `-m tcp`), the target
with its options; values with characters outside [A-Za-z0-9_-] quoted.
`save_rule` does that translation, so the node's iptables-save text matches a
real node's and the iptables engine evaluates what the kernel would.

Also here: pkg/utils' chain names and comments, and pkg/ip's IP masquerade
chain (SetupIPMasq/TeardownIPMasq), shared by ptp and bridge.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Optional, Sequence

from ...linux.iptables_builder import BUILTIN, IptablesBuilder
from ..spec import fail

# ------------------------------------------------------------------- names (pkg/utils)

MAX_CHAIN_LENGTH = 28
CHAIN_PREFIX = "CNI-"


def format_hash_with_prefix(length: int, prefix: str, to_hash: str) -> str:
    """utils.MustFormatHashWithPrefix: prefix + sha512 hex, cut to `length`."""
    if len(prefix) >= length or length > 128:
        raise ValueError("invalid length")
    return (prefix + hashlib.sha512(to_hash.encode()).hexdigest())[:length]


def format_chain_name(name: str, container_id: str, prefix: str = "") -> str:
    """utils.FormatChainName / MustFormatChainNameWithPrefix: "CNI-[prefix]" + hash, 28 characters."""
    return format_hash_with_prefix(MAX_CHAIN_LENGTH, CHAIN_PREFIX + prefix, name + container_id)


def format_comment(name: str, container_id: str) -> str:
    """utils.FormatComment: `name: "NET" id: "CONTAINER"`."""
    return f'name: "{name}" id: "{container_id}"'


# ------------------------------------------------------------------- iptables-save text

_NO_QUOTE = set("_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def save_string(value: str) -> str:
    """xtables_save_string: bare when only [A-Za-z0-9_-], else quoted with \\ before " \\ '."""
    if value and all(c in _NO_QUOTE for c in value):
        return value
    return '"' + "".join("\\" + c if c in "\"\\'" else c for c in value) + '"'


_BASIC = {"-s": "-s", "--source": "-s", "--src": "-s", "-d": "-d", "--destination": "-d", "--dst": "-d",
          "-i": "-i", "--in-interface": "-i", "-o": "-o", "--out-interface": "-o",
          "-p": "-p", "--protocol": "-p"}
_TARGET_OPTIONS = {"--to-destination", "--to-source", "--to-ports", "--set-xmark", "--set-mark",
                   "--reject-with", "--random-fully", "--random", "--persistent"}
_FLAGS = {"--random-fully", "--random", "--persistent", "--syn"}
_PORT_OPTIONS = {"--dport", "--sport", "--destination-port", "--source-port"}
_MATCH_OPTIONS = {
    "comment": {"--comment"},
    "multiport": {"--dports", "--sports", "--ports", "--destination-ports", "--source-ports"},
    "addrtype": {"--src-type", "--dst-type", "--limit-iface-in", "--limit-iface-out"},
    "mark": {"--mark"},
    "tcp": _PORT_OPTIONS | {"--tcp-flags", "--syn"},
    "udp": _PORT_OPTIONS, "sctp": _PORT_OPTIONS,
}
_RENAME = {"--destination-ports": "--dports", "--source-ports": "--sports",
           "--destination-port": "--dport", "--source-port": "--sport"}


def _address(value: str) -> str:
    net = ipaddress.ip_network(value, strict=False)
    return str(net)


def save_rule(args: Sequence[str]) -> str:
    """One rule (the words after `-A CHAIN`) as iptables-save prints it."""
    basics: dict[str, tuple[bool, str]] = {}
    matches: list[tuple[str, list[tuple[bool, str, Optional[str]]]]] = []
    target, target_opts = None, []
    current = None
    negate = False
    i = 0
    while i < len(args):
        word = args[i]
        if word == "!":
            negate = True
            i += 1
            continue
        if word in _BASIC:
            key, value = _BASIC[word], args[i + 1]
            basics[key] = (negate, _address(value) if key in ("-s", "-d") else
                           value.lower() if key == "-p" else value)
            i += 2
        elif word in ("-m", "--match"):
            current = (args[i + 1], [])
            matches.append(current)
            i += 2
        elif word in ("-j", "--jump"):
            target = args[i + 1]
            i += 2
        elif word in _TARGET_OPTIONS:
            if word in _FLAGS:
                target_opts.append(word)
                i += 1
            else:
                target_opts += [word, args[i + 1]]
                i += 2
        elif word.startswith("--"):
            owner = current
            known = _MATCH_OPTIONS.get(owner[0]) if owner else set()
            if word in _PORT_OPTIONS and (owner is None or (known is not None and word not in known)):
                proto = basics.get("-p", (False, ""))[1]
                if not proto:
                    raise ValueError(f"{word} needs -p tcp/udp/sctp: {' '.join(args)}")
                owner = next((m for m in matches if m[0] == proto), None)
                if owner is None:
                    owner = (proto, [])
                    matches.append(owner)
            if owner is None:
                raise ValueError(f"option {word} outside a match: {' '.join(args)}")
            value = None if word in _FLAGS else args[i + 1]
            owner[1].append((negate, word, value))
            i += 1 if value is None else 2
        else:
            raise ValueError(f"unexpected word {word!r} in rule: {' '.join(args)}")
        negate = False
    out: list[str] = []
    for key in ("-s", "-d", "-i", "-o", "-p"):
        if key in basics:
            neg, value = basics[key]
            if key in ("-s", "-d") and not neg and value in ("0.0.0.0/0", "::/0"):
                continue            # "any" is not printed
            out += (["!"] if neg else []) + [key, value]
    for name, options in matches:
        out += ["-m", name]
        for neg, opt, value in options:
            out += (["!"] if neg else []) + [_RENAME.get(opt, opt)]
            if value is not None:
                out.append(save_string(value) if opt == "--comment" else value)
    if target:
        out += ["-j", target] + target_opts
    return " ".join(out)


# ------------------------------------------------------------------- builder operations

def chain_exists(b: IptablesBuilder, table: str, chain: str) -> bool:
    return table in b.tables and chain in b.tables[table].chains


def rules_of(b: IptablesBuilder, table: str, chain: str) -> list[str]:
    if not chain_exists(b, table, chain):
        return []
    return b.tables[table].chains[chain]


def ensure_chain(b: IptablesBuilder, table: str, chain: str) -> None:
    b.chain(table, chain)


def append_unique(b: IptablesBuilder, table: str, chain: str, args: Sequence[str]) -> None:
    """go-iptables AppendUnique (`iptables -C` then `-A`)."""
    rule = save_rule(args)
    if rule not in rules_of(b, table, chain):
        b.append(table, chain, rule)


def insert_unique(b: IptablesBuilder, table: str, chain: str, args: Sequence[str], prepend: bool) -> None:
    """utils.InsertUnique: `-I CHAIN 1` (prepend) or `-A`, unless the rule is there.

    Jumps from the built-in chains go through the builder's `jump`, which keeps
    every component's hooks in a stable order."""
    rule = save_rule(args)
    if rule in rules_of(b, table, chain):
        return
    if chain in BUILTIN.get(table, ()):
        b.jump(table, chain, rule, prepend=prepend)
    elif prepend:
        b.table(table).chains.setdefault(chain, []).insert(0, rule)
    else:
        b.append(table, chain, rule)


def delete_rule(b: IptablesBuilder, table: str, chain: str, args: Sequence[str]) -> bool:
    rules = rules_of(b, table, chain)
    rule = save_rule(args)
    if rule in rules:
        rules.remove(rule)
        return True
    return False


def delete_rules_jumping_to(b: IptablesBuilder, table: str, chain: str, target: str) -> None:
    rules = rules_of(b, table, chain)
    rules[:] = [r for r in rules if not r.endswith(f"-j {target}")]


def delete_chain(b: IptablesBuilder, table: str, chain: str) -> None:
    """`iptables -F CHAIN; iptables -X CHAIN` (no error when it does not exist)."""
    if chain_exists(b, table, chain) and chain not in BUILTIN.get(table, ()):
        del b.tables[table].chains[chain]


def has_rule(b: IptablesBuilder, table: str, chain: str, args: Sequence[str]) -> bool:
    return save_rule(args) in rules_of(b, table, chain)


# ------------------------------------------------------------------- IP masquerade (pkg/ip)

def _masq_rules(ipn, chain: str, comment: str) -> tuple[list[list[str]], list[str]]:
    multicast = "224.0.0.0/4" if ipn.version == 4 else "ff00::/8"
    rules = [["-d", str(ipn), "-j", "ACCEPT", "-m", "comment", "--comment", comment],
             ["!", "-d", multicast, "-j", "MASQUERADE", "-m", "comment", "--comment", comment]]
    entry = ["-s", str(ipn.ip), "-j", chain, "-m", "comment", "--comment", comment]
    return rules, entry


def setup_ip_masq(host, ipn, chain: str, comment: str) -> None:
    """ip.SetupIPMasq (iptables): a CNI-xxxx chain in nat that ACCEPTs the pod's own
    network and MASQUERADEs the rest (not multicast), entered from POSTROUTING for
    packets from the pod's address."""
    b = host.builder(ipn.version)
    ensure_chain(b, "nat", chain)
    rules, entry = _masq_rules(ipn, chain, comment)
    for r in rules:
        append_unique(b, "nat", chain, r)
    append_unique(b, "nat", "POSTROUTING", entry)


def teardown_ip_masq(host, ipn, chain: str, comment: str) -> None:
    """ip.TeardownIPMasq: drop the POSTROUTING jump (also the old `-s NET` form) and the chain."""
    b = host.builder(ipn.version)
    _, entry = _masq_rules(ipn, chain, comment)
    delete_rule(b, "nat", "POSTROUTING", entry)
    delete_rule(b, "nat", "POSTROUTING", ["-s", str(ipn), "-j", chain, "-m", "comment", "--comment", comment])
    delete_chain(b, "nat", chain)


def check_ip_masq(host, ipn, chain: str, comment: str) -> None:
    b = host.builder(ipn.version)
    rules, entry = _masq_rules(ipn, chain, comment)
    for table_chain, r in [(chain, r) for r in rules] + [("POSTROUTING", entry)]:
        if not has_rule(b, "nat", table_chain, r):
            raise fail(f"rule {save_rule(r)} in chain {table_chain} not found in table nat")


def masquerade(call, networks, action) -> None:
    """Apply setup/teardown/check_ip_masq to the container's addresses with the
    chain name and comment ptp and bridge derive from (network name, container id)."""
    chain = format_chain_name(call.name, call.container_id)
    comment = format_comment(call.name, call.container_id)
    for ipn in networks:
        action(call.host, ipn, chain, comment)
