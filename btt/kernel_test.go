package btt_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"testing"

	"github.com/google/uuid"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// openKernelImage opens a kernel-written image's namespace (the file minus
// its label area).
func openKernelImage(t *testing.T, k *testutil.KernelImage, ro bool) (*btt.BTT, pmem.Device, string) {
	t.Helper()
	path := k.Extract(t, t.TempDir())
	dev, err := pmem.Open(path, pmem.Options{ReadOnly: ro})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	ns, err := pmem.NewWindow(dev, 0, k.Int(t, "namespace_bytes"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := btt.Open(ns, btt.Options{ReadOnly: ro})
	if err != nil {
		t.Fatalf("%s: open: %v", k.Name, err)
	}
	return b, ns, path
}

// TestKernelImages reads the BTT images written by Linux's nd_btt and
// checks every sector hash and the whole-device hash of their .expect files.
func TestKernelImages(t *testing.T) {
	for _, k := range testutil.KernelImages(t) {
		t.Run(k.Name, func(t *testing.T) {
			for _, ro := range []bool{true, false} {
				b, _, _ := openKernelImage(t, k, ro)
				verifyKernelImage(t, k, b)
			}
		})
	}
}

func verifyKernelImage(t *testing.T, k *testutil.KernelImage, b *btt.BTT) {
	t.Helper()
	if got, want := uuid.UUID(b.UUID()).String(), k.Keys["btt_uuid"]; got != want {
		t.Errorf("uuid %s, want %s", got, want)
	}
	if got, want := b.Version().String(), k.Keys["btt_version"]; got != want {
		t.Errorf("version %s, want %s", got, want)
	}
	if got, want := b.InitialOffset(), k.Int(t, "btt_info_offset"); got != want {
		t.Errorf("offset %d, want %d", got, want)
	}
	if got, want := int64(b.SectorSize()), k.Int(t, "sector_size"); got != want {
		t.Errorf("sector size %d, want %d", got, want)
	}
	if got, want := int64(b.Sectors()), k.Int(t, "device_sectors"); got != want {
		t.Errorf("sectors %d, want %d", got, want)
	}
	if nu := k.Keys["namespace_uuid"]; nu != "" {
		if got := uuid.UUID(b.ParentUUID()).String(); got != nu {
			t.Errorf("parent uuid %s, want %s", got, nu)
		}
	}
	ss := b.SectorSize()
	want := map[uint64]string{}
	for _, s := range k.Sectors {
		want[s.LBA] = s.SHA256
	}
	whole := sha256.New()
	buf := make([]byte, ss*64)
	zero := make([]byte, ss)
	for lba := uint64(0); lba < b.Sectors(); {
		n := min(uint64(64), b.Sectors()-lba)
		p := buf[:n*uint64(ss)]
		if err := b.ReadSectors(p, lba); err != nil {
			t.Fatalf("read LBA %d: %v", lba, err)
		}
		whole.Write(p)
		for i := uint64(0); i < n; i++ {
			sec := p[i*uint64(ss) : (i+1)*uint64(ss)]
			if h, ok := want[lba+i]; ok {
				sum := sha256.Sum256(sec)
				if hex.EncodeToString(sum[:]) != h {
					t.Errorf("LBA %d: sha256 %x, want %s", lba+i, sum, h)
				}
			} else if !bytes.Equal(sec, zero) {
				t.Errorf("LBA %d: not zero", lba+i)
			}
		}
		lba += n
	}
	if got := hex.EncodeToString(whole.Sum(nil)); got != k.Keys["whole_sha256"] {
		t.Errorf("whole-device sha256 %s, want %s", got, k.Keys["whole_sha256"])
	}
}

// TestKernelImageWriteBack writes through nvblk on a kernel image, reopens,
// and checks both the new and the untouched sectors.
func TestKernelImageWriteBack(t *testing.T) {
	for _, k := range testutil.KernelImages(t) {
		t.Run(k.Name, func(t *testing.T) {
			b, ns, _ := openKernelImage(t, k, false)
			ss := b.SectorSize()
			lbas := []uint64{0, 1, 7, b.Sectors() - 1}
			for i, lba := range lbas {
				p := bytes.Repeat([]byte{byte(0xA0 + i)}, ss)
				for j := 0; j < 3; j++ { // cycle the lane's sequence numbers
					if err := b.WriteSectors(p, lba); err != nil {
						t.Fatal(err)
					}
				}
			}
			b.Close()
			b2, err := btt.Open(ns, btt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			got := make([]byte, ss)
			for i, lba := range lbas {
				if err := b2.ReadSectors(got, lba); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, bytes.Repeat([]byte{byte(0xA0 + i)}, ss)) {
					t.Errorf("LBA %d lost its write", lba)
				}
			}
			// An untouched written sector keeps its kernel content.
			for _, s := range k.Sectors {
				if s.LBA < 2 || s.LBA == 7 {
					continue
				}
				if err := b2.ReadSectors(got, s.LBA); err != nil {
					t.Fatal(err)
				}
				sum := sha256.Sum256(got)
				if hex.EncodeToString(sum[:]) != s.SHA256 {
					t.Errorf("LBA %d changed", s.LBA)
				}
				break
			}
		})
	}
}
