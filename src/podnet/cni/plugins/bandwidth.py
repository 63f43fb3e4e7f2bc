"""bandwidth (containernetworking/plugins plugins/meta/bandwidth, the tbf version).

A chained plugin shaping the container's traffic on the host side of its veth:

* ingress (traffic to the container): a tbf qdisc as root of the host veth;
* egress (traffic from the container): an ifb device "bwp" + hash of (network,
  container id), the host veth's ingress redirected to it (u32 + mirred), a tbf
  qdisc as root of the ifb.

Rates and bursts are in bits (`ingressRate`/`ingressBurst`/`egressRate`/
`egressBurst` in the configuration, or the `bandwidth` capability that the
runtime fills from the kubernetes.io/ingress-bandwidth annotations); a rate
needs its burst. Requires spec 0.3.0+.

The simulator does not shape. The qdiscs are recorded as facts, in the host
namespace's `files` under /run/podnet/tc/<dev> (not a real path), holding what
`tc qdisc show dev <dev>` and `tc filter show dev <dev> ingress` would print.
The ifb device is a Link of kind "ifb" listed in the result's interfaces.
"""

from __future__ import annotations

from ...linux.state import Link, Netns
from ..spec import Call, CNIError, Code, Interface, Plugin, Result, fail, versions_from
from .netfilter import format_hash_with_prefix
from .netlink import TC_FACTS, delete_link

LATENCY_MS = 25
TICK_IN_USEC = 15.625       # /proc/net/psched on current kernels (netlink.TickInUsec)
MAX_BURST_BITS = 8 * 0xFFFFFFFF


def ifb_name(network: str, container_id: str) -> str:
    """getIfbDeviceName: "bwp" + hash, 15 characters."""
    return format_hash_with_prefix(15, "bwp", network + container_id)


def tc_path(dev: str) -> str:
    return f"{TC_FACTS}/{dev}"


def _rate_text(bits_per_s: int) -> str:
    """tc's sprint_rate: bit/Kbit/Mbit/Gbit, 1000-based."""
    rate, unit = float(bits_per_s), ""
    for next_unit in ("K", "M", "G", "T"):
        if rate < 1000 or (rate % 1000 and rate < 1000 * 1000):
            break
        rate, unit = rate / 1000, next_unit
    return f"{rate:.0f}{unit}bit"


def _size_text(size: int) -> str:
    """tc's sprint_size: b/Kb/Mb, 1024-based."""
    if size >= 1024 * 1024 and abs(1024 * 1024 * round(size / (1024 * 1024)) - size) < 1024:
        return f"{round(size / (1024 * 1024))}Mb"
    if size >= 1024 and abs(1024 * round(size / 1024) - size) < 16:
        return f"{round(size / 1024)}Kb"
    return f"{size}b"


def tbf(rate_bits: int, burst_bits: int) -> dict:
    """createTBF's numbers: bytes/s, the burst as a buffer in ticks, the queue limit."""
    rate, burst = rate_bits // 8, burst_bits // 8
    buffer = int(burst * 1_000_000 / rate * TICK_IN_USEC)
    limit = int(rate * LATENCY_MS / 1000) + burst
    return {"rate": rate, "burst": burst, "buffer": buffer, "limit": limit}


def _tbf_line(rate_bits: int, burst_bits: int) -> str:
    t = tbf(rate_bits, burst_bits)
    return f"qdisc tbf 1: root refcnt 2 rate {_rate_text(rate_bits)} burst {_size_text(t['burst'])} lat {LATENCY_MS}ms"


def _validate(rate: int, burst: int) -> None:
    if burst == 0 and rate != 0:
        raise CNIError(Code.INVALID_CONFIG, "if rate is set, burst must also be set")
    if rate == 0 and burst != 0:
        raise CNIError(Code.INVALID_CONFIG, "if burst is set, rate must also be set")
    if burst // 8 >= 0xFFFFFFFF:
        raise CNIError(Code.INVALID_CONFIG, "burst cannot be more than 4GB")


def bandwidth_of(call: Call) -> dict:
    """The configuration's own entry, else the runtime's `bandwidth` capability."""
    keys = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")
    bw = {k: int(call.conf[k]) for k in keys if call.conf.get(k) is not None}
    if not bw:
        bw = {k: int(v) for k, v in (call.runtime_config.get("bandwidth") or {}).items() if k in keys}
    bw = {k: bw.get(k, 0) for k in keys}
    _validate(bw["ingressRate"], bw["ingressBurst"])
    _validate(bw["egressRate"], bw["egressBurst"])
    return bw


def host_interface(call: Call, result: Result, sandbox: Netns) -> Link:
    """getHostInterface: the host-side peer of CNI_IFNAME, listed in the result."""
    cont = sandbox.links.get(call.ifname)
    peer = call.state.veth_peer(sandbox, cont) if cont is not None else None
    if peer is None:
        raise fail(f"container interface {call.ifname} has no veth peer")
    if peer[0] is not call.host.ns:
        raise fail(f"veth peer with index {peer[1].ifindex} is not in host ns")
    if not any(i.name == peer[1].name and not i.sandbox for i in result.interfaces):
        raise fail("no veth peer of container interface found in host ns")
    return peer[1]


class Bandwidth(Plugin):
    type = "bandwidth"
    supported_versions = versions_from("0.3.0")

    def add(self, call: Call) -> Result:
        bw = bandwidth_of(call)
        prev = call.prev_result()
        if not any(bw.values()):
            if prev is None:
                raise fail("must be called as chained plugin")
            return prev
        if prev is None:
            raise fail("must be called as chained plugin")
        sandbox = call.sandbox()
        veth = host_interface(call, prev, sandbox)
        host = call.host.ns
        if bw["ingressRate"] and bw["ingressBurst"]:
            host.files[tc_path(veth.name)] = _tbf_line(bw["ingressRate"], bw["ingressBurst"]) + "\n"
        if bw["egressRate"] and bw["egressBurst"]:
            name = ifb_name(call.name, call.container_id)
            if name in host.links:
                raise fail(f"adding link: file exists ({name})")
            ifb = host.add_link(Link(name, "ifb", mtu=veth.mtu))
            prev.interfaces.append(Interface(ifb.name, ifb.mac or ""))
            text = host.files.get(tc_path(veth.name), "")
            host.files[tc_path(veth.name)] = text + (
                "qdisc ingress ffff: parent ffff:fff1 ----------------\n"
                f"filter parent ffff: protocol all pref 1 u32 match u32 0 0 flowid 1:1 "
                f"action order 1: mirred (Egress Redirect to device {name}) stolen\n")
            host.files[tc_path(name)] = _tbf_line(bw["egressRate"], bw["egressBurst"]) + "\n"
            host.invalidate()
        return prev

    def delete(self, call: Call) -> None:
        bandwidth_of(call)
        delete_link(call.state, call.host.ns, ifb_name(call.name, call.container_id))

    def check(self, call: Call) -> None:
        bw = bandwidth_of(call)
        prev = call.prev_result()
        if prev is None:
            raise fail("must be called as a chained plugin")
        veth = host_interface(call, prev, call.sandbox())
        host = call.host.ns
        wanted = []
        if bw["ingressRate"] and bw["ingressBurst"]:
            wanted.append((veth.name, _tbf_line(bw["ingressRate"], bw["ingressBurst"])))
        if bw["egressRate"] and bw["egressBurst"]:
            name = ifb_name(call.name, call.container_id)
            if name not in host.links:
                raise fail(f"get ifb device: Link not found ({name})")
            wanted.append((name, _tbf_line(bw["egressRate"], bw["egressBurst"])))
        for dev, line in wanted:
            if line not in host.files.get(tc_path(dev), ""):
                raise fail(f"Failed to find qdisc: expected `{line}` on {dev}")


def qdiscs(ns: Netns, dev: str) -> str:
    """The recorded `tc qdisc show dev DEV` lines (and the ingress filter)."""
    return ns.files.get(tc_path(dev), "")
