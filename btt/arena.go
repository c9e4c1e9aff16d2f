package btt

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/nvblk/nvblk/pmem"
)

// MaxNFree bounds the nfree accepted from media, so that a hostile info
// block cannot make Open allocate without limit. Linux and PMDK write 256.
const MaxNFree = 1 << 16

// MaxLBASize bounds the external LBA size accepted from media (buffers
// are sized by it). Linux's largest is 4224; PMDK accepts any bsize.
const MaxLBASize = 1 << 20

// maxArenas bounds the arena walk (2 PiB of 512 GiB arenas).
const maxArenas = 4096

const rttValid = 1 << 31

// freeEntry is a lane's in-memory free-list entry (btt.h struct free_entry).
type freeEntry struct {
	block  uint32   // the free internal block this lane writes next
	sub    uint8    // entry slot (0 or 1, an index into logIdx) the next log entry goes to
	seq    uint32   // sequence number of the next log entry
	hasErr bool     // block must be cleared before use
	_      [48]byte // one cache line per lane: lanes run on different CPUs
}

type paddedMutex struct {
	sync.Mutex
	_ [56]byte
}

type rttSlot struct {
	v atomic.Uint32
	_ [60]byte
}

// arena is one arena's runtime state. All offsets are namespace offsets.
type arena struct {
	idx      int
	info     Info  // primary info block as read
	off      int64 // info block
	size     int64
	dataOff  int64
	mapOff   int64
	logOff   int64
	info2Off int64
	L        int64 // internal_lbasize
	intNLBA  uint32
	extNLBA  uint32
	nfree    uint32
	extStart uint64
	logIdx   [2]int // physical slots holding the two entries: (0,1) or (0,2)
	errFlag  bool   // IB_FLAG_ERROR: arena is read-only
	info2Cut bool   // the device ends inside or before info2 (a truncated image)
	failed   atomic.Bool

	free     []freeEntry   // indexed by lane (< nlanes <= nfree)
	rtt      []rttSlot     // indexed by lane
	mapLocks []paddedMutex // hashed by premap cache line

	// override holds map entries rolled forward in memory only, when the
	// BTT is opened read-only with an interrupted write pending.
	override map[uint32]uint32
}

func (a *arena) mapLock(premap uint32) *paddedMutex {
	return &a.mapLocks[(premap/16)%uint32(len(a.mapLocks))]
}

func (a *arena) blockOff(b uint32) int64 { return a.dataOff + int64(b)*a.L }

func (a *arena) slotOff(lane int, physSlot int) int64 {
	return a.logOff + int64(lane)*LogGroupSize + int64(physSlot)*LogEntrySize
}

// readMapRaw reads map entry premap into buf and returns the raw value.
func (a *arena) readMapRaw(dev pmem.Device, premap uint32, buf []byte) (uint32, error) {
	if a.override != nil {
		if v, ok := a.override[premap]; ok {
			return v, nil
		}
	}
	if _, err := dev.ReadAt(buf[:4], a.mapOff+4*int64(premap)); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint32(buf), nil
}

func (a *arena) writeMapRaw(dev pmem.Device, premap, raw uint32, buf []byte) error {
	binary.LittleEndian.PutUint32(buf[:4], raw)
	_, err := dev.WriteAtPersist(buf[:4], a.mapOff+4*int64(premap))
	return err
}

// waitRTT spins until no reader has published block b.
func (a *arena) waitRTT(b uint32) {
	tag := rttValid | b
	for i := range a.rtt {
		for spins := 0; a.rtt[i].v.Load() == tag; spins++ {
			if spins > 64 {
				yield()
			}
		}
	}
}
