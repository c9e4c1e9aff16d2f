package btt

import (
	"encoding/binary"
	"sync"

	"github.com/nvblk/nvblk/block"
)

var (
	_ block.ZeroMapper = (*BTT)(nil)
	_ block.FastZeroer = (*BTT)(nil)
)

// ZeroIsFast reports whether ZeroSectors sets the zero state (a map
// update per sector) rather than writing zero sectors (see ZeroSectors).
func (b *BTT) ZeroIsFast() bool { return b.sectorSize >= zStateMinSector || b.pmdk }

// zeroRunChunk is how many map entries ZeroRun reads at a time.
const zeroRunChunk = 512

// zeroRunBufs holds ZeroRun's chunk buffers (a buffer handed to the
// device interface escapes, so a stack array would be allocated per call).
var zeroRunBufs = sync.Pool{New: func() any { return new([4 * zeroRunChunk]byte) }}

// ZeroRun returns the length n (1 <= n <= count) of the run of sectors
// from lba that all read as zeros, or that all may not: a sector reads
// as zeros when its map entry is in the zero state, or, in a PMDK pool,
// when it was never written (libpmemblk reads those as zeros; a Linux
// BTT reads the data block of a never-written sector, which may hold
// anything). It reads only the map, a chunk at a time, and takes no
// locks: the answer is a snapshot (block.ZeroMapper). A map entry that
// cannot be read ends the run before it; only when it is the first one
// is it an error, naming its LBA.
func (b *BTT) ZeroRun(lba, count uint64) (n uint64, zero bool, err error) {
	if b.closed.Load() {
		return 0, false, ErrClosed
	}
	if count == 0 || lba > b.nlba || count > b.nlba-lba {
		return 0, false, &RangeError{LBA: lba, Count: count, Sectors: b.nlba}
	}
	buf := zeroRunBufs.Get().(*[4 * zeroRunChunk]byte)
	defer zeroRunBufs.Put(buf)
	// next classifies one entry; it reports false when the run ends.
	next := func(a *arena, premap, raw uint32) bool {
		if v, ok := a.override[premap]; ok {
			raw = v
		}
		_, st := decodeMap(raw, premap)
		z := st == MapZero || (st == MapIdentity && b.pmdk)
		if n == 0 {
			zero = z
		} else if z != zero {
			return false
		}
		n++
		return true
	}
	for n < count {
		a, premap := b.locate(lba + n)
		k := uint32(min(count-n, uint64(a.extNLBA-premap), zeroRunChunk))
		chunk := buf[:4*k]
		if _, err := b.dev.ReadAt(chunk, a.mapOff+4*int64(premap)); err != nil {
			// Entry by entry, up to the one that fails (rolled-forward
			// entries need no read).
			for i := range k {
				raw, err := a.readMapRaw(b.dev, premap+i, chunk[:4])
				if err != nil {
					if n > 0 {
						return n, zero, nil
					}
					return 0, false, &SectorError{Op: "map lookup", LBA: lba, Err: err}
				}
				if !next(a, premap+i, raw) {
					return n, zero, nil
				}
			}
			continue
		}
		for i := range k {
			if !next(a, premap+i, binary.LittleEndian.Uint32(chunk[4*i:])) {
				return n, zero, nil
			}
		}
	}
	return n, zero, nil
}
