package nbd

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// containedPanics counts panics recovered while serving connections (a
// bug by definition; tests assert it stays zero).
var containedPanics atomic.Int64

// job is one request, as read and validated by the reading worker.
type job struct {
	req   request
	errno Errno   // non-zero: answer with this error without touching the device
	msg   string  // human-readable reason for errno
	buf   *[]byte // WRITE payload (pooled), nil otherwise
	cost  int64   // payload bytes charged to the connection's budget
	start int64   // nanotime when the header was read (for the latency histogram)
}

// transmit runs the transmission phase with Workers goroutines in a
// leader/follower arrangement: one of them at a time (the holder of rmu)
// reads the next request; it then lets go of rmu and runs the request
// itself, while another worker becomes the reader. A request is therefore
// never handed between goroutines (no wake-up on its path), several run at
// once, and their replies go out in completion order.
func (c *conn) transmit(ex *export) error {
	c.nc.SetDeadline(time.Time{})
	if c.shutdown.Load() {
		return ErrServerClosed
	}
	opt := &c.srv.opt
	c.ex = ex
	c.budget.init(opt.MaxInFlight, opt.MaxInFlightBytes)
	c.out.init()
	c.out.mem = &c.srv.mem
	c.srv.pollGate.conns.Add(1)
	defer c.srv.pollGate.conns.Add(-1)
	c.watchdog = time.AfterFunc(time.Hour, c.watch)
	c.watchdog.Stop()
	defer c.watchdog.Stop()
	var wg sync.WaitGroup
	for range opt.Workers {
		wg.Add(1)
		go c.follow(&wg)
	}
	wg.Wait() // every request read has been answered (or the socket is dead)
	return c.readErr
}

// worker is the state of one of a connection's worker goroutines.
type worker struct {
	c       *conn
	scratch []byte // for non-data replies
	// inline: the request being run is run by the reading worker, which
	// holds its reply back (see conn.sendOwned) until it would wait for
	// the client, so the replies to a burst of requests leave together.
	inline bool
	// The request being run, for the counters (see count).
	typ      uint16
	length   uint32
	start    int64
	errno    Errno // the error it is answered with
	recorded bool
	// Budget of the request being run: budgetCost of the connection's,
	// cost of the server's (zero once a reply took it along).
	budgetCost, cost int64
}

// count adds the request being answered to its export's counters, once,
// just before its reply is handed to the writer: a client that has seen
// the reply finds the request counted.
func (w *worker) count() {
	if !w.recorded {
		w.recorded = true
		w.c.stats.record(w.typ, w.errno, w.length, w.start)
	}
}

// follow is one worker: take the reader role, read one request, run it.
//
// The reading worker runs small requests itself, still holding the
// reader role, so no other goroutine is woken per request and the
// replies to requests that arrived together are written together (one
// system call). If a request runs for a watchdog tick or two (watchTick), the watchdog
// hands the role to another worker on its behalf, so a slow request never
// holds back the requests behind it. Large requests are handed over at
// once: the worker lets go of the role and runs the request while another
// worker reads on.
func (c *conn) follow(wg *sync.WaitGroup) {
	defer wg.Done()
	w := &worker{c: c, scratch: make([]byte, scratchLen)}
	reader := false // this worker holds rmu
	for {
		if !reader {
			c.rmu.Lock()
			reader = true
		}
		if c.readEnded {
			c.rmu.Unlock()
			return
		}
		j, end, err := c.readRequest()
		if end {
			c.readEnded, c.readErr = true, err
			c.flushReplies()
			c.rmu.Unlock()
			return
		}
		if j.cost > inlineMax || (j.errno == 0 && (j.req.typ == cmdFlush || j.req.typ == cmdBlockStatus)) {
			c.rmu.Unlock()
			reader = false
			// The replies this worker held as the reader must not wait
			// for the request it now runs.
			c.flushReplies()
			w.inline = false
			w.execute(j)
			continue
		}
		c.inlineSeq.Add(1) // before holding: see watch
		c.holding.Store(holdRunning)
		if !c.watching.Load() && c.watching.CompareAndSwap(false, true) {
			c.watchdog.Reset(c.srv.opt.watchTick)
		}
		w.inline = true
		w.execute(j)
		if c.holding.CompareAndSwap(holdRunning, holdNone) {
			continue // still the reader
		}
		// The watchdog handed the role on while the request ran.
		c.holding.CompareAndSwap(holdHandedOver, holdNone)
		reader = false
	}
}

// inlineMax is the largest payload of a request the reading worker runs
// itself; larger ones (and FLUSH, BLOCK_STATUS) go to another worker at
// once.
const inlineMax = 64 << 10

// watchTick is the period of a connection's watchdog: a request run by
// the reading worker holds back the reading of the next ones for at most
// two ticks. (A timer armed per request would cost a wake-up of an idle
// thread per request; the watchdog ticks only while the connection is
// busy.)
const watchTick = 200 * time.Microsecond

// States of conn.holding.
const (
	holdNone       = iota // no request is being run by the reading worker
	holdRunning           // the reading worker runs a request, keeping rmu
	holdHandedOver        // the watchdog released rmu on its behalf
)

// watch is the watchdog's tick. If the reading worker has been running
// the same request since the previous tick, it hands the reader role on
// (handOverRole). It stops ticking after a tick in which the reading
// worker started no request, and the reading worker starts it again.
func (c *conn) watch() {
	// holding before inlineSeq (the worker writes them in the other
	// order): a request seen running was counted in seq.
	running := c.holding.Load() == holdRunning
	seq := c.inlineSeq.Load()
	seen := c.watchSeen.Swap(seq)
	if running && seq == seen && c.handOverRole() {
		// Replies the slow worker held as the reader are written now,
		// not after its request (another worker may be free to read, or
		// not).
		c.watchdog.Reset(c.srv.opt.watchTick)
		c.flushReplies()
		return
	}
	idle := seq == seen && !running
	if !idle {
		c.watchdog.Reset(c.srv.opt.watchTick)
		return
	}
	c.watching.Store(false)
	// A request that started after the load of holding above may have
	// seen watching still true and not restarted the watchdog: restart it
	// here. (Sequentially consistent atomics: either that worker sees
	// false, or this load sees its holdRunning.)
	if c.holding.Load() == holdRunning && c.watching.CompareAndSwap(false, true) {
		c.watchdog.Reset(c.srv.opt.watchTick)
	}
}

// handOverRole releases the reader role held by a worker that runs a
// request itself, on its behalf, and reports whether it did.
func (c *conn) handOverRole() bool {
	if c.holding.CompareAndSwap(holdRunning, holdHandedOver) {
		c.rmu.Unlock()
		return true
	}
	return false
}

// readFull reads len(p) bytes of the client's requests. Held replies are
// written first when the read may have to wait for the client (what is
// buffered does not cover it): a client that waits for those replies
// before it sends more would otherwise never send.
func (c *conn) readFull(p []byte) error {
	if c.br.Buffered() < len(p) {
		c.flushReplies()
	}
	_, err := io.ReadFull(c.br, p)
	return err
}

// readRequest reads and validates the next request (under rmu). end
// reports that the phase is over: the client disconnected (err nil),
// broke the protocol, or the server shuts down.
func (c *conn) readRequest() (j job, end bool, err error) {
	ex := c.ex
	if err := c.readFull(c.hdr[:]); err != nil {
		if c.shutdown.Load() {
			return j, true, ErrServerClosed
		}
		if errors.Is(err, io.EOF) {
			return j, true, nil // hard disconnect between requests
		}
		return j, true, fmt.Errorf("reading request: %w", err)
	}
	r, err := decodeRequest(c.hdr[:])
	if err != nil {
		return j, true, err
	}
	if r.typ == cmdDisc {
		return j, true, nil // soft disconnect: transmit waits for the workers
	}
	c.requests++
	errno, msg := c.check(&r)
	j = job{req: r, errno: errno, msg: msg, start: nanotime()}
	switch r.typ {
	case cmdRead:
		c.bytesRead += int64(r.length)
	case cmdWrite:
		c.bytesWritten += int64(r.length)
	}
	switch {
	case r.typ == cmdWrite:
		// The payload must be consumed to stay in step, so its size
		// is bounded before anything is allocated.
		if r.length > ex.Maximum {
			return j, true, fmt.Errorf("%w: write of %d bytes exceeds the %d-byte maximum block size", ErrProtocol, r.length, ex.Maximum)
		}
		j.cost = int64(r.length)
		c.acquire(j.cost)
		j.buf = getBuf(int(r.length))
		if err := c.readFull((*j.buf)[:r.length]); err != nil {
			putBuf(j.buf)
			c.release(j.cost)
			if c.shutdown.Load() {
				return j, true, ErrServerClosed
			}
			return j, true, fmt.Errorf("reading %d-byte write payload: %w", r.length, err)
		}
		if errno != 0 {
			putBuf(j.buf)
			j.buf = nil
		}
	case r.typ == cmdRead && errno == 0:
		j.cost = int64(r.length)
		c.acquire(j.cost)
	default:
		c.acquire(0)
	}
	per := requestLen
	if r.typ == cmdWrite {
		per += int(r.length)
	}
	c.ahead.Store(int32(c.br.Buffered() / per))
	return j, false, nil
}

// acquire takes budget for a request being read, the connection's and
// then the server's (payload bytes only); before it waits for requests
// in flight to finish, it writes the replies held back.
func (c *conn) acquire(size int64) {
	if !c.budget.tryAcquire(size) {
		c.flushReplies()
		c.budget.acquire(size)
	}
	if size > 0 && !c.srv.mem.tryAcquire(size) {
		c.flushReplies()
		c.srv.mem.acquire(size)
	}
}

// release gives back what acquire took.
func (c *conn) release(size int64) {
	c.budget.release(size)
	c.srv.mem.release(size)
}

// check validates r against the export; a failure is answered with the
// returned error, never by closing the connection.
func (c *conn) check(r *request) (Errno, string) {
	ex := c.ex
	allowed := cmdFlagFUA // accepted (and honoured) on every command
	write := false
	switch r.typ {
	case cmdRead:
		if c.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim:
		write = true
	case cmdWriteZeroes:
		write = true
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdFlush, cmdCache:
	case cmdBlockStatus:
		if !c.metaAlloc {
			return EINVAL, "NBD_CMD_BLOCK_STATUS without a metadata context selected"
		}
		if r.length == 0 {
			return EINVAL, "NBD_CMD_BLOCK_STATUS of 0 bytes"
		}
		allowed |= cmdFlagReqOne
	default:
		return EINVAL, fmt.Sprintf("unsupported command %d", r.typ)
	}
	if r.flags&^allowed != 0 {
		return EINVAL, fmt.Sprintf("unsupported flags %#x for command %d", r.flags&^allowed, r.typ)
	}
	if write && ex.ReadOnly {
		return EPERM, "the export is read-only"
	}
	if r.typ == cmdFlush {
		return 0, "" // offset and length are reserved; ignore them
	}
	mask := uint64(ex.SectorSize - 1)
	if r.offset&mask != 0 || uint64(r.length)&mask != 0 {
		return EINVAL, fmt.Sprintf("offset %d or length %d is not a multiple of the %d-byte minimum block size", r.offset, r.length, ex.SectorSize)
	}
	if r.offset > ex.Size || uint64(r.length) > ex.Size-r.offset {
		return EINVAL, fmt.Sprintf("%d bytes at offset %d are past the end of the export (%d bytes)", r.length, r.offset, ex.Size)
	}
	if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > ex.Maximum {
		return EINVAL, fmt.Sprintf("length %d exceeds the %d-byte maximum block size", r.length, ex.Maximum)
	}
	return 0, ""
}
