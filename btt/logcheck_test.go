package btt_test

import (
	"bytes"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/bttfixture"
	"github.com/nvblk/nvblk/internal/testutil"
)

// logDamage names the fixtures whose damage is in the log.
var logDamage = map[string]bool{
	"equal-seq": true, "oob-seq": true, "log-padding-byte": true, "log-torn-current": true,
	"log-dup-seq": true, "log-invalid-pair": true, "log-several-lanes": true,
}

// TestLogRepairKeepsData: every log damage fixture makes the BTT
// unopenable (as it makes it for Linux), check --repair rebuilds the
// damaged lanes, and afterwards every sector reads what was written
// before the damage.
func TestLogRepairKeepsData(t *testing.T) {
	n := 0
	for _, c := range bttfixture.Cases() {
		if !logDamage[c.Name] {
			continue
		}
		n++
		t.Run(c.Name, func(t *testing.T) {
			dev := buildFixture(t, c)
			if _, err := btt.Open(dev, btt.Options{ReadOnly: true}); err == nil {
				t.Fatal("the damage does not stop Open: the fixture tests nothing")
			}
			rep, err := btt.Check(dev, btt.CheckOptions{Repair: true})
			if err != nil || rep.ExitCode() != 1 {
				t.Fatalf("repair: exit %d, %v\n%s", rep.ExitCode(), err, findings(rep))
			}
			t.Logf("\n%s", findings(rep))
			b, err := btt.Open(dev, btt.Options{})
			if err != nil {
				t.Fatalf("open after repair: %v", err)
			}
			p := make([]byte, b.SectorSize())
			for lba := uint64(0); lba < b.Sectors(); lba++ {
				if err := b.ReadSectors(p, lba); err != nil {
					t.Fatalf("LBA %d: %v", lba, err)
				}
				if !bytes.Equal(p, bttfixture.WrittenData(lba, len(p))) {
					t.Fatalf("LBA %d reads other data after the repair", lba)
				}
			}
			// The repaired lanes work: write through every lane.
			for lba := uint64(100); lba < 100+3*uint64(btt.DefaultNFree); lba++ {
				if err := b.WriteSectors(bytes.Repeat([]byte{byte(lba)}, len(p)), lba%b.Sectors()); err != nil {
					t.Fatal(err)
				}
			}
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if err := btt.VerifyPermutation(dev); err != nil {
				t.Fatal(err)
			}
		})
	}
	if n != len(logDamage) {
		t.Fatalf("only %d log damage fixtures", n)
	}
}

// TestLogRepairKernelImages: the Linux-written images, with their logs
// damaged (a padding byte, equal and impossible sequence numbers), are
// refused, then repaired by check --repair, and read every sector the
// kernel wrote byte-identical (the .expect hashes).
func TestLogRepairKernelImages(t *testing.T) {
	for _, k := range testutil.KernelImages(t) {
		t.Run(k.Name, func(t *testing.T) {
			b, ns, _ := openKernelImage(t, k, false)
			a := b.Arenas()[0]
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			if a.LogIndex != [2]int{0, 1} {
				t.Fatalf("log layout %v: DamageLanes writes (0,1) logs", a.LogIndex)
			}
			if err := bttfixture.DamageLanes(ns, a.Offset+int64(a.Info.LogOff), int(a.Info.NFree)); err != nil {
				t.Fatal(err)
			}
			if _, err := btt.Open(ns, btt.Options{ReadOnly: true}); err == nil {
				t.Fatal("the damaged image still opens")
			}
			rep, err := btt.Check(ns, btt.CheckOptions{Repair: true})
			if err != nil || rep.ExitCode() != 1 {
				t.Fatalf("repair: exit %d, %v\n%s", rep.ExitCode(), err, findings(rep))
			}
			if rep.Repaired != 3 {
				t.Errorf("%d repairs, want 3\n%s", rep.Repaired, findings(rep))
			}
			b, err = btt.Open(ns, btt.Options{ReadOnly: true})
			if err != nil {
				t.Fatalf("open after repair: %v", err)
			}
			verifyKernelImage(t, k, b)
		})
	}
}
