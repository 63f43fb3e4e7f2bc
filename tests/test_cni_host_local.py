"""host-local IPAM: allocation order, exhaustion, state files, requests, config errors,
and agreement with the control plane's allocator (one algorithm, podnet.control.ipam)."""

import ipaddress
import json

import pytest

from podnet.cni.plugins import plugin_for
from podnet.cni.plugins.host_local import reserved_addresses
from podnet.cni.spec import Code, run_plugin
from podnet.control.ipam import HostLocalRange

from test_cni_plugins import errors, world

net = ipaddress.ip_network
DIR = "/var/lib/cni/networks/hl"


def ipam(**fields):
    return {"type": "host-local", **fields}


def call(host, state, command, cid, ipam_conf, *, cni_args="", version="1.0.0", **conf):
    stdin = json.dumps({"cniVersion": version, "name": "hl", "type": "host-local", "ipam": ipam_conf, **conf})
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/x", "CNI_IFNAME": "eth0",
           "CNI_ARGS": cni_args, "CNI_PATH": "/opt/cni/bin"}
    return run_plugin(plugin_for("host-local"), env, stdin, host, state)


def add(host, state, cid, ipam_conf, **kw):
    out = call(host, state, "ADD", cid, ipam_conf, **kw)
    return [i["address"] for i in out["ips"]]


def test_sequence_round_robin_and_state_files():
    state, host = world()
    conf = ipam(subnet="10.0.0.0/24", routes=[{"dst": "0.0.0.0/0"}])
    out = call(host, state, "ADD", "c1", conf)
    assert out == {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1"}],
                   "routes": [{"dst": "0.0.0.0/0"}], "dns": {}}
    assert [add(host, state, c, conf) for c in ("c2", "c3")] == [["10.0.0.3/24"], ["10.0.0.4/24"]]
    assert host.files[f"{DIR}/10.0.0.2"] == "c1\r\neth0"
    assert host.files[f"{DIR}/last_reserved_ip.0"] == "10.0.0.4"
    assert f"{DIR}/lock" in host.files
    call(host, state, "DEL", "c1", conf)
    assert f"{DIR}/10.0.0.2" not in host.files
    # round-robin: the freed .2 is not reused before the range has been walked through
    assert add(host, state, "c4", conf) == ["10.0.0.5/24"]
    assert reserved_addresses(host, "hl") == {"10.0.0.3": "c2", "10.0.0.4": "c3", "10.0.0.5": "c4"}


def test_exhaustion_and_wrap_around():
    state, host = world()
    conf = ipam(subnet="10.0.0.0/29")                   # .1 is the gateway, .7 broadcast: .2-.6
    assert [add(host, state, f"c{i}", conf)[0] for i in range(5)] == [f"10.0.0.{i}/29" for i in range(2, 7)]
    e = errors(call, host, state, "ADD", "c5", conf)
    assert e.code == Code.INTERNAL
    assert e.msg == "failed to allocate for range 0: no IP addresses available in range set: 10.0.0.1-10.0.0.6"
    call(host, state, "DEL", "c1", conf)               # frees .3
    assert add(host, state, "c6", conf) == ["10.0.0.3/29"]     # after .6 comes .1 (gateway) and .2 (taken)


def test_range_bounds_gateway_and_range_sets():
    state, host = world()
    conf = ipam(ranges=[[{"subnet": "10.0.0.0/24", "rangeStart": "10.0.0.100", "rangeEnd": "10.0.0.101",
                          "gateway": "10.0.0.254"}, {"subnet": "10.0.1.0/30"}],
                        [{"subnet": "fd00::/120"}]])
    out = call(host, state, "ADD", "a", conf)
    assert out["ips"] == [{"address": "10.0.0.100/24", "gateway": "10.0.0.254"},
                          {"address": "fd00::2/120", "gateway": "fd00::1"}]
    assert add(host, state, "b", conf) == ["10.0.0.101/24", "fd00::3/120"]
    assert add(host, state, "c", conf) == ["10.0.1.2/30", "fd00::4/120"]   # the set's next range
    assert host.files[f"{DIR}/last_reserved_ip.1"] == "fd00::4"
    e = errors(call, host, state, "ADD", "d", conf)
    assert e.msg.endswith("no IP addresses available in range set: 10.0.0.100-10.0.0.101,10.0.1.1-10.0.1.2")
    # a failed ADD releases what it had taken in earlier range sets
    assert "d" not in reserved_addresses(host, "hl").values()


def test_requested_addresses():
    state, host = world()
    conf = ipam(subnet="10.0.0.0/24")
    assert add(host, state, "a", conf, cni_args="IgnoreUnknown=1;K8S_POD_NAME=p;IP=10.0.0.50") == ["10.0.0.50/24"]
    assert add(host, state, "b", conf, args={"cni": {"ips": ["10.0.0.60"]}}) == ["10.0.0.60/24"]
    assert add(host, state, "c", conf, runtimeConfig={"ips": ["10.0.0.70/24"]}) == ["10.0.0.70/24"]
    assert add(host, state, "d", conf) == ["10.0.0.71/24"]       # round-robin continues after the last one
    assert errors(call, host, state, "ADD", "e", conf, cni_args="IP=10.0.0.1").msg.endswith(
        "requested ip 10.0.0.1 is subnet's gateway")
    assert errors(call, host, state, "ADD", "f", conf, cni_args="IP=10.0.0.50").msg.endswith(
        "requested IP address 10.0.0.50 is not available in range set 10.0.0.1-10.0.0.254")
    assert errors(call, host, state, "ADD", "g", conf, cni_args="IP=192.168.9.9").msg == \
        "failed to allocate all requested IPs: 192.168.9.9"
    assert errors(call, host, state, "ADD", "h", conf, cni_args="K8S_POD_NAME=p").code == Code.INVALID_ENV
    assert errors(call, host, state, "ADD", "a", conf).msg.endswith(
        "10.0.0.50 has been allocated to a, duplicate allocation is not allowed")


@pytest.mark.parametrize("conf, message", [
    (None, "IPAM config missing 'ipam' key"),
    (ipam(), "no IP ranges specified"),
    (ipam(subnet="10.0.0.0/31"), "invalid range set 0: Network 10.0.0.0/31 too small to allocate from"),
    (ipam(subnet="10.0.0.5/24"), "Network has host bits set. For a subnet mask of length 24 the network "
                                 "address is 10.0.0.0"),
    (ipam(subnet="10.0.0.0/24", gateway="10.9.0.1"), "gateway 10.9.0.1 not in network 10.0.0.0/24"),
    (ipam(subnet="10.0.0.0/24", rangeEnd="10.0.1.5"), "10.0.1.5 not in network 10.0.0.0/24"),
    (ipam(ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]), "range set 0 overlaps with 1"),
    (ipam(ranges=[[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]), "mixed address families"),
])
def test_invalid_configuration_is_code_7(conf, message):
    state, host = world()
    e = errors(call, host, state, "ADD", "a", conf)
    assert e.code == Code.INVALID_CONFIG and message in e.msg


def test_old_spec_versions_allow_one_address_per_family():
    state, host = world()
    conf = ipam(ranges=[[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.1.0.0/24"}]])
    assert errors(call, host, state, "ADD", "a", conf, version="0.2.0").code == Code.INVALID_CONFIG
    out = call(host, state, "ADD", "a", ipam(subnet="10.0.0.0/24", routes=[{"dst": "0.0.0.0/0"}]), version="0.2.0")
    assert out == {"cniVersion": "0.2.0", "ip4": {"ip": "10.0.0.2/24", "gateway": "10.0.0.1",
                                                  "routes": [{"dst": "0.0.0.0/0"}]}, "dns": {}}


def test_check_gc_and_resolv_conf():
    state, host = world()
    host.files["/etc/cni/resolv.conf"] = "nameserver 10.96.0.10\nsearch svc.cluster.local cluster.local\n" \
                                         "options ndots:5\n"
    conf = ipam(subnet="10.0.0.0/24", resolvConf="/etc/cni/resolv.conf")
    out = call(host, state, "ADD", "a", conf, version="1.1.0")
    assert out["dns"] == {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local", "cluster.local"],
                          "options": ["ndots:5"]}
    call(host, state, "ADD", "b", conf, version="1.1.0")
    call(host, state, "CHECK", "a", conf, version="1.1.0")
    assert "Failed to find address" in errors(call, host, state, "CHECK", "zz", conf, version="1.1.0").msg
    call(host, state, "GC", "", conf, version="1.1.0",
         **{"cni.dev/valid-attachments": [{"containerID": "b", "ifname": "eth0"}]})
    assert reserved_addresses(host, "hl") == {"10.0.0.3": "b"}


def test_plugin_and_control_plane_agree():
    """One algorithm: the control plane's HostLocalRange and the plugin hand out the same sequence."""
    state, host = world()
    rng = HostLocalRange(net("10.244.1.0/29"))
    conf = ipam(ranges=[[{"subnet": "10.244.1.0/29"}]])
    plan, got = [], []
    for step in ["a", "b", "c", "-a", "d", "e", "-c", "f"]:
        if step.startswith("-"):
            rng.release(next(k for k, v in rng.allocated.items() if v == step[1:]))
            call(host, state, "DEL", step[1:], conf)
            continue
        plan.append(str(rng.next_free(step)))
        got.append(add(host, state, step, conf)[0].split("/")[0])
    assert got == plan == ["10.244.1.2", "10.244.1.3", "10.244.1.4", "10.244.1.5", "10.244.1.6", "10.244.1.2"]


def test_range_checks_follow_canonicalize():
    assert str(HostLocalRange.parse("10.0.0.0/24", range_end="10.0.0.255")) == "10.0.0.1-10.0.0.255"
    with pytest.raises(ValueError, match="10.0.0.9 is in network 10.0.0.0/24 but after end 10.0.0.5"):
        HostLocalRange.parse("10.0.0.0/24", range_start="10.0.0.9", range_end="10.0.0.5")
