package nslabel_test

import (
	"compress/gzip"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/nslabel"
)

// kernelLabels returns the label area of testdata/kernel's labelled image
// (written by Linux 6.1 through qemu's label DSM) and its .expect keys.
func kernelLabels(t *testing.T) ([]byte, *testutil.KernelImage) {
	t.Helper()
	for _, k := range testutil.KernelImages(t) {
		n := k.Int(t, "label_area_bytes")
		if n == 0 {
			continue
		}
		f, err := os.Open(filepath.Join(testutil.RepoRoot(), "testdata", "kernel", k.Name+".img.gz"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		zr, err := gzip.NewReader(f)
		if err != nil {
			t.Fatal(err)
		}
		img, err := io.ReadAll(zr)
		if err != nil {
			t.Fatal(err)
		}
		return img[len(img)-int(n):], k
	}
	t.Fatal("no labelled image in testdata/kernel")
	return nil, nil
}

func TestKernelWrittenLabels(t *testing.T) {
	area, k := kernelLabels(t)
	a, err := nslabel.Parse(area)
	if err != nil {
		t.Fatal(err)
	}
	if a.Version() != "1.2" || a.LabelSize != 256 {
		t.Errorf("version %s, label size %d; want 1.2, 256", a.Version(), a.LabelSize)
	}
	ix := a.Index[a.Current]
	if ix.NSlot != 510 || nslabel.IndexSize(len(area), 256) != 256 || ix.LabelOff != 512 {
		t.Errorf("index %+v", ix)
	}
	if len(a.Labels) != 1 || len(a.Skipped) != 0 {
		t.Fatalf("%d active labels (%d skipped), want 1", len(a.Labels), len(a.Skipped))
	}
	l := a.Labels[0]
	if got, want := l.UUIDString(), k.Keys["namespace_uuid"]; got != want {
		t.Errorf("namespace uuid %s, want %s", got, want)
	}
	if l.ClaimClass() != "btt2" {
		t.Errorf("claim class %s (%s), want btt2", l.ClaimClass(), l.AbstractionGUID)
	}
	if l.TypeGUID != nslabel.GUIDSPAPM {
		t.Errorf("type guid %s, want %s", l.TypeGUID, nslabel.GUIDSPAPM)
	}
	if l.LBASize != uint64(k.Int(t, "sector_size")) || l.DPA != 0 || l.RawSize != uint64(k.Int(t, "namespace_bytes")) {
		t.Errorf("lbasize %d dpa %#x rawsize %#x", l.LBASize, l.DPA, l.RawSize)
	}
	if l.NLabel != 1 || l.Position != 0 || l.Flags&nslabel.FlagUpdating != 0 {
		t.Errorf("nlabel %d position %d flags %#x", l.NLabel, l.Position, l.Flags)
	}
	t.Logf("index %d seq %d; label slot %d: uuid %s claim %s lbasize %d dpa %#x rawsize %#x cookie %#x flags %#x",
		a.Current, ix.Seq, l.Slot, l.UUIDString(), l.ClaimClass(), l.LBASize, l.DPA, l.RawSize, l.ISetCookie, l.Flags)
}

// TestIndexFallback: a damaged current index falls back to the other one;
// both damaged leaves no index.
func TestIndexFallback(t *testing.T) {
	area, _ := kernelLabels(t)
	a, err := nslabel.Parse(area)
	if err != nil {
		t.Fatal(err)
	}
	cur := a.Current
	bad := append([]byte(nil), area...)
	bad[a.Index[cur].Offset+40] ^= 1 // otheroff, covered by the checksum
	b, err := nslabel.Parse(bad)
	if err != nil {
		t.Fatal(err)
	}
	if b.Current != 1-cur || b.Index[cur].Err == nil {
		t.Errorf("current %d after damaging index %d (err %v)", b.Current, cur, b.Index[cur].Err)
	}
	bad[a.Index[1-cur].Offset] ^= 1 // signature
	if _, err := nslabel.Parse(bad); !errors.Is(err, nslabel.ErrNoIndex) {
		t.Errorf("both indexes damaged: %v", err)
	}
	if _, err := nslabel.Parse(make([]byte, 128<<10)); !errors.Is(err, nslabel.ErrNoIndex) {
		t.Errorf("blank area: %v", err)
	}
}

// TestLabelChecksum: a label with a bad checksum is skipped, as the
// kernel's slot_valid does.
func TestLabelChecksum(t *testing.T) {
	area, _ := kernelLabels(t)
	a, err := nslabel.Parse(area)
	if err != nil {
		t.Fatal(err)
	}
	l := a.Labels[0]
	bad := append([]byte(nil), area...)
	off := 2*nslabel.IndexSize(len(area), 256) + int(l.Slot)*256
	binary.LittleEndian.PutUint64(bad[off+96:], l.LBASize+1)
	b, err := nslabel.Parse(bad)
	if err != nil {
		t.Fatal(err)
	}
	if len(b.Labels) != 0 || len(b.Skipped) != 1 || b.Skipped[0].Err == nil {
		t.Errorf("labels %d, skipped %d", len(b.Labels), len(b.Skipped))
	}
}

func TestGUID(t *testing.T) {
	const s = "18633bfc-1735-4217-8ac9-17239282d3f8"
	g, err := nslabel.ParseGUID(s)
	if err != nil {
		t.Fatal(err)
	}
	if g.String() != s || g[0] != 0xfc || g[3] != 0x18 || g[4] != 0x35 || g[6] != 0x17 || g[8] != 0x8a {
		t.Errorf("%s: % x", g, g[:])
	}
	if _, err := nslabel.ParseGUID("18633bfc"); err == nil {
		t.Error("short GUID parsed")
	}
}

func TestFletcher64(t *testing.T) {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b[0:], 1)
	binary.LittleEndian.PutUint32(b[4:], 2)
	binary.LittleEndian.PutUint32(b[8:], 3)
	binary.LittleEndian.PutUint32(b[12:], 0xffffffff)
	// lo: 1, 3, 6, 5 (wraps); hi: 1 + 3 + 6 + 5.
	if got, want := nslabel.Fletcher64(b), uint64(15)<<32|5; got != want {
		t.Errorf("%#x, want %#x", got, want)
	}
}
