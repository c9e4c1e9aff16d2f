package nbd

import (
	"errors"
	"fmt"
	"github.com/nvblk/nvblk/block"
	"io"
	"math/bits"
	"net"
	"runtime/debug"
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

// readRequest reads and validates the next request (under rmu). end
// reports that the phase is over: the client disconnected (err nil),
// broke the protocol, or the server shuts down.
func (c *conn) readRequest() (j job, end bool, err error) {
	ex := c.ex
	if c.br.Buffered() < requestLen {
		c.flushReplies() // the read may wait for the client
	}
	if _, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
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
		if c.br.Buffered() < int(r.length) {
			c.flushReplies()
		}
		if _, err := io.ReadFull(c.br, (*j.buf)[:r.length]); err != nil {
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

// scratchLen holds the longest non-data reply: a structured error chunk
// with a message of up to maxErrMsg bytes.
const (
	maxErrMsg  = 256
	scratchLen = structuredHdrLen + 4 + 2 + maxErrMsg
)

// execute runs one request against the device and answers it. A device
// error (or panic) fails this request only.
func (w *worker) execute(j job) {
	c := w.c
	w.budgetCost, w.cost = j.cost, j.cost
	defer w.releaseBudget()
	w.typ, w.length, w.start, w.errno, w.recorded = j.req.typ, j.req.length, j.start, 0, false
	defer func() {
		if p := recover(); p != nil {
			containedPanics.Add(1)
			c.log.Error("nbd: panic executing request", "panic", p, "type", j.req.typ, "stack", string(debug.Stack()))
			w.replyErr(j.req, EIO, "internal server error")
		}
	}()
	r := j.req
	if j.errno != 0 {
		w.replyErr(r, j.errno, j.msg)
		return
	}
	ex := c.ex
	lba := r.offset >> ex.shift
	n := uint64(r.length) >> ex.shift
	var err error
	switch r.typ {
	case cmdRead:
		w.replyRead(r, lba)
		return
	case cmdBlockStatus:
		w.replyBlockStatus(r, lba, n)
		return
	case cmdWrite:
		if n > 0 {
			err = ex.dev.WriteSectors((*j.buf)[:r.length], lba)
		}
		putBuf(j.buf)
	case cmdTrim, cmdWriteZeroes:
		// Both become the device's zero state (for the BTT a map flag:
		// no block is freed, so NBD_CMD_FLAG_NO_HOLE is honoured too).
		// FAST_ZERO: fail at once unless that is cheaper than writing.
		if r.flags&cmdFlagFastZero != 0 {
			if fz, ok := ex.dev.(block.FastZeroer); !ok || !fz.ZeroIsFast() {
				w.replyErr(r, ENOTSUP, "zeroing this device is no faster than writing zeros")
				return
			}
		}
		if n > 0 {
			err = ex.dev.ZeroSectors(lba, n)
		}
	case cmdFlush:
		err = ex.dev.Flush()
	case cmdCache:
		// The device is memory: there is nothing to bring closer.
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && r.typ != cmdFlush {
		err = ex.dev.Flush()
	}
	if err != nil {
		w.replyErr(r, ErrnoOf(err), err.Error())
		return
	}
	w.replySimple(r.handle, 0)
}

// replyRead reads the sectors straight into a pooled buffer that has
// room for the reply header in front, so the reply is one write.
func (w *worker) replyRead(r request, lba uint64) {
	c := w.c
	prefix := simpleReplyLen
	if c.structured {
		if r.length == 0 {
			w.replyNone(r.handle)
			return
		}
		prefix = offsetDataPrefix
	}
	bp := getBuf(prefix + int(r.length))
	b := (*bp)[:prefix+int(r.length)]
	if r.length > 0 {
		if err := c.ex.dev.ReadSectors(b[prefix:], lba); err != nil {
			putBuf(bp)
			w.replyErr(r, ErrnoOf(err), err.Error())
			return
		}
	}
	if r.flags&cmdFlagFUA != 0 {
		if err := c.ex.dev.Flush(); err != nil {
			putBuf(bp)
			w.replyErr(r, ErrnoOf(err), err.Error())
			return
		}
	}
	if c.structured {
		// One chunk covering the whole request, final: the data is
		// complete before the header is written.
		be.PutUint32(b[0:], magicStructured)
		be.PutUint16(b[4:], replyFlagDone)
		be.PutUint16(b[6:], replyTypeOffsetData)
		be.PutUint64(b[8:], r.handle)
		be.PutUint32(b[16:], 8+r.length)
		be.PutUint64(b[20:], r.offset)
	} else {
		be.PutUint32(b[0:], magicSimpleReply)
		be.PutUint32(b[4:], 0)
		be.PutUint64(b[8:], r.handle)
	}
	w.count()
	// The server budget for the data goes with the buffer: the writer
	// gives it back once the reply is written (a slow reader holds it).
	cost := w.cost
	w.cost = 0
	c.sendReply(b, bp, cost, w.inline)
}

// releaseBudget gives back the budget of the request the worker ran: all
// of the connection's, and the server's unless a reply took it along.
func (w *worker) releaseBudget() {
	w.c.budget.release(w.budgetCost)
	w.c.srv.mem.release(w.cost)
}

// Bounds of one BLOCK_STATUS reply: at most maxExtents descriptors, and
// at most maxStatusSectors sectors looked up (the map entries read); the
// protocol lets a reply cover less than asked for.
const (
	maxExtents       = 256
	maxStatusSectors = 1 << 20
)

// replyBlockStatus answers NBD_CMD_BLOCK_STATUS for base:allocation with
// one NBD_REPLY_TYPE_BLOCK_STATUS chunk: runs of sectors that read as
// zeros are reported as hole and zero (a BTT never fails a write with
// ENOSPC, whatever the flag suggests), the rest as allocated data. A
// device that cannot tell (block.ZeroMapper not implemented) reports the
// whole range as data, which the protocol allows. A lookup that fails
// after the first extent ends the reply there (the protocol allows a
// shorter answer); only a failure on the first one is an error.
func (w *worker) replyBlockStatus(r request, lba, n uint64) {
	c := w.c
	bp := getBuf(structuredHdrLen + 4 + 8*maxExtents)
	b := (*bp)[:structuredHdrLen+4]
	ss := uint64(c.ex.SectorSize)
	zm, ok := c.ex.dev.(block.ZeroMapper)
	if !ok {
		b = be.AppendUint32(b, uint32(n*ss))
		b = be.AppendUint32(b, 0)
	}
	for left := min(n, maxStatusSectors); ok && left > 0; {
		k, zero, err := zm.ZeroRun(lba, left)
		if err == nil && (k == 0 || k > left) {
			err = fmt.Errorf("nbd: device zero map returned a run of %d sectors for %d asked", k, left)
		}
		if err != nil {
			if len(b) > structuredHdrLen+4 {
				break // answer for the part before the error
			}
			putBuf(bp)
			w.replyErr(r, ErrnoOf(err), err.Error())
			return
		}
		flags := uint32(0)
		if zero {
			flags = stateHole | stateZero
		}
		b = be.AppendUint32(b, uint32(k*ss))
		b = be.AppendUint32(b, flags)
		lba, left = lba+k, left-k
		if r.flags&cmdFlagReqOne != 0 || len(b)+8 > structuredHdrLen+4+8*maxExtents {
			break
		}
	}
	be.PutUint32(b[0:], magicStructured)
	be.PutUint16(b[4:], replyFlagDone)
	be.PutUint16(b[6:], replyTypeBlockStatus)
	be.PutUint64(b[8:], r.handle)
	be.PutUint32(b[16:], uint32(len(b)-structuredHdrLen))
	be.PutUint32(b[20:], metaAllocationID)
	w.count()
	c.sendOwned(b, bp, w.inline)
}

func (w *worker) replySimple(handle uint64, errno Errno) {
	c, scratch := w.c, w.scratch
	b := scratch[:simpleReplyLen]
	be.PutUint32(b[0:], magicSimpleReply)
	be.PutUint32(b[4:], uint32(errno))
	be.PutUint64(b[8:], handle)
	w.count()
	c.sendOwned(b, nil, w.inline)
}

func (w *worker) replyNone(handle uint64) {
	c, scratch := w.c, w.scratch
	b := scratch[:structuredHdrLen]
	be.PutUint32(b[0:], magicStructured)
	be.PutUint16(b[4:], replyFlagDone)
	be.PutUint16(b[6:], replyTypeNone)
	be.PutUint64(b[8:], handle)
	be.PutUint32(b[16:], 0)
	w.count()
	c.sendOwned(b, nil, w.inline)
}

// replyErr answers r with errno: a structured NBD_REPLY_TYPE_ERROR chunk
// carrying msg when structured replies were negotiated (mandatory for
// reads), a simple reply otherwise.
func (w *worker) replyErr(r request, errno Errno, msg string) {
	c, scratch := w.c, w.scratch
	if errno == 0 {
		errno = EIO
	}
	w.errno = errno
	if !c.structured {
		w.replySimple(r.handle, errno)
		return
	}
	if len(msg) > maxErrMsg {
		msg = msg[:maxErrMsg]
	}
	n := structuredHdrLen + 6 + len(msg)
	b := scratch[:n]
	be.PutUint32(b[0:], magicStructured)
	be.PutUint16(b[4:], replyFlagDone)
	be.PutUint16(b[6:], replyTypeError)
	be.PutUint64(b[8:], r.handle)
	be.PutUint32(b[16:], uint32(6+len(msg)))
	be.PutUint32(b[20:], uint32(errno))
	be.PutUint16(b[24:], uint16(len(msg)))
	copy(b[26:], msg)
	w.count()
	c.sendOwned(b, nil, w.inline)
}

// sendOwned queues one complete reply. With own non-nil, b lies in the
// pooled buffer *own, which passes to the connection (it is returned to
// its pool once written); otherwise b is copied and may be reused at once.
//
// Replies are combined, with no added delay: a sender that finds no
// write in progress becomes the writer, and writes what is queued, its
// reply included, with one writev, and again until the queue is empty;
// replies sent meanwhile are queued for it. A held reply (hold: the
// reading worker ran the request, see worker.inline) is only queued, up
// to replyFlushAt bytes: the reading worker flushes the queue
// (flushReplies) before it waits for the client or for budget and when
// it gives up the role (a large request, FLUSH), the watchdog flushes it
// when it hands the role on, and any other sender writes it too. So a
// held reply waits only while its reader goes on reading requests that
// are already here, and a burst of requests gets one system call for
// its replies.
// The queue is bounded (replyQueueMax bytes): a sender that finds it full
// waits for the writer, so a client that does not read its replies stops
// the workers, and then the reader.
//
// After a failed write the connection is closed (which also wakes the
// reader) and further replies are dropped.
func (c *conn) sendOwned(b []byte, own *[]byte, hold bool) { c.sendReply(b, own, 0, hold) }

// sendReply is sendOwned for a reply whose buffer carries cost bytes of
// the server's memory budget, given back when the buffer is.
func (c *conn) sendReply(b []byte, own *[]byte, cost int64, hold bool) {
	o := &c.out
	o.mu.Lock()
	for !o.broken && o.writing && o.queued >= replyQueueMax {
		o.cond.Wait()
	}
	if o.broken {
		o.mu.Unlock()
		putBuf(own)
		c.srv.mem.release(cost)
		return
	}
	o.queue(b, own, cost)
	// Hold only while still the reader: once the timer has handed the
	// role on, the new reader may already be waiting for the client. (The
	// timer's CAS precedes the new reader's flush, which takes o.mu.)
	hold = hold && c.holding.Load() == holdRunning
	if o.writing || (hold && o.queued < replyFlushAt && !c.replyEarly()) {
		o.mu.Unlock()
		return
	}
	c.writeReplies()
}

// replyEarly reports whether the held queue (under out.mu) should be
// written at once: when it holds two or more replies without data (to
// writes, trims, flushes), the client keeps few requests in flight (the
// held replies and the requests already buffered, about as many again,
// are fewer than replyEarlyDepth), and the CPUs have room (at most
// GOMAXPROCS/2 connections, as for polling). A client with few requests
// in flight is latency-bound: each reply lets it send its next request,
// so writing them two at a time keeps the client and the server busy at
// once, where one batch per burst makes them take turns. A client with
// many in flight keeps the server busy anyway, and the extra system calls
// would cost it throughput (measured: iodepth 8 gains a tenth, iodepth 32
// loses one); data replies are always worth batching, and with more
// connections the extra system calls take CPU time the others need.
func (c *conn) replyEarly() bool {
	o := &c.out
	return o.n >= 2 && o.queued < holdSmallBytes && o.n+int(c.ahead.Load()) < replyEarlyDepth && c.srv.pollGate.spare()
}

// flushReplies writes the queued replies unless a writer is already at it.
func (c *conn) flushReplies() {
	o := &c.out
	o.mu.Lock()
	if o.writing || o.broken || o.queued == 0 {
		o.mu.Unlock()
		return
	}
	c.writeReplies()
}

// writeReplies is the writer: called with out.mu held and the queue not
// empty, it writes batches until the queue is empty, and returns with
// out.mu released.
func (c *conn) writeReplies() {
	o := &c.out
	o.writing = true
	for {
		// Take the batch; senders may queue the next one meanwhile.
		o.small, o.wsmall = o.wsmall[:0], o.small
		o.owned, o.wowned = o.wowned[:0], o.owned
		o.costs, o.wcosts = o.wcosts[:0], o.costs
		o.vecs, o.wvecs = o.wvecs[:0], o.vecs
		o.queued, o.n = 0, 0
		o.cond.Broadcast()
		o.mu.Unlock()
		o.wiov = append(append(o.wiov[:0], o.wvecs...), o.wsmall)
		o.wbufs = o.wiov // WriteTo consumes wbufs, not wiov
		c.nc.SetWriteDeadline(time.Now().Add(c.srv.opt.WriteTimeout))
		_, err := c.writeBatch(&o.wbufs)
		clear(o.wiov)
		for i, p := range o.wowned {
			putBuf(p)
			o.wowned[i] = nil
		}
		for _, cost := range o.wcosts {
			c.srv.mem.release(cost)
		}
		o.wcosts = o.wcosts[:0]
		clear(o.wvecs)
		o.wvecs = o.wvecs[:0]
		o.mu.Lock()
		if err != nil {
			o.fail()
			o.mu.Unlock()
			c.log.Debug("nbd: reply write failed; closing", "err", err)
			c.raw.Close() // the socket: a TLS close would try to write again
			return
		}
		if o.queued == 0 {
			o.writing = false
			o.mu.Unlock()
			return
		}
	}
}

// replyFlushAt is how many bytes of held replies the reading worker
// collects before it writes them anyway.
const replyFlushAt = 256 << 10

// replyEarlyDepth: see replyEarly.
const replyEarlyDepth = 12

// holdSmallBytes: a held queue of this many bytes or more holds data
// replies, which are batched up to replyFlushAt (see replyEarly).
const holdSmallBytes = 1024

// replyQueueMax bounds the bytes of replies queued behind the one being
// written on a connection (a sender waits beyond it).
const replyQueueMax = 1 << 20

// replyQueue holds the replies of one connection waiting for its writer.
// Small replies are copied into one buffer; data replies are queued by
// reference with their pooled buffers. Each list has a twin that the
// writer owns while it writes (the w* fields, touched only by the
// writer), so a steady stream of batches allocates nothing.
type replyQueue struct {
	mu      sync.Mutex
	cond    sync.Cond // signalled when a batch is taken or the connection breaks
	writing bool      // a writer is active (it empties the queue before it stops)
	broken  bool      // a reply write failed
	queued  int       // bytes queued
	n       int       // replies queued
	small   []byte    // concatenated small replies
	vecs    [][]byte  // data replies
	owned   []*[]byte // their buffers
	costs   []int64   // the server memory budget their buffers carry
	mem     *memBudget

	wsmall []byte
	wvecs  [][]byte
	wowned []*[]byte
	wcosts []int64
	wiov   [][]byte
	wbufs  net.Buffers
}

func (o *replyQueue) init() { o.cond.L = &o.mu }

func (o *replyQueue) queue(b []byte, own *[]byte, cost int64) {
	o.n++
	o.queued += len(b)
	if own == nil {
		o.small = append(o.small, b...)
		return
	}
	o.vecs = append(o.vecs, b)
	o.owned = append(o.owned, own)
	if cost > 0 {
		o.costs = append(o.costs, cost)
	}
}

// fail marks the connection broken and drops what is queued (under mu).
func (o *replyQueue) fail() {
	o.broken, o.writing = true, false
	for i, p := range o.owned {
		putBuf(p)
		o.owned[i] = nil
	}
	for _, cost := range o.costs {
		o.mem.release(cost)
	}
	o.owned, o.vecs, o.small, o.costs, o.queued, o.n = o.owned[:0], o.vecs[:0], o.small[:0], o.costs[:0], 0, 0
	o.cond.Broadcast()
}

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
