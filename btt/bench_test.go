package btt_test

import (
	"math/rand/v2"
	"path/filepath"
	"sync"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// benchBTT creates a 1 GiB BTT (4096-byte sectors) on a tmpfs file and
// prefaults it. Run with PMEM_IS_PMEM_FORCE=1 for CPU-flush persistence
// (what issue 10's figures use); without it tmpfs gets msync.
func benchBTT(b *testing.B) *btt.BTT {
	b.Helper()
	dev, err := pmem.Open(filepath.Join(testutil.ShmDir(b), "btt.img"), pmem.Options{CreateSize: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { dev.Close() })
	buf := make([]byte, 1<<20)
	for off := int64(0); off < dev.Size(); off += int64(len(buf)) {
		dev.WriteAt(buf, off)
	}
	t, err := btt.Create(dev, btt.CreateOptions{LBASize: 4096})
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("mode %s", dev.Mode())
	return t
}

func benchIO(b *testing.B, write bool, threads int) {
	t := benchBTT(b)
	n := t.Sectors()
	b.SetBytes(4096)
	per := b.N / threads
	var wg sync.WaitGroup
	b.ResetTimer()
	for g := 0; g < threads; g++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			r := rand.New(rand.NewPCG(seed, 99))
			p := make([]byte, 4096)
			for i := 0; i < per; i++ {
				lba := r.Uint64N(n)
				var err error
				if write {
					err = t.WriteSectors(p, lba)
				} else {
					err = t.ReadSectors(p, lba)
				}
				if err != nil {
					b.Error(err)
					return
				}
			}
		}(uint64(g))
	}
	wg.Wait()
}

func BenchmarkWrite4K_1(b *testing.B) { benchIO(b, true, 1) }
func BenchmarkWrite4K_2(b *testing.B) { benchIO(b, true, 2) }
func BenchmarkRead4K_1(b *testing.B)  { benchIO(b, false, 1) }
func BenchmarkRead4K_2(b *testing.B)  { benchIO(b, false, 2) }

// TestHotPathAllocs: sector reads and writes allocate nothing.
func TestHotPathAllocs(t *testing.T) {
	dev := newRAM(t, 20<<20)
	b, err := btt.Create(dev, btt.CreateOptions{LBASize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4096)
	lba := uint64(0)
	if a := testing.AllocsPerRun(500, func() {
		if err := b.WriteSectors(p, lba%b.Sectors()); err != nil {
			t.Fatal(err)
		}
		lba += 13
	}); a != 0 {
		t.Errorf("WriteSectors allocates %.1f per call", a)
	}
	if a := testing.AllocsPerRun(500, func() {
		if err := b.ReadSectors(p, lba%b.Sectors()); err != nil {
			t.Fatal(err)
		}
		lba += 13
	}); a != 0 {
		t.Errorf("ReadSectors allocates %.1f per call", a)
	}
	if a := testing.AllocsPerRun(100, func() { b.ZeroSectors(lba%b.Sectors(), 1); lba += 3 }); a != 0 {
		t.Errorf("ZeroSectors allocates %.1f per call", a)
	}
}
