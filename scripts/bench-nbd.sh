#!/usr/bin/env bash
# Throughput of `nvblk serve` side by side with nbdkit (file plugin) and
# qemu-nbd, all on unix sockets, each serving a 1 GiB image on /dev/shm,
# measured with the same fio job (ioengine=nbd, 4k random read and write,
# iodepth 1, 8 and 32 on one connection, and iodepth 8 on each of 4
# connections: fio --numjobs=4). Prints a table of IOPS and the ratios nvblk/peer.
#
#   scripts/bench-nbd.sh                      # 3 rounds of 3 s per run, median
#   RUNTIME=10 ROUNDS=5 DEPTHS="1 4 16" scripts/bench-nbd.sh
#
# The three servers run side by side (idle ones cost nothing) and the fio
# runs are interleaved (workload by workload, server by server, round by
# round), so a change in machine load hits every server alike; each cell
# is the median of the rounds.
#
# nvblk runs with PMEM_IS_PMEM_FORCE=1 (CPU cache flushes on the mapping):
# every acknowledged write has gone through the BTT's persistence points.
# The peers write into the page cache of a tmpfs file and persist nothing,
# so the write rows compare a durable atomic-sector device with a
# volatile one.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNTIME=${RUNTIME:-3}
ROUNDS=${ROUNDS:-3}
DEPTHS=${DEPTHS:-1 8 32}
SIZE=${SIZE:-1G}
scripts/install-deps.sh fio nbdkit qemu-utils python3
command -v go >/dev/null || { echo "bench-nbd: go is needed to build nvblk" >&2; exit 1; }
PY=/usr/bin/python3 # the system python, not a pyenv shim

D=$(mktemp -d /dev/shm/nvblk-nbdbench.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	sleep 0.5
	rm -rf "$D"
}
trap cleanup EXIT

wait_sock() { # wait_sock PATH
	for _ in $(seq 100); do [ -S "$1" ] && return 0; sleep 0.1; done
	echo "bench-nbd: no socket at $1" >&2
	exit 1
}

echo "bench-nbd: building nvblk" >&2
go build -o "$D/nvblk" ./cmd/nvblk

echo "bench-nbd: preparing $SIZE of random data on $D" >&2
dd if=/dev/urandom of="$D/raw.img" bs=1M count=$(($(numfmt --from=iec "$SIZE") >> 20)) status=none

# nvblk: a BTT image (a little smaller than SIZE: BTT metadata), filled
# with random data through NBD first, like the peers' raw image.
PMEM_IS_PMEM_FORCE=1 "$D/nvblk" serve --socket "$D/nvblk.sock" --size "$SIZE" "$D/nvblk.img" \
	>"$D/nvblk.out" 2>"$D/nvblk.err" &
PIDS+=($!)
wait_sock "$D/nvblk.sock"
fio --name=fill --ioengine=nbd --uri="nbd+unix:///?socket=$D/nvblk.sock" --rw=write --bs=1M --iodepth=4 \
	--refill_buffers --output-format=terse >/dev/null

# nbdkit: file plugin on the raw image (-U: unix socket only, no TCP).
nbdkit -U "$D/nbdkit.sock" --pidfile "$D/nbdkit.pid" file "$D/raw.img"
wait_sock "$D/nbdkit.sock"
PIDS+=("$(cat "$D/nbdkit.pid")")

# qemu-nbd on a copy of the raw image (-k: unix socket only, no TCP).
cp "$D/raw.img" "$D/raw2.img"
qemu-nbd -k "$D/qemu.sock" -f raw --persistent --shared=8 --fork --pid-file "$D/qemu.pid" "$D/raw2.img"
wait_sock "$D/qemu.sock"
PIDS+=("$(cat "$D/qemu.pid")")

declare -A URI=(
	[nvblk]="nbd+unix:///?socket=$D/nvblk.sock"
	[nbdkit]="nbd+unix:///?socket=$D/nbdkit.sock"
	[qemu-nbd]="nbd+unix:///?socket=$D/qemu.sock"
)
SERVERS=(nvblk nbdkit qemu-nbd)

# fio_iops URI RW DEPTH [JOBS] -> IOPS (all jobs together)
fio_iops() {
	local out
	out=$(fio --name=bench --ioengine=nbd --uri="$1" --rw="$2" --bs=4k --iodepth="$3" \
		--numjobs="${4:-1}" --group_reporting --time_based --runtime="$RUNTIME" --ramp_time=1 --norandommap --randrepeat=0 \
		--output-format=json 2>/dev/null)
	"$PY" -c 'import json,sys
s=sys.stdin.read()  # fio may print "connected to NBD server" first
j=json.loads(s[s.index("{"):])["jobs"][0]
print(int(j["read"]["iops"] + j["write"]["iops"]))' <<<"$out"
}

declare -A RES # RES[server,rw,qd] = space-separated IOPS of each round
for round in $(seq "$ROUNDS"); do
	for rw in randread randwrite; do
		for qd in $DEPTHS; do
			for s in "${SERVERS[@]}"; do
				v=$(fio_iops "${URI[$s]}" "$rw" "$qd")
				RES[$s,$rw,$qd]+="$v "
				echo "bench-nbd: round $round $s $rw iodepth=$qd: $v IOPS" >&2
			done
		done
		for s in "${SERVERS[@]}"; do
			v=$(fio_iops "${URI[$s]}" "$rw" 8 4)
			RES[$s,$rw,8x4]+="$v "
			echo "bench-nbd: round $round $s $rw iodepth=8 x 4 connections: $v IOPS" >&2
		done
	done
done

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ratio() { "$PY" -c "print(f'{$1/$2:.2f}')"; }

echo
echo "4k IOPS (median of $ROUNDS x ${RUNTIME}s), $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1), $(nproc) CPUs, $SIZE image on /dev/shm, unix sockets, fio ioengine=nbd"
printf '%-22s %10s %10s %10s %14s %16s\n' workload nvblk nbdkit qemu-nbd nvblk/nbdkit nvblk/qemu-nbd
for rw in randread randwrite; do
	for qd in $DEPTHS 8x4; do
		n=$(median "${RES[nvblk,$rw,$qd]}") k=$(median "${RES[nbdkit,$rw,$qd]}") q=$(median "${RES[qemu-nbd,$rw,$qd]}")
		printf '%-22s %10d %10d %10d %14s %16s\n' "$rw iodepth=$qd" "$n" "$k" "$q" "$(ratio "$n" "$k")" "$(ratio "$n" "$q")"
	done
done
