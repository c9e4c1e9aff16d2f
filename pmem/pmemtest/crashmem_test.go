package pmemtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

func TestCrashMemConformance(t *testing.T) {
	RunConformance(t, func(t *testing.T, size int64) pmem.Device { return NewCrashMem(size) })
}

func newRNG(t testing.TB) *rand.Rand {
	return rand.New(rand.NewPCG(uint64(len(t.Name())), 0x5eed))
}

func read(t testing.TB, d pmem.Device, off, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := d.ReadAt(b, off); err != nil {
		t.Fatalf("ReadAt(%d, %d): %v", n, off, err)
	}
	return b
}

func write(t testing.TB, d pmem.Device, p []byte, off int64) {
	t.Helper()
	if _, err := d.WriteAt(p, off); err != nil {
		t.Fatalf("WriteAt(%d, %d): %v", len(p), off, err)
	}
}

func persist(t testing.TB, d pmem.Device, off, n int64) {
	t.Helper()
	if err := d.Persist(off, n); err != nil {
		t.Fatalf("Persist(%d, %d): %v", off, n, err)
	}
}

// checkImage checks that a crash image is self-consistent: its current
// and durable contents are equal and it has nothing dirty.
func checkImage(t testing.TB, img *CrashMem) []byte {
	t.Helper()
	cur := img.Snapshot()
	if !bytes.Equal(cur, img.DurableSnapshot()) {
		t.Fatal("crash image: current and durable content differ")
	}
	if n := img.DirtyWords(); n != 0 {
		t.Fatalf("crash image has %d dirty words", n)
	}
	return cur
}

func TestCrashLosesUnflushed(t *testing.T) {
	m := NewCrashMem(1 << 20)
	old := bytes.Repeat([]byte{0x11}, 256)
	write(t, m, old, 1000)
	persist(t, m, 1000, 256)
	neu := bytes.Repeat([]byte{0x22}, 256)
	write(t, m, neu, 1000)

	if got := read(t, m, 1000, 256); !bytes.Equal(got, neu) {
		t.Fatal("ReadAt does not see the current content")
	}
	img := m.CrashDurableOnly()
	checkImage(t, img)
	if got := read(t, img, 1000, 256); !bytes.Equal(got, old) {
		t.Errorf("CrashDurableOnly after an unflushed write: got %x, want the old bytes", got[:16])
	}
	if got := read(t, m.CrashAll(), 1000, 256); !bytes.Equal(got, neu) {
		t.Errorf("CrashAll: got %x, want the new bytes", got[:16])
	}

	// Flushed but not drained is not durable either.
	if err := m.Flush(1000, 256); err != nil {
		t.Fatal(err)
	}
	if got := read(t, m.CrashDurableOnly(), 1000, 256); !bytes.Equal(got, old) {
		t.Errorf("CrashDurableOnly after Flush without Drain: got %x, want the old bytes", got[:16])
	}
	// A Drain makes it durable.
	if err := m.Drain(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, m.CrashDurableOnly(), 1000, 256); !bytes.Equal(got, neu) {
		t.Errorf("CrashDurableOnly after Flush+Drain: got %x, want the new bytes", got[:16])
	}
	if n := m.DirtyWords(); n != 0 {
		t.Errorf("DirtyWords() = %d after Persist, want 0", n)
	}
}

func TestCrashFlushCoversLines(t *testing.T) {
	m := NewCrashMem(1 << 16)
	write(t, m, bytes.Repeat([]byte{0xFF}, 256), 0)
	// Flushing one byte of line 1 flushes the whole line, nothing else.
	persist(t, m, 64+63, 1)
	got := read(t, m.CrashDurableOnly(), 0, 256)
	want := make([]byte, 256)
	for i := 64; i < 128; i++ {
		want[i] = 0xFF
	}
	if !bytes.Equal(got, want) {
		t.Errorf("after Persist(127, 1): durable %x, want line 1 only", got)
	}
	if n := m.DirtyWords(); n != 24 {
		t.Errorf("DirtyWords() = %d, want 24", n)
	}
}

func TestCrashKeepsPersisted(t *testing.T) {
	const size = 256 << 10
	m := NewCrashMem(size)
	rng := newRNG(t)
	// Interleave persisted and unpersisted writes over the same pages and
	// lines, remembering which words may still be lost.
	unsafe := make([]bool, size/8) // words written since their line was persisted
	for range 400 {
		n := 1 + rng.Int64N(100)
		off := rng.Int64N(size - n)
		p := randBytes(rng, int(n))
		if rng.IntN(2) == 0 {
			write(t, m, p, off)
			for w := off &^ 7; w < off+n; w += 8 {
				unsafe[w/8] = true
			}
			continue
		}
		if _, err := m.WriteAtPersist(p, off); err != nil {
			t.Fatal(err)
		}
		for w := off &^ 63; w < (off+n-1)|63; w += 8 { // whole lines are flushed
			unsafe[w/8] = false
		}
	}
	nUnsafe := 0
	for _, u := range unsafe {
		if u {
			nUnsafe++
		}
	}
	if nUnsafe == 0 || m.DirtyWords() != nUnsafe {
		t.Fatalf("DirtyWords() = %d, want %d (> 0)", m.DirtyWords(), nUnsafe)
	}
	want := m.Snapshot()
	for run := range 200 {
		img := m.Crash(rng)
		if run%50 == 0 {
			checkImage(t, img)
		}
		got := read(t, img, 0, size)
		for w := int64(0); w < size; w += 8 {
			if !unsafe[w/8] && !bytes.Equal(got[w:w+8], want[w:w+8]) {
				t.Fatalf("crash %d lost the persisted word at %d", run, w)
			}
		}
	}
}

func TestCrashFlushedNotDrained(t *testing.T) {
	m := NewCrashMem(1 << 16)
	rng := newRNG(t)
	write(t, m, bytes.Repeat([]byte{0xAA}, 64), 128)
	if err := m.Flush(128, 64); err != nil {
		t.Fatal(err)
	}
	if n := m.DirtyWords(); n != 8 {
		t.Fatalf("DirtyWords() = %d, want 8", n)
	}
	var survived, lost int
	for range 200 {
		got := read(t, m.Crash(rng), 128, 64)
		for w := 0; w < 64; w += 8 {
			switch word := got[w : w+8]; {
			case bytes.Equal(word, bytes.Repeat([]byte{0xAA}, 8)):
				survived++
			case bytes.Equal(word, make([]byte, 8)):
				lost++
			default:
				t.Fatalf("torn word %x", word)
			}
		}
	}
	if survived == 0 || lost == 0 {
		t.Errorf("flushed, undrained words: %d survived, %d lost; want both", survived, lost)
	}
}

func TestCrashPendingValue(t *testing.T) {
	m := NewCrashMem(1 << 16)
	rng := newRNG(t)
	u64 := func(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
	write(t, m, u64(1), 64)
	persist(t, m, 64, 8)
	write(t, m, u64(2), 64)
	if err := m.Flush(64, 8); err != nil {
		t.Fatal(err)
	}
	write(t, m, u64(3), 64) // dirty again after the flush
	if n := m.DirtyWords(); n != 1 {
		t.Fatalf("DirtyWords() = %d, want 1", n)
	}
	seen := map[uint64]int{}
	for range 300 {
		seen[binary.LittleEndian.Uint64(read(t, m.Crash(rng), 64, 8))]++
	}
	for v := range seen {
		if v < 1 || v > 3 {
			t.Errorf("crash image holds %d, want 1, 2 or 3", v)
		}
	}
	for _, v := range []uint64{1, 2, 3} {
		if seen[v] == 0 {
			t.Errorf("value %d never seen after a crash (seen %v)", v, seen)
		}
	}
	// CrashWith: 0 is durable, 1 pending, 2 current.
	for k, want := range []uint64{1, 2, 3} {
		img := m.CrashWith(func(word int64, n int) int {
			if word != 64 || n != 3 {
				t.Fatalf("choose(%d, %d), want (64, 3)", word, n)
			}
			return k
		})
		if got := binary.LittleEndian.Uint64(read(t, img, 64, 8)); got != want {
			t.Errorf("CrashWith choice %d: got %d, want %d", k, got, want)
		}
	}
	// After a Drain the pending value (2) is durable.
	if err := m.Drain(); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(read(t, m.CrashDurableOnly(), 64, 8)); got != 2 {
		t.Errorf("after Drain: durable %d, want 2 (the flushed value)", got)
	}
}

func TestCrashWordAtomicity(t *testing.T) {
	m := NewCrashMem(1 << 16)
	rng := newRNG(t)
	old := bytes.Repeat([]byte{0x0F}, 64)
	neu := bytes.Repeat([]byte{0xF0}, 64)
	for _, off := range []int64{0, 56, 120, 4096 - 8} {
		t.Run("", func(t *testing.T) {
			write(t, m, old[:16], off)
			persist(t, m, off, 16)
			write(t, m, neu[:16], off) // two words, no persist
			mixes := map[[2]bool]int{}
			for range 200 {
				got := read(t, m.Crash(rng), off, 16)
				var mix [2]bool
				for w := range 2 {
					word := got[8*w : 8*w+8]
					switch {
					case bytes.Equal(word, neu[:8]):
						mix[w] = true
					case bytes.Equal(word, old[:8]):
					default:
						t.Fatalf("torn word at %d: %x", off+int64(8*w), word)
					}
				}
				mixes[mix]++
			}
			if len(mixes) != 4 {
				t.Errorf("16-byte write at %d: combinations seen %v, want all 4", off, mixes)
			}
			persist(t, m, off, 16)
		})
	}
	// An unaligned 8-byte store touches two words; each is atomic.
	write(t, m, old[:16], 1024)
	persist(t, m, 1024, 16)
	write(t, m, neu[:8], 1028)
	wantWords := [2][2][]byte{
		{old[:8], append(slices.Clone(old[:4]), neu[:4]...)},
		{old[:8], append(slices.Clone(neu[:4]), old[:4]...)},
	}
	for range 100 {
		got := read(t, m.Crash(rng), 1024, 16)
		for w := range 2 {
			word := got[8*w : 8*w+8]
			if !bytes.Equal(word, wantWords[w][0]) && !bytes.Equal(word, wantWords[w][1]) {
				t.Fatalf("unaligned store: word %d is %x, want %x or %x", w, word, wantWords[w][0], wantWords[w][1])
			}
		}
	}
}

func TestCrashIndependence(t *testing.T) {
	m := NewCrashMem(8 << 20)
	rng := newRNG(t)
	a := bytes.Repeat([]byte{0xA1}, 10000)
	if _, err := m.WriteAtPersist(a, 3<<20-5000); err != nil {
		t.Fatal(err)
	}
	write(t, m, []byte("dirty"), 100)
	img := m.Crash(rng)
	before := m.Snapshot()
	beforeDurable := m.DurableSnapshot()
	imgBefore := img.Snapshot()

	// Writes and persists on the image do not reach the original.
	b := bytes.Repeat([]byte{0xB2}, 20000)
	if _, err := img.WriteAtPersist(b, 3<<20-10000); err != nil {
		t.Fatal(err)
	}
	write(t, img, []byte("image"), 100)
	if !bytes.Equal(m.Snapshot(), before) || !bytes.Equal(m.DurableSnapshot(), beforeDurable) {
		t.Fatal("writing to a crash image changed the original")
	}

	// Writes and persists on the original do not reach the image.
	c := bytes.Repeat([]byte{0xC3}, 30000)
	if _, err := m.WriteAtPersist(c, 3<<20-15000); err != nil {
		t.Fatal(err)
	}
	write(t, m, []byte("orig!"), 7<<20)
	imgWant := slices.Clone(imgBefore)
	copy(imgWant[3<<20-10000:], b)
	copy(imgWant[100:], "image")
	if got := img.Snapshot(); !bytes.Equal(got, imgWant) {
		t.Fatalf("writing to the original changed the crash image (first difference at %d)", firstDiff(got, imgWant))
	}

	// Crash of a crash image, and the original goes on.
	img2 := img.CrashDurableOnly()
	want2 := slices.Clone(imgBefore)
	copy(want2[3<<20-10000:], b)
	if got := checkImage(t, img2); !bytes.Equal(got, want2) {
		t.Fatal("crash of a crash image: wrong content")
	}
	write(t, img2, []byte("x"), 0)
	if got := read(t, img, 0, 1); got[0] != imgBefore[0] {
		t.Fatal("write to an image's image reached the image")
	}
	if got := read(t, m.CrashDurableOnly(), 3<<20-15000, 30000); !bytes.Equal(got, c) {
		t.Fatal("original lost persisted data after being crashed")
	}
	if m.Points() != 2 || img.Points() != 1 || img2.Points() != 0 {
		t.Errorf("Points: original %d, image %d, image of image %d; want 2, 1, 0", m.Points(), img.Points(), img2.Points())
	}
}

func TestCrashWithEnumerates(t *testing.T) {
	m := NewCrashMem(1 << 16)
	write(t, m, make([]byte, 24), 1000)    // words 1000..1016 (3 words)
	write(t, m, []byte{1}, 8)              // word 8
	persist(t, m, 8, 1)                    //   now durable
	write(t, m, []byte{1, 2}, 63)          // words 56 and 64
	if err := m.Flush(0, 64); err != nil { // word 56 pending
		t.Fatal(err)
	}
	write(t, m, []byte{9}, 60) // word 56 pending and dirty
	type call struct {
		word int64
		n    int
	}
	var calls []call
	m.CrashWith(func(word int64, n int) int {
		calls = append(calls, call{word, n})
		return 0
	})
	want := []call{{56, 3}, {64, 2}, {1000, 2}, {1008, 2}, {1016, 2}}
	if !slices.Equal(calls, want) {
		t.Errorf("choose calls %v, want %v", calls, want)
	}
	if n := m.DirtyWords(); n != len(want) {
		t.Errorf("DirtyWords() = %d, want %d", n, len(want))
	}
	defer func() {
		if recover() == nil {
			t.Error("CrashWith with an out-of-range choice did not panic")
		}
	}()
	m.CrashWith(func(int64, int) int { return 3 })
}

func TestCrashMemHook(t *testing.T) {
	m := NewCrashMem(1 << 16)
	var events []Event
	var durable [][]byte
	m.SetHook(func(ev Event) {
		events = append(events, ev)
		// Crash images may be taken inside the hook.
		durable = append(durable, read(t, m.CrashDurableOnly(), 0, 16))
		_ = m.Crash(nil)
		_ = m.DirtyWords()
	})
	write(t, m, []byte("abcdefgh"), 0)
	if err := m.Flush(0, 8); err != nil {
		t.Fatal(err)
	}
	if err := m.Drain(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAtPersist([]byte("12345678"), 8); err != nil {
		t.Fatal(err)
	}
	persist(t, m, 0, 16)
	// Failed and empty operations report nothing.
	if _, err := m.WriteAt(make([]byte, 2), 1<<16-1); err == nil {
		t.Fatal("out-of-range write succeeded")
	}
	write(t, m, nil, 5)
	if err := m.Flush(3, 0); err != nil {
		t.Fatal(err)
	}
	want := []Event{
		{EventWrite, 0, 8, 0},
		{EventFlush, 0, 8, 0},
		{EventDrain, 0, 0, 1},
		{EventWrite, 8, 8, 1},
		{EventFlush, 8, 8, 1},
		{EventDrain, 0, 0, 2},
		{EventFlush, 0, 16, 2},
		{EventDrain, 0, 0, 3},
	}
	if !slices.Equal(events, want) {
		t.Fatalf("events:\n got %v\nwant %v", events, want)
	}
	for i := 1; i < len(events); i++ {
		if events[i].Point < events[i-1].Point {
			t.Errorf("event %d: point %d after %d", i, events[i].Point, events[i-1].Point)
		}
	}
	if m.Points() != 3 {
		t.Errorf("Points() = %d, want 3", m.Points())
	}
	wantDurable := []string{"", "", "abcdefgh", "abcdefgh", "abcdefgh", "abcdefgh12345678", "abcdefgh12345678", "abcdefgh12345678"}
	for i, d := range durable {
		if got := string(bytes.TrimRight(d, "\x00")); got != wantDurable[i] {
			t.Errorf("durable image at event %d (%v) = %q, want %q", i, events[i], got, wantDurable[i])
		}
	}
	m.SetHook(nil)
	write(t, m, []byte("x"), 0)
	if len(events) != len(want) {
		t.Error("hook called after SetHook(nil)")
	}
}

func TestCrashMemBadBlocksAndClose(t *testing.T) {
	m := NewCrashMem(1 << 16)
	m.BadBlocks().Add(4096, 512)
	write(t, m, []byte("hello"), 0)
	img := m.CrashAll()
	if got := img.BadBlocks().List(); !slices.Equal(got, []pmem.Range{{Off: 4096, Len: 512}}) {
		t.Errorf("crash image badblocks %v, want the original's", got)
	}
	img.BadBlocks().Clear(4096, 512)
	if !m.BadBlocks().Overlaps(4096, 1) {
		t.Error("clearing the image's badblocks cleared the original's")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); !errors.Is(err, pmem.ErrClosed) {
		t.Errorf("second Close = %v, want pmem.ErrClosed", err)
	}
	// A closed device can still be crashed: the unpersisted write is lost
	// or kept, like any other.
	if got := read(t, m.CrashAll(), 0, 5); string(got) != "hello" {
		t.Errorf("CrashAll after Close: %q", got)
	}
	if got := read(t, m.CrashDurableOnly(), 0, 5); !bytes.Equal(got, make([]byte, 5)) {
		t.Errorf("CrashDurableOnly after Close: %q", got)
	}
}

func TestCrashMemOddSize(t *testing.T) {
	m := NewCrashMem(4096*3 + 5)
	write(t, m, []byte("abcdefg"), m.Size()-7)
	persist(t, m, m.Size()-7, 7)
	if got := read(t, m.CrashDurableOnly(), m.Size()-7, 7); string(got) != "abcdefg" {
		t.Errorf("last bytes of an odd-sized device: %q", got)
	}
	if n := len(m.Snapshot()); int64(n) != m.Size() {
		t.Errorf("Snapshot length %d, want %d", n, m.Size())
	}
	z := NewCrashMem(0)
	if _, err := z.WriteAt([]byte{1}, 0); !errors.Is(err, pmem.ErrOutOfRange) {
		t.Errorf("write to an empty device: %v", err)
	}
	_ = z.Crash(nil)
}

// TestCrashMemLarge checks that a big device costs memory only for what is
// written, and that crash images of it are cheap.
func TestCrashMemLarge(t *testing.T) {
	m := NewCrashMem(64 << 20)
	rng := newRNG(t)
	for range 100 {
		write(t, m, randBytes(rng, 100), rng.Int64N(64<<20-100))
	}
	for range 200 {
		img := m.Crash(rng)
		write(t, img, []byte{1}, 0)
	}
	if n := testing.AllocsPerRun(10, func() { m.Crash(rng) }); n > 50 {
		t.Errorf("Crash of a 64 MiB device with ~1000 dirty words: %v allocations", n)
	}
}

// BenchmarkCrash takes a crash image of a 32 MiB device holding persisted
// data everywhere and ~200 dirty words.
func BenchmarkCrash(b *testing.B) {
	const size = 32 << 20
	m := NewCrashMem(size)
	rng := rand.New(rand.NewPCG(1, 2))
	chunk := randBytes(rng, 1<<20)
	for off := int64(0); off < size; off += 1 << 20 {
		if _, err := m.WriteAtPersist(chunk, off); err != nil {
			b.Fatal(err)
		}
	}
	for range 200 {
		off := rng.Int64N(size/8) * 8
		if _, err := m.WriteAt(randBytes(rng, 8), off); err != nil {
			b.Fatal(err)
		}
	}
	if n := m.DirtyWords(); n < 190 || n > 200 {
		b.Fatalf("DirtyWords() = %d", n)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.Crash(rng)
	}
}

// BenchmarkWriteAtPersist measures a small persisted write, the common
// operation of a BTT, with a crash image taken every 100 writes.
func BenchmarkWriteAtPersist(b *testing.B) {
	const size = 32 << 20
	m := NewCrashMem(size)
	rng := rand.New(rand.NewPCG(1, 2))
	p := randBytes(rng, 64)
	i := 0
	for b.Loop() {
		off := rng.Int64N(size/64) * 64
		if _, err := m.WriteAtPersist(p, off); err != nil {
			b.Fatal(err)
		}
		if i++; i%100 == 0 {
			m.Crash(rng)
		}
	}
}

// refModel is a straightforward reference for CrashMem's state.
type refModel struct {
	cur, dur []byte
	dirty    map[int64]bool   // word offset -> written since its line was flushed
	pending  map[int64]uint64 // word offset -> value at Flush
}

func newRefModel(size int64) *refModel {
	return &refModel{cur: make([]byte, size), dur: make([]byte, size),
		dirty: map[int64]bool{}, pending: map[int64]uint64{}}
}

func (r *refModel) word(b []byte, off int64) uint64 { return binary.LittleEndian.Uint64(b[off:]) }

func (r *refModel) write(p []byte, off int64) {
	copy(r.cur[off:], p)
	for w := off &^ 7; w < off+int64(len(p)); w += 8 {
		r.dirty[w] = true
	}
}

func (r *refModel) flush(off, n int64) {
	for w := off &^ 63; w < (off+n-1)|63; w += 8 { // whole lines
		if r.dirty[w] {
			r.pending[w] = r.word(r.cur, w)
			delete(r.dirty, w)
		}
	}
}

func (r *refModel) drain() {
	for w, v := range r.pending {
		binary.LittleEndian.PutUint64(r.dur[w:], v)
	}
	clear(r.pending)
}

func (r *refModel) candidates(w int64) []uint64 {
	c := []uint64{r.word(r.dur, w)}
	if v, ok := r.pending[w]; ok {
		c = append(c, v)
	}
	if r.dirty[w] {
		c = append(c, r.word(r.cur, w))
	}
	return c
}

// TestCrashMemModel runs random operations on chains of CrashMems and
// their crash images and compares them with refModel.
func TestCrashMemModel(t *testing.T) {
	const size = 3*4096 + 40
	rng := newRNG(t)
	type pair struct {
		m *CrashMem
		r *refModel
	}
	devs := []pair{{NewCrashMem(size), newRefModel(size)}}
	check := func(step int, d pair) {
		t.Helper()
		if i := firstDiff(d.m.Snapshot(), d.r.cur); i >= 0 {
			t.Fatalf("step %d: current content differs at byte %d", step, i)
		}
		if i := firstDiff(d.m.DurableSnapshot(), d.r.dur); i >= 0 {
			t.Fatalf("step %d: durable content differs at byte %d", step, i)
		}
		words := map[int64]bool{}
		for w := range d.r.dirty {
			words[w] = true
		}
		for w := range d.r.pending {
			words[w] = true
		}
		if n := d.m.DirtyWords(); n != len(words) {
			t.Fatalf("step %d: DirtyWords() = %d, want %d", step, n, len(words))
		}
	}
	for step := range 4000 {
		di := rng.IntN(len(devs))
		d := devs[di]
		switch op := rng.IntN(100); {
		case op < 45: // write, often small and unaligned
			n := 1 + rng.Int64N(40)
			if rng.IntN(8) == 0 {
				n = 1 + rng.Int64N(6000)
			}
			off := rng.Int64N(size - n + 1)
			p := randBytes(rng, int(n))
			write(t, d.m, p, off)
			d.r.write(p, off)
		case op < 60: // flush
			off := rng.Int64N(size)
			n := 1 + rng.Int64N(min(size-off, 300))
			if err := d.m.Flush(off, n); err != nil {
				t.Fatal(err)
			}
			d.r.flush(off, n)
		case op < 68:
			if err := d.m.Drain(); err != nil {
				t.Fatal(err)
			}
			d.r.drain()
		case op < 80: // read a random range
			off := rng.Int64N(size)
			n := 1 + rng.Int64N(min(size-off, 5000))
			if got := read(t, d.m, off, n); !bytes.Equal(got, d.r.cur[off:off+n]) {
				t.Fatalf("step %d: ReadAt(%d, %d) differs", step, n, off)
			}
		case op < 92: // crash
			var words []int64
			choices := map[int64]int{}
			img := d.m.CrashWith(func(w int64, n int) int {
				if want := len(d.r.candidates(w)); n != want {
					t.Fatalf("step %d: word %d has %d candidates, want %d", step, w, n, want)
				}
				words = append(words, w)
				choices[w] = rng.IntN(n)
				return choices[w]
			})
			want := 0
			for w := int64(0); w < size; w += 8 {
				if len(d.r.candidates(w)) > 1 {
					want++
				}
			}
			if len(words) != want || !slices.IsSorted(words) {
				t.Fatalf("step %d: choose called for %d words (sorted: %v), want %d", step, len(words), slices.IsSorted(words), want)
			}
			r := newRefModel(size)
			copy(r.dur, d.r.dur)
			for w, k := range choices {
				binary.LittleEndian.PutUint64(r.dur[w:], d.r.candidates(w)[k])
			}
			copy(r.cur, r.dur)
			np := pair{img, r}
			check(step, np)
			if len(devs) < 4 {
				devs = append(devs, np)
			} else {
				devs[rng.IntN(len(devs))] = np
			}
		default:
			check(step, d)
		}
	}
	for _, d := range devs {
		check(-1, d)
	}
}

func TestCrashDeterministic(t *testing.T) {
	build := func() *CrashMem {
		m := NewCrashMem(1 << 20)
		rng := rand.New(rand.NewPCG(3, 3))
		for i := range 300 {
			off := rng.Int64N(1<<20 - 100)
			write(t, m, randBytes(rng, 1+rng.IntN(100)), off)
			if i%7 == 0 {
				if err := m.Flush(off, 50); err != nil {
					t.Fatal(err)
				}
			}
		}
		return m
	}
	a, b := build(), build()
	ra, rb := rand.New(rand.NewPCG(9, 9)), rand.New(rand.NewPCG(9, 9))
	for range 5 {
		if !bytes.Equal(a.Crash(ra).Snapshot(), b.Crash(rb).Snapshot()) {
			t.Fatal("same history and seed gave different crash images")
		}
	}
}

// TestWriteAtFlushDurableAfterDrain: WriteAtFlush data may be lost until
// the next Drain, and is durable after it.
func TestWriteAtFlushDurableAfterDrain(t *testing.T) {
	m := NewCrashMem(1 << 16)
	p := bytes.Repeat([]byte{0xAB}, 4096)
	if _, err := m.WriteAtFlush(p, 4096); err != nil {
		t.Fatal(err)
	}
	lost := m.CrashDurableOnly()
	got := make([]byte, 4096)
	lost.ReadAt(got, 4096)
	if bytes.Equal(got, p) {
		t.Fatal("WriteAtFlush durable before any Drain")
	}
	if err := m.Drain(); err != nil {
		t.Fatal(err)
	}
	kept := m.CrashDurableOnly()
	kept.ReadAt(got, 4096)
	if !bytes.Equal(got, p) {
		t.Fatal("WriteAtFlush + Drain not durable")
	}
}
