package block_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/pmem"
)

// TestIO: block.IO reads and writes whole sectors at byte offsets, stops
// at the end like io.SectionReader (io.EOF with the sectors before it),
// writes the sectors before the end of a write past it and reports the
// device's range error, and refuses misaligned and negative requests.
func TestIO(t *testing.T) {
	dev, err := pmem.NewRAM(16 * 512)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	r, err := block.NewRaw(dev, 512, false)
	if err != nil {
		t.Fatal(err)
	}
	rw := block.NewIO(r)
	if rw.Size() != 16*512 {
		t.Fatalf("size %d", rw.Size())
	}
	data := bytes.Repeat([]byte("0123456789abcdef"), 3*512/16)
	if n, err := rw.WriteAt(data, 2*512); err != nil || n != len(data) {
		t.Fatalf("write: %d %v", n, err)
	}
	got := make([]byte, 3*512)
	if _, err := dev.ReadAt(got, 2*512); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("the device does not hold the written bytes: %v", err)
	}
	clear(got)
	if n, err := rw.ReadAt(got, 2*512); err != nil || n != len(got) || !bytes.Equal(got, data) {
		t.Fatalf("read: %d %v", n, err)
	}
	// Past the end.
	if n, err := rw.ReadAt(got, 14*512); err != io.EOF || n != 2*512 || !bytes.Equal(got[:2*512], make([]byte, 2*512)) {
		t.Errorf("read across the end: %d %v", n, err)
	}
	if n, err := rw.ReadAt(got, 16*512); err != io.EOF || n != 0 {
		t.Errorf("read at the end: %d %v", n, err)
	}
	if n, err := rw.WriteAt(data, 14*512); !errors.Is(err, block.ErrOutOfRange) || n != 2*512 {
		t.Errorf("write across the end: %d %v", n, err)
	}
	if _, err := dev.ReadAt(got[:2*512], 14*512); err != nil || !bytes.Equal(got[:2*512], data[:2*512]) {
		t.Errorf("the sectors before the end were not written: %v", err)
	}
	// Misaligned, negative.
	for _, c := range []struct {
		n   int
		off int64
		err error
	}{{100, 0, block.ErrAlignment}, {512, 100, block.ErrAlignment}, {512, -512, block.ErrOutOfRange}} {
		if _, err := rw.ReadAt(got[:c.n], c.off); !errors.Is(err, c.err) {
			t.Errorf("read %d at %d: %v, want %v", c.n, c.off, err, c.err)
		}
		if _, err := rw.WriteAt(got[:c.n], c.off); !errors.Is(err, c.err) {
			t.Errorf("write %d at %d: %v, want %v", c.n, c.off, err, c.err)
		}
	}
}
