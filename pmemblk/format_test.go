package pmemblk

import (
	"bytes"
	"os"
	"runtime"
	"testing"

	"github.com/nvblk/nvblk/btt"
)

// testdata/pmempool-blk4096.hdr is the first 4104 bytes (pool header,
// bsize, is_zeroed) of a pool made by Debian's PMDK 1.12.1-2 with
// `pmempool create blk 4096 pool --size=32M`.
func pmempoolHeader(t testing.TB) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/pmempool-blk4096.hdr")
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestHeaderMatchesPMDK(t *testing.T) {
	b := pmempoolHeader(t)
	if f := VerifyHeader(b); f != HeaderOK {
		t.Fatalf("pmempool's header: %s", f)
	}
	h := DecodeHeader(b)
	if h.Signature != Signature || h.Major != 1 || h.Compat != DefaultCompat || h.Incompat != DefaultIncompat || h.ROCompat != 0 {
		t.Errorf("header fields %+v", h)
	}
	if host, err := HostArchFlags(); runtime.GOARCH == "amd64" && (err != nil || h.Arch != host) {
		t.Errorf("arch flags %+v, nvblk writes %+v (%v)", h.Arch, host, err)
	}
	if h.UUID != h.PrevPartUUID || h.UUID != h.NextPartUUID || h.UUID != h.PrevReplUUID || h.UUID != h.NextReplUUID {
		t.Error("a single-file pool's links should all be its own uuid")
	}
	if h.SDS != [sdsSize]byte{} {
		t.Errorf("shutdown state of a pool on a file: %x", h.SDS)
	}
	if le.Uint32(b[DescOffset:]) != 4096 || le.Uint32(b[DescOffset+4:]) != 1 {
		t.Errorf("bsize/is_zeroed %x", b[DescOffset:DescOffset+8])
	}
	// Re-encoding the decoded header gives PMDK's bytes, checksum included.
	var enc [HeaderSize]byte
	h.Encode(enc[:])
	if !bytes.Equal(enc[:], b[:HeaderSize]) {
		t.Error("Encode(DecodeHeader(b)) differs from b")
	}
}

func TestHeaderChecksum2K(t *testing.T) {
	b := append([]byte(nil), pmempoolHeader(t)[:HeaderSize]...)
	// With CKSUM_2K, bytes 2048-4087 are not covered.
	b[3000] ^= 0xff
	if f := VerifyHeader(b); f != HeaderOK {
		t.Errorf("change past 2 KiB with CKSUM_2K: %s", f)
	}
	b[3000] ^= 0xff
	for _, off := range []int{0, 9, 20, 30, 130, 2047} {
		c := append([]byte(nil), b...)
		c[off] ^= 0x10
		if f := VerifyHeader(c); f == HeaderOK {
			t.Errorf("byte %d flipped: header still valid", off)
		}
	}
	// Without CKSUM_2K the whole 4 KiB is covered.
	h := DecodeHeader(b)
	h.Incompat &^= FeatCksum2K
	h.SDS[3] = 7
	h.Encode(b)
	if f := VerifyHeader(b); f != HeaderOK {
		t.Fatalf("4 KiB checksum: %s", f)
	}
	b[offSDS+3] = 8
	if f := VerifyHeader(b); f != HeaderBadChecksum {
		t.Errorf("4 KiB checksum ignored the shutdown state: %q", f)
	}
}

func TestVerifyHeaderFaults(t *testing.T) {
	good := pmempoolHeader(t)[:HeaderSize]
	mod := func(f func(h *Header)) []byte {
		h := DecodeHeader(good)
		f(&h)
		b := make([]byte, HeaderSize)
		h.Encode(b)
		return b
	}
	for name, tc := range map[string]struct {
		b    []byte
		want HeaderFault
	}{
		"zero":     {make([]byte, HeaderSize), HeaderZero},
		"obj pool": {mod(func(h *Header) { copy(h.Signature[:], "PMEMOBJ\x00") }), HeaderBadSig},
		"major 2":  {mod(func(h *Header) { h.Major = 2 }), HeaderBadMajor},
		"feature":  {mod(func(h *Header) { h.Incompat |= 0x100 }), HeaderBadFeature},
	} {
		if got := VerifyHeader(tc.b); got != tc.want {
			t.Errorf("%s: %q, want %q", name, got, tc.want)
		}
	}
}

// The BTT geometry libpmemblk computes, checked against btt.Create in
// PMDK mode (both must agree for nblock of an unlaid pool), and against
// libpmemblk's own numbers (pmemblk_nblock of 32 MiB pools).
func TestGeometry(t *testing.T) {
	for _, bs := range []uint32{1, 100, 512, 520, 4096, 4160, 65536} {
		for _, size := range []int64{MinPoolSize, 32 << 20, 33<<20 + 4096} {
			raw := size - BTTOffset
			geo, total, err := pmdkGeometry(raw, bs)
			if bs == 65536 && size < 33<<20 {
				if err == nil {
					t.Errorf("bsize %d in %d bytes: want ErrPoolSize", bs, size)
				}
				continue
			}
			if err != nil {
				t.Fatalf("bsize %d size %d: %v", bs, size, err)
			}
			ram := newRAM(t, raw)
			zero := int64(0)
			b, err := btt.Create(ram, btt.CreateOptions{LBASize: bs, Options: btt.Options{At: &zero, PMDK: true}})
			if err != nil {
				t.Fatalf("bsize %d size %d: btt.Create: %v", bs, size, err)
			}
			ai := b.Arenas()[0].Info
			a := geo[0]
			if b.Sectors() != total || len(geo) != 1 || ai.InternalLBASize != a.intLBA || ai.InternalNLBA != a.intNLBA ||
				int64(ai.MapOff) != a.mapOff || int64(ai.LogOff) != a.flogOff || int64(ai.Info2Off) != a.info2Off {
				t.Errorf("bsize %d size %d: geometry %+v total %d, btt.Create %+v %d", bs, size, a, total, ai, b.Sectors())
			}
		}
	}
	// pmemblk_nblock of 32 MiB pools (PMDK 1.12.1).
	for bs, want := range map[uint32]uint64{4096: 7919, 512: 64700, 520: 43160, 100: 64700} {
		if _, total, _ := pmdkGeometry(32<<20-BTTOffset, bs); total != want {
			t.Errorf("32 MiB, bsize %d: %d blocks, libpmemblk has %d", bs, total, want)
		}
	}
	// Two arenas: a full 512 GiB one and the rest; a tail under 16 MiB
	// is unused.
	geo, _, err := pmdkGeometry(arenaMax+32<<20, 4096)
	if err != nil || len(geo) != 2 || geo[0].size != arenaMax || geo[1].off != arenaMax || geo[1].size != 32<<20 {
		t.Errorf("two arenas: %+v %v", geo, err)
	}
	linux, err := btt.ComputeLayout(arenaMax+32<<20, btt.V20, 4096, DefaultNFree)
	if err != nil || len(linux) != 2 || linux[0].ExternalNLBA != geo[0].extNLBA || linux[1].ExternalNLBA != geo[1].extNLBA ||
		int64(linux[1].MapOff) != geo[1].mapOff-geo[1].off {
		t.Errorf("two arenas vs the kernel's layout (same for 4 KiB blocks): %+v", linux)
	}
	if geo, _, _ := pmdkGeometry(arenaMax+10<<20, 4096); len(geo) != 1 {
		t.Errorf("a 10 MiB tail made an arena: %+v", geo)
	}
}
