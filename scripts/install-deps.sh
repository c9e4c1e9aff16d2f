#!/usr/bin/env bash
# Installs what nvblk's tests need on a fresh Debian 12 machine. Idempotent:
# packages already present are not reinstalled. Runs as root (CI and the
# development machines are root); elsewhere it uses sudo if available.
#
#   scripts/install-deps.sh            # the tests' packages (PKGS below)
#   scripts/install-deps.sh PKG...     # just these (the benchmark scripts)
set -euo pipefail

# Debian packages the interop tests use. Keep this list in one place.
PKGS=(
	linux-image-amd64
	qemu-system-x86
	busybox-static
	ndctl
	gcc
	pkg-config
	libpmemblk-dev
	pmdk-tools
	qemu-utils
	libnbd-bin
	python3-libnbd
	nbdkit
	gnutls-bin
	nbd-client
	fio
	fuse3
	e2fsprogs
	gdisk
	fdisk
	util-linux
	xfsprogs
	systemd
)

(($#)) && PKGS=("$@")
missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	SUDO=""
	[ "$(id -u)" = 0 ] || SUDO="sudo"
	echo "install-deps: installing ${missing[*]}" >&2
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
