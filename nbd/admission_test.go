package nbd

import (
	"bytes"
	"net"
	"testing"
	"time"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/pmem"
)

// TestAdmissionFlood: 300 established connections that stay idle and a
// flood of 1,000 sockets that connect and send nothing do not lock out a
// client that completes its handshake: it is served within the
// handshake timeout. The flood only evicts itself (handshake slots are
// bounded, the oldest silent socket gives way), and the established
// connections are not disturbed.
func TestAdmissionFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("short: 1,300 connections")
	}
	dev := newMemDev(512, 2048)
	copy(dev.data, pattern(4096, 7))
	ts := startServer(t, Options{}, withExport("", "", dev, false))
	var idle []*client
	for i := 0; i < 300; i++ {
		idle = append(idle, connect(t, ts, "", false))
	}
	var silent []net.Conn
	for i := 0; i < 1000; i++ {
		nc, err := net.DialTimeout("unix", ts.sock, ioTimeout)
		if err != nil {
			t.Fatalf("silent socket %d: %v", i, err)
		}
		silent = append(silent, nc)
	}
	defer func() {
		for _, nc := range silent {
			nc.Close()
		}
	}()
	start := time.Now()
	c := connect(t, ts, "", false)
	if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, pattern(4096, 7)) {
		t.Fatalf("the well-behaved client's read: errno %d", r.errno)
	}
	took := time.Since(start)
	t.Logf("served after the flood in %s (handshake timeout %s)", took.Round(time.Millisecond), ts.opt.HandshakeTimeout)
	if took > ts.opt.HandshakeTimeout {
		t.Errorf("the client waited %s, more than the handshake timeout", took)
	}
	st := ts.Stats()
	if st.Evicted < 1000-uint64(ts.opt.MaxHandshakes) {
		t.Errorf("%d handshaking connections evicted, want at least %d", st.Evicted, 1000-ts.opt.MaxHandshakes)
	}
	// The idle established connections still work.
	for _, i := range []int{0, 150, 299} {
		if r := idle[i].do(cmdRead, 0, 512, 512, nil); r.errno != 0 || !bytes.Equal(r.data, pattern(4096, 7)[512:1024]) {
			t.Fatalf("established connection %d after the flood: errno %d", i, r.errno)
		}
	}
}

// TestHandshakeSlotsEvictOldest: with the handshake slots taken, a new
// connection closes the oldest handshaking one, never an established one.
func TestHandshakeSlotsEvictOldest(t *testing.T) {
	dev := newMemDev(512, 64)
	ts := startServer(t, Options{MaxHandshakes: 2}, withExport("", "", dev, false))
	est := connect(t, ts, "", false)
	a := dial(t, ts)
	a.greet(clientFixedNewstyle)
	b := dial(t, ts)
	b.greet(clientFixedNewstyle)
	c := connect(t, ts, "", false) // takes a's slot
	a.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	if _, err := a.br.ReadByte(); err == nil {
		t.Fatal("the oldest handshaking connection was not closed")
	}
	for _, cl := range []*client{est, c} {
		if r := cl.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
			t.Fatalf("read: errno %d", r.errno)
		}
	}
	b.sendOption(optGo, infoData("", infoBlockSize)) // b still haggles
	if r := b.readOptReply(); r.typ == 0 {
		t.Fatal("b lost its slot")
	}
	if st := ts.Stats(); st.Evicted != 1 {
		t.Errorf("evicted %d, want 1", st.Evicted)
	}
}

// TestReadOnlyRawExport: a raw device opened read-only is exported
// read-only (block.Raw had no ReadOnly method, so it was exported as
// writable and writes failed with EIO only when they reached it).
func TestReadOnlyRawExport(t *testing.T) {
	ram, err := pmem.NewRAM(1 << 20)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	raw, err := block.NewRaw(ram, 512, true)
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Options{}, withExport("", "", raw, false))
	if ex := ts.Exports(); len(ex) != 1 || !ex[0].ReadOnly {
		t.Fatalf("exports %+v: want the read-only raw device read-only", ex)
	}
	c := connect(t, ts, "", false)
	if c.flags&FlagReadOnly == 0 {
		t.Fatalf("transmission flags %#x lack NBD_FLAG_READ_ONLY", c.flags)
	}
	if r := c.do(cmdWrite, 0, 0, 512, make([]byte, 512)); r.errno != EPERM {
		t.Fatalf("write: errno %d, want EPERM", r.errno)
	}
}
