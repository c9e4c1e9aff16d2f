package pmemblk

import (
	"errors"
	"sync/atomic"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

func newRAM(t testing.TB, size int64) pmem.Device {
	t.Helper()
	d, err := pmem.NewRAM(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// newRAMPool formats a pool on a RAM device and opens it.
func newRAMPool(t testing.TB, size int64, bsize int) (*Pool, pmem.Device) {
	t.Helper()
	dev := newRAM(t, size)
	if err := Format(dev, bsize); err != nil {
		t.Fatal(err)
	}
	p, err := NewPool(dev, bsize, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, dev
}

// pattern fills buf with the bytes blkhelper.c writes for (seed, blk).
func pattern(buf []byte, seed, blk uint64) []byte {
	x := seed*0x9E3779B97F4A7C15 ^ (blk+1)*0xBF58476D1CE4E5B9
	x |= 1
	for i := range buf {
		if i%8 == 0 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
		buf[i] = byte(x >> (8 * (i % 8)))
	}
	return buf
}

var errInjected = errors.New("injected write failure")

// failDev lets budget writes through, then fails every write without
// writing anything: the media holds a prefix of the writes, as after a
// crash between two persistence points.
type failDev struct {
	pmem.Device
	budget atomic.Int64
}

func (d *failDev) take() bool { return d.budget.Add(-1) >= 0 }

func (d *failDev) WriteAt(p []byte, off int64) (int, error) {
	if !d.take() {
		return 0, errInjected
	}
	return d.Device.WriteAt(p, off)
}

func (d *failDev) WriteAtPersist(p []byte, off int64) (int, error) {
	if !d.take() {
		return 0, errInjected
	}
	return d.Device.WriteAtPersist(p, off)
}
