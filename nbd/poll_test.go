package nbd

import (
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// unixPair returns both ends of a unix stream connection.
func unixPair(t *testing.T) (server, client net.Conn) {
	t.Helper()
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "s"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan net.Conn, 1)
	go func() {
		c, _ := l.Accept()
		done <- c
	}()
	client, err = net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-done
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

// TestPollReader: data that arrives while polling, data that arrives
// after the poll gave up (the goroutine sleeps and is woken), a deadline,
// and end of stream, each give what a plain net.Conn read gives.
func TestPollReader(t *testing.T) {
	srv, cli := unixPair(t)
	r := newPollReader(srv, 200*time.Microsecond, newPollGate())
	p, ok := r.(*pollReader)
	if !ok {
		t.Fatalf("a unix socket is not polled: %T", r)
	}
	buf := make([]byte, 64)
	for i, delay := range []time.Duration{0, 50 * time.Microsecond, 20 * time.Millisecond, 0, 0} {
		msg := []byte{byte(i), 'x', 'y'}
		go func() {
			time.Sleep(delay)
			cli.Write(msg)
		}()
		n, err := io.ReadFull(r, buf[:3])
		if err != nil || n != 3 || buf[0] != byte(i) || buf[2] != 'y' {
			t.Fatalf("read %d (delay %v): %q %v", i, delay, buf[:n], err)
		}
		if delay > time.Millisecond && p.active {
			t.Errorf("read %d: still polling after a %v wait", i, delay)
		}
	}
	srv.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
	if _, err := r.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v", err)
	}
	srv.SetReadDeadline(time.Time{})
	cli.Write([]byte("last"))
	cli.Close()
	if b, err := io.ReadAll(r); err != nil || string(b) != "last" {
		t.Fatalf("read to end: %q %v", b, err)
	}
	if n, err := r.Read(buf); n != 0 || err != io.EOF {
		t.Fatalf("read after end: %d %v", n, err)
	}
	if newPollReader(srv, -1, newPollGate()) != srv {
		t.Error("a negative poll time still polls")
	}
}

// TestPollGate: polling is allowed for at most GOMAXPROCS/2 connections
// at once, and not at all while the server has more connections than
// that in the transmission phase.
func TestPollGate(t *testing.T) {
	g := &pollGate{max: 2}
	g.conns.Store(2)
	if first, second := g.enter(), g.enter(); !first || !second {
		t.Fatal("two pollers refused with max 2")
	}
	if g.enter() {
		t.Fatal("a third poller admitted with max 2")
	}
	g.leave()
	if !g.enter() {
		t.Fatal("a poller refused after one left")
	}
	g.leave()
	g.leave()
	g.conns.Store(3)
	if g.enter() {
		t.Fatal("polling with more connections than max")
	}
	if g.polling.Load() != 0 {
		t.Fatalf("%d pollers counted after all left", g.polling.Load())
	}
}
