package nbd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestHostileClients throws broken and malicious clients at one server
// while a well-behaved client keeps doing I/O on another connection.
// Each hostile connection must get an error reply or be closed; the
// server and the good client must not notice.
func TestHostileClients(t *testing.T) {
	baseline := runtime.NumGoroutine()
	dev := newMemDev(512, 2048)
	ts := startServer(t, Options{HandshakeTimeout: 500 * time.Millisecond, MaxBlockSize: 1 << 20},
		withExport("", "", dev, false))

	// The good client: writes and verifies until told to stop.
	stop := make(chan struct{})
	var goodOps atomic.Int64
	var goodErr error
	var wg sync.WaitGroup
	good := connect(t, ts, "", true)
	wg.Add(1)
	go func() {
		defer wg.Done()
		c := good
		deadline := time.Now().Add(60 * time.Second)
		for i := 0; time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				c.disconnect()
				return
			default:
			}
			p := pattern(4096, byte(i))
			off := uint64(i%256) * 4096
			if err := c.send(cmdWrite, 0, 1, off, 4096, p); err != nil {
				goodErr = err
				return
			}
			if r, err := c.recv(); err != nil || r.errno != 0 {
				goodErr = errors.Join(err, r.errno)
				return
			}
			if err := c.send(cmdRead, 0, 2, off, 4096, nil); err != nil {
				goodErr = err
				return
			}
			r, err := c.recv()
			if err != nil || r.errno != 0 || !bytes.Equal(r.data, p) {
				goodErr = errors.Join(err, r.errno, errors.New("data mismatch"))
				return
			}
			goodOps.Add(1)
		}
	}()

	hdr := func(typ, flags uint16, off uint64, length uint32) []byte {
		b := make([]byte, requestLen)
		putRequest(b, request{typ: typ, flags: flags, handle: 99, offset: off, length: length})
		return b
	}
	optHdr := func(opt, length uint32) []byte {
		b := be.AppendUint64(nil, magicOption)
		b = be.AppendUint32(b, opt)
		return be.AppendUint32(b, length)
	}

	// Handshake-phase attacks: the connection must be closed.
	closes := []struct {
		name string
		run  func(c *client)
	}{
		{"garbage instead of flags", func(c *client) {
			c.mustRead(greetingLen)
			c.mustWrite([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		}},
		{"unknown client flags", func(c *client) { c.greet(0xffffffff) }},
		{"wrong option magic", func(c *client) {
			c.greet(clientFixedNewstyle)
			c.mustWrite(append([]byte("IHAVEOPX"), 0, 0, 0, 7, 0, 0, 0, 0))
		}},
		{"huge option length", func(c *client) {
			c.greet(clientFixedNewstyle)
			c.mustWrite(optHdr(optGo, 0xffffffff))
			c.write(make([]byte, 4096)) // the server may already have closed
		}},
		{"option above the limit", func(c *client) {
			c.greet(clientFixedNewstyle)
			c.mustWrite(optHdr(77, maxOptionLen+1))
		}},
		{"huge export name", func(c *client) {
			c.greet(clientFixedNewstyle)
			c.sendOption(optExportName, bytes.Repeat([]byte("n"), MaxStringLen+1))
		}},
		{"option flood", func(c *client) {
			c.greet(clientFixedNewstyle)
			go func() {
				for i := 0; i < maxOptions+10; i++ {
					if c.write(optHdr(99, 0)) != nil {
						return
					}
				}
			}()
		}},
		{"silent client (handshake timeout)", func(c *client) { c.mustRead(greetingLen) }},
		{"stalls mid-option", func(c *client) {
			c.greet(clientFixedNewstyle)
			c.mustWrite(optHdr(optGo, 100)[:10])
		}},
	}
	for _, tc := range closes {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			tc.run(c)
			c.expectClosed()
		})
	}

	t.Run("bad INFO data gets an error reply", func(t *testing.T) {
		c := dial(t, ts)
		c.greet(clientFixedNewstyle)
		bad := [][]byte{
			be.AppendUint32(nil, 0xffffffff),                  // name length far beyond the data
			append(be.AppendUint32(nil, 0xfffffff0), "ab"...), // same, with bytes
			append(infoData("", 1, 2), 0),                     // trailing byte
			infoData("")[:5],                                  // truncated count
			be.AppendUint16(be.AppendUint32(nil, 0), 0xffff),  // 65535 requests, none sent
		}
		for _, d := range bad {
			c.sendOption(optInfo, d)
			if r := c.readOptReply(); r.typ != repErrInvalid {
				t.Errorf("INFO %x: reply %#x", d, r.typ)
			}
		}
		if g := c.info(optGo, ""); g.final != repAck {
			t.Fatalf("GO after bad options: %#x", g.final)
		}
		if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
			t.Fatal(r.errno)
		}
	})

	// Transmission-phase attacks answered with errors.
	t.Run("bad requests get error replies", func(t *testing.T) {
		c := connect(t, ts, "", false)
		for _, r := range []struct {
			typ, flags uint16
			off        uint64
			length     uint32
		}{
			{cmdRead, 0, 0, 0xffffffff},
			{cmdRead, 0, 0xfffffffffffffe00, 512},
			{cmdTrim, 0, 0, 0xfffffe00},
			{cmdWriteZeroes, 0, 2048 * 512, 512},
			{0xffff, 0xffff, 0, 512},
			{cmdFlush, 0xfff0, 0, 0},
		} {
			if got := c.do(r.typ, r.flags, r.off, r.length, nil); got.errno != EINVAL {
				t.Errorf("%+v: errno %v, want EINVAL", r, got.errno)
			}
		}
		if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
			t.Fatal(r.errno)
		}
	})

	// Transmission-phase attacks that must close the connection.
	tclose := []struct {
		name string
		data []byte
	}{
		{"wrong request magic", append([]byte{0xde, 0xad, 0xbe, 0xef}, make([]byte, requestLen-4)...)},
		{"huge write length", hdr(cmdWrite, 0, 0, 0xffffffff)},
		{"write above the maximum", hdr(cmdWrite, 0, 0, 2<<20)},
		{"disconnect mid-header", hdr(cmdRead, 0, 0, 512)[:11]},
		{"disconnect mid-payload", append(hdr(cmdWrite, 0, 0, 8192), make([]byte, 1000)...)},
	}
	for _, tc := range tclose {
		t.Run(tc.name, func(t *testing.T) {
			c := connect(t, ts, "", false)
			c.mustWrite(tc.data)
			if tc.name[:10] == "disconnect" {
				c.nc.Close()
				return
			}
			c.expectClosed()
		})
	}

	t.Run("client that never reads replies", func(t *testing.T) {
		c := connect(t, ts, "", false)
		// 64 x 1 MiB of reads queued, none read: the server's writes
		// block on this connection only.
		for i := 0; i < 64; i++ {
			if err := c.send(cmdRead, 0, uint64(i), 0, 1<<20, nil); err != nil {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
		c.nc.Close()
	})

	t.Run("new connections still work", func(t *testing.T) {
		c := connect(t, ts, "", true)
		if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 {
			t.Fatal(r.errno)
		}
		c.disconnect()
		c.expectClosed()
	})

	close(stop)
	wg.Wait()
	if goodErr != nil {
		t.Fatalf("the well-behaved client failed after %d ops: %v", goodOps.Load(), goodErr)
	}
	if goodOps.Load() == 0 {
		t.Fatal("the well-behaved client did nothing")
	}
	// Every hostile connection's goroutines are gone.
	waitConnsGone(t, ts, baseline)
}

// TestMaxConns: connections beyond the limit are closed at once; the
// ones admitted keep working.
func TestMaxConns(t *testing.T) {
	ts := startServer(t, Options{MaxConns: 2}, withExport("", "", newMemDev(512, 8), false))
	a := connect(t, ts, "", false)
	b := connect(t, ts, "", false)
	c := dial(t, ts)
	c.expectClosed()
	for _, x := range []*client{a, b} {
		if r := x.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
			t.Fatal(r.errno)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	a.disconnect()
	a.expectClosed()
	for { // the slot frees up
		ts.mu.Lock()
		n := len(ts.conns)
		ts.mu.Unlock()
		if n < 2 || ctx.Err() != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	d := connect(t, ts, "", false)
	if r := d.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
}

// TestHostileTLSClients: with TLS required, broken and malicious TLS
// clients (garbage instead of a ClientHello, a stalled or truncated
// handshake, raw bytes inside the TLS stream, a flood of half-done
// handshakes) are closed within the handshake timeout while a good TLS
// client keeps doing verified I/O, and every goroutine is gone after.
func TestHostileTLSClients(t *testing.T) {
	baseline := runtime.NumGoroutine()
	p := getPKI(t)
	dev := newMemDev(512, 2048)
	ts := startServer(t, Options{TLS: p.serverTLS(), HandshakeTimeout: 500 * time.Millisecond, MaxBlockSize: 1 << 20},
		withExport("", "", dev, false))

	stop := make(chan struct{})
	var goodOps atomic.Int64
	var goodErr error
	var wg sync.WaitGroup
	good := connectTLS(t, ts, p, p.client, "")
	wg.Add(1)
	go func() {
		defer wg.Done()
		deadline := time.Now().Add(60 * time.Second)
		for i := 0; time.Now().Before(deadline); i++ {
			select {
			case <-stop:
				good.disconnect()
				return
			default:
			}
			data := pattern(4096, byte(i))
			off := uint64(i%256) * 4096
			if r := good.do(cmdWrite, 0, off, 4096, data); r.errno != 0 {
				goodErr = r.errno
				return
			}
			if r := good.do(cmdRead, 0, off, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, data) {
				goodErr = errors.Join(r.errno, errors.New("data mismatch"))
				return
			}
			goodOps.Add(1)
		}
	}()

	// clientHello captures the first bytes a real TLS client sends.
	clientHello := func(t *testing.T) []byte {
		a, b := net.Pipe()
		defer a.Close()
		defer b.Close()
		go tls.Client(a, p.clientTLS(p.client)).Handshake()
		b.SetReadDeadline(time.Now().Add(ioTimeout))
		buf := make([]byte, 4096)
		n, err := b.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		return buf[:n]
	}
	afterStartTLS := func(c *client) {
		c.greet(clientFixedNewstyle | clientNoZeroes)
		c.sendOption(optStartTLS, nil)
		if r := c.readOptReply(); r.typ != repAck {
			c.t.Fatalf("STARTTLS: %#x", r.typ)
		}
	}
	cases := []struct {
		name string
		run  func(t *testing.T, c *client)
	}{
		{"garbage instead of a ClientHello", func(t *testing.T, c *client) {
			afterStartTLS(c)
			c.mustWrite([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		}},
		{"silent after STARTTLS (handshake timeout)", func(t *testing.T, c *client) { afterStartTLS(c) }},
		{"truncated ClientHello", func(t *testing.T, c *client) {
			afterStartTLS(c)
			c.mustWrite(clientHello(t)[:20])
		}},
		{"a huge TLS record header", func(t *testing.T, c *client) {
			afterStartTLS(c)
			c.mustWrite([]byte{0x16, 0x03, 0x01, 0xff, 0xff})
		}},
		{"plaintext inside the TLS stream", func(t *testing.T, c *client) {
			afterStartTLS(c)
			raw := c.nc
			tc := tls.Client(raw, p.clientTLS(p.client))
			c.deadline()
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			b := be.AppendUint64(nil, magicOption)
			b = be.AppendUint32(be.AppendUint32(b, optGo), 6)
			raw.Write(append(b, 0, 0, 0, 0, 0, 0)) // not a TLS record
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			tc.run(t, c)
			c.expectClosed()
		})
	}

	t.Run("flood of stalled handshakes", func(t *testing.T) {
		hello := clientHello(t)
		var fwg sync.WaitGroup
		for i := range 40 {
			fwg.Add(1)
			go func() {
				defer fwg.Done()
				nc, err := net.DialTimeout("unix", ts.sock, ioTimeout)
				if err != nil {
					return
				}
				defer nc.Close()
				nc.SetDeadline(time.Now().Add(ioTimeout))
				io.ReadFull(nc, make([]byte, greetingLen))
				b := be.AppendUint32(nil, clientFixedNewstyle)
				b = be.AppendUint64(b, magicOption)
				b = be.AppendUint32(be.AppendUint32(b, optStartTLS), 0)
				nc.Write(b)
				io.ReadFull(nc, make([]byte, optionReplyHdrLen))
				if i%2 == 0 {
					nc.Write(hello) // then stall mid-handshake
				}
				io.Copy(io.Discard, nc) // until the server closes
			}()
		}
		fwg.Wait()
		// A new TLS client is still served.
		c := connectTLS(t, ts, p, p.client, "")
		if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
			t.Fatal(r.errno)
		}
		c.disconnect()
		c.expectClosed()
	})

	close(stop)
	wg.Wait()
	if goodErr != nil {
		t.Fatalf("the good TLS client failed after %d ops: %v", goodOps.Load(), goodErr)
	}
	if goodOps.Load() == 0 {
		t.Fatal("the good TLS client did nothing")
	}
	waitConnsGone(t, ts, baseline)
}

// waitConnsGone waits (5 s at most) until the server has no connection
// left and the goroutines are back to baseline (a few of slack).
func waitConnsGone(t *testing.T, ts *testServer, baseline int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ts.mu.Lock()
		n := len(ts.conns)
		ts.mu.Unlock()
		g := runtime.NumGoroutine()
		if n == 0 && g <= baseline+3 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d connections and %d goroutines (baseline %d) left", n, g, baseline)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
