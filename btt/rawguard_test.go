package btt_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmem/pmemtest"
)

// claimed is a device whose (namespace label) claim class is cc.
type claimed struct {
	pmem.Device
	cc string
}

func (c claimed) ClaimClass() string { return c.cc }

// TestRawRefusesDamagedBTT: the raw driver's probe refuses a device that
// no driver claims but that carries a damaged BTT's marks, Open fails
// with block.ErrNotRaw naming the reason, and ForceRaw opens it raw.
func TestRawRefusesDamagedBTT(t *testing.T) {
	const size = 20 << 20
	const label = 128 << 10
	newBTT := func(t *testing.T, v btt.Version, devSize, nsSize int64) (*pmemtest.CrashMem, int64) {
		t.Helper()
		dev := pmemtest.NewCrashMem(devSize)
		ns, err := pmem.NewWindow(dev, 0, nsSize)
		if err != nil {
			t.Fatal(err)
		}
		b, err := btt.Create(ns, btt.CreateOptions{Version: v, LBASize: 4096})
		if err != nil {
			t.Fatal(err)
		}
		info2 := b.Arenas()[0].Offset + int64(b.Arenas()[0].Info.Info2Off)
		b.Close()
		return dev, info2
	}
	zero := func(t *testing.T, dev pmem.Device, off, n int64) {
		t.Helper()
		if _, err := dev.WriteAtPersist(make([]byte, n), off); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name string
		dev  func(t *testing.T) pmem.Device
		why  string // "" : raw is fine
	}{
		{"blank", func(t *testing.T) pmem.Device { return pmemtest.NewCrashMem(size) }, ""},
		{"label names btt2, blank", func(t *testing.T) pmem.Device {
			return claimed{pmemtest.NewCrashMem(size), "btt2"}
		}, "names the BTT claim class (btt2"},
		{"label names btt, blank", func(t *testing.T) pmem.Device {
			return claimed{pmemtest.NewCrashMem(size), "btt"}
		}, "names the BTT claim class (btt:"},
		{"label names pfn, blank", func(t *testing.T) pmem.Device {
			return claimed{pmemtest.NewCrashMem(size), "pfn"}
		}, ""},
		{"primary and backup checksums damaged", func(t *testing.T) pmem.Device {
			dev, info2 := newBTT(t, btt.V11, size, size)
			dev.WriteAtPersist([]byte{0xff}, 4096+100)
			dev.WriteAtPersist([]byte{0xff}, info2+100)
			return dev
		}, "info block signature at byte 0x1000"},
		{"2.0 primary zeroed, backup before a label area", func(t *testing.T) pmem.Device {
			dev, _ := newBTT(t, btt.V20, size+label, size)
			zero(t, dev, 0, 4096)
			return dev
		}, "last 128 KiB are a namespace label area"},
		{"1.1 primary zeroed, backup before a 256 KiB label area", func(t *testing.T) pmem.Device {
			dev, _ := newBTT(t, btt.V11, size+256<<10, size)
			zero(t, dev, 4096, 4096)
			return dev
		}, "last 256 KiB are a namespace label area"},
		{"all info blocks zeroed: the flog", func(t *testing.T) pmem.Device {
			dev, info2 := newBTT(t, btt.V11, size, size)
			zero(t, dev, 4096, 4096)
			zero(t, dev, info2, 4096)
			return dev
		}, "a BTT log (flog)"},
		{"2.0, written, all info blocks zeroed, before a label area: the flog", func(t *testing.T) pmem.Device {
			dev, info2 := newBTT(t, btt.V20, size+label, size)
			ns, _ := pmem.NewWindow(dev, 0, size)
			b, err := btt.Open(ns, btt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for lba := range uint64(40) {
				if err := b.WriteSectors(make([]byte, 4096), lba*7); err != nil {
					t.Fatal(err)
				}
			}
			b.Close()
			zero(t, dev, 0, 4096)
			zero(t, dev, info2, 4096)
			return dev
		}, "a BTT log (flog)"},
		{"GPT with a BTT in its last partition", func(t *testing.T) pmem.Device {
			dev := pmemtest.NewCrashMem(2 * size)
			tb, err := partition.Create(dev, []partition.Spec{{Size: size / 2, Name: "a"}, {Name: "b"}}, partition.Options{})
			if err != nil {
				t.Fatal(err)
			}
			w, err := tb.Window(dev, 2)
			if err != nil {
				t.Fatal(err)
			}
			b, err := btt.Create(w, btt.CreateOptions{Version: btt.V11, LBASize: 512})
			if err != nil {
				t.Fatal(err)
			}
			b.Close()
			return dev
		}, ""},
		{"everything zeroed", func(t *testing.T) pmem.Device {
			dev, info2 := newBTT(t, btt.V11, size, size)
			zero(t, dev, 0, info2+4096)
			return dev
		}, ""},
		{"random bytes", func(t *testing.T) pmem.Device {
			dev := pmemtest.NewCrashMem(size + label)
			b := make([]byte, size+label)
			for i := range b {
				b[i] = byte(i*7919 + i>>9)
			}
			dev.WriteAtPersist(b, 0)
			return dev
		}, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dev := c.dev(t)
			drv, desc := block.Probe(dev)
			if c.why == "" {
				if drv.Name != "raw" {
					t.Fatalf("probe: %s (%s), want raw", drv.Name, desc)
				}
				return
			}
			if drv.Name != "unclaimed" || !strings.Contains(desc, c.why) {
				t.Fatalf("probe: %s (%s), want unclaimed because %q", drv.Name, desc, c.why)
			}
			if rawDrv, _ := block.Lookup("raw"); rawDrv.Probe != nil {
				if ok, _ := rawDrv.Probe(dev); ok {
					t.Error("the raw driver's probe claims it")
				}
			}
			if _, _, err := block.Open(dev, block.OpenOptions{}); !errors.Is(err, block.ErrNotRaw) || !strings.Contains(err.Error(), c.why) {
				t.Errorf("open: %v", err)
			}
			bd, d, err := block.Open(dev, block.OpenOptions{ForceRaw: true})
			if err != nil || d.Name != "raw" {
				t.Fatalf("open with ForceRaw: %v %s", err, d.Name)
			}
			bd.Close()
		})
	}
}
