package pmem

import (
	"sort"
	"sync"
	"sync/atomic"
)

// BadBlocks is a device's list of bad 512-byte sectors, with the kernel's
// semantics (see the package documentation). A BadBlocks obtained from a
// Window is a view of its parent's list, translated to the window's offsets.
// It is safe for concurrent use.
type BadBlocks struct {
	set  *badSet
	base int64 // byte offset of this view in the underlying device
	size int64 // bytes visible in this view
}

// badSet holds bad sectors as sorted, non-overlapping, non-adjacent ranges.
type badSet struct {
	n  atomic.Int64 // number of ranges, read without the lock on the fast path
	mu sync.Mutex
	r  []sectorRange // sorted by start
}

type sectorRange struct{ start, end int64 } // sectors [start, end)

// Range is a byte range [Off, Off+Len) of bad sectors.
type Range struct {
	Off int64 `json:"offset"`
	Len int64 `json:"length"`
}

// NewBadBlocks returns an empty list for a device of size bytes.
func NewBadBlocks(size int64) *BadBlocks {
	return &BadBlocks{set: &badSet{}, size: size}
}

// View returns the list seen through a window of size bytes at off.
func (b *BadBlocks) View(off, size int64) *BadBlocks {
	return &BadBlocks{set: b.set, base: b.base + off, size: size}
}

func sectorSpan(off, n int64) (int64, int64) {
	return off / SectorSize, (off + n + SectorSize - 1) / SectorSize
}

// clip limits [off, off+n) to the view and translates it to device bytes.
func (b *BadBlocks) clip(off, n int64) (int64, int64, bool) {
	if off < 0 {
		n += off
		off = 0
	}
	if off+n > b.size {
		n = b.size - off
	}
	if n <= 0 {
		return 0, 0, false
	}
	return b.base + off, n, true
}

// Add marks every sector touching [off, off+n) bad.
func (b *BadBlocks) Add(off, n int64) {
	off, n, ok := b.clip(off, n)
	if !ok {
		return
	}
	s, e := sectorSpan(off, n)
	b.set.mu.Lock()
	defer b.set.mu.Unlock()
	r := b.set.r
	out := make([]sectorRange, 0, len(r)+1)
	i := 0
	for ; i < len(r) && r[i].end < s; i++ {
		out = append(out, r[i])
	}
	for ; i < len(r) && r[i].start <= e; i++ {
		s = min(s, r[i].start)
		e = max(e, r[i].end)
	}
	out = append(out, sectorRange{s, e})
	out = append(out, r[i:]...)
	b.set.r = out
	b.set.n.Store(int64(len(out)))
}

// Clear removes the sectors that lie entirely inside [off, off+n).
func (b *BadBlocks) Clear(off, n int64) {
	off, n, ok := b.clip(off, n)
	if !ok {
		return
	}
	s := (off + SectorSize - 1) / SectorSize
	e := (off + n) / SectorSize
	if s >= e {
		return
	}
	b.set.mu.Lock()
	defer b.set.mu.Unlock()
	var out []sectorRange
	for _, x := range b.set.r {
		if x.end <= s || x.start >= e {
			out = append(out, x)
			continue
		}
		if x.start < s {
			out = append(out, sectorRange{x.start, s})
		}
		if x.end > e {
			out = append(out, sectorRange{e, x.end})
		}
	}
	b.set.r = out
	b.set.n.Store(int64(len(out)))
}

// Overlaps reports whether any sector touching [off, off+n) is bad. It is
// cheap when the list is empty.
func (b *BadBlocks) Overlaps(off, n int64) bool {
	if b.set.n.Load() == 0 {
		return false
	}
	off, n, ok := b.clip(off, n)
	if !ok {
		return false
	}
	s, e := sectorSpan(off, n)
	b.set.mu.Lock()
	defer b.set.mu.Unlock()
	r := b.set.r
	i := sort.Search(len(r), func(i int) bool { return r[i].end > s })
	return i < len(r) && r[i].start < e
}

// Len returns the number of bad ranges visible in this view.
func (b *BadBlocks) Len() int { return len(b.List()) }

// List returns the bad byte ranges visible in this view, in view offsets.
func (b *BadBlocks) List() []Range {
	b.set.mu.Lock()
	defer b.set.mu.Unlock()
	var out []Range
	for _, x := range b.set.r {
		s, e := x.start*SectorSize-b.base, x.end*SectorSize-b.base
		s, e = max(s, 0), min(e, b.size)
		if s < e {
			out = append(out, Range{Off: s, Len: e - s})
		}
	}
	return out
}

// checkWrite applies the kernel's write rule for an access that is about
// to store [off, off+n): it reports whether the write must return
// ErrMedia (after storing the data anyway).
func (b *BadBlocks) checkWrite(off, n int64) (mediaErr bool) {
	if !b.Overlaps(off, n) {
		return false
	}
	if (b.base+off)%SectorSize == 0 && n%SectorSize == 0 {
		b.Clear(off, n)
		return false
	}
	return true
}
