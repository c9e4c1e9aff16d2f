package pmemblk

import (
	"errors"
	"testing"
)

// TestPoolZeroRun: before the first write (no BTT laid out) every block
// reads as zeros; afterwards written blocks are data, never-written and
// SetZero'd ones zeros; out-of-range queries fail with ErrOutOfRange.
func TestPoolZeroRun(t *testing.T) {
	p, _ := newRAMPool(t, 64<<20, 512)
	n := p.Sectors()
	if k, z, err := p.ZeroRun(0, n); err != nil || k != n || !z {
		t.Fatalf("fresh pool: %d, %v, %v; want %d, true", k, z, err, n)
	}
	buf := make([]byte, 512)
	for _, blk := range []int64{10, 11, 12, 40} {
		if err := p.Write(pattern(buf, 1, uint64(blk)), blk); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.SetZero(11); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		lba, count, n uint64
		zero          bool
	}{
		{0, n, 10, true}, {10, n - 10, 1, false}, {11, n - 11, 1, true}, {12, 5, 1, false},
		{13, n - 13, 27, true}, {40, 1, 1, false}, {41, n - 41, n - 41, true},
	} {
		k, z, err := p.ZeroRun(c.lba, c.count)
		if err != nil || k != c.n || z != c.zero {
			t.Errorf("ZeroRun(%d, %d) = %d, %v, %v; want %d, %v", c.lba, c.count, k, z, err, c.n, c.zero)
		}
	}
	for _, r := range [][2]uint64{{0, 0}, {n, 1}, {n - 1, 2}, {1 << 63, 1}} {
		if _, _, err := p.ZeroRun(r[0], r[1]); !errors.Is(err, ErrOutOfRange) {
			t.Errorf("ZeroRun(%d, %d): %v, want ErrOutOfRange", r[0], r[1], err)
		}
	}
}
