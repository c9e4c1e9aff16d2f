package btt

import (
	"sync"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/pmem"
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
// as zeros when its map entry is in the zero state, or when it was never
// written and either the BTT is a PMDK pool (libpmemblk reads those as
// zeros) or its data block lies in a hole of the backing file
// (pmem.Sparse: a Linux BTT reads the data block of a never-written
// sector, which holds whatever the namespace held; a new sparse image
// holds zeros there). It reads only the map, a chunk at a time
// (scanMapRange: a run of the map in a hole of the backing file is read
// from nowhere), and asks the device about holes once per extent; it
// calls no pmem.Release (it runs while serving) and takes no locks: the answer
// is a snapshot (block.ZeroMapper). (A never-written sector's data block
// is used by nothing else until the sector is written: the free blocks
// start past the exported ones, and a block is freed only by the write
// that remaps its sector.) A map entry that cannot be read ends the run
// before it; only when it is the first one is it an error, naming its LBA.
func (b *BTT) ZeroRun(lba, count uint64) (n uint64, zero bool, err error) {
	if b.closed.Load() {
		return 0, false, ErrClosed
	}
	if count == 0 || lba > b.nlba || count > b.nlba-lba {
		return 0, false, &RangeError{LBA: lba, Count: count, Sectors: b.nlba}
	}
	buf := zeroRunBufs.Get().(*[4 * zeroRunChunk]byte)
	defer zeroRunBufs.Put(buf)
	sparse, _ := b.dev.(pmem.Sparse)
	var ext struct { // the device extent asked about last
		off, end int64
		hole     bool
	}
	// hole reports whether premap's own data block lies in a hole.
	hole := func(a *arena, premap uint32) bool {
		if sparse == nil {
			return false
		}
		off := a.blockOff(premap)
		end := off + int64(b.sectorSize)
		if off < ext.off || off >= ext.end {
			// Ask about everything up to the end of the request (the
			// identity blocks of consecutive sectors are consecutive).
			last := min(uint64(a.extNLBA), uint64(premap)+count-n)
			isHole, run, err := sparse.Extent(off, a.blockOff(uint32(last))-off)
			if err != nil || run <= 0 {
				return false
			}
			ext.off, ext.end, ext.hole = off, off+run, isHole
		}
		// A listed bad block fails the read even in a hole.
		return ext.hole && end <= ext.end && !b.dev.BadBlocks().Overlaps(off, end-off)
	}
	// next classifies one entry; it reports false when the run ends.
	next := func(a *arena, premap, raw uint32) bool {
		if v, ok := a.override[premap]; ok {
			raw = v
		}
		_, st := decodeMap(raw, premap)
		z := st == MapZero || (st == MapIdentity && (b.pmdk || hole(a, premap)))
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
		end := uint32(min(uint64(a.extNLBA), uint64(premap)+count-n))
		var stop bool
		var ferr error
		// The map from premap, a chunk at a time; a run in a hole of the
		// backing file is identity entries, read from nowhere.
		scanMapRange(b.dev, a, premap, end, buf[:], false, func(start, k uint32, raw []byte, err error) bool {
			for i := range k {
				var e uint32 // raw 0 in a hole: the identity
				switch {
				case err != nil:
					// Entry by entry, up to the one that fails
					// (rolled-forward entries need no read).
					v, err := a.readMapRaw(b.dev, start+i, buf[:4])
					if err != nil {
						if n == 0 {
							ferr = &SectorError{Op: "map lookup", LBA: lba, Err: err}
						}
						stop = true
						return false
					}
					e = v
				case raw != nil:
					e = rawEntry(raw, i)
				}
				if !next(a, start+i, e) {
					stop = true
					return false
				}
			}
			return true
		})
		if ferr != nil {
			return 0, false, ferr
		}
		if stop {
			return n, zero, nil
		}
	}
	return n, zero, nil
}
