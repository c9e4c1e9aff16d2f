package pmemtest

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// ConformanceSize is the size RunConformance asks its factory for: 1 MiB
// plus one page, so that the size is not a power of two.
const ConformanceSize = 1<<20 + 4096

// RunConformance runs, as subtests of t, the behaviours every pmem.Device
// implementation must have. factory returns a new device of exactly size
// bytes with no badblocks, whose offset 0 is 512-aligned on its media (a
// pmem.Window must start at a multiple of pmem.SectorSize, or its badblock
// sectors do not line up with the checks). It is called once per subtest
// with that subtest's t, and may register cleanups on it. RunConformance
// closes each device at the end of its subtest (a second Close is
// harmless).
//
// The suite checks: the reported size; ReadAt/WriteAt round trips at many
// offsets and lengths, aligned or not; zero-length operations at 0 and at
// Size(); *pmem.RangeError (wrapping pmem.ErrOutOfRange) with the exact
// Op, Off, Len and Size for accesses across every boundary and for
// overflowing off+n, with the content unchanged; Flush, Drain and Persist;
// WriteAtPersist; the kernel's badblock rules; concurrent readers and
// writers on disjoint ranges; and pmem.ErrClosed after Close. It does not
// check durability across crashes: that needs a crashable device.
func RunConformance(t *testing.T, factory func(t *testing.T, size int64) pmem.Device) {
	t.Helper()
	const size = ConformanceSize
	open := func(t *testing.T) pmem.Device {
		t.Helper()
		d := factory(t, size)
		if d == nil {
			t.Fatal("factory returned a nil device")
		}
		t.Cleanup(func() { _ = d.Close() })
		return d
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, d pmem.Device)
	}{
		{"Size", confSize},
		{"ReadWrite", confReadWrite},
		{"ZeroLength", confZeroLength},
		{"OutOfRange", confOutOfRange},
		{"FlushPersistRange", confFlushPersistRange},
		{"FlushDrainPersist", confFlushDrainPersist},
		{"WriteAtPersist", confWriteAtPersist},
		{"WriteAtFlush", confWriteAtFlush},
		{"BadBlocks", confBadBlocks},
		{"Concurrent", confConcurrent},
		{"Close", confClose},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

// readAll returns the whole content of d, failing the test on error.
func readAll(t testing.TB, d pmem.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	if n, err := d.ReadAt(b, 0); err != nil || n != len(b) {
		t.Fatalf("ReadAt(whole device) = %d, %v", n, err)
	}
	return b
}

// firstDiff returns the index of the first differing byte, or -1.
func firstDiff(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}

func checkSame(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if i := firstDiff(got, want); i >= 0 {
		t.Fatalf("%s: first difference at byte %d of %d", what, i, len(want))
	}
}

func randBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n+7)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], rng.Uint64())
	}
	return b[:n:n]
}

func confSize(t *testing.T, d pmem.Device) {
	if got := d.Size(); got != ConformanceSize {
		t.Errorf("Size() = %d, want %d", got, ConformanceSize)
	}
	if d.Mode() == "" {
		t.Error("Mode() is empty")
	}
	if d.BadBlocks() == nil {
		t.Error("BadBlocks() is nil")
	}
}

func confReadWrite(t *testing.T, d pmem.Device) {
	size := d.Size()
	model := readAll(t, d)
	rng := rand.New(rand.NewPCG(1, 2))
	type span struct{ off, n int64 }
	var spans []span
	offs := []int64{0, 1, 7, 8, 9, 63, 64, 65, 511, 512, 513, 4095, 4096, 4097, 65535,
		size/2 + 3, size - 4097, size - 4096, size - 513, size - 64, size - 9, size - 8, size - 1}
	lens := []int64{1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 511, 512, 513, 4095, 4096, 4097, 65536 + 5}
	for _, off := range offs {
		for _, n := range lens {
			if off+n <= size {
				spans = append(spans, span{off, n})
			}
		}
	}
	for _, off := range []int64{0, 4097, size/2 + 1, size - 100} {
		spans = append(spans, span{off, size - off}) // to the end
	}
	for range 200 {
		off := rng.Int64N(size)
		n := 1 + rng.Int64N(min(size-off, 20000))
		spans = append(spans, span{off, n})
	}
	for _, s := range spans {
		p := randBytes(rng, int(s.n))
		if n, err := d.WriteAt(p, s.off); err != nil || n != len(p) {
			t.Fatalf("WriteAt(%d bytes, %d) = %d, %v", len(p), s.off, n, err)
		}
		copy(model[s.off:], p)
		// Read back with a margin, to catch stores outside the range.
		lo, hi := max(0, s.off-16), min(size, s.off+s.n+16)
		got := make([]byte, hi-lo)
		if n, err := d.ReadAt(got, lo); err != nil || n != len(got) {
			t.Fatalf("ReadAt(%d bytes, %d) = %d, %v", len(got), lo, n, err)
		}
		checkSame(t, "read back after WriteAt", got, model[lo:hi])
	}
	checkSame(t, "whole device", readAll(t, d), model)
}

func confZeroLength(t *testing.T, d pmem.Device) {
	size := d.Size()
	before := readAll(t, d)
	for _, off := range []int64{0, 1, size - 1, size} {
		for _, p := range [][]byte{nil, {}} {
			if n, err := d.ReadAt(p, off); n != 0 || err != nil {
				t.Errorf("ReadAt(empty, %d) = %d, %v; want 0, nil", off, n, err)
			}
			if n, err := d.WriteAt(p, off); n != 0 || err != nil {
				t.Errorf("WriteAt(empty, %d) = %d, %v; want 0, nil", off, n, err)
			}
			if n, err := d.WriteAtPersist(p, off); n != 0 || err != nil {
				t.Errorf("WriteAtPersist(empty, %d) = %d, %v; want 0, nil", off, n, err)
			}
		}
		if err := d.Flush(off, 0); err != nil {
			t.Errorf("Flush(%d, 0) = %v", off, err)
		}
		if err := d.Persist(off, 0); err != nil {
			t.Errorf("Persist(%d, 0) = %v", off, err)
		}
	}
	checkSame(t, "content after zero-length operations", readAll(t, d), before)
}

// checkRangeErr checks that err is a *pmem.RangeError for the given access.
// ops lists the acceptable Op names.
func checkRangeErr(t *testing.T, call string, err error, off, n, size int64, ops ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: no error, want pmem.ErrOutOfRange", call)
		return
	}
	if !errors.Is(err, pmem.ErrOutOfRange) {
		t.Errorf("%s: error %v is not pmem.ErrOutOfRange", call, err)
	}
	var re *pmem.RangeError
	if !errors.As(err, &re) {
		t.Errorf("%s: error %v (%T) is not a *pmem.RangeError", call, err, err)
		return
	}
	if !slices.Contains(ops, re.Op) || re.Off != off || re.Len != n || re.Size != size {
		t.Errorf("%s: RangeError{Op: %q, Off: %d, Len: %d, Size: %d}, want Op in %q, Off %d, Len %d, Size %d",
			call, re.Op, re.Off, re.Len, re.Size, ops, off, n, size)
	}
}

func confOutOfRange(t *testing.T, d pmem.Device) {
	size := d.Size()
	// Offsets and lengths of byte-buffer accesses outside the device. The
	// lengths are small: overflow of off+len(p) comes from off.
	cases := []struct{ off, n int64 }{
		{size, 1},
		{size - 1, 2},
		{size - 4096, 8192},
		{size + 1, 0},
		{size + 1, 1},
		{-1, 1},
		{-1, 0},
		{-4096, 8192},
		{math.MinInt64, 8},
		{1 << 40, 1},
		{1 << 62, 1},
		{math.MaxInt64, 0},
		{math.MaxInt64, 1},
		{math.MaxInt64 - 7, 16},
		{math.MaxInt64 - size/2, 4096},
	}
	want := readAll(t, d)
	for _, c := range cases {
		p := bytes.Repeat([]byte{0xA5}, int(c.n))
		_, err := d.WriteAt(p, c.off)
		checkRangeErr(t, fmt.Sprintf("WriteAt(%d bytes, %d)", c.n, c.off), err, c.off, c.n, size, "write")
		checkSame(t, fmt.Sprintf("content after WriteAt(%d bytes, %d)", c.n, c.off), readAll(t, d), want)

		_, err = d.WriteAtPersist(p, c.off)
		checkRangeErr(t, fmt.Sprintf("WriteAtPersist(%d bytes, %d)", c.n, c.off), err, c.off, c.n, size,
			"write", "writepersist", "write-persist", "write_persist", "persist")
		checkSame(t, fmt.Sprintf("content after WriteAtPersist(%d bytes, %d)", c.n, c.off), readAll(t, d), want)

		_, err = d.ReadAt(p, c.off)
		checkRangeErr(t, fmt.Sprintf("ReadAt(%d bytes, %d)", c.n, c.off), err, c.off, c.n, size, "read")
	}
	if t.Failed() {
		return
	}
	// The device still works.
	if _, err := d.WriteAt([]byte{1, 2, 3}, size-3); err != nil {
		t.Fatalf("WriteAt at the end after range errors: %v", err)
	}
}

func confFlushPersistRange(t *testing.T, d pmem.Device) {
	size := d.Size()
	cases := []struct{ off, n int64 }{
		{size, 1},
		{size - 1, 2},
		{0, size + 1},
		{size + 1, 0},
		{-1, 1},
		{-1, 0},
		{0, -1},
		{size, -1},
		{math.MinInt64, 1},
		{1, math.MaxInt64},
		{size - 1, math.MaxInt64},
		{math.MaxInt64, 1},
		{math.MaxInt64, math.MaxInt64},
		{1 << 62, 1 << 62},
	}
	want := readAll(t, d)
	for _, c := range cases {
		checkRangeErr(t, fmt.Sprintf("Flush(%d, %d)", c.off, c.n), d.Flush(c.off, c.n), c.off, c.n, size, "flush")
		checkRangeErr(t, fmt.Sprintf("Persist(%d, %d)", c.off, c.n), d.Persist(c.off, c.n), c.off, c.n, size, "persist", "flush")
	}
	checkSame(t, "content after out-of-range Flush/Persist", readAll(t, d), want)
}

func confFlushDrainPersist(t *testing.T, d pmem.Device) {
	size := d.Size()
	rng := rand.New(rand.NewPCG(3, 4))
	model := readAll(t, d)
	spans := [][2]int64{{0, 1}, {0, size}, {1, 63}, {63, 2}, {4095, 2}, {size - 1, 1}, {size - 64, 64}, {12345, 54321}}
	for _, s := range spans {
		p := randBytes(rng, int(s[1]))
		if _, err := d.WriteAt(p, s[0]); err != nil {
			t.Fatalf("WriteAt(%d bytes, %d): %v", len(p), s[0], err)
		}
		copy(model[s[0]:], p)
		if err := d.Flush(s[0], s[1]); err != nil {
			t.Errorf("Flush(%d, %d) = %v", s[0], s[1], err)
		}
		if err := d.Drain(); err != nil {
			t.Errorf("Drain() = %v", err)
		}
		if err := d.Persist(s[0], s[1]); err != nil {
			t.Errorf("Persist(%d, %d) = %v", s[0], s[1], err)
		}
	}
	if err := d.Drain(); err != nil {
		t.Errorf("Drain() with nothing flushed = %v", err)
	}
	checkSame(t, "content after Flush/Drain/Persist", readAll(t, d), model)
}

func confWriteAtPersist(t *testing.T, d pmem.Device) {
	confPersistingWrite(t, d, "WriteAtPersist", d.WriteAtPersist)
}

// confWriteAtFlush: the data is visible at once; durability needs the
// Drain that follows (checked on CrashMem by its own tests).
func confWriteAtFlush(t *testing.T, d pmem.Device) {
	confPersistingWrite(t, d, "WriteAtFlush", d.WriteAtFlush)
	if err := d.Drain(); err != nil {
		t.Errorf("Drain after WriteAtFlush = %v", err)
	}
}

func confPersistingWrite(t *testing.T, d pmem.Device, name string, write func([]byte, int64) (int, error)) {
	size := d.Size()
	rng := rand.New(rand.NewPCG(5, 6))
	model := readAll(t, d)
	spans := [][2]int64{{0, 1}, {1, 7}, {8, 8}, {60, 8}, {511, 514}, {4096, 4096}, {100000, 70000}, {size - 3, 3}}
	for range 50 {
		off := rng.Int64N(size)
		spans = append(spans, [2]int64{off, 1 + rng.Int64N(min(size-off, 9000))})
	}
	for _, s := range spans {
		p := randBytes(rng, int(s[1]))
		if n, err := write(p, s[0]); err != nil || n != len(p) {
			t.Fatalf("%s(%d bytes, %d) = %d, %v", name, len(p), s[0], n, err)
		}
		copy(model[s[0]:], p)
		got := make([]byte, len(p))
		if _, err := d.ReadAt(got, s[0]); err != nil {
			t.Fatalf("ReadAt(%d bytes, %d): %v", len(p), s[0], err)
		}
		checkSame(t, "read back after "+name, got, p)
	}
	checkSame(t, "whole device", readAll(t, d), model)
}

func checkMediaErr(t *testing.T, call string, err error) {
	t.Helper()
	if !errors.Is(err, pmem.ErrMedia) {
		t.Errorf("%s = %v, want pmem.ErrMedia", call, err)
		return
	}
	var me *pmem.MediaError
	if !errors.As(err, &me) {
		t.Errorf("%s: error %v (%T) is not a *pmem.MediaError", call, err, err)
	}
}

func confBadBlocks(t *testing.T, d pmem.Device) {
	const ss = pmem.SectorSize
	bb := d.BadBlocks()
	if l := bb.List(); len(l) != 0 {
		t.Fatalf("new device has badblocks %v", l)
	}
	base := int64(8 * ss) // sector 8
	pattern := bytes.Repeat([]byte{0x3C}, 3*ss)
	if _, err := d.WriteAt(pattern, base-ss); err != nil {
		t.Fatal(err)
	}

	bb.Add(base+100, 1)
	if got, want := bb.List(), []pmem.Range{{Off: base, Len: ss}}; !slices.Equal(got, want) {
		t.Fatalf("List() after Add(%d, 1) = %v, want %v", base+100, got, want)
	}
	for _, c := range []struct {
		off, n int64
		want   bool
	}{
		{base, 1, true}, {base + ss - 1, 1, true}, {base - 1, 2, true}, {0, d.Size(), true},
		{base - 1, 1, false}, {base + ss, 1, false}, {base - ss, ss, false}, {base, 0, false},
	} {
		if got := bb.Overlaps(c.off, c.n); got != c.want {
			t.Errorf("Overlaps(%d, %d) = %v, want %v", c.off, c.n, got, c.want)
		}
	}

	// Reads touching the bad sector fail and leave the buffer alone.
	for _, r := range [][2]int64{{base, ss}, {base + 8, 16}, {base - 4, 8}, {base + ss - 1, 2}, {0, 3 * 4096}} {
		buf := bytes.Repeat([]byte{0xEE}, int(r[1]))
		_, err := d.ReadAt(buf, r[0])
		checkMediaErr(t, "ReadAt over a bad sector", err)
		if len(bytes.Trim(buf, "\xEE")) != 0 {
			t.Errorf("ReadAt(%d bytes, %d) over a bad sector changed the buffer", r[1], r[0])
		}
	}
	// Reads next to it work.
	for _, off := range []int64{base - ss, base + ss} {
		buf := make([]byte, ss)
		if _, err := d.ReadAt(buf, off); err != nil {
			t.Errorf("ReadAt(%d, %d) next to a bad sector: %v", ss, off, err)
		} else {
			checkSame(t, "read next to a bad sector", buf, pattern[:ss])
		}
	}

	// Unaligned writes over it store the data, fail, and leave it bad.
	want := slices.Clone(pattern[:ss])
	unaligned := []struct {
		off int64
		b   byte
		n   int
	}{
		{base + 100, 0x11, 10},    // unaligned offset and length
		{base, 0x22, 16},          // aligned offset, unaligned length
		{base + 8, 0x33, ss},      // unaligned offset, aligned length
		{base - 4, 0x44, 8},       // straddling the start
		{base + ss - 2, 0x55, 4},  // straddling the end
		{base - ss, 0x66, ss + 1}, // aligned start in a good sector
	}
	for _, u := range unaligned {
		p := bytes.Repeat([]byte{u.b}, u.n)
		_, err := d.WriteAt(p, u.off)
		checkMediaErr(t, "unaligned WriteAt over a bad sector", err)
		if !bb.Overlaps(base, ss) {
			t.Fatalf("unaligned WriteAt(%d bytes, %d) cleared the bad sector", u.n, u.off)
		}
		for i := range p {
			if o := u.off + int64(i) - base; o >= 0 && o < ss {
				want[o] = u.b
			}
		}
	}
	_, err := d.WriteAtPersist([]byte{0x77, 0x77}, base+200)
	checkMediaErr(t, "unaligned WriteAtPersist over a bad sector", err)
	want[200], want[201] = 0x77, 0x77

	// Clear only removes whole sectors.
	bb.Clear(base+1, ss)
	if !bb.Overlaps(base, ss) {
		t.Fatal("Clear of a partial sector removed it")
	}
	bb.Clear(base, ss)
	if l := bb.List(); len(l) != 0 {
		t.Fatalf("List() after Clear = %v, want none", l)
	}
	got := make([]byte, ss)
	if _, err := d.ReadAt(got, base); err != nil {
		t.Fatalf("ReadAt after Clear: %v", err)
	}
	checkSame(t, "data stored by failed unaligned writes", got, want)

	// A 512-aligned write clears the sectors it covers, and only those.
	bb.Add(base, 2*ss)
	bb.Add(base+8*ss, 1)
	p := bytes.Repeat([]byte{0x99}, 2*ss)
	if _, err := d.WriteAt(p, base); err != nil {
		t.Fatalf("aligned WriteAt over bad sectors = %v, want success", err)
	}
	if got, want := bb.List(), []pmem.Range{{Off: base + 8*ss, Len: ss}}; !slices.Equal(got, want) {
		t.Fatalf("List() after aligned write = %v, want %v", got, want)
	}
	got = make([]byte, 2*ss)
	if _, err := d.ReadAt(got, base); err != nil {
		t.Fatalf("ReadAt after aligned write: %v", err)
	}
	checkSame(t, "data of the aligned write", got, p)
	p = bytes.Repeat([]byte{0xAB}, ss)
	if _, err := d.WriteAtPersist(p, base+8*ss); err != nil {
		t.Fatalf("aligned WriteAtPersist over a bad sector = %v, want success", err)
	}
	if l := bb.List(); len(l) != 0 {
		t.Fatalf("List() after aligned WriteAtPersist = %v, want none", l)
	}
}

func confConcurrent(t *testing.T, d pmem.Device) {
	size := d.Size()
	const writers, readers, iters = 8, 4, 200
	region := size / (writers + 1) &^ 7
	// The last region holds stable data for the readers.
	stableOff := writers * region
	stable := randBytes(rand.New(rand.NewPCG(7, 8)), int(size-stableOff))
	if _, err := d.WriteAtPersist(stable, stableOff); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			base := int64(w) * region
			model := make([]byte, region)
			if _, err := d.ReadAt(model, base); err != nil {
				t.Errorf("writer %d: ReadAt: %v", w, err)
				return
			}
			for i := range iters {
				off := rng.Int64N(region)
				n := 1 + rng.Int64N(min(region-off, 3000))
				p := randBytes(rng, int(n))
				var err error
				if i%5 == 0 {
					_, err = d.WriteAtPersist(p, base+off)
				} else {
					_, err = d.WriteAt(p, base+off)
				}
				if err != nil {
					t.Errorf("writer %d: write of %d bytes at %d: %v", w, n, base+off, err)
					return
				}
				copy(model[off:], p)
				got := make([]byte, n)
				if _, err := d.ReadAt(got, base+off); err != nil {
					t.Errorf("writer %d: ReadAt: %v", w, err)
					return
				}
				if !bytes.Equal(got, p) {
					t.Errorf("writer %d: read back %d bytes at %d differ", w, n, base+off)
					return
				}
				switch i % 7 {
				case 1:
					err = d.Persist(base+off, n)
				case 3:
					err = d.Flush(base, region)
				case 5:
					err = d.Drain()
				}
				if err != nil {
					t.Errorf("writer %d: persistence call: %v", w, err)
					return
				}
			}
			got := make([]byte, region)
			if _, err := d.ReadAt(got, base); err != nil {
				t.Errorf("writer %d: ReadAt: %v", w, err)
				return
			}
			if i := firstDiff(got, model); i >= 0 {
				t.Errorf("writer %d: region differs at byte %d", w, base+int64(i))
			}
		})
	}
	for r := range readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(r), 10))
			for range iters {
				off := rng.Int64N(int64(len(stable)))
				n := 1 + rng.Int64N(min(int64(len(stable))-off, 5000))
				got := make([]byte, n)
				if _, err := d.ReadAt(got, stableOff+off); err != nil {
					t.Errorf("reader %d: ReadAt: %v", r, err)
					return
				}
				if !bytes.Equal(got, stable[off:off+n]) {
					t.Errorf("reader %d: %d bytes at %d differ", r, n, stableOff+off)
					return
				}
			}
		})
	}
	wg.Wait()
}

func confClose(t *testing.T, d pmem.Device) {
	if _, err := d.WriteAtPersist([]byte("hello"), 0); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	buf := make([]byte, 8)
	check := func(call string, err error) {
		t.Helper()
		if !errors.Is(err, pmem.ErrClosed) {
			t.Errorf("%s after Close = %v, want pmem.ErrClosed", call, err)
		}
	}
	_, err := d.ReadAt(buf, 0)
	check("ReadAt", err)
	_, err = d.ReadAt(nil, 0)
	check("ReadAt(empty)", err)
	_, err = d.WriteAt(buf, 0)
	check("WriteAt", err)
	_, err = d.WriteAtPersist(buf, 0)
	check("WriteAtPersist", err)
	check("Flush", d.Flush(0, 8))
	check("Drain", d.Drain())
	check("Persist", d.Persist(0, 8))
	_ = d.Close() // must not panic; either nil or an error is fine
}
