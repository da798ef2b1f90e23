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
#   docker.io     dockerd, containerd, runc, docker-init and the docker client:
#                 the lab's Docker hosts run real engines, each inside its
#                 host's namespace; installed without starting Docker's own
#                 service, which would run in this machine's namespace
#   busybox-static  the lab's container image (no image can be pulled): a
#                 static busybox, imported into each lab dockerd
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
command -v dockerd >/dev/null 2>&1 || need="$need docker.io"
# Debian's plain busybox is dynamically linked: no use in an empty image.
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || need="$need busybox-static"
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
case "$need" in *docker.io*)
	# Keep the package's docker.service and containerd.service from
	# starting: policy-rc.d answering 101 makes invoke-rc.d and
	# deb-systemd-invoke skip every start during the install.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	;;
esac
apt-get update -qq
# shellcheck disable=SC2086 # word splitting of $need is intended
apt-get install -y -qq --no-install-recommends $need >/dev/null
