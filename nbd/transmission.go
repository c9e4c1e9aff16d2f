package nbd

import (
	"errors"
	"fmt"
	"io"
	"math/bits"
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
	c.handOver = time.AfterFunc(time.Hour, c.handOverRole)
	c.handOver.Stop()
	defer c.handOver.Stop()
	var wg sync.WaitGroup
	for range opt.Workers {
		wg.Add(1)
		go c.follow(&wg)
	}
	wg.Wait() // every request read has been answered (or the socket is dead)
	return c.readErr
}

// follow is one worker: take the reader role, read one request, run it.
//
// When no other request is waiting behind the one just read (a client at
// queue depth 1), the worker runs it still holding the reader role, so
// no other worker has to be woken for every request. If that request takes
// longer than handOverAfter, a timer hands the role to another worker on
// its behalf, so a slow request never holds back the requests behind it.
func (c *conn) follow(wg *sync.WaitGroup) {
	defer wg.Done()
	scratch := make([]byte, scratchLen)
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
			c.rmu.Unlock()
			return
		}
		if c.br.Buffered() > 0 {
			// More requests are already here: another worker reads them
			// while this one runs its request.
			c.rmu.Unlock()
			reader = false
			c.execute(scratch, j)
			continue
		}
		c.holding.Store(holdRunning)
		c.handOver.Reset(handOverAfter)
		c.execute(scratch, j)
		if c.holding.CompareAndSwap(holdRunning, holdNone) {
			c.handOver.Stop()
			continue // still the reader
		}
		// The timer handed the role on while the request ran.
		c.holding.CompareAndSwap(holdHandedOver, holdNone)
		reader = false
	}
}

// handOverAfter is how long a request run by the reading worker may hold
// back the reading of the next ones.
const handOverAfter = 100 * time.Microsecond

// States of conn.holding.
const (
	holdNone       = iota // no request is being run by the reading worker
	holdRunning           // the reading worker runs a request, keeping rmu
	holdHandedOver        // the timer released rmu on its behalf
)

// handOverRole is the timer's function: release the reader role held by
// a worker that has been running a request for handOverAfter.
func (c *conn) handOverRole() {
	if c.holding.CompareAndSwap(holdRunning, holdHandedOver) {
		c.rmu.Unlock()
	}
}

// readRequest reads and validates the next request (under rmu). end
// reports that the phase is over: the client disconnected (err nil),
// broke the protocol, or the server shuts down.
func (c *conn) readRequest() (j job, end bool, err error) {
	ex := c.ex
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
	errno, msg := c.check(&r)
	j = job{req: r, errno: errno, msg: msg}
	switch {
	case r.typ == cmdWrite:
		// The payload must be consumed to stay in step, so its size
		// is bounded before anything is allocated.
		if r.length > ex.Maximum {
			return j, true, fmt.Errorf("%w: write of %d bytes exceeds the %d-byte maximum block size", ErrProtocol, r.length, ex.Maximum)
		}
		j.cost = int64(r.length)
		c.budget.acquire(j.cost)
		j.buf = getBuf(int(r.length))
		if _, err := io.ReadFull(c.br, (*j.buf)[:r.length]); err != nil {
			putBuf(j.buf)
			c.budget.release(j.cost)
			return j, true, fmt.Errorf("reading %d-byte write payload: %w", r.length, err)
		}
		if errno != 0 {
			putBuf(j.buf)
			j.buf = nil
		}
	case r.typ == cmdRead && errno == 0:
		j.cost = int64(r.length)
		c.budget.acquire(j.cost)
	default:
		c.budget.acquire(0)
	}
	return j, false, nil
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
		allowed |= cmdFlagNoHole
	case cmdFlush:
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
func (c *conn) execute(scratch []byte, j job) {
	defer c.budget.release(j.cost)
	defer func() {
		if p := recover(); p != nil {
			containedPanics.Add(1)
			c.log.Error("nbd: panic executing request", "panic", p, "type", j.req.typ, "stack", string(debug.Stack()))
			c.replyErr(scratch, j.req, EIO, "internal server error")
		}
	}()
	r := j.req
	if j.errno != 0 {
		c.replyErr(scratch, r, j.errno, j.msg)
		return
	}
	ex := c.ex
	lba := r.offset >> ex.shift
	n := uint64(r.length) >> ex.shift
	var err error
	switch r.typ {
	case cmdRead:
		c.replyRead(scratch, r, lba)
		return
	case cmdWrite:
		if n > 0 {
			err = ex.dev.WriteSectors((*j.buf)[:r.length], lba)
		}
		putBuf(j.buf)
	case cmdTrim, cmdWriteZeroes:
		// Both become the device's zero state (for the BTT a map flag:
		// no block is freed, so NBD_CMD_FLAG_NO_HOLE is honoured too).
		if n > 0 {
			err = ex.dev.ZeroSectors(lba, n)
		}
	case cmdFlush:
		err = ex.dev.Flush()
	}
	if err == nil && r.flags&cmdFlagFUA != 0 && r.typ != cmdFlush {
		err = ex.dev.Flush()
	}
	if err != nil {
		c.replyErr(scratch, r, ErrnoOf(err), err.Error())
		return
	}
	c.replySimple(scratch, r.handle, 0)
}

// replyRead reads the sectors straight into a pooled buffer that has
// room for the reply header in front, so the reply is one write.
func (c *conn) replyRead(scratch []byte, r request, lba uint64) {
	prefix := simpleReplyLen
	if c.structured {
		if r.length == 0 {
			c.replyNone(scratch, r.handle)
			return
		}
		prefix = offsetDataPrefix
	}
	bp := getBuf(prefix + int(r.length))
	defer putBuf(bp)
	b := (*bp)[:prefix+int(r.length)]
	if r.length > 0 {
		if err := c.ex.dev.ReadSectors(b[prefix:], lba); err != nil {
			c.replyErr(scratch, r, ErrnoOf(err), err.Error())
			return
		}
	}
	if r.flags&cmdFlagFUA != 0 {
		if err := c.ex.dev.Flush(); err != nil {
			c.replyErr(scratch, r, ErrnoOf(err), err.Error())
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
	c.send(b)
}

func (c *conn) replySimple(scratch []byte, handle uint64, errno Errno) {
	b := scratch[:simpleReplyLen]
	be.PutUint32(b[0:], magicSimpleReply)
	be.PutUint32(b[4:], uint32(errno))
	be.PutUint64(b[8:], handle)
	c.send(b)
}

func (c *conn) replyNone(scratch []byte, handle uint64) {
	b := scratch[:structuredHdrLen]
	be.PutUint32(b[0:], magicStructured)
	be.PutUint16(b[4:], replyFlagDone)
	be.PutUint16(b[6:], replyTypeNone)
	be.PutUint64(b[8:], handle)
	be.PutUint32(b[16:], 0)
	c.send(b)
}

// replyErr answers r with errno: a structured NBD_REPLY_TYPE_ERROR chunk
// carrying msg when structured replies were negotiated (mandatory for
// reads), a simple reply otherwise.
func (c *conn) replyErr(scratch []byte, r request, errno Errno, msg string) {
	if errno == 0 {
		errno = EIO
	}
	if !c.structured {
		c.replySimple(scratch, r.handle, errno)
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
	c.send(b)
}

// send writes one complete reply. Replies are serialised per connection;
// after a failed write the connection is closed (which also wakes the
// reader) and further replies are dropped.
func (c *conn) send(b []byte) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.broken {
		return
	}
	if _, err := c.nc.Write(b); err != nil {
		c.broken = true
		c.log.Debug("nbd: reply write failed; closing", "err", err)
		c.nc.Close()
	}
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
	for b.n >= b.maxN || (b.bytes > 0 && b.bytes+size > b.maxBytes) {
		b.cond.Wait()
	}
	b.n++
	b.bytes += size
	b.mu.Unlock()
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
