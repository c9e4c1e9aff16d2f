package nbd

import (
	"container/list"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/bits"
	"net"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nvblk/nvblk/block"
)

// Limits of the protocol and of this server.
const (
	// MaxStringLen is the longest export name or description accepted
	// or sent (the protocol's hard limit for strings).
	MaxStringLen = 4096
	// DefaultMaxBlockSize is the default maximum payload of one READ or
	// WRITE (NBD_INFO_BLOCK_SIZE maximum).
	DefaultMaxBlockSize = 32 << 20
	// maxOptionLen bounds the data of one option during the handshake;
	// a longer option ends the connection (a denial-of-service guard the
	// protocol allows). NBD_OPT_GO with a 4096-byte name fits easily.
	maxOptionLen = 64 << 10
	// maxOptions bounds the options of one handshake.
	maxOptions = 1024
)

// DefaultPoll is the default of Options.Poll.
const DefaultPoll = 20 * time.Microsecond

// Options configure a Server. The zero value gives the defaults.
type Options struct {
	// MaxBlockSize is the largest READ or WRITE payload in bytes,
	// advertised as the maximum block size. It is rounded down to a
	// multiple of each export's sector size. Default 32 MiB; values
	// below 64 KiB are raised to 64 KiB.
	MaxBlockSize uint32
	// Workers is the number of goroutines reading and executing the
	// requests of one connection, and so the most requests of a
	// connection in flight at once. Default 8.
	Workers int
	// MaxInFlight also bounds the requests of one connection that have
	// been read but not yet answered (it only matters when smaller than
	// Workers, which it is never made to be). Default 64.
	MaxInFlight int
	// MaxInFlightBytes bounds the READ and WRITE payload bytes of one
	// connection's requests in flight (so buffer memory per connection
	// is bounded whatever the client sends). Default and minimum: twice
	// the maximum block size.
	MaxInFlightBytes int64
	// MaxConns bounds concurrent connections, in any phase; more are
	// closed at once, before the greeting. Default MaxHandshakes +
	// MaxEstablished: the phases have their own bounds.
	MaxConns int
	// MaxHandshakes bounds the connections in the handshake phase (not
	// yet established). When a new connection finds them all taken, the
	// oldest handshaking connection is closed to make room, so sockets
	// that connect and stay silent (or haggle slowly) cannot lock out a
	// client that completes its handshake at once: a flood can only
	// evict itself. Default 64.
	MaxHandshakes int
	// MaxEstablished bounds the established connections: those in the
	// transmission phase, on any export. A client that asks to enter it
	// (NBD_OPT_GO) while MaxEstablished connections are established is
	// refused with NBD_REP_ERR_POLICY and a message saying why, and may
	// go on haggling or abort; one that uses NBD_OPT_EXPORT_NAME, which
	// cannot carry an error, is disconnected. The established
	// connections are not disturbed. Default 1024.
	MaxEstablished int
	// MaxMemory bounds the READ and WRITE payload bytes in flight across
	// all connections (request and reply buffers): a request that would
	// go past it waits until others complete (backpressure on its
	// connection only). The Go runtime's soft memory limit is set to it
	// plus room for the rest, and memory is given back to the system when
	// the connections that used it are gone. Default 512 MiB; at least
	// MaxBlockSize.
	MaxMemory int64
	// WriteTimeout bounds one write of replies: a client that stops
	// reading them for that long is disconnected, so it cannot hold its
	// buffers (and so MaxMemory) forever. Default 60 s.
	WriteTimeout time.Duration
	// OnIdle, if set, is called in a goroutine of its own each time the
	// last open connection (in any phase) ends.
	OnIdle func()
	// HandshakeTimeout bounds the option haggling of one connection.
	// Default 10 s.
	HandshakeTimeout time.Duration
	// Poll is how long a connection's reader polls the socket for the
	// next request before its goroutine sleeps, while the client keeps
	// the connection busy (see pollReader): it saves a sleep and a
	// wake-up per request at the price of up to Poll of CPU time per gap
	// between requests. Only a server with at most GOMAXPROCS/2
	// connections (at least one) polls. Default 20 µs; negative disables
	// polling.
	Poll time.Duration
	// DefaultExport names the export selected by the empty export name
	// when no export is literally named "". Optional.
	DefaultExport string
	// Logger receives connection events and protocol violations. Nil
	// discards them.
	Logger *slog.Logger
	// TLS, if set, makes the server require TLS (NBD_OPT_STARTTLS, forced
	// mode; see tls.go). Client certificates are checked as it says
	// (ClientAuth, ClientCAs). Nil: plaintext only.
	TLS *tls.Config
	// Authorize, if set, is asked whether the client presenting cert
	// (nil without TLS or without a client certificate) may use the
	// export named name; a refused export is left out of NBD_OPT_LIST
	// and answered NBD_REP_ERR_POLICY.
	Authorize func(name string, cert *x509.Certificate) bool

	// watchTick replaces the watchdog period (tests).
	watchTick time.Duration
}

func (o *Options) setDefaults() {
	if o.MaxBlockSize == 0 {
		o.MaxBlockSize = DefaultMaxBlockSize
	}
	if o.MaxBlockSize < 64<<10 {
		o.MaxBlockSize = 64 << 10
	}
	if o.Workers <= 0 {
		o.Workers = 8
	}
	if o.watchTick <= 0 {
		o.watchTick = watchTick
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64
	}
	if o.MaxInFlight < o.Workers {
		o.MaxInFlight = o.Workers
	}
	if floor := 2 * int64(o.MaxBlockSize); o.MaxInFlightBytes < floor {
		o.MaxInFlightBytes = floor
	}
	if o.MaxEstablished <= 0 {
		o.MaxEstablished = 1024
	}
	if o.MaxHandshakes <= 0 {
		o.MaxHandshakes = 64
	}
	if o.MaxConns <= 0 {
		o.MaxConns = o.MaxHandshakes + o.MaxEstablished
	}
	if o.MaxMemory <= 0 {
		o.MaxMemory = 512 << 20
	}
	o.MaxMemory = max(o.MaxMemory, int64(o.MaxBlockSize))
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 60 * time.Second
	}
	if o.HandshakeTimeout <= 0 {
		o.HandshakeTimeout = 10 * time.Second
	}
	if o.Poll == 0 {
		o.Poll = DefaultPoll
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	o.tlsDefaults()
}

// ExportInfo describes one export as clients see it.
type ExportInfo struct {
	Name        string
	Description string
	Size        uint64 // bytes
	SectorSize  uint32 // bytes; the advertised minimum block size
	Preferred   uint32 // bytes; the advertised preferred block size
	Maximum     uint32 // bytes; the advertised maximum block size
	ReadOnly    bool
}

type export struct {
	ExportInfo
	dev   block.Device
	shift uint // log2(SectorSize)
	// closed holds the counters of the connections that have ended;
	// those of open ones are each connection's own (conn.stats), so
	// connections never share a counter's cache line. Server.Stats
	// adds them up.
	closed counters
	conns  atomic.Int64 // established connections on this export now
}

// Server serves block devices over NBD. Create it with NewServer, add
// exports, then call Serve with one or more listeners. It is safe for
// concurrent use.
type Server struct {
	opt      Options
	log      *slog.Logger
	pollGate *pollGate // bounds the connections polling at once

	mu        sync.Mutex
	exports   map[string]*export
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	// established counts the connections in the transmission phase
	// (admitted by admit, released by untrack): the notion
	// Options.MaxEstablished bounds.
	established int
	// handshaking holds the connections in the handshake phase, oldest
	// first (evicted from the front when MaxHandshakes is reached).
	handshaking list.List
	closed      bool
	connWG      sync.WaitGroup

	mem memBudget // payload bytes in flight, all connections (MaxMemory)

	accepted, refused, evicted atomic.Uint64 // see ServerStats
}

// NewServer returns a server with no exports.
func NewServer(opt Options) *Server {
	opt.setDefaults()
	s := &Server{
		opt:       opt,
		log:       opt.Logger,
		pollGate:  newPollGate(),
		exports:   map[string]*export{},
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]struct{}{},
	}
	s.mem.init(opt.MaxMemory)
	return s
}

// ReadOnlyDevice is block.ReadOnlyDevice.
type ReadOnlyDevice = block.ReadOnlyDevice

// AddExport serves dev under name (the empty name is the default
// export) with a human-readable description shown by NBD_OPT_LIST and
// NBD_INFO_DESCRIPTION. A readOnly export refuses writes with EPERM and
// advertises NBD_FLAG_READ_ONLY. The server does not take ownership of
// dev: Shutdown flushes it, the caller closes it afterwards.
func (s *Server) AddExport(name, desc string, dev block.Device, readOnly bool) error {
	if len(name) > MaxStringLen || len(desc) > MaxStringLen {
		return fmt.Errorf("%w: name or description longer than %d bytes", ErrBadExport, MaxStringLen)
	}
	ss := dev.SectorSize()
	if ss <= 0 || ss > 64<<10 || ss&(ss-1) != 0 {
		return fmt.Errorf("%w: %q: sector size %d is not a power of two up to 64 KiB", ErrBadExport, name, ss)
	}
	if dev.Sectors() > (1<<63)/uint64(ss) {
		return fmt.Errorf("%w: %q: %d sectors overflow a 64-bit size", ErrBadExport, name, dev.Sectors())
	}
	if ro, ok := dev.(ReadOnlyDevice); ok && ro.ReadOnly() {
		readOnly = true
	}
	pref := max(4096, uint32(ss))
	maxb := s.opt.MaxBlockSize / uint32(ss) * uint32(ss)
	if maxb < pref {
		maxb = pref
	}
	ex := &export{
		ExportInfo: ExportInfo{Name: name, Description: desc, Size: dev.Sectors() * uint64(ss),
			SectorSize: uint32(ss), Preferred: pref, Maximum: maxb, ReadOnly: readOnly},
		dev:   dev,
		shift: uint(bits.TrailingZeros(uint(ss))),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrServerClosed
	}
	if _, ok := s.exports[name]; ok {
		return fmt.Errorf("%w: %q", ErrExportExists, name)
	}
	s.exports[name] = ex
	return nil
}

// Exports lists the exports sorted by name.
func (s *Server) Exports() []ExportInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ExportInfo, 0, len(s.exports))
	for _, ex := range s.exports {
		out = append(out, ex.ExportInfo)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// lookup resolves a client's export name.
func (s *Server) lookup(name string) *export {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ex, ok := s.exports[name]; ok {
		return ex
	}
	if name == "" && s.opt.DefaultExport != "" {
		return s.exports[s.opt.DefaultExport]
	}
	return nil
}

func (s *Server) sortedExports() []*export {
	s.mu.Lock()
	out := make([]*export, 0, len(s.exports))
	for _, ex := range s.exports {
		out = append(out, ex)
	}
	s.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Serve accepts connections on ln until Shutdown or Close, serving each
// in its own goroutines. A failing connection never stops Serve. It
// returns ErrServerClosed after Shutdown, or the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			// EMFILE, ECONNABORTED and the like: back off and retry.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Warn("nbd: accept failed; retrying", "err", err, "delay", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		c, ok := s.track(nc)
		if !ok {
			nc.Close()
			continue
		}
		go c.serve()
	}
}

// ServeConn serves one already-established connection and returns when
// it ends. The connection counts towards MaxConns and is ended by
// Shutdown like an accepted one.
func (s *Server) ServeConn(nc net.Conn) error {
	c, ok := s.track(nc)
	if !ok {
		nc.Close()
		if s.isClosed() {
			return ErrServerClosed
		}
		return fmt.Errorf("nbd: too many connections (%d)", s.opt.MaxConns)
	}
	return c.serve()
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) track(nc net.Conn) (*conn, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false
	}
	if s.handshaking.Len() >= s.opt.MaxHandshakes {
		// Make room: the oldest handshaking connection goes. Its own
		// goroutine sees the closed socket and untracks it.
		old := s.handshaking.Remove(s.handshaking.Front()).(*conn)
		old.hsElem = nil
		old.raw.Close() // the socket: a TLS close_notify may block
		s.evicted.Add(1)
		s.log.Debug("nbd: handshake slots full; closed the oldest handshaking connection", "remote", old.nc.RemoteAddr(), "limit", s.opt.MaxHandshakes)
	}
	if len(s.conns) >= s.opt.MaxConns {
		s.refused.Add(1)
		s.log.Warn("nbd: connection limit reached; closing", "remote", nc.RemoteAddr(), "limit", s.opt.MaxConns)
		return nil, false
	}
	s.accepted.Add(1)
	c := newConn(s, nc)
	s.conns[c] = struct{}{}
	c.hsElem = s.handshaking.PushBack(c)
	s.connWG.Add(1)
	return c, true
}

func (s *Server) untrack(c *conn) {
	s.mu.Lock()
	delete(s.conns, c)
	if c.hsElem != nil {
		s.handshaking.Remove(c.hsElem)
		c.hsElem = nil
	}
	if c.admitted != nil {
		s.established--
		c.admitted.conns.Add(-1)
		c.stats.addTo(&c.admitted.closed) // under mu: Stats sees it in one place or the other
	}
	idle := len(s.conns) == 0
	s.mu.Unlock()
	s.connWG.Done()
	s.mem.giveBack()
	if idle && s.opt.OnIdle != nil {
		go s.opt.OnIdle()
	}
}

// admit lets c enter the transmission phase on ex, unless
// Options.MaxEstablished connections are already established; it
// reports whether it did.
func (s *Server) admit(c *conn, ex *export) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.opt.MaxEstablished > 0 && s.established >= s.opt.MaxEstablished {
		s.refused.Add(1)
		return false
	}
	s.established++
	ex.conns.Add(1)
	c.admitted = ex
	if c.hsElem != nil {
		s.handshaking.Remove(c.hsElem)
		c.hsElem = nil
	}
	return true
}

// Shutdown stops the server gracefully: it closes the listeners, stops
// every connection from reading further requests, lets the requests in
// flight finish and their replies go out, closes the connections, and
// finally flushes every writable export. If ctx ends first, the
// remaining connections are closed at once (requests executing in a
// device still complete before the flush) and ctx's error is returned
// along with any flush error. The devices are not closed.
func (s *Server) Shutdown(ctx context.Context) error {
	ctxErr, flushErr := s.shutdown(ctx)
	return errors.Join(ctxErr, flushErr)
}

// Close is Shutdown without the grace period: connections are closed at
// once. It returns only flush errors.
func (s *Server) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := s.shutdown(ctx)
	return err
}

func (s *Server) shutdown(ctx context.Context) (ctxErr, flushErr error) {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for c := range s.conns {
		c.beginShutdown()
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.connWG.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		ctxErr = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.raw.Close() // not a TLS close_notify, which may block
		}
		s.mu.Unlock()
		<-done
	}
	var errs []error
	for _, ex := range s.sortedExports() {
		if ex.ReadOnly {
			continue
		}
		if err := ex.dev.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("nbd: flush export %q: %w", ex.Name, err))
		}
	}
	return ctxErr, errors.Join(errs...)
}

// serve runs one connection: handshake, then transmission. Panics are
// contained to the connection.
func (c *conn) serve() (err error) {
	defer c.srv.untrack(c)
	defer c.closeConn()
	defer func() {
		if p := recover(); p != nil {
			containedPanics.Add(1)
			c.log.Error("nbd: panic serving connection", "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("nbd: panic: %v", p)
		}
	}()
	c.log.Info("nbd: connection opened")
	ex, err := c.handshake()
	if err != nil {
		c.logEnd(c.log, "handshake", err)
		return err
	}
	if ex == nil { // NBD_OPT_ABORT
		c.log.Info("nbd: connection closed", "phase", "handshake", "reason", "the client aborted")
		return nil
	}
	err = c.transmit(ex)
	// transmit returns after its workers: c.requests is final.
	// (c.log itself stays: a watchdog tick may still be using it.)
	c.logEnd(c.log.With("export", ex.Name, "requests", c.requests,
		"bytes_read", c.bytesRead, "bytes_written", c.bytesWritten), "transmission", err)
	return err
}

// clientGone reports an error that only says the client went away.
func clientGone(err error) bool {
	return errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

func (c *conn) logEnd(log *slog.Logger, phase string, err error) {
	switch {
	case err == nil || errors.Is(err, io.EOF):
		log.Info("nbd: connection closed", "phase", phase)
	case errors.Is(err, ErrProtocol), phase == "handshake" && !errors.Is(err, ErrServerClosed) && !clientGone(err):
		// A broken protocol, an unknown export, a handshake timeout.
		log.Warn("nbd: closing connection", "phase", phase, "err", err)
	default:
		log.Info("nbd: connection ended", "phase", phase, "err", err)
	}
}
