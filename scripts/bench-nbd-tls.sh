#!/usr/bin/env bash
# What TLS costs: `nvblk serve` with and without --tls-creds, side by side
# with nbdkit (file plugin) with and without --tls=require, all on unix
# sockets, images on /dev/shm, the same fio job (ioengine=nbd: libnbd).
# Workloads: 4k random reads at iodepth 8 and 1 MiB sequential reads and
# writes at iodepth 4. Prints MB/s (medians of the rounds) and the ratios
# (each the median of the ratios of the rounds).
#
#   scripts/bench-nbd-tls.sh                 # 3 rounds of 3 s per run
#   RUNTIME=10 ROUNDS=5 scripts/bench-nbd-tls.sh
#
# The four servers run side by side and the fio runs are interleaved
# (workload by workload, server by server, round by round), so a change
# in machine load hits every server alike.
#
# fio cannot pass libnbd a credentials directory (tls-certificates= in a
# URI is refused unless the program allows local file access, and fio
# does not), so the TLS servers here authenticate themselves only
# (nvblk --tls-verify-clients=false, nbdkit without --tls-verify-peer):
# client certificates change the handshake, not the transfer.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-3}
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-512M}
scripts/install-deps.sh fio nbdkit python3
command -v go >/dev/null || { echo "bench-nbd-tls: go is needed to build nvblk" >&2; exit 1; }
PY=/usr/bin/python3

D=$(mktemp -d /dev/shm/nvblk-tlsbench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.5
	rm -rf "$D"
}
trap cleanup EXIT
wait_sock() {
	for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
	echo "bench-nbd-tls: no socket at $1" >&2
	exit 1
}

go build -o "$D/nvblk" ./cmd/nvblk
"$D/nvblk" certs "$D/creds" >/dev/null
dd if=/dev/urandom of="$D/raw.img" bs=1M count=$(($(numfmt --from=iec "$SIZE") >> 20)) status=none

for s in plain tls; do
	extra=()
	[ "$s" = tls ] && extra=(--tls-creds "$D/creds" --tls-verify-clients=false)
	PMEM_IS_PMEM_FORCE=1 "$D/nvblk" serve --socket "$D/nvblk-$s.sock" --size "$SIZE" "${extra[@]}" "$D/nvblk-$s.img" \
		>"$D/nvblk-$s.out" 2>"$D/nvblk-$s.err" &
	PIDS+=($!)
	wait_sock "$D/nvblk-$s.sock"
done
nbdkit -U "$D/nbdkit-plain.sock" --pidfile "$D/nbdkit-plain.pid" file "$D/raw.img"
nbdkit -U "$D/nbdkit-tls.sock" --pidfile "$D/nbdkit-tls.pid" --tls=require --tls-certificates="$D/creds" file "$D/raw.img"
for s in plain tls; do
	wait_sock "$D/nbdkit-$s.sock"
	PIDS+=("$(cat "$D/nbdkit-$s.pid")")
done

declare -A URI=(
	[nvblk]="nbd+unix:///?socket=$D/nvblk-plain.sock"
	[nvblk-tls]="nbds+unix:///?socket=$D/nvblk-tls.sock"
	[nbdkit]="nbd+unix:///?socket=$D/nbdkit-plain.sock"
	[nbdkit-tls]="nbds+unix:///?socket=$D/nbdkit-tls.sock"
)
SERVERS=(nvblk nvblk-tls nbdkit nbdkit-tls)
for s in nvblk nvblk-tls; do # fill the BTTs like the raw image
	fio --name=fill --ioengine=nbd --uri="${URI[$s]}" --rw=write --bs=1M --iodepth=4 --refill_buffers \
		--output-format=terse >/dev/null
done

# fio_mbs URI RW BS DEPTH -> MB/s
fio_mbs() {
	local out
	out=$(fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs="$3" --iodepth="$4" \
		--time_based --runtime="$RUNTIME" --ramp_time=1 --norandommap --randrepeat=0 --output-format=json 2>/dev/null)
	"$PY" -c 'import json,sys
s=sys.stdin.read()
j=json.loads(s[s.index("{"):])["jobs"][0]
b = j["read"]["bw_bytes"] + j["write"]["bw_bytes"]
print("%.1f" % (b / 1e6))' <<<"$out"
}

WORK=("randread 4k 8" "read 1M 4" "write 1M 4")
declare -A RES
ratio() { "$PY" -c "print(f'{$1/$2:.3f}')"; }
for round in $(seq "$ROUNDS"); do
	for w in "${WORK[@]}"; do
		read -r rw bs qd <<<"$w"
		declare -A V=()
		for s in "${SERVERS[@]}"; do
			V[$s]=$(fio_mbs "${URI[$s]}" "$rw" "$bs" "$qd")
			RES[$s,$w]+="${V[$s]} "
			echo "bench-nbd-tls: round $round $s $w: ${V[$s]} MB/s" >&2
		done
		RES[r1,$w]+="$(ratio "${V[nvblk-tls]}" "${V[nvblk]}") "
		RES[r2,$w]+="$(ratio "${V[nbdkit-tls]}" "${V[nbdkit]}") "
		RES[r3,$w]+="$(ratio "${V[nvblk-tls]}" "${V[nbdkit-tls]}") "
		RES[r4,$w]+="$(ratio "${V[nvblk-tls]}" "${V[nbdkit]}") "
	done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "MB/s (median of $ROUNDS x ${RUNTIME}s), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(nproc) CPUs, $SIZE images on /dev/shm, unix sockets, fio ioengine=nbd"
printf '%-16s %9s %9s %9s %10s %11s %12s %12s %14s\n' workload nvblk nvblk-tls nbdkit nbdkit-tls "nvblk tls/" "nbdkit tls/" "nvblk-tls/" "nvblk-tls/"
printf '%-16s %9s %9s %9s %10s %11s %12s %12s %14s\n' "" "" "" "" "" plain plain nbdkit-tls "nbdkit (plain)"
for w in "${WORK[@]}"; do
	printf '%-16s %9s %9s %9s %10s %11s %12s %12s %14s\n' "$w" "$(median "${RES[nvblk,$w]}")" "$(median "${RES[nvblk-tls,$w]}")" \
		"$(median "${RES[nbdkit,$w]}")" "$(median "${RES[nbdkit-tls,$w]}")" "$(median "${RES[r1,$w]}")" "$(median "${RES[r2,$w]}")" \
		"$(median "${RES[r3,$w]}")" "$(median "${RES[r4,$w]}")"
	echo "  per-round nvblk tls/plain: ${RES[r1,$w]}; nvblk-tls/nbdkit-tls: ${RES[r3,$w]}"
done
