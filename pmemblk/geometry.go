package pmemblk

import (
	"fmt"

	"github.com/nvblk/nvblk/btt"
)

// arenaGeom is one arena of the layout libpmemblk's write_layout would
// write. Offsets are relative to the BTT area (file offset BTTOffset).
type arenaGeom struct {
	off      int64 // arena start: its primary info block
	size     int64
	intLBA   uint32 // internal block size
	extNLBA  uint32
	intNLBA  uint32
	mapOff   int64 // absolute (BTT-relative), like off
	flogOff  int64
	info2Off int64
}

// Geometry constants of libpmemblk's BTT (btt_layout.h).
const (
	arenaMin  = btt.ArenaMinSize // BTT_MIN_SIZE: smaller tails are unused
	arenaMax  = btt.ArenaMaxSize // BTT_MAX_ARENA
	infoSize  = btt.InfoSize
	flogGroup = btt.LogGroupSize // BTT_FLOG_PAIR_ALIGN
)

func roundUp(x, a int64) int64 { return (x + a - 1) / a * a }

// pmdkGeometry computes the arenas libpmemblk lays out in a BTT area of
// rawSize bytes for bsize-byte blocks (btt.c write_layout and
// btt_info_set_params/offs), and the total number of usable blocks. It
// fails, as btt_init does, when an arena would hold fewer than 2*nfree
// internal blocks.
func pmdkGeometry(rawSize int64, bsize uint32) ([]arenaGeom, uint64, error) {
	if rawSize < arenaMin {
		return nil, 0, fmt.Errorf("%w: %d bytes after the pool headers, the BTT needs at least %d", ErrPoolSize, rawSize, int64(arenaMin))
	}
	internal := int64(btt.PMDKInternalLBASize(bsize))
	flogSize := roundUp(DefaultNFree*flogGroup, PageSize)
	var out []arenaGeom
	var total uint64
	var off int64
	for remaining := rawSize; remaining >= arenaMin; {
		size := min(remaining, int64(arenaMax))
		remaining -= size
		dataSize := size - 2*infoSize - flogSize
		nint := (dataSize - PageSize) / (internal + btt.MapEntrySize)
		if nint < 2*DefaultNFree {
			return nil, 0, fmt.Errorf("%w: an arena of %d bytes holds %d internal blocks of %d bytes, at least %d are needed",
				ErrPoolSize, size, nint, internal, 2*DefaultNFree)
		}
		a := arenaGeom{off: off, size: size, intLBA: uint32(internal), intNLBA: uint32(nint), extNLBA: uint32(nint - DefaultNFree)}
		a.info2Off = off + size - infoSize
		a.flogOff = a.info2Off - flogSize
		a.mapOff = a.flogOff - roundUp(int64(a.extNLBA)*btt.MapEntrySize, PageSize)
		out = append(out, a)
		total += uint64(a.extNLBA)
		off += size
	}
	return out, total, nil
}
