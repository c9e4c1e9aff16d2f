package pmemtest

import (
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
	id     uint64
	chunks []*chunk
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
	c := &store{id: nextStoreID(), chunks: slices.Clone(s.chunks)}
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
	return ch.pages[i]
}

// readAt copies len(p) bytes at off into p. The caller checks the range.
func (s *store) readAt(p []byte, off int64) {
	for len(p) > 0 {
		po := off & pageMask
		n := min(len(p), pageSize-int(po))
		if pg := s.page(off >> pageShift); pg == nil {
			clear(p[:n])
		} else {
			copy(p[:n], pg[po:])
		}
		p = p[n:]
		off += int64(n)
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
