package btt

import (
	"encoding/binary"
	"math/bits"
	"slices"

	"github.com/nvblk/nvblk/pmem"
)

// mapChunk is how many map entries a scan reads at once: one 4 KiB page.
const mapChunk = 1024

// scanMap visits the map entries of arena a in order, in runs. For a run
// read from the media, raw holds its little-endian raw entries; for a run
// that lies in a hole of a sparse device (pmem.Sparse) raw is nil: every
// entry is raw 0, the identity, and nothing was read, so the map of a
// large, little-written image costs a few SEEK_DATA calls instead of
// gigabytes of page faults. A failed read is passed as err (raw nil). The
// pages of the map it read are let go of afterwards (pmem.Release), so a
// scan's resident memory does not grow with the map. visit returns false
// to stop. buf must hold at least 4*mapChunk bytes.
func scanMap(dev pmem.Device, a *arena, buf []byte, visit func(start, n uint32, raw []byte, err error) bool) {
	scanMapRange(dev, a, 0, a.extNLBA, buf, true, visit)
}

// scanMapRange is scanMap over the entries [from, to), in runs of at most
// len(buf)/4 entries read (and at most mapChunk); it lets go of the pages
// it read only with release (an offline scan: a running BTT's map pages
// are hot).
func scanMapRange(dev pmem.Device, a *arena, from, to uint32, buf []byte, release bool, visit func(start, n uint32, raw []byte, err error) bool) {
	sparse, _ := dev.(pmem.Sparse)
	chunk := min(mapChunk, uint32(len(buf)/4))
	dataEnd := from // entries before it are known to be data
	for start := from; start < to; {
		off := a.mapOff + 4*int64(start)
		left := to - start
		if sparse != nil && start >= dataEnd {
			hole, run, err := sparse.Extent(off, 4*int64(left))
			switch n := uint32(run / 4); {
			case err != nil || n == 0:
				dataEnd = to // cannot tell: read everything
			case hole:
				if !visit(start, n, nil, nil) {
					return
				}
				start += n
				continue
			default:
				dataEnd = start + n
			}
		}
		n := min(chunk, left)
		if sparse != nil && dataEnd > start {
			n = min(n, dataEnd-start)
		}
		p := buf[:4*n]
		_, err := dev.ReadAt(p, off)
		if err != nil {
			p = nil
		}
		more := visit(start, n, p, err)
		if release {
			pmem.Release(dev, off, 4*int64(n))
		}
		if !more {
			return
		}
		start += n
	}
}

// rawEntry is entry k of a run's raw entries.
func rawEntry(raw []byte, k uint32) uint32 { return binary.LittleEndian.Uint32(raw[4*k:]) }

// blockSet is one bit per internal block.
type blockSet []uint64

func newBlockSet(n uint32) blockSet { return make(blockSet, (uint64(n)+63)/64) }

func (s blockSet) has(b uint32) bool { return s[b/64]&(1<<(b%64)) != 0 }
func (s blockSet) set(b uint32)      { s[b/64] |= 1 << (b % 64) }

// add sets b and reports whether it was clear.
func (s blockSet) add(b uint32) bool {
	w, bit := b/64, uint64(1)<<(b%64)
	if s[w]&bit != 0 {
		return false
	}
	s[w] |= bit
	return true
}

// addRange sets the blocks [lo, hi), a word at a time, calling dup for
// each block that was already set.
func (s blockSet) addRange(lo, hi uint32, dup func(b uint32)) {
	for lo < hi {
		w, bit := lo/64, lo%64
		cnt := min(64-bit, hi-lo)
		mask := ^uint64(0)
		if cnt < 64 {
			mask = (uint64(1)<<cnt - 1) << bit
		}
		for d := s[w] & mask; d != 0; d &= d - 1 {
			dup(w*64 + uint32(bits.TrailingZeros64(d)))
		}
		s[w] |= mask
		lo += cnt
	}
}

// addIdentity adds the identity entries [start, start+n) of a map hole,
// except the LBAs that rollfwd maps elsewhere (a pending roll-forward),
// whose new blocks it adds instead. keys is rollfwd's keys, sorted.
func (s blockSet) addIdentity(start, n uint32, rollfwd map[uint32]uint32, keys []uint32, dup func(b uint32)) {
	lo, end := start, start+n
	i, _ := slices.BinarySearch(keys, start)
	for ; i < len(keys) && keys[i] < end; i++ {
		k := keys[i]
		s.addRange(lo, k, dup)
		if nw := rollfwd[k]; !s.add(nw) {
			dup(nw)
		}
		lo = k + 1
	}
	s.addRange(lo, end, dup)
}
