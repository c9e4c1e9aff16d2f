package nbd

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// Interop tests drive our server with the real NBD clients (qemu-io,
// qemu-img, nbdinfo, nbdcopy, nbdsh, fio). Servers listen on unix
// sockets in t.TempDir() or on 127.0.0.1 port 0; every tool runs under
// a context deadline.

// toolEnv is the environment of every tool: a plain PATH, because nbdsh
// runs the first python3 on PATH (a pyenv shim would lack libnbd).
var toolEnv = []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "HOME=/tmp", "LC_ALL=C"}

// runTool runs name with a deadline and returns its combined output.
func runTool(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = toolEnv
	cmd.Dir = t.TempDir() // tools that drop state files (fio) keep them out of the tree
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %v: %w", name, timeout, err)
	}
	return string(out), err
}

func mustRunTool(t testing.TB, timeout time.Duration, name string, args ...string) string {
	t.Helper()
	out, err := runTool(t, timeout, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

// bttContents reads the whole BTT.
func bttContents(t testing.TB, b *btt.BTT) []byte {
	t.Helper()
	p := make([]byte, b.Sectors()*uint64(b.SectorSize()))
	if err := b.ReadSectors(p, 0); err != nil {
		t.Fatal(err)
	}
	return p
}

// fillRandom writes random data into n random 4 KiB runs of the BTT.
func fillRandom(t testing.TB, b *btt.BTT, seed uint64, n int) {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	p := make([]byte, 16*4096)
	for i := 0; i < n; i++ {
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		cnt := 1 + r.IntN(16)
		lba := r.Uint64N(b.Sectors() - uint64(cnt))
		if err := b.WriteSectors(p[:cnt*4096], lba); err != nil {
			t.Fatal(err)
		}
	}
}

func TestInteropQemuIO(t *testing.T) {
	qemuIO := testutil.NeedTool(t, "qemu-io")
	b := newBTT(t, 64<<20)
	ts := startServer(t, Options{}, withExport("", "", b, false), withExport("ro", "", b, true))
	out := mustRunTool(t, 60*time.Second, qemuIO, "-f", "raw", ts.uri(""),
		"-c", "write -P 0xcd 4096 64k",
		"-c", "read -P 0xcd 4096 64k",
		"-c", "write -z 0 4k",
		"-c", "read -P 0 0 4k",
		"-c", "read -P 0xcd 4096 60k",
		"-c", "discard 8192 16k",
		"-c", "read -P 0 8192 16k",
		"-c", "write -P 0x5a -f 1M 128k", // -f: FUA
		"-c", "write -P 0x11 2M 4M",
		"-c", "read -P 0x11 2M 4M",
		"-c", "flush",
		"-c", "write -P 0x77 512 512", // below the 4 KiB minimum: qemu does read-modify-write
		"-c", "read -P 0x77 512 512",
	)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	got := make([]byte, 128<<10)
	if err := b.ReadSectors(got, (1<<20)/4096); err != nil || !bytes.Equal(got, bytes.Repeat([]byte{0x5a}, len(got))) {
		t.Fatalf("the BTT does not hold the FUA write: %v", err)
	}
	if _, st, _ := b.MapEntry(2); st != btt.MapZero {
		t.Errorf("discarded sector state %v, want zero", st)
	}
	first := make([]byte, 4096)
	b.ReadSectors(first, 0)
	want := make([]byte, 4096)
	copy(want[512:1024], bytes.Repeat([]byte{0x77}, 512))
	if !bytes.Equal(first, want) {
		t.Errorf("sector 0 after the read-modify-write is wrong")
	}

	// A read-only export: qemu refuses to open it for writing.
	out, err := runTool(t, 30*time.Second, qemuIO, "-f", "raw", ts.uri("ro"), "-c", "write -P 1 0 4k")
	if err == nil || !strings.Contains(out, "Permission denied") && !strings.Contains(out, "read-only") {
		t.Errorf("qemu-io write on a read-only export: %v\n%s", err, out)
	}
	out = mustRunTool(t, 30*time.Second, qemuIO, "-r", "-f", "raw", ts.uri("ro"), "-c", "read -P 0x5a 1M 128k")
	if strings.Contains(out, "failed") {
		t.Errorf("qemu-io read-only read:\n%s", out)
	}
}

func TestInteropQemuImg(t *testing.T) {
	qemuImg := testutil.NeedTool(t, "qemu-img")
	b := newBTT(t, 48<<20)
	fillRandom(t, b, 1, 200)
	ts := startServer(t, Options{}, withExport("disk", "", b, false))

	// info over TCP on 127.0.0.1 with an OS-chosen port.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go ts.Serve(ln)
	uri := fmt.Sprintf("nbd://%s/disk", ln.Addr())
	out := mustRunTool(t, 30*time.Second, qemuImg, "info", "--output=json", uri)
	var info struct {
		VirtualSize uint64 `json:"virtual-size"`
		Format      string `json:"format"`
	}
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatalf("qemu-img info: %v\n%s", err, out)
	}
	if info.VirtualSize != b.Sectors()*4096 || info.Format != "raw" {
		t.Errorf("qemu-img info: %+v, want %d bytes raw", info, b.Sectors()*4096)
	}

	dst := filepath.Join(t.TempDir(), "out.raw")
	mustRunTool(t, 60*time.Second, qemuImg, "convert", "-f", "raw", "-O", "raw", ts.uri("disk"), dst)
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if want := bttContents(t, b); !bytes.Equal(got, want) {
		t.Fatalf("qemu-img convert output (%d bytes) differs from the BTT (%d bytes)", len(got), len(want))
	}
}

func TestInteropNbdinfo(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	b := newBTT(t, 32<<20)
	ts := startServer(t, Options{DefaultExport: "main"},
		withExport("main", "the main disk", b, false), withExport("ro", "read-only view", b, true),
		withExport("small", "", newMemDev(512, 8), false))

	type export struct {
		Name         string `json:"export-name"`
		Description  string `json:"description"`
		Size         uint64 `json:"export-size"`
		Min          uint32 `json:"block_size_minimum"`
		Pref         uint32 `json:"block_size_preferred"`
		Max          uint32 `json:"block_size_maximum"`
		CanFlush     bool   `json:"can_flush"`
		CanFUA       bool   `json:"can_fua"`
		CanTrim      bool   `json:"can_trim"`
		CanZero      bool   `json:"can_zero"`
		CanFastZero  bool   `json:"can_fast_zero"`
		CanCache     bool   `json:"can_cache"`
		CanMultiConn bool   `json:"can_multi_conn"`
		ReadOnly     bool   `json:"is_read_only"`
	}
	var doc struct {
		Protocol   string   `json:"protocol"`
		Structured bool     `json:"structured"`
		Exports    []export `json:"exports"`
	}
	parse := func(out string) {
		t.Helper()
		doc.Exports = nil
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatalf("nbdinfo --json: %v\n%s", err, out)
		}
	}

	parse(mustRunTool(t, 30*time.Second, nbdinfo, "--json", ts.uri("")))
	if doc.Protocol != "newstyle-fixed" || !doc.Structured || len(doc.Exports) != 1 {
		t.Fatalf("nbdinfo: %+v", doc)
	}
	want := export{Name: "main", Description: "the main disk", Size: b.Sectors() * 4096, Min: 4096, Pref: 4096,
		Max: 32 << 20, CanFlush: true, CanFUA: true, CanTrim: true, CanZero: true, CanFastZero: true, CanCache: true, CanMultiConn: true}
	if e := doc.Exports[0]; e != want {
		t.Errorf("default export:\n got %+v\nwant %+v", e, want)
	}

	parse(mustRunTool(t, 30*time.Second, nbdinfo, "--json", ts.uri("ro")))
	wantRO := export{Name: "ro", Description: "read-only view", Size: b.Sectors() * 4096, Min: 4096, Pref: 4096,
		Max: 32 << 20, CanFlush: true, CanCache: true, CanMultiConn: true, ReadOnly: true}
	if e := doc.Exports[0]; e != wantRO {
		t.Errorf("read-only export:\n got %+v\nwant %+v", e, wantRO)
	}

	parse(mustRunTool(t, 30*time.Second, nbdinfo, "--json", ts.uri("small")))
	if e := doc.Exports[0]; e.Min != 512 || e.Pref != 4096 || e.Size != 4096 {
		t.Errorf("512-byte export: %+v", e)
	}

	out := mustRunTool(t, 30*time.Second, nbdinfo, "--list", "--json", ts.uri(""))
	parse(out)
	var names []string
	for _, e := range doc.Exports {
		names = append(names, e.Name+":"+e.Description)
	}
	if strings.Join(names, ",") != "main:the main disk,ro:read-only view,small:" {
		t.Errorf("nbdinfo --list: %v", names)
	}

	if out, err := runTool(t, 30*time.Second, nbdinfo, ts.uri("missing")); err == nil {
		t.Errorf("nbdinfo on a missing export succeeded:\n%s", out)
	}
}

func TestInteropNbdcopy(t *testing.T) {
	nbdcopy := testutil.NeedTool(t, "nbdcopy")
	b := newBTT(t, 32<<20)
	ts := startServer(t, Options{}, withExport("", "", b, false))
	dir := t.TempDir()
	size := int(b.Sectors() * 4096)

	src := make([]byte, size)
	r := rand.New(rand.NewPCG(7, 7))
	for i := 0; i < size; i += 4096 {
		if i/4096%5 == 0 {
			continue // leave some zero blocks: nbdcopy zeroes or skips them
		}
		for j := i; j < i+4096; j += 8 {
			v := r.Uint64()
			for k := 0; k < 8; k++ {
				src[j+k] = byte(v >> (8 * k))
			}
		}
	}
	fillRandom(t, b, 3, 100) // stale data that the copy must overwrite
	in := filepath.Join(dir, "in.raw")
	if err := os.WriteFile(in, src, 0o644); err != nil {
		t.Fatal(err)
	}
	mustRunTool(t, 120*time.Second, nbdcopy, in, ts.uri(""))
	if !bytes.Equal(bttContents(t, b), src) {
		t.Fatal("after nbdcopy file -> NBD the BTT differs from the file")
	}

	fillRandom(t, b, 4, 100)
	out := filepath.Join(dir, "out.raw")
	mustRunTool(t, 120*time.Second, nbdcopy, "--flush", ts.uri(""), out)
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, bttContents(t, b)) {
		t.Fatal("after nbdcopy NBD -> file the file differs from the BTT")
	}
}

func TestInteropNbdsh(t *testing.T) {
	nbdsh := testutil.NeedTool(t, "nbdsh")
	b := newBTT(t, 32<<20)
	dev := &countingDev{BTT: b}
	ts := startServer(t, Options{}, withExport("", "", dev, false), withExport("ro", "", b, true))
	script := `
import errno
assert h.can_flush() and h.can_fua() and h.can_trim() and h.can_zero() and h.can_multi_conn()
assert not h.is_read_only()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 4096
h.pwrite(b"\x42" * 8192, 4096, nbd.CMD_FLAG_FUA)
h.pwrite(b"\x43" * 4096, 16384)
h.flush()
assert h.pread(8192, 4096) == b"\x42" * 8192
h.trim(4096, 4096)
assert h.pread(4096, 4096) == bytes(4096)
h.zero(4096, 8192, nbd.CMD_FLAG_NO_HOLE)
assert h.pread(4096, 8192) == bytes(4096)
# The server, not libnbd, must refuse bad requests.
h.set_strict_mode(0)
for off, n in ((100, 4096), (0, 100), (h.get_size(), 4096), (h.get_size() - 4096, 8192)):
    try:
        h.pread(n, off)
        raise SystemExit("misaligned/out of range read at %d+%d succeeded" % (off, n))
    except nbd.Error as e:
        assert e.errnum == errno.EINVAL, e
assert h.pread(4096, 16384) == b"\x43" * 4096
print("OK")
`
	out := mustRunTool(t, 60*time.Second, nbdsh, "-u", ts.uri(""), "-c", script)
	if !strings.Contains(out, "OK") {
		t.Fatalf("nbdsh:\n%s", out)
	}
	if dev.flushes.Load() < 2 {
		t.Errorf("%d device flushes for one FUA write and one FLUSH", dev.flushes.Load())
	}

	roScript := `
import errno
assert h.is_read_only() and not h.can_trim() and not h.can_fua()
h.set_strict_mode(0)
for op in (lambda: h.pwrite(b"x" * 4096, 0), lambda: h.trim(4096, 0), lambda: h.zero(4096, 0)):
    try:
        op()
        raise SystemExit("write to a read-only export succeeded")
    except nbd.Error as e:
        assert e.errnum == errno.EPERM, e
assert h.pread(4096, 16384) == b"\x43" * 4096
print("OK")
`
	out = mustRunTool(t, 60*time.Second, nbdsh, "-u", ts.uri("ro"), "-c", roScript)
	if !strings.Contains(out, "OK") {
		t.Fatalf("nbdsh read-only:\n%s", out)
	}
}

// countingDev counts flushes reaching the device.
type countingDev struct {
	*btt.BTT
	flushes atomic.Int64
}

func (d *countingDev) Flush() error {
	d.flushes.Add(1)
	return d.BTT.Flush()
}

func TestInteropFio(t *testing.T) {
	fio := testutil.NeedTool(t, "fio")
	b := newBTT(t, 64<<20)
	ts := startServer(t, Options{}, withExport("", "", b, false))
	dir := t.TempDir()
	for _, depth := range []string{"1", "8"} {
		out, err := runTool(t, 90*time.Second, fio, "--name=verify", "--ioengine=nbd", "--uri="+ts.uri(""),
			"--rw=randrw", "--bs=4k", "--size=16m", "--iodepth="+depth, "--verify=crc32c",
			"--verify_fatal=1", "--do_verify=1", "--verify_state_save=0", "--runtime=20", "--output-format=json",
			"--directory="+dir, "--exitall_on_error=1")
		if err != nil {
			t.Fatalf("fio iodepth %s: %v\n%s", depth, err, out)
		}
		var res struct {
			Jobs []struct {
				Error int `json:"error"`
				Read  struct {
					IOs int64 `json:"total_ios"`
				} `json:"read"`
				Write struct {
					IOs int64 `json:"total_ios"`
				} `json:"write"`
			} `json:"jobs"`
		}
		if i := strings.Index(out, "{"); i >= 0 {
			out = out[i:]
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Jobs) != 1 {
			t.Fatalf("fio output: %v\n%s", err, out)
		}
		j := res.Jobs[0]
		if j.Error != 0 || j.Read.IOs == 0 || j.Write.IOs == 0 {
			t.Errorf("fio iodepth %s: error %d, %d reads, %d writes", depth, j.Error, j.Read.IOs, j.Write.IOs)
		}
	}
}

// TestInteropNbdshMultiConn: two libnbd handles on one export.
func TestInteropNbdshMultiConn(t *testing.T) {
	nbdsh := testutil.NeedTool(t, "nbdsh")
	b := newBTT(t, 32<<20)
	ts := startServer(t, Options{}, withExport("", "", b, false))
	// Two handles on the same export: a FUA write on one is visible to a
	// read on the other at once (CAN_MULTI_CONN).
	script := fmt.Sprintf(`
h2 = nbd.NBD()
h2.connect_uri(%q)
for i in range(64):
    h.pwrite(bytes([i]) * 4096, i * 4096, nbd.CMD_FLAG_FUA)
    assert h2.pread(4096, i * 4096) == bytes([i]) * 4096
h2.flush()
h2.shutdown()
print("OK")
`, ts.uri(""))
	out := mustRunTool(t, 60*time.Second, nbdsh, "-u", ts.uri(""), "-c", script)
	if !strings.Contains(out, "OK") {
		t.Fatalf("nbdsh:\n%s", out)
	}
}

// TestInteropBlockStatus: nbdinfo --map and qemu-img map read the
// base:allocation map of a BTT on a sparse image file: zeroed and trimmed
// sectors, and never-written ones (their data blocks are holes of the
// file), are holes reading as zeros, the rest data. A random pattern of
// writes and zeroed runs is compared extent by extent with the model.
func TestInteropBlockStatus(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	qemuImg := testutil.NeedTool(t, "qemu-img")
	dev, err := pmem.Open(filepath.Join(t.TempDir(), "sparse.img"), pmem.Options{CreateSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if hole, run, err := dev.(pmem.Sparse).Extent(0, dev.Size()); err != nil || !hole || run != dev.Size() {
		dev.Close()
		if testutil.InCI() {
			t.Fatalf("the new image file is not sparse here (%v %d %v)", hole, run, err)
		}
		t.Skipf("the new image file is not sparse here (%v %d %v)", hole, run, err)
	}
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); dev.Close() })
	n := b.Sectors()
	zero := make([]bool, n)
	for i := range zero {
		zero[i] = true // never written: a hole of the file
	}
	r := rand.New(rand.NewPCG(5, 1))
	p := make([]byte, 16*4096)
	for range 100 {
		cnt := 1 + r.Uint64N(16)
		lba := r.Uint64N(n - cnt)
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		if err := b.WriteSectors(p[:cnt*4096], lba); err != nil {
			t.Fatal(err)
		}
		for i := range cnt {
			zero[lba+i] = false
		}
	}
	for range 60 {
		cnt := 1 + r.Uint64N(40)
		lba := r.Uint64N(n - cnt)
		if err := b.ZeroSectors(lba, cnt); err != nil {
			t.Fatal(err)
		}
		for i := range cnt {
			zero[lba+i] = true
		}
	}
	type ext struct {
		off, length uint64
		zero        bool
	}
	var want []ext
	for lba := uint64(0); lba < n; {
		e := ext{off: lba * 4096, zero: zero[lba]}
		for lba < n && zero[lba] == e.zero {
			lba++
		}
		e.length = lba*4096 - e.off
		want = append(want, e)
	}
	ts := startServer(t, Options{}, withExport("", "", b, false))
	compare := func(tool string, got []ext) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d extents, want %d\n got %v\nwant %v", tool, len(got), len(want), got, want)
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("%s: extent %d is %+v, want %+v", tool, i, got[i], want[i])
			}
		}
	}

	var nbdMap []struct {
		Offset, Length uint64
		Type           uint32
		Description    string
	}
	out := mustRunTool(t, 60*time.Second, nbdinfo, "--map", "--json", ts.uri(""))
	if err := json.Unmarshal([]byte(out), &nbdMap); err != nil {
		t.Fatalf("nbdinfo --map --json: %v\n%s", err, out)
	}
	var got []ext
	for _, e := range nbdMap {
		isZero := e.Type == stateHole|stateZero && e.Description == "hole,zero"
		if !isZero && (e.Type != 0 || e.Description != "data") {
			t.Fatalf("nbdinfo --map: extent %+v", e)
		}
		got = append(got, ext{e.Offset, e.Length, isZero})
	}
	compare("nbdinfo --map", got)

	var qemuMap []struct {
		Start, Length uint64
		Zero, Data    bool
	}
	out = mustRunTool(t, 60*time.Second, qemuImg, "map", "--output=json", "-f", "raw", ts.uri(""))
	if err := json.Unmarshal([]byte(out), &qemuMap); err != nil {
		t.Fatalf("qemu-img map: %v\n%s", err, out)
	}
	got = nil
	for _, e := range qemuMap {
		if e.Zero == e.Data {
			t.Fatalf("qemu-img map: extent %+v", e)
		}
		// qemu-img merges nothing across differing states, but may
		// split: join consecutive extents of the same kind.
		if l := len(got); l > 0 && got[l-1].zero == e.Zero && got[l-1].off+got[l-1].length == e.Start {
			got[l-1].length += e.Length
			continue
		}
		got = append(got, ext{e.Start, e.Length, e.Zero})
	}
	compare("qemu-img map", got)
}

// TestInteropQemuImgConvertInto: qemu-img convert into the export (a
// sparse source: qemu zeroes the target first, with FAST_ZERO when the
// server offers it, then writes the data runs) leaves the BTT equal to
// the source, on a 4096-byte BTT (fast zero) and a 512-byte one
// (ENOTSUP: qemu falls back to writing).
func TestInteropQemuImgConvertInto(t *testing.T) {
	qemuImg := testutil.NeedTool(t, "qemu-img")
	for _, ss := range []uint32{4096, 512} {
		b := newBTTSectors(t, 24<<20, ss)
		// Old contents everywhere, so that a missed zeroing shows.
		old := bytes.Repeat([]byte{0xa5}, int(b.Sectors())*int(ss))
		if err := b.WriteSectors(old, 0); err != nil {
			t.Fatal(err)
		}
		size := int64(b.Sectors()) * int64(ss)
		src := make([]byte, size)
		r := rand.New(rand.NewPCG(uint64(ss), 2))
		for range 20 {
			off := r.Int64N(size - 65536)
			for i := range 1 + r.IntN(65536) {
				src[off+int64(i)] = byte(r.Uint32() | 1)
			}
		}
		path := filepath.Join(t.TempDir(), "src.raw")
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		// Write only the non-zero 64 KiB chunks: the file is sparse.
		for off := int64(0); off < size; off += 65536 {
			chunk := src[off:min(off+65536, size)]
			if !bytes.Equal(chunk, make([]byte, len(chunk))) {
				if _, err := f.WriteAt(chunk, off); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		f.Close()
		ts := startServer(t, Options{}, withExport("", "", b, false))
		mustRunTool(t, 60*time.Second, qemuImg, "convert", "-n", "-f", "raw", "-O", "raw", path, ts.uri(""))
		if got := bttContents(t, b); !bytes.Equal(got, src) {
			i := 0
			for i < len(got) && got[i] == src[i] {
				i++
			}
			t.Fatalf("%d-byte sectors: the BTT differs from the source at byte %d", ss, i)
		}
	}
}
