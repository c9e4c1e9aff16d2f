# guest_lib.sh: shell helpers of the nvblk kernel-interop guest (busybox ash).
#
# The host (kernel_test.go) boots a Linux guest under qemu with one nvdimm per
# test image and hands it a job script (/job.sh) made of calls to these
# helpers. Everything the host needs comes back on the serial console, one
# record per line:
#
#   @@R <disk> <key> <values...>   a result the host checks
#   @@L <disk> <text...>           a log line the host shows
#   @@E <disk> <text...>           an unexpected guest-side failure (the test fails)
#   @@K <text...>                  a kernel log line (filtered dmesg)
#   @@P <uptime> <phase...>        a phase of the job starts (timing)
#   @@REQ <verb> <args...>         a request to the host (mce <physical address>)
#
# <disk> is qemu's nvdimm slot: `-device nvdimm,slot=K` gives the DIMM the
# NFIT handle K+1, which is how the guest finds disk K in sysfs. Sector I/O
# goes through /bin/guestio (exact O_DIRECT single bios, see guestio/main.go).
#
# Process creation is slow under TCG, so the sysfs lookups use the shell's
# own `read` rather than `cat` and command substitution.

ND=/sys/bus/nd/devices

nv_r() { echo "@@R $*"; }
nv_l() { echo "@@L $*"; }
nv_e() { echo "@@E $*"; }
nv_phase() {
	read -r up _ </proc/uptime
	echo "@@P $up $*"
}

# nv_dump K FILE: show a command's output as log lines.
nv_dump() {
	while IFS= read -r line; do nv_l "$1" "$line"; done <"$2"
}

# rd VAR FILE: VAR = the first line of FILE ("" if unreadable).
rd() {
	eval "$1="
	[ -r "$2" ] && read -r "$1" <"$2"
	return 0
}

# nv_modules LIST: insmod the modules LIST names (paths, dependencies first;
# the host resolved modules.dep).
nv_modules() {
	while read -r m; do
		insmod "/$m" || nv_e - "insmod $m failed"
	done <"$1"
}

# nv_wait_dimms N: wait until the nfit driver registered N DIMMs and their
# regions, then until the nd bus finished probing.
nv_wait_dimms() {
	i=0
	while :; do
		n=0 r=0
		for d in $ND/nmem*; do [ -e "$d/nfit/handle" ] && n=$((n + 1)); done
		for d in $ND/region*; do [ -e "$d/mapping0" ] && r=$((r + 1)); done
		[ $n -ge "$1" ] && [ $r -ge "$1" ] && break
		i=$((i + 1))
		if [ $i -gt 300 ]; then
			nv_e - "only $n DIMMs and $r regions of $1 after 30 s"
			break
		fi
		sleep 0.1
	done
	rd _ $ND/ndbus0/wait_probe
}

# nv_find K: set NMEM, REGION, NS, BTT and DEV (the /dev/pmemNs block
# device) for disk K; each is empty when it does not exist.
nv_find() {
	NMEM= REGION= NS= BTT= DEV=
	for d in $ND/nmem*; do
		rd h "$d/nfit/handle"
		if [ -n "$h" ] && [ $((h)) -eq $(($1 + 1)) ]; then
			NMEM=${d##*/}
			break
		fi
	done
	[ -n "$NMEM" ] || return 0
	for r in $ND/region*; do
		rd m "$r/mapping0"
		case "$m" in "$NMEM",*)
			REGION=${r##*/}
			break
			;;
		esac
	done
	[ -n "$REGION" ] || return 0
	for n in $ND/$REGION/namespace*; do
		rd s "$n/size"
		if [ -n "$s" ] && [ "$s" != 0 ]; then
			NS=${n##*/}
			break
		fi
	done
	[ -n "$NS" ] || return 0
	for b in $ND/btt*; do
		rd c "$b/namespace"
		if [ "$c" = "$NS" ]; then
			BTT=${b##*/}
			break
		fi
	done
	[ -n "$BTT" ] || return 0
	for d in $ND/$BTT/block/*; do
		[ -e "$d" ] && DEV=/dev/${d##*/}
	done
	return 0
}

# nv_info K: report what the kernel made of disk K.
nv_info() {
	k=$1
	nv_find "$k"
	if [ -z "$REGION" ]; then
		nv_e "$k" "no region for nmem handle $((k + 1))"
		return 1
	fi
	rd res $ND/$REGION/resource
	rd size $ND/$REGION/size
	nv_r "$k" region "$REGION" "$res" "$size"
	if [ -z "$NS" ]; then
		nv_r "$k" namespace none
		return 0
	fi
	rd res $ND/$NS/resource
	rd size $ND/$NS/size
	rd uuid $ND/$NS/uuid
	rd mode $ND/$NS/mode
	nv_r "$k" namespace "$NS" "${res:--}" "$size" "${uuid:--}" "${mode:--}"
	if [ -z "$BTT" ]; then
		nv_r "$k" btt none
		return 0
	fi
	rd uuid $ND/$BTT/uuid
	# sector_size lists the supported sizes with the current one in brackets.
	rd sizes $ND/$BTT/sector_size
	ss=${sizes#*\[}
	ss=${ss%%\]*}
	sz=
	[ -n "$DEV" ] && rd sz "/sys/block/${DEV#/dev/}/size"
	nv_r "$k" btt "$BTT" "$uuid" "${ss:--}" "${DEV:--}" "${sz:--}"
	for f in log_index_0 log_index_1; do
		rd v /sys/kernel/debug/btt/$BTT/arena0/$f
		[ -n "$v" ] && nv_r "$k" debugfs "$f" "$v"
	done
	return 0
}

# nv_mksector_io K SS: let the kernel lay out a BTT (1.1, sector size SS) on
# disk K's label-less namespace.
nv_mksector_io() {
	nv_find "$1"
	if [ -z "$NS" ]; then
		nv_e "$1" "no namespace to reconfigure"
		return 1
	fi
	if ! ndctl create-namespace -f -e "$NS" -m sector -l "$2" >/tmp/mk 2>&1; then
		nv_e "$1" "ndctl create-namespace -e $NS -m sector -l $2 failed"
		nv_dump "$1" /tmp/mk
		return 1
	fi
}

# nv_mksector_labels K SS: write v1.2 namespace labels on disk K's label area
# and create a labelled sector namespace (the kernel lays out a BTT 2.0).
nv_mksector_labels() {
	nv_find "$1"
	if [ -z "$REGION" ]; then
		nv_e "$1" "no region"
		return 1
	fi
	{
		ndctl disable-region "$REGION" &&
			ndctl init-labels -f -V 1.2 "$NMEM" &&
			ndctl enable-region "$REGION" &&
			ndctl create-namespace -r "$REGION" -m sector -l "$2"
	} >/tmp/mk 2>&1 || {
		nv_e "$1" "labelled sector namespace on $REGION ($NMEM) failed"
		nv_dump "$1" /tmp/mk
		return 1
	}
}

# nv_ndctl_ns K: what ndctl list -N -v says of disk K's namespace, as one
# record (the JSON with its whitespace removed).
nv_ndctl_ns() {
	nv_find "$1"
	if [ -z "$NS" ]; then
		nv_e "$1" "no namespace to list"
		return 1
	fi
	ndctl list -N -v -n "$NS" >/tmp/l 2>&1
	nv_r "$1" ndctl "$(tr -d ' \t\n' </tmp/l)"
}

# nv_dev K: set DEV, or report that disk K has no sector device.
nv_dev() {
	nv_find "$1"
	if [ -z "$DEV" ]; then
		nv_e "$1" "no sector-mode block device (namespace '$NS', btt '$BTT')"
		return 1
	fi
}

# nv_write K SS SEED [taskset -c CPU] -- LBA:GEN[:COUNT]...: O_DIRECT writes,
# one bio per item, optionally pinned to a CPU (nd_btt's lane is the CPU).
nv_write() {
	k=$1 ss=$2 seed=$3
	shift 3
	pin=
	if [ "$1" = cpu ]; then
		pin="taskset -c $2"
		shift 2
	fi
	nv_find "$k"
	$pin guestio write "$k" "$DEV" "$ss" "$seed" "$@"
}

# nv_sectors K SS LBA...: O_DIRECT single-sector reads: @@R K sector LBA SHA256|EIO.
nv_sectors() {
	k=$1 ss=$2
	shift 2
	nv_find "$k"
	guestio read "$k" "$DEV" "$ss" "$@"
}

# nv_scan K SS [cached]: read the whole exported device with O_DIRECT, one
# sector per bio segment, and report every sector that is not all zeroes
# (@@R K nz LBA SHA256, then @@R K scan SECTORS NONZERO); with "cached", once
# more through the page cache (page-sized segments of several 512-byte
# sectors): cnz and cscan records.
nv_scan() {
	nv_find "$1"
	guestio scan "$1" "$DEV" "$2"
	[ "$3" = cached ] && guestio cscan "$1" "$DEV" "$2"
	return 0
}

# nv_poison K NSOFF: have the host inject an uncorrectable memory error
# (machine check) at byte NSOFF of disk K's namespace, and wait until the
# kernel lists it as a badblock of the region.
nv_poison() {
	nv_find "$1"
	if [ -z "$NS" ]; then
		nv_e "$1" "no namespace to poison"
		return 1
	fi
	rd base $ND/$NS/resource
	addr=$(printf '0x%x' $((base + $2)))
	echo "@@REQ mce $addr"
	i=0
	while :; do
		rd bb $ND/$REGION/badblocks
		[ -n "$bb" ] && break
		i=$((i + 1))
		if [ $i -gt 300 ]; then
			nv_e "$1" "no badblock 30 s after the machine check at $addr"
			return 1
		fi
		sleep 0.1
	done
	nv_r "$1" poisoned "$addr" "$bb"
}

# nv_check K: disable disk K's namespace and run ndctl check-namespace on it.
nv_check() {
	nv_find "$1"
	if [ -z "$NS" ]; then
		nv_e "$1" "no namespace to check"
		return 1
	fi
	ndctl disable-namespace "$NS" >/tmp/c 2>&1
	ndctl check-namespace "$NS" >>/tmp/c 2>&1
	rc=$?
	while IFS= read -r line; do nv_r "$1" checkmsg "$line"; done </tmp/c
	nv_r "$1" check "$rc"
}

# nv_nparts DEV: NPARTS = the number of partitions the kernel has on block
# device DEV.
nv_nparts() {
	NPARTS=0
	for p in /sys/block/$1/$1*; do
		[ -e "$p/partition" ] && NPARTS=$((NPARTS + 1))
	done
	return 0
}

# nv_wait_parts K DEV N: wait (up to 10 s) until block device DEV exists with
# N partitions.
nv_wait_parts() {
	i=0
	while :; do
		nv_nparts "$2"
		[ "$NPARTS" -ge "$3" ] && return 0
		i=$((i + 1))
		if [ $i -gt 100 ]; then
			nv_e "$1" "/sys/block/$2: $NPARTS partitions after 10 s, want $3"
			return 1
		fi
		sleep 0.1
	done
}

# nv_parts K DEV: the partitions the kernel's table parser found on DEV:
# @@R K disk DEV SECTORS, then @@R K part DEV N START SIZE NAME for each
# (sysfs start and size in 512-byte sectors; NAME is the uevent PARTNAME,
# the GPT partition name, or -).
nv_parts() {
	rd sz "/sys/block/$2/size"
	nv_r "$1" disk "$2" "${sz:--}"
	for p in /sys/block/$2/$2*; do
		[ -e "$p/partition" ] || continue
		rd n "$p/partition"
		rd st "$p/start"
		rd sz "$p/size"
		name=-
		while IFS='=' read -r key val; do
			[ "$key" = PARTNAME ] && name=$val
		done <"$p/uevent"
		nv_r "$1" part "$2" "$n" "$st" "$sz" "$name"
	done
}

# nv_losetup K SRC FILE N: copy block device SRC to FILE (tmpfs) and attach
# it with busybox `losetup -P -f` (the kernel scans the loop device's
# partition table); set LOOP (loopN), report @@R K losetup LOOP FILE and
# wait for N partitions.
nv_losetup() {
	LOOP=
	if ! dd if="$2" of="$3" bs=1M 2>/tmp/dd; then
		nv_e "$1" "dd $2 to $3 failed"
		nv_dump "$1" /tmp/dd
		return 1
	fi
	if ! losetup -P -f "$3" >/tmp/lo 2>&1; then
		nv_e "$1" "losetup -P -f $3 failed"
		nv_dump "$1" /tmp/lo
		return 1
	fi
	for b in /sys/block/loop*; do
		rd f "$b/loop/backing_file"
		if [ "$f" = "$3" ]; then
			LOOP=${b##*/}
			break
		fi
	done
	if [ -z "$LOOP" ]; then
		nv_e "$1" "losetup -P -f $3: no loop device has it as its backing file"
		return 1
	fi
	nv_r "$1" losetup "$LOOP" "$3"
	nv_wait_parts "$1" "$LOOP" "$4"
}

# nv_dmesg: the kernel's nvdimm/BTT/machine-check messages.
nv_dmesg() {
	dmesg | grep -iE 'nd_|btt|nvdimm|nfit|pmem|mce|machine check|memory failure|hardware error|badblock|virtio_blk| vd[a-z]|loop[0-9]|gpt' |
		while IFS= read -r line; do echo "@@K $line"; done
}
