package partition

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"runtime"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

func ram(t testing.TB, size int64) pmem.Device {
	t.Helper()
	d, err := pmem.NewRAM(size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

var (
	testDisk = MustParseGUID("11111111-2222-4333-8444-555555555555")
	testP1   = MustParseGUID("a1a1a1a1-0001-4000-8000-000000000001")
	testP2   = MustParseGUID("a1a1a1a1-0002-4000-8000-000000000002")
	testP3   = MustParseGUID("a1a1a1a1-0003-4000-8000-000000000003")
)

func threeParts() []Spec {
	return []Spec{
		{Size: 16 << 20, Name: "data", GUID: testP1},
		{Size: 8 << 20, Name: "log", GUID: testP2, Attributes: 1 << 60},
		{Size: 0, Name: "rest", GUID: testP3},
	}
}

func TestGUIDMixedEndian(t *testing.T) {
	var b [16]byte
	putGUID(b[:], LinuxFilesystemData)
	want := []byte{0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4}
	if !bytes.Equal(b[:], want) {
		t.Fatalf("on-disk bytes % X, want % X", b, want)
	}
	if g := getGUID(b[:]); g != LinuxFilesystemData {
		t.Fatalf("decoded %s", g)
	}
	if s := LinuxFilesystemData.String(); s != "0fc63daf-8483-4772-8e79-3d69d8477de4" {
		t.Fatalf("text %s", s)
	}
	g := NewGUID()
	if g[6]>>4 != 4 || g[8]>>6 != 2 || g == NewGUID() {
		t.Fatalf("NewGUID %s is not a random v4 GUID", g)
	}
	if _, err := ParseGUID("nope"); err == nil {
		t.Fatal("ParseGUID accepted garbage")
	}
}

func TestNames(t *testing.T) {
	for _, name := range []string{"", "data", "données", "日本語", "log \U0001F600 x", strings.Repeat("n", NameLen)} {
		var e entry
		e.name = name
		b := make([]byte, EntrySize)
		if err := e.encode(b); err != nil {
			t.Fatalf("%q: %v", name, err)
		}
		if got := decodeEntry(b).name; got != name {
			t.Errorf("name %q decoded as %q", name, got)
		}
	}
	// UTF-16LE on media.
	var e entry
	e.name = "Aé"
	b := make([]byte, EntrySize)
	e.encode(b)
	if !bytes.Equal(b[56:62], []byte{'A', 0, 0xE9, 0, 0, 0}) {
		t.Errorf("name bytes % X", b[56:62])
	}
	for _, bad := range []string{strings.Repeat("n", NameLen+1), strings.Repeat("\U0001F600", 19), "a\x00b"} {
		if _, err := encodeName(bad); !errors.Is(err, ErrLayout) {
			t.Errorf("name %q accepted", bad)
		}
	}
	// An unpaired surrogate decodes as U+FFFD rather than failing.
	raw := make([]byte, 2*NameLen)
	binary.LittleEndian.PutUint16(raw, 0xD800)
	binary.LittleEndian.PutUint16(raw[2:], 'x')
	if got := decodeName(raw); got != "\uFFFDx" {
		t.Errorf("unpaired surrogate: %q", got)
	}
}

func TestPlan(t *testing.T) {
	const size = 64 << 20
	tb, err := Plan(size, threeParts(), Options{DiskGUID: testDisk})
	if err != nil {
		t.Fatal(err)
	}
	last := uint64(size/SectorSize - 1)
	if tb.FirstUsableLBA != 34 || tb.LastUsableLBA != last-33 || tb.LastLBA != last || tb.Entries != 128 {
		t.Fatalf("geometry %+v", tb)
	}
	want := []struct{ first, last uint64 }{
		{2048, 2048 + 32768 - 1},
		{34816, 34816 + 16384 - 1},
		{51200, (last-33+1)/2048*2048 - 1},
	}
	for i, p := range tb.Partitions {
		if p.Number != i+1 || p.FirstLBA != want[i].first || p.LastLBA != want[i].last || p.Type != LinuxFilesystemData {
			t.Errorf("partition %d: %+v, want LBAs %d-%d", i+1, p, want[i].first, want[i].last)
		}
	}
	if s := tb.Partitions[2].Size(); s%4096 != 0 {
		t.Errorf("rest partition size %d is not whole pages", s)
	}
	if tb.Partitions[0].Offset() != 1<<20 || tb.Partitions[0].Size() != 16<<20 {
		t.Errorf("offset/size %d/%d", tb.Partitions[0].Offset(), tb.Partitions[0].Size())
	}

	for name, c := range map[string]struct {
		size  int64
		specs []Spec
		opt   Options
	}{
		"rest-not-last":  {size, []Spec{{Size: 0}, {Size: 1 << 20}}, Options{}},
		"too-big":        {size, []Spec{{Size: 64 << 20}}, Options{}},
		"second-too-big": {size, []Spec{{Size: 32 << 20}, {Size: 32 << 20}}, Options{}},
		"odd-size":       {size, []Spec{{Size: 1000}}, Options{}},
		"negative":       {size, []Spec{{Size: -512}}, Options{}},
		"long-name":      {size, []Spec{{Size: 1 << 20, Name: strings.Repeat("x", 37)}}, Options{}},
		"tiny-device":    {16 << 10, []Spec{{Size: 512}}, Options{}},
		"bad-align":      {size, []Spec{{Size: 1 << 20}}, Options{Alignment: 1000}},
		"too-many":       {size, make([]Spec, 5), Options{Entries: 4}},
		"no-room-left":   {4129 * 512, []Spec{{Size: 1 << 20}, {Size: 0}}, Options{}},
	} {
		if _, err := Plan(c.size, c.specs, c.opt); !errors.Is(err, ErrLayout) {
			t.Errorf("%s: err %v, want ErrLayout", name, err)
		}
	}
}

func createThree(t *testing.T, size int64) (pmem.Device, *Table) {
	t.Helper()
	dev := ram(t, size)
	tb, err := Create(dev, threeParts(), Options{DiskGUID: testDisk})
	if err != nil {
		t.Fatal(err)
	}
	return dev, tb
}

func samePartitions(t *testing.T, got, want []Partition) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%d partitions, want %d: %+v", len(got), len(want), got)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Errorf("partition %d: %+v, want %+v", i+1, got[i], want[i])
		}
	}
}

func TestWriteRead(t *testing.T) {
	dev, tb := createThree(t, 64<<20)
	got, err := Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	if got.Kind != KindGPT || got.DiskGUID != testDisk || got.FromBackup || len(got.Warnings) != 0 ||
		got.FirstUsableLBA != tb.FirstUsableLBA || got.LastUsableLBA != tb.LastUsableLBA || got.Entries != 128 || got.EntrySize != 128 {
		t.Fatalf("read %+v", got)
	}
	samePartitions(t, got.Partitions, tb.Partitions)

	// The protective MBR and the header fields as the UEFI spec has them.
	b := make([]byte, SectorSize)
	dev.ReadAt(b, 0)
	ents, sig := decodeMBR(b)
	if !sig || ents[0].typ != 0xEE || ents[0].start != 1 || ents[0].count != uint32(64<<20/512-1) || ents[1] != (mbrEntry{}) {
		t.Errorf("protective MBR %+v sig %v", ents, sig)
	}
	dev.ReadAt(b, 512)
	h := decodeHeader(b)
	last := uint64(64<<20/512 - 1)
	if h.revision != 0x10000 || h.headerSize != 92 || h.myLBA != 1 || h.altLBA != last || h.entriesLBA != 2 {
		t.Errorf("primary header %+v", h)
	}
	dev.ReadAt(b, int64(last)*512)
	h = decodeHeader(b)
	if h.myLBA != last || h.altLBA != 1 || h.entriesLBA != last-32 {
		t.Errorf("backup header %+v", h)
	}
	// Both entry arrays hold the same bytes.
	p, bk := make([]byte, 16384), make([]byte, 16384)
	dev.ReadAt(p, 1024)
	dev.ReadAt(bk, int64(last-32)*512)
	if !bytes.Equal(p, bk) || crc32.ChecksumIEEE(p) != h.entriesCRC {
		t.Error("entry arrays differ or CRC mismatch")
	}
}

func TestWindows(t *testing.T) {
	dev, tb := createThree(t, 64<<20)
	for _, p := range tb.Partitions {
		w, err := tb.Window(dev, p.Number)
		if err != nil {
			t.Fatal(err)
		}
		if w.Size() != p.Size() {
			t.Fatalf("window %d size %d, want %d", p.Number, w.Size(), p.Size())
		}
		msg := []byte("partition content")
		if _, err := w.WriteAt(msg, 0); err != nil {
			t.Fatal(err)
		}
		if _, err := w.WriteAt(msg, w.Size()-int64(len(msg))); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(msg))
		dev.ReadAt(got, p.Offset())
		if !bytes.Equal(got, msg) {
			t.Errorf("partition %d: byte 0 of the window is not byte %d of the device", p.Number, p.Offset())
		}
		dev.ReadAt(got, p.Offset()+p.Size()-int64(len(msg)))
		if !bytes.Equal(got, msg) {
			t.Errorf("partition %d: the window's last bytes are not the partition's", p.Number)
		}
		if _, err := w.WriteAt(msg, w.Size()-1); !errors.Is(err, pmem.ErrOutOfRange) {
			t.Errorf("write past the window: %v", err)
		}
		w.Close()
	}
	// The table still reads clean: no window write strayed into it.
	if got, err := Read(dev); err != nil || len(got.Warnings) != 0 {
		t.Fatalf("after window writes: %v %v", err, got.Warnings)
	}
	if _, err := tb.Window(dev, 4); !errors.Is(err, ErrNoPartition) || !strings.Contains(err.Error(), "[1 2 3]") {
		t.Errorf("missing partition: %v", err)
	}
	if w, got, err := Open(dev, 2); err != nil || w.Size() != 8<<20 || got.Partitions[1].Name != "log" {
		t.Errorf("Open: %v", err)
	}
}

func flip(t *testing.T, dev pmem.Device, off int64) {
	t.Helper()
	b := make([]byte, 1)
	dev.ReadAt(b, off)
	b[0] ^= 0x40
	if _, err := dev.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func zero(t *testing.T, dev pmem.Device, off, n int64) {
	t.Helper()
	if _, err := dev.WriteAt(make([]byte, n), off); err != nil {
		t.Fatal(err)
	}
}

// TestDamagedPrimaryFallsBack: a bad header CRC, a zeroed header, a bad
// entry array and a wrong MyLBA in the primary all fall back to the
// backup, say so, and rewriting the table restores the primary.
func TestDamagedPrimaryFallsBack(t *testing.T) {
	for name, damage := range map[string]func(t *testing.T, dev pmem.Device){
		"header-crc":   func(t *testing.T, dev pmem.Device) { flip(t, dev, 512+60) },
		"zeroed":       func(t *testing.T, dev pmem.Device) { zero(t, dev, 512, 512) },
		"zeroed-all":   func(t *testing.T, dev pmem.Device) { zero(t, dev, 0, 34*512) },
		"entries-crc":  func(t *testing.T, dev pmem.Device) { flip(t, dev, 1024+130) },
		"signature":    func(t *testing.T, dev pmem.Device) { flip(t, dev, 512) },
		"header-field": func(t *testing.T, dev pmem.Device) { rewriteHeader(t, dev, 1, func(h *header) { h.myLBA = 7 }) },
	} {
		t.Run(name, func(t *testing.T) {
			dev, tb := createThree(t, 64<<20)
			damage(t, dev)
			got, err := Read(dev)
			if err != nil {
				t.Fatal(err)
			}
			if !got.FromBackup || len(got.Warnings) == 0 || !strings.Contains(got.Warnings[0], "primary GPT damaged") ||
				!strings.Contains(got.Warnings[0], "using the backup") {
				t.Fatalf("FromBackup %v, warnings %q", got.FromBackup, got.Warnings)
			}
			samePartitions(t, got.Partitions, tb.Partitions)
			if got.DiskGUID != testDisk {
				t.Errorf("disk GUID %s", got.DiskGUID)
			}
			if err := got.Write(dev); err != nil {
				t.Fatal(err)
			}
			again, err := Read(dev)
			if err != nil || again.FromBackup || len(again.Warnings) != 0 {
				t.Fatalf("after rewrite: %v %+v", err, again)
			}
		})
	}
}

// rewriteHeader decodes the header at lba, edits it and re-encodes it
// with a valid CRC.
func rewriteHeader(t testing.TB, dev pmem.Device, lba int64, edit func(*header)) {
	t.Helper()
	b := make([]byte, SectorSize)
	dev.ReadAt(b, lba*SectorSize)
	h := decodeHeader(b)
	edit(&h)
	h.encode(b)
	if _, err := dev.WriteAt(b, lba*SectorSize); err != nil {
		t.Fatal(err)
	}
}

func TestDamagedBackup(t *testing.T) {
	dev, tb := createThree(t, 64<<20)
	flip(t, dev, 64<<20-512+20)
	got, err := Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	if got.FromBackup || len(got.Warnings) != 1 || !strings.Contains(got.Warnings[0], "backup GPT damaged") {
		t.Fatalf("warnings %q", got.Warnings)
	}
	samePartitions(t, got.Partitions, tb.Partitions)
}

func TestBothDamaged(t *testing.T) {
	dev, _ := createThree(t, 64<<20)
	flip(t, dev, 512+60)
	zero(t, dev, 64<<20-512, 512)
	_, err := Read(dev)
	var ce *CorruptError
	if !errors.Is(err, ErrCorrupt) || !errors.As(err, &ce) || !strings.Contains(err.Error(), "primary") ||
		!strings.Contains(err.Error(), "backup") || !strings.Contains(err.Error(), "CRC") {
		t.Fatalf("err %v", err)
	}
	// A protective MBR alone also says "there should be a GPT here".
	zero(t, dev, 512, 512)
	if _, err := Read(dev); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("protective MBR without GPT: %v", err)
	}
	zero(t, dev, 0, 512)
	if _, err := Read(dev); !errors.Is(err, ErrNoTable) {
		t.Fatalf("nothing left: %v", err)
	}
}

func TestNoTable(t *testing.T) {
	if _, err := Read(ram(t, 1<<20)); !errors.Is(err, ErrNoTable) {
		t.Fatalf("zeros: %v", err)
	}
	if _, err := Read(ram(t, 1024)); !errors.Is(err, ErrNoTable) {
		t.Fatalf("tiny: %v", err)
	}
	// A boot sector signature with a non-partition-table boot indicator.
	dev := ram(t, 1<<20)
	b := make([]byte, 512)
	b[510], b[511] = 0x55, 0xAA
	b[446] = 0x12
	dev.WriteAt(b, 0)
	if _, err := Read(dev); !errors.Is(err, ErrNoTable) {
		t.Fatalf("FAT-like boot sector: %v", err)
	}
}

// TestHostileHeaders: header fields that size allocations or loops are
// refused before anything is allocated, even with a valid header CRC.
func TestHostileHeaders(t *testing.T) {
	last := uint64(64<<20/512 - 1)
	for name, edit := range map[string]func(*header){
		"entries-huge":     func(h *header) { h.numEntries = 0xFFFFFFFF },
		"entries-zero":     func(h *header) { h.numEntries = 0 },
		"entry-size-huge":  func(h *header) { h.entrySize = 1 << 31 },
		"entry-size-small": func(h *header) { h.entrySize = 64 },
		"entry-size-odd":   func(h *header) { h.entrySize = 384 },
		"array-too-big":    func(h *header) { h.numEntries, h.entrySize = 1024, 4096 },
		"array-past-end":   func(h *header) { h.entriesLBA = 1 << 62 },
		"array-in-usable":  func(h *header) { h.entriesLBA = 100 },
		"array-on-header":  func(h *header) { h.entriesLBA = 1 },
		"usable-inverted":  func(h *header) { h.firstUsable, h.lastUsable = 500, 400 },
		"usable-past-end":  func(h *header) { h.lastUsable = last + 1 },
		"header-size-big":  func(h *header) { h.headerSize = 1 << 20 },
		"header-size-tiny": func(h *header) { h.headerSize = 8 },
	} {
		t.Run(name, func(t *testing.T) {
			dev, _ := createThree(t, 64<<20)
			if name == "header-size-big" || name == "header-size-tiny" {
				// encode would CRC that many bytes: write the field raw.
				b := make([]byte, 512)
				dev.ReadAt(b, 512)
				binary.LittleEndian.PutUint32(b[12:], map[string]uint32{"header-size-big": 1 << 20, "header-size-tiny": 8}[name])
				dev.WriteAt(b, 512)
			} else {
				rewriteHeader(t, dev, 1, edit)
			}
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			got, err := Read(dev)
			runtime.ReadMemStats(&ms1)
			if err != nil || !got.FromBackup {
				t.Fatalf("want a fallback to the backup: %v", err)
			}
			if a := ms1.TotalAlloc - ms0.TotalAlloc; a > 256<<10 {
				t.Errorf("Read allocated %d bytes", a)
			}
		})
	}
}

func TestBadEntries(t *testing.T) {
	dev := ram(t, 64<<20)
	tb, err := Plan(dev.Size(), threeParts(), Options{DiskGUID: testDisk})
	if err != nil {
		t.Fatal(err)
	}
	if err := tb.Write(dev); err != nil {
		t.Fatal(err)
	}
	// Edit partition 2's entry in both arrays to end past the device,
	// and partition 3's to overlap partition 1, with valid CRCs.
	last := uint64(64<<20/512 - 1)
	for _, arr := range []uint64{2, last - 32} {
		a := make([]byte, 16384)
		dev.ReadAt(a, int64(arr)*512)
		binary.LittleEndian.PutUint64(a[128+40:], last+10)
		binary.LittleEndian.PutUint64(a[256+32:], 4000)
		dev.WriteAt(a, int64(arr)*512)
		c := crc32.ChecksumIEEE(a)
		hdr := int64(1)
		if arr != 2 {
			hdr = int64(last)
		}
		rewriteHeader(t, dev, hdr, func(h *header) { h.entriesCRC = c })
	}
	got, err := Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Partitions) != 2 || got.Partitions[0].Number != 1 || got.Partitions[1].Number != 3 {
		t.Fatalf("partitions %+v", got.Partitions)
	}
	w := strings.Join(got.Warnings, "\n")
	if !strings.Contains(w, "partition 2") || !strings.Contains(w, "overlap") {
		t.Fatalf("warnings %q", got.Warnings)
	}
	if _, err := got.Window(dev, 2); !errors.Is(err, ErrNoPartition) {
		t.Fatalf("window on a left-out partition: %v", err)
	}
}

func TestMBR(t *testing.T) {
	dev := ram(t, 64<<20)
	b := make([]byte, 512)
	put := func(i int, boot, typ byte, start, count uint32) {
		e := b[446+16*i:]
		e[0], e[4] = boot, typ
		binary.LittleEndian.PutUint32(e[8:], start)
		binary.LittleEndian.PutUint32(e[12:], count)
	}
	put(0, 0x80, 0x83, 2048, 20480)
	put(1, 0, 0x83, 22528, 10240)
	put(2, 0, 0x05, 40960, 4096)
	put(3, 0, 0x83, 100000, 1<<30) // past the end
	binary.LittleEndian.PutUint32(b[440:], 0xdeadbeef)
	b[510], b[511] = 0x55, 0xAA
	dev.WriteAt(b, 0)
	got, err := Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	want := []Partition{
		{Number: 1, MBRType: 0x83, Attributes: 0x80, FirstLBA: 2048, LastLBA: 22527},
		{Number: 2, MBRType: 0x83, FirstLBA: 22528, LastLBA: 32767},
	}
	if got.Kind != KindMBR || got.DiskSignature != 0xdeadbeef || len(got.Warnings) != 2 {
		t.Fatalf("table %+v", got)
	}
	samePartitions(t, got.Partitions, want)
	if err := got.Write(dev); !errors.Is(err, ErrLayout) {
		t.Errorf("Write of an MBR table: %v", err)
	}
}

func TestWipe(t *testing.T) {
	dev := ram(t, 16<<20)
	ff := bytes.Repeat([]byte{0xFF}, 16<<20)
	dev.WriteAt(ff, 0)
	tb, err := Create(dev, []Spec{{Size: 4 << 20}, {Size: 0}}, Options{Wipe: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range tb.Partitions {
		b := make([]byte, p.Size())
		dev.ReadAt(b, p.Offset())
		if !allZero(b[:WipeBytes]) || !allZero(b[len(b)-WipeBytes:]) || b[WipeBytes] != 0xFF {
			t.Errorf("partition %d: ends not wiped, or more than the ends wiped", p.Number)
		}
	}
	if _, err := Read(dev); err != nil {
		t.Fatal(err)
	}
}

func TestWriteRefusesBadTables(t *testing.T) {
	dev := ram(t, 64<<20)
	tb, _ := Plan(dev.Size(), threeParts(), Options{})
	for name, edit := range map[string]func(*Table){
		"wrong-device": func(t *Table) { t.LastLBA++ },
		"number":       func(t *Table) { t.Partitions[0].Number = 200 },
		"dup":          func(t *Table) { t.Partitions[1].Number = 1 },
		"range":        func(t *Table) { t.Partitions[0].FirstLBA = 1 },
		"no-type":      func(t *Table) { t.Partitions[0].Type = GUID{} },
		"entry-size":   func(t *Table) { t.EntrySize = 256 },
		"usable":       func(t *Table) { t.FirstUsableLBA = 3 },
		"name":         func(t *Table) { t.Partitions[0].Name = strings.Repeat("x", 40) },
	} {
		c := *tb
		c.Partitions = append([]Partition(nil), tb.Partitions...)
		edit(&c)
		if err := c.Write(dev); !errors.Is(err, ErrLayout) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := Read(dev); !errors.Is(err, ErrNoTable) {
		t.Errorf("a refused Write wrote something: %v", err)
	}
}
