package pmem_test

import (
	"encoding/binary"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/nvblk/nvblk/internal/cacheflush"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// BenchmarkProtocolWrite1G: the persistence steps of one BTT sector
// write (blkbench's raw-nvblk-write) through the pmem.Device calls the
// BTT makes, on a 1 GiB prefaulted tmpfs file with random offsets: what
// the device layer costs on top of the C floor, without the BTT's own
// bookkeeping. Run with PMEM_IS_PMEM_FORCE=1.
func BenchmarkProtocolWrite1G(b *testing.B) {
	d, err := pmem.Open(filepath.Join(testutil.ShmDir(b), "proto.img"), pmem.Options{CreateSize: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	buf := make([]byte, 1<<20)
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		d.WriteAt(buf, off)
	}
	const blk = 4096
	nblk := uint64(d.Size() / blk)
	meta := nblk / 64
	mapArea := uint64(meta*blk - 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, blk)
	var e [16]byte
	var pend int64
	b.SetBytes(blk)
	i := uint64(0)
	for b.Loop() {
		mapOff := 4096 + 4*int64(rng.Uint64N(mapArea/4))
		d.ReadAt(e[:4], mapOff)
		off := int64(meta+rng.Uint64N(nblk-meta)) * blk
		d.WriteAtFlush(data, off)
		logOff := int64(16 * (i & 1))
		binary.LittleEndian.PutUint64(e[:], i)
		d.WriteAtFlush(e[:8], logOff)
		if pend != 0 {
			d.Flush(pend, 4)
		}
		d.Drain()
		d.WriteAtPersist(e[:8], logOff+8)
		d.WriteAt(e[:4], mapOff)
		pend = mapOff
		i++
	}
}

func protoDev(b *testing.B) (pmem.Device, uint64) {
	d, err := pmem.Open(filepath.Join(testutil.ShmDir(b), "proto.img"), pmem.Options{CreateSize: 1 << 30})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	buf := make([]byte, 1<<20)
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		d.WriteAt(buf, off)
	}
	return d, uint64(d.Size() / 4096)
}

// BenchmarkProtoRawGo: the protocol on the raw mapping with cacheflush's
// primitives, no device calls: what Go itself costs against the C floor.
func BenchmarkProtoRawGo(b *testing.B) {
	d, nblk := protoDev(b)
	m := pmem.MappingForTest(d)
	meta := nblk / 64
	mapArea := meta*4096 - 4096
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 4096)
	var e [16]byte
	pend := -1
	i := uint64(0)
	for b.Loop() {
		mapOff := 4096 + 4*int(rng.Uint64N(mapArea/4))
		off := int(meta+rng.Uint64N(nblk-meta)) * 4096
		copy(e[:4], m[mapOff:mapOff+4])
		cacheflush.CopyNT(m[off:off+4096], data)
		logOff := int(16 * (i & 1))
		binary.LittleEndian.PutUint64(e[:], i)
		cacheflush.CopyNT(m[logOff:logOff+8], e[:8])
		if pend >= 0 {
			cacheflush.Flush(unsafe.Pointer(&m[pend]), 4)
		}
		cacheflush.Fence()
		cacheflush.CopyNT(m[logOff+8:logOff+16], e[:8])
		cacheflush.Fence()
		copy(m[mapOff:mapOff+4], e[:4])
		pend = mapOff
		i++
	}
}

// benchProtoMix: BenchmarkProtoRawGo with the steps whose bit is set in dev
// done through the device calls (1 map read, 2 data, 4 log half 1, 8 the
// pending flush, 16 log half 2, 32 map store).
func benchProtoMix(b *testing.B, dev int) {
	d, nblk := protoDev(b)
	m := pmem.MappingForTest(d)
	meta := nblk / 64
	mapArea := meta*4096 - 4096
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 4096)
	var e [16]byte
	pend := -1
	i := uint64(0)
	for b.Loop() {
		mapOff := 4096 + 4*int(rng.Uint64N(mapArea/4))
		off := int(meta+rng.Uint64N(nblk-meta)) * 4096
		if dev&1 != 0 {
			d.ReadAt(e[:4], int64(mapOff))
		} else {
			copy(e[:4], m[mapOff:mapOff+4])
		}
		if dev&2 != 0 {
			d.WriteAtFlush(data, int64(off))
		} else {
			cacheflush.CopyNT(m[off:off+4096], data)
		}
		logOff := int(16 * (i & 1))
		binary.LittleEndian.PutUint64(e[:], i)
		if dev&4 != 0 {
			d.WriteAtFlush(e[:8], int64(logOff))
		} else {
			cacheflush.CopyNT(m[logOff:logOff+8], e[:8])
		}
		if pend >= 0 {
			if dev&8 != 0 {
				d.Flush(int64(pend), 4)
			} else {
				cacheflush.Flush(unsafe.Pointer(&m[pend]), 4)
			}
		}
		cacheflush.Fence()
		if dev&16 != 0 {
			d.WriteAtPersist(e[:8], int64(logOff+8))
		} else {
			cacheflush.CopyNT(m[logOff+8:logOff+16], e[:8])
			cacheflush.Fence()
		}
		if dev&32 != 0 {
			d.WriteAt(e[:4], int64(mapOff))
		} else {
			copy(m[mapOff:mapOff+4], e[:4])
		}
		pend = mapOff
		i++
	}
}

func BenchmarkMix00(b *testing.B) { benchProtoMix(b, 0) }
func BenchmarkMix01(b *testing.B) { benchProtoMix(b, 1) }
func BenchmarkMix02(b *testing.B) { benchProtoMix(b, 2) }
func BenchmarkMix04(b *testing.B) { benchProtoMix(b, 4) }
func BenchmarkMix08(b *testing.B) { benchProtoMix(b, 8) }
func BenchmarkMix16(b *testing.B) { benchProtoMix(b, 16) }
func BenchmarkMix32(b *testing.B) { benchProtoMix(b, 32) }
func BenchmarkMix63(b *testing.B) { benchProtoMix(b, 63) }
