package pmemblk

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

func TestCreateOpenReadWrite(t *testing.T) {
	for _, bs := range []int{512, 4096, 520, 100} {
		path := filepath.Join(t.TempDir(), "pool")
		p, err := Create(path, bs, 32<<20)
		if err != nil {
			t.Fatal(err)
		}
		if p.BSize() != bs || p.LaidOut() || !p.IsZeroed() || p.Size() != 32<<20 {
			t.Fatalf("bsize %d: new pool: bsize %d laid out %v zeroed %v size %d", bs, p.BSize(), p.LaidOut(), p.IsZeroed(), p.Size())
		}
		n := p.NBlock()
		buf := make([]byte, bs)
		if err := p.Read(buf, n-1); err != nil || !isZero(buf) {
			t.Fatalf("read of an unlaid pool: %v", err)
		}
		// set_zero on an unlaid pool does nothing, and lays nothing out.
		if err := p.SetZero(3); err != nil || p.LaidOut() {
			t.Fatalf("set-zero: %v, laid out %v", err, p.LaidOut())
		}
		want := map[int64][]byte{}
		for _, blk := range []int64{0, 1, n / 2, n - 1} {
			want[blk] = pattern(make([]byte, bs), 1, uint64(blk))
			if err := p.Write(want[blk], blk); err != nil {
				t.Fatal(err)
			}
		}
		if !p.LaidOut() || p.NBlock() != n {
			t.Fatalf("after the first write: laid out %v, %d blocks (was %d)", p.LaidOut(), p.NBlock(), n)
		}
		want[1] = pattern(make([]byte, bs), 2, 1)
		if err := p.Write(want[1], 1); err != nil {
			t.Fatal(err)
		}
		if err := p.SetZero(n / 2); err != nil {
			t.Fatal(err)
		}
		want[n/2] = make([]byte, bs)
		if err := p.SetError(5); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); err != nil {
			t.Fatal(err)
		}
		if err := p.Close(); !errors.Is(err, ErrClosed) {
			t.Errorf("second Close: %v", err)
		}
		if err := p.Read(buf, 0); !errors.Is(err, ErrClosed) {
			t.Errorf("read after Close: %v", err)
		}

		p, err = Open(path, 0)
		if err != nil {
			t.Fatal(err)
		}
		if p.BSize() != bs || p.NBlock() != n || !p.LaidOut() {
			t.Fatalf("reopened: bsize %d nblock %d laid out %v", p.BSize(), p.NBlock(), p.LaidOut())
		}
		for blk, w := range want {
			if err := p.Read(buf, blk); err != nil || !bytes.Equal(buf, w) {
				t.Errorf("bsize %d block %d: %v, data equal %v", bs, blk, err, bytes.Equal(buf, w))
			}
		}
		if err := p.Read(buf, 5); !errors.Is(err, ErrIO) || !errors.Is(err, btt.ErrIO) {
			t.Errorf("read of an error block: %v", err)
		}
		if err := p.Write(want[0], 5); err != nil {
			t.Fatal(err)
		}
		if err := p.Read(buf, 5); err != nil || !bytes.Equal(buf, want[0]) {
			t.Errorf("rewritten error block: %v", err)
		}
		p.Close()
		if ok, err := Check(path, 0); !ok || err != nil {
			t.Errorf("Check: %v %v", ok, err)
		}
	}
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "pool")
	if _, err := Create(path, 0, 32<<20); !errors.Is(err, ErrBadBSize) {
		t.Errorf("bsize 0: %v", err)
	}
	if _, err := Create(path, MaxBSize+1, 32<<20); !errors.Is(err, ErrBadBSize) {
		t.Errorf("huge bsize: %v", err)
	}
	if _, err := Create(path, 4096, MinPoolSize-1); !errors.Is(err, ErrPoolSize) {
		t.Errorf("small pool: %v", err)
	}
	if _, err := Create(path, 1<<20, MinPoolSize); !errors.Is(err, ErrPoolSize) {
		t.Errorf("pool too small for its blocks: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("failed creates left a file: %v", err)
	}
	p, err := Create(path, 512, MinPoolSize)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Create(path, 512, MinPoolSize); !errors.Is(err, os.ErrExist) {
		t.Errorf("create over an existing file: %v", err)
	}
	buf := make([]byte, 512)
	for _, blk := range []int64{-1, p.NBlock(), 1 << 40} {
		if err := p.Read(buf, blk); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("read block %d: %v", blk, err)
		}
		if err := p.Write(buf, blk); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("write block %d: %v", blk, err)
		}
		if err := p.SetZero(blk); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("set-zero block %d: %v", blk, err)
		}
		if err := p.SetError(blk); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("set-error block %d: %v", blk, err)
		}
	}
	if p.LaidOut() {
		t.Error("failed calls laid the BTT out")
	}
	if err := p.Write(buf[:100], 0); !errors.Is(err, ErrBadBSize) {
		t.Errorf("short buffer: %v", err)
	}
	p.Close()

	if _, err := Open(path, 4096); !errors.Is(err, ErrBadBSize) {
		t.Errorf("open with the wrong bsize: %v", err)
	}
	if _, err := Check(path, 4096); !errors.Is(err, ErrBadBSize) {
		t.Errorf("check with the wrong bsize: %v", err)
	}
	other := filepath.Join(dir, "other")
	if err := os.WriteFile(other, make([]byte, 32<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(other, 0); !errors.Is(err, ErrFormat) {
		t.Errorf("open of a zero file: %v", err)
	}
	// poolsize 0 makes a pool in an existing file with a zero header.
	p, err = Create(other, 4096, 0)
	if err != nil {
		t.Fatal(err)
	}
	if p.IsZeroed() || p.Size() != 32<<20 {
		t.Errorf("pool in an existing file: zeroed %v size %d", p.IsZeroed(), p.Size())
	}
	p.Close()
	if _, err := Create(other, 4096, 0); !errors.Is(err, os.ErrExist) {
		t.Errorf("poolsize 0 over a pool: %v", err)
	}

	// Read-only.
	p, err = OpenWith(path, 0, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if !p.ReadOnly() {
		t.Error("ReadOnly() false")
	}
	for name, err := range map[string]error{"write": p.Write(buf, 0), "set-zero": p.SetZero(0), "set-error": p.SetError(0)} {
		if !errors.Is(err, ErrReadOnly) {
			t.Errorf("%s on a read-only pool: %v", name, err)
		}
	}
	p.Close()
}

func TestReaderAtWriterAt(t *testing.T) {
	p, _ := newRAMPool(t, 20<<20, 512)
	n := p.NBlock()
	data := pattern(make([]byte, 3*512), 9, 0)
	if k, err := p.WriteAt(data, 10*512); err != nil || k != len(data) {
		t.Fatalf("WriteAt: %d %v", k, err)
	}
	got := make([]byte, 4*512)
	if k, err := p.ReadAt(got, 9*512); err != nil || k != len(got) {
		t.Fatalf("ReadAt: %d %v", k, err)
	}
	if !isZero(got[:512]) || !bytes.Equal(got[512:], data) {
		t.Error("ReadAt data")
	}
	if _, err := p.ReadAt(got[:100], 0); !errors.Is(err, ErrAlignment) {
		t.Errorf("partial block: %v", err)
	}
	if _, err := p.WriteAt(got[:512], 100); !errors.Is(err, ErrAlignment) {
		t.Errorf("unaligned offset: %v", err)
	}
	// Past the end: whole blocks up to it, then io.EOF / ErrOutOfRange.
	if k, err := p.ReadAt(got, (n-1)*512); err != io.EOF || k != 512 {
		t.Errorf("read across the end: %d %v", k, err)
	}
	if k, err := p.ReadAt(got, n*512); err != io.EOF || k != 0 {
		t.Errorf("read at the end: %d %v", k, err)
	}
	if k, err := p.WriteAt(got, (n-2)*512); !errors.Is(err, ErrOutOfRange) || k != 2*512 {
		t.Errorf("write across the end: %d %v", k, err)
	}
	if _, err := p.ReadAt(got, -512); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("negative offset: %v", err)
	}
	// io.SectionReader over the pool, read in whole blocks.
	r := io.NewSectionReader(p, 10*512, 3*512)
	all := make([]byte, 3*512)
	if _, err := io.ReadFull(r, all); err != nil || !bytes.Equal(all, data) {
		t.Errorf("SectionReader: %v", err)
	}
}

func TestBlockDriver(t *testing.T) {
	p, dev := newRAMPool(t, 20<<20, 4096)
	drv, desc := block.Probe(dev)
	if drv.Name != "pmemblk" {
		t.Fatalf("block.Probe picked %q (%s)", drv.Name, desc)
	}
	if _, _, ok := btt.Probe(dev); ok {
		t.Error("btt probes a pool")
	}
	if err := p.Write(pattern(make([]byte, 4096), 3, 7), 7); err != nil {
		t.Fatal(err)
	}
	bd, drv, err := block.Open(dev, block.OpenOptions{})
	if err != nil || drv.Name != "pmemblk" {
		t.Fatalf("block.Open: %v %s", err, drv.Name)
	}
	defer bd.Close()
	if bd.SectorSize() != 4096 || bd.Sectors() != uint64(p.NBlock()) {
		t.Errorf("geometry %d x %d", bd.Sectors(), bd.SectorSize())
	}
	buf := make([]byte, 2*4096)
	if err := bd.ReadSectors(buf, 6); err != nil || !isZero(buf[:4096]) || !bytes.Equal(buf[4096:], pattern(make([]byte, 4096), 3, 7)) {
		t.Errorf("ReadSectors: %v", err)
	}
	if err := bd.WriteSectors(buf, bd.Sectors()-1); !errors.Is(err, ErrOutOfRange) {
		t.Errorf("WriteSectors past the end: %v", err)
	}
	if err := bd.ZeroSectors(7, 1); err != nil {
		t.Fatal(err)
	}
	if err := bd.ReadSectors(buf[:4096], 7); err != nil || !isZero(buf[:4096]) {
		t.Errorf("after ZeroSectors: %v", err)
	}
	if err := bd.Flush(); err != nil {
		t.Error(err)
	}
	// A corrupt header is not a pool.
	var b [1]byte
	dev.ReadAt(b[:], 100)
	b[0] ^= 1
	dev.WriteAt(b[:], 100)
	if ok, _ := Probe(dev); ok {
		t.Error("probe accepted a header with a bad checksum")
	}
	if !HasSignature(dev) {
		t.Error("HasSignature")
	}
}

// A pool libpmemblk or nvblk wrote: the device view after it.
func snapshot(t *testing.T, dev pmem.Device) []byte {
	t.Helper()
	b := make([]byte, dev.Size())
	if _, err := dev.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDamagedPrimaryUsesBackup(t *testing.T) {
	p, dev := newRAMPool(t, 20<<20, 4096)
	want := pattern(make([]byte, 4096), 5, 3)
	if err := p.Write(want, 3); err != nil {
		t.Fatal(err)
	}
	if err := p.SetError(4); err != nil {
		t.Fatal(err)
	}
	p.Close()
	// Damage the primary info block (its uuid).
	dev.WriteAt([]byte{0xde, 0xad}, BTTOffset+20)
	before := snapshot(t, dev)

	p, err := NewPool(dev, 0, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !p.LaidOut() || !p.FromBackup() || !p.ReadOnly() {
		t.Fatalf("laid out %v from backup %v read-only %v", p.LaidOut(), p.FromBackup(), p.ReadOnly())
	}
	got := make([]byte, 4096)
	if err := p.Read(got, 3); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read through the backup: %v", err)
	}
	if err := p.Read(got, 4); !errors.Is(err, ErrIO) {
		t.Errorf("error block: %v", err)
	}
	if err := p.Write(want, 9); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write with a damaged primary: %v", err)
	}
	if err := p.SetError(9); !errors.Is(err, ErrReadOnly) {
		t.Errorf("set-error with a damaged primary: %v", err)
	}
	p.Close()
	if !bytes.Equal(before, snapshot(t, dev)) {
		t.Fatal("opening a pool with a damaged primary wrote to it")
	}

	rep, err := CheckDevice(dev, CheckOptions{})
	if err != nil || rep.Errors == 0 || rep.ExitCode() != 4 {
		t.Fatalf("check: %+v %v", rep, err)
	}
	if !bytes.Equal(before, snapshot(t, dev)) {
		t.Fatal("check without repair wrote")
	}
	rep, err = CheckDevice(dev, CheckOptions{Repair: true})
	if err != nil || rep.ExitCode() != 1 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	if rep, err := CheckDevice(dev, CheckOptions{}); err != nil || rep.ExitCode() != 0 {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
	p, err = NewPool(dev, 0, Options{})
	if err != nil || p.FromBackup() || p.ReadOnly() {
		t.Fatalf("after repair: %v, from backup %v", err, p != nil && p.FromBackup())
	}
	defer p.Close()
	if err := p.Read(got, 3); err != nil || !bytes.Equal(got, want) {
		t.Errorf("read after repair: %v", err)
	}
	if err := p.Write(want, 9); err != nil {
		t.Errorf("write after repair: %v", err)
	}
}

func TestBothInfoBlocksLost(t *testing.T) {
	p, dev := newRAMPool(t, 20<<20, 4096)
	if err := p.Write(make([]byte, 4096), 3); err != nil {
		t.Fatal(err)
	}
	geo := p.BTT().Arenas()[0].Info
	p.Close()
	dev.WriteAt(make([]byte, 4096), BTTOffset)
	dev.WriteAt(make([]byte, 4096), BTTOffset+int64(geo.Info2Off))
	// The flog shows a write: this is not a never-laid-out pool, and
	// nvblk must neither open it as empty nor lay a new BTT over it.
	if _, err := NewPool(dev, 0, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("open: %v", err)
	}
	rep, err := CheckDevice(dev, CheckOptions{Repair: true})
	if err != nil || rep.ExitCode() != 4 {
		t.Fatalf("check: %+v %v", rep, err)
	}
}

func TestHeaderDamage(t *testing.T) {
	_, dev := newRAMPool(t, 20<<20, 512)
	dev.WriteAt([]byte{0xff}, offCrtime)
	if _, err := NewPool(dev, 0, Options{}); !errors.Is(err, ErrFormat) {
		t.Errorf("open with a bad header checksum: %v", err)
	}
	rep, err := CheckDevice(dev, CheckOptions{Repair: true})
	if err != nil || rep.ExitCode() != 4 || rep.Findings[0].Code != CodeHeader {
		t.Errorf("check: %+v %v", rep, err)
	}
	// The pmemblk header's bsize disagreeing with the BTT is repaired
	// from the BTT info block.
	p, dev := newRAMPool(t, 20<<20, 512)
	p.Write(make([]byte, 512), 0)
	p.Close()
	dev.WriteAt([]byte{0, 4, 0, 0}, DescOffset) // 1024
	if _, err := NewPool(dev, 0, Options{}); !errors.Is(err, ErrCorrupt) {
		t.Errorf("open with a wrong bsize: %v", err)
	}
	rep, err = CheckDevice(dev, CheckOptions{Repair: true})
	if err != nil || rep.ExitCode() != 1 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	if p, err := NewPool(dev, 512, Options{}); err != nil {
		t.Errorf("after repair: %v", err)
	} else {
		p.Close()
	}
}

func TestEmptyReadWriteAt(t *testing.T) {
	p, _ := newRAMPool(t, 20<<20, 512)
	far := (p.NBlock() + 10) * 512
	if n, err := p.ReadAt(nil, far); n != 0 || err != nil {
		t.Errorf("empty ReadAt past the end: %d %v", n, err)
	}
	if n, err := p.WriteAt(nil, far); n != 0 || err != nil {
		t.Errorf("empty WriteAt past the end: %d %v", n, err)
	}
	if err := p.ReadSectors(nil, uint64(p.NBlock())); err != nil {
		t.Errorf("empty ReadSectors at the end: %v", err)
	}
	if err := p.ZeroSectors(uint64(p.NBlock()), 0); err != nil {
		t.Errorf("ZeroSectors of nothing: %v", err)
	}
}
