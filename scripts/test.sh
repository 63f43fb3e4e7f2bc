#!/bin/sh
# Install what podnet's tests need on a Debian machine, then run them.
#   sudo scripts/test.sh [pytest args...]
# Debian packages: the tools the lab, the kernel differential tests and the
# benchmarks drive (iproute2, iptables, nftables, ipset, ipvsadm, conntrack,
# dig, dnsmasq, iperf3, tcpdump); Python packages: podnet with its [test] extra,
# in .venv beside this script's checkout.
set -eu
cd "$(dirname "$0")/.."
PACKAGES="python3 python3-venv python3-pip iproute2 iptables nftables ipset ipvsadm conntrack \
bind9-dnsutils dnsmasq-base iperf3 tcpdump curl procps kmod"
if [ "$(id -u)" -ne 0 ]; then
    echo "scripts/test.sh: run as root (sudo): it installs Debian packages and the lab tests need network namespaces" >&2
    exit 1
fi
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
# kernel modules the lab uses where the kernel has them as modules (no error where built in or
# absent); not ifb, dummy or ipip: loading those adds ifb0/ifb1, dummy0 or tunl0 to the host's own
# namespace (the lab's probe finds out whether the kernel loads them on demand)
for m in veth bridge br_netfilter vxlan ip_vs nf_conntrack nf_tables; do
    modprobe -q "$m" 2>/dev/null || true
done
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
exec .venv/bin/python -m pytest -q "$@"
