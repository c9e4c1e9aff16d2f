package pmemtest

import (
	"fmt"
	"math/bits"
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/nvblk/nvblk/pmem"
)

// CrashMem is an in-memory pmem.Device that models the weakest persistent
// memory real hardware gives:
//
//   - stores are atomic only per aligned 8-byte word;
//   - any written cache line may be written back to the media at any moment,
//     in any order, so a crash may keep any subset of unflushed words;
//   - nothing is guaranteed durable until Flush covers its 64-byte line and
//     a later Drain completes. A word written again after its Flush may
//     reach the media with either value.
//
// Crash, CrashWith, CrashDurableOnly and CrashAll return a new device that
// holds what the media may hold after a power failure at this moment; the
// original is not changed and can go on. Content is kept in 4 KiB
// copy-on-write pages, and a crash image shares the original's durable
// pages and records its chosen words as patches folded into a page on the
// page's first write, so a crash costs time proportional to the number of
// uncertain words (DirtyWords), whatever the device size: about 20 µs for
// 200 words on a 32 MiB device.
//
// Mode reports pmem.ModeDAX. CrashMem keeps a badblock list with the
// kernel's semantics (see package pmem); a crash image starts with a copy
// of it. A CrashMem is safe for concurrent use.
type CrashMem struct {
	size int64
	bad  *pmem.BadBlocks

	mu  sync.RWMutex
	cur *store // what the CPU sees
	dur *store // what is known to be on the media

	// dirty maps a line index to the words written since the line was last
	// flushed (bit i: the word at line*64 + 8*i); their value is in cur.
	dirty map[int64]uint8
	// pending maps a line index to the words flushed but not yet drained,
	// with their values at Flush time.
	pending map[int64]pendingLine
	// High-water marks of len(dirty) and len(pending), to drop maps that
	// grew large and became empty (ranging over them would stay slow).
	dirtyHigh, pendingHigh int

	points int64
	hook   func(Event)
	closed bool
}

type pendingLine struct {
	mask uint8
	val  [lineSize / wordSize]uint64
}

var _ pmem.Device = (*CrashMem)(nil)

// EventKind says which operation an Event reports.
type EventKind uint8

// Event kinds.
const (
	EventWrite EventKind = iota + 1 // a store (WriteAt, or the store part of WriteAtPersist)
	EventFlush                      // Flush, or the flush part of Persist/WriteAtPersist
	EventDrain                      // Drain, or the drain part of Persist/WriteAtPersist
)

func (k EventKind) String() string {
	switch k {
	case EventWrite:
		return "write"
	case EventFlush:
		return "flush"
	case EventDrain:
		return "drain"
	}
	return fmt.Sprintf("EventKind(%d)", uint8(k))
}

// Event describes an operation that changed a CrashMem's state.
type Event struct {
	Kind EventKind
	Off  int64 // byte range of the write or flush; 0 for a drain
	Len  int64
	// Point is the number of persistence points (drains) completed when
	// the event happened, this one included for EventDrain.
	Point int64
}

func (e Event) String() string {
	if e.Kind == EventDrain {
		return fmt.Sprintf("drain #%d", e.Point)
	}
	return fmt.Sprintf("%s [%d, +%d) after point %d", e.Kind, e.Off, e.Len, e.Point)
}

// NewCrashMem returns a zero-filled CrashMem of size bytes. Memory is
// allocated only for pages that are written.
func NewCrashMem(size int64) *CrashMem {
	if size < 0 {
		panic(fmt.Sprintf("pmemtest: NewCrashMem: negative size %d", size))
	}
	s := newStore(size)
	return &CrashMem{
		size:    size,
		bad:     pmem.NewBadBlocks(size),
		cur:     s,
		dur:     s.clone(),
		dirty:   make(map[int64]uint8),
		pending: make(map[int64]pendingLine),
	}
}

// Size returns the device size in bytes.
func (m *CrashMem) Size() int64 { return m.size }

// Mode returns pmem.ModeDAX: durability comes from Flush and Drain.
func (m *CrashMem) Mode() pmem.Mode { return pmem.ModeDAX }

// BadBlocks returns the device's badblock list.
func (m *CrashMem) BadBlocks() *pmem.BadBlocks { return m.bad }

// SetHook installs fn to be called after every WriteAt, Flush and Drain
// that changed something (Persist and WriteAtPersist report their parts
// separately), or removes the hook if fn is nil.
//
// The hook runs synchronously in the calling goroutine, after the device's
// lock has been released, so it may call Crash, CrashWith,
// CrashDurableOnly, CrashAll, Snapshot, DirtyWords, Points and ReadAt on
// the same device: an explorer takes its crash images there. It must not
// call WriteAt, WriteAtPersist, Flush, Drain or Persist on the same device
// (they would report events of their own, recursively). With several
// goroutines writing, other operations may run between an operation and
// its hook call.
func (m *CrashMem) SetHook(fn func(Event)) {
	m.mu.Lock()
	m.hook = fn
	m.mu.Unlock()
}

// Points returns the number of persistence points so far: Drain calls,
// including the ones made by Persist and WriteAtPersist.
func (m *CrashMem) Points() int64 {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return m.points
}

// ReadAt reads len(p) bytes at off: the current content, as the CPU sees it.
func (m *CrashMem) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return 0, pmem.ErrClosed
	}
	n := int64(len(p))
	if err := pmem.CheckRange("read", off, n, m.size); err != nil {
		return 0, err
	}
	if m.bad.Overlaps(off, n) {
		return 0, &pmem.MediaError{Op: "read", Off: off, Len: n, Why: "badblock"}
	}
	m.cur.readAt(p, off)
	return len(p), nil
}

// WriteAt stores p at off. Nothing of it is durable before a Flush of its
// lines and a Drain.
func (m *CrashMem) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	n, stored, err := m.writeLocked(p, off)
	hook, point := m.hook, m.points
	m.mu.Unlock()
	if stored && hook != nil {
		hook(Event{Kind: EventWrite, Off: off, Len: int64(len(p)), Point: point})
	}
	return n, err
}

func (m *CrashMem) writeLocked(p []byte, off int64) (n int, stored bool, err error) {
	if m.closed {
		return 0, false, pmem.ErrClosed
	}
	size := int64(len(p))
	if err := pmem.CheckRange("write", off, size, m.size); err != nil {
		return 0, false, err
	}
	if size == 0 {
		return 0, false, nil
	}
	if m.bad.Overlaps(off, size) {
		if off%pmem.SectorSize == 0 && size%pmem.SectorSize == 0 {
			m.bad.Clear(off, size)
		} else {
			err = &pmem.MediaError{Op: "write", Off: off, Len: size, Why: "badblock"}
		}
	}
	m.cur.writeAt(p, off)
	m.markDirty(off, size)
	return len(p), true, err
}

// markDirty records the words touching [off, off+n), n > 0, as dirty.
func (m *CrashMem) markDirty(off, n int64) {
	end := off + n
	for l := off >> lineShift; l<<lineShift < end; l++ {
		base := l << lineShift
		lo := max(off, base) - base
		hi := min(end, base+lineSize) - base
		w0, w1 := lo>>wordShift, (hi-1)>>wordShift
		mask := uint8((1<<(w1+1) - 1) &^ (1<<w0 - 1))
		m.dirty[l] |= mask
	}
	m.dirtyHigh = max(m.dirtyHigh, len(m.dirty))
}

// WriteAtPersist stores p at off and makes it durable: WriteAt followed by
// Persist. A write over a bad sector that returns a media error is
// persisted all the same (its data was stored).
func (m *CrashMem) WriteAtPersist(p []byte, off int64) (int, error) {
	n, err := m.WriteAt(p, off)
	if n == 0 {
		return 0, err // nothing stored: closed, out of range, or empty
	}
	if perr := m.Persist(off, int64(n)); perr != nil && err == nil {
		err = perr
	}
	return n, err
}

// WriteAtFlush stores p at off and flushes its lines: WriteAt followed by
// Flush. It is durable after the next Drain.
func (m *CrashMem) WriteAtFlush(p []byte, off int64) (int, error) {
	n, err := m.WriteAt(p, off)
	if n == 0 {
		return 0, err
	}
	if ferr := m.Flush(off, int64(n)); ferr != nil && err == nil {
		err = ferr
	}
	return n, err
}

// Flush starts the write-back of the 64-byte lines covering [off, off+n):
// their dirty words become pending with their current value. They are
// durable after the next Drain.
func (m *CrashMem) Flush(off, n int64) error {
	return m.flush("flush", off, n)
}

func (m *CrashMem) flush(op string, off, n int64) error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return pmem.ErrClosed
	}
	if err := pmem.CheckRange(op, off, n, m.size); err != nil {
		m.mu.Unlock()
		return err
	}
	if n > 0 {
		m.flushLocked(off, n)
	}
	hook, point := m.hook, m.points
	m.mu.Unlock()
	if n > 0 && hook != nil {
		hook(Event{Kind: EventFlush, Off: off, Len: n, Point: point})
	}
	return nil
}

func (m *CrashMem) flushLocked(off, n int64) {
	if len(m.dirty) == 0 {
		return
	}
	first, last := off>>lineShift, (off+n-1)>>lineShift
	if last-first+1 <= int64(len(m.dirty)) {
		for l := first; l <= last; l++ {
			if mask, ok := m.dirty[l]; ok {
				m.flushLine(l, mask)
			}
		}
	} else {
		for l, mask := range m.dirty {
			if l >= first && l <= last {
				m.flushLine(l, mask)
			}
		}
	}
	if len(m.dirty) == 0 && m.dirtyHigh > 4096 {
		m.dirty = make(map[int64]uint8)
		m.dirtyHigh = 0
	}
}

func (m *CrashMem) flushLine(l int64, mask uint8) {
	pl := m.pending[l]
	base := l << lineShift
	for mask != 0 {
		i := bits.TrailingZeros8(mask)
		mask &^= 1 << i
		pl.val[i] = m.cur.word(base + int64(i)<<wordShift)
		pl.mask |= 1 << i
	}
	m.pending[l] = pl
	m.pendingHigh = max(m.pendingHigh, len(m.pending))
	delete(m.dirty, l)
}

// Drain completes every Flush issued before it: the pending words become
// durable. Each Drain is a persistence point.
func (m *CrashMem) Drain() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return pmem.ErrClosed
	}
	for l, pl := range m.pending {
		base := l << lineShift
		for mask := pl.mask; mask != 0; {
			i := bits.TrailingZeros8(mask)
			mask &^= 1 << i
			m.dur.setWord(base+int64(i)<<wordShift, pl.val[i])
		}
	}
	if m.pendingHigh > 4096 {
		m.pending = make(map[int64]pendingLine)
		m.pendingHigh = 0
	} else {
		clear(m.pending)
	}
	m.points++
	hook, point := m.hook, m.points
	m.mu.Unlock()
	if hook != nil {
		hook(Event{Kind: EventDrain, Point: point})
	}
	return nil
}

// Persist is Flush(off, n) followed by Drain. The hook sees both.
func (m *CrashMem) Persist(off, n int64) error {
	if err := m.flush("persist", off, n); err != nil {
		return err
	}
	return m.Drain()
}

// Close makes every later access fail with pmem.ErrClosed. It does not
// persist anything. Crash images, snapshots and DirtyWords still work
// after Close: a crash after a close loses what was not persisted.
// Closing twice returns pmem.ErrClosed.
func (m *CrashMem) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return pmem.ErrClosed
	}
	m.closed = true
	return nil
}

// Snapshot returns a copy of the current content (what ReadAt sees,
// ignoring badblocks).
func (m *CrashMem) Snapshot() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	b := make([]byte, m.size)
	m.cur.readAt(b, 0)
	return b
}

// DurableSnapshot returns a copy of the content known to be durable: what
// CrashDurableOnly would hold.
func (m *CrashMem) DurableSnapshot() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	b := make([]byte, m.size)
	m.dur.readAt(b, 0)
	return b
}

// DirtyWords returns the number of 8-byte words whose content after a
// crash is uncertain: words dirty, pending or both. It is the number of
// times CrashWith calls its choose function.
func (m *CrashMem) DirtyWords() int {
	m.mu.RLock()
	defer m.mu.RUnlock()
	n := 0
	for l, mask := range m.dirty {
		n += bits.OnesCount8(mask | m.pending[l].mask)
	}
	for l, pl := range m.pending {
		if _, ok := m.dirty[l]; !ok {
			n += bits.OnesCount8(pl.mask)
		}
	}
	return n
}

// Crash returns a new CrashMem holding what the media may hold after a
// power failure now: the durable content plus, independently for each
// uncertain word, one of its possible values chosen uniformly with rng
// (see CrashWith). A nil rng uses the global generator of math/rand/v2.
// The words are visited in a fixed order, so the same rng state and the
// same history of operations give the same image.
func (m *CrashMem) Crash(rng *rand.Rand) *CrashMem {
	if rng == nil {
		return m.CrashWith(func(_ int64, n int) int { return rand.IntN(n) })
	}
	return m.CrashWith(func(_ int64, n int) int { return rng.IntN(n) })
}

// CrashDurableOnly returns the crash image in which no unpersisted store
// reached the media.
func (m *CrashMem) CrashDurableOnly() *CrashMem {
	return m.CrashWith(func(int64, int) int { return 0 })
}

// CrashAll returns the crash image in which every store reached the
// media: the current content.
func (m *CrashMem) CrashAll() *CrashMem {
	return m.CrashWith(func(_ int64, n int) int { return n - 1 })
}

// CrashWith returns a new CrashMem whose content (current and durable) is
// the durable content of m with, for each uncertain word, the value picked
// by choose. choose is called once per uncertain word, in increasing order
// of word, where word is the word's byte offset (a multiple of 8), and
// candidates is 2 or 3. It returns an index in [0, candidates):
//
//	0               the durable value (the store is lost)
//	1               the value flushed but not drained, for a pending word
//	candidates-1    the current value, for a dirty word
//
// so 0 is always the oldest value and candidates-1 the newest. A word both
// pending and dirty has 3 candidates. Candidates may be equal in value.
// Returning an index out of range panics. choose runs with m locked: it
// must not call m's methods.
//
// m is not changed (beyond internal copy-on-write bookkeeping) and can go
// on being used; the image is independent of it. The image has no hook,
// zero Points, and a copy of m's badblock list.
func (m *CrashMem) CrashWith(choose func(word int64, candidates int) int) *CrashMem {
	m.mu.Lock()
	defer m.mu.Unlock()
	img := m.dur.clone()
	lines := make([]int64, 0, len(m.dirty)+len(m.pending))
	for l := range m.dirty {
		lines = append(lines, l)
	}
	for l := range m.pending {
		if _, ok := m.dirty[l]; !ok {
			lines = append(lines, l)
		}
	}
	slices.Sort(lines)
	var add []patch
	for _, l := range lines {
		dm := m.dirty[l]
		pl := m.pending[l]
		base := l << lineShift
		for mask := dm | pl.mask; mask != 0; {
			i := bits.TrailingZeros8(mask)
			bit := uint8(1) << i
			mask &^= bit
			word := base + int64(i)<<wordShift
			isPending := pl.mask&bit != 0
			nc := 2
			if isPending && dm&bit != 0 {
				nc = 3
			}
			k := choose(word, nc)
			switch {
			case k < 0 || k >= nc:
				panic(fmt.Sprintf("pmemtest: CrashWith: choice %d for word at %d out of range [0, %d)", k, word, nc))
			case k == 0:
				// Lost: the durable value stays.
			case k == 1 && isPending:
				add = append(add, patch{word, pl.val[i]})
			default:
				add = append(add, patch{word, m.cur.word(word)})
			}
		}
	}
	img.addPatches(add)
	bad := pmem.NewBadBlocks(m.size)
	for _, r := range m.bad.List() {
		bad.Add(r.Off, r.Len)
	}
	return &CrashMem{
		size:    m.size,
		bad:     bad,
		cur:     img,
		dur:     img.clone(),
		dirty:   make(map[int64]uint8),
		pending: make(map[int64]pendingLine),
	}
}
