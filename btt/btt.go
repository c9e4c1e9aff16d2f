package btt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/nvblk/nvblk/pmem"
)

func yield() { runtime.Gosched() }

// Options control Open.
type Options struct {
	// ReadOnly refuses writes; nothing is written to the media, not even
	// the roll-forward of an interrupted write (it is applied in memory).
	ReadOnly bool
	// ParentUUID, when non-nil, is the namespace uuid: an info block with
	// a non-null parent_uuid must match it (the kernel's check).
	ParentUUID *[16]byte
	// Lanes is the number of concurrent lanes (default: 2*GOMAXPROCS,
	// at least 8, at most the smallest nfree of any arena).
	Lanes int
	// Logger receives notices (backup info block in use, arena error
	// flag). Nil discards them, as in every nvblk package (pmem,
	// pmemblk, nbd): a library is silent unless given a logger.
	Logger *slog.Logger
	// At, when set, opens the BTT whose arena 0 starts at this device
	// offset (any version) instead of probing 4096 (1.1) and 0 (2.0).
	// PMDK pools keep their BTT at offset 0 of the area after the pool
	// headers.
	At *int64
	// PMDK selects libpmemblk's semantics where they differ from Linux
	// (libpmemblk's btt_read and flog recovery): never-written (identity) blocks read as
	// zeros, sectors are the whole external LBA (no integrity metadata),
	// and log entries carry map-style flag bits, which libpmemblk's
	// recovery compares unmasked.
	PMDK bool
}

// CreateOptions control Create.
type CreateOptions struct {
	Version    Version  // V11 (default) or V20
	LBASize    uint32   // external sector size; default 4096
	UUID       [16]byte // BTT uuid; zero means random
	ParentUUID [16]byte // namespace uuid; zero for label-less namespaces
	NFree      uint32   // default 256 (what Linux writes)
	// InternalLBASize overrides the internal block size (PMDK rounds
	// max(bsize, 512) up to 256; Linux rounds up to 64). 0: Linux.
	InternalLBASize uint32
	// MaxArenaSize splits the device into arenas of at most this many
	// bytes (default and maximum 512 GiB, what Linux does). Smaller values
	// give multi-arena BTTs on small devices, for tests; Linux reads them.
	MaxArenaSize int64
	Options      // runtime options for the returned BTT
}

// BTT is an open Block Translation Table: a block device with atomic
// sector updates over a pmem.Device. It is safe for concurrent use.
type BTT struct {
	dev        pmem.Device
	version    Version
	initOff    int64
	uuid       [16]byte
	parent     [16]byte
	lbasize    uint32
	sectorSize uint32
	nlba       uint64
	arenas     []*arena
	lanes      []lane
	readOnly   bool
	backup     bool // opened from a backup info block
	truncated  bool // the device ends before the last backup info block
	pmdk       bool // libpmemblk semantics (Options.PMDK)
	closed     atomic.Bool
	log        *slog.Logger
	zeros      []byte
}

type lane struct {
	mu  sync.Mutex
	idx int
	buf [16]byte
	// pend is the device offset of the map entry this lane stored last
	// (P3) and has not written back, 0 for none: its line is written back
	// under the fence before the lane's next commit (see commit). Other
	// lanes read it (rule 1); it changes only after that fence.
	pend atomic.Int64
	_    [88]byte // keep lanes on separate cache lines, whatever the slice alignment
}

// acquire takes a free lane, trying a random one first.
func (b *BTT) acquire() *lane {
	n := uint32(len(b.lanes))
	start := mrand.Uint32N(n)
	for i := uint32(0); i < n; i++ {
		l := &b.lanes[(start+i)%n]
		if l.mu.TryLock() {
			return l
		}
	}
	l := &b.lanes[start]
	l.mu.Lock()
	return l
}

func (l *lane) release() { l.mu.Unlock() }

// Version returns the info block version.
func (b *BTT) Version() Version { return b.version }

// InitialOffset is the namespace offset of arena 0's info block.
func (b *BTT) InitialOffset() int64 { return b.initOff }

// UUID and ParentUUID return the info block's uuids.
func (b *BTT) UUID() [16]byte       { return b.uuid }
func (b *BTT) ParentUUID() [16]byte { return b.parent }

// LBASize is the external LBA size on media (512, 520, ..., 4224).
func (b *BTT) LBASize() uint32 { return b.lbasize }

// SectorSize is the data bytes per sector seen by ReadSectors/WriteSectors
// (512 or 4096); the rest of an LBA is integrity metadata.
func (b *BTT) SectorSize() int { return int(b.sectorSize) }

// Sectors is the number of exported sectors.
func (b *BTT) Sectors() uint64 { return b.nlba }

// ReadOnly reports whether writes are refused.
func (b *BTT) ReadOnly() bool { return b.readOnly }

// FromBackup reports whether the BTT was opened from a backup info block
// because a primary was damaged (the BTT is then read-only).
func (b *BTT) FromBackup() bool { return b.backup }

// Truncated reports whether the device ends before the last arena's
// backup info block (an image file cut short); the BTT is then read-only
// until `nvblk check --repair` extends it.
func (b *BTT) Truncated() bool { return b.truncated }

// Device returns the underlying pmem device.
func (b *BTT) Device() pmem.Device { return b.dev }

// Arenas describes the arenas as found on media.
func (b *BTT) Arenas() []ArenaInfo {
	out := make([]ArenaInfo, len(b.arenas))
	for i, a := range b.arenas {
		out[i] = ArenaInfo{Offset: a.off, Info: a.info, ExternalStart: a.extStart,
			LogIndex: a.logIdx, ErrorFlag: a.errFlag}
	}
	return out
}

// ArenaInfo describes one arena.
type ArenaInfo struct {
	Offset        int64  // namespace byte offset of the primary info block
	Info          Info   // the info block
	ExternalStart uint64 // first exported LBA
	LogIndex      [2]int // log slots in use: (0,1) new format, (0,2) pre-4.15
	ErrorFlag     bool
}

func (b *BTT) locate(lba uint64) (*arena, uint32) {
	for _, a := range b.arenas {
		if lba < a.extStart+uint64(a.extNLBA) {
			return a, uint32(lba - a.extStart)
		}
	}
	return nil, 0
}

func (b *BTT) checkIO(p []byte, lba uint64) (uint64, error) {
	if b.closed.Load() {
		return 0, ErrClosed
	}
	ss := uint64(b.sectorSize)
	if uint64(len(p))%ss != 0 {
		return 0, fmt.Errorf("%w: %d bytes with %d-byte sectors", ErrAlignment, len(p), ss)
	}
	n := uint64(len(p)) / ss
	if lba > b.nlba || n > b.nlba-lba {
		return 0, &RangeError{LBA: lba, Count: n, Sectors: b.nlba}
	}
	return n, nil
}

// ReadSectors reads len(p)/SectorSize() whole sectors starting at lba.
// Each sector is read atomically with respect to writes of that sector.
func (b *BTT) ReadSectors(p []byte, lba uint64) error { return b.sectors(p, lba, false) }

// sectors runs a read or a write of whole sectors through one lane.
func (b *BTT) sectors(p []byte, lba uint64, write bool) error {
	n, err := b.checkIO(p, lba)
	if err != nil || n == 0 {
		return err
	}
	if write && b.readOnly {
		return ErrReadOnly
	}
	l := b.acquire()
	defer l.release()
	ss := uint64(b.sectorSize)
	for i := uint64(0); i < n; i++ {
		sec := p[i*ss : (i+1)*ss]
		if write {
			err = b.writeSector(l, lba+i, sec)
		} else {
			err = b.readSector(l, lba+i, sec)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (b *BTT) readSector(l *lane, lba uint64, dst []byte) error {
	a, premap := b.locate(lba)
	raw, err := a.readMapRaw(b.dev, premap, l.buf[:])
	if err != nil {
		return &SectorError{Op: "read", LBA: lba, Err: err}
	}
	post, st := decodeMap(raw, premap)
	if st == MapIdentity && b.pmdk {
		clear(dst) // libpmemblk: a never-written block reads as zeros
		return nil
	}
	rtt := &a.rtt[l.idx].v
	for {
		switch st {
		case MapZero:
			clear(dst)
			return nil
		case MapError:
			return &SectorError{Op: "read", LBA: lba, Err: errSectorE}
		}
		rtt.Store(rttValid | post)
		raw2, err := a.readMapRaw(b.dev, premap, l.buf[:])
		if err != nil {
			rtt.Store(0)
			return &SectorError{Op: "read", LBA: lba, Err: err}
		}
		post2, st2 := decodeMap(raw2, premap)
		if post2 == post && st2 == st {
			break
		}
		post, st = post2, st2
	}
	if post >= a.intNLBA {
		rtt.Store(0)
		return &SectorError{Op: "read", LBA: lba, Err: corruptf(a.idx, a.mapOff+4*int64(premap),
			"map entry for LBA %d points at block %d, past internal_nlba %d", premap, post, a.intNLBA)}
	}
	_, err = b.dev.ReadAt(dst, a.blockOff(post))
	rtt.Store(0)
	if err != nil {
		if errors.Is(err, pmem.ErrMedia) && !b.readOnly {
			b.markError(a, premap, raw, post, l)
		}
		return &SectorError{Op: "read", LBA: lba, Err: err}
	}
	return nil
}

var errSectorE = errors.New("sector is in the error state")

// markError persistently records a media error on premap (the kernel's
// read path), unless the entry changed meanwhile.
func (b *BTT) markError(a *arena, premap, seen, post uint32, l *lane) {
	mu := a.mapLock(premap)
	mu.Lock()
	defer mu.Unlock()
	cur, err := a.readMapRaw(b.dev, premap, l.buf[:])
	if err != nil || cur != seen {
		return
	}
	if err := a.writeMapRaw(b.dev, premap, mapE|post, l.buf[:]); err != nil {
		b.log.Warn("btt: could not record media error in the map", "lba", premap, "err", err)
	}
}

// WriteSectors writes len(p)/SectorSize() whole sectors starting at lba.
// Each sector is updated atomically: after a crash at any instant it reads
// entirely old or entirely new. When WriteSectors returns nil the data is
// durable.
func (b *BTT) WriteSectors(p []byte, lba uint64) error { return b.sectors(p, lba, true) }

func (b *BTT) writeSector(l *lane, lba uint64, src []byte) error {
	a, premap := b.locate(lba)
	if a.errFlag {
		return &SectorError{Op: "write", LBA: lba, Err: ErrReadOnly}
	}
	if a.failed.Load() {
		return &SectorError{Op: "write", LBA: lba, Err: errArenaFailed}
	}
	if brokenWrite != nil { // tests only (ordering.go)
		return brokenWrite(b, l, a, premap, src)
	}
	fe := &a.free[l.idx]
	if fe.hasErr || b.dev.BadBlocks().Overlaps(a.blockOff(fe.block), a.L) {
		if err := b.clearBlock(a, fe.block); err != nil {
			return &SectorError{Op: "write", LBA: lba, Err: err}
		}
		fe.hasErr = false
	}
	nb := fe.block
	if nb >= a.intNLBA {
		return &SectorError{Op: "write", LBA: lba, Err: corruptf(a.idx, a.logOff, "free block %d past internal_nlba %d", nb, a.intNLBA)}
	}
	a.waitRTT(nb)
	// The map lock is taken before the data is written: a locked
	// instruction waits for outstanding non-temporal stores, so taking it
	// after P1 would fence P1 on its own and P1 could not share its fence
	// with P2a.
	mu := a.mapLock(premap)
	mu.Lock()
	// P1: the data into the free block. Its write-back is started here and
	// completed by the fence that also completes P2a (see commit).
	if _, err := b.dev.WriteAtFlush(src, a.blockOff(nb)); err != nil {
		mu.Unlock()
		fe.hasErr = true
		return &SectorError{Op: "write", LBA: lba, Err: err}
	}
	err := b.commit(a, l, fe, premap, nb)
	mu.Unlock()
	if err != nil {
		return &SectorError{Op: "write", LBA: lba, Err: err}
	}
	if fe.hasErr {
		// The replaced block held a media error: clear it now (the
		// kernel's step 14); if that fails the next write retries.
		if b.clearBlock(a, fe.block) == nil {
			fe.hasErr = false
		}
	}
	return nil
}

var errArenaFailed = errors.New("arena metadata write failed; reopen to recover")

// commit logs and maps the new block under the map lock (P2a, P2b, P3).
//
// Two fences per write. The first completes the data (P1, started by the
// caller), P2a, and the write-back of two map lines: the one holding the
// entry this write replaces (rule 1: another lane may have stored it
// without writing it back, and recovery can roll this write forward
// only from the old mapping the media holds) and the one this lane
// stored in its previous write (rule 2: that write can be rolled forward
// only while its log entry is the lane's newest, which P2b is about to
// end). The second fence completes P2b, the commit: the write is durable
// from there, as recovery rolls forward a lane's newest entry whose map
// update is missing (Linux's btt_freelist_init, libpmemblk's flog
// recovery, nvblk's loadLog). P3, the map entry, is a plain store, left
// for the next commit of this lane (or Flush, or Close) to write back.
func (b *BTT) commit(a *arena, l *lane, fe *freeEntry, premap, nb uint32) error {
	raw, err := a.readMapRaw(b.dev, premap, l.buf[:])
	if err != nil {
		return err
	}
	old, st := decodeMap(raw, premap)
	if old >= a.intNLBA {
		return corruptf(a.idx, a.mapOff+4*int64(premap), "map entry for LBA %d points at block %d, past internal_nlba %d", premap, old, a.intNLBA)
	}
	oldField, newField := old, nb
	if st == MapError {
		oldField |= mapE
	}
	if b.pmdk {
		// libpmemblk logs the raw map entry (identity promoted to a
		// normal entry) and the new entry with both flags.
		oldField, newField = raw, mapNormal|nb
		if st == MapIdentity {
			oldField = mapNormal | premap
		}
	}
	e := LogEntry{LBA: premap, OldMap: oldField, NewMap: newField, Seq: fe.seq}
	e.Encode(l.buf[:])
	off := a.slotOff(l.idx, a.logIdx[fe.sub])
	// P2a: {lba, old_map}; P2b: {new_map, seq}. seq lands last, so a torn
	// entry keeps its old seq and stays the older slot. P1 and P2a need no
	// order between them (P2a alone leaves the slot older, ignored by
	// recovery); both must be durable before P2b: one fence serves both.
	if _, err := b.dev.WriteAtFlush(l.buf[0:8], off); err != nil {
		a.failed.Store(true)
		return err
	}
	mapEnt := a.mapOff + 4*int64(premap)
	if skipRule != 1 && b.pendingIn(mapEnt) {
		if err := b.dev.Flush(mapEnt, 4); err != nil {
			a.failed.Store(true)
			return err
		}
	}
	if p := l.pend.Load(); p != 0 && skipRule != 2 {
		if err := b.dev.Flush(p, 4); err != nil {
			a.failed.Store(true)
			return err
		}
	}
	if err := b.dev.Drain(); err != nil {
		a.failed.Store(true)
		return err
	}
	if _, err := b.dev.WriteAtPersist(l.buf[8:16], off+8); err != nil {
		a.failed.Store(true)
		return err
	}
	fe.sub ^= 1
	fe.seq = nextSeq(fe.seq)
	fe.block = old
	fe.hasErr = st == MapError
	// P3: the map entry, stored; its write-back waits (see above). If the
	// store fails, the log already commits the write: the next open rolls
	// it forward; until then the arena refuses writes.
	binary.LittleEndian.PutUint32(l.buf[:4], mapNormal|nb)
	if _, err := b.dev.WriteAt(l.buf[:4], mapEnt); err != nil {
		a.failed.Store(true)
		return err
	}
	l.pend.Store(mapEnt)
	return nil
}

// pendingIn reports whether some lane stored the map entry at off and
// has not written it back (rule 1 of commit then needs the write-back).
// The caller holds the entry's map lock, under which every store to it
// happens, so a lane that stored it has published pend; a lane moves pend
// on only after the fence that made the entry durable. An entry no lane
// has pending is durable already, and its line is left alone: on CPUs
// whose CLWB also evicts the line (AMD), writing it back just before P3
// stores into it would cost a miss.
func (b *BTT) pendingIn(off int64) bool {
	for i := range b.lanes {
		if b.lanes[i].pend.Load() == off {
			return true
		}
	}
	return false
}

// writeBackMaps writes back the map lines the lanes stored and left
// pending (see commit) and fences. With lock set it takes each lane's
// lock (writes may be running).
func (b *BTT) writeBackMaps(lock bool) error {
	var err error
	for i := range b.lanes {
		l := &b.lanes[i]
		if lock {
			l.mu.Lock()
		}
		if p := l.pend.Load(); p != 0 {
			if ferr := b.dev.Flush(p, 4); ferr == nil {
				l.pend.Store(0)
			} else if err == nil {
				err = ferr
			}
		}
		if lock {
			l.mu.Unlock()
		}
	}
	if derr := b.dev.Drain(); err == nil {
		err = derr
	}
	return err
}

// clearBlock zeroes the data part of a free block; an aligned write also
// clears badblocks (poison) under it.
func (b *BTT) clearBlock(a *arena, blk uint32) error {
	_, err := b.dev.WriteAtPersist(b.zeros[:b.sectorSize], a.blockOff(blk))
	return err
}

// ZeroSectors makes count sectors from lba read as zeros. With sectors of
// a page (4096 bytes) or more, and on PMDK pools, it puts them in the zero
// (Z) state: one atomic map store each, no block freed or allocated. With
// smaller sectors on a Linux BTT it writes zero sectors instead, because
// Linux (seen on 6.1) stops filling a page at the first Z sector it meets,
// so page-cache reads of the other sectors of that page would return
// zeros (found by the qemu harness in interop/kernel).
func (b *BTT) ZeroSectors(lba, count uint64) error {
	if b.sectorSize >= zStateMinSector || b.pmdk {
		return b.setState(lba, count, mapZ, "zero")
	}
	l, err := b.acquireForUpdate(lba, count)
	if err != nil {
		return err
	}
	defer l.release()
	for i := uint64(0); i < count; i++ {
		if err := b.writeSector(l, lba+i, b.zeros); err != nil {
			return err
		}
	}
	return nil
}

// zStateMinSector is the smallest sector size for which ZeroSectors uses
// the Z map state on a Linux BTT (one sector per page).
const zStateMinSector = 4096

// SetError puts count sectors from lba in the error (E) state: reads fail
// until the sector is written again (libpmemblk's pmemblk_set_error).
func (b *BTT) SetError(lba, count uint64) error {
	return b.setState(lba, count, mapE, "set-error")
}

// acquireForUpdate checks an update of count sectors from lba and takes
// a lane for it.
func (b *BTT) acquireForUpdate(lba, count uint64) (*lane, error) {
	if b.closed.Load() {
		return nil, ErrClosed
	}
	if lba > b.nlba || count > b.nlba-lba {
		return nil, &RangeError{LBA: lba, Count: count, Sectors: b.nlba}
	}
	if b.readOnly {
		return nil, ErrReadOnly
	}
	return b.acquire(), nil
}

func (b *BTT) setState(lba, count uint64, flag uint32, op string) error {
	l, err := b.acquireForUpdate(lba, count)
	if err != nil {
		return err
	}
	defer l.release()
	for i := uint64(0); i < count; i++ {
		a, premap := b.locate(lba + i)
		if a.errFlag {
			return &SectorError{Op: op, LBA: lba + i, Err: ErrReadOnly}
		}
		if a.failed.Load() {
			return &SectorError{Op: op, LBA: lba + i, Err: errArenaFailed}
		}
		mu := a.mapLock(premap)
		mu.Lock()
		raw, err := a.readMapRaw(b.dev, premap, l.buf[:])
		if err == nil {
			post, _ := decodeMap(raw, premap)
			if post >= a.intNLBA {
				err = corruptf(a.idx, a.mapOff+4*int64(premap), "map entry for LBA %d points at block %d", premap, post)
			} else if raw != flag|post {
				err = a.writeMapRaw(b.dev, premap, flag|post, l.buf[:])
			}
		}
		mu.Unlock()
		if err != nil {
			return &SectorError{Op: op, LBA: lba + i, Err: err}
		}
	}
	return nil
}

// Flush makes every completed write durable. Writes are durable when they
// return, so this only drains the device.
func (b *BTT) Flush() error {
	if b.closed.Load() {
		return ErrClosed
	}
	return b.writeBackMaps(true)
}

// Close writes back what the lanes left pending and releases the BTT
// (not the underlying device). It must not run concurrently with I/O.
func (b *BTT) Close() error {
	if b.closed.Swap(true) || b.readOnly {
		return nil
	}
	return b.writeBackMaps(false)
}

// MapEntry returns the decoded map entry of an exported LBA (for tools
// and tests).
func (b *BTT) MapEntry(lba uint64) (postmap uint32, st MapState, err error) {
	if lba >= b.nlba {
		return 0, 0, &RangeError{LBA: lba, Count: 1, Sectors: b.nlba}
	}
	a, premap := b.locate(lba)
	var buf [4]byte
	raw, err := a.readMapRaw(b.dev, premap, buf[:])
	if err != nil {
		return 0, 0, err
	}
	post, st := decodeMap(raw, premap)
	return post, st, nil
}
