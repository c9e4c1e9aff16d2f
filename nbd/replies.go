package nbd

import (
	"fmt"
	"runtime/debug"

	"github.com/nvblk/nvblk/block"
)

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
