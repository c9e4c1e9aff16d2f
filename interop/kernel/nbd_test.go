package kernel_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/nbd"
)

// flushCounter counts the server's device flushes (NBD_CMD_FLUSH, and
// NBD_CMD_FLAG_FUA on other commands).
type flushCounter struct {
	*btt.BTT
	flushes atomic.Int64
}

func (f *flushCounter) Flush() error {
	f.flushes.Add(1)
	return f.BTT.Flush()
}

// The guest's disk numbers for /dev/nbd0 and /dev/nbd1 in the report.
const nbdDisk, nbdFSDisk = 50, 51

// TestKernelNBDClient: Linux's own NBD client (nbd.ko, set up through its
// ioctls by guestio after a fixed-newstyle NBD_OPT_GO handshake) uses a
// BTT exported by nvblk's NBD server over TCP. qemu's user network
// (restricted: the guest reaches nothing but the forwarded ports) carries
// the guest's connections to 10.0.2.100:10809 and :10810 to the server on
// the host's 127.0.0.1. The guest reads what nvblk wrote, writes (single
// and multi-sector bios), writes with O_DSYNC (FUA) and fsyncs (FLUSH),
// both seen as device flushes on the server, discards a range
// (NBD_CMD_TRIM), reads everything back and disconnects (NBD_CMD_DISC);
// afterwards nvblk reads the guest's writes and zeroes from the BTT, which
// must check clean. A second export carries an ext2 file system made,
// filled and remounted by the guest, which the host checks (checkGuestFS).
func TestKernelNBDClient(t *testing.T) {
	h := newHarness(t)
	im := newImage("nbd-4096", 4096, 4096)
	im.path = filepath.Join(h.dir, "nbd.img")
	o := createImage(t, im, btt.V11)
	n := o.Sectors()
	writeNvblk(t, im, o,
		write{LBA: 0, Gen: 1}, write{LBA: 1, Gen: 1}, write{LBA: 40, Gen: 1, Count: 3},
		write{LBA: 70, Gen: 1, Count: 2}, write{LBA: n - 1, Gen: 1})

	// A second export for a file system made and mounted by the guest.
	fsIm := newImage("nbd-fs", 4096, 4096)
	fsIm.path = filepath.Join(h.dir, "nbd-fs.img")
	fsIm.nsSize = 34 * mib
	fsB := createImage(t, fsIm, btt.V11)
	defer func() { fsB.close() }()

	var logs testutil.LockedBuffer
	// qemu's guestfwd connects to the server when qemu starts, and the
	// guest's handshake comes only after it has booted (8 s on an idle
	// machine, more on a busy one): give the handshake the whole boot.
	srv := nbd.NewServer(nbd.Options{Logger: slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		HandshakeTimeout: 4 * time.Minute})
	dev := &flushCounter{BTT: o.BTT}
	if err := srv.AddExport("", "", dev, false); err != nil {
		t.Fatal(err)
	}
	if err := srv.AddExport("fs", "", fsB.BTT, false); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("nbd server shutdown: %v", err)
		}
		if err := <-served; err != nil && err != nbd.ErrServerClosed {
			t.Errorf("nbd server: %v", err)
		}
	}
	defer stop()
	port := ln.Addr().(*net.TCPAddr).Port

	guest := []write{
		{LBA: 1, Gen: 2},           // over nvblk's write
		{LBA: 5, Gen: 1, Count: 8}, // one 32 KiB bio
		{LBA: 41, Gen: 3},          // inside nvblk's multi-sector write
		{LBA: 60, Gen: 1, Count: 4},
		{LBA: n / 2, Gen: 2}, {LBA: n - 2, Gen: 1, Count: 2},
	}
	// Written with O_DSYNC: FUA writes.
	fua := []write{{LBA: 80, Gen: 1}, {LBA: 81, Gen: 1, Count: 2}}
	// Discarded: the guest's 60-63, nvblk's 70-71 and never-written 64-69.
	const trimLBA, trimCount = 60, 12
	var j jobBuilder
	j.f("nv_modules /etc/nvblk/modules.net")
	j.f("ip link set lo up && ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0")
	// Two connections (multi-conn: one hardware queue each, so the
	// writers pinned to the two vCPUs use one each).
	j.f("guestio nbd %d 10.0.2.100:10809,10.0.2.100:10811 /dev/nbd0 4096 &", nbdDisk)
	j.f("i=0; while [ \"$(cat /sys/block/nbd0/size 2>/dev/null)\" = 0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done")
	j.f("[ \"$(cat /sys/block/nbd0/size)\" != 0 ] || nv_e %d '/dev/nbd0 not connected after 30 s'", nbdDisk)
	j.f("nv_phase nbd attached")
	j.f("guestio write %d /dev/nbd0 4096 %s %s", nbdDisk, im.seed, writeList(guest))
	im.apply(guest...)
	var cpu0, cpu1 []write
	for gen := 1; gen <= 3; gen++ {
		for i := uint64(0); i < 16; i++ {
			cpu0 = append(cpu0, write{LBA: 200 + i, Gen: gen})
			cpu1 = append(cpu1, write{LBA: 300 + i, Gen: gen, Count: 2})
		}
	}
	j.f("taskset -c 0 guestio write %d /dev/nbd0 4096 %s %s & p0=$!", nbdDisk, im.seed, writeList(cpu0))
	j.f("taskset -c 1 guestio write %d /dev/nbd0 4096 %s %s & p1=$!", nbdDisk, im.seed, writeList(cpu1))
	j.f("wait $p0 $p1")
	im.apply(cpu0...)
	im.apply(cpu1...)
	j.f("guestio wsync %d /dev/nbd0 4096 %s %s", nbdDisk, im.seed, writeList(fua))
	im.apply(fua...)
	j.f("guestio fsync %d /dev/nbd0", nbdDisk)
	j.f("blkdiscard -o %d -l %d /dev/nbd0 || nv_e %d 'blkdiscard failed'", trimLBA*4096, trimCount*4096, nbdDisk)
	for i := uint64(0); i < trimCount; i++ {
		im.gens[trimLBA+i] = 0 // a discarded sector reads as zeroes
	}
	j.f("nv_phase nbd read")
	lbas := make([]string, 0, len(im.gens))
	for _, lba := range im.written() {
		lbas = append(lbas, strconv.FormatUint(lba, 10))
	}
	j.f("guestio read %d /dev/nbd0 4096 %s", nbdDisk, strings.Join(lbas, " "))
	j.f("guestio scan %d /dev/nbd0 4096", nbdDisk)
	j.f("guestio nbd-disconnect /dev/nbd0")
	j.f("wait")
	// ext2 on the second export: make, mount, write two files, unmount,
	// drop the caches, mount again and hash them (read back through NBD).
	j.f("nv_phase nbd fs")
	j.f("guestio nbd %d 10.0.2.100:10810 /dev/nbd1 4096 fs &", nbdFSDisk)
	j.f("i=0; while [ \"$(cat /sys/block/nbd1/size 2>/dev/null)\" = 0 ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done")
	j.f("[ \"$(cat /sys/block/nbd1/size)\" != 0 ] || nv_e %d '/dev/nbd1 not connected after 30 s'", nbdFSDisk)
	j.f("mke2fs -q -b 4096 /dev/nbd1 || nv_e %d 'mke2fs failed'", nbdFSDisk)
	j.f("mkdir -p /mnt && mount -t ext4 /dev/nbd1 /mnt || nv_e %d 'mount failed'", nbdFSDisk)
	j.f("dd if=/dev/urandom of=/mnt/big bs=64k count=64 2>/dev/null && dd if=/dev/urandom of=/mnt/small bs=1000 count=3 2>/dev/null")
	j.f("for f in big small; do echo \"@@R %d written $f $(sha256sum </mnt/$f | cut -d' ' -f1)\"; done", nbdFSDisk)
	j.f("umount /mnt && echo 3 >/proc/sys/vm/drop_caches")
	j.f("mount -t ext4 -o ro /dev/nbd1 /mnt || nv_e %d 'second mount failed'", nbdFSDisk)
	j.f("for f in big small; do echo \"@@R %d reread $f $(sha256sum </mnt/$f | cut -d' ' -f1)\"; done", nbdFSDisk)
	j.f("umount /mnt")
	j.f("guestio nbd-disconnect /dev/nbd1")
	j.f("wait")
	// A guestfwd rule is one stream to the server (qemu connects at start),
	// good for one guest connection: one rule per connection.
	rep := h.boot(t, "nbd", nil, j.String(),
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,"+
			"guestfwd=tcp:10.0.2.100:10809-tcp:127.0.0.1:%d,guestfwd=tcp:10.0.2.100:10811-tcp:127.0.0.1:%d,"+
			"guestfwd=tcp:10.0.2.100:10810-tcp:127.0.0.1:%d", port, port, port),
		"-device", "virtio-net-pci,netdev=n0")
	flushes := dev.flushes.Load() // before the server's own flush at shutdown
	stop()

	if r := rep.first(nbdDisk, "nbd"); len(r) != 3 || r[0] != strconv.FormatUint(n*4096, 10) || r[2] != "2" {
		t.Fatalf("the guest's NBD client reported %v, want the export's %d bytes on 2 connections", r, n*4096)
	}
	if r := rep.first(nbdDisk, "nbd-done"); len(r) != 1 || r[0] != "true" {
		t.Errorf("NBD_DO_IT did not end cleanly after the disconnect: %v", r)
	}
	// Each FUA write flushes the device once, and the fsync sends a FLUSH.
	// Each connection logs its requests when it ends: both connections of
	// the default export carried some, and the file system's one.
	busy := map[string]int{}
	for _, l := range strings.Split(logs.String(), "\n") {
		var name string
		var reqs int
		if !strings.Contains(l, `msg="nbd: connection closed"`) || !strings.HasSuffix(l, " phase=transmission") {
			continue
		}
		if i := strings.Index(l, " export="); i >= 0 {
			name, _, _ = strings.Cut(l[i+len(" export="):], " ")
		}
		if i := strings.Index(l, " requests="); i >= 0 {
			v, _, _ := strings.Cut(l[i+len(" requests="):], " ")
			reqs, _ = strconv.Atoi(v)
		}
		if reqs > 0 {
			busy[name]++
		}
	}
	if busy[`""`] != 2 || busy["fs"] != 1 {
		t.Errorf("connections that carried requests, by export: %v; want 2 for the default export and 1 for fs\n%s", busy, logs.String())
	}
	if want := int64(len(fua) + 1); flushes < want {
		t.Errorf("the server flushed the device %d times during the session, want at least %d (FUA writes and the fsync's FLUSH)", flushes, want)
	}
	t.Logf("device flushes during the session: %d", flushes)
	v := &guestView{sectors: map[uint64][]string{}, scan: parseScan(rep.Records[nbdDisk], "")}
	for _, r := range rep.Records[nbdDisk]["sector"] {
		if len(r) == 2 {
			lba, _ := strconv.ParseUint(r[0], 10, 64)
			v.sectors[lba] = append(v.sectors[lba], r[1])
		}
	}
	expectGuestReads(t, im, v, n)

	// nvblk reads the guest's writes and discards from the BTT.
	if err := o.Flush(); err != nil {
		t.Fatal(err)
	}
	o.close()
	o = openImage(t, im, true)
	defer o.close()
	if d := diffNonzero(verifyNvblk(t, im, o, nil), modelNonzero(im, n, false)); d != "" {
		t.Errorf("nvblk reads the BTT after the guest's writes as: %s", d)
	}
	// 4096-byte sectors are discarded by the zero state (map entries),
	// not by writing zeroes; the never-written sectors of the range may
	// keep their identity mapping.
	for i := uint64(0); i < trimCount; i++ {
		_, st, err := o.MapEntry(trimLBA + i)
		if err != nil || (st != btt.MapZero && st != btt.MapIdentity) {
			t.Errorf("lba %d after NBD_CMD_TRIM: map state %v (%v), want zero", trimLBA+i, st, err)
		}
		if written := trimLBA+i < 64 || trimLBA+i >= 70; written && st != btt.MapZero {
			t.Errorf("written lba %d after NBD_CMD_TRIM: map state %v, want zero", trimLBA+i, st)
		}
	}
	if out := string(h.nvblkCLI(t, nil, "check", im.path)); !strings.Contains(out, " 0 error(s) found") {
		t.Errorf("nvblk check after the guest's session: %s", out)
	}
	checkGuestFS(t, h, rep, fsIm, fsB)
}

// checkGuestFS checks the guest's ext2 on the second export: the files
// hashed the same after a remount, and on the host the file system read
// back through nvblk passes e2fsck and holds the same files (debugfs).
func checkGuestFS(t *testing.T, h *harness, rep *guestReport, im *image, o *opened) {
	t.Helper()
	written, reread := map[string]string{}, map[string]string{}
	for _, r := range rep.Records[nbdFSDisk]["written"] {
		written[r[0]] = r[1]
	}
	for _, r := range rep.Records[nbdFSDisk]["reread"] {
		reread[r[0]] = r[1]
	}
	if len(written) != 2 {
		t.Fatalf("the guest reported %d files written on its ext2 over NBD: %v", len(written), written)
	}
	for f, w := range written {
		if reread[f] != w {
			t.Errorf("%s: written with sha256 %s, reads %q after a remount", f, w, reread[f])
		}
	}
	if err := o.Flush(); err != nil {
		t.Fatal(err)
	}
	raw := filepath.Join(h.dir, "nbd-fs.raw")
	p := make([]byte, o.Sectors()*uint64(o.SectorSize()))
	if err := o.ReadSectors(p, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(raw, p, 0o644); err != nil {
		t.Fatal(err)
	}
	e2fsck := testutil.NeedTool(t, "e2fsck")
	debugfs := testutil.NeedTool(t, "debugfs")
	if out, err := exec.Command(e2fsck, "-fn", raw).CombinedOutput(); err != nil {
		t.Errorf("e2fsck -fn of the guest's file system: %v\n%s", err, out)
	}
	for f, w := range written {
		out, err := exec.Command(debugfs, "-R", "cat /"+f, raw).Output()
		if err != nil || sha(out) != w {
			t.Errorf("debugfs cat /%s on the host: sha256 %s (%v), the guest wrote %s", f, sha(out), err, w)
		}
	}
	o.close() // the image is nvblk check's now (one writer per image)
	if out := string(h.nvblkCLI(t, nil, "check", im.path)); !strings.Contains(out, " 0 error(s) found") {
		t.Errorf("nvblk check of the file-system image: %s", out)
	}
}
