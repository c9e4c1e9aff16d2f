package nbd

import (
	"bytes"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// BenchmarkRead4K measures one pipelined 4 KiB read round trip through
// the server (client and server in this process).
func BenchmarkRead4K(b *testing.B) { benchmarkIO(b, cmdRead) }

// BenchmarkWrite4K is the same for writes.
func BenchmarkWrite4K(b *testing.B) { benchmarkIO(b, cmdWrite) }

func benchmarkIO(b *testing.B, typ uint16) {
	dev := newMemDev(4096, 4096)
	ts := startServer(b, Options{}, withExport("", "", dev, false))
	c := connect(b, ts, "", false)
	p := pattern(4096, 1)
	const depth = 8
	req := make([]byte, requestLen+4096)
	hdr := make([]byte, simpleReplyLen+4096)
	send := func(i int) {
		putRequest(req, request{typ: typ, handle: uint64(i), offset: uint64(i%4096) * 4096, length: 4096})
		n := requestLen
		if typ == cmdWrite {
			copy(req[requestLen:], p)
			n += 4096
		}
		c.nc.Write(req[:n])
	}
	recvOne := func() {
		n := simpleReplyLen
		if typ == cmdRead {
			n += 4096
		}
		if _, err := readFull(c.br, hdr[:n]); err != nil || be.Uint32(hdr[4:]) != 0 {
			b.Fatalf("reply: %v", err)
		}
	}
	c.nc.SetDeadline(time.Time{})
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i >= depth {
			recvOne()
		}
		send(i)
	}
	for i := 0; i < min(b.N, depth); i++ {
		recvOne()
	}
}

// TestZeroAllocHotPath: steady-state 4 KiB reads and writes allocate
// nothing in the server (pooled buffers, per-worker reply scratch).
func TestZeroAllocHotPath(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates on its own")
	}
	dev := newMemDev(4096, 256)
	ts := startServer(t, Options{}, withExport("", "", dev, false))
	c := connect(t, ts, "", false)
	c.nc.SetDeadline(time.Now().Add(30 * time.Second))
	req := make([]byte, requestLen+4096)
	rep := make([]byte, simpleReplyLen+4096)
	for _, typ := range []uint16{cmdRead, cmdWrite} {
		i := 0
		roundTrip := func() {
			putRequest(req, request{typ: typ, handle: uint64(i), offset: uint64(i%256) * 4096, length: 4096})
			n, m := requestLen, simpleReplyLen
			if typ == cmdWrite {
				n += 4096
			} else {
				m += 4096
			}
			i++
			if _, err := c.nc.Write(req[:n]); err != nil {
				t.Fatal(err)
			}
			if _, err := readFull(c.br, rep[:m]); err != nil || be.Uint32(rep[4:]) != 0 {
				t.Fatalf("reply: %v", err)
			}
		}
		if a := testing.AllocsPerRun(2000, roundTrip); a != 0 {
			t.Errorf("command %d: %.2f allocations per request", typ, a)
		}
	}
}

// TestHandedOverReplyIsWritten: a request the reading worker runs itself
// outlives the hand-over timer; by then another worker is waiting for the
// client, which waits for this reply. The reply must not stay queued
// behind the reader (replies of the reading worker are held back only
// while it still reads).
func TestHandedOverReplyIsWritten(t *testing.T) {
	release := make(chan struct{})
	dev := newMemDev(512, 64)
	dev.hook = func(op string, lba uint64) error {
		if lba == 7 {
			select {
			case <-release:
			case <-time.After(ioTimeout):
			}
		}
		return nil
	}
	for _, poll := range []time.Duration{-1, DefaultPoll} {
		ts := startServer(t, Options{Workers: 2, Poll: poll}, withExport("", "", dev, false))
		c := connect(t, ts, "", true)
		if err := c.send(cmdRead, 0, 1, 7*512, 512, nil); err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * watchTick) // the role is handed on; the new reader waits
		release <- struct{}{}
		r, err := c.recv()
		if err != nil || r.handle != 1 || r.errno != 0 {
			t.Fatalf("poll %v: reply %+v: %v", poll, r, err)
		}
		// Still in step: a second round trip.
		if err := c.send(cmdRead, 0, 2, 0, 512, nil); err != nil {
			t.Fatal(err)
		}
		if r, err := c.recv(); err != nil || r.handle != 2 {
			t.Fatalf("poll %v: second reply %+v: %v", poll, r, err)
		}
		// Idle for a while: the watchdog stops ticking...
		sc := ts.onlyConn(t)
		deadline := time.Now().Add(ioTimeout)
		for sc.watching.Load() && time.Now().Before(deadline) {
			time.Sleep(watchTick)
		}
		if sc.watching.Load() {
			t.Fatalf("poll %v: the watchdog still ticks on an idle connection", poll)
		}
		// ...and starts again: a slow request with a fast one behind it.
		if err := c.send(cmdRead, 0, 3, 7*512, 512, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.send(cmdRead, 0, 4, 0, 512, nil); err != nil {
			t.Fatal(err)
		}
		if r, err := c.recv(); err != nil || r.handle != 4 {
			t.Fatalf("poll %v: the request behind a slow one: %+v: %v", poll, r, err)
		}
		release <- struct{}{}
		if r, err := c.recv(); err != nil || r.handle != 3 {
			t.Fatalf("poll %v: the slow request: %+v: %v", poll, r, err)
		}
	}
}

// TestBurstRepliesAllArrive: a burst of small requests in one segment,
// larger than the held-reply threshold and mixed with requests handed to
// other workers (large reads, FLUSH), is answered completely, and each
// reply carries the right data.
func TestBurstRepliesAllArrive(t *testing.T) {
	dev := newMemDev(4096, 1024)
	for i := range 1024 {
		copy(dev.data[i*4096:], pattern(4096, byte(i)))
	}
	ts := startServer(t, Options{}, withExport("", "", dev, false))
	c := connect(t, ts, "", true)
	var burst []byte
	const n = 300 // 300 x 4 KiB > replyFlushAt
	for i := range n {
		typ, length := cmdRead, uint32(4096)
		switch {
		case i%50 == 7:
			length = 128 << 10 // past inlineMax: handed over
		case i%50 == 9:
			typ, length = cmdFlush, 0
		}
		h := make([]byte, requestLen)
		putRequest(h, request{typ: typ, handle: uint64(i), offset: uint64(i%512) * 4096, length: length})
		burst = append(burst, h...)
	}
	if _, err := c.nc.Write(burst); err != nil {
		t.Fatal(err)
	}
	seen := map[uint64]bool{}
	for range n {
		r, err := c.recv()
		if err != nil || r.errno != 0 || seen[r.handle] || r.handle >= n {
			t.Fatalf("reply %+v: %v (duplicate %v)", r.handle, err, seen[r.handle])
		}
		seen[r.handle] = true
		i := int(r.handle)
		if i%50 == 9 {
			continue
		}
		want := pattern(4096, byte(i%512))
		if i%50 == 7 {
			want = dev.snapshot()[(i%512)*4096 : (i%512)*4096+128<<10]
		}
		if !bytes.Equal(r.data, want) {
			t.Fatalf("reply %d: wrong data", i)
		}
	}
}

// gate blocks device calls matching a predicate until released (at the
// latest when the test ends; awaitReply releases it before failing, as
// the server's cleanup waits for the requests in flight), so tests can
// hold requests in flight without timing assumptions.
type gate struct {
	ch   chan struct{}
	once sync.Once
}

func newGate(t *testing.T) *gate {
	g := &gate{ch: make(chan struct{})}
	t.Cleanup(g.release)
	return g
}

func (g *gate) wait()    { <-g.ch }
func (g *gate) release() { g.once.Do(func() { close(g.ch) }) }

// burst sends requests in one write and records the reads as pending.
func (c *client) burst(reqs ...request) {
	c.t.Helper()
	var b []byte
	h := make([]byte, requestLen)
	for _, r := range reqs {
		putRequest(h, r)
		b = append(b, h...)
		if r.typ == cmdRead {
			c.mu.Lock()
			c.pending[r.handle] = r.length
			c.mu.Unlock()
		}
	}
	c.mustWrite(b)
}

// awaitReply reads replies until the one for handle (which must come
// while the gated requests are still blocked), then releases the gate.
func (c *client) awaitReply(g *gate, handle uint64, what string) {
	c.t.Helper()
	for {
		r, err := c.recv()
		if err != nil {
			g.release() // let the server shut down
			c.t.Fatalf("%s: no reply for request %d while the slow requests are blocked: %v", what, handle, err)
		}
		if r.handle == handle {
			g.release()
			if r.errno != 0 {
				c.t.Fatalf("%s: reply %d: %v", what, handle, r.errno)
			}
			return
		}
	}
}

// TestHeldRepliesNotBehindSlowRequests: the reading worker holds back
// the replies of the requests it ran itself; they must be written before
// it stops reading for any reason, not only before it waits for the
// client: when it hands a FLUSH to itself, when the watchdog hands its
// role on during a slow request and no other worker is free, and when it
// waits for the in-flight budget.
func TestHeldRepliesNotBehindSlowRequests(t *testing.T) {
	t.Run("flush", func(t *testing.T) {
		g := newGate(t)
		dev := newMemDev(4096, 64)
		dev.hook = func(op string, lba uint64) error {
			if op == "flush" {
				g.wait()
			}
			return nil
		}
		ts := startServer(t, Options{Workers: 2, Poll: -1}, withExport("", "", dev, false))
		c := connect(t, ts, "", true)
		c.burst(request{typ: cmdFlush, handle: 100}) // occupies the other worker
		c.burst(request{typ: cmdRead, handle: 1, length: 4096}, request{typ: cmdFlush, handle: 2})
		c.awaitReply(g, 1, "read before a FLUSH")
	})
	t.Run("watchdog", func(t *testing.T) {
		g := newGate(t)
		dev := newMemDev(4096, 64)
		dev.hook = func(op string, lba uint64) error {
			if op == "flush" || lba == 7 {
				g.wait()
			}
			return nil
		}
		ts := startServer(t, Options{Workers: 2, Poll: -1}, withExport("", "", dev, false))
		c := connect(t, ts, "", true)
		c.burst(request{typ: cmdFlush, handle: 100})
		c.burst(request{typ: cmdRead, handle: 1, length: 4096}, request{typ: cmdRead, handle: 2, offset: 7 * 4096, length: 4096})
		c.awaitReply(g, 1, "read before a slow inline read")
	})
	t.Run("budget", func(t *testing.T) {
		g := newGate(t)
		dev := newMemDev(4096, 1024)
		dev.hook = func(op string, lba uint64) error {
			if op == "read" && lba >= 512 {
				g.wait()
			}
			return nil
		}
		// In-flight bytes: twice the 1 MiB maximum block size.
		ts := startServer(t, Options{Workers: 8, Poll: -1, MaxBlockSize: 1 << 20}, withExport("", "", dev, false))
		c := connect(t, ts, "", true)
		c.burst(
			request{typ: cmdRead, handle: 10, offset: 512 * 4096, length: 1 << 20},   // blocked
			request{typ: cmdRead, handle: 11, offset: 768 * 4096, length: 512 << 10}, // blocked
			request{typ: cmdRead, handle: 1, length: 4096},                           // run by the reader, held
			request{typ: cmdRead, handle: 12, offset: 4096, length: 1 << 20},         // waits for budget
		)
		c.awaitReply(g, 1, "read before a budget wait")
	})
}

// TestPipelineStress: slow inline requests (watchdog hand-overs), fast ones, large
// reads, writes and flushes, pipelined; every request answered once
// with the right data.
func TestPipelineStress(t *testing.T) {
	dev := newMemDev(4096, 1024)
	for i := range 1024 {
		copy(dev.data[i*4096:], pattern(4096, byte(i)))
	}
	var rmu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	dev.hook = func(op string, lba uint64) error {
		if lba%5 == 3 {
			rmu.Lock()
			d := time.Duration(rng.IntN(1500)) * time.Microsecond
			rmu.Unlock()
			time.Sleep(d)
		}
		return nil
	}
	for _, workers := range []int{1, 2, 3, 8} {
		for _, poll := range []time.Duration{-1, DefaultPoll} {
			ts := startServer(t, Options{Workers: workers, Poll: poll}, withExport("", "", dev, false))
			c := connect(t, ts, "", workers%2 == 0)
			const n = 2000
			const depth = 24
			sem := make(chan struct{}, depth)
			type exp struct {
				typ uint16
				lba uint64
				l   uint32
			}
			var emu sync.Mutex
			want := map[uint64]exp{}
			done := make(chan struct{})
			go func() {
				defer close(done)
				for i := 0; i < n; i++ {
					r, err := c.recv()
					if err != nil {
						t.Errorf("recv %d: %v", i, err)
						return
					}
					emu.Lock()
					e, ok := want[r.handle]
					delete(want, r.handle)
					emu.Unlock()
					if !ok {
						t.Errorf("unexpected/duplicate reply %d", r.handle)
						return
					}
					if r.errno != 0 {
						t.Errorf("reply %d errno %v", r.handle, r.errno)
						return
					}
					if e.typ == cmdRead {
						w := pattern(4096, byte(e.lba))
						if e.l > 4096 {
							w = nil
						}
						if w != nil && !bytes.Equal(r.data, w) {
							t.Errorf("reply %d wrong data", r.handle)
							return
						}
						if len(r.data) != int(e.l) {
							t.Errorf("reply %d: %d bytes", r.handle, len(r.data))
							return
						}
					}
					<-sem
				}
			}()
			r2 := rand.New(rand.NewPCG(uint64(workers), 3))
			for i := uint64(0); i < n; i++ {
				sem <- struct{}{}
				lba := uint64(r2.IntN(512))
				var e exp
				switch k := r2.IntN(20); {
				case k == 0:
					e = exp{cmdFlush, 0, 0}
				case k == 1:
					e = exp{cmdRead, lba, 128 << 10}
				case k < 4:
					// write the same pattern back: data stays stable
					e = exp{cmdWrite, lba, 4096}
				default:
					e = exp{cmdRead, lba, 4096}
				}
				emu.Lock()
				want[i] = e
				emu.Unlock()
				var payload []byte
				if e.typ == cmdWrite {
					payload = pattern(4096, byte(lba))
				}
				if err := c.send(e.typ, 0, i, e.lba*4096, e.l, payload); err != nil {
					t.Fatal(err)
				}
			}
			select {
			case <-done:
			case <-time.After(60 * time.Second):
				t.Fatalf("workers %d poll %v: stuck, %d replies missing", workers, poll, len(want))
			}
			if t.Failed() {
				return
			}
		}
	}
}

// TestDisconnectMidBurst: abrupt disconnects mid-burst (some mid-payload), then Shutdown: every
// connection must end, no budget left charged, nothing panics.
func TestDisconnectMidBurst(t *testing.T) {
	dev := newMemDev(4096, 1024)
	dev.hook = func(op string, lba uint64) error {
		if lba%3 == 0 {
			time.Sleep(time.Duration(lba%7) * 100 * time.Microsecond)
		}
		return nil
	}
	ts := startServer(t, Options{Workers: 4}, withExport("", "", dev, false))
	var wg sync.WaitGroup
	for k := 0; k < 40; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := connect(t, ts, "", k%2 == 0)
			var b []byte
			h := make([]byte, requestLen)
			for i := 0; i < 200; i++ {
				lba := uint64((i * 13) % 1024)
				switch i % 4 {
				case 0:
					putRequest(h, request{typ: cmdWrite, handle: uint64(i), offset: lba * 4096, length: 4096})
					b = append(b, h...)
					b = append(b, pattern(4096, byte(i))...)
				default:
					putRequest(h, request{typ: cmdRead, handle: uint64(i), offset: lba * 4096, length: 4096})
					b = append(b, h...)
				}
			}
			cut := len(b) * (k + 1) / 41
			c.nc.Write(b[:cut])
			if k%3 == 0 {
				time.Sleep(2 * time.Millisecond)
			}
			c.nc.Close()
		}()
	}
	wg.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ts.mu.Lock()
		n := len(ts.conns)
		ts.mu.Unlock()
		if n == 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	ts.mu.Lock()
	n := len(ts.conns)
	ts.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d connections still open after their clients closed", n)
	}
	if p := containedPanics.Load(); p != 0 {
		t.Fatalf("%d panics", p)
	}
}

// TestEarlyWriteReplies: a client with few requests in flight gets the
// replies to its writes two at a time, not only once the server has run
// its whole burst: here the third of six pipelined writes blocks (and the
// watchdog, which would flush the held replies, is slowed to an hour),
// and the replies to the first two arrive meanwhile. With many requests
// buffered the replies are batched (see replyEarly).
func TestEarlyWriteReplies(t *testing.T) {
	g := newGate(t)
	dev := newMemDev(4096, 64)
	dev.hook = func(op string, lba uint64) error {
		if op == "write" && lba == 3 {
			g.wait()
		}
		return nil
	}
	ts := startServer(t, Options{Workers: 2, Poll: -1, watchTick: time.Hour}, withExport("", "", dev, false))
	c := connect(t, ts, "", true)
	var b []byte
	h := make([]byte, requestLen)
	for i := uint64(1); i <= 6; i++ {
		putRequest(h, request{typ: cmdWrite, handle: i, offset: i * 4096, length: 4096})
		b = append(append(b, h...), pattern(4096, byte(i))...)
	}
	c.mustWrite(b)
	c.awaitReply(g, 2, "second write while the third blocks")
	for got := 2; got < 6; got++ { // the rest, once the gate is open
		if r, err := c.recv(); err != nil || r.errno != 0 {
			t.Fatalf("reply %d: %v %v", got+1, err, r.errno)
		}
	}
	for i := uint64(1); i <= 6; i++ {
		if r := c.do(cmdRead, 0, i*4096, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, pattern(4096, byte(i))) {
			t.Fatalf("sector %d reads back wrong: %v", i, r.errno)
		}
	}
}
