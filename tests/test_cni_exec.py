"""`python -m podnet.cni.exec`: the plugin binary contract (env + stdin -> stdout + exit status)."""

import json
import os
import subprocess
import sys

from conftest import ROOT

PTP = {"cniVersion": "1.0.0", "name": "mynet", "type": "ptp", "ipMasq": True,
       "ipam": {"type": "host-local", "subnet": "10.1.1.0/24", "routes": [{"dst": "0.0.0.0/0"}]}}
CNI = {"CNI_CONTAINERID": "abc", "CNI_NETNS": "/var/run/netns/cni-1", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def plugin(tmp_path, args, env=None, stdin=""):
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    full = {**clean, "PODNET_MODEL": str(tmp_path / "model.pickle"), **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "podnet.cni.exec", *args], input=stdin, env=full,
                          capture_output=True, text=True, cwd=ROOT)
    return proc.returncode, proc.stdout


def test_version_needs_nothing_else(tmp_path):
    rc, out = plugin(tmp_path, ["bridge"], {"CNI_COMMAND": "VERSION"})
    assert rc == 0 and json.loads(out) == {"cniVersion": "1.1.0", "supportedVersions": [
        "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_add_check_del_on_a_model_file(tmp_path):
    assert plugin(tmp_path, ["--netns-add", "cni-1"]) == (0, "")
    rc, out = plugin(tmp_path, ["ptp"], {**CNI, "CNI_COMMAND": "ADD"}, json.dumps(PTP))
    assert rc == 0
    result = json.loads(out)
    assert result["ips"] == [{"interface": 1, "address": "10.1.1.2/24", "gateway": "10.1.1.1"}]
    assert out.startswith('{\n    "cniVersion": "1.0.0"')
    rc, shown = plugin(tmp_path, ["--show", "cni-1"])
    assert "10.1.1.0/24 via 10.1.1.1 dev eth0 src 10.1.1.2" in shown
    check = {**PTP, "prevResult": result}
    assert plugin(tmp_path, ["ptp"], {**CNI, "CNI_COMMAND": "CHECK"}, json.dumps(check)) == (0, "")
    assert plugin(tmp_path, ["ptp"], {**CNI, "CNI_COMMAND": "DEL"}, json.dumps(check)) == (0, "")
    assert plugin(tmp_path, ["ptp"], {**CNI, "CNI_COMMAND": "DEL"}, json.dumps(check)) == (0, "")
    rc, shown = plugin(tmp_path, ["--show", "host"])
    assert "10.1.1.1/32" not in shown and "CNI-" not in shown


def test_errors_are_json_on_stdout_with_exit_status_1(tmp_path):
    rc, out = plugin(tmp_path, ["ptp"], {"CNI_COMMAND": "ADD"}, json.dumps(PTP))
    assert rc == 1 and json.loads(out) == {
        "cniVersion": "1.0.0", "code": 4,
        "msg": "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing"}
    rc, out = plugin(tmp_path, ["ptp"], {**CNI, "CNI_COMMAND": "ADD"}, "{oops")
    assert rc == 1 and json.loads(out)["code"] == 6
    rc, out = plugin(tmp_path, ["ptp"], {**CNI, "CNI_COMMAND": "ADD"}, json.dumps({**PTP, "cniVersion": "2.0.0"}))
    assert rc == 1 and json.loads(out)["code"] == 1
    rc, out = plugin(tmp_path, ["ptp"], {**CNI, "CNI_COMMAND": "ADD"}, json.dumps(PTP))   # no such netns
    assert rc == 1 and json.loads(out)["code"] == 3


def test_conflist_mode_runs_the_chain(tmp_path):
    conflist = tmp_path / "10-net.conflist"
    conflist.write_text(json.dumps({"cniVersion": "1.0.0", "name": "mynet", "plugins": [
        {k: v for k, v in PTP.items() if k not in ("cniVersion", "name")},
        {"type": "portmap", "capabilities": {"portMappings": True}}]}))
    plugin(tmp_path, ["--netns-add", "cni-1"])
    caps = json.dumps({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})
    rc, out = plugin(tmp_path, ["--conflist", str(conflist)], {**CNI, "CNI_COMMAND": "ADD", "CAP_ARGS": caps})
    assert rc == 0 and json.loads(out)["ips"][0]["address"] == "10.1.1.2/24"
    rc, shown = plugin(tmp_path, ["--show", "host"])
    assert "-j DNAT --to-destination 10.1.1.2:80" in shown
    rc, out = plugin(tmp_path, ["--conflist", str(conflist)], {**CNI, "CNI_COMMAND": "CHECK", "CAP_ARGS": caps})
    assert (rc, out) == (0, "")
    assert plugin(tmp_path, ["--conflist", str(conflist)], {**CNI, "CNI_COMMAND": "DEL", "CAP_ARGS": caps}) == (0, "")
    rc, shown = plugin(tmp_path, ["--show", "host"])
    assert "--to-destination" not in shown and "CNI-HOSTPORT-DNAT" in shown     # shared chains stay
