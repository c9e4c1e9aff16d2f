#!/usr/bin/env bash
# bench-capi.sh: the cost of nvblk's C ABI. bench/blkbench.c, one binary
# built against Debian's libpmemblk, runs
#   libpmemblk  as built (PMDK's libpmemblk.so.1)
#   nvblk-capi  with LD_LIBRARY_PATH at nvblk's libpmemblk.so.1
#               (scripts/build-capi.sh): the same program, nvblk underneath
# and, as the reference for the call overhead,
#   nvblk-go    `nvblk bench` (Go calling the pmemblk package directly)
# on 1 GiB pools on tmpfs, 4096-byte blocks, filled first, prefaulted,
# PMEM_IS_PMEM_FORCE=1: fill (every block once, 1 thread), random write
# and read per thread count. Every round runs the three in a rotating
# order; each round gives ratios (nvblk-capi / libpmemblk and nvblk-capi /
# nvblk-go in ops/s) and the summary prints their medians over the rounds.
#
# Environment (defaults): DURATION=1s RUNS=5 THREADS="1 2" OPS="fill write read"
# SIZE=1G BENCH_DIR=/dev/shm KEEP=0 IDLE_WAIT=20 BUSY_BUDGET=300. Each run
# waits for an idle machine (wait_idle) and records the CPU cores other
# processes used meanwhile (others=), since the machine may be shared.
# About 1.5 minutes with the defaults on an idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-1s}
RUNS=${RUNS:-5}
THREADS=${THREADS:-"1 2"}
OPS=${OPS:-"fill write read"}
SIZE=${SIZE:-1G}
KEEP=${KEEP:-0}
export PMEM_IS_PMEM_FORCE=1

scripts/install-deps.sh gcc libc6-dev libpmemblk-dev libpmem-dev time
command -v go >/dev/null || { echo "bench-capi: go is needed to build nvblk" >&2; exit 1; }

DIR=$(mktemp -d "${BENCH_DIR:-/dev/shm}/nvblk-bench-capi.XXXXXX")
cleanup() {
	if [ "$KEEP" = 1 ]; then echo "kept $DIR" >&2; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
BIN=$DIR/bin
LIB=$DIR/lib
mkdir -p "$BIN"
LOG=$DIR/stderr.log
RES=$DIR/results.txt # round op threads impl ops_per_s others
: >"$LOG"
: >"$RES"

gcc -O2 -Wall -pthread -o "$BIN/blkbench" bench/blkbench.c -lpmemblk -lpmem
scripts/build-capi.sh "$LIB"
go build -o "$BIN/nvblk" ./cmd/nvblk
POOL_PMDK=$DIR/pmdk.pool
POOL_NVBLK=$DIR/nvblk.pool # written by nvblk-capi and nvblk-go

loaded=$(LD_LIBRARY_PATH=$LIB ldd "$BIN/blkbench" | sed -n 's/.*libpmemblk\.so\.1 => \([^ ]*\).*/\1/p')
[ "$loaded" = "$LIB/libpmemblk.so.1" ] || { echo "bench-capi: blkbench loads $loaded, not nvblk's" >&2; exit 1; }

HZ=$(getconf CLK_TCK)
busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
field() { sed -n "s/.*[ {\"]$1[\"]*[=:]\([0-9.]*\).*/\1/p" | head -n1; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print "-"; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

# Before each run wait up to $IDLE_WAIT s for the machine to be idle (other
# processes below 0.15 of a core), until $BUSY_BUDGET s have gone to waiting.
IDLE_WAIT=${IDLE_WAIT:-20}
BUSY_BUDGET=${BUSY_BUDGET:-300}
busy_spent=0
wait_idle() {
	local t0=$SECONDS b0 b1
	((busy_spent < BUSY_BUDGET)) || return 0
	while ((SECONDS - t0 < IDLE_WAIT)); do
		b0=$(busy_jiffies)
		sleep 0.5
		b1=$(busy_jiffies)
		(((b1 - b0) * 200 < 15 * HZ)) && break
	done
	busy_spent=$((busy_spent + SECONDS - t0))
}

# run ROUND OP THREADS IMPL: one measured run, recorded with others=.
run() {
	local round=$1 op=$2 t=$3 impl=$4 line b0 b1 others
	local -a cmd
	case $impl in
	libpmemblk) cmd=("$BIN/blkbench" "$op" -t "$t" -d "$DURATION" "$POOL_PMDK") ;;
	nvblk-capi) cmd=(env LD_LIBRARY_PATH="$LIB" "$BIN/blkbench" "$op" -t "$t" -d "$DURATION" "$POOL_NVBLK") ;;
	nvblk-go) cmd=("$BIN/nvblk" bench --op "$op" --threads "$t" --duration "$DURATION" "$POOL_NVBLK") ;;
	esac
	wait_idle
	b0=$(busy_jiffies)
	line=$(/usr/bin/time -f '%e %U %S' -o "$DIR/time.out" "${cmd[@]}" 2>>"$LOG")
	b1=$(busy_jiffies)
	others=$(awk -v b="$((b1 - b0))" -v hz="$HZ" '{o = (b / hz - $2 - $3) / $1; if (o < 0) o = 0; printf "%.2f", o}' "$DIR/time.out")
	printf '%-11s %s  others=%s\n' "$impl" "$line" "$others"
	echo "$round $op $t $impl $(field ops_per_s <<<"$line") $others" >>"$RES"
}

echo "== nvblk's libpmemblk.so.1 (C ABI) vs PMDK's libpmemblk: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "host: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1), kernel $(uname -r)"
echo "tools: $(go version | cut -d' ' -f3), gcc $(gcc -dumpfullversion), libpmemblk $(dpkg-query -W -f='${Version}' libpmemblk1 2>/dev/null || echo '?'), nvblk $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+local changes')"
echo "setup: $DIR, PMEM_IS_PMEM_FORCE=1, size $SIZE, 4096-byte blocks, duration $DURATION, rounds $RUNS, threads $THREADS"
echo
echo "== create and fill"
echo "libpmemblk  $("$BIN/blkbench" fill -s "$SIZE" "$POOL_PMDK" 2>>"$LOG")"
echo "nvblk-capi  $(LD_LIBRARY_PATH=$LIB "$BIN/blkbench" fill -s "$SIZE" "$POOL_NVBLK" 2>>"$LOG")"
echo

impls=(libpmemblk nvblk-capi nvblk-go)
for op in $OPS; do
	ths=$THREADS
	[ "$op" = fill ] && ths=1
	for t in $ths; do
		echo "== $op, $t thread(s)"
		for ((r = 0; r < RUNS; r++)); do
			for ((i = 0; i < 3; i++)); do
				run "$r" "$op" "$t" "${impls[$(((r + i) % 3))]}"
			done
		done
	done
done
echo

echo "== after the runs: pmempool check -v (nvblk's pool): $(pmempool check -v "$POOL_NVBLK" 2>&1 | tail -n1)"
echo
# ratios OP T A B: per round A/B in ops/s, one per line.
ratios() {
	awk -v o="$1" -v t="$2" -v a="$3" -v b="$4" '$2==o && $3==t && $4==a {x[$1]=$5} $2==o && $3==t && $4==b {y[$1]=$5}
		END {for (r in x) if (r in y && y[r] > 0) printf "%.3f\n", x[r] / y[r]}' "$RES"
}
med() { awk -v o="$1" -v t="$2" -v i="$3" '$2==o && $3==t && $4==i {print $5}' "$RES" | median; }
maxothers() { awk -v o="$1" -v t="$2" '$2==o && $3==t && $6 > m {m=$6} END {printf "%.2f", m}' "$RES"; }
echo "== summary: ops/s medians over $RUNS rounds; ratios are medians of the per-round ratios"
printf '%-6s %3s | %12s %12s %12s | %-22s %-20s | %s\n' op thr libpmemblk nvblk-capi nvblk-go "capi/libpmemblk" "capi/go" "others(max)"
for op in $OPS; do
	ths=$THREADS
	[ "$op" = fill ] && ths=1
	for t in $ths; do
		rp=$(ratios "$op" "$t" nvblk-capi libpmemblk | median)
		rg=$(ratios "$op" "$t" nvblk-capi nvblk-go | median)
		rpr=$(ratios "$op" "$t" nvblk-capi libpmemblk | sort -g | awk 'NR==1 {lo=$1} {hi=$1} END {printf "%.2f-%.2f", lo, hi}')
		printf '%-6s %3s | %12.0f %12.0f %12.0f | %-22s %-20s | %s\n' "$op" "$t" "$(med "$op" "$t" libpmemblk)" \
			"$(med "$op" "$t" nvblk-capi)" "$(med "$op" "$t" nvblk-go)" "$rp ($rpr)" "$rg" "$(maxothers "$op" "$t")"
	done
done
echo
echo "time spent waiting for an idle machine: ${busy_spent}s (budget ${BUSY_BUDGET}s)"
echo
echo "== diagnostics (stderr of the runs)"
cat "$LOG"
