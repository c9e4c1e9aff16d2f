package nbd

import (
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// memBudget bounds the READ and WRITE payload bytes in flight across all
// connections (Options.MaxMemory). A connection's reader takes budget for
// each request before it allocates the request's buffer and waits when
// there is none (its own connection stops reading, the others go on);
// the request's worker gives it back once the reply is written. The fast
// path is one compare-and-swap; only waiting takes the mutex.
//
// Go keeps freed heap for reuse and the buffer pools keep buffers until
// the next collections, so without help a server that served many large
// requests stays large after its clients leave. So the budget sets the
// runtime's soft memory limit to the budget plus room for everything
// else (the garbage collector then works harder before the heap passes
// it), and once a server has had more than releaseAbove in flight, a
// connection that ends with nothing in flight schedules a give-back a
// second later (one at a time): two collections (the pools empty) and
// the freed memory returned to the system.
type memBudget struct {
	used    atomic.Int64
	max     int64
	waiters atomic.Int32
	mu      sync.Mutex
	cond    sync.Cond

	peak      atomic.Int64 // most bytes ever in flight at once
	scheduled atomic.Bool  // a give-back is pending
}

const (
	// memOverhead is the room the soft memory limit leaves beyond the
	// budget: goroutines, per-connection buffers, the runtime.
	memOverhead = 64 << 20
	// releaseAbove: below this peak, giving memory back is not worth a
	// forced collection.
	releaseAbove = 64 << 20
	// releaseDelay lets the connections ending together finish first.
	releaseDelay = time.Second
)

func (m *memBudget) init(max int64) {
	m.max = max
	m.cond.L = &m.mu
	if limit := max + memOverhead; debug.SetMemoryLimit(-1) > limit {
		debug.SetMemoryLimit(limit)
	}
}

// tryAcquire takes n bytes if the budget has them (a request larger than
// the whole budget is let through alone, when nothing else is in flight).
func (m *memBudget) tryAcquire(n int64) bool {
	for {
		u := m.used.Load()
		if u > 0 && u+n > m.max {
			return false
		}
		if m.used.CompareAndSwap(u, u+n) {
			if p := m.peak.Load(); u+n > p {
				m.peak.CompareAndSwap(p, u+n) // a lost race only keeps a lower peak
			}
			return true
		}
	}
}

// acquire takes n bytes, waiting for them.
func (m *memBudget) acquire(n int64) {
	if n == 0 || m.tryAcquire(n) {
		return
	}
	m.mu.Lock()
	m.waiters.Add(1)
	for !m.tryAcquire(n) {
		m.cond.Wait()
	}
	m.waiters.Add(-1)
	m.mu.Unlock()
}

// release gives n bytes back and wakes the waiters.
func (m *memBudget) release(n int64) {
	if n == 0 {
		return
	}
	m.used.Add(-n)
	if m.waiters.Load() > 0 {
		m.mu.Lock()
		m.cond.Broadcast()
		m.mu.Unlock()
	}
}

// giveBack schedules the return of freed memory to the system (see
// memBudget). It is called when a connection ends.
func (m *memBudget) giveBack() {
	if m.used.Load() != 0 || m.peak.Load() < releaseAbove || !m.scheduled.CompareAndSwap(false, true) {
		return
	}
	time.AfterFunc(releaseDelay, func() {
		defer m.scheduled.Store(false)
		if m.used.Load() != 0 {
			return // busy again: the next connection to end tries again
		}
		runtime.GC() // the pools' buffers move to their victim caches
		debug.FreeOSMemory()
	})
}
