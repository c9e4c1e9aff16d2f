package btt_test

import (
	"errors"
	"testing"

	"github.com/nvblk/nvblk/btt"
)

// TestZeroRun compares ZeroRun with a model of which sectors read as
// zeros, on a two-arena BTT (runs cross the arena boundary) in the Linux
// flavour and the PMDK one, after random writes, zeroes and errors.
func TestZeroRun(t *testing.T) {
	for _, pmdk := range []bool{false, true} {
		name := "linux"
		if pmdk {
			name = "pmdk"
		}
		t.Run(name, func(t *testing.T) {
			dev := newRAM(t, 32<<20+4096)
			opt := btt.Options{Lanes: 4}
			if pmdk {
				zero := int64(0)
				opt.At, opt.PMDK = &zero, true
			}
			b, err := btt.Create(dev, btt.CreateOptions{LBASize: 4096, MaxArenaSize: 16 << 20, Options: opt})
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Arenas()) != 2 {
				t.Fatalf("%d arenas, want 2", len(b.Arenas()))
			}
			nlba := b.Sectors()
			// A never-written sector reads as zeros only in a PMDK pool.
			zero := make([]bool, nlba)
			for i := range zero {
				zero[i] = pmdk
			}
			rng := newRand(7)
			ss := b.SectorSize()
			boundary := b.Arenas()[1].ExternalStart
			for op := 0; op < 400; op++ {
				lba := rng.Uint64N(nlba)
				if op%4 == 0 { // around the arena boundary
					lba = boundary - 3 + rng.Uint64N(6)
				}
				n := min(1+rng.Uint64N(8), nlba-lba)
				switch rng.IntN(3) {
				case 0:
					if err := b.WriteSectors(make([]byte, int(n)*ss), lba); err != nil {
						t.Fatal(err)
					}
					for i := range n {
						zero[lba+i] = false
					}
				case 1:
					if err := b.ZeroSectors(lba, n); err != nil {
						t.Fatal(err)
					}
					for i := range n {
						zero[lba+i] = true
					}
				case 2:
					if err := b.SetError(lba, 1); err != nil {
						t.Fatal(err)
					}
					zero[lba] = false // reads fail: not zeros
				}
			}
			check := func(lba, count uint64) {
				t.Helper()
				want := uint64(1)
				for want < count && zero[lba+want] == zero[lba] {
					want++
				}
				n, z, err := b.ZeroRun(lba, count)
				if err != nil || n != want || z != zero[lba] {
					t.Fatalf("ZeroRun(%d, %d) = %d, %v, %v; want %d, %v", lba, count, n, z, err, want, zero[lba])
				}
			}
			for range 2000 {
				lba := rng.Uint64N(nlba)
				check(lba, 1+rng.Uint64N(nlba-lba))
			}
			for lba := boundary - 4; lba < boundary+4; lba++ {
				check(lba, nlba-lba)
			}
			// Walking the whole device run by run covers every sector.
			for lba := uint64(0); lba < nlba; {
				n, _, err := b.ZeroRun(lba, nlba-lba)
				if err != nil || n == 0 {
					t.Fatalf("ZeroRun(%d): %d, %v", lba, n, err)
				}
				check(lba, nlba-lba)
				lba += n
			}
			for _, r := range [][2]uint64{{0, 0}, {nlba, 1}, {nlba - 1, 2}, {1 << 62, 1}} {
				var re *btt.RangeError
				if _, _, err := b.ZeroRun(r[0], r[1]); !errors.As(err, &re) {
					t.Errorf("ZeroRun(%d, %d): %v, want a RangeError", r[0], r[1], err)
				}
			}
			b.Close()
			if _, _, err := b.ZeroRun(0, 1); !errors.Is(err, btt.ErrClosed) {
				t.Errorf("ZeroRun after Close: %v", err)
			}
		})
	}
}
