"""host-local IPAM (containernetworking/plugins plugins/ipam/host-local).

Configuration (LoadIPAMConfig): `ipam.ranges` is a list of range sets, each a
list of {subnet, rangeStart, rangeEnd, gateway}; the legacy single range
(`ipam.subnet`...) and the `ipRanges` capability are prepended. One address is
allocated from every range set. Requested addresses come from CNI_ARGS `IP=`,
`args.cni.ips` in the configuration, or the `ips` capability.

Allocation is round-robin over the range set (the algorithm lives in
podnet.control.ipam, shared with the control plane, so the pod IPs the control
plane decides are the ones host-local hands out for the same sequence of pods).

State is kept where the disk backend keeps it, as files in the host namespace
(`Netns.files`): `<dataDir>/<network>/<ip>` holds "<container id>\\r\\n<ifname>",
`last_reserved_ip.<range set index>` the last address handed out, `lock` the
lock file. dataDir defaults to /var/lib/cni/networks.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ...control.ipam import HostLocalRange, check_range_set, range_set_text, round_robin
from ...linux.state import Netns
from ..spec import (DNS, Call, CNIError, Code, IPConfig, Plugin, Result, RouteEntry, fail, version_ge)

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
LAST_IP_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"


class Store:
    """The disk backend (backend/disk/backend.go) over the host's files."""

    def __init__(self, host: Netns, network: str, data_dir: str = ""):
        self.files = host.files
        self.dir = f"{(data_dir or DEFAULT_DATA_DIR).rstrip('/')}/{network}"
        self.files.setdefault(f"{self.dir}/lock", "")

    def _entries(self):
        prefix = self.dir + "/"
        for path in sorted(p for p in self.files if p.startswith(prefix) and "/" not in p[len(prefix):]):
            yield path, path[len(prefix):]

    def reserve(self, container_id: str, ifname: str, ip, range_id: int) -> bool:
        path = f"{self.dir}/{ip}"
        if path in self.files:
            return False
        self.files[path] = container_id.strip() + LINE_BREAK + ifname
        self.files[f"{self.dir}/{LAST_IP_PREFIX}{range_id}"] = str(ip)
        return True

    def last_reserved(self, range_id: int):
        text = self.files.get(f"{self.dir}/{LAST_IP_PREFIX}{range_id}")
        try:
            return ipaddress.ip_address(text.strip()) if text else None
        except ValueError:
            return None

    def _owned(self, container_id: str, ifname: str, legacy: bool = True):
        match = container_id.strip() + LINE_BREAK + ifname
        out = [(p, n) for p, n in self._entries() if self.files[p].strip() == match]
        if not out and legacy:      # files written before ifname was recorded hold only the id
            out = [(p, n) for p, n in self._entries() if self.files[p].strip() == container_id.strip()]
        return out

    def get_by_id(self, container_id: str, ifname: str) -> list:
        ips = []
        for _, name in self._owned(container_id, ifname):
            try:
                ips.append(ipaddress.ip_address(name))
            except ValueError:
                pass
        return ips

    def find_by_id(self, container_id: str, ifname: str) -> bool:
        return bool(self._owned(container_id, ifname))

    def release_by_id(self, container_id: str, ifname: str) -> None:
        for path, _ in self._owned(container_id, ifname):
            del self.files[path]

    def gc(self, valid: set[tuple[str, str]]) -> None:
        """Release every address whose (container id, ifname) is not a valid attachment."""
        for path, name in list(self._entries()):
            if name == "lock" or name.startswith(LAST_IP_PREFIX):
                continue
            cid, _, ifname = self.files[path].partition(LINE_BREAK)
            if (cid.strip(), ifname.strip()) not in valid:
                del self.files[path]


@dataclass
class IPAMConfig:
    name: str
    ranges: list[list[HostLocalRange]]
    routes: list[RouteEntry] = field(default_factory=list)
    data_dir: str = ""
    resolv_conf: str = ""
    requested: list = field(default_factory=list)


def _invalid(msg: str) -> CNIError:
    return CNIError(Code.INVALID_CONFIG, msg)


def _request(value, where: str):
    """ip.IP from JSON/CNI_ARGS: an address, optionally with a prefix."""
    try:
        return ipaddress.ip_interface(str(value)).ip
    except ValueError:
        raise CNIError(Code.DECODING_FAILURE, f"cannot understand ip: {value!r} ({where})") from None


def _range(obj, where: str) -> HostLocalRange:
    if not isinstance(obj, dict) or "subnet" not in obj:
        raise CNIError(Code.DECODING_FAILURE, f"{where}: a range needs a subnet")
    try:
        return HostLocalRange.parse(str(obj["subnet"]), obj.get("gateway"), obj.get("rangeStart"),
                                    obj.get("rangeEnd"))
    except ValueError as e:
        raise _invalid(f"{where}: {e}") from None


def load_ipam_config(call: Call) -> IPAMConfig:
    """allocator.LoadIPAMConfig, with the spec's codes (7 invalid config, 4 bad CNI_ARGS)."""
    ipam = call.conf.get("ipam")
    if not isinstance(ipam, dict):
        raise _invalid("IPAM config missing 'ipam' key")
    rc = call.runtime_config
    requested = []
    env = call.load_args(["IP"])
    if env.get("IP"):
        requested.append(_request(env["IP"], "CNI_ARGS IP"))
    args = call.conf.get("args") or {}
    for ip in ((args.get("cni") or {}).get("ips") or []) if isinstance(args, dict) else []:
        requested.append(_request(ip, "args.cni.ips"))
    for ip in rc.get("ips") or []:
        requested.append(_request(ip, "runtimeConfig.ips"))

    raw_sets = []
    if ipam.get("subnet"):
        raw_sets.append([{k: ipam[k] for k in ("subnet", "rangeStart", "rangeEnd", "gateway") if k in ipam}])
    raw_sets = list(rc.get("ipRanges") or []) + raw_sets + list(ipam.get("ranges") or [])
    if not raw_sets:
        raise _invalid("no IP ranges specified")
    ranges: list[list[HostLocalRange]] = []
    for i, raw in enumerate(raw_sets):
        if not isinstance(raw, list):
            raise CNIError(Code.DECODING_FAILURE, f"range set {i} is not a list")
        rset = [_range(r, f"invalid range set {i}") for r in raw]
        try:
            check_range_set(rset)
        except ValueError as e:
            raise _invalid(f"invalid range set {i}: {e}") from None
        ranges.append(rset)
    families = [rset[0].subnet.version for rset in ranges]
    if (families.count(4) > 1 or families.count(6) > 1) and not version_ge(call.cni_version, "0.3.0"):
        raise _invalid(f"CNI version {call.cni_version} does not support more than 1 address per family")
    for i, a in enumerate(ranges):
        for j in range(i + 1, len(ranges)):
            if any(x.overlaps(y) for x in a for y in ranges[j]):
                raise _invalid(f"range set {i} overlaps with {j}")
    routes = [RouteEntry.from_json(r) for r in ipam.get("routes") or []]
    return IPAMConfig(call.name, ranges, routes, str(ipam.get("dataDir") or ""),
                      str(ipam.get("resolvConf") or ""), requested)


def parse_resolv_conf(host: Netns, path: str) -> DNS:
    """host-local's parseResolvConf: nameserver, domain, search, options."""
    text = host.files.get(path)
    if text is None:
        raise fail(f"open {path}: no such file or directory")
    dns = DNS()
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 2:
            continue
        key, rest = words[0], words[1:]
        if key == "nameserver":
            dns.nameservers.append(rest[0])
        elif key == "domain":
            dns.domain = rest[0]
        elif key == "search":
            dns.search += rest
        elif key == "options":
            dns.options += rest
    return dns


def allocate(store: Store, rset: list[HostLocalRange], range_id: int, container_id: str, ifname: str,
             requested=None) -> IPConfig:
    """IPAllocator.Get: the requested address, or the next free one round-robin."""
    text = range_set_text(rset)
    if requested is not None:
        rng = next((r for r in rset if r.contains(requested)), None)
        if rng is None:
            raise fail(f"{requested} not in range set {text}")
        if requested == rng.gateway:
            raise fail(f"requested ip {requested} is subnet's gateway")
        if not store.reserve(container_id, ifname, requested, range_id):
            raise fail(f"requested IP address {requested} is not available in range set {text}")
        return IPConfig(ipaddress.ip_interface(f"{requested}/{rng.subnet.prefixlen}"), rng.gateway)
    for ip in store.get_by_id(container_id, ifname):
        if any(r.contains(ip) for r in rset):
            raise fail(f"{ip} has been allocated to {container_id}, duplicate allocation is not allowed")
    for ip, rng in round_robin(rset, store.last_reserved(range_id)):
        if store.reserve(container_id, ifname, ip, range_id):
            return IPConfig(ipaddress.ip_interface(f"{ip}/{rng.subnet.prefixlen}"), rng.gateway)
    raise fail(f"no IP addresses available in range set: {text}")


class HostLocal(Plugin):
    type = "host-local"

    def add(self, call: Call) -> Result:
        conf = load_ipam_config(call)
        result = Result(call.cni_version)
        if conf.resolv_conf:
            result.dns = parse_resolv_conf(call.host.ns, conf.resolv_conf)
        store = Store(call.host.ns, conf.name, conf.data_dir)
        requested = list(conf.requested)
        for idx, rset in enumerate(conf.ranges):
            want = next((ip for ip in requested if any(r.contains(ip) for r in rset)), None)
            if want is not None:
                requested.remove(want)
            try:
                result.ips.append(allocate(store, rset, idx, call.container_id, call.ifname, want))
            except CNIError as e:
                store.release_by_id(call.container_id, call.ifname)
                raise fail(f"failed to allocate for range {idx}: {e.msg}") from None
        if requested:
            store.release_by_id(call.container_id, call.ifname)
            raise fail("failed to allocate all requested IPs: " + " ".join(str(ip) for ip in requested))
        result.routes = conf.routes
        return result

    def delete(self, call: Call) -> None:
        conf = load_ipam_config(call)
        Store(call.host.ns, conf.name, conf.data_dir).release_by_id(call.container_id, call.ifname)

    def check(self, call: Call) -> None:
        conf = load_ipam_config(call)
        if not Store(call.host.ns, conf.name, conf.data_dir).find_by_id(call.container_id, call.ifname):
            raise fail(f"host-local: Failed to find address added by container {call.container_id}")

    def gc(self, call: Call) -> None:
        conf = load_ipam_config(call)
        valid = {(a.get("containerID", ""), a.get("ifname", ""))
                 for a in call.conf.get("cni.dev/valid-attachments") or []}
        Store(call.host.ns, conf.name, conf.data_dir).gc(valid)


def reserved_addresses(host: Netns, network: str, data_dir: str = "") -> dict[str, str]:
    """{ip: container id} of a network's host-local store (for tests and tools)."""
    store = Store(host, network, data_dir)
    out = {}
    for path, name in store._entries():
        if name != "lock" and not name.startswith(LAST_IP_PREFIX):
            out[name] = store.files[path].partition(LINE_BREAK)[0]
    return out
