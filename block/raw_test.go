package block_test

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/pmem"
)

// TestRawPartitionZeroPunchesHole: zeroing sectors of a raw device over a
// window of a file image (a partition) punches a hole in the file, as NBD
// trim and write-zeroes expect, and the sectors read as zeros; the
// sectors around the zeroed range keep their data.
func TestRawPartitionZeroPunchesHole(t *testing.T) {
	const size, partOff, partSize = 8 << 20, 1 << 20, 4 << 20
	path := filepath.Join(t.TempDir(), "img")
	dev, err := pmem.Open(path, pmem.Options{CreateSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	win, err := pmem.NewWindow(dev, partOff, partSize)
	if err != nil {
		t.Fatal(err)
	}
	r, err := block.NewRaw(win, 512, false)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xAB}, partSize)
	if err := r.WriteSectors(data, 0); err != nil {
		t.Fatal(err)
	}
	blocks := func() int64 {
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Fatal(err)
		}
		return st.Blocks * 512
	}
	before := blocks()
	// Zero the partition but its first and last sector.
	if err := r.ZeroSectors(1, r.Sectors()-2); err != nil {
		t.Fatal(err)
	}
	if freed := before - blocks(); freed < partSize-64<<10 {
		t.Errorf("zeroing freed %d bytes of the file, want about %d (a punched hole)", freed, partSize)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if h, err := unix.Seek(int(f.Fd()), partOff, unix.SEEK_HOLE); err != nil || h >= partOff+partSize {
		t.Errorf("SEEK_HOLE from the partition start: %d, %v; want a hole inside the partition", h, err)
	}
	got := make([]byte, partSize)
	if err := r.ReadSectors(got, 0); err != nil {
		t.Fatal(err)
	}
	want := make([]byte, partSize)
	copy(want[:512], data)
	copy(want[partSize-512:], data)
	if !bytes.Equal(got, want) {
		t.Error("after zeroing, the partition does not read as its first and last sectors around zeros")
	}
}

// TestRawZeroFallback: on a device that cannot punch holes (RAM), zeroing
// writes zeros.
func TestRawZeroFallback(t *testing.T) {
	dev, err := pmem.NewRAM(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	win, err := pmem.NewWindow(dev, 4096, 64<<10)
	if err != nil {
		t.Fatal(err)
	}
	r, err := block.NewRaw(win, 4096, false)
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x5A}, 64<<10)
	if err := r.WriteSectors(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := r.ZeroSectors(2, 3); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<10)
	if err := r.ReadSectors(got, 0); err != nil {
		t.Fatal(err)
	}
	clear(data[2*4096 : 5*4096])
	if !bytes.Equal(got, data) {
		t.Error("sectors 2-4 not zeroed, or others changed")
	}
	// A parent byte outside the window is untouched.
	b := make([]byte, 1)
	if _, err := dev.ReadAt(b, 4096+64<<10); err != nil || b[0] != 0 {
		t.Errorf("byte after the window: %v %v", b, err)
	}
}
