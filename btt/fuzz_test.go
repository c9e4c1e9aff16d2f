package btt_test

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"sync"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/bttfixture"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmem/pmemtest"
)

const fuzzDevSize = 20 << 20

var (
	fuzzOnce sync.Once
	fuzzBase *pmemtest.CrashMem
)

// fuzzBaseDev is the clean fixture every fuzz input patches.
func fuzzBaseDev(t testing.TB) *pmemtest.CrashMem {
	fuzzOnce.Do(func() {
		m := pmemtest.NewCrashMem(fuzzDevSize)
		if err := bttfixture.Cases()[0].Build(m); err != nil {
			t.Fatal(err)
		}
		// As if the BTT had been closed: every store on the media (the
		// last write of each lane leaves its map line for later).
		fuzzBase = m.CrashAll()
	})
	return fuzzBase
}

// patches encodes byte edits as [u32 offset][u8 len][bytes]...
func encodePatches(base, img []byte) []byte {
	var out []byte
	for i := 0; i < len(img) && len(out) < 1<<14; {
		if base[i] == img[i] {
			i++
			continue
		}
		j := i
		for j < len(img) && j-i < 255 && base[j] != img[j] {
			j++
		}
		var h [5]byte
		binary.LittleEndian.PutUint32(h[:], uint32(i))
		h[4] = byte(j - i)
		out = append(append(out, h[:]...), img[i:j]...)
		i = j
	}
	return out
}

// patchAt encodes p written at off.
func patchAt(off int, p []byte) []byte {
	var out []byte
	for i := 0; i < len(p); i += 255 {
		n := min(255, len(p)-i)
		var h [5]byte
		binary.LittleEndian.PutUint32(h[:], uint32(off+i))
		h[4] = byte(n)
		out = append(append(out, h[:]...), p[i:i+n]...)
	}
	return out
}

func applyPatches(dev pmem.Device, data []byte) {
	for len(data) >= 5 {
		off := int64(binary.LittleEndian.Uint32(data)) % dev.Size()
		n := int(data[4])
		data = data[5:]
		n = min(n, len(data))
		dev.WriteAt(data[:n], off)
		data = data[n:]
	}
}

// FuzzOpenCheck: any damage to a BTT image must give errors, never a
// panic, and whatever Open accepts must read without panicking; whatever
// Check calls clean must pass the permutation invariant. Seeds are the
// checker's fixtures, as patches over a clean image.
func FuzzOpenCheck(f *testing.F) {
	base := fuzzBaseDev(f)
	clean := base.Snapshot()
	for _, c := range bttfixture.Cases() {
		if c.Size != fuzzDevSize || c.Truncate != 0 {
			continue
		}
		m := pmemtest.NewCrashMem(c.Size)
		if err := c.Build(m); err != nil {
			f.Fatal(err)
		}
		f.Add(encodePatches(clean, m.Snapshot()))
	}
	// Hostile geometry: huge counts with a valid checksum.
	hostile := make([]byte, btt.InfoSize)
	base.ReadAt(hostile, 4096)
	ib := btt.DecodeInfo(hostile)
	ib.NFree, ib.InternalNLBA, ib.ExternalNLBA = 65536, 1<<30, 1<<30-65536
	ib.Encode(hostile)
	f.Add(patchAt(4096, hostile))
	f.Fuzz(func(t *testing.T, data []byte) {
		dev := fuzzBaseDev(t).CrashDurableOnly()
		applyPatches(dev, data)
		if b, err := btt.Open(dev, btt.Options{ReadOnly: true}); err == nil {
			p := make([]byte, b.SectorSize())
			for _, lba := range []uint64{0, 1, 15, b.Sectors() / 2, b.Sectors() - 1} {
				b.ReadSectors(p, lba)
			}
		}
		rep, err := btt.Check(dev, btt.CheckOptions{})
		if err == nil && rep.Clean() {
			if err := btt.VerifyPermutation(dev); err != nil {
				t.Fatalf("check says clean, but: %v", err)
			}
		}
	})
}

// TestHostileGeometryAllocations: info blocks with valid checksums and
// huge counts must not make Open or Check allocate in proportion to the
// counts: every allocation is bounded by the device.
func TestHostileGeometryAllocations(t *testing.T) {
	base := fuzzBaseDev(t)
	edits := map[string]func(*btt.Info){
		"nfree":         func(ib *btt.Info) { ib.NFree = 65536; ib.InternalNLBA = ib.ExternalNLBA + 65536 },
		"nfree-max":     func(ib *btt.Info) { ib.NFree = 1<<32 - 1 },
		"internal-nlba": func(ib *btt.Info) { ib.InternalNLBA, ib.ExternalNLBA = 1<<30, 1<<30-256 },
		"offsets":       func(ib *btt.Info) { ib.MapOff, ib.LogOff, ib.Info2Off = 1<<62, 1<<62+1, 1<<63 },
		"nextoff":       func(ib *btt.Info) { ib.NextOff = 4096 },
		"lbasize":       func(ib *btt.Info) { ib.InternalLBASize, ib.ExternalLBASize = 1<<31, 1<<31 },
	}
	for name, edit := range edits {
		dev := base.CrashDurableOnly()
		buf := make([]byte, btt.InfoSize)
		dev.ReadAt(buf, 4096)
		ib := btt.DecodeInfo(buf)
		edit(&ib)
		ib.Encode(buf)
		dev.WriteAt(buf, 4096)
		var m0, m1 runtime.MemStats
		runtime.ReadMemStats(&m0)
		_, oerr := btt.Open(dev, btt.Options{ReadOnly: true})
		rep, cerr := btt.Check(dev, btt.CheckOptions{})
		runtime.ReadMemStats(&m1)
		if d := m1.TotalAlloc - m0.TotalAlloc; d > 16<<20 {
			t.Errorf("%s: open+check allocated %d bytes", name, d)
		}
		if oerr == nil && name != "nextoff" {
			t.Errorf("%s: hostile geometry accepted by Open", name)
		}
		if cerr == nil && rep.Clean() {
			t.Errorf("%s: hostile geometry passes Check", name)
		}
	}
}

// FuzzLogRepair: damage confined to arena 0's log, then check --repair.
// The repair never changes what a sector reads: if the BTT opened before
// it, every sampled sector reads the same after it; and whatever the
// damage, a sector reads what was written (bttfixture.WrittenData)
// unless the log names it as a committed write that the repair rolled
// forward. A repair that reports nothing left must leave a BTT that
// opens. Seeds: the log damage fixtures.
func FuzzLogRepair(f *testing.F) {
	base := fuzzBaseDev(f)
	clean := base.Snapshot()
	for _, c := range bttfixture.Cases() {
		if !logDamage[c.Name] || c.Size != fuzzDevSize {
			continue
		}
		m := pmemtest.NewCrashMem(c.Size)
		if err := c.Build(m); err != nil {
			f.Fatal(err)
		}
		f.Add(encodePatches(clean, m.Snapshot()))
	}
	b, err := btt.Open(base.CrashDurableOnly(), btt.Options{ReadOnly: true})
	if err != nil {
		f.Fatal(err)
	}
	a := b.Arenas()[0]
	logOff, logLen := a.Offset+int64(a.Info.LogOff), int64(a.Info.NFree)*btt.LogGroupSize
	mapOff := a.Offset + int64(a.Info.MapOff)
	ss := b.SectorSize()
	sample := []uint64{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 100, b.Sectors() - 1}
	read := func(t *testing.T, b *btt.BTT) map[uint64][]byte {
		out := map[uint64][]byte{}
		for _, lba := range sample {
			p := make([]byte, ss)
			if b.ReadSectors(p, lba) == nil {
				out[lba] = p
			}
		}
		return out
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		dev := fuzzBaseDev(t).CrashDurableOnly()
		for len(data) >= 5 { // patches as applyPatches, inside the log
			off := logOff + int64(binary.LittleEndian.Uint32(data))%logLen
			n := min(int(data[4]), len(data)-5, int(logOff+logLen-off))
			dev.WriteAt(data[5:5+n], off)
			data = data[5+n:]
		}
		var before map[uint64][]byte
		if b, err := btt.Open(dev, btt.Options{ReadOnly: true}); err == nil {
			before = read(t, b)
		}
		rep, err := btt.Check(dev, btt.CheckOptions{Repair: true})
		if err != nil {
			t.Fatalf("check --repair of a BTT with an intact info block and map: %v", err)
		}
		rolled := map[uint64]bool{}
		for _, f := range rep.Findings {
			if f.Code == btt.CodeRollForward {
				rolled[uint64(f.Offset-mapOff)/4] = true
			}
		}
		after, err := btt.Open(dev, btt.Options{ReadOnly: true})
		if err != nil {
			if rep.Remaining == 0 {
				t.Fatalf("repair left nothing to do, but open fails: %v\n%s", err, findings(rep))
			}
			return
		}
		got := read(t, after)
		for _, lba := range sample {
			if before != nil && !bytes.Equal(before[lba], got[lba]) {
				t.Fatalf("LBA %d read differently before and after the repair\n%s", lba, findings(rep))
			}
			if !rolled[lba] && !bytes.Equal(got[lba], bttfixture.WrittenData(lba, ss)) {
				t.Fatalf("LBA %d lost its data in the repair\n%s", lba, findings(rep))
			}
		}
	})
}
