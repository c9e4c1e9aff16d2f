package pmemtest

import (
	"cmp"
	"encoding/binary"
	"slices"
	"sync/atomic"
)

// Paged copy-on-write byte store.
//
// A store is a two-level table: chunks of chunkPages page pointers, each
// page pageSize bytes. A nil chunk or nil page reads as zeros.
//
// Cloning copies only the top-level slice of chunk pointers (a few dozen
// pointers for a 64 MiB device) and gives both the original and the clone
// fresh ids. A chunk may be modified in place only by the store whose id it
// carries, and a page only by the chunk that allocated it (its bit in own);
// everything else is copied on first write. After a clone neither store
// owns any chunk, so the shared chunks and pages are frozen and both sides
// copy what they write.
//
// A store may also hold patches: 8-byte words whose value overrides the
// pages'. Crash images are built as patches over the durable store, so a
// crash costs O(words), not a page copy per word; a page's patches are
// folded into it when it is first written. The patches slice is never
// modified in place (clones share it).
const (
	pageShift  = 12
	pageSize   = 1 << pageShift
	pageMask   = pageSize - 1
	chunkShift = 9 // pages per chunk: 512 (2 MiB of data)
	chunkPages = 1 << chunkShift
	chunkMask  = chunkPages - 1

	lineShift = 6 // 64-byte cache lines
	lineSize  = 1 << lineShift
	wordShift = 3 // 8-byte atomic words
	wordSize  = 1 << wordShift
)

type pageData = [pageSize]byte

type chunk struct {
	owner uint64                  // id of the store that may modify this chunk in place
	own   [chunkPages / 64]uint64 // bit i set: pages[i] was allocated by this chunk
	pages [chunkPages]*pageData
}

type store struct {
	id      uint64
	chunks  []*chunk
	patches []patch // sorted by off, unique; read-only, replaced on change
}

// patch is an 8-byte word (at off, a multiple of 8) overriding the pages.
type patch struct {
	off int64
	val uint64
}

var storeIDs atomic.Uint64

func nextStoreID() uint64 { return storeIDs.Add(1) }

func newStore(size int64) *store {
	pages := (size + pageSize - 1) >> pageShift
	chunks := (pages + chunkPages - 1) >> chunkShift
	return &store{id: nextStoreID(), chunks: make([]*chunk, chunks)}
}

// clone returns a store with the same content. Both s and the clone copy
// on their next write to any chunk.
func (s *store) clone() *store {
	c := &store{id: nextStoreID(), chunks: slices.Clone(s.chunks), patches: s.patches}
	s.id = nextStoreID()
	return c
}

// page returns page pi for reading, nil if it is all zeros.
func (s *store) page(pi int64) *pageData {
	ch := s.chunks[pi>>chunkShift]
	if ch == nil {
		return nil
	}
	return ch.pages[pi&chunkMask]
}

// writablePage returns page pi, private to s, copying as needed.
func (s *store) writablePage(pi int64) *pageData {
	ci := pi >> chunkShift
	ch := s.chunks[ci]
	switch {
	case ch == nil:
		ch = &chunk{owner: s.id}
		s.chunks[ci] = ch
	case ch.owner != s.id:
		ch = &chunk{owner: s.id, pages: ch.pages}
		s.chunks[ci] = ch
	}
	i := pi & chunkMask
	bit := uint64(1) << (i & 63)
	if ch.own[i>>6]&bit == 0 {
		np := new(pageData)
		if old := ch.pages[i]; old != nil {
			*np = *old
		}
		ch.pages[i] = np
		ch.own[i>>6] |= bit
	}
	pg := ch.pages[i]
	if len(s.patches) > 0 {
		s.foldPatches(pi, pg)
	}
	return pg
}

// findPatch returns the index of the first patch at or after off.
func (s *store) findPatch(off int64) int {
	i, _ := slices.BinarySearchFunc(s.patches, off, func(p patch, off int64) int {
		return cmp.Compare(p.off, off)
	})
	return i
}

// foldPatches applies the patches of page pi to pg, its private copy, and
// drops them.
func (s *store) foldPatches(pi int64, pg *pageData) {
	start := pi << pageShift
	i := s.findPatch(start)
	j := i
	for ; j < len(s.patches) && s.patches[j].off < start+pageSize; j++ {
		binary.LittleEndian.PutUint64(pg[s.patches[j].off&pageMask:], s.patches[j].val)
	}
	if j == i {
		return
	}
	if j-i == len(s.patches) {
		s.patches = nil
		return
	}
	s.patches = slices.Concat(s.patches[:i:i], s.patches[j:])
}

// addPatches overrides words with add (sorted by off, unique).
func (s *store) addPatches(add []patch) {
	if len(add) == 0 {
		return
	}
	if len(s.patches) == 0 {
		s.patches = add
		return
	}
	old := s.patches
	out := make([]patch, 0, len(old)+len(add))
	i, j := 0, 0
	for i < len(old) && j < len(add) {
		switch {
		case old[i].off < add[j].off:
			out = append(out, old[i])
			i++
		case old[i].off > add[j].off:
			out = append(out, add[j])
			j++
		default:
			out = append(out, add[j])
			i++
			j++
		}
	}
	out = append(out, old[i:]...)
	s.patches = append(out, add[j:]...)
}

// readAt copies len(p) bytes at off into p. The caller checks the range.
func (s *store) readAt(p []byte, off int64) {
	for b, o := p, off; len(b) > 0; {
		po := o & pageMask
		n := min(len(b), pageSize-int(po))
		if pg := s.page(o >> pageShift); pg == nil {
			clear(b[:n])
		} else {
			copy(b[:n], pg[po:])
		}
		b = b[n:]
		o += int64(n)
	}
	if len(s.patches) == 0 {
		return
	}
	end := off + int64(len(p))
	var w [wordSize]byte
	for i := s.findPatch(off - (wordSize - 1)); i < len(s.patches) && s.patches[i].off < end; i++ {
		pt := s.patches[i]
		binary.LittleEndian.PutUint64(w[:], pt.val)
		lo, hi := max(pt.off, off), min(pt.off+wordSize, end)
		copy(p[lo-off:hi-off], w[lo-pt.off:hi-pt.off])
	}
}

// writeAt stores p at off. The caller checks the range.
func (s *store) writeAt(p []byte, off int64) {
	for len(p) > 0 {
		po := off & pageMask
		n := copy(s.writablePage(off >> pageShift)[po:], p)
		p = p[n:]
		off += int64(n)
	}
}

// word returns the 8-byte word at off (a multiple of 8).
func (s *store) word(off int64) uint64 {
	if len(s.patches) > 0 {
		if i := s.findPatch(off); i < len(s.patches) && s.patches[i].off == off {
			return s.patches[i].val
		}
	}
	pg := s.page(off >> pageShift)
	if pg == nil {
		return 0
	}
	return binary.LittleEndian.Uint64(pg[off&pageMask:])
}

// setWord stores the 8-byte word at off (a multiple of 8).
func (s *store) setWord(off int64, v uint64) {
	binary.LittleEndian.PutUint64(s.writablePage(off >> pageShift)[off&pageMask:], v)
}
