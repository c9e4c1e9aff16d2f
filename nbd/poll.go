package nbd

import (
	"io"
	"net"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// pollReader reads a connection, polling it for up to spin before it
// lets the goroutine sleep until data arrives. A client with requests in
// flight usually sends the next one within a few microseconds of a
// reply; polling for it keeps the server's thread (and, in a virtual
// machine, its CPU) awake instead of paying a sleep and a wake-up for
// every request, at the price of up to spin of CPU time per idle gap.
// spin adapts: it is used only while the previous wait was answered
// within it, so an idle connection costs nothing; and a server with many
// connections does not poll at all (pollGate).
type pollReader struct {
	nc   net.Conn
	rc   syscall.RawConn
	spin time.Duration
	gate *pollGate

	// State of the current Read, kept here so that the function handed
	// to rc.Read is a method value made once (no allocation per read).
	fn     func(fd uintptr) bool
	b      []byte
	n      int
	err    error
	polled bool // this Read already polled (now it waits)
	active bool // the previous wait ended within spin
}

// newPollReader returns nc itself when it cannot be polled (not a
// socket, or spin is zero).
func newPollReader(nc net.Conn, spin time.Duration, gate *pollGate) io.Reader {
	sc, ok := nc.(syscall.Conn)
	if !ok || spin <= 0 {
		return nc
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nc
	}
	p := &pollReader{nc: nc, rc: rc, spin: spin, gate: gate, active: true}
	p.fn = p.try
	return p
}

func (p *pollReader) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	p.b, p.n, p.err, p.polled = b, 0, nil, !p.active
	start := time.Now()
	err := p.rc.Read(p.fn)
	p.b = nil
	if err != nil {
		return 0, err // a deadline, or the connection was closed
	}
	p.active = time.Since(start) <= p.spin
	if p.err != nil {
		return p.n, p.err
	}
	if p.n == 0 {
		return 0, io.EOF
	}
	return p.n, nil
}

// try is called by rc.Read: once to poll, and again each time the socket
// becomes readable. It returns false to wait for readiness.
func (p *pollReader) try(fd uintptr) bool {
	var deadline time.Time
	polling := false
	for i := 0; ; i++ {
		n, err := unix.Read(int(fd), p.b)
		if err != unix.EAGAIN && err != unix.EINTR {
			if polling {
				p.gate.leave()
			}
			if err != nil {
				n = 0
			}
			p.n, p.err = n, err
			return true
		}
		if err == unix.EINTR {
			continue
		}
		if p.polled {
			return false
		}
		if !polling {
			if !p.gate.enter() {
				p.polled = true
				return false
			}
			polling = true
			deadline = time.Now().Add(p.spin)
		} else if i&15 == 0 && time.Now().After(deadline) {
			p.gate.leave()
			p.polled = true
			return false
		}
	}
}

// pollGate decides whether a connection may poll: only while the
// server has at most GOMAXPROCS/2 connections in the transmission phase
// (at least one), and only that many poll at once. With more busy
// connections than that the CPUs have other work to do, and polling takes
// their time (measured on 2 CPUs: two busy connections lose a fifth of
// their throughput when one of them polls).
type pollGate struct {
	max     int32
	conns   atomic.Int32 // connections in the transmission phase
	polling atomic.Int32
}

func newPollGate() *pollGate {
	return &pollGate{max: int32(max(1, runtime.GOMAXPROCS(0)/2))}
}

func (g *pollGate) enter() bool {
	if !g.spare() {
		return false
	}
	if g.polling.Add(1) <= g.max {
		return true
	}
	g.polling.Add(-1)
	return false
}

func (g *pollGate) leave() { g.polling.Add(-1) }

// spare reports whether the CPUs have room for a busy connection's extra
// work: at most max connections are in the transmission phase.
func (g *pollGate) spare() bool { return g.conns.Load() <= g.max }
