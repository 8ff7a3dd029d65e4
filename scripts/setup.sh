#!/usr/bin/env bash
# Installs what eoe_filter, its demo and its tests need on a fresh Debian/Ubuntu machine:
# the tools the tests drive (iproute2, ping, iperf3, tshark, systemd-analyze, a C compiler for the
# benchmark's baseline) and a virtual environment .venv with the package and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "setup.sh: run as root (namespaces, TAP devices and raw sockets need it)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in iproute2 iputils-ping iperf3 tcpdump ethtool tshark systemd gcc libc6-dev python3-venv; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "setup.sh: installing ${need[*]}"
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
