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

// protoDev maps a 1 GiB file on tmpfs, prefaulted.
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

// benchProtoMix runs the persistence steps of one BTT sector write
// (blkbench's raw-nvblk-write: map entry read, data with non-temporal
// stores, log half 1 flushed with the lane's pending map line, fence, log
// half 2 persisted, map entry stored) on a 1 GiB prefaulted tmpfs file at
// random offsets, each step either on the raw mapping with cacheflush's
// primitives or through the pmem.Device call the BTT makes, to see what
// the device layer costs on top of the floor on the CPU at hand. Run
// with PMEM_IS_PMEM_FORCE=1. The steps whose bit is set in dev go
// through the device (1 map read, 2 data, 4 log half 1, 8 the pending
// flush, 16 log half 2, 32 map store): Mix00 is the floor in Go (it
// matches the C floor), Mix63 the protocol through the device calls.
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

func BenchmarkMix00(b *testing.B) { benchProtoMix(b, 0) } // the raw floor
func BenchmarkMix01(b *testing.B) { benchProtoMix(b, 1) }
func BenchmarkMix02(b *testing.B) { benchProtoMix(b, 2) }
func BenchmarkMix04(b *testing.B) { benchProtoMix(b, 4) }
func BenchmarkMix08(b *testing.B) { benchProtoMix(b, 8) }
func BenchmarkMix16(b *testing.B) { benchProtoMix(b, 16) }
func BenchmarkMix32(b *testing.B) { benchProtoMix(b, 32) }
func BenchmarkMix63(b *testing.B) { benchProtoMix(b, 63) } // every step through the device
