package nbd

import (
	"math/bits"
	"sync"
)

// budget bounds the requests of one connection in flight, by count and
// by payload bytes. Only the reader acquires; workers release.
type budget struct {
	mu              sync.Mutex
	cond            sync.Cond
	n, maxN         int
	bytes, maxBytes int64
}

func (b *budget) init(maxN int, maxBytes int64) {
	b.cond.L = &b.mu
	b.maxN, b.maxBytes = maxN, maxBytes
}

func (b *budget) acquire(size int64) {
	b.mu.Lock()
	for b.full(size) {
		b.cond.Wait()
	}
	b.n++
	b.bytes += size
	b.mu.Unlock()
}

// tryAcquire is acquire without waiting; it reports whether it took.
func (b *budget) tryAcquire(size int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.full(size) {
		return false
	}
	b.n++
	b.bytes += size
	return true
}

func (b *budget) full(size int64) bool {
	return b.n >= b.maxN || (b.bytes > 0 && b.bytes+size > b.maxBytes)
}

func (b *budget) release(size int64) {
	b.mu.Lock()
	b.n--
	b.bytes -= size
	b.mu.Unlock()
	b.cond.Signal()
}

// Buffer pools by power-of-two size class, each buffer with bufSlack
// spare bytes for a reply header, so a steady stream of reads and writes
// allocates nothing.
const (
	minBufShift = 12 // 4 KiB
	maxBufShift = 26 // 64 MiB; larger buffers are not pooled
	bufSlack    = 64 // >= offsetDataPrefix
)

var bufPools [maxBufShift - minBufShift + 1]sync.Pool

// bufClass returns the pool index for n bytes, or -1 if too large.
func bufClass(n int) int {
	if n <= 1<<minBufShift+bufSlack {
		return 0
	}
	k := bits.Len(uint(n-bufSlack-1)) - minBufShift
	if k >= len(bufPools) {
		return -1
	}
	return k
}

func getBuf(n int) *[]byte {
	k := bufClass(n)
	if k < 0 {
		b := make([]byte, n)
		return &b
	}
	if p, ok := bufPools[k].Get().(*[]byte); ok {
		return p
	}
	b := make([]byte, 1<<(k+minBufShift)+bufSlack)
	return &b
}

func putBuf(p *[]byte) {
	if p == nil {
		return
	}
	k := bufClass(cap(*p))
	if k < 0 || cap(*p) != 1<<(k+minBufShift)+bufSlack {
		return
	}
	*p = (*p)[:cap(*p)]
	bufPools[k].Put(p)
}
