package nbd

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
)

// TestStatsCounts: every answered request is counted once under its
// command and export, with its bytes or its errno, and the histogram's
// buckets add up to the request count.
func TestStatsCounts(t *testing.T) {
	a, b := newMemDev(512, 1024), newMemDev(4096, 64)
	b.hook = func(op string, lba uint64) error {
		if op == "read" && lba == 63 {
			return errors.New("media error")
		}
		return nil
	}
	ts := startServer(t, Options{}, withExport("a", "", a, false), withExport("b", "", b, true))
	ca := connect(t, ts, "a", true)
	p := pattern(8192, 1)
	for i := range 5 {
		if r := ca.do(cmdWrite, 0, uint64(i)*8192, 8192, p); r.errno != 0 {
			t.Fatalf("write: %v", r.errno)
		}
	}
	for range 3 {
		if r := ca.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || !bytes.Equal(r.data, p[:4096]) {
			t.Fatalf("read: %v", r.errno)
		}
	}
	if r := ca.do(cmdWriteZeroes, 0, 0, 1024, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	if r := ca.do(cmdTrim, 0, 1024, 512, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	if r := ca.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	if r := ca.do(cmdRead, 0, 1, 512, nil); r.errno != EINVAL { // misaligned
		t.Fatalf("misaligned read: %v", r.errno)
	}
	if r := ca.do(42, 0, 0, 0, nil); r.errno != EINVAL {
		t.Fatalf("unknown command: %v", r.errno)
	}
	cb := connect(t, ts, "b", false)
	if r := cb.do(cmdWrite, 0, 0, 4096, pattern(4096, 2)); r.errno != EPERM {
		t.Fatalf("write to read-only: %v", r.errno)
	}
	if r := cb.do(cmdRead, 0, 63*4096, 4096, nil); r.errno != EIO {
		t.Fatalf("failing read: %v", r.errno)
	}

	st := ts.Stats()
	if len(st.Exports) != 2 || st.Exports[0].Name != "a" || st.Exports[1].Name != "b" {
		t.Fatalf("exports %+v", st.Exports)
	}
	if st.Connections != 2 || st.Established != 2 || st.Accepted != 2 || st.Refused != 0 {
		t.Errorf("connections %d established %d accepted %d refused %d", st.Connections, st.Established, st.Accepted, st.Refused)
	}
	want := map[string][9]uint64{
		"a": {4, 5, 0, 1, 1, 0, 1, 0, 1},
		"b": {1, 1, 0, 0, 0, 0, 0, 0, 0},
	}
	for _, es := range st.Exports {
		for i, cs := range es.Commands {
			var sum uint64
			for _, n := range cs.Buckets {
				sum += n
			}
			if cs.Command != CommandNames[i] || cs.Requests != want[es.Name][i] || sum != cs.Requests {
				t.Errorf("%s %s: %d requests (buckets %d), want %d", es.Name, cs.Command, cs.Requests, sum, want[es.Name][i])
			}
			if cs.Requests > 0 && cs.Latency <= 0 {
				t.Errorf("%s %s: latency sum %v", es.Name, cs.Command, cs.Latency)
			}
		}
		if es.Connections != 1 {
			t.Errorf("%s: %d connections", es.Name, es.Connections)
		}
	}
	ea, eb := st.Exports[0], st.Exports[1]
	if ea.BytesRead != 3*4096 || ea.BytesWritten != 5*8192 || ea.BytesZeroed != 1024+512 {
		t.Errorf("a: read %d written %d zeroed %d", ea.BytesRead, ea.BytesWritten, ea.BytesZeroed)
	}
	if len(ea.Errors) != 1 || ea.Errors["EINVAL"] != 2 {
		t.Errorf("a: errors %v", ea.Errors)
	}
	if eb.BytesRead != 0 || eb.BytesWritten != 0 || len(eb.Errors) != 2 || eb.Errors["EPERM"] != 1 || eb.Errors["EIO"] != 1 {
		t.Errorf("b: read %d written %d errors %v", eb.BytesRead, eb.BytesWritten, eb.Errors)
	}

	// Closing a connection releases its established slot.
	cb.disconnect()
	cb.expectClosed()
	waitFor(t, func() bool { return ts.Stats().Established == 1 })
	// Its counts stay with the export.
	eb2 := ts.Stats().Exports[1]
	if eb2.Connections != 0 || eb2.Commands[cmdRead].Requests != 1 || eb2.Commands[cmdWrite].Requests != 1 ||
		eb2.Errors["EPERM"] != 1 || eb2.Errors["EIO"] != 1 || eb2.Commands[cmdRead].Latency != eb.Commands[cmdRead].Latency {
		t.Errorf("b after the disconnect: %d connections, %+v", eb2.Connections, eb2)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestLatencyBucket(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int
	}{{0, 0}, {5 * time.Microsecond, 0}, {5*time.Microsecond + 1, 1}, {time.Millisecond, 7}, {10 * time.Second, 19}, {time.Hour, 20}} {
		if got := latencyBucket(c.d); got != c.want {
			t.Errorf("latencyBucket(%v) = %d, want %d", c.d, got, c.want)
		}
	}
	if ErrnoName(EIO) != "EIO" || ErrnoName(Errno(1234)) != "E1234" {
		t.Error(ErrnoName(EIO), ErrnoName(Errno(1234)))
	}
}

// TestMaxEstablished: with MaxEstablished 2, a third NBD_OPT_GO gets
// NBD_REP_ERR_POLICY with a message (and the client may still abort
// cleanly), a third NBD_OPT_EXPORT_NAME is disconnected, the first two
// keep working, and a slot freed by a disconnect admits the next client.
func TestMaxEstablished(t *testing.T) {
	dev := newMemDev(512, 256)
	var logs testutil.LockedBuffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	ts := startServer(t, Options{MaxEstablished: 2, Logger: logger}, withExport("", "", dev, false))
	c1 := connect(t, ts, "", false)
	c2 := connect(t, ts, "", true)

	c3 := dial(t, ts)
	c3.greet(clientFixedNewstyle | clientNoZeroes)
	g := c3.info(optGo, "", infoBlockSize)
	if g.final != repErrPolicy || !strings.Contains(string(g.finalData), "too many connections") || g.haveExport {
		t.Fatalf("third GO: reply %#x %q (export info sent: %v)", g.final, g.finalData, g.haveExport)
	}
	// NBD_OPT_INFO is still answered: the refusal is about transmission.
	if g := c3.info(optInfo, ""); g.final != repAck || g.size != 256*512 {
		t.Errorf("INFO after the refusal: %#x size %d", g.final, g.size)
	}
	c3.sendOption(optAbort, nil)
	if r := c3.readOptReply(); r.typ != repAck {
		t.Errorf("abort: %#x", r.typ)
	}
	c3.expectClosed()

	c4 := dial(t, ts)
	c4.greet(clientFixedNewstyle)
	c4.sendOption(optExportName, nil)
	c4.expectClosed()

	for i, c := range []*client{c1, c2} {
		p := pattern(512, byte(i))
		if r := c.do(cmdWrite, 0, uint64(i)*512, 512, p); r.errno != 0 {
			t.Fatalf("client %d write: %v", i+1, r.errno)
		}
		if r := c.do(cmdRead, 0, uint64(i)*512, 512, nil); r.errno != 0 || !bytes.Equal(r.data, p) {
			t.Fatalf("client %d read back: %v", i+1, r.errno)
		}
	}
	st := ts.Stats()
	if st.Established != 2 || st.Refused != 2 || st.Accepted != 4 {
		t.Errorf("established %d refused %d accepted %d", st.Established, st.Refused, st.Accepted)
	}
	if !strings.Contains(logs.String(), "too many connections") {
		t.Errorf("no refusal logged:\n%s", logs.String())
	}

	c1.disconnect()
	c1.expectClosed()
	waitFor(t, func() bool { return ts.Stats().Established == 1 })
	c5 := connect(t, ts, "", false)
	if r := c5.do(cmdRead, 0, 512, 512, nil); r.errno != 0 || !bytes.Equal(r.data, pattern(512, 1)) {
		t.Fatalf("client admitted after a disconnect: %v", r.errno)
	}
}

// TestOnIdle: OnIdle runs when the last connection ends, not before.
func TestOnIdle(t *testing.T) {
	idle := make(chan struct{}, 4)
	ts := startServer(t, Options{OnIdle: func() { idle <- struct{}{} }}, withExport("", "", newMemDev(512, 64), false))
	c1 := connect(t, ts, "", false)
	c2 := connect(t, ts, "", false)
	c1.disconnect()
	c1.expectClosed()
	waitFor(t, func() bool { return ts.Stats().Connections == 1 })
	select {
	case <-idle:
		t.Fatal("OnIdle with a connection still open")
	case <-time.After(50 * time.Millisecond):
	}
	c2.disconnect()
	c2.expectClosed()
	select {
	case <-idle:
	case <-time.After(10 * time.Second):
		t.Fatal("OnIdle not called after the last connection")
	}
}

// BenchmarkStatsRecord is what the counters cost a request: a
// timestamp when the header is read, and record when it is answered
// (another timestamp, the histogram bucket, the latency sum, the bytes).
// "shared" has every goroutine on one set of counters, which is what
// giving each connection its own avoids; "own" is how connections count.
func BenchmarkStatsRecord(b *testing.B) {
	var s counters
	b.Run("serial", func(b *testing.B) {
		for i := range b.N {
			s.record(uint16(i&1), 0, 4096, nanotime())
		}
	})
	b.Run("shared", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				s.record(cmdRead, 0, 4096, nanotime())
			}
		})
	})
	b.Run("own", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			own := &counters{}
			for pb.Next() {
				own.record(cmdRead, 0, 4096, nanotime())
			}
		})
	})
	if testing.AllocsPerRun(100, func() { s.record(cmdWrite, EIO, 4096, nanotime()) }) != 0 {
		b.Error("record allocates")
	}
}
