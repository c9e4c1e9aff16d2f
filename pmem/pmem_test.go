package pmem_test

import (
	"bytes"
	"errors"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

func openFile(t *testing.T, dir string, size int64) (pmem.Device, string) {
	t.Helper()
	path := filepath.Join(dir, "dev.img")
	d, err := pmem.Open(path, pmem.Options{CreateSize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d, path
}

// TestSIGBUSIsMediaError: a mapped file truncated underneath faults on
// access; the fault becomes ErrMedia for that call, and the process lives.
func TestSIGBUSIsMediaError(t *testing.T) {
	d, path := openFile(t, t.TempDir(), 1<<20)
	if _, err := d.WriteAt([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	_, err := d.ReadAt(buf, 512<<10)
	var me *pmem.MediaError
	if !errors.Is(err, pmem.ErrMedia) || !errors.As(err, &me) {
		t.Fatalf("read past the truncated end: %v", err)
	}
	if _, err := d.WriteAt(buf, 512<<10); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("write past the truncated end: %v", err)
	}
	if _, err := d.WriteAtPersist(make([]byte, 8192), 256<<10); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("persistent write past the truncated end: %v", err)
	}
	// The part still backed works.
	if _, err := d.ReadAt(buf[:5], 0); err != nil || string(buf[:5]) != "hello" {
		t.Fatalf("read of the backed part: %v %q", err, buf[:5])
	}
}

func TestRangeWarnsOnce(t *testing.T) {
	var logbuf bytes.Buffer
	path := filepath.Join(t.TempDir(), "d.img")
	d, err := pmem.Open(path, pmem.Options{CreateSize: 8192, Logger: slog.New(slog.NewTextHandler(&logbuf, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	for _, off := range []int64{8192, -1, math.MaxInt64} {
		_, err := d.ReadAt(make([]byte, 1), off)
		var re *pmem.RangeError
		if !errors.As(err, &re) || re.Op != "read" || re.Off != off || re.Len != 1 || re.Size != 8192 {
			t.Errorf("off %d: %v", off, err)
		}
		if !strings.Contains(err.Error(), "8192") {
			t.Errorf("error does not name the size: %v", err)
		}
	}
	if n := strings.Count(logbuf.String(), "out of range"); n != 1 {
		t.Errorf("%d warnings, want exactly 1:\n%s", n, logbuf.String())
	}
}

// TestNilLoggerDiscards: a nil Logger discards the warnings (the meaning
// of a nil Logger in every nvblk package), rather than writing them to
// slog.Default().
func TestNilLoggerDiscards(t *testing.T) {
	var logbuf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&logbuf, nil)))
	defer slog.SetDefault(old)
	d, err := pmem.Open(filepath.Join(t.TempDir(), "d.img"), pmem.Options{CreateSize: 8192})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.ReadAt(make([]byte, 1), 8192); err == nil {
		t.Fatal("read past the end succeeded")
	}
	if logbuf.Len() != 0 {
		t.Errorf("a nil Logger logged to slog.Default():\n%s", logbuf.String())
	}
}

func TestWindowTranslation(t *testing.T) {
	d, _ := openFile(t, t.TempDir(), 64<<10)
	w, err := pmem.NewWindow(d, 4096, 8192)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("window"), 10); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 6)
	if _, err := d.ReadAt(got, 4096+10); err != nil || string(got) != "window" {
		t.Fatalf("parent sees %q %v", got, err)
	}
	// Outside the window: refused with the window's size, parent untouched.
	for _, c := range []struct{ off, n int64 }{{8192, 1}, {8191, 2}, {-1, 1}, {math.MaxInt64, 1}} {
		_, err := w.WriteAt(make([]byte, c.n), c.off)
		var re *pmem.RangeError
		if !errors.As(err, &re) || re.Size != 8192 {
			t.Errorf("write %d@%d: %v", c.n, c.off, err)
		}
	}
	if _, err := d.ReadAt(got[:1], 4096+8192); err != nil || got[0] != 0 {
		t.Error("byte after the window was written")
	}
	if _, err := pmem.NewWindow(d, 60<<10, 8192); !errors.Is(err, pmem.ErrOutOfRange) {
		t.Errorf("window past the end: %v", err)
	}
	// Badblocks are shared and translated.
	w.BadBlocks().Add(1024, 1)
	if !d.BadBlocks().Overlaps(4096+1024, 1) || d.BadBlocks().Overlaps(1024, 1) {
		t.Error("window badblock not translated to the parent")
	}
	if _, err := w.ReadAt(got, 1020); !errors.Is(err, pmem.ErrMedia) {
		t.Errorf("read over window badblock: %v", err)
	}
	if l := w.BadBlocks().List(); len(l) != 1 || l[0] != (pmem.Range{Off: 1024, Len: 512}) {
		t.Errorf("window list %v", l)
	}
	// Nested windows add up.
	w2, err := pmem.NewWindow(w, 512, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w2.WriteAtPersist([]byte("nest"), 0); err != nil && !errors.Is(err, pmem.ErrMedia) {
		t.Fatal(err)
	}
	if _, err := d.ReadAt(got[:4], 4096+512); err != nil || string(got[:4]) != "nest" {
		t.Errorf("nested window: %q %v", got[:4], err)
	}
}

func TestBadBlockSemantics(t *testing.T) {
	d, err := pmem.NewRAM(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt(bytes.Repeat([]byte{7}, 2048), 0); err != nil {
		t.Fatal(err)
	}
	bb := d.BadBlocks()
	bb.Add(600, 10) // marks sector 1 (bytes 512..1023)
	if l := bb.List(); len(l) != 1 || l[0] != (pmem.Range{Off: 512, Len: 512}) {
		t.Fatalf("list %v", l)
	}
	buf := bytes.Repeat([]byte{0xEE}, 100)
	if _, err := d.ReadAt(buf, 1000); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("read over bad sector: %v", err)
	}
	if buf[0] != 0xEE {
		t.Fatal("failed read touched the buffer")
	}
	if _, err := d.ReadAt(buf, 1024); err != nil {
		t.Fatalf("read next to the bad sector: %v", err)
	}
	// An unaligned write stores the data but fails and keeps the badblock.
	if _, err := d.WriteAt([]byte{1, 2, 3}, 520); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("unaligned write: %v", err)
	}
	if !bb.Overlaps(512, 1) {
		t.Fatal("unaligned write cleared the badblock")
	}
	// An aligned write clears it.
	if _, err := d.WriteAtPersist(make([]byte, 512), 512); err != nil {
		t.Fatalf("aligned write: %v", err)
	}
	if bb.Overlaps(0, 1<<20) || bb.Len() != 0 {
		t.Fatal("aligned write did not clear the badblock")
	}
	// Merging and partial clears.
	bb.Add(0, 4096)
	bb.Add(4096, 512)
	bb.Clear(1024, 1024)
	if l := bb.List(); len(l) != 2 || l[0] != (pmem.Range{Off: 0, Len: 1024}) || l[1] != (pmem.Range{Off: 2048, Len: 2560}) {
		t.Fatalf("after merge+clear: %v", l)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := pmem.Open(filepath.Join(dir, "missing"), pmem.Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	if _, err := pmem.Open(empty, pmem.Options{}); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty file: %v", err)
	}
	if _, err := pmem.Open(dir, pmem.Options{}); err == nil {
		t.Error("directory accepted")
	}
	if _, err := pmem.Open("/dev/null", pmem.Options{}); err == nil || !strings.Contains(err.Error(), "dax") {
		t.Errorf("/dev/null: %v", err)
	}
	if _, err := pmem.NewRAM(0); err == nil {
		t.Error("RAM of size 0 accepted")
	}
}

func TestReadOnlyFile(t *testing.T) {
	w, path := openFile(t, t.TempDir(), 8192)
	w.Close()
	d, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, pmem.ErrReadOnly) {
		t.Errorf("write to read-only: %v", err)
	}
}

func TestModes(t *testing.T) {
	d, _ := openFile(t, t.TempDir(), 8192)
	if m := d.Mode(); m != pmem.ModeMsync && m != pmem.ModeDAX {
		t.Errorf("file mode %s", m)
	}
	r, _ := pmem.NewRAM(8192)
	defer r.Close()
	if r.Mode() != pmem.ModeNone {
		t.Errorf("RAM mode %s", r.Mode())
	}
	t.Cleanup(reloadEnv) // runs after t.Setenv's restore
	t.Setenv("PMEM_IS_PMEM_FORCE", "1")
	reloadEnv()
	f, _ := openFile(t, t.TempDir(), 8192)
	if f.Mode() != pmem.ModeDAXForced && f.Mode() != pmem.ModeDAX {
		t.Errorf("forced mode %s", f.Mode())
	}
}

// TestExtent: a sparse file device reports its holes and data extents
// (SEEK_HOLE/SEEK_DATA), a window translates them, a punched range becomes
// a hole, and a RAM device is all data.
func TestExtent(t *testing.T) {
	const size = 1 << 20
	d, _ := openFile(t, t.TempDir(), size)
	s := d.(pmem.Sparse)
	if hole, run, err := s.Extent(0, size); err != nil || !hole || run != size {
		if testutil.InCI() {
			t.Fatalf("no hole information on this file system (hole %v, run %d, %v)", hole, run, err)
		}
		t.Skipf("no hole information on this file system (hole %v, run %d, %v)", hole, run, err)
	}
	if _, err := d.WriteAt([]byte{1}, 256<<10+5); err != nil {
		t.Fatal(err)
	}
	type ext struct {
		hole bool
		run  int64
	}
	for _, c := range []struct {
		off, n int64
		want   ext
	}{
		{0, size, ext{true, 256 << 10}},
		{4096, 8192, ext{true, 8192}},                 // capped at n
		{256 << 10, size - 256<<10, ext{false, 4096}}, // the page written
		{256<<10 + 100, 10, ext{false, 10}},
		{260 << 10, size - 260<<10, ext{true, size - 260<<10}}, // hole to the end
	} {
		hole, run, err := s.Extent(c.off, c.n)
		if err != nil || (ext{hole, run}) != c.want {
			t.Errorf("Extent(%d, %d) = %v %d %v, want %+v", c.off, c.n, hole, run, err, c.want)
		}
	}
	w, err := pmem.NewWindow(d, 128<<10, 256<<10)
	if err != nil {
		t.Fatal(err)
	}
	if hole, run, err := w.Extent(0, 256<<10); err != nil || !hole || run != 128<<10 {
		t.Errorf("window Extent(0) = %v %d %v, want a 128 KiB hole", hole, run, err)
	}
	if hole, run, err := w.Extent(128<<10, 128<<10); err != nil || hole || run != 4096 {
		t.Errorf("window Extent(128K) = %v %d %v, want 4 KiB of data", hole, run, err)
	}
	if _, _, err := w.Extent(0, 256<<10+1); !errors.Is(err, pmem.ErrOutOfRange) {
		t.Errorf("window Extent past its end: %v", err)
	}
	if err := d.(interface{ ZeroRange(off, n int64) error }).ZeroRange(0, size); err != nil {
		t.Fatal(err)
	}
	if hole, run, err := s.Extent(0, size); err != nil || !hole || run != size {
		t.Errorf("after punching the whole file: %v %d %v, want one hole", hole, run, err)
	}
	ram, err := pmem.NewRAM(size)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	if hole, run, err := ram.(pmem.Sparse).Extent(0, size); err != nil || hole || run != size {
		t.Errorf("RAM device: %v %d %v, want all data", hole, run, err)
	}
}

// TestFlushTruncatedIsMediaError: with CPU cache flushes (forced mode),
// a Flush or Persist of a range whose pages are gone (the file truncated
// under the mapping) faults; that is a media error for the call, not a
// crash of the process (the BTT writes back a line it stored earlier,
// which the file may have lost since).
func TestFlushTruncatedIsMediaError(t *testing.T) {
	t.Cleanup(reloadEnv)
	t.Setenv("PMEM_IS_PMEM_FORCE", "1")
	reloadEnv()
	d, path := openFile(t, t.TempDir(), 1<<20)
	if d.Mode() != pmem.ModeDAXForced && d.Mode() != pmem.ModeDAX {
		t.Skipf("mode %s: no CPU flushes here", d.Mode())
	}
	if _, err := d.WriteAt([]byte("x"), 768<<10); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(768<<10, 4); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("flush of a truncated range: %v", err)
	}
	if err := d.Persist(768<<10, 4); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("persist of a truncated range: %v", err)
	}
	if err := d.Flush(0, 64); err != nil {
		t.Fatalf("flush of a backed range: %v", err)
	}
}

// TestOpenFIFO: a FIFO is refused at once (it used to block the open,
// read-only, until a writer came).
func TestOpenFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := pmem.Open(path, pmem.Options{ReadOnly: true})
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("open of a FIFO: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("open of a FIFO still blocked after 10 s")
	}
}
