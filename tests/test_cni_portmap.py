"""portmap: the hostPort chains exactly as iptables-save shows them, DEL, CHECK, IPv6."""

import hashlib

from podnet.cni.plugins.portmap import TOP_LEVEL_DNAT_CHAIN
from podnet.cni.spec import Code, invoke

from test_cni_plugins import env, errors, ptp_list, veth_of, world

PORTMAP = {"type": "portmap", "capabilities": {"portMappings": True}}
TCP_UDP = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                            {"hostPort": 5353, "containerPort": 53, "protocol": "udp"}]}


def dn_chain(name: str, cid: str) -> str:
    return ("CNI-DN-" + hashlib.sha512((name + cid).encode()).hexdigest())[:28]


def test_portmap_rules_as_iptables_save_prints_them():
    state, host = world("cni-a")
    result = invoke(ptp_list(more=[PORTMAP]), "ADD", env("a"), state, host, runtime_config=TCP_UDP)
    assert [str(i.address) for i in result.ips] == ["10.1.1.2/24"]          # the previous result, passed on
    dn = dn_chain("ptpnet", "a")
    comment = '"dnat name: \\"ptpnet\\" id: \\"a\\""'
    assert host.iptables.splitlines() == [
        "*nat",
        ":PREROUTING ACCEPT [0:0]", ":INPUT ACCEPT [0:0]", ":OUTPUT ACCEPT [0:0]", ":POSTROUTING ACCEPT [0:0]",
        f":{dn} - [0:0]", ":CNI-HOSTPORT-DNAT - [0:0]", ":CNI-HOSTPORT-MASQ - [0:0]",
        ":CNI-HOSTPORT-SETMARK - [0:0]",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        "-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT",
        '-A POSTROUTING -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ',
        f"-A {dn} -s 10.1.1.0/24 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
        f"-A {dn} -s 127.0.0.1/32 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK",
        f"-A {dn} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.1.2:80",
        f"-A {dn} -s 10.1.1.0/24 -p udp -m udp --dport 5353 -j CNI-HOSTPORT-SETMARK",
        f"-A {dn} -s 127.0.0.1/32 -p udp -m udp --dport 5353 -j CNI-HOSTPORT-SETMARK",
        f"-A {dn} -p udp -m udp --dport 5353 -j DNAT --to-destination 10.1.1.2:53",
        # entry rules are inserted at the top, one after the other (newest first)
        f"-A CNI-HOSTPORT-DNAT -p udp -m comment --comment {comment} -m multiport --dports 5353 -j {dn}",
        f"-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment {comment} -m multiport --dports 8080 -j {dn}",
        "-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE",
        '-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark '
        "0x2000/0x2000",
        "COMMIT"]
    # 127.0.0.1 may cross to the pod: route_localnet on the interface that routes to it
    assert host.sysctls[f"net.ipv4.conf.{veth_of('a')}.route_localnet"] == "1"


def test_portmap_del_check_and_a_second_container():
    state, host = world("cni-a", "cni-b")
    conf = ptp_list(more=[PORTMAP])
    invoke(conf, "ADD", env("a"), state, host, runtime_config=TCP_UDP)
    invoke(conf, "ADD", env("b"), state, host,
           runtime_config={"portMappings": [{"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}]})
    dnat = [line for line in host.iptables.splitlines() if line.startswith(f"-A {TOP_LEVEL_DNAT_CHAIN}")]
    assert dnat[0].endswith(dn_chain("ptpnet", "b")) and len(dnat) == 3     # the newest container first
    invoke(conf, "CHECK", env("a"), state, host, runtime_config=TCP_UDP)
    invoke(conf, "DEL", env("a"), state, host, runtime_config=TCP_UDP)
    assert dn_chain("ptpnet", "a") not in host.iptables
    assert dn_chain("ptpnet", "b") in host.iptables and "CNI-HOSTPORT-SETMARK" in host.iptables
    invoke(conf, "DEL", env("a"), state, host, runtime_config=TCP_UDP)    # idempotent
    # CHECK notices a missing chain (someone ran `iptables -t nat -F/-X` on it)
    dn_b = dn_chain("ptpnet", "b")
    host.iptables = "\n".join(line for line in host.iptables.splitlines()
                              if not line.startswith((f"-A {dn_b}", f":{dn_b}"))) + "\n"
    e = errors(invoke, conf, "CHECK", env("b"), state, host,
               runtime_config={"portMappings": [{"hostPort": 9090, "containerPort": 90, "protocol": "tcp"}]})
    assert e.code == Code.INTERNAL and f"chain {dn_chain('ptpnet', 'b')} not found" in e.msg


def test_portmap_without_mappings_or_snat():
    state, host = world("cni-a", "cni-b")
    invoke(ptp_list(more=[PORTMAP]), "ADD", env("a"), state, host)
    assert host.iptables == ""
    no_snat = ptp_list(more=[{**PORTMAP, "snat": False}])
    invoke(no_snat, "ADD", env("b"), state, host, runtime_config=TCP_UDP)
    assert "SETMARK" not in host.iptables and "MASQ" not in host.iptables
    assert f"-A {dn_chain('ptpnet', 'b')} -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.1.1.3:80" \
        in host.iptables


def test_portmap_ipv6_host_ip_and_conditions():
    state, host = world("cni-a")
    conf = ptp_list(ranges=(("10.1.1.0/24",), ("fd00:1::/64",)), routes=("0.0.0.0/0", "::/0"),
                    more=[{**PORTMAP, "conditionsV4": ["-d", "192.168.0.10"], "markMasqBit": 5}])
    caps = {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                             {"hostPort": 8443, "containerPort": 443, "protocol": "tcp", "hostIP": "192.168.0.10"}]}
    invoke(conf, "ADD", env("a"), state, host, runtime_config=caps)
    dn = dn_chain("ptpnet", "a")
    v6 = host.ip6tables.splitlines()
    assert f"-A {dn} -s fd00:1::/64 -p tcp -m tcp --dport 8080 -j CNI-HOSTPORT-SETMARK" in v6
    assert f"-A {dn} -p tcp -m tcp --dport 8080 -j DNAT --to-destination [fd00:1::2]:80" in v6
    assert not any("8443 -j DNAT" in line or "127.0.0.1" in line for line in v6)   # hostIP is IPv4
    v4 = host.iptables.splitlines()
    assert f"-A {dn} -d 192.168.0.10/32 -p tcp -m tcp --dport 8443 -j DNAT --to-destination 10.1.1.2:443" in v4
    assert any(line.startswith("-A CNI-HOSTPORT-DNAT -d 192.168.0.10/32 -p tcp -m comment") and
               line.endswith(f"--dports 8080,8443 -j {dn}") for line in v4)
    assert "-A CNI-HOSTPORT-MASQ -m mark --mark 0x20/0x20 -j MASQUERADE" in v4


def test_portmap_needs_a_previous_result_and_valid_ports():
    state, host = world("cni-a")
    alone = {"cniVersion": "1.0.0", "name": "pm", "plugins": [PORTMAP]}
    assert errors(invoke, alone, "ADD", env("a"), state, host, runtime_config=TCP_UDP).msg == \
        "must be called as chained plugin"
    e = errors(invoke, ptp_list(more=[PORTMAP]), "ADD", env("a"), state, host,
               runtime_config={"portMappings": [{"hostPort": 0, "containerPort": 80, "protocol": "tcp"}]})
    assert e.code == Code.INVALID_CONFIG and e.msg == "Invalid host port number: 0"


def test_multiport_takes_fifteen_ports_per_rule():
    state, host = world("cni-a")
    caps = {"portMappings": [{"hostPort": 10000 + i, "containerPort": 80 + i, "protocol": "tcp"} for i in range(17)]}
    invoke(ptp_list(more=[PORTMAP]), "ADD", env("a"), state, host, runtime_config=caps)
    entries = [line for line in host.iptables.splitlines() if line.startswith("-A CNI-HOSTPORT-DNAT")]
    assert [line.split("--dports ")[1].split()[0].count(",") + 1 for line in entries] == [2, 15]
