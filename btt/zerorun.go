package btt

import (
	"encoding/binary"

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

// ZeroRun returns the length n (1 <= n <= count) of the run of sectors
// from lba that all read as zeros, or that all may not: a sector reads
// as zeros when its map entry is in the zero state, or, in a PMDK pool,
// when it was never written (libpmemblk reads those as zeros; a Linux
// BTT reads the data block of a never-written sector, which may hold
// anything). It reads only the map, a chunk at a time, and takes no
// locks: the answer is a snapshot (block.ZeroMapper).
func (b *BTT) ZeroRun(lba, count uint64) (n uint64, zero bool, err error) {
	if b.closed.Load() {
		return 0, false, ErrClosed
	}
	if count == 0 || lba > b.nlba || count > b.nlba-lba {
		return 0, false, &RangeError{LBA: lba, Count: count, Sectors: b.nlba}
	}
	var buf [4 * zeroRunChunk]byte
	for n < count {
		a, premap := b.locate(lba + n)
		k := min(count-n, uint64(a.extNLBA-premap), zeroRunChunk)
		chunk := buf[:4*k]
		if _, err := b.dev.ReadAt(chunk, a.mapOff+4*int64(premap)); err != nil {
			return 0, false, &SectorError{Op: "map lookup", LBA: lba + n, Err: err}
		}
		for i := range uint32(k) {
			raw := binary.LittleEndian.Uint32(chunk[4*i:])
			if v, ok := a.override[premap+i]; ok {
				raw = v
			}
			_, st := decodeMap(raw, premap+i)
			z := st == MapZero || (st == MapIdentity && b.pmdk)
			if n == 0 {
				zero = z
			} else if z != zero {
				return n, zero, nil
			}
			n++
		}
	}
	return n, zero, nil
}
