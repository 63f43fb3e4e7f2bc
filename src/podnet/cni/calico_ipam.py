"""calico-ipam: Calico's block IPAM (libcalico-go lib/ipam), for the control plane and the CNI.

Calico hands out pod addresses from IP pools (here: one pool per cluster pod
subnet) cut into blocks (blockSize 26 for IPv4, 122 for IPv6: 64 addresses).
A block is claimed with an affinity to one node ("host:<node>"); that node's
pods get addresses from its affine blocks, and each node's BGP speaker
advertises its blocks, so peers need one route per block instead of one per pod.

    AutoAssign(handle, host):  the first free address of the host's affine blocks
        (in block order); when they are full, the next unclaimed block of the pool
        is claimed for the host; when the pool has no unclaimed block left, an
        address is borrowed from another host's block (strictAffinity false).
    Inside a block: the first ordinal of the block's unallocated list
        (allocationBlock.autoAssign); a released ordinal goes to the end of the
        list, so a freed address is not handed out again straight away.

Deterministic where Calico is not: Calico starts its search for an unclaimed
block at a pseudo-random block seeded with the hostname (randomBlockGenerator);
podnet takes the blocks in pool order, so the first node to need one gets the
pool's first block (10.244.0.0/26), the next 10.244.0.64/26, and so on.

Recorded pod IPs (a dump's truth) are assigned first: the block holding a
recorded address is claimed for the pod's node unless another node holds it
(then the address is "borrowed", as Calico allows). Addresses outside every
pool are kept as given. The tunnel address of a node (IPIP / VXLAN modes) is
the first address calico-node assigns on that node, before any pod, with the
handle Calico uses ("ipip-tunnel-addr-<node>"); a Node's
projectcalico.org/IPv4IPIPTunnelAddr (...VXLANTunnelAddr) annotation is honoured.

The same allocator is the control plane's pod IPAM (`CalicoIPAM`, picked by
podnet.control.ipam.ipam_for for the calico CNI) and the datastore behind the
`calico-ipam` CNI plugin: each dataplane gets a copy of the cluster's
allocations (Calico keeps them in the Kubernetes API, not on the node), so CNI
ADD hands a pod the address the control plane decided under the same handle
("k8s-pod-network.<container id>").
"""

from __future__ import annotations

import copy
import ipaddress
import weakref
from dataclasses import dataclass, field
from typing import Optional

from ..api.objects import Node, Pod
from ..control.ipam import PodIPAM
from ..dataplane.topology import container_id
from ..errors import AllocationError, InputError
from .spec import Call, CNIError, Code, IPConfig, Plugin, Result, fail

NETWORK_NAME = "k8s-pod-network"            # the name of Calico's network configuration list
DEFAULT_BLOCK_SIZE = {4: 26, 6: 122}
TUNNEL_HANDLES = {"ipip": "ipip-tunnel-addr", "vxlan": "vxlan-tunnel-addr"}
TUNNEL_ANNOTATIONS = {("ipip", 4): "projectcalico.org/IPv4IPIPTunnelAddr",
                      ("vxlan", 4): "projectcalico.org/IPv4VXLANTunnelAddr",
                      ("vxlan", 6): "projectcalico.org/IPv6VXLANTunnelAddr"}


def pod_handle(pod: Pod) -> str:
    """utils.GetHandleID: "<network name>.<container id>"."""
    return f"{NETWORK_NAME}.{container_id(pod)}"


def tunnel_kind(mode: str) -> Optional[str]:
    """The encapsulation of a calico mode: ipip, vxlan or None (plain BGP)."""
    if mode.startswith("ipip"):
        return "ipip"
    if mode.startswith("vxlan"):
        return "vxlan"
    return None


@dataclass
class Block:
    """model.AllocationBlock: ordinals 0..n-1 of the block's CIDR."""
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    affinity: Optional[str] = None                       # "host:<node>"
    allocations: dict[int, str] = field(default_factory=dict)   # ordinal -> handle
    unallocated: list[int] = field(default_factory=list)

    @classmethod
    def new(cls, cidr, host: Optional[str]) -> "Block":
        return cls(cidr, f"host:{host}" if host else None, {}, list(range(cidr.num_addresses)))

    @property
    def host(self) -> Optional[str]:
        return self.affinity[len("host:"):] if self.affinity and self.affinity.startswith("host:") else None

    def ip(self, ordinal: int):
        return self.cidr.network_address + ordinal

    def ordinal(self, ip) -> int:
        return int(ip) - int(self.cidr.network_address)

    def take(self, handle: str):
        """autoAssign(1): the first ordinal of the unallocated list, or None when full."""
        if not self.unallocated:
            return None
        ordinal = self.unallocated.pop(0)
        self.allocations[ordinal] = handle
        return self.ip(ordinal)

    def assign(self, ip, handle: str) -> Optional[str]:
        """assign(): a given address; returns the handle already holding it, if another."""
        ordinal = self.ordinal(ip)
        holder = self.allocations.get(ordinal)
        if holder is not None:
            return holder if holder != handle else None
        self.allocations[ordinal] = handle
        self.unallocated.remove(ordinal)
        return None

    def release(self, ip) -> None:
        ordinal = self.ordinal(ip)
        if self.allocations.pop(ordinal, None) is not None:
            self.unallocated.append(ordinal)

    def in_use(self) -> list:
        return [self.ip(o) for o in sorted(self.allocations)]


@dataclass
class Pool:
    """An IPPool: its CIDR and block size (ipipMode / vxlanMode are the CNI mode)."""
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    block_size: int

    def block_of(self, ip):
        """The block CIDR an address falls in."""
        return ipaddress.ip_network(f"{ip}/{self.block_size}", strict=False)


class CalicoIPAM(PodIPAM):
    """Block IPAM over the cluster's pools: the control plane's pod IPAM for calico."""

    name = "calico-ipam"

    def __init__(self, cfg, pools: Optional[list] = None):
        super().__init__(cfg)
        self.pools: list[Pool] = []
        options = dict(getattr(cfg.cni, "options", {}) or {}) if cfg is not None else {}
        for cidr in pools if pools is not None else cfg.pod_subnets:
            key = "blockSize" if cidr.version == 4 else "blockSizeIPv6"
            size = options.get(key, DEFAULT_BLOCK_SIZE[cidr.version])
            if not isinstance(size, int) or isinstance(size, bool) or not cidr.prefixlen <= size <= cidr.max_prefixlen:
                raise InputError(f"IP pool {cidr}: block size {size!r} must be a prefix length between "
                                 f"{cidr.prefixlen} and {cidr.max_prefixlen}", obj="PodnetConfig",
                                 field=f"cni.options.{key}")
            self.pools.append(Pool(cidr, size))
        self.blocks: dict = {}                       # block CIDR -> Block
        self.handles: dict[str, list] = {}           # handle -> addresses, in assignment order
        self.outside: dict = {}                      # address outside every pool -> handle
        self.mode = getattr(cfg.cni, "mode", "") if cfg is not None else ""
        self.started: set[str] = set()
        self._cursor: dict[int, int] = {}            # pool index -> first block index maybe unclaimed

    # ------------------------------------------------------------ queries
    def pool_for(self, ip) -> Optional[Pool]:
        return next((p for p in self.pools if p.cidr.version == ip.version and ip in p.cidr), None)

    def affine_blocks(self, host: str, family: Optional[int] = None) -> list[Block]:
        """The blocks with affinity to `host`, in address order."""
        return sorted((b for b in self.blocks.values() if b.host == host
                       and (family is None or b.cidr.version == family)),
                      key=lambda b: (b.cidr.version, int(b.cidr.network_address)))

    def ips_of(self, handle: str) -> list:
        return list(self.handles.get(handle, []))

    # ------------------------------------------------------------ the allocator
    def claim(self, host: str, family: int) -> Optional[Block]:
        """Claim the first unclaimed block of the family's pools for `host`."""
        for i, pool in enumerate(self.pools):
            if pool.cidr.version != family:
                continue
            step = 1 << (pool.cidr.max_prefixlen - pool.block_size)
            count = 1 << (pool.block_size - pool.cidr.prefixlen)
            idx = self._cursor.get(i, 0)
            while idx < count:
                cidr = ipaddress.ip_network((int(pool.cidr.network_address) + idx * step, pool.block_size))
                idx += 1
                if cidr not in self.blocks:
                    self._cursor[i] = idx
                    block = Block.new(cidr, host)
                    self.blocks[cidr] = block
                    return block
            self._cursor[i] = idx
        return None

    def auto_assign(self, handle: str, host: str, family: int):
        """ipam.AutoAssign for one address of `family`, or None when the cluster has no such pool."""
        if not any(p.cidr.version == family for p in self.pools):
            return None
        ip = None
        for block in self.affine_blocks(host, family):
            ip = block.take(handle)
            if ip is not None:
                break
        if ip is None:
            block = self.claim(host, family)
            ip = block.take(handle) if block is not None else None
        if ip is None:                               # no block left to claim: borrow
            for block in sorted((b for b in self.blocks.values() if b.cidr.version == family),
                                key=lambda b: int(b.cidr.network_address)):
                ip = block.take(handle)
                if ip is not None:
                    break
        if ip is None:
            pools = ", ".join(str(p.cidr) for p in self.pools if p.cidr.version == family)
            raise AllocationError(f"no free IPv{family} address in the Calico IP pool(s) {pools}")
        self.handles.setdefault(handle, []).append(ip)
        return ip

    def assign_ip(self, ip, handle: str, host: Optional[str]) -> None:
        """ipam.AssignIP: a given address under `handle`; its block is claimed for `host`
        when nobody holds it yet. Raises AllocationError naming the current holder."""
        pool = self.pool_for(ip)
        if pool is None:
            holder = self.outside.get(ip)
            if holder is not None and holder != handle:
                raise AllocationError(f"address {ip} is already assigned to {holder}")
            self.outside[ip] = handle
        else:
            cidr = pool.block_of(ip)
            block = self.blocks.get(cidr)
            if block is None:
                block = self.blocks[cidr] = Block.new(cidr, host)
            holder = block.assign(ip, handle)
            if holder is not None:
                raise AllocationError(f"address {ip} is already assigned to {holder}")
        if ip not in self.handles.setdefault(handle, []):
            self.handles[handle].append(ip)

    def release_handle(self, handle: str) -> list:
        """ipam.ReleaseByHandle: free every address of `handle`; returns them."""
        ips = self.handles.pop(handle, [])
        for ip in ips:
            pool = self.pool_for(ip)
            if pool is None:
                self.outside.pop(ip, None)
                continue
            block = self.blocks.get(pool.block_of(ip))
            if block is not None:
                block.release(ip)
        return ips

    def tunnel_address(self, node: Node, family: int = 4, kind: Optional[str] = None):
        """The node's IPIP/VXLAN tunnel address (calico-node's allocateip), assigned on first use."""
        kind = kind or tunnel_kind(self.mode)
        if kind is None or (kind == "ipip" and family != 4):
            return None
        handle = f"{TUNNEL_HANDLES[kind]}-{node.name}" if family == 4 else f"vxlan-v6-tunnel-addr-{node.name}"
        have = self.handles.get(handle)
        if have:
            return have[0]
        annotation = node.meta.annotations.get(TUNNEL_ANNOTATIONS.get((kind, family), ""), "")
        if annotation:
            try:
                ip = ipaddress.ip_address(annotation.split("/")[0])
            except ValueError:
                raise InputError(f"not an IP address: {annotation!r}", obj=f"Node {node.name}",
                                 field=f"metadata.annotations[{TUNNEL_ANNOTATIONS[(kind, family)]}]") from None
            self.assign_ip(ip, handle, node.name)
            return ip
        try:
            return self.auto_assign(handle, node.name, family)
        except AllocationError as e:
            raise AllocationError(f"no address left for the {kind} tunnel: {e.message}",
                                  obj=f"Node {node.name}") from None

    def start(self, node: Node) -> None:
        """calico-node starting on `node`: in IPIP/VXLAN modes it assigns the tunnel
        address before any pod of the node gets one."""
        if node.name in self.started:
            return
        self.started.add(node.name)
        for family in sorted({p.cidr.version for p in self.pools}):
            self.tunnel_address(node, family)

    # ------------------------------------------------------------ PodIPAM
    def reserve(self, pod: Pod, node: Optional[Node]) -> None:
        for ip in pod.pod_ips:
            try:
                self.assign_ip(ip, pod_handle(pod), node.name if node else None)
            except AllocationError as e:
                raise AllocationError(e.message, obj=f"Pod {pod.key}", field="status.podIPs") from None

    def allocate(self, pod: Pod, node: Node) -> list:
        self.start(node)
        ips = []
        for family in self.cfg.families:
            try:
                ip = self.auto_assign(pod_handle(pod), node.name, family)
            except AllocationError as e:
                self.release_handle(pod_handle(pod))
                raise AllocationError(e.message, obj=f"Pod {pod.key}", field="status.podIPs") from None
            if ip is not None:
                ips.append(ip)
        return ips

    def release(self, pod: Pod, node: Optional[Node]) -> None:
        self.release_handle(pod_handle(pod))


# ------------------------------------------------------------------------ the datastore of a dataplane

_DATASTORES: dict[int, CalicoIPAM] = {}
_PINNED: dict[int, object] = {}


def datastore_for(owner, seed: Optional[CalicoIPAM] = None) -> Optional[CalicoIPAM]:
    """The Calico datastore the plugins of one dataplane share (`owner`: the Dataplane,
    or a DataplaneState for plugins run outside one).

    With `seed` and none yet, a copy of `seed` (the control plane's allocations)
    becomes the datastore, so CNI DEL/ADD in one dataplane leave the cluster alone."""
    key = id(owner)
    ds = _DATASTORES.get(key)
    if ds is None and seed is not None:
        ds = _DATASTORES[key] = copy.deepcopy(seed)
        try:
            weakref.finalize(owner, _DATASTORES.pop, key, None)
        except TypeError:               # not weak-referenceable (a slotted state): kept alive with
            _PINNED[key] = owner        # its datastore, so its id cannot be reused by another
    return ds


def dataplane_datastore(dp) -> CalicoIPAM:
    """The datastore of a cluster dataplane, seeded with the control plane's allocations."""
    ds = datastore_for(dp)
    if ds is None:
        ipam = dp.cluster.ipam
        if not isinstance(ipam, CalicoIPAM):        # a cluster reconciled with another CNI's IPAM
            ipam = CalicoIPAM(dp.cluster.config)
            for pod in dp.cluster.pods:
                if pod.pod_ips and not pod.host_network:
                    ipam.reserve(pod, dp.cluster.find_node(pod.node_name))
        ds = datastore_for(dp, ipam)
    return ds


# ------------------------------------------------------------------------ the CNI plugin

def _requested(call: Call) -> list:
    """Addresses asked for: CNI_ARGS IP= (a comma-separated list) and args.cni.ips."""
    out = []
    env = call.load_args(["IP"])
    words = [w for w in (env.get("IP") or "").split(",") if w.strip()]
    args = call.conf.get("args") or {}
    if isinstance(args, dict):
        words += [str(w) for w in ((args.get("cni") or {}).get("ips") or [])]
    for w in words:
        try:
            out.append(ipaddress.ip_interface(w.strip()).ip)
        except ValueError:
            raise CNIError(Code.DECODING_FAILURE, f"cannot understand ip: {w!r}") from None
    return out


def _host_name(call: Call) -> str:
    return str(call.conf.get("nodename") or call.host.ns.node or call.host.ns.name)


def _owner(call: Call):
    ctx = call.host.context
    return getattr(ctx, "dp", None) or call.state


def _datastore(call: Call) -> CalicoIPAM:
    dp = getattr(call.host.context, "dp", None)
    if dp is not None:
        return dataplane_datastore(dp)
    ds = datastore_for(call.state)
    if ds is not None:
        return ds
    # a plugin run outside a cluster dataplane: a datastore from the configuration's pools
    ipam = call.ipam
    pools = []
    for key in ("ipv4_pools", "ipv6_pools"):
        for text in ipam.get(key) or []:
            try:
                pools.append(ipaddress.ip_network(str(text)))
            except ValueError:
                raise CNIError(Code.INVALID_CONFIG, f"ipam.{key}: not a CIDR: {text!r}") from None
    if not pools:
        raise CNIError(Code.INVALID_CONFIG, "calico-ipam: no Calico datastore for this dataplane and no "
                                            "ipam.ipv4_pools/ipv6_pools in the configuration")
    return datastore_for(call.state, CalicoIPAM(None, pools))


class CalicoIPAMPlugin(Plugin):
    """The calico-ipam binary: addresses by handle from the cluster-wide datastore."""

    type = "calico-ipam"

    def add(self, call: Call) -> Result:
        ds = _datastore(call)
        handle = f"{call.name or NETWORK_NAME}.{call.container_id}"
        host = _host_name(call)
        ips = ds.ips_of(handle)
        if not ips:
            try:
                requested = _requested(call)
                if requested:
                    for ip in requested:
                        ds.assign_ip(ip, handle, host)
                else:
                    families = {p.cidr.version for p in ds.pools}
                    if str(call.ipam.get("assign_ipv4", "true")).lower() == "false":
                        families.discard(4)
                    if str(call.ipam.get("assign_ipv6", "true" if 6 in families else "false")).lower() != "true":
                        families.discard(6)
                    for family in sorted(families):
                        ds.auto_assign(handle, host, family)
            except AllocationError as e:
                ds.release_handle(handle)
                raise fail(f"calico-ipam: {e.message}") from None
            ips = ds.ips_of(handle)
        if not ips:
            raise fail("calico-ipam: no IP pool to assign from")
        result = Result(call.cni_version)
        for ip in sorted(ips, key=lambda a: a.version):
            result.ips.append(IPConfig(ipaddress.ip_interface(f"{ip}/{ip.max_prefixlen}")))
        return result

    def delete(self, call: Call) -> None:
        ds = datastore_for(_owner(call))
        if ds is not None:
            ds.release_handle(f"{call.name or NETWORK_NAME}.{call.container_id}")

    def check(self, call: Call) -> None:
        ds = datastore_for(_owner(call))
        if ds is None or not ds.ips_of(f"{call.name or NETWORK_NAME}.{call.container_id}"):
            raise fail(f"calico-ipam: no addresses assigned to container {call.container_id}")
