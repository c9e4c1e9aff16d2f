package btt

import (
	"encoding/binary"
	"encoding/hex"
	"strings"
	"testing"
)

// Worked examples of the arena arithmetic (doc.go, Arenas), computed by
// hand.
func TestLayoutWorkedExamples(t *testing.T) {
	const MiB, GiB = 1 << 20, 1 << 30
	type want struct {
		intNLBA, extNLBA                           uint32
		mapsize, dataoff, mapoff, logoff, info2off uint64 // arena-relative
		nsInfo, nsMap, nsLog, nsInfo2, capacity    int64
	}
	cases := []struct {
		name  string
		ns    int64
		v     Version
		lbasz uint32
		want  want
	}{
		{"64M v1.1 4096", 64 * MiB, V11, 4096, want{16360, 16104, 0x10000, 0x1000, 0x3FEA000, 0x3FFA000, 0x3FFE000, 0x1000, 0x3FEB000, 0x3FFB000, 0x3FFF000, 65961984}},
		{"64M v2.0 4096", 64 * MiB, V20, 4096, want{16361, 16105, 0x10000, 0x1000, 0x3FEB000, 0x3FFB000, 0x3FFF000, 0x0, 0x3FEB000, 0x3FFB000, 0x3FFF000, 65966080}},
		{"64M v1.1 512", 64 * MiB, V11, 512, want{129992, 129736, 0x7F000, 0x1000, 0x3F7B000, 0x3FFA000, 0x3FFE000, 0x1000, 0x3F7C000, 0x3FFB000, 0x3FFF000, 66424832}},
		{"64M v2.0 512", 64 * MiB, V20, 512, want{130000, 129744, 0x7F000, 0x1000, 0x3F7C000, 0x3FFB000, 0x3FFF000, 0x0, 0x3F7C000, 0x3FFB000, 0x3FFF000, 66428928}},
		{"1G v1.1 4096", GiB, V11, 4096, want{261880, 261624, 0x100000, 0x1000, 0x3FEFA000, 0x3FFFA000, 0x3FFFE000, 0x1000, 0x3FEFB000, 0x3FFFB000, 0x3FFFF000, 1071611904}},
		{"1G v2.0 4096", GiB, V20, 4096, want{261881, 261625, 0x100000, 0x1000, 0x3FEFB000, 0x3FFFB000, 0x3FFFF000, 0x0, 0x3FEFB000, 0x3FFFB000, 0x3FFFF000, 1071616000}},
		{"1G v1.1 512", GiB, V11, 512, want{2080831, 2080575, 0x7F0000, 0x1000, 0x3F80A000, 0x3FFFA000, 0x3FFFE000, 0x1000, 0x3F80B000, 0x3FFFB000, 0x3FFFF000, 1065254400}},
		{"1G v2.0 512", GiB, V20, 512, want{2080839, 2080583, 0x7F0000, 0x1000, 0x3F80B000, 0x3FFFB000, 0x3FFFF000, 0x0, 0x3F80B000, 0x3FFFB000, 0x3FFFF000, 1065258496}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l, err := ComputeLayout(c.ns, c.v, c.lbasz, DefaultNFree)
			if err != nil {
				t.Fatal(err)
			}
			if len(l) != 1 {
				t.Fatalf("%d arenas, want 1", len(l))
			}
			a := l[0]
			w := c.want
			got := want{a.InternalNLBA, a.ExternalNLBA, a.LogOff - a.MapOff, a.DataOff, a.MapOff, a.LogOff, a.Info2Off,
				a.Off, a.Off + int64(a.MapOff), a.Off + int64(a.LogOff), a.Off + int64(a.Info2Off),
				int64(a.ExternalNLBA) * int64(SectorSizeFor(c.lbasz))}
			if got != w {
				t.Errorf("layout\n got %+v\nwant %+v", got, w)
			}
			if a.NextOff != 0 {
				t.Errorf("nextoff %#x, want 0", a.NextOff)
			}
			if a.LogOff-a.MapOff != uint64(roundUp(uint64(a.ExternalNLBA)*4, 4096)) {
				t.Errorf("mapsize mismatch")
			}
			// The slack: datasize >= internal_nlba * L.
			if a.MapOff-a.DataOff < uint64(a.InternalNLBA)*uint64(a.InternalLBASize) {
				t.Errorf("data area too small")
			}
		})
	}
}

func TestLayoutOtherSizes(t *testing.T) {
	const MiB = 1 << 20
	l, err := ComputeLayout(64*MiB, V11, 520, DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	a := l[0]
	if a.InternalLBASize != 576 || a.InternalNLBA != 115648 || a.ExternalNLBA != 115392 ||
		a.LogOff-a.MapOff != 0x71000 || a.MapOff != 0x3F89000 || a.LogOff != 0x3FFA000 || a.Info2Off != 0x3FFE000 {
		t.Errorf("520: %+v", a)
	}
	l, err = ComputeLayout(64*MiB, V20, 4160, DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	if a := l[0]; a.InternalLBASize != 4160 || a.InternalNLBA != 16109 || a.ExternalNLBA != 15853 {
		t.Errorf("4160: %+v", a)
	}
	// 1 TiB, v1.1, 4096: two arenas.
	l, err = ComputeLayout(1<<40, V11, 4096, DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 2 {
		t.Fatalf("1 TiB: %d arenas", len(l))
	}
	a0, a1 := l[0], l[1]
	if a0.Size != 0x8000000000 || a0.InternalNLBA != 134086776 || a0.ExternalNLBA != 134086520 ||
		a0.MapOff != 0x7FE007B000 || a0.LogOff != 0x7FFFFFB000 || a0.Info2Off != 0x7FFFFFF000 || a0.NextOff != 0x8000000000 {
		t.Errorf("arena 0: %+v", a0)
	}
	if a1.Off != 0x8000001000 || a1.Size != 0x7FFFFFF000 || a1.InternalNLBA != 134086775 || a1.ExternalNLBA != 134086519 ||
		a1.NextOff != 0 || a1.Off+int64(a1.Info2Off) != 0xFFFFFFF000 || a1.ExternalStart != uint64(a0.ExternalNLBA) {
		t.Errorf("arena 1: %+v", a1)
	}
	// 512 GiB + 4 KiB + 8 MiB: one full arena, nextoff 0, the tail unused.
	l, err = ComputeLayout(1<<39+4096+8*MiB, V11, 4096, DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	if len(l) != 1 || l[0].NextOff != 0 || l[0].Size != 1<<39 {
		t.Errorf("512G+4K+8M: %+v", l)
	}
	// Worst case fits in 30 bits.
	l, _ = ComputeLayout(1<<39+4096, V11, 512, DefaultNFree)
	if l[0].InternalNLBA != 1065418188 {
		t.Errorf("512 GiB / 512: internal_nlba %d, want 1065418188", l[0].InternalNLBA)
	}
	// Too small.
	if _, err := ComputeLayout(16*MiB, V11, 4096, DefaultNFree); err == nil {
		t.Error("16 MiB v1.1 namespace accepted (needs 16 MiB after the 4 KiB offset)")
	}
	if _, err := ComputeLayout(16*MiB, V20, 4096, DefaultNFree); err != nil {
		t.Errorf("16 MiB v2.0: %v", err)
	}
}

func TestChecksumVectors(t *testing.T) {
	b := make([]byte, InfoSize)
	if c := Checksum(b); c != 0 {
		t.Errorf("zeros: %#x", c)
	}
	binary.LittleEndian.PutUint32(b[0:], 1)
	if c := Checksum(b); c != 0x0000040000000001 {
		t.Errorf("w[0]=1: %#x", c)
	}
	clear(b)
	binary.LittleEndian.PutUint32(b[1021*4:], 1)
	if c := Checksum(b); c != 0x0000000300000001 {
		t.Errorf("w[1021]=1: %#x", c)
	}
	// The checksum field itself does not count.
	binary.LittleEndian.PutUint64(b[4088:], 0xdeadbeef)
	if c := Checksum(b); c != 0x0000000300000001 {
		t.Errorf("checksum field counted: %#x", c)
	}
}

// Appendix A.1: the info block of ndctl's btt-pad-compat.xxd.
const padCompatInfoHex = `
42 54 54 5f 41 52 45 4e 41 5f 49 4e 46 4f 00 00
f0 d6 4d 51 7a d4 44 e2 87 57 6b 8e 8e 4f 75 00
00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
00 00 00 00 02 00 00 00 00 10 00 00 e9 3e 00 00
00 10 00 00 e9 3f 00 00 00 01 00 00 00 10 00 00
00 00 00 00 00 00 00 00 00 10 00 00 00 00 00 00
00 b0 fe 03 00 00 00 00 00 b0 ff 03 00 00 00 00
00 f0 ff 03 00 00 00 00`

func padCompatInfo(t testing.TB) []byte {
	h, err := hex.DecodeString(strings.Join(strings.Fields(padCompatInfoHex), ""))
	if err != nil {
		t.Fatal(err)
	}
	b := make([]byte, InfoSize)
	copy(b, h)
	copy(b[4088:], []byte{0x5d, 0xb7, 0x55, 0xca, 0x03, 0xa9, 0xd8, 0x29})
	return b
}

func TestChecksumPadCompat(t *testing.T) {
	b := padCompatInfo(t)
	if c := Checksum(b); c != 0x29D8A903CA55B75D {
		t.Fatalf("pad-compat checksum %#x", c)
	}
	if f := Verify(b, nil); f != InfoOK {
		t.Fatalf("verify: %s", f)
	}
	ib := DecodeInfo(b)
	if ib.Major != 2 || ib.Minor != 0 || ib.ExternalLBASize != 4096 || ib.ExternalNLBA != 16105 ||
		ib.InternalNLBA != 16361 || ib.NFree != 256 || ib.MapOff != 0x3FEB000 || ib.LogOff != 0x3FFB000 || ib.Info2Off != 0x3FFF000 {
		t.Errorf("decoded %+v", ib)
	}
	// Round trip: encoding the decoded block gives the same bytes.
	out := make([]byte, InfoSize)
	ib.Encode(out)
	if string(out) != string(b) {
		t.Error("encode(decode(b)) != b")
	}
	// It matches the computed 64 MiB v2.0 4096 layout field for field.
	l, _ := ComputeLayout(64<<20, V20, 4096, DefaultNFree)
	a := l[0]
	if a.ExternalNLBA != ib.ExternalNLBA || a.InternalNLBA != ib.InternalNLBA || a.MapOff != ib.MapOff ||
		a.LogOff != ib.LogOff || a.Info2Off != ib.Info2Off || a.DataOff != ib.DataOff {
		t.Error("layout differs from the pad-compat image")
	}
	// A flipped bit is caught; a non-matching parent uuid is refused.
	b[200] ^= 1
	if Verify(b, nil) != InfoBadChecksum {
		t.Error("flipped bit not detected")
	}
	b[200] ^= 1
	b[0] = 'X'
	if Verify(b, nil) != InfoBadSig {
		t.Error("bad signature not detected")
	}
}

// Appendix A.2: a synthetic v1.1 arena.
func TestChecksumSyntheticV11(t *testing.T) {
	ib := Info{Signature: Signature, Major: 1, Minor: 1, ExternalLBASize: 4096, ExternalNLBA: 16104,
		InternalLBASize: 4096, InternalNLBA: 16360, NFree: 256, InfoSize: 4096,
		DataOff: 0x1000, MapOff: 0x3FEA000, LogOff: 0x3FFA000, Info2Off: 0x3FFE000}
	for i := range 16 {
		ib.UUID[i] = byte(0x10 + i)
		ib.ParentUUID[i] = byte(0xA0 + i)
	}
	b := make([]byte, InfoSize)
	ib.Encode(b)
	if ib.Checksum != 0xF6B7F6AE12E62FCB {
		t.Errorf("checksum %#x, want 0xF6B7F6AE12E62FCB", ib.Checksum)
	}
	p := ib.ParentUUID
	if Verify(b, &p) != InfoOK {
		t.Error("matching parent refused")
	}
	var other [16]byte
	other[0] = 1
	if Verify(b, &other) != InfoBadParent {
		t.Error("other parent accepted")
	}
}

func TestSeqOrder(t *testing.T) {
	cases := []struct {
		s0, s1 uint32
		cur    int // current slot, -1 = error
	}{
		{1, 0, 0}, {1, 2, 1}, {3, 2, 0}, {3, 1, 1}, {2, 1, 0}, {2, 3, 1}, {1, 3, 0},
		{0, 1, 1}, {0, 3, 1}, {1, 1, -1}, {2, 2, -1}, {3, 3, -1}, {2, 4, -1},
	}
	for _, c := range cases {
		older, ok := olderSlot(c.s0, c.s1)
		if c.cur < 0 {
			if ok {
				t.Errorf("(%d,%d) accepted", c.s0, c.s1)
			}
			continue
		}
		if !ok || 1-older != c.cur {
			t.Errorf("(%d,%d): current %d ok=%v, want %d", c.s0, c.s1, 1-older, ok, c.cur)
		}
	}
	if nextSeq(1) != 2 || nextSeq(2) != 3 || nextSeq(3) != 1 || nextSeq(0) != 0 {
		t.Error("nextSeq")
	}
}
