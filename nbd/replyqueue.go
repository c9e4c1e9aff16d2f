package nbd

import (
	"net"
	"sync"
	"time"
)

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
