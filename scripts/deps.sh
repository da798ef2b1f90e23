#!/bin/sh
# deps.sh: install the Debian packages the lab and the tests need, if they
# are missing. Go modules are fetched by the go command itself.
#
# Packages, and what needs them:
#   iproute2      ip, bridge: every lab namespace, link and address
#   iputils-ping  ping: traffic in the lab
#   procps        sysctl: per-namespace sysctls in the lab
#   iptables      iptables(-nft, -legacy): vtepd's forward rules go through
#                 it, and the lab sets hosts up as Docker does with it
#   nftables      nft: the tests list vtepd's ip-masq table with it
#   systemd       systemd-analyze: the unit file's check
# and with the argument "bench", for make bench:
#   iperf3        TCP throughput over the overlay and the underlay
set -eu

need=""
command -v ip >/dev/null 2>&1 || need="$need iproute2"
command -v bridge >/dev/null 2>&1 || need="$need iproute2"
command -v ping >/dev/null 2>&1 || need="$need iputils-ping"
command -v sysctl >/dev/null 2>&1 || need="$need procps"
command -v iptables-legacy >/dev/null 2>&1 || need="$need iptables"
command -v nft >/dev/null 2>&1 || need="$need nftables"
command -v systemd-analyze >/dev/null 2>&1 || need="$need systemd"
if [ "${1:-}" = bench ]; then
	command -v iperf3 >/dev/null 2>&1 || need="$need iperf3"
fi
[ -z "$need" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing Debian packages:$need (run as root to install them)" >&2
	exit 0 # the lab tests skip without root anyway
fi
echo "deps.sh: installing$need"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of $need is intended
apt-get install -y -qq --no-install-recommends $need >/dev/null
