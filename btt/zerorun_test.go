package btt_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
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

// TestZeroRunSparseFile: on a file-backed Linux BTT, a never-written
// sector reads its own data block, so it is reported as zeros exactly when
// that block lies in a hole of the file (pmem.Sparse). A new sparse image
// is one zero run; writes (whose freed blocks are reused by later writes)
// turn sectors into data; a BTT laid over a file full of old bytes reports
// its never-written sectors as data, since they read those bytes. Every
// sector reported zero must read as zeros.
func TestZeroRunSparseFile(t *testing.T) {
	for _, c := range []struct {
		name    string
		lbasize uint32
		garbage bool
	}{{"4096", 4096, false}, {"512", 512, false}, {"4096-old-bytes", 4096, true}} {
		t.Run(c.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dev.img")
			const size = 32<<20 + 4096
			if c.garbage {
				old := bytes.Repeat([]byte{0xaa}, size)
				if err := os.WriteFile(path, old, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			dev, err := pmem.Open(path, pmem.Options{CreateSize: size})
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			if !c.garbage {
				if hole, run, err := dev.(pmem.Sparse).Extent(0, size); err != nil || !hole || run != size {
					if testutil.InCI() {
						t.Fatalf("the new file is not sparse here: %v %d %v", hole, run, err)
					}
					t.Skipf("the new file is not sparse here (%v %d %v)", hole, run, err)
				}
			}
			b, err := btt.Create(dev, btt.CreateOptions{LBASize: c.lbasize, MaxArenaSize: 16 << 20})
			if err != nil {
				t.Fatal(err)
			}
			defer b.Close()
			nlba, ss := b.Sectors(), b.SectorSize()
			if n, z, err := b.ZeroRun(0, nlba); err != nil || n != nlba || z == c.garbage {
				t.Fatalf("new BTT: ZeroRun(0, %d) = %d, %v, %v; want one run, zero %v", nlba, n, z, err, !c.garbage)
			}
			if !c.garbage {
				// A listed bad block fails the read even in a hole: not zero.
				a := b.Arenas()[0]
				bad := a.Offset + int64(a.Info.DataOff) + 5*int64(a.Info.InternalLBASize)
				dev.BadBlocks().Add(bad, 512)
				if n, z, err := b.ZeroRun(4, 3); err != nil || n != 1 || !z {
					t.Fatalf("ZeroRun(4, 3) beside a bad block = %d, %v, %v; want 1, true", n, z, err)
				}
				if n, z, err := b.ZeroRun(5, 1); err != nil || n != 1 || z {
					t.Fatalf("ZeroRun(5, 1) on a bad block = %d, %v, %v; want data", n, z, err)
				}
				if err := b.ReadSectors(make([]byte, ss), 5); !errors.Is(err, pmem.ErrMedia) {
					t.Fatalf("read of the bad block: %v", err)
				}
				dev.BadBlocks().Clear(bad, 512)
			}
			rng := newRand(3)
			p := make([]byte, 8*ss)
			for op := 0; op < 300; op++ {
				n := 1 + rng.Uint64N(8)
				lba := rng.Uint64N(nlba - n)
				for i := range p {
					p[i] = byte(rng.Uint32()) | 1
				}
				if op%5 == 0 {
					clear(p) // zeros written as data
				}
				if err := b.WriteSectors(p[:int(n)*ss], lba); err != nil {
					t.Fatal(err)
				}
				if op%7 == 0 {
					if err := b.ZeroSectors(lba, n); err != nil {
						t.Fatal(err)
					}
				}
			}
			buf := make([]byte, ss)
			zeros := make([]byte, ss)
			reportedZero := 0
			for lba := uint64(0); lba < nlba; {
				n, z, err := b.ZeroRun(lba, nlba-lba)
				if err != nil || n == 0 {
					t.Fatalf("ZeroRun(%d): %d, %v", lba, n, err)
				}
				for i := range n {
					if !z {
						continue
					}
					reportedZero++
					if err := b.ReadSectors(buf, lba+i); err != nil || !bytes.Equal(buf, zeros) {
						t.Fatalf("LBA %d reported zero, reads %x... (%v)", lba+i, buf[:8], err)
					}
				}
				lba += n
			}
			if c.garbage && c.lbasize == 4096 {
				// Only zeroed sectors (the Z state) are zero here.
				if err := b.ReadSectors(buf, nlba-1); err == nil && !bytes.Equal(buf, zeros) {
					if _, z, _ := b.ZeroRun(nlba-1, 1); z {
						t.Fatal("a sector reading old bytes reported as zeros")
					}
				}
			}
			if !c.garbage && reportedZero < int(nlba)/2 {
				t.Errorf("only %d of %d sectors reported zero on a mostly unwritten sparse image", reportedZero, nlba)
			}
		})
	}
}
