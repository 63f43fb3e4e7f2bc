"""The CNI specification (1.1.0, and the older versions runtimes still speak), on the model.

Two sides of one contract, as in containernetworking/cni:

* the **plugin side** (`pkg/skel`): a plugin is invoked with CNI_COMMAND,
  CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH and its network
  configuration on stdin; it answers with a result, a version report, nothing,
  or an error object. `run_plugin(plugin, env, stdin, host)` is that dispatcher:
  it checks the environment and the configuration exactly as skel does, with the
  spec's error codes, then calls the plugin's add/delete/check/gc/status.
* the **runtime side** (`libcni`): a network configuration list (what lies in
  /etc/cni/net.d) is run plugin by plugin: ADD in order, each plugin receiving
  the previous one's result as `prevResult`; DEL in reverse order and CHECK with
  the cached result of the ADD; capabilities filtered into `runtimeConfig`.
  `invoke(conflist, command, env, state, host)` does that, caching results where
  libcni does (/var/lib/cni/results/<network>-<container>-<ifname> in the host's
  `files`).

In podnet the plugins operate on the dataplane model: CNI_NETNS names a network
namespace of a DataplaneState (a path such as /var/run/netns/cni-1234 names the
namespace `cni-1234`), and the plugin's "host" is the node's root namespace. The
iptables rules a plugin writes go into the node's IptablesBuilder (NodeContext),
or straight into the namespace's iptables-save text for a bare Netns.

Every JSON value crosses the contract as JSON (a plugin sees the bytes it would
see on stdin; results are re-read in the list's version), so version conversion
and chaining are exercised the way a runtime exercises them.

Error codes: where upstream returns an untyped Go error that skel reports as
999 but the spec has a well-known code for the situation (an invalid network
configuration: 7; bad CNI_ARGS: 4; an unknown sandbox: 3; unparsable content: 6),
podnet uses the spec's code. Runtime faults (an exhausted range) stay 999.
"""

from __future__ import annotations

import base64
import enum
import functools
import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Mapping, Optional, Union

from ..errors import PodnetError
from ..linux.iptables_builder import IptablesBuilder
from ..linux.state import DataplaneState, IPAddress, IPInterface, IPNetwork, Netns

# ---------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------

SPEC_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")


@functools.lru_cache(maxsize=64)
def parse_version(text: str) -> tuple[int, int, int]:
    """A spec version as a comparable tuple ("" means 0.1.0, as the version decoder says)."""
    if text == "":
        text = "0.1.0"
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise CNIError(Code.DECODING_FAILURE, f"unable to parse CNI version {text!r}")
    return int(m[1]), int(m[2]), int(m[3])


def version_ge(a: str, b: str) -> bool:
    return parse_version(a) >= parse_version(b)


def versions_from(first: str) -> tuple[str, ...]:
    """version.VersionsStartingFrom: every spec version from `first` on."""
    return tuple(v for v in SPEC_VERSIONS if version_ge(v, first))


def version_json(supported: Iterable[str]) -> dict:
    """The VERSION answer."""
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(supported)}


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------

class Code(enum.IntEnum):
    """The spec's well-known error codes (0-99 reserved; 100+ are plugin-specific)."""
    UNKNOWN = 0
    INCOMPATIBLE_VERSION = 1        # incompatible CNI version
    UNSUPPORTED_FIELD = 2           # unsupported field in network configuration (msg: key and value)
    UNKNOWN_CONTAINER = 3           # container unknown or does not exist (no cleanup needed)
    INVALID_ENV = 4                 # invalid necessary environment variables (msg: their names)
    IO_FAILURE = 5                  # e.g. failed to read the configuration from stdin
    DECODING_FAILURE = 6            # failed to decode content (config, prevResult, version)
    INVALID_CONFIG = 7              # invalid network configuration
    TRY_AGAIN_LATER = 11            # transient condition: retry the operation later
    PLUGIN_NOT_AVAILABLE = 50       # STATUS: the plugin cannot service ADD requests
    LIMITED_CONNECTIVITY = 51       # STATUS: not available, and existing containers may suffer
    INTERNAL = 999                  # skel's code for an untyped plugin error


class CNIError(PodnetError):
    """The spec's error result: {cniVersion, code, msg, details}."""

    def __init__(self, code: int, msg: str, details: str = "", *, context: str = ""):
        self.code = int(code)
        self.msg = msg
        self.details = details
        self.context = context          # e.g. 'plugin type="ptp" failed (add)' (libcni's wrapping)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = self.msg + (f"; {self.details}" if self.details else "")
        return f"{self.context}: {text}" if self.context else text

    def to_json(self, version: str = CURRENT_VERSION) -> dict:
        out: dict[str, Any] = {"cniVersion": version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def with_context(self, context: str) -> "CNIError":
        self.context = context
        self.args = (str(self),)
        return self

    @classmethod
    def from_json(cls, data: Mapping) -> "CNIError":
        return cls(int(data.get("code", 0)), str(data.get("msg", "")), str(data.get("details", "")))


def fail(msg: str, details: str = "") -> CNIError:
    """An untyped plugin error, as skel reports a plain Go error (code 999)."""
    return CNIError(Code.INTERNAL, msg, details)


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------

@dataclass
class Interface:
    name: str
    mac: str = ""
    sandbox: str = ""               # netns path for container interfaces, "" on the host
    mtu: int = 0                    # 1.1.0
    socket_path: str = ""           # 1.1.0
    pci_id: str = ""                # 1.1.0

    def to_json(self, version: str) -> dict:
        out: dict[str, Any] = {"name": self.name}
        if self.mac:
            out["mac"] = self.mac
        new = version_ge(version, "1.1.0")
        if self.mtu and new:
            out["mtu"] = self.mtu
        if self.sandbox:
            out["sandbox"] = self.sandbox
        if self.socket_path and new:
            out["socketPath"] = self.socket_path
        if self.pci_id and new:
            out["pciID"] = self.pci_id
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> "Interface":
        return cls(str(d.get("name", "")), str(d.get("mac", "")), str(d.get("sandbox", "")),
                   int(d.get("mtu", 0) or 0), str(d.get("socketPath", "")), str(d.get("pciID", "")))


@dataclass
class IPConfig:
    address: IPInterface            # ip with the subnet's prefix, e.g. 10.244.1.3/24
    gateway: Optional[IPAddress] = None
    interface: Optional[int] = None  # index into Result.interfaces

    @property
    def version(self) -> int:
        return self.address.version

    def to_json(self, version: str) -> dict:
        out: dict[str, Any] = {}
        if not version_ge(version, "1.0.0"):
            out["version"] = str(self.address.version)
        if self.interface is not None:
            out["interface"] = self.interface
        out["address"] = str(self.address)
        if self.gateway is not None:
            out["gateway"] = str(self.gateway)
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> "IPConfig":
        iface = d.get("interface")
        return cls(_interface(d.get("address")), _ip(d["gateway"]) if d.get("gateway") else None,
                   int(iface) if iface is not None else None)


@dataclass
class RouteEntry:
    """A result route ({dst, gw} plus the 1.1.0 fields)."""
    dst: IPNetwork
    gw: Optional[IPAddress] = None
    mtu: int = 0
    advmss: int = 0
    priority: int = 0
    table: Optional[int] = None
    scope: Optional[int] = None     # netlink scope number: 0 universe, 253 link, 254 host

    def to_json(self, version: str = CURRENT_VERSION) -> dict:
        out: dict[str, Any] = {"dst": str(self.dst)}
        if self.gw is not None:
            out["gw"] = str(self.gw)
        if version_ge(version, "1.1.0"):
            for key, value in (("mtu", self.mtu), ("advmss", self.advmss), ("priority", self.priority)):
                if value:
                    out[key] = value
            if self.table is not None:
                out["table"] = self.table
            if self.scope is not None:
                out["scope"] = self.scope
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> "RouteEntry":
        if not isinstance(d, Mapping) or "dst" not in d:
            raise CNIError(Code.DECODING_FAILURE, f"invalid route {d!r}: no dst")
        try:
            dst = ipaddress.ip_network(str(d["dst"]), strict=False)
        except ValueError:
            raise CNIError(Code.DECODING_FAILURE, f"invalid CIDR address: {d['dst']}") from None
        return cls(dst, _ip(d["gw"]) if d.get("gw") else None, int(d.get("mtu", 0) or 0),
                   int(d.get("advmss", 0) or 0), int(d.get("priority", 0) or 0),
                   d.get("table"), d.get("scope"))


@dataclass
class DNS:
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def is_set(self) -> bool:
        return bool(self.nameservers or self.domain or self.search or self.options)

    def to_json(self) -> dict:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out

    @classmethod
    def from_json(cls, d: Optional[Mapping]) -> "DNS":
        d = d or {}
        return cls(list(d.get("nameservers") or []), str(d.get("domain") or ""),
                   list(d.get("search") or []), list(d.get("options") or []))


@dataclass
class Result:
    """A CNI result, held in the current (1.x) shape; `to_json(version)` writes any version.

    0.3.0-0.4.0 add "version" to each IP; 0.1.0/0.2.0 have no interfaces and one
    `ip4`/`ip6` object each (the first address of the family, its routes)."""
    cni_version: str = CURRENT_VERSION
    interfaces: list[Interface] = field(default_factory=list)
    ips: list[IPConfig] = field(default_factory=list)
    routes: list[RouteEntry] = field(default_factory=list)
    dns: DNS = field(default_factory=DNS)

    def to_json(self, version: Optional[str] = None) -> dict:
        version = version or self.cni_version or CURRENT_VERSION
        if version not in SPEC_VERSIONS:
            raise CNIError(Code.INCOMPATIBLE_VERSION, f"cannot convert result to version {version!r}",
                           f"known versions: {', '.join(SPEC_VERSIONS)}")
        if not version_ge(version, "0.3.0"):
            return self._to_020(version)
        out: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            out["interfaces"] = [i.to_json(version) for i in self.interfaces]
        if self.ips:
            out["ips"] = [ip.to_json(version) for ip in self.ips]
        if self.routes:
            out["routes"] = [r.to_json(version) for r in self.routes]
        out["dns"] = self.dns.to_json()
        return out

    def _to_020(self, version: str) -> dict:
        out: dict[str, Any] = {"cniVersion": version}
        for family, key in ((4, "ip4"), (6, "ip6")):
            ipc = next((i for i in self.ips if i.version == family), None)
            if ipc is None:
                continue
            entry: dict[str, Any] = {"ip": str(ipc.address)}
            if ipc.gateway is not None:
                entry["gateway"] = str(ipc.gateway)
            routes = [r.to_json("0.2.0") for r in self.routes if r.dst.version == family]
            if routes:
                entry["routes"] = routes
            out[key] = entry
        out["dns"] = self.dns.to_json()
        return out

    def dumps(self, version: Optional[str] = None) -> str:
        """What a plugin prints: the result indented as Go's json.MarshalIndent(.., "", "    ")."""
        return json.dumps(self.to_json(version), indent=4)

    @classmethod
    def from_json(cls, data: Union[str, bytes, Mapping], version: Optional[str] = None) -> "Result":
        """Read a result of any spec version (version.NewResult), converting to the current shape."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as e:
                raise CNIError(Code.DECODING_FAILURE, f"failed to decode result: {e}") from None
        if not isinstance(data, Mapping):
            raise CNIError(Code.DECODING_FAILURE, "a result must be a JSON object")
        version = str(data.get("cniVersion") or version or "0.1.0")
        if version not in SPEC_VERSIONS:
            raise CNIError(Code.INCOMPATIBLE_VERSION, f"unsupported CNI result version {version!r}")
        try:
            if not version_ge(version, "0.3.0"):
                ips, routes = [], []
                for key in ("ip4", "ip6"):
                    entry = data.get(key)
                    if entry:
                        ips.append(IPConfig(_interface(entry.get("ip")),
                                            _ip(entry["gateway"]) if entry.get("gateway") else None))
                        routes += [RouteEntry.from_json(r) for r in entry.get("routes") or []]
                return cls(version, [], ips, routes, DNS.from_json(data.get("dns")))
            return cls(version,
                       [Interface.from_json(i) for i in data.get("interfaces") or []],
                       [IPConfig.from_json(i) for i in data.get("ips") or []],
                       [RouteEntry.from_json(r) for r in data.get("routes") or []],
                       DNS.from_json(data.get("dns")))
        except (KeyError, TypeError, AttributeError) as e:
            raise CNIError(Code.DECODING_FAILURE, f"malformed {version} result: {e}") from None

    def with_version(self, version: str) -> "Result":
        return replace(self, cni_version=version)

    def sandbox_ips(self, ifname: str) -> list[IPConfig]:
        """The IPs on the container interface `ifname` (or not tied to an interface)."""
        out = []
        for ipc in self.ips:
            if ipc.interface is not None and 0 <= ipc.interface < len(self.interfaces):
                iface = self.interfaces[ipc.interface]
                if iface.name != ifname or not iface.sandbox:
                    continue
            out.append(ipc)
        return out


def _ip(text) -> IPAddress:
    try:
        return ipaddress.ip_address(str(text))
    except ValueError:
        raise CNIError(Code.DECODING_FAILURE, f"invalid IP address: {text}") from None


def _interface(text) -> IPInterface:
    try:
        return ipaddress.ip_interface(str(text))
    except ValueError:
        raise CNIError(Code.DECODING_FAILURE, f"invalid CIDR address: {text}") from None


# ---------------------------------------------------------------------------
# Network configuration lists (/etc/cni/net.d)
# ---------------------------------------------------------------------------

_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")


def validate_network_name(name: str) -> None:
    """utils.ValidateNetworkName."""
    if not name:
        raise CNIError(Code.INVALID_CONFIG, "missing network name")
    if not _NAME_RE.fullmatch(name):
        raise CNIError(Code.INVALID_CONFIG, "invalid characters found in network name", name)


@dataclass
class NetworkConfigList:
    """A network configuration list, as libcni's NetworkConfFromBytes reads it.

    `plugins` are the plugin configuration objects exactly as written; `type` is
    required in each. Spec 1.1.0's `cniVersions` picks the highest version podnet
    implements. `disableCheck`/`disableGC` accept booleans or "true"/"false"."""
    name: str
    cni_version: str
    plugins: list[dict]
    disable_check: bool = False
    disable_gc: bool = False
    cni_versions: list[str] = field(default_factory=list)
    source: str = ""
    raw: dict = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Union[str, bytes, Mapping], source: str = "") -> "NetworkConfigList":
        """Parse a .conflist (or a single-plugin .conf, "upconverted" as libcni does)."""
        where = f"{source}: " if source else ""

        def invalid(msg: str, details: str = "") -> CNIError:
            return CNIError(Code.INVALID_CONFIG, f"{where}error parsing configuration list: {msg}", details)

        if isinstance(data, (str, bytes)):
            try:
                raw = json.loads(data)
            except json.JSONDecodeError as e:
                raise CNIError(Code.DECODING_FAILURE,
                               f"{where}error parsing configuration list: {e.msg} (line {e.lineno} "
                               f"column {e.colno})") from None
        else:
            raw = json.loads(json.dumps(data))      # a private, JSON-clean copy
        if not isinstance(raw, dict):
            raise CNIError(Code.DECODING_FAILURE, f"{where}error parsing configuration list: not a JSON object")
        if "plugins" not in raw and "type" in raw:   # a .conf: one plugin, upconverted
            raw = {"cniVersion": raw.get("cniVersion", ""), "name": raw.get("name", ""), "plugins": [raw]}
        if "name" not in raw:
            raise invalid("no name")
        name = raw["name"]
        if not isinstance(name, str):
            raise invalid(f"invalid name type {type(name).__name__}")
        try:
            validate_network_name(name)
        except CNIError as e:
            raise invalid(e.msg, e.details) from None
        version = raw.get("cniVersion", "")
        if not isinstance(version, str):
            raise invalid(f"invalid cniVersion type {type(version).__name__}")
        versions = raw.get("cniVersions")
        if versions is not None:
            if not isinstance(versions, list) or not all(isinstance(v, str) for v in versions):
                raise invalid("invalid type for cniVersions")
            known = [v for v in versions + ([version] if version else []) if v in SPEC_VERSIONS]
            if known:
                version = max(known, key=parse_version)

        def read_bool(key: str) -> bool:
            value = raw.get(key, False)
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise invalid(f"invalid value {value!r} for {key}")

        if "plugins" not in raw:
            raise invalid("no 'plugins' key")
        plugins = raw["plugins"]
        if not isinstance(plugins, list):
            raise invalid(f"invalid 'plugins' type {type(plugins).__name__}")
        if not plugins:
            raise invalid("no plugins in list")
        for i, p in enumerate(plugins):
            if not isinstance(p, dict):
                raise CNIError(Code.INVALID_CONFIG, f"{where}failed to parse plugin config {i}: not a JSON object")
            if not p.get("type"):
                raise CNIError(Code.INVALID_CONFIG,
                               f"{where}failed to parse plugin config {i}: error parsing configuration: "
                               "missing 'type'")
            caps = p.get("capabilities", {})
            if not isinstance(caps, dict) or not all(isinstance(v, bool) for v in caps.values()):
                raise CNIError(Code.INVALID_CONFIG, f"{where}plugin config {i}: 'capabilities' must map "
                                                    "capability names to booleans")
        return cls(name, version, plugins, read_bool("disableCheck"), read_bool("disableGC"),
                   list(versions or []), source, raw)

    @property
    def types(self) -> list[str]:
        return [p["type"] for p in self.plugins]

    def to_json(self) -> dict:
        return json.loads(json.dumps(self.raw))

    def dumps(self) -> str:
        return json.dumps(self.raw, indent=2) + "\n"


def plugin_stdin(conflist: NetworkConfigList, plugin_conf: Mapping, prev_result: Optional[Result] = None,
                 capability_args: Optional[Mapping] = None, extra: Optional[Mapping] = None) -> bytes:
    """libcni's buildOneConfig: the plugin's own object with the list's name and
    cniVersion, the previous result, and the runtime's capability arguments
    filtered by the capabilities the plugin declares (into `runtimeConfig`)."""
    conf = json.loads(json.dumps(plugin_conf))
    conf["name"] = conflist.name
    conf["cniVersion"] = conflist.cni_version
    if prev_result is not None:
        conf["prevResult"] = prev_result.to_json(conflist.cni_version)
    runtime = {cap: (capability_args or {})[cap] for cap, on in sorted(plugin_conf.get("capabilities", {}).items())
               if on and cap in (capability_args or {})}
    if runtime:
        conf["runtimeConfig"] = runtime
    if extra:
        conf.update(extra)
    return json.dumps(conf).encode()


# ---------------------------------------------------------------------------
# The environment contract
# ---------------------------------------------------------------------------

# CNI_* variables and the commands that require them (pkg/skel getCmdArgsFromEnv)
REQUIRED_ENV = {
    "CNI_COMMAND": set(COMMANDS),
    "CNI_CONTAINERID": {"ADD", "CHECK", "DEL"},
    "CNI_NETNS": {"ADD", "CHECK"},
    "CNI_IFNAME": {"ADD", "CHECK", "DEL"},
    "CNI_ARGS": set(),
    "CNI_PATH": {"ADD", "CHECK", "DEL", "GC", "STATUS"},
}


def _validate_container_id(cid: str) -> None:
    if not cid:
        raise CNIError(Code.UNKNOWN_CONTAINER, "missing containerID")
    if not _NAME_RE.fullmatch(cid):
        raise CNIError(Code.INVALID_ENV, "invalid characters in containerID", cid)


def _validate_ifname(name: str) -> None:
    """utils.ValidateInterfaceName: 1-15 characters, not . or .., no / : or whitespace."""
    if not name:
        raise CNIError(Code.INVALID_ENV, "interface name is empty")
    if len(name) > 15:
        raise CNIError(Code.INVALID_ENV, "interface name is too long", "interface name should be less than 16 characters")
    if name in (".", ".."):
        raise CNIError(Code.INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in name):
        raise CNIError(Code.INVALID_ENV, "interface name contains / or : or whitespace characters")


def load_args(args: str, known: Iterable[str]) -> dict[str, str]:
    """types.LoadArgs: CNI_ARGS "K1=V1;K2=V2" into the keys a plugin knows.

    Unknown keys are an error unless IgnoreUnknown is true; every pair needs one "=".
    """
    out: dict[str, str] = {}
    if not args:
        return out
    known = set(known) | {"IgnoreUnknown"}
    unknown = []
    for pair in args.split(";"):
        kv = pair.split("=")
        if len(kv) != 2:
            raise CNIError(Code.INVALID_ENV, f"ARGS: invalid pair {pair!r}")
        if kv[0] not in known:
            unknown.append(pair)
            continue
        out[kv[0]] = kv[1]
    ignore = out.get("IgnoreUnknown", "false")
    if ignore.lower() not in ("1", "true", "0", "false"):
        raise CNIError(Code.INVALID_ENV, f"ARGS: error parsing value of pair 'IgnoreUnknown={ignore}': "
                                         f"boolean unmarshal error: invalid input {ignore}")
    if unknown and ignore.lower() not in ("1", "true"):
        raise CNIError(Code.INVALID_ENV, "ARGS: unknown args [" + " ".join(f'"{u}"' for u in unknown) + "]")
    return out


def format_args(pairs: Iterable[tuple[str, str]]) -> str:
    return ";".join(f"{k}={v}" for k, v in pairs)


# ---------------------------------------------------------------------------
# The plugin's world: the host namespace, the sandboxes, the host's netfilter
# ---------------------------------------------------------------------------

class Host:
    """What a plugin process can touch: the node's root namespace (where it runs),
    the sandboxes named by CNI_NETNS, and the host's iptables.

    Built from a NodeContext (rules go to its IptablesBuilders; the dataplane
    build renders them), a bare Netns (rules are merged into and written back to
    its iptables-save text), or a namespace name in `state`."""

    def __init__(self, state: DataplaneState, ns: Netns, iptables: IptablesBuilder,
                 ip6tables: IptablesBuilder, standalone: bool, context: Any = None):
        self.state = state
        # the NodeContext the runtime ran the plugin from (its dataplane and cluster), or None:
        # a plugin whose datastore is cluster-wide (calico-ipam) finds it there
        self.context = context
        self.ns = ns
        self.iptables = iptables
        self.ip6tables = ip6tables
        self.standalone = standalone
        self.touched: set[str] = set()

    @classmethod
    def of(cls, state: DataplaneState, host: Union["Host", Netns, str, Any]) -> "Host":
        if isinstance(host, Host):
            return host
        if isinstance(host, str):
            host = state.netns(host)
        if isinstance(host, Netns):
            v4, v6 = IptablesBuilder(), IptablesBuilder()
            if host.iptables.strip():
                v4.add_restore(host.iptables)
            if host.ip6tables.strip():
                v6.add_restore(host.ip6tables)
            return cls(state, host, v4, v6, standalone=True)
        if hasattr(host, "ns") and hasattr(host, "iptables"):       # a NodeContext
            return cls(state, host.ns, host.iptables, host.ip6tables, standalone=False, context=host)
        raise TypeError(f"not a host: {host!r}")

    def builder(self, family: int) -> IptablesBuilder:
        return self.iptables if family == 4 else self.ip6tables

    def netns(self, path: str) -> Optional[Netns]:
        """The namespace CNI_NETNS names: its basename (/var/run/netns/NAME) or the name itself."""
        if not path:
            return None
        ns = self.state.namespaces.get(path) or self.state.namespaces.get(path.rstrip("/").rsplit("/", 1)[-1])
        if ns is not None:
            self.touched.add(ns.name)
        return ns

    def commit(self) -> None:
        """Make the changes visible: write back iptables text (bare Netns), drop caches."""
        if self.standalone:
            self.ns.iptables = self.iptables.render() if self.iptables.tables else ""
            self.ns.ip6tables = self.ip6tables.render() if self.ip6tables.tables else ""
        self.ns.invalidate()
        for name in self.touched:
            if name in self.state.namespaces:
                self.state.namespaces[name].invalidate()


# ---------------------------------------------------------------------------
# Plugins (the skel side)
# ---------------------------------------------------------------------------

@dataclass
class Call:
    """One plugin invocation: skel's CmdArgs plus the model the plugin acts on."""
    command: str
    container_id: str
    netns: str
    ifname: str
    args: str
    path: str
    stdin: bytes
    conf: dict
    host: Host
    env: dict

    @property
    def name(self) -> str:
        return self.conf.get("name", "")

    @property
    def cni_version(self) -> str:
        return self.conf.get("cniVersion") or "0.1.0"

    @property
    def state(self) -> DataplaneState:
        return self.host.state

    @property
    def runtime_config(self) -> dict:
        rc = self.conf.get("runtimeConfig") or {}
        return rc if isinstance(rc, dict) else {}

    @property
    def ipam(self) -> dict:
        ipam = self.conf.get("ipam") or {}
        return ipam if isinstance(ipam, dict) else {}

    def prev_result(self) -> Optional[Result]:
        """version.ParsePrevResult + NewResultFromResult: prevResult in the current shape."""
        raw = self.conf.get("prevResult")
        if raw is None:
            return None
        try:
            return Result.from_json(raw, self.cni_version)
        except CNIError as e:
            raise CNIError(Code.DECODING_FAILURE, f"could not parse prevResult: {e.msg}", e.details) from None

    def sandbox(self) -> Netns:
        """The container's namespace (ns.GetNS); code 3 when CNI_NETNS names none."""
        ns = self.host.netns(self.netns)
        if ns is None:
            raise CNIError(Code.UNKNOWN_CONTAINER, f"failed to open netns {self.netns!r}: no such network namespace")
        return ns

    def sandbox_if_exists(self) -> Optional[Netns]:
        return self.host.netns(self.netns)

    def load_args(self, known: Iterable[str]) -> dict[str, str]:
        return load_args(self.args, known)

    def delegate(self, plugin_type: str, command: Optional[str] = None,
                 conf: Optional[Mapping] = None) -> Optional[Result]:
        """invoke.DelegateAdd/Del/Check: run another plugin with this call's
        environment and stdin (an IPAM plugin), or with the configuration `conf`
        (a meta plugin such as flannel's delegating to bridge). ADD returns the
        delegate's result in the current shape."""
        from .plugins import plugin_for
        command = command or self.command
        stdin = self.stdin if conf is None else json.dumps(conf).encode()
        out = run_plugin(plugin_for(plugin_type, self.path), {**self.env, "CNI_COMMAND": command}, stdin,
                         self.host)
        return Result.from_json(out) if out is not None and command == "ADD" else None

    def ipam_type(self) -> str:
        t = self.ipam.get("type", "")
        if not t:
            raise CNIError(Code.INVALID_CONFIG, "IPAM config missing 'ipam' key or its 'type'")
        return t

    def with_ipam(self, ipam_type: str, configure: Callable[[Result], Result]) -> Result:
        """ipam.ExecAdd, then `configure(result)`; if that fails the allocation is
        released (ipam.ExecDel), as the main plugins do in a deferred function."""
        result = self.delegate(ipam_type, "ADD")
        try:
            return configure(result)
        except Exception:
            self.delegate(ipam_type, "DEL")
            raise

    @property
    def dns(self) -> DNS:
        """The configuration's own `dns` (types.NetConf.DNS); a plugin uses it instead of
        the IPAM's only when something is set."""
        raw = self.conf.get("dns")
        return DNS.from_json(raw if isinstance(raw, dict) else None)


class Plugin:
    """A CNI plugin: what skel.PluginMainFuncs is given (add, del, check, gc, status)
    and the spec versions it supports. Subclasses set `type` and register it in
    podnet.cni.plugins; ADD returns a Result, the others None or raise CNIError."""

    type = ""
    supported_versions: tuple[str, ...] = SPEC_VERSIONS

    def add(self, call: Call) -> Result:
        raise CNIError(Code.INTERNAL, f"{self.type}: ADD is not implemented")

    def delete(self, call: Call) -> None:
        pass

    def check(self, call: Call) -> None:
        pass

    def gc(self, call: Call) -> None:
        pass

    def status(self, call: Call) -> None:
        pass

    def __repr__(self) -> str:
        return f"<CNI plugin {self.type}>"


def _decode_stdin(stdin: Union[bytes, str]) -> dict:
    try:
        conf = json.loads(stdin)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CNIError(Code.DECODING_FAILURE, f"error unmarshall network config: {e}") from None
    if not isinstance(conf, dict):
        raise CNIError(Code.DECODING_FAILURE, "error unmarshall network config: not a JSON object")
    return conf


def run_plugin(plugin: Plugin, env: Mapping[str, str], stdin: Union[bytes, str],
               host: Union[Host, Netns, Any], state: Optional[DataplaneState] = None) -> Optional[dict]:
    """skel.PluginMain on the model: validate the call, dispatch it, return what the
    plugin prints on stdout (a result or version JSON object; None for DEL, CHECK,
    GC and STATUS). Errors are raised as CNIError (the binary prints them and exits 1).
    """
    if not isinstance(host, Host):
        host = Host.of(state, host)
    cmd = env.get("CNI_COMMAND", "")
    missing = [k for k, cmds in REQUIRED_ENV.items() if not env.get(k) and (cmd in cmds or k == "CNI_COMMAND")]
    if missing:
        raise CNIError(Code.INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    if cmd == "VERSION":
        return version_json(plugin.supported_versions)
    if isinstance(stdin, str):
        stdin = stdin.encode()
    conf = _decode_stdin(stdin)
    validate_network_name(conf.get("name", "") if isinstance(conf.get("name", ""), str) else "")
    if cmd in ("ADD", "DEL", "CHECK"):
        _validate_container_id(env.get("CNI_CONTAINERID", ""))
        _validate_ifname(env.get("CNI_IFNAME", ""))
    version = conf.get("cniVersion", "")
    if not isinstance(version, str):
        raise CNIError(Code.DECODING_FAILURE, "decoding version from network config: cniVersion is not a string")
    version = version or "0.1.0"
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(cmd)
    if minimum and (version not in SPEC_VERSIONS or not version_ge(version, minimum)):
        raise CNIError(Code.INCOMPATIBLE_VERSION, f"config version does not allow {cmd}")
    funcs: dict[str, Callable[[Call], Any]] = {"ADD": plugin.add, "DEL": plugin.delete, "CHECK": plugin.check,
                                               "GC": plugin.gc, "STATUS": plugin.status}
    if cmd not in funcs:
        raise CNIError(Code.INVALID_ENV, f"unknown CNI_COMMAND: {cmd}")
    if version not in plugin.supported_versions:
        raise CNIError(Code.INCOMPATIBLE_VERSION, "incompatible CNI versions",
                       f'config is "{version}", plugin supports [' +
                       " ".join(f'"{v}"' for v in plugin.supported_versions) + "]")
    call = Call(cmd, env.get("CNI_CONTAINERID", ""), env.get("CNI_NETNS", ""), env.get("CNI_IFNAME", ""),
                env.get("CNI_ARGS", ""), env.get("CNI_PATH", ""), stdin, conf, host, dict(env))
    out = funcs[cmd](call)
    if cmd == "ADD":
        if not isinstance(out, Result):
            raise CNIError(Code.INTERNAL, f"{plugin.type}: ADD returned no result")
        return out.to_json(version)
    return None


# ---------------------------------------------------------------------------
# The runtime side (libcni)
# ---------------------------------------------------------------------------

CACHE_DIR = "/var/lib/cni"


def cache_path(network: str, container_id: str, ifname: str) -> str:
    return f"{CACHE_DIR}/results/{network}-{container_id}-{ifname}"


def _cache_add(host: Host, conflist: NetworkConfigList, result: Result, env: Mapping, capability_args) -> None:
    """libcni's cachedInfo (kind cniCacheV1), written after a successful ADD."""
    cid, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
    info: dict[str, Any] = {
        "kind": "cniCacheV1", "containerId": cid,
        "config": base64.b64encode(json.dumps(conflist.raw).encode()).decode(),
        "ifName": ifname, "networkName": conflist.name}
    if env.get("CNI_NETNS"):
        info["netns"] = env["CNI_NETNS"]
    if env.get("CNI_ARGS"):
        info["cniArgs"] = [pair.split("=", 1) for pair in env["CNI_ARGS"].split(";") if "=" in pair]
    if capability_args:
        info["capabilityArgs"] = dict(capability_args)
    info["result"] = result.to_json(conflist.cni_version)
    host.ns.files[cache_path(conflist.name, cid, ifname)] = json.dumps(info)


def cached_result(host: Host, network: str, container_id: str, ifname: str,
                  version: str = "") -> Optional[Result]:
    """The result libcni cached for (network, container, ifname), or None."""
    text = host.ns.files.get(cache_path(network, container_id, ifname))
    if not text:
        return None
    try:
        raw = json.loads(text).get("result")
    except json.JSONDecodeError:
        return None
    return Result.from_json(raw, version) if raw else None


def _cached_network(text: str) -> str:
    try:
        return json.loads(text).get("networkName", "")
    except (json.JSONDecodeError, AttributeError):
        return ""


def _exec(host: Host, plugin_conf: Mapping, command: str, env: Mapping, stdin: bytes, stage: str):
    from .plugins import plugin_for
    kind = plugin_conf["type"]
    try:
        plugin = plugin_for(kind, env.get("CNI_PATH", ""))
        return run_plugin(plugin, {**env, "CNI_COMMAND": command}, stdin, host)
    except CNIError as e:
        raise e.with_context(f'plugin type="{kind}" failed ({stage})') from None


def invoke(conflist: Union[NetworkConfigList, str, bytes, Mapping], command: str, env: Mapping[str, str],
           state: DataplaneState, host: Union[Host, Netns, str, Any], *,
           runtime_config: Optional[Mapping] = None,
           attachments: Optional[Iterable[tuple[str, str]]] = None):
    """Run a network configuration list as a runtime (libcni) does.

    `env` carries CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and CNI_PATH
    (CNI_COMMAND is `command`); `runtime_config` are the capability arguments
    (portMappings, bandwidth, ips, mac, dns...), handed to the plugins that
    declare the capability. `host` is the node: a NodeContext, a Netns or a
    namespace name.

    ADD -> Result (in the list's cniVersion); DEL, CHECK, GC, STATUS -> None;
    VERSION -> the version report of each plugin, in list order. Failures raise
    CNIError with the failing plugin's code; `.context` names the plugin.
    `attachments` (GC only) are the (container id, ifname) pairs still in use.
    """
    if not isinstance(conflist, NetworkConfigList):
        conflist = NetworkConfigList.parse(conflist)
    command = command.upper()
    host = Host.of(state, host)
    env = {k: v for k, v in env.items() if k != "CNI_COMMAND"}
    env.setdefault("CNI_PATH", "/opt/cni/bin")
    caps = dict(runtime_config or {})
    try:
        if command == "ADD":
            result: Optional[Result] = None
            for conf in conflist.plugins:
                stdin = plugin_stdin(conflist, conf, result, caps)
                out = _exec(host, conf, "ADD", env, stdin, "add")
                result = Result.from_json(out, conflist.cni_version).with_version(conflist.cni_version)
            _cache_add(host, conflist, result, env, caps)
            return result
        if command == "DEL":
            prev = None
            if conflist.cni_version in SPEC_VERSIONS and version_ge(conflist.cni_version, "0.4.0"):
                prev = cached_result(host, conflist.name, env.get("CNI_CONTAINERID", ""),
                                     env.get("CNI_IFNAME", ""), conflist.cni_version)
            for conf in reversed(conflist.plugins):
                _exec(host, conf, "DEL", env, plugin_stdin(conflist, conf, prev, caps), "delete")
            host.ns.files.pop(cache_path(conflist.name, env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")),
                              None)
            return None
        if command == "CHECK":
            if conflist.cni_version not in SPEC_VERSIONS or not version_ge(conflist.cni_version, "0.4.0"):
                raise CNIError(Code.INCOMPATIBLE_VERSION,
                               f"configuration version {conflist.cni_version!r} does not support the CHECK command")
            if conflist.disable_check:
                return None
            prev = cached_result(host, conflist.name, env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", ""),
                                 conflist.cni_version)
            for conf in conflist.plugins:
                _exec(host, conf, "CHECK", env, plugin_stdin(conflist, conf, prev, caps), "check")
            return None
        if command in ("GC", "STATUS") and not (conflist.cni_version in SPEC_VERSIONS
                                                and version_ge(conflist.cni_version, "1.1.0")):
            return None             # libcni: GC and STATUS came with 1.1.0; older lists skip them
        if command == "GC":
            if conflist.disable_gc:
                return None
            valid = [{"containerID": c, "ifname": i} for c, i in (attachments or [])]
            for conf in conflist.plugins:
                stdin = plugin_stdin(conflist, conf, None, caps, {"cni.dev/valid-attachments": valid,
                                                                   "cni.dev/attachments": valid})
                _exec(host, conf, "GC", env, stdin, "gc")
            keep = {cache_path(conflist.name, c, i) for c, i in (attachments or [])}
            for path in [p for p in host.ns.files if p.startswith(f"{CACHE_DIR}/results/") and p not in keep]:
                if _cached_network(host.ns.files[path]) == conflist.name:
                    del host.ns.files[path]
            return None
        if command == "STATUS":
            for conf in conflist.plugins:
                _exec(host, conf, "STATUS", env, plugin_stdin(conflist, conf), "status")
            return None
        if command == "VERSION":
            return [_exec(host, conf, "VERSION", env, b"", "version") for conf in conflist.plugins]
        raise CNIError(Code.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    finally:
        host.commit()
