package btt

import (
	"errors"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// TestZeroRunBadMapEntry: a badblock over map entries 256..383 ends the
// run before entry 256 (sectors 0..255 read fine), and a run starting at
// a bad entry is an error naming that LBA.
func TestZeroRunBadMapEntry(t *testing.T) {
	dev, err := pmem.NewRAM(32 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	b, err := Create(dev, CreateOptions{LBASize: 4096, Options: Options{Lanes: 4}})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.ZeroSectors(0, 512); err != nil {
		t.Fatal(err)
	}
	a := b.arenas[0]
	dev.BadBlocks().Add(a.mapOff+4*256, 512)
	buf := make([]byte, 4096)
	for lba := uint64(0); lba < 256; lba++ {
		if err := b.ReadSectors(buf, lba); err != nil {
			t.Fatalf("read %d: %v", lba, err)
		}
	}
	if err := b.ReadSectors(buf, 256); err == nil {
		t.Fatalf("read 256 should fail (its map entry is bad)")
	}
	n, z, err := b.ZeroRun(0, 512)
	if err != nil || n != 256 || !z {
		t.Fatalf("ZeroRun(0, 512) = %d, %v, %v; want 256, true, nil (the readable prefix)", n, z, err)
	}
	var se *SectorError
	if _, _, err := b.ZeroRun(300, 10); !errors.As(err, &se) || se.LBA != 300 {
		t.Fatalf("ZeroRun(300, 10) over a bad map entry: %v, want a SectorError for LBA 300", err)
	}
}
