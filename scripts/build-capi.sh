#!/usr/bin/env bash
# build-capi.sh OUTDIR: builds nvblk's libpmemblk (capi/libpmemblk), a
# drop-in for PMDK's libpmemblk.so.1, and puts into OUTDIR:
#   libpmemblk.so.1   the library (soname libpmemblk.so.1, symbols
#                     versioned LIBPMEMBLK_1.0 as PMDK's)
#   libpmemblk.so     link to it, for -lpmemblk
#   libpmemblk.h      the header
#   libpmemblk.pc     pkg-config file
# With PREFIX set (e.g. PREFIX=/usr/local), libpmemblk.pc names
# PREFIX/lib and PREFIX/include, for installing the files there (see the
# README, "Migrating from libpmemblk"); without it, it names OUTDIR, so
#   PKG_CONFIG_PATH=OUTDIR pkg-config --cflags --libs libpmemblk
# builds against OUTDIR as it is. Needs go and gcc. The library is marked
# nodelete: the Go runtime inside cannot be unloaded, so dlclose keeps it.
set -euo pipefail
if [ $# -ne 1 ]; then
	echo "usage: $0 OUTDIR" >&2
	exit 2
fi
src=$(cd "$(dirname "$0")/../capi/libpmemblk" && pwd)
mkdir -p "$1"
out=$(cd "$1" && pwd)

CGO_ENABLED=1 go build -C "$src" -buildmode=c-shared -trimpath \
	-ldflags "-extldflags '-Wl,-soname,libpmemblk.so.1 -Wl,--version-script=$src/libpmemblk.map -Wl,-z,nodelete'" \
	-o "$out/libpmemblk.so.1" .
rm -f "$out/libpmemblk.so.h" # cgo's header of the Go side; libpmemblk.h is the API
ln -sfn libpmemblk.so.1 "$out/libpmemblk.so"
install -m 0644 "$src/libpmemblk.h" "$out/libpmemblk.h"

if [ -n "${PREFIX:-}" ]; then
	prefix=$PREFIX libdir='${prefix}/lib' includedir='${prefix}/include'
else
	prefix=$out libdir='${prefix}' includedir='${prefix}'
fi
sed -e "s|@PREFIX@|$prefix|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" \
	"$src/libpmemblk.pc.in" >"$out/libpmemblk.pc"
