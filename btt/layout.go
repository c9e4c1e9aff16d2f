package btt

import "fmt"

// Version is a BTT info block version.
type Version struct{ Major, Minor uint16 }

// The two versions Linux writes.
var (
	V11 = Version{1, 1} // Linux format: arena 0 at namespace byte 4096
	V20 = Version{2, 0} // UEFI 2.7 format: arena 0 at namespace byte 0
)

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major, v.Minor) }

// InitialOffset is the namespace offset of arena 0 for this version.
func (v Version) InitialOffset() int64 {
	if v.Major >= 2 {
		return InitialOffset20
	}
	return InitialOffset11
}

// ArenaLayout is the geometry of one arena. Off is the namespace offset
// of its info block; the section offsets are arena-relative, as stored.
type ArenaLayout struct {
	Off             int64  // namespace byte offset of the primary info block
	Size            int64  // bytes the arena spans (before rounding down to 4 KiB)
	ExternalLBASize uint32 // bytes per exported LBA (including metadata)
	InternalLBASize uint32 // bytes per internal block
	ExternalNLBA    uint32 // LBAs exported
	InternalNLBA    uint32 // internal blocks = ExternalNLBA + NFree
	NFree           uint32 // free blocks = log groups
	ExternalStart   uint64 // first exported LBA of this arena
	NextOff         uint64
	DataOff         uint64
	MapOff          uint64
	LogOff          uint64
	Info2Off        uint64
}

func roundUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

// ComputeLayout returns the arenas Linux's create_arenas/alloc_arena lay
// out on a namespace of nsSize bytes (doc.go, Arenas).
func ComputeLayout(nsSize int64, v Version, lbasize, nfree uint32) ([]ArenaLayout, error) {
	return computeLayout(nsSize, v.InitialOffset(), lbasize, uint32(roundUp(uint64(lbasize), InternalAlign)), nfree, ArenaMaxSize)
}

// PMDKInternalLBASize is libpmemblk's internal block size for bsize:
// max(bsize, 512) rounded up to 256.
func PMDKInternalLBASize(bsize uint32) uint32 {
	return uint32(roundUp(uint64(max(bsize, 512)), 256))
}

func computeLayout(nsSize, init int64, lbasize, internal, nfree uint32, maxArena int64) ([]ArenaLayout, error) {
	if lbasize == 0 || lbasize > MaxLBASize || internal < lbasize || internal < 512 {
		return nil, fmt.Errorf("btt: sector size %d (internal %d) is not supported", lbasize, internal)
	}
	if nfree == 0 || nfree > MaxNFree {
		return nil, fmt.Errorf("btt: nfree %d outside [1, %d]", nfree, MaxNFree)
	}
	if nsSize-init < ArenaMinSize {
		return nil, fmt.Errorf("btt: a %d-byte namespace is too small for a BTT (need %d bytes after the %d-byte initial offset)",
			nsSize, ArenaMinSize, init)
	}
	remaining := uint64(nsSize - init)
	var arenas []ArenaLayout
	var off, nlba uint64
	for remaining > 0 {
		asz := min(uint64(maxArena), remaining)
		remaining -= asz
		if asz < ArenaMinSize {
			break
		}
		a, err := arenaLayout(asz, lbasize, internal, nfree)
		if err != nil {
			return nil, err
		}
		a.Off = init + int64(off)
		a.ExternalStart = nlba
		nlba += uint64(a.ExternalNLBA)
		if remaining >= ArenaMinSize {
			a.NextOff = asz
		}
		off += asz
		arenas = append(arenas, a)
	}
	return arenas, nil
}

func arenaLayout(size uint64, lbasize, intSize, nfree uint32) (ArenaLayout, error) {
	L := uint64(intSize)
	avail := size - size%PageSize
	avail -= 2 * PageSize
	logsize := roundUp(uint64(nfree)*LogGroupSize, PageSize)
	if avail < logsize+PageSize+L+4 {
		return ArenaLayout{}, fmt.Errorf("btt: arena of %d bytes has no room for data", size)
	}
	avail -= logsize
	internal := (avail - PageSize) / (L + MapEntrySize)
	if internal <= uint64(nfree) || internal > mapLBAMask {
		return ArenaLayout{}, fmt.Errorf("btt: arena of %d bytes gives %d internal blocks for nfree %d", size, internal, nfree)
	}
	external := internal - uint64(nfree)
	mapsize := roundUp(external*MapEntrySize, PageSize)
	datasize := avail - mapsize
	a := ArenaLayout{
		Size:            int64(size),
		ExternalLBASize: lbasize,
		InternalLBASize: uint32(L),
		ExternalNLBA:    uint32(external),
		InternalNLBA:    uint32(internal),
		NFree:           nfree,
		DataOff:         PageSize,
	}
	a.MapOff = a.DataOff + datasize
	a.LogOff = a.MapOff + mapsize
	a.Info2Off = a.LogOff + logsize
	return a, nil
}

// SectorSizeFor is the exported data size of a sector of lbasize bytes:
// 4096 when lbasize >= 4096, else 512. The rest is integrity metadata.
func SectorSizeFor(lbasize uint32) uint32 {
	if lbasize >= 4096 {
		return 4096
	}
	return 512
}
