package btt

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// checkZeroRunVsRead: every sector ZeroRun calls zero must read as zeros
// through ReadSectors, and whole-range runs agree with 1-sector answers.
func checkZeroRunVsRead(t *testing.T, what string, b *BTT) (zeros, overridden int) {
	t.Helper()
	ss := b.SectorSize()
	buf := make([]byte, ss)
	zeroBuf := make([]byte, ss)
	per := make([]bool, b.Sectors())
	for lba := uint64(0); lba < b.Sectors(); lba++ {
		n, z, err := b.ZeroRun(lba, 1)
		if err != nil || n != 1 {
			t.Fatalf("%s: ZeroRun(%d,1) = %d %v %v", what, lba, n, z, err)
		}
		per[lba] = z
		rerr := b.ReadSectors(buf, lba)
		if z {
			zeros++
			if rerr != nil || !bytes.Equal(buf, zeroBuf) {
				t.Fatalf("%s: LBA %d: ZeroRun says zero, read gives err=%v nonzero=%v", what, lba, rerr, !bytes.Equal(buf, zeroBuf))
			}
		}
	}
	for _, a := range b.arenas {
		overridden += len(a.override)
	}
	for lba := uint64(0); lba < b.Sectors(); {
		n, z, err := b.ZeroRun(lba, b.Sectors()-lba)
		if err != nil || n == 0 {
			t.Fatalf("%s: ZeroRun(%d): %d %v", what, lba, n, err)
		}
		for i := uint64(0); i < n; i++ {
			if per[lba+i] != z {
				t.Fatalf("%s: run from %d of %d (%v) disagrees at %d", what, lba, n, z, lba+i)
			}
		}
		if lba+n < b.Sectors() && per[lba+n] == z {
			t.Fatalf("%s: run from %d of %d stops early", what, lba, n)
		}
		lba += n
	}
	return zeros, overridden
}

// TestZeroRunMatchesRead: every sector ZeroRun calls zero reads as zeros,
// after random writes (of data and of zeros), zero states and errors, on
// Linux and PMDK BTTs of 512- and 4096-byte sectors with three arenas;
// then on a read-only open with rolled-forward entries, and on an open
// from a backup info block.
func TestZeroRunMatchesRead(t *testing.T) {
	for _, pmdk := range []bool{false, true} {
		for _, ss := range []uint32{512, 4096} {
			t.Run(fmt.Sprintf("pmdk=%v/ss=%d", pmdk, ss), func(t *testing.T) {
				dev, err := pmem.NewRAM(56<<20 + 4096)
				if err != nil {
					t.Fatal(err)
				}
				defer dev.Close()
				opt := Options{Lanes: 4, PMDK: pmdk}
				if pmdk {
					z := int64(0)
					opt.At = &z
				}
				b, err := Create(dev, CreateOptions{LBASize: ss, MaxArenaSize: 20 << 20, Options: opt})
				if err != nil {
					t.Fatal(err)
				}
				if len(b.arenas) < 2 {
					t.Fatalf("%d arenas", len(b.arenas))
				}
				sizes := []uint32{}
				for _, a := range b.arenas {
					sizes = append(sizes, a.extNLBA)
				}
				t.Logf("arena sizes %v", sizes)
				rng := rand.New(rand.NewPCG(1, 2))
				nlba := b.Sectors()
				sec := int(b.SectorSize())
				for op := 0; op < 3000; op++ {
					lba := rng.Uint64N(nlba)
					if op%5 == 0 {
						a := b.arenas[1+rng.IntN(len(b.arenas)-1)]
						lba = a.extStart - 2 + rng.Uint64N(4)
					}
					n := min(1+rng.Uint64N(6), nlba-lba)
					switch rng.IntN(5) {
					case 0, 1:
						p := make([]byte, int(n)*sec)
						for i := range p {
							p[i] = byte(rng.IntN(255) + 1)
						}
						err = b.WriteSectors(p, lba)
					case 2:
						err = b.WriteSectors(make([]byte, int(n)*sec), lba) // zero data, normal state
					case 3:
						err = b.setState(lba, n, mapZ, "zero") // Z even for 512 on Linux
					case 4:
						err = b.SetError(lba, 1)
					}
					if err != nil {
						t.Fatal(err)
					}
				}
				checkZeroRunVsRead(t, "rw", b)
				b.Close()
				if _, _, err := b.ZeroRun(0, 1); err == nil {
					t.Fatal("closed BTT answered ZeroRun")
				}

				// Undo the map update of every lane's last write, in
				// the form the map had before it (Z or identity), so a
				// read-only open rolls them forward in memory.
				var buf [64]byte
				reverted := 0
				for _, a := range b.arenas {
					for lane := uint32(0); lane < a.nfree; lane++ {
						var g [4]LogEntry
						if err := readGroup(dev, a, lane, &g, buf[:]); err != nil {
							t.Fatal(err)
						}
						cur, _, ok := currentEntry(&g, a.logIdx)
						old, nw := cur.OldMap&mapLBAMask, cur.NewMap&mapLBAMask
						if !ok || old == nw {
							continue
						}
						raw, _ := a.readMapRaw(dev, cur.LBA, buf[:])
						if raw != mapNormal|nw {
							continue
						}
						v := mapZ | old
						if old == cur.LBA && reverted%2 == 0 {
							v = 0 // identity
						}
						if err := a.writeMapRaw(dev, cur.LBA, v, buf[:]); err != nil {
							t.Fatal(err)
						}
						reverted++
					}
				}
				t.Logf("reverted %d map entries", reverted)
				ro := opt
				ro.ReadOnly = true
				b2, err := Open(dev, ro)
				if err != nil {
					t.Fatal(err)
				}
				z, ov := checkZeroRunVsRead(t, "read-only", b2)
				t.Logf("read-only: %d zero sectors, %d overrides", z, ov)
				if ov == 0 {
					t.Errorf("no overrides: the read-only case was not exercised")
				}
				b2.Close()

				// Damage the last arena's primary info block: the BTT
				// opens from its backup (read-only, overrides again).
				last := b2.arenas[len(b2.arenas)-1]
				if _, err := dev.WriteAt([]byte{0xde, 0xad}, last.off+16); err != nil {
					t.Fatal(err)
				}
				b3, err := Open(dev, opt)
				if err != nil {
					t.Fatalf("open from backup: %v", err)
				}
				if !b3.FromBackup() {
					t.Fatal("not from backup")
				}
				z, ov = checkZeroRunVsRead(t, "backup", b3)
				t.Logf("backup: %d zero sectors, %d overrides", z, ov)
			})
		}
	}
}
