"""Run a podnet CNI plugin the way a runtime runs a plugin binary.

    python -m podnet.cni.exec PLUGIN            < network-config.json
    python -m podnet.cni.exec --conflist FILE   (CNI_COMMAND etc. as for a plugin; runs the list like libcni)
    python -m podnet.cni.exec --netns-add NAME  (the runtime's `ip netns add` before ADD)
    python -m podnet.cni.exec --show NAME       (`ip addr` / `ip route` / iptables-save of a namespace)

The plugin contract is the spec's: CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS,
CNI_IFNAME, CNI_ARGS, CNI_PATH in the environment, the configuration on stdin;
the result, version report or error object (JSON) on stdout; exit status 0 on
success, 1 on error.

The plugins act on a model, not on the kernel. The model lives in a file named by
PODNET_MODEL (default ./podnet-cni-model.pickle): a pickled DataplaneState that
this program creates on first use (one root namespace, PODNET_HOST, default
"host", with lo up) and writes back after every successful command, so a
sequence of invocations (netns-add, ADD, CHECK, DEL) behaves like one machine.
Only load model files you made: they are Python pickles. CNI_NETNS names a
namespace of the model by its basename (/var/run/netns/NAME).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
from pathlib import Path
from typing import Optional, TextIO

from ..linux.state import DataplaneState, Link, Netns
from .spec import CNIError, Code, Host, NetworkConfigList, invoke, run_plugin

DEFAULT_MODEL = "podnet-cni-model.pickle"


def load_model(path: Path, host_name: str) -> DataplaneState:
    if path.exists():
        with path.open("rb") as f:
            state = pickle.load(f)
        if not isinstance(state, DataplaneState):
            raise CNIError(Code.IO_FAILURE, f"{path} is not a podnet model")
    else:
        state = DataplaneState(description="podnet CNI model")
    if host_name not in state.namespaces:
        ns = state.add_netns(Netns(host_name, kind="node", node=host_name))
        lo = ns.add_link(Link("lo", "loopback", mtu=65536))
        lo.add_address("127.0.0.1/8", "host")
        lo.add_address("::1/128", "host")
    return state


def save_model(path: Path, state: DataplaneState) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(state, f)
    tmp.replace(path)


def netns_add(state: DataplaneState, name: str, host_name: str) -> Netns:
    """`ip netns add NAME`: a new namespace with lo, down and without addresses."""
    if name in state.namespaces:
        raise CNIError(Code.INVALID_CONFIG, f'Cannot create namespace file "/var/run/netns/{name}": File exists')
    ns = state.add_netns(Netns(name, kind="pod", node=host_name))
    ns.add_link(Link("lo", "loopback", mtu=65536, up=False))
    return ns


def show(state: DataplaneState, name: str) -> str:
    from ..linux import render
    ns = state.netns(name)
    parts = [render.ip_br_addr(ns, state), render.ip_route(ns), render.ip_route(ns, family=6)]
    if ns.iptables:
        parts.append(ns.iptables.rstrip())
    return "\n".join(p for p in parts if p)


def run(argv: list[str], env: dict, stdin: TextIO, stdout: TextIO) -> int:
    parser = argparse.ArgumentParser(prog="python -m podnet.cni.exec", description=__doc__.split("\n\n")[0])
    parser.add_argument("plugin", nargs="?", help="plugin type (loopback, ptp, bridge, host-local, portmap, ...)")
    parser.add_argument("--conflist", help="run a network configuration list file as a runtime does")
    parser.add_argument("--netns-add", metavar="NAME", help="create a network namespace in the model")
    parser.add_argument("--show", metavar="NAME", help="print a namespace's addresses, routes and iptables")
    parser.add_argument("--model", default=env.get("PODNET_MODEL", DEFAULT_MODEL), help="the model file")
    parser.add_argument("--host", default=env.get("PODNET_HOST", "host"), help="the root namespace")
    opts = parser.parse_args(argv)
    path = Path(opts.model)
    version = "1.1.0"
    try:
        if opts.plugin is None and not (opts.conflist or opts.netns_add or opts.show):
            parser.error("name a plugin, or give --conflist, --netns-add or --show")
        if opts.plugin and env.get("CNI_COMMAND") == "VERSION":
            from .plugins import plugin_for
            out = run_plugin(plugin_for(opts.plugin), env, b"", Host.of(DataplaneState(), Netns("host")))
            stdout.write(json.dumps(out) + "\n")
            return 0
        state = load_model(path, opts.host)
        if opts.netns_add:
            netns_add(state, opts.netns_add, opts.host)
            save_model(path, state)
            return 0
        if opts.show:
            stdout.write(show(state, opts.show) + "\n")
            return 0
        try:
            data = stdin.read() if opts.plugin else Path(opts.conflist).read_text()
        except OSError as e:
            raise CNIError(Code.IO_FAILURE, f"error reading configuration: {e}") from None
        try:
            version = json.loads(data).get("cniVersion") or version
        except (json.JSONDecodeError, AttributeError):
            pass
        if opts.plugin:
            from .plugins import plugin_for
            host = Host.of(state, opts.host)
            try:
                out = run_plugin(plugin_for(opts.plugin, env.get("CNI_PATH", "")), env, data.encode(), host)
            finally:
                host.commit()
        else:
            conflist = NetworkConfigList.parse(data, source=opts.conflist)
            caps = json.loads(env.get("CAP_ARGS", "{}") or "{}")
            result = invoke(conflist, env.get("CNI_COMMAND", ""), env, state, opts.host, runtime_config=caps)
            out = result.to_json(conflist.cni_version) if hasattr(result, "to_json") else result
        save_model(path, state)
        if out is not None:
            stdout.write(json.dumps(out, indent=4) + "\n")
        return 0
    except CNIError as e:
        stdout.write(json.dumps(e.to_json(version), indent=4) + "\n")
        return 1
    except Exception as e:          # a plugin bug: skel reports untyped errors as 999
        stdout.write(json.dumps(CNIError(Code.INTERNAL, f"{type(e).__name__}: {e}").to_json(version), indent=4)
                     + "\n")
        return 1


def main(argv: Optional[list[str]] = None) -> None:
    sys.exit(run(sys.argv[1:] if argv is None else argv, dict(os.environ), sys.stdin, sys.stdout))


if __name__ == "__main__":
    main()
