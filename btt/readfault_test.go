package btt_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// faultFixture is a file-backed BTT of two 16 MiB arenas with one written
// sector in each.
type faultFixture struct {
	path string
	dev  pmem.Device
	mem  []byte
	b    *btt.BTT
	lbas [2]uint64 // one written LBA per arena
}

func newFaultFixture(t *testing.T, readOnly bool) *faultFixture {
	t.Helper()
	f := &faultFixture{path: filepath.Join(t.TempDir(), "dev.img")}
	dev, err := pmem.Open(f.path, pmem.Options{CreateSize: 40 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V20, LBASize: 4096, MaxArenaSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err = btt.Open(dev, btt.Options{}); err != nil {
		t.Fatal(err)
	}
	ar := b.Arenas()
	if len(ar) < 2 {
		t.Fatalf("%d arenas, want at least 2", len(ar))
	}
	f.lbas = [2]uint64{3, ar[1].ExternalStart + 7}
	for _, lba := range f.lbas {
		if err := b.WriteSectors(pattern(4096, lba, 1), lba); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	f.dev, f.mem = dev, pmem.MappingForTest(dev)
	if f.b, err = btt.Open(dev, btt.Options{ReadOnly: readOnly}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.b.Close() })
	return f
}

// entry returns the mapping offset of lba's map entry, the entry, and the
// mapping offset of the block it points at.
func (f *faultFixture) entry(t *testing.T, lba uint64) (mapAt int64, raw uint32, blockAt int64) {
	t.Helper()
	for _, a := range f.b.Arenas() {
		if lba >= a.ExternalStart && lba < a.ExternalStart+uint64(a.Info.ExternalNLBA) {
			mapAt = a.Offset + int64(a.Info.MapOff) + 4*int64(lba-a.ExternalStart)
			raw = binary.LittleEndian.Uint32(f.mem[mapAt:])
			post := int64(raw & (1<<30 - 1))
			return mapAt, raw, a.Offset + int64(a.Info.DataOff) + post*int64(a.Info.InternalLBASize)
		}
	}
	t.Fatalf("LBA %d is in no arena", lba)
	return
}

// protect makes the page holding off inaccessible until the returned
// function restores it: a load there faults like poisoned memory.
func (f *faultFixture) protect(t *testing.T, off int64) func() {
	t.Helper()
	page := f.mem[off&^4095 : off&^4095+4096]
	if err := unix.Mprotect(page, unix.PROT_NONE); err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := unix.Mprotect(page, unix.PROT_READ|unix.PROT_WRITE); err != nil {
			t.Fatal(err)
		}
	}
}

// mediaErr checks that err is a media error for exactly [off, off+n).
func mediaErr(t *testing.T, what string, err error, off, n int64) {
	t.Helper()
	var me *pmem.MediaError
	if !errors.Is(err, btt.ErrIO) || !errors.As(err, &me) {
		t.Fatalf("%s: got %v, want a media error", what, err)
	}
	if me.Off != off || me.Len != n {
		t.Fatalf("%s: media error for [%d,+%d), want [%d,+%d): %v", what, me.Off, me.Len, off, n, err)
	}
}

// TestReadFaults: a fault while a BTT reads a mapped device (poisoned
// memory, simulated with mprotect; the file truncated under a two-arena
// BTT, SIGBUS) fails that read with a media error naming the access, marks
// the entry E after a fault in the data block (not after one in the map,
// nor when read-only), and leaves the rest of the device readable.
func TestReadFaults(t *testing.T) {
	// A fault in the data block marks the entry E; a write clears it.
	f := newFaultFixture(t, false)
	lba := f.lbas[1]
	_, raw, blockAt := f.entry(t, lba)
	buf := make([]byte, 4096)
	restore := f.protect(t, blockAt)
	err := f.b.ReadSectors(buf, lba)
	restore()
	mediaErr(t, "read of a poisoned block", err, blockAt, 4096)
	if _, now, _ := f.entry(t, lba); now != raw&^(1<<31) {
		t.Fatalf("map entry %#x after a data fault, want %#x (E)", now, raw&^(1<<31))
	}
	err = f.b.ReadSectors(buf, lba)
	if !errors.Is(err, btt.ErrIO) || errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("read of an E sector: %v", err)
	}
	if err := f.b.WriteSectors(pattern(4096, lba, 2), lba); err != nil {
		t.Fatal(err)
	}
	if err := f.b.ReadSectors(buf, lba); err != nil || !bytes.Equal(buf, pattern(4096, lba, 2)) {
		t.Fatalf("rewritten sector: %v", err)
	}

	// A fault in the map entry fails the read and marks nothing.
	lba = f.lbas[0]
	mapAt, raw, _ := f.entry(t, lba)
	restore = f.protect(t, mapAt)
	err = f.b.ReadSectors(buf, lba)
	restore()
	mediaErr(t, "read of a poisoned map entry", err, mapAt, 4)
	if _, now, _ := f.entry(t, lba); now != raw {
		t.Fatalf("map entry %#x after a map fault, want %#x", now, raw)
	}
	if err := f.b.ReadSectors(buf, lba); err != nil || !bytes.Equal(buf, pattern(4096, lba, 1)) {
		t.Fatalf("read after the map fault: %v", err)
	}

	// Read-only: the fault is reported, the map is left alone.
	f = newFaultFixture(t, true)
	lba = f.lbas[1]
	_, raw, blockAt = f.entry(t, lba)
	restore = f.protect(t, blockAt)
	err = f.b.ReadSectors(buf, lba)
	restore()
	mediaErr(t, "read-only read of a poisoned block", err, blockAt, 4096)
	if _, now, _ := f.entry(t, lba); now != raw {
		t.Fatalf("read-only BTT changed the map entry %#x to %#x", raw, now)
	}

	// The file truncated in the middle of the second arena (SIGBUS).
	f = newFaultFixture(t, false)
	mapAt, _, _ = f.entry(t, f.lbas[1])
	if err := os.Truncate(f.path, mapAt&^4095); err != nil {
		t.Fatal(err)
	}
	err = f.b.ReadSectors(buf, f.lbas[1])
	mediaErr(t, "read past the truncated end", err, mapAt, 4)
	if err := f.b.ReadSectors(buf, f.lbas[0]); err != nil || !bytes.Equal(buf, pattern(4096, f.lbas[0], 1)) {
		t.Fatalf("first arena after truncating the second: %v", err)
	}
}
