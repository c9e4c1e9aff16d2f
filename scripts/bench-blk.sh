#!/usr/bin/env bash
# bench-blk.sh: nvblk against PMDK's libpmemblk, the same workload on the
# same machine, plus the physical floors (raw 4 KiB persistent copies).
#
# Installs what it needs (gcc, libpmemblk-dev, libpmem-dev, pmdk-tools, time)
# when missing, builds bench/blkbench.c and nvblk, then on tmpfs:
#   1. creates a pmemblk pool and an nvblk image (BTT 1.1, 4096-byte
#      sectors) of $SIZE and fills both (every block written once);
#   2. times `pmempool check` against `nvblk check` on the filled images;
#   3. runs fill (every block once, 1 thread) and random 4 KiB write and
#      read for each thread count, $RUNS runs of $DURATION each, alternating
#      libpmemblk and nvblk run by run;
#   4. runs the raw floors (bench/blkbench raw-*) on a plain $SIZE file;
#   5. notes peak resident memory of `nvblk bench` on $SIZE and $BIG_SIZE;
#   6. takes a CPU profile of `nvblk bench --op write --threads 1`;
# and prints a table of medians and ratios. Everything runs with
# PMEM_IS_PMEM_FORCE=1 (CPU cache flushes on tmpfs, as PMDK's benchmarks).
#
# Environment (defaults): DURATION=3s RUNS=3 THREADS="1 2" OPS="write read"
# SIZE=1G BIG_SIZE=4G (empty: skip) RAW_MODES="raw-nvblk-write raw-nvblk-read raw-nt raw-btt raw-store raw-load"
# CHECK_RUNS=3 PROFILE=1 BENCH_DIR=/dev/shm KEEP=0 (1: keep the images);
# on a shared machine: IDLE_WAIT=30 MAX_OTHERS=0.15 RETRIES=3 BUSY_BUDGET=600
# (see measure below). A full run on an idle 2-core machine takes about four
# minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-3s}
RUNS=${RUNS:-3}
THREADS=${THREADS:-"1 2"}
OPS=${OPS:-"write read"}
SIZE=${SIZE:-1G}
BIG_SIZE=${BIG_SIZE-4G}
RAW_MODES=${RAW_MODES:-"raw-nvblk-write raw-nvblk-read raw-nt raw-btt raw-store raw-load"}
CHECK_RUNS=${CHECK_RUNS:-3}
PROFILE=${PROFILE:-1}
KEEP=${KEEP:-0}
export PMEM_IS_PMEM_FORCE=1

# --- dependencies -----------------------------------------------------------
scripts/install-deps.sh gcc libc6-dev libpmemblk-dev libpmem-dev pmdk-tools time
command -v go >/dev/null || { echo "bench-blk: go is needed to build nvblk" >&2; exit 1; }

DIR=$(mktemp -d "${BENCH_DIR:-/dev/shm}/nvblk-bench.XXXXXX")
cleanup() {
	if [ "$KEEP" = 1 ]; then
		echo "kept $DIR" >&2
	else
		rm -rf "$DIR"
	fi
}
trap cleanup EXIT
BIN=$DIR/bin
mkdir -p "$BIN"
LOG=$DIR/stderr.log
: >"$LOG"

gcc -O2 -Wall -pthread -o "$BIN/blkbench" bench/blkbench.c -lpmemblk -lpmem
go build -o "$BIN/nvblk" ./cmd/nvblk

POOL=$DIR/pool.blk
IMG=$DIR/nvblk.img
RAWF=$DIR/raw.bin
RES=$DIR/results.txt # impl op threads ops_per_s mb_per_s ns_per_op others
: >"$RES"

bytes() { # 1G -> bytes
	local s=${1^^}
	s=${s%B}
	s=${s%I}
	case $s in
	*K) echo $((${s%K} << 10)) ;; *M) echo $((${s%M} << 20)) ;;
	*G) echo $((${s%G} << 30)) ;; *T) echo $((${s%T} << 40)) ;; *) echo "$s" ;;
	esac
}
field() { sed -n "s/.*[ {\"]$1[\"]*[=:]\([0-9.]*\).*/\1/p" | head -n1; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
med() { awk -v i="$1" -v o="$2" -v t="$3" -v c="$4" '$1==i && $2==o && $3==t {print $c}' "$RES" | median; }
# maxothers OP THREADS IMPL...: the most cores other processes used in any run of a point.
maxothers() {
	local o=$1 t=$2
	shift 2
	awk -v o="$o" -v t="$t" -v impls=" $* " 'index(impls, " " $1 " ") && $2==o && $3==t && $7 > m {m = $7} END {printf "%.2f", m}' "$RES"
}
ms_now() { date +%s%N; }

need_kib=$((($(bytes "$SIZE") * 3 + $(bytes "${BIG_SIZE:-0}")) / 1024 + 262144))
free_kib=$(df -Pk "$DIR" | awk 'NR==2 {print $4}')
if [ -n "$BIG_SIZE" ] && ((free_kib < need_kib)); then
	echo "bench-blk: $free_kib KiB free in $DIR, skipping the $BIG_SIZE memory note" >&2
	BIG_SIZE=""
fi

# Other processes on the machine (tests of other work running at the same
# time) steal cores from a benchmark. Before each measured run wait up to
# $IDLE_WAIT seconds for the machine to be idle; after it, record how many
# cores others used meanwhile ("others=": busy time in /proc/stat less the
# run's own CPU time, over its wall time). A run with others above
# $MAX_OTHERS is discarded and repeated, up to $RETRIES times. Waiting and
# repeating stop once $BUSY_BUDGET seconds have gone to them: from then on
# every run counts, and its others= tells how much it was disturbed.
IDLE_WAIT=${IDLE_WAIT:-30}
MAX_OTHERS=${MAX_OTHERS:-0.15}
RETRIES=${RETRIES:-3}
BUSY_BUDGET=${BUSY_BUDGET:-600}
busy_spent=0
HZ=$(getconf CLK_TCK)
busy_jiffies() { awk '/^cpu / {print $2+$3+$4+$7+$8+$9}' /proc/stat; }
wait_idle() {
	local t0=$SECONDS b0 b1
	((busy_spent < BUSY_BUDGET)) || return 0
	while ((SECONDS - t0 < IDLE_WAIT)); do
		b0=$(busy_jiffies)
		sleep 0.5
		b1=$(busy_jiffies)
		# busy below 0.15 of a core over the half second
		if (((b1 - b0) * 200 < 15 * HZ)); then
			break
		fi
	done
	busy_spent=$((busy_spent + SECONDS - t0))
}
# measure IMPL CMD...: runs CMD (which prints one result line) and records it.
measure() {
	local impl=$1 line b0 b1 others try t0
	shift
	for ((try = 0; ; try++)); do
		wait_idle
		t0=$SECONDS
		b0=$(busy_jiffies)
		line=$(/usr/bin/time -f '%e %U %S' -o "$DIR/time.out" "$@" 2>>"$LOG")
		b1=$(busy_jiffies)
		others=$(awk -v b="$((b1 - b0))" -v hz="$HZ" '{o = (b / hz - $2 - $3) / $1; if (o < 0) o = 0; printf "%.2f", o}' "$DIR/time.out")
		if ((try >= RETRIES || busy_spent >= BUSY_BUDGET)) || awk -v o="$others" -v m="$MAX_OTHERS" 'BEGIN {exit !(o <= m)}'; then
			break
		fi
		busy_spent=$((busy_spent + SECONDS - t0))
		printf '%-10s %s  others=%s  (discarded: machine busy, repeating)\n' "$impl" "$line" "$others"
	done
	record "$impl" "$line" "$others"
}
# record IMPL LINE [OTHERS]: prints the line and stores its numbers.
record() {
	local impl=$1 line=$2 others=${3:-0} op th
	printf '%-10s %s%s\n' "$impl" "$line" "${3:+  others=$3}"
	op=$(sed -n 's/^op=\([a-z-]*\) .*/\1/p' <<<"$line")
	th=$(field threads <<<"$line")
	echo "$impl $op $th $(field ops_per_s <<<"$line") $(field mb_per_s <<<"$line") $(field ns_per_op <<<"$line") $others" >>"$RES"
}
peer() { measure libpmemblk "$BIN/blkbench" "$1" -t "$2" -d "$DURATION" "$POOL"; }
nvb() { measure nvblk "$BIN/nvblk" bench --op "$1" --threads "$2" --duration "$DURATION" "$IMG"; }

echo "== nvblk vs libpmemblk: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "host: $(nproc) CPUs, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), kernel $(uname -r)"
echo "flush: $(grep -o -w -m1 -E 'clwb' /proc/cpuinfo | head -n1 || true) $(grep -o -w -m1 'clflushopt' /proc/cpuinfo | head -n1 || true) $(grep -o -w -m1 'avx2' /proc/cpuinfo | head -n1 || true)"
echo "tools: $(go version | cut -d' ' -f3), gcc $(gcc -dumpfullversion), libpmemblk $(dpkg-query -W -f='${Version}' libpmemblk1 2>/dev/null || echo '?'), nvblk $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo '+local changes')"
echo "setup: $DIR ($(df -P "$DIR" | awk 'NR==2 {print $1}')), PMEM_IS_PMEM_FORCE=1, size $SIZE, 4096-byte blocks, duration $DURATION, runs $RUNS, threads $THREADS, prefaulted"
echo

# --- 1. create and fill -------------------------------------------------------
# Both devices are filled before anything is measured, so that reads read
# data blocks on both sides; the fill itself is measured with the others.
echo "== setup: create, then write every block once"
echo "libpmemblk $("$BIN/blkbench" fill -t 1 -s "$SIZE" -b 4096 "$POOL" 2>>"$LOG")"
echo "nvblk      $("$BIN/nvblk" bench --op fill --threads 1 --create-size "$SIZE" --sector-size 4096 --json "$IMG" 2>>"$LOG")"
echo

# --- 2. offline check ---------------------------------------------------------
echo "== check of the filled $SIZE images"
: >"$DIR/check.txt"
for ((r = 1; r <= CHECK_RUNS; r++)); do
	wait_idle
	t0=$(ms_now)
	pmempool check "$POOL" >"$DIR/pcheck.out" 2>&1 || { cat "$DIR/pcheck.out"; echo "pmempool check failed" >&2; exit 1; }
	t1=$(ms_now)
	"$BIN/nvblk" check "$IMG" >"$DIR/ncheck.out" 2>&1 || { cat "$DIR/ncheck.out"; echo "nvblk check failed" >&2; exit 1; }
	t2=$(ms_now)
	printf 'run %d: pmempool check %.3f s, nvblk check %.3f s\n' "$r" "$(((t1 - t0) / 1000))e-6" "$(((t2 - t1) / 1000))e-6"
	echo "$(((t1 - t0) / 1000)) $(((t2 - t1) / 1000))" >>"$DIR/check.txt"
done
echo "pmempool check -v says: $(pmempool check -v "$POOL" 2>&1 | tail -n1)"
echo "nvblk check says: $(head -c 300 "$DIR/ncheck.out" | tr '\n' ' ')"
pc_us=$(awk '{print $1}' "$DIR/check.txt" | median)
nc_us=$(awk '{print $2}' "$DIR/check.txt" | median)
echo

# --- 3. random 4 KiB, alternating ---------------------------------------------
echo "== fill (every block once, sequential, 1 thread) and random 4 KiB ($DURATION), $RUNS runs per point, alternating libpmemblk and nvblk"
for op in fill $OPS; do
	ths=$THREADS
	[ "$op" = fill ] && ths=1
	for t in $ths; do
		for ((r = 1; r <= RUNS; r++)); do
			if ((r % 2)); then
				peer "$op" "$t"
				nvb "$op" "$t"
			else
				nvb "$op" "$t"
				peer "$op" "$t"
			fi
		done
	done
done
echo

# --- 4. raw floors --------------------------------------------------------------
echo "== raw floors on a plain $SIZE file (random 4 KiB-aligned offsets)"
for m in $RAW_MODES; do
	for t in $THREADS; do
		for ((r = 1; r <= RUNS; r++)); do
			measure raw "$BIN/blkbench" "$m" -t "$t" -d "$DURATION" -s "$SIZE" "$RAWF"
		done
	done
done
echo

# --- 5. resident memory -----------------------------------------------------------
echo "== peak resident memory (prefaulted: the whole mapping is resident; rss_anon is nvblk's own memory)"
mem_note() { # LABEL CMD...
	local label=$1 out
	shift
	out=$(/usr/bin/time -f 'maxrss_kib=%M' "$@" 2>&1 >"$DIR/mem.out" | grep maxrss_kib || true)
	printf '%-34s %s' "$label" "$out"
	if grep -q vm_hwm_kib "$DIR/mem.out"; then
		printf ' vm_hwm_kib=%s rss_anon_kib=%s rss_shmem_kib=%s' "$(field vm_hwm_kib <"$DIR/mem.out")" \
			"$(field rss_anon_kib <"$DIR/mem.out")" "$(field rss_shmem_kib <"$DIR/mem.out")"
	fi
	echo
}
mem_note "nvblk bench read $SIZE" "$BIN/nvblk" bench --op read --duration 1s --json "$IMG"
mem_note "nvblk bench read $SIZE --prefault=false" "$BIN/nvblk" bench --op read --duration 1s --prefault=false --json "$IMG"
mem_note "libpmemblk read $SIZE" "$BIN/blkbench" read -d 1s "$POOL"
if [ -n "$BIG_SIZE" ]; then
	# The 1 GiB pool and raw file are no longer needed: make room.
	rm -f "$RAWF"
	"$BIN/nvblk" bench --op write --duration 100ms --create-size "$BIG_SIZE" "$DIR/big.img" >/dev/null 2>>"$LOG"
	mem_note "nvblk bench read $BIG_SIZE" "$BIN/nvblk" bench --op read --duration 1s --json "$DIR/big.img"
	mem_note "nvblk bench write $BIG_SIZE" "$BIN/nvblk" bench --op write --duration 1s --json "$DIR/big.img"
	rm -f "$DIR/big.img"
fi
echo

# --- integrity after all the writes ---------------------------------------------
echo "== after the runs: pmempool check -v: $(pmempool check -v "$POOL" 2>&1 | tail -n1); nvblk check: $("$BIN/nvblk" check "$IMG" 2>&1 | head -n1)"
echo

# --- 6. profile -----------------------------------------------------------------
if [ "$PROFILE" = 1 ]; then
	echo "== CPU profile: nvblk bench --op write --threads 1 --duration $DURATION"
	"$BIN/nvblk" bench --op write --threads 1 --duration "$DURATION" --cpuprofile "$DIR/write.prof" "$IMG" 2>>"$LOG"
	go tool pprof -top -nodecount=30 "$BIN/nvblk" "$DIR/write.prof" 2>/dev/null | sed -n '1,40p'
	if [ "$KEEP" = 1 ]; then echo "profile: $DIR/write.prof"; fi
	echo
fi

# --- summary ----------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
echo "== summary (medians of $RUNS runs of $DURATION; ops/s, MB/s = 10^6 bytes/s, ns/op = elapsed x threads / ops)"
echo "   others(max): the most CPU cores other processes used during any run of the point; above ~0.1 the"
echo "   point (the 2-thread ones above all) was measured on a shared machine and understates the scaling"
printf '%-6s %3s | %12s %9s %7s | %12s %9s %7s | %-16s | %s\n' op thr "libpmemblk" "MB/s" "ns/op" "nvblk" "MB/s" "ns/op" "nvblk/libpmemblk" "others(max)"
for op in fill $OPS; do
	ths=$THREADS
	[ "$op" = fill ] && ths=1
	for t in $ths; do
		pb=$(med libpmemblk "$op" "$t" 4)
		nb=$(med nvblk "$op" "$t" 4)
		printf '%-6s %3s | %12.0f %9.1f %7.0f | %12.0f %9.1f %7.0f | %-16s | %s\n' "$op" "$t" \
			"$pb" "$(med libpmemblk "$op" "$t" 5)" "$(med libpmemblk "$op" "$t" 6)" \
			"$nb" "$(med nvblk "$op" "$t" 5)" "$(med nvblk "$op" "$t" 6)" "$(ratio "$nb" "$pb")" \
			"$(maxothers "$op" "$t" libpmemblk nvblk)"
	done
done
echo
echo "raw floors:"
printf '%-10s %3s | %12s %9s %7s | %s\n' mode thr "ops/s" "MB/s" "ns/op" "others(max)"
for m in $RAW_MODES; do
	for t in $THREADS; do
		printf '%-10s %3s | %12.0f %9.1f %7.0f | %s\n' "$m" "$t" "$(med raw "$m" "$t" 4)" "$(med raw "$m" "$t" 5)" \
			"$(med raw "$m" "$t" 6)" "$(maxothers "$m" "$t" raw)"
	done
done
echo
echo "against the floors (ops/s ratios; 1.00 = at the floor):"
for t in $THREADS; do
	for pair in "write raw-nvblk-write" "read raw-nvblk-read" "write raw-nt" "write raw-btt" "read raw-load"; do
		# shellcheck disable=SC2086 # split "op mode"
		set -- $pair
		case " $OPS " in *" $1 "*) ;; *) continue ;; esac
		case " $RAW_MODES " in *" $2 "*) ;; *) continue ;; esac
		f=$(med raw "$2" "$t" 4)
		printf '  %-5s t=%s vs %-15s  nvblk %s   libpmemblk %s\n' "$1" "$t" "$2" \
			"$(ratio "$(med nvblk "$1" "$t" 4)" "$f")" "$(ratio "$(med libpmemblk "$1" "$t" 4)" "$f")"
	done
done
echo
# shellcheck disable=SC2086 # split the thread counts
set -- $THREADS
if (($# > 1)); then
	t0=$1
	echo "thread scaling (ops/s at t threads / ops/s at $t0 thread):"
	for op in $OPS; do
		for t in $THREADS; do
			[ "$t" = "$t0" ] && continue
			printf '  %-5s %s->%s  libpmemblk %s   nvblk %s\n' "$op" "$t0" "$t" \
				"$(ratio "$(med libpmemblk "$op" "$t" 4)" "$(med libpmemblk "$op" "$t0" 4)")" \
				"$(ratio "$(med nvblk "$op" "$t" 4)" "$(med nvblk "$op" "$t0" 4)")"
		done
	done
	for m in $RAW_MODES; do
		for t in $THREADS; do
			[ "$t" = "$t0" ] && continue
			printf '  %-9s %s->%s  %s\n' "$m" "$t0" "$t" "$(ratio "$(med raw "$m" "$t" 4)" "$(med raw "$m" "$t0" 4)")"
		done
	done
	echo
fi
printf 'check of a filled %s image (median of %d): pmempool check %.3f s, nvblk check %.3f s, nvblk/pmempool time %s\n' \
	"$SIZE" "$CHECK_RUNS" "${pc_us}e-6" "${nc_us}e-6" "$(ratio "$nc_us" "$pc_us")"
echo
echo "time spent waiting for an idle machine and repeating disturbed runs: ${busy_spent}s (budget ${BUSY_BUDGET}s)"
echo
echo "== diagnostics (stderr of the runs: creation, prefault time, page faults during each blkbench measurement)"
cat "$LOG"
