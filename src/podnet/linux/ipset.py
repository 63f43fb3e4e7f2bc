"""ipset: `ipset save` text, and membership as `-m set --match-set NAME src,dst` tests it.

    store = IpsetStore.parse(text, source="node1:ipset")
    store.match_packet("KUBE-CLUSTER-IP", ["dst", "dst"], packet)   # 10.96.0.1,tcp:443 ?
    store.save()                                                    # the text again

A set's type names its dimensions (`hash:ip,port,net` has three); each `--match-set`
flag says whether that dimension is taken from the packet's source or destination.
Dimensions are stored as: ip -> address, net -> network (longest prefix wins, and a
`nomatch` entry there means no match), port -> (protocol, port) with ICMP as
(icmp, type << 8 | code), mark -> int, mac -> lower-case text, set -> a set name.
Entry timeouts are kept in the text but never expire.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from itertools import product
from typing import Optional, Sequence

from ..errors import InputError
from .iptables import PORT_PROTOS, LineError, icmp_type, port_range, split_line
from .netfilter import Packet

# type -> dimension kinds
SET_TYPES: dict[str, tuple[str, ...]] = {
    "hash:ip": ("ip",), "hash:net": ("net",), "hash:mac": ("mac",),
    "hash:ip,port": ("ip", "port"), "hash:net,port": ("net", "port"),
    "hash:ip,mark": ("ip", "mark"), "hash:ip,mac": ("ip", "mac"),
    "hash:net,net": ("net", "net"), "hash:ip,port,ip": ("ip", "port", "ip"),
    "hash:ip,port,net": ("ip", "port", "net"), "hash:net,port,net": ("net", "port", "net"),
    "bitmap:ip": ("ip",), "bitmap:ip,mac": ("ip", "mac"), "bitmap:port": ("portnum",),
    "list:set": ("set",),
}
FAMILY_FREE = ("hash:mac", "bitmap:port", "list:set")
# the types whose ip dimension the kernel masks with `netmask CIDR` / `bitmask ADDR`
# (hash:net,net takes them in ipset(8) too, but the kernel refuses that set type)
NETMASK_TYPES = ("hash:ip", "hash:ip,port", "bitmap:ip")
BITMASK_TYPES = ("hash:ip", "hash:ip,port")
MAX_EXPAND = 65536               # addresses one `add` may expand to (ipset's own limit)
COMMANDS = {"create": "create", "add": "add", "del": "del", "flush": "flush",
            "destroy": "destroy", "-N": "create", "-A": "add", "-D": "del", "-F": "flush",
            "-X": "destroy"}
ADD_OPTIONS = {"timeout": 1, "comment": 1, "packets": 1, "bytes": 1, "skbmark": 1,
               "skbprio": 1, "skbqueue": 1, "nomatch": 0}


@dataclass(slots=True)
class Member:
    """One `add` line."""
    entry: str                   # as written: 10.96.0.1,tcp:443
    options: str = ""            # what followed: timeout 100 comment "x"
    nomatch: bool = False


@dataclass(slots=True)
class IpSet:
    name: str
    type: str
    header: str = ""             # the create options as written (family inet hashsize ...)
    family: Optional[int] = 4    # None for family-free types
    members: dict = field(default_factory=dict)      # key tuple -> Member, in add order
    prefixes: dict = field(default_factory=dict)     # net dimension -> {prefix lengths}
    netmask: Optional[int] = None    # `netmask CIDR`: one element per network of that size
    bitmask: Optional[int] = None    # h->bitmask: what ip dimensions are ANDed with (netmask too)

    @property
    def dims(self) -> tuple[str, ...]:
        return SET_TYPES[self.type]

    # -- entries --------------------------------------------------------------
    def keys_of(self, entry: str) -> list[tuple]:
        """The member keys an entry stands for (ranges and CIDRs in ip dimensions expand)."""
        parts = entry.split(",")
        if len(parts) != len(self.dims):
            raise LineError(f"{self.name}: entry '{entry}' does not fit {self.type}")
        choices = [self._values(kind, part) for kind, part in zip(self.dims, parts)]
        total = 1
        for c in choices:
            total *= len(c)
        if total > MAX_EXPAND:
            raise LineError(f"{self.name}: entry '{entry}' expands to too many elements")
        return [tuple(combo) for combo in product(*choices)]

    def _values(self, kind: str, text: str) -> list:
        if kind == "ip":
            return self._addresses(text)
        if kind == "net":
            net = ipaddress.ip_network(text, strict=False)
            self._check_family(net.version, text)
            return [net]
        if kind == "port":
            proto, _, port = text.rpartition(":")
            proto = proto.lower() or "tcp"
            if proto in ("icmp", "icmpv6"):
                kind_, code = icmp_type(port, proto)
                return [(proto, (kind_ or 0) << 8 | (code or 0))]
            if proto not in PORT_PROTOS:
                raise LineError(f"{self.name}: bad protocol '{proto}' in '{text}'")
            lo, hi = port_range(port, proto, sep="-")
            return [(proto, p) for p in range(lo, hi + 1)]
        if kind == "portnum":
            lo, hi = port_range(text.rpartition(":")[2], sep="-")
            return list(range(lo, hi + 1))
        if kind == "mark":
            return [int(text, 0)]
        if kind == "mac":
            return [text.lower()]
        return [text]                                   # set

    def _addresses(self, text: str) -> list:
        if "-" in text:
            first, last = (ipaddress.ip_address(t) for t in text.split("-", 1))
            nets = list(ipaddress.summarize_address_range(first, last))
        elif "/" in text:
            nets = [ipaddress.ip_network(text, strict=False)]
        else:
            nets = [ipaddress.ip_network(ipaddress.ip_address(text))]
        self._check_family(nets[0].version, text)
        if self.netmask is not None:
            # hash_ip4_uadt / bitmap_ip_uadt: the networks of the netmask's size the entry covers
            m = self.netmask
            return list(dict.fromkeys(
                sub.network_address for net in nets
                for sub in (net.subnets(new_prefix=m) if net.prefixlen < m else [net.supernet(new_prefix=m)])))
        addrs = [a for net in nets for a in (net if net.num_addresses > 1 else [net[0]])]
        if self.bitmask is not None:
            addrs = list(dict.fromkeys(self.masked(a) for a in addrs))
        return addrs

    def masked(self, addr):
        """An address as the set stores it: ANDed with the bitmask (netmask) when there is one."""
        if self.bitmask is None or addr.version != self.family:
            return addr
        return type(addr)(int(addr) & self.bitmask)

    def _check_family(self, version: int, text: str) -> None:
        if self.family is not None and version != self.family:
            raise LineError(f"{self.name}: '{text}' is not an IPv{self.family} address")

    def add(self, entry: str, options: str = "", nomatch: bool = False) -> None:
        member = Member(entry, options, nomatch)
        for key in self.keys_of(entry):
            self.members[key] = member
            for i, kind in enumerate(self.dims):
                if kind == "net":
                    self.prefixes.setdefault(i, set()).add(key[i].prefixlen)

    def delete(self, entry: str) -> None:
        for key in self.keys_of(entry):
            self.members.pop(key, None)

    # -- lookups --------------------------------------------------------------
    def lookup(self, values: Sequence) -> Optional[Member]:
        """The member for per-dimension values, net dimensions given as addresses
        (longest prefix first, outer dimension first, as the kernel tries them)."""
        nets = [i for i, kind in enumerate(self.dims) if kind == "net"]
        if not nets:
            return self.members.get(tuple(values))
        orders = [sorted(self.prefixes.get(i, ()), reverse=True) for i in nets]
        key = list(values)
        for lengths in product(*orders):
            for i, length in zip(nets, lengths):
                key[i] = ipaddress.ip_network((values[i], length), strict=False)
            member = self.members.get(tuple(key))
            if member is not None:
                return member
        return None

    def packet_values(self, flags: Sequence[str], packet: Packet) -> Optional[list]:
        """The value of each dimension for `packet`, or None when it has none."""
        values = []
        for kind, flag in zip(self.dims, flags):
            src = flag == "src"
            if kind == "ip":
                values.append(self.masked(packet.src if src else packet.dst))
            elif kind == "net":
                values.append(packet.src if src else packet.dst)
            elif kind in ("port", "portnum"):
                port = _packet_port(packet, src)
                # bitmap:port takes TCP and UDP ports only (ip_set_get_ip_port)
                if port is None or (kind == "portnum" and port[0] not in ("tcp", "udp")):
                    return None
                values.append(port if kind == "port" else port[1])
            elif kind == "mac":
                mac = packet.src_mac if src else packet.dst_mac
                if mac is None:
                    return None
                values.append(mac.lower())
            elif kind == "mark":
                values.append(packet.mark)
        return values


def _packet_port(packet: Packet, src: bool) -> Optional[tuple[str, int]]:
    if packet.proto in ("icmp", "icmpv6"):
        if packet.icmp_type is None:
            return None
        return packet.proto, packet.icmp_type << 8 | (packet.icmp_code or 0)
    port = packet.sport if src else packet.dport
    if packet.proto not in PORT_PROTOS or port is None:
        return None
    return packet.proto, port


def _masks(ipset: IpSet, words: list[str]) -> None:
    """The `netmask CIDR` / `bitmask ADDR` create options, where the kernel honours them."""
    bits = 128 if ipset.family == 6 else 32
    for option, types in (("netmask", NETMASK_TYPES), ("bitmask", BITMASK_TYPES)):
        if option not in words:
            continue
        if ipset.type not in types:
            raise LineError(f"create {ipset.name}: {ipset.type} takes no {option}")
        value = words[words.index(option) + 1] if words.index(option) + 1 < len(words) else ""
        if option == "netmask":
            if not value.isdigit() or not 1 <= int(value) <= bits:
                raise LineError(f"create {ipset.name}: netmask must be 1-{bits}, not '{value}'")
            ipset.netmask = int(value)
            ipset.bitmask = ((1 << bits) - 1) ^ ((1 << (bits - ipset.netmask)) - 1)
        else:
            try:
                mask = ipaddress.ip_address(value)
            except ValueError:
                raise LineError(f"create {ipset.name}: bad bitmask '{value}'") from None
            if mask.version != ipset.family:
                raise LineError(f"create {ipset.name}: bitmask {value} is not IPv{ipset.family}")
            ipset.bitmask = int(mask)
    if ipset.netmask is not None and "bitmask" in words:
        raise LineError(f"create {ipset.name}: netmask and bitmask exclude each other")


class IpsetStore:
    """The ipsets of one namespace (implements netfilter.IpsetLookup)."""

    def __init__(self):
        self.sets: dict[str, IpSet] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.sets

    # -- text -----------------------------------------------------------------
    @classmethod
    def parse(cls, text: str, source: str = "ipset save") -> "IpsetStore":
        store = cls()
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#") or line == "COMMIT":
                continue
            try:
                store.command(*split_line(line))
            except (LineError, ValueError) as e:
                raise InputError(str(e), file=source, field=f"line {number}") from None
        return store

    def command(self, words: list[str], raws: list[str]) -> None:
        """One `ipset restore` line: create / add / del / flush / destroy."""
        cmd = COMMANDS.get(words[0], words[0])
        if cmd not in COMMANDS.values():
            raise LineError(f"unknown command '{words[0]}'")
        if len(words) < 2:
            raise LineError(f"{cmd} needs a set name")
        name = words[1]
        if cmd == "create":
            if len(words) < 3:
                raise LineError(f"create {name}: missing type")
            self.create(name, words[2], " ".join(raws[3:]))
            return
        if cmd == "destroy":
            self.sets.pop(name, None)
            return
        ipset = self.get(name)
        if cmd == "flush":
            ipset.members.clear()
            ipset.prefixes.clear()
        elif len(words) < 3:
            raise LineError(f"{cmd} {name}: missing entry")
        elif cmd == "del":
            ipset.delete(words[2])
        else:
            options = words[3:]
            i = 0
            while i < len(options):
                arity = ADD_OPTIONS.get(options[i])
                if arity is None or i + 1 + arity > len(options):
                    raise LineError(f"add {name}: bad option '{options[i]}'")
                i += 1 + arity
            self._check_member(ipset, words[2])
            ipset.add(words[2], " ".join(raws[3:]), nomatch="nomatch" in options)

    def _check_member(self, ipset: IpSet, entry: str) -> None:
        """list:set members must be existing sets that are not lists themselves."""
        if ipset.type == "list:set":
            member = self.get(entry)
            if member.type == "list:set":
                raise LineError(f"add {ipset.name}: '{entry}' is a list:set itself")

    def create(self, name: str, type_: str, header: str = "") -> IpSet:
        if type_ not in SET_TYPES:
            raise LineError(f"create {name}: unsupported set type '{type_}'")
        if name in self.sets:
            raise LineError(f"create {name}: set already exists")
        family = None if type_ in FAMILY_FREE else (6 if "inet6" in header.split() else 4)
        ipset = IpSet(name, type_, header, family)
        _masks(ipset, header.split())
        self.sets[name] = ipset
        return ipset

    def get(self, name: str) -> IpSet:
        ipset = self.sets.get(name)
        if ipset is None:
            raise LineError(f"set '{name}' does not exist")
        return ipset

    def save(self) -> str:
        lines = []
        for ipset in self.sets.values():
            lines.append(" ".join(w for w in ("create", ipset.name, ipset.type, ipset.header) if w))
            seen = set()
            for member in ipset.members.values():
                if id(member) in seen:
                    continue                     # one add line expanded to many keys
                seen.add(id(member))
                lines.append(" ".join(w for w in ("add", ipset.name, member.entry,
                                                  member.options) if w))
        return "\n".join(lines) + "\n" if lines else ""

    # -- IpsetLookup ------------------------------------------------------------
    def match_packet(self, name: str, flags: Sequence[str], packet: Packet, *,
                     return_nomatch: bool = False) -> bool:
        """`-m set --match-set NAME flags`: a missing set, too few flags or another
        family never match; with return_nomatch only `nomatch` entries do."""
        ipset = self.sets.get(name)
        if ipset is None or len(flags) < len(ipset.dims):
            return False
        if ipset.type == "list:set":
            return any(self.match_packet(member[0], flags, packet, return_nomatch=return_nomatch)
                       for member in ipset.members)
        if ipset.family is not None and ipset.family != packet.family:
            return False
        values = ipset.packet_values(flags, packet)
        if values is None:
            return False
        member = ipset.lookup(values)
        if member is None:
            return False
        return member.nomatch == return_nomatch

    def test(self, name: str, entry: str) -> bool:
        """`ipset test NAME ENTRY`: host addresses in net dimensions are looked up by
        longest prefix; anything else must be a member as written."""
        try:
            ipset = self.get(name)
            keys = ipset.keys_of(entry)
        except (LineError, ValueError) as e:
            raise InputError(str(e), obj=f"ipset {name}", field=entry) from None
        for key in keys:
            nets = [v for kind, v in zip(ipset.dims, key) if kind == "net"]
            if all(net.prefixlen == net.max_prefixlen for net in nets):
                member = ipset.lookup([v.network_address if kind == "net" else v
                                       for kind, v in zip(ipset.dims, key)])
            else:
                member = ipset.members.get(key)
            if member is None or member.nomatch:
                return False
        return True

    def add(self, name: str, entry: str, options: str = "") -> None:
        """`ipset add NAME ENTRY [options]`."""
        try:
            ipset = self.get(name)
            self._check_member(ipset, entry)
            ipset.add(entry, options, nomatch="nomatch" in options.split())
        except (LineError, ValueError) as e:
            raise InputError(str(e), obj=f"ipset {name}", field=entry) from None
