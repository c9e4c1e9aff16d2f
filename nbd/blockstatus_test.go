package nbd

import (
	"bytes"
	"testing"
)

// TestMetaContextNegotiation: LIST and SET of base:allocation, the
// errors around them, and that malformed option data gets an error reply
// without ending the handshake.
func TestMetaContextNegotiation(t *testing.T) {
	ts := startServer(t, Options{}, withExport("a", "", newMemDev(512, 64), false), withExport("b", "", newMemDev(512, 64), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	// Before structured replies: refused.
	for _, opt := range []uint32{optListMetaContext, optSetMetaContext} {
		if ctxs, final := c.metaReplies(opt, metaData("a", metaAllocation)); final != repErrInvalid || len(ctxs) != 0 {
			t.Errorf("option %d without structured replies: %v, %#x", opt, ctxs, final)
		}
	}
	c.sendOption(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("structured reply: %#x", r.typ)
	}
	cases := []struct {
		opt     uint32
		data    []byte
		ctxs    map[string]uint32
		final   uint32
		comment string
	}{
		{optListMetaContext, metaData("a"), map[string]uint32{metaAllocation: 0}, repAck, "LIST without queries lists everything"},
		{optListMetaContext, metaData("a", "base:"), map[string]uint32{metaAllocation: 0}, repAck, "a namespace query"},
		{optListMetaContext, metaData("a", "x-other:thing", "qemu:dirty-bitmap:x"), map[string]uint32{}, repAck, "other namespaces match nothing"},
		{optListMetaContext, metaData("nope", metaAllocation), map[string]uint32{}, repErrUnknown, "unknown export"},
		{optSetMetaContext, metaData("a", "base:"), map[string]uint32{}, repAck, "SET ignores the bare namespace"},
		{optSetMetaContext, metaData("a", "x-other:thing"), map[string]uint32{}, repAck, "SET selecting nothing"},
		{optSetMetaContext, metaData("a", "x-other:thing", metaAllocation), map[string]uint32{metaAllocation: metaAllocationID}, repAck, "SET"},
		{optSetMetaContext, []byte{0, 0, 0, 5, 'a'}, map[string]uint32{}, repErrInvalid, "name longer than the data"},
		{optSetMetaContext, []byte{0, 0, 0, 1, 'a', 0xff, 0xff, 0xff, 0xff}, map[string]uint32{}, repErrInvalid, "2^32-1 queries announced, none sent"},
		{optSetMetaContext, append(metaData("a", metaAllocation), 0), map[string]uint32{}, repErrInvalid, "trailing byte"},
		{optSetMetaContext, []byte{0, 0}, map[string]uint32{}, repErrInvalid, "truncated"},
	}
	for _, tc := range cases {
		ctxs, final := c.metaReplies(tc.opt, tc.data)
		if final != tc.final || len(ctxs) != len(tc.ctxs) {
			t.Errorf("%s: contexts %v, final %#x; want %v, %#x", tc.comment, ctxs, final, tc.ctxs, tc.final)
			continue
		}
		for k, v := range tc.ctxs {
			if id, ok := ctxs[k]; !ok || id != v {
				t.Errorf("%s: contexts %v, want %v", tc.comment, ctxs, tc.ctxs)
			}
		}
	}
	// The handshake goes on. A failed SET cleared the selection: go to
	// "a" with none, BLOCK_STATUS is refused.
	if g := c.info(optGo, "a"); g.final != repAck {
		t.Fatalf("GO: %#x", g.final)
	}
	c.structured = true
	if r := c.do(cmdBlockStatus, 0, 0, 512, nil); r.errno != EINVAL {
		t.Fatalf("block status after a failed SET: errno %v, extents %v", r.errno, r.extents)
	}
	// A new connection: SET then GO, and BLOCK_STATUS works.
	c = dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	c.sendOption(optStructuredReply, nil)
	c.readOptReply()
	if ctxs, final := c.metaReplies(optSetMetaContext, metaData("a", metaAllocation)); final != repAck || len(ctxs) != 1 {
		t.Fatalf("SET: %v %#x", ctxs, final)
	}
	if g := c.info(optGo, "a"); g.final != repAck {
		t.Fatalf("GO: %#x", g.final)
	}
	c.structured = true
	if err := c.send(cmdBlockStatus, 0, 1, 0, 512*64, nil); err != nil {
		t.Fatal(err)
	}
	r, err := c.recv()
	if err != nil || r.errno != 0 || r.ctx != metaAllocationID || len(r.extents) != 1 || r.extents[0] != (extent{512 * 64, 0}) {
		t.Fatalf("block status on a device without a zero map: %+v %v", r, err)
	}
}

// TestMetaContextOtherExport: contexts selected for one export do not
// apply to another; BLOCK_STATUS there is EINVAL.
func TestMetaContextOtherExport(t *testing.T) {
	ts := startServer(t, Options{}, withExport("a", "", newMemDev(512, 64), false), withExport("b", "", newMemDev(512, 64), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	c.sendOption(optStructuredReply, nil)
	c.readOptReply()
	c.structured = true
	if ctxs, final := c.metaReplies(optSetMetaContext, metaData("a", metaAllocation)); final != repAck || len(ctxs) != 1 {
		t.Fatalf("SET: %v %#x", ctxs, final)
	}
	if g := c.info(optGo, "b"); g.final != repAck {
		t.Fatalf("GO: %#x", g.final)
	}
	if err := c.send(cmdBlockStatus, 0, 1, 0, 512, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := c.recv(); err != nil || r.errno != EINVAL {
		t.Fatalf("block status on the other export: %+v %v", r, err)
	}
}

// connectMeta connects with structured replies and base:allocation.
func connectMeta(t *testing.T, ts *testServer) *client {
	t.Helper()
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	c.sendOption(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("structured reply: %#x", r.typ)
	}
	c.structured = true
	if ctxs, final := c.metaReplies(optSetMetaContext, metaData("", metaAllocation)); final != repAck || len(ctxs) != 1 {
		t.Fatalf("SET: %v %#x", ctxs, final)
	}
	if g := c.info(optGo, ""); g.final != repAck {
		t.Fatalf("GO: %#x", g.final)
	}
	return c
}

// TestBlockStatusBTT: a BTT's zeroed and trimmed sectors are reported as
// hole+zero and written or never-written ones as data, extent by extent;
// REQ_ONE gives one extent, a range past the end and a zero length get
// EINVAL, and a long alternating map is cut at maxExtents.
func TestBlockStatusBTT(t *testing.T) {
	b := newBTT(t, 20<<20)
	ss := uint32(b.SectorSize())
	ts := startServer(t, Options{}, withExport("", "", b, false))
	c := connectMeta(t, ts)
	do := func(flags uint16, off uint64, length uint32) reply {
		t.Helper()
		if err := c.send(cmdBlockStatus, flags, 9, off, length, nil); err != nil {
			t.Fatal(err)
		}
		r, err := c.recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	mustOK := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Sectors 10-19 written, 4-7 zeroed (WRITE_ZEROES) and 30 trimmed,
	// through the protocol; the rest never written (data, for a Linux BTT).
	for lba := uint64(10); lba < 20; lba++ {
		mustOK(c.send(cmdWrite, 0, lba, lba*uint64(ss), ss, pattern(int(ss), byte(lba))))
		if r, err := c.recv(); err != nil || r.errno != 0 {
			t.Fatalf("write: %+v %v", r, err)
		}
	}
	mustOK(c.send(cmdWriteZeroes, 0, 1, 4*uint64(ss), 4*ss, nil))
	mustOK(c.send(cmdTrim, 0, 2, 30*uint64(ss), ss, nil))
	for range 2 {
		if r, err := c.recv(); err != nil || r.errno != 0 {
			t.Fatalf("zero/trim: %+v %v", r, err)
		}
	}
	const hz = stateHole | stateZero
	want := []extent{{4 * ss, 0}, {4 * ss, hz}, {22 * ss, 0}, {ss, hz}, {9 * ss, 0}}
	r := do(0, 0, 40*ss)
	if r.errno != 0 || r.ctx != metaAllocationID || !equalExtents(r.extents, want) {
		t.Fatalf("extents %v (errno %v), want %v", r.extents, r.errno, want)
	}
	// From the middle of a run; REQ_ONE.
	if r := do(0, 5*uint64(ss), 3*ss); !equalExtents(r.extents, []extent{{3 * ss, hz}}) {
		t.Errorf("inside the zero run: %v", r.extents)
	}
	if r := do(cmdFlagReqOne, 0, 40*ss); !equalExtents(r.extents, []extent{{4 * ss, 0}}) {
		t.Errorf("REQ_ONE: %v", r.extents)
	}
	size := uint64(b.Sectors()) * uint64(ss)
	for _, q := range [][2]uint64{{size - uint64(ss), 2 * uint64(ss)}, {size, uint64(ss)}, {0, 0}} {
		if r := do(0, q[0], uint32(q[1])); r.errno != EINVAL {
			t.Errorf("block status %d+%d: errno %v, want EINVAL", q[0], q[1], r.errno)
		}
	}
	// Alternating sectors: more runs than one reply may carry.
	for lba := uint64(100); lba < 100+2*maxExtents+20; lba += 2 {
		mustOK(b.ZeroSectors(lba, 1))
	}
	r = do(0, 100*uint64(ss), (2*maxExtents+20)*ss)
	if r.errno != 0 || len(r.extents) != maxExtents {
		t.Fatalf("alternating map: %d extents (errno %v), want %d", len(r.extents), r.errno, maxExtents)
	}
	for i, e := range r.extents {
		f := uint32(0)
		if i%2 == 0 {
			f = hz
		}
		if e != (extent{ss, f}) {
			t.Fatalf("extent %d: %v, want %v", i, e, extent{ss, f})
		}
	}
}

func equalExtents(a, b []extent) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFastZero: WRITE_ZEROES with FAST_ZERO zeroes a BTT with 4096-byte
// sectors (the Z state: a map update), and fails at once with ENOTSUP,
// leaving the data alone, on a Linux BTT with 512-byte sectors (where
// zeroing writes zero sectors).
func TestFastZero(t *testing.T) {
	for _, ss := range []uint32{4096, 512} {
		b := newBTTSectors(t, 20<<20, ss)
		ts := startServer(t, Options{}, withExport("", "", b, false))
		c := connect(t, ts, "", true)
		if c.flags&FlagSendFastZero == 0 {
			t.Fatalf("%d: FAST_ZERO not advertised (flags %#x)", ss, c.flags)
		}
		data := pattern(int(4*ss), 3)
		if r := c.do(cmdWrite, 0, 0, 4*ss, data); r.errno != 0 {
			t.Fatalf("%d: write: %v", ss, r.errno)
		}
		r := c.do(cmdWriteZeroes, cmdFlagFastZero, uint64(ss), 2*ss, nil)
		got := c.do(cmdRead, 0, 0, 4*ss, nil)
		want := bytes.Clone(data)
		if ss == 4096 {
			if r.errno != 0 {
				t.Fatalf("%d: fast zero: %v", ss, r.errno)
			}
			clear(want[ss : 3*ss])
		} else if r.errno != ENOTSUP {
			t.Fatalf("%d: fast zero: errno %v, want ENOTSUP", ss, r.errno)
		}
		if got.errno != 0 || !bytes.Equal(got.data, want) {
			t.Fatalf("%d: contents after fast zero differ (errno %v)", ss, got.errno)
		}
		// Without the flag, zeroing works on both.
		if r := c.do(cmdWriteZeroes, 0, uint64(ss), 2*ss, nil); r.errno != 0 {
			t.Fatalf("%d: write zeroes: %v", ss, r.errno)
		}
	}
}

// TestBlockStatusBadMapEntry: with a badblock over map entries 256..383
// of a 4096-byte BTT, BLOCK_STATUS for sectors 0..511 answers for the
// readable prefix (sectors 0..255, zero) instead of failing as a whole;
// asked from sector 300 on, it fails with EIO.
func TestBlockStatusBadMapEntry(t *testing.T) {
	b := newBTT(t, 20<<20)
	if err := b.ZeroSectors(0, 512); err != nil {
		t.Fatal(err)
	}
	a := b.Arenas()[0]
	b.Device().BadBlocks().Add(a.Offset+int64(a.Info.MapOff)+4*256, 512)
	ts := startServer(t, Options{}, withExport("", "", b, false))
	c := connectMeta(t, ts)
	if err := c.send(cmdRead, 0, 1, 0, 256*4096, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := c.recv(); err != nil || r.errno != 0 {
		t.Fatalf("read of sectors 0..255: %+v %v", r.errno, err)
	}
	if err := c.send(cmdBlockStatus, 0, 2, 0, 512*4096, nil); err != nil {
		t.Fatal(err)
	}
	r, err := c.recv()
	if err != nil {
		t.Fatal(err)
	}
	if r.errno != 0 || len(r.extents) == 0 || r.extents[0] != (extent{256 * 4096, stateHole | stateZero}) {
		t.Fatalf("block status 0+2MiB: errno %v (%s), extents %v; want the readable prefix [1MiB hole+zero]", r.errno, r.msg, r.extents)
	}
	if err := c.send(cmdBlockStatus, 0, 3, 300*4096, 4096, nil); err != nil {
		t.Fatal(err)
	}
	if r, err := c.recv(); err != nil || r.errno != EIO {
		t.Fatalf("block status over the bad entry: errno %v, %v", r.errno, err)
	}
}
