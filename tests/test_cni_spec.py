"""The CNI contract (issue #4): configuration lists, the plugin environment, error
codes, results across versions, and libcni's chaining of ADD/DEL/CHECK/GC/VERSION."""

import ipaddress
import json

import pytest

from podnet.cni.plugins import register
from podnet.cni.spec import (DNS, CNIError, Code, Interface, IPConfig, NetworkConfigList, Plugin, Result,
                             RouteEntry, SPEC_VERSIONS, cache_path, invoke, load_args, run_plugin)
from podnet.linux.state import DataplaneState, Link, Netns

ip = ipaddress.ip_address
iface = ipaddress.ip_interface
net = ipaddress.ip_network


def world():
    state = DataplaneState()
    host = state.add_netns(Netns("host"))
    host.add_link(Link("lo", "loopback")).add_address("127.0.0.1/8", "host")
    sandbox = state.add_netns(Netns("cni-1", kind="pod"))
    sandbox.add_link(Link("lo", "loopback", up=False))
    return state, host, sandbox


ENV = {"CNI_CONTAINERID": "c0ffee", "CNI_NETNS": "/var/run/netns/cni-1", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def code_of(fn, *args, **kwargs) -> CNIError:
    with pytest.raises(CNIError) as e:
        fn(*args, **kwargs)
    return e.value


# ------------------------------------------------------------------ recording test plugins

CALLS: list[tuple] = []


class Recorder(Plugin):
    """Appends an IP 10.9.0.N/24 per position in the chain and records what it saw."""
    type = "test-recorder"

    def add(self, call):
        CALLS.append(("ADD", call.conf.get("tag"), call.conf))
        prev = call.prev_result() or Result(call.cni_version)
        prev.interfaces.append(Interface(f"if-{call.conf.get('tag')}", sandbox=call.netns))
        prev.ips.append(IPConfig(iface(f"10.9.0.{len(prev.ips) + 2}/24"), ip("10.9.0.1"), len(prev.interfaces) - 1))
        return prev

    def delete(self, call):
        CALLS.append(("DEL", call.conf.get("tag"), call.conf))

    def check(self, call):
        CALLS.append(("CHECK", call.conf.get("tag"), call.conf))
        if call.prev_result() is None:
            raise CNIError(Code.INTERNAL, "Required prevResult missing")

    def gc(self, call):
        CALLS.append(("GC", call.conf.get("tag"), call.conf))


class Old(Plugin):
    type = "test-old"
    supported_versions = ("0.1.0", "0.2.0")

    def add(self, call):
        return Result(call.cni_version, ips=[IPConfig(iface("10.8.0.5/16"), ip("10.8.0.1"))])


register("test-recorder", Recorder)
register("test-old", Old)


def chain(version="1.0.0", **extra):
    return {"cniVersion": version, "name": "chain", **extra, "plugins": [
        {"type": "test-recorder", "tag": "a"},
        {"type": "test-recorder", "tag": "b", "capabilities": {"portMappings": True}}]}


@pytest.fixture(autouse=True)
def _clear():
    CALLS.clear()


# ------------------------------------------------------------------ configuration lists

def test_parse_kindnet_conflist():
    text = json.dumps({"cniVersion": "0.3.1", "name": "kindnet", "plugins": [
        {"type": "ptp", "ipMasq": False, "ipam": {"type": "host-local"}},
        {"type": "portmap", "capabilities": {"portMappings": True}}]})
    cl = NetworkConfigList.parse(text, source="10-kindnet.conflist")
    assert (cl.name, cl.cni_version, cl.types, cl.disable_check) == ("kindnet", "0.3.1", ["ptp", "portmap"], False)


@pytest.mark.parametrize("data, code, message", [
    ('{"name": "x", "plugins": [', Code.DECODING_FAILURE, "error parsing configuration list"),
    ({"cniVersion": "1.0.0", "plugins": [{"type": "ptp"}]}, Code.INVALID_CONFIG, "no name"),
    ({"name": "bad name!", "plugins": [{"type": "ptp"}]}, Code.INVALID_CONFIG, "invalid characters"),
    ({"name": "x"}, Code.INVALID_CONFIG, "no 'plugins' key"),
    ({"name": "x", "plugins": []}, Code.INVALID_CONFIG, "no plugins in list"),
    ({"name": "x", "plugins": {"type": "ptp"}}, Code.INVALID_CONFIG, "invalid 'plugins' type"),
    ({"name": "x", "plugins": [{"ipMasq": True}]}, Code.INVALID_CONFIG, "missing 'type'"),
    ({"name": "x", "disableCheck": "maybe", "plugins": [{"type": "ptp"}]}, Code.INVALID_CONFIG, "disableCheck"),
    ({"name": "x", "plugins": [{"type": "portmap", "capabilities": {"portMappings": "yes"}}]},
     Code.INVALID_CONFIG, "capabilities"),
])
def test_parse_errors_carry_spec_codes(data, code, message):
    e = code_of(NetworkConfigList.parse, data, source="net.d/10-x.conflist")
    assert e.code == code and message in e.msg
    assert "net.d/10-x.conflist" in str(e)


def test_parse_cni_versions_disable_check_and_single_conf():
    cl = NetworkConfigList.parse({"cniVersion": "0.4.0", "cniVersions": ["1.0.0", "1.1.0", "9.0.0"],
                                  "name": "n", "disableCheck": "TRUE", "plugins": [{"type": "ptp"}]})
    assert cl.cni_version == "1.1.0" and cl.disable_check is True
    conf = NetworkConfigList.parse('{"cniVersion": "0.3.1", "name": "single", "type": "bridge"}')
    assert conf.types == ["bridge"] and conf.name == "single"


def test_load_args():
    assert load_args("IP=10.0.0.5", ["IP"]) == {"IP": "10.0.0.5"}
    assert load_args("IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.0.0.5", ["IP"])["IP"] == "10.0.0.5"
    e = code_of(load_args, "K8S_POD_NAME=x", ["IP"])
    assert e.code == Code.INVALID_ENV and e.msg == 'ARGS: unknown args ["K8S_POD_NAME=x"]'
    # the guide's example ends with ';': types.LoadArgs rejects the empty pair
    assert code_of(load_args, "K8S_POD_NAMESPACE=foo;K8S_POD_NAME=bar;", []).msg == "ARGS: invalid pair ''"


# ------------------------------------------------------------------ the plugin environment (skel)

def ptp_conf(version="1.0.0"):
    return json.dumps({"cniVersion": version, "name": "net", "type": "ptp",
                       "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}})


def run(env, stdin=None, plugin="ptp"):
    from podnet.cni.plugins import plugin_for
    state, host, _ = world()
    return run_plugin(plugin_for(plugin), env, ptp_conf() if stdin is None else stdin, host, state)


@pytest.mark.parametrize("env, message", [
    ({}, "required env variables [CNI_COMMAND] missing"),
    ({"CNI_COMMAND": "ADD"}, "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"),
    ({"CNI_COMMAND": "DEL"}, "required env variables [CNI_CONTAINERID,CNI_IFNAME,CNI_PATH] missing"),
    ({**ENV, "CNI_COMMAND": "CHECK", "CNI_NETNS": ""}, "required env variables [CNI_NETNS] missing"),
    ({**ENV, "CNI_COMMAND": "DESTROY"}, "unknown CNI_COMMAND: DESTROY"),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "-bad id"}, "invalid characters in containerID"),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_IFNAME": "a-very-long-ifname"}, "interface name is too long"),
    ({**ENV, "CNI_COMMAND": "ADD", "CNI_IFNAME": "eth/0"}, "interface name contains / or : or whitespace"),
])
def test_missing_or_invalid_env_is_code_4(env, message):
    e = code_of(run, env)
    assert e.code == Code.INVALID_ENV and message in str(e)


def test_del_does_not_need_netns_and_is_idempotent():
    assert run({**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}) is None
    assert run({**ENV, "CNI_COMMAND": "DEL"}) is None


def test_decode_version_and_config_errors():
    add = {**ENV, "CNI_COMMAND": "ADD"}
    assert code_of(run, add, "{not json").code == Code.DECODING_FAILURE
    assert code_of(run, add, "[1, 2]").code == Code.DECODING_FAILURE
    e = code_of(run, add, json.dumps({"cniVersion": "1.0.0", "type": "ptp"}))
    assert (e.code, e.msg) == (Code.INVALID_CONFIG, "missing network name")
    e = code_of(run, add, ptp_conf("9.9.9"))
    assert (e.code, e.msg) == (Code.INCOMPATIBLE_VERSION, "incompatible CNI versions")
    assert e.details == ('config is "9.9.9", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" "0.4.0" '
                         '"1.0.0" "1.1.0"]')
    e = code_of(run, {**ENV, "CNI_COMMAND": "CHECK"}, ptp_conf("0.3.1"))
    assert (e.code, e.msg) == (Code.INCOMPATIBLE_VERSION, "config version does not allow CHECK")
    e = code_of(run, {**ENV, "CNI_COMMAND": "GC"}, ptp_conf("1.0.0"))
    assert (e.code, e.msg) == (Code.INCOMPATIBLE_VERSION, "config version does not allow GC")
    # bandwidth speaks 0.3.0 and later only
    e = code_of(run, add, json.dumps({"cniVersion": "0.2.0", "name": "n", "type": "bandwidth"}), "bandwidth")
    assert e.code == Code.INCOMPATIBLE_VERSION


def test_unknown_sandbox_is_code_3():
    e = code_of(run, {**ENV, "CNI_COMMAND": "ADD", "CNI_NETNS": "/var/run/netns/nope"})
    assert e.code == Code.UNKNOWN_CONTAINER and "nope" in e.msg


def test_version_output():
    out = run({"CNI_COMMAND": "VERSION"}, stdin="")
    assert out == {"cniVersion": "1.1.0", "supportedVersions": list(SPEC_VERSIONS)}
    out = run({"CNI_COMMAND": "VERSION"}, stdin="", plugin="bandwidth")
    assert out["supportedVersions"] == ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def test_error_object():
    e = CNIError(Code.INVALID_CONFIG, "Invalid Configuration", "Network 192.168.0.0/31 too small to allocate from.")
    assert e.to_json("1.1.0") == {"cniVersion": "1.1.0", "code": 7, "msg": "Invalid Configuration",
                                  "details": "Network 192.168.0.0/31 too small to allocate from."}
    assert CNIError(Code.TRY_AGAIN_LATER, "busy").to_json("1.0.0") == {"cniVersion": "1.0.0", "code": 11,
                                                                       "msg": "busy"}


# ------------------------------------------------------------------ results across versions

def sample_result():
    return Result("1.0.0",
                  [Interface("veth1", "aa:bb:cc:dd:ee:01"), Interface("eth0", "aa:bb:cc:dd:ee:02", "/var/run/netns/x")],
                  [IPConfig(iface("10.1.0.5/24"), ip("10.1.0.1"), 1), IPConfig(iface("fd00::5/64"), ip("fd00::1"), 1)],
                  [RouteEntry(net("0.0.0.0/0")), RouteEntry(net("::/0"), ip("fd00::1"), priority=100)],
                  DNS(["10.96.0.10"], search=["svc.cluster.local"]))


def test_result_json_by_version():
    r = sample_result()
    v1 = r.to_json("1.0.0")
    assert v1["ips"][0] == {"interface": 1, "address": "10.1.0.5/24", "gateway": "10.1.0.1"}
    assert v1["interfaces"][1] == {"name": "eth0", "mac": "aa:bb:cc:dd:ee:02", "sandbox": "/var/run/netns/x"}
    assert v1["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0", "gw": "fd00::1"}]     # priority is 1.1.0
    assert r.to_json("1.1.0")["routes"][1] == {"dst": "::/0", "gw": "fd00::1", "priority": 100}
    v031 = r.to_json("0.3.1")
    assert v031["ips"][1] == {"version": "6", "interface": 1, "address": "fd00::5/64", "gateway": "fd00::1"}
    v02 = r.to_json("0.2.0")
    assert v02 == {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.0.5/24", "gateway": "10.1.0.1",
                                                  "routes": [{"dst": "0.0.0.0/0"}]},
                   "ip6": {"ip": "fd00::5/64", "gateway": "fd00::1", "routes": [{"dst": "::/0", "gw": "fd00::1"}]},
                   "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]}}
    back = Result.from_json(v02)
    assert [str(i.address) for i in back.ips] == ["10.1.0.5/24", "fd00::5/64"] and back.interfaces == []
    again = Result.from_json(json.dumps(v031))
    assert again.to_json("1.0.0") == v1 | {"cniVersion": "1.0.0"}
    assert json.loads(r.dumps("1.0.0")) == v1 and r.dumps().startswith('{\n    "cniVersion"')


def test_malformed_result_is_code_6():
    assert code_of(Result.from_json, '{"cniVersion": "1.0.0", "ips": [{"address": "nope"}]}').code == \
        Code.DECODING_FAILURE


# ------------------------------------------------------------------ libcni: chaining

def test_add_chains_prev_result_and_filters_capabilities():
    state, host, _ = world()
    result = invoke(chain(), "ADD", ENV, state, host,
                    runtime_config={"portMappings": [{"hostPort": 80, "containerPort": 8080}], "bandwidth": {}})
    (_, _, first), (_, _, second) = [c for c in CALLS if c[0] == "ADD"]
    # every plugin gets the list's name and version; only the second one the previous result
    assert first["name"] == second["name"] == "chain" and first["cniVersion"] == "1.0.0"
    assert "prevResult" not in first and "runtimeConfig" not in first
    assert second["prevResult"]["ips"] == [{"interface": 0, "address": "10.9.0.2/24", "gateway": "10.9.0.1"}]
    assert second["runtimeConfig"] == {"portMappings": [{"hostPort": 80, "containerPort": 8080}]}
    assert [str(i.address) for i in result.ips] == ["10.9.0.2/24", "10.9.0.3/24"]
    cached = json.loads(host.files[cache_path("chain", "c0ffee", "eth0")])
    assert cached["kind"] == "cniCacheV1" and cached["result"]["ips"][1]["address"] == "10.9.0.3/24"


def test_del_runs_in_reverse_with_the_cached_result_and_is_idempotent():
    state, host, _ = world()
    invoke(chain(), "ADD", ENV, state, host)
    CALLS.clear()
    invoke(chain(), "DEL", ENV, state, host)
    assert [(c[0], c[1]) for c in CALLS] == [("DEL", "b"), ("DEL", "a")]
    assert all(len(c[2]["prevResult"]["ips"]) == 2 for c in CALLS)
    assert cache_path("chain", "c0ffee", "eth0") not in host.files
    CALLS.clear()
    invoke(chain(), "DEL", ENV, state, host)          # again: no cache, no prevResult, no error
    assert [(c[0], "prevResult" in c[2]) for c in CALLS] == [("DEL", False), ("DEL", False)]
    CALLS.clear()
    invoke(chain("0.3.1"), "DEL", ENV, state, host)   # before 0.4.0 DEL gets no prevResult
    assert all("prevResult" not in c[2] for c in CALLS)


def test_check_gets_the_cached_result_in_order():
    state, host, _ = world()
    invoke(chain(), "ADD", ENV, state, host)
    CALLS.clear()
    invoke(chain(), "CHECK", ENV, state, host)
    assert [(c[0], c[1], len(c[2]["prevResult"]["ips"])) for c in CALLS] == [("CHECK", "a", 2), ("CHECK", "b", 2)]
    CALLS.clear()
    invoke(chain(disableCheck=True), "CHECK", ENV, state, host)
    assert CALLS == []
    e = code_of(invoke, chain("0.3.1"), "CHECK", ENV, state, host)
    assert e.code == Code.INCOMPATIBLE_VERSION and "does not support the CHECK command" in e.msg
    # no ADD for this container: no cached result, the plugin complains
    e = code_of(invoke, chain(), "CHECK", {**ENV, "CNI_CONTAINERID": "other"}, state, host)
    assert e.code == Code.INTERNAL and e.context == 'plugin type="test-recorder" failed (check)'


def test_gc_passes_valid_attachments_and_drops_stale_cache():
    state, host, _ = world()
    invoke(chain("1.1.0"), "ADD", ENV, state, host)
    invoke(chain("1.1.0"), "ADD", {**ENV, "CNI_CONTAINERID": "gone"}, state, host)
    CALLS.clear()
    invoke(chain("1.1.0"), "GC", {}, state, host, attachments=[("c0ffee", "eth0")])
    assert CALLS[0][2]["cni.dev/valid-attachments"] == [{"containerID": "c0ffee", "ifname": "eth0"}]
    assert cache_path("chain", "c0ffee", "eth0") in host.files
    assert cache_path("chain", "gone", "eth0") not in host.files


def test_errors_name_the_plugin_and_keep_its_code():
    state, host, _ = world()
    bad = {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "test-recorder"}, {"type": "test-old"}]}
    e = code_of(invoke, bad, "ADD", ENV, state, host)
    assert e.code == Code.INCOMPATIBLE_VERSION and e.context == 'plugin type="test-old" failed (add)'
    e = code_of(invoke, {"cniVersion": "1.0.0", "name": "n", "plugins": [{"type": "nosuch"}]}, "ADD", ENV,
                state, host)
    assert 'failed to find plugin "nosuch" in path [/opt/cni/bin]' in e.msg


def test_old_versions_run_through_the_list():
    state, host, _ = world()
    result = invoke({"cniVersion": "0.2.0", "name": "old", "plugins": [{"type": "test-old"}]}, "ADD", ENV,
                    state, host)
    assert result.cni_version == "0.2.0" and result.to_json() == {
        "cniVersion": "0.2.0", "ip4": {"ip": "10.8.0.5/16", "gateway": "10.8.0.1"}, "dns": {}}


def test_version_of_each_plugin():
    state, host, _ = world()
    out = invoke(chain(), "VERSION", {}, state, host)
    assert [o["cniVersion"] for o in out] == ["1.1.0", "1.1.0"]


def test_status_and_gc_need_a_1_1_0_list():
    state, host, _ = world()
    invoke(chain("1.1.0"), "STATUS", {}, state, host)                    # every plugin is available
    invoke(chain("1.0.0"), "GC", {}, state, host, attachments=[])        # libcni skips: GC came with 1.1.0
    assert CALLS == []
    e = code_of(run, {"CNI_COMMAND": "STATUS", "CNI_PATH": "/opt/cni/bin"}, ptp_conf("1.0.0"))
    assert (e.code, e.msg) == (Code.INCOMPATIBLE_VERSION, "config version does not allow STATUS")
