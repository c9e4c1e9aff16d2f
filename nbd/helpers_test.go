package nbd

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// ioTimeout bounds every network operation of the in-test client.
const ioTimeout = 10 * time.Second

// memDev is an in-memory block.Device with hooks for tests.
type memDev struct {
	ss   int
	mu   sync.RWMutex
	data []byte

	flushes  atomic.Int64
	zeroes   atomic.Int64
	active   atomic.Int64 // device calls executing now
	maxSeen  atomic.Int64 // high-water mark of active
	readOnly bool
	// hook, if set, runs at the start of every data call (op "read",
	// "write", "zero", "flush") and may block or fail it.
	hook func(op string, lba uint64) error
}

func newMemDev(sectorSize int, sectors uint64) *memDev {
	return &memDev{ss: sectorSize, data: make([]byte, uint64(sectorSize)*sectors)}
}

func (d *memDev) SectorSize() int { return d.ss }
func (d *memDev) Sectors() uint64 { return uint64(len(d.data) / d.ss) }
func (d *memDev) Close() error    { return nil }
func (d *memDev) ReadOnly() bool  { return d.readOnly }

func (d *memDev) enter(op string, lba uint64) error {
	n := d.active.Add(1)
	for {
		m := d.maxSeen.Load()
		if n <= m || d.maxSeen.CompareAndSwap(m, n) {
			break
		}
	}
	if d.hook != nil {
		return d.hook(op, lba)
	}
	return nil
}

func (d *memDev) leave() { d.active.Add(-1) }

func (d *memDev) span(n int, lba uint64) (int, error) {
	if n%d.ss != 0 {
		return 0, block.ErrAlignment
	}
	off := lba * uint64(d.ss)
	if lba > d.Sectors() || uint64(n) > uint64(len(d.data))-off {
		return 0, block.ErrOutOfRange
	}
	return int(off), nil
}

func (d *memDev) ReadSectors(p []byte, lba uint64) error {
	defer d.leave()
	if err := d.enter("read", lba); err != nil {
		return err
	}
	off, err := d.span(len(p), lba)
	if err != nil {
		return err
	}
	d.mu.RLock()
	copy(p, d.data[off:])
	d.mu.RUnlock()
	return nil
}

func (d *memDev) WriteSectors(p []byte, lba uint64) error {
	defer d.leave()
	if err := d.enter("write", lba); err != nil {
		return err
	}
	off, err := d.span(len(p), lba)
	if err != nil {
		return err
	}
	if d.readOnly {
		return block.ErrReadOnly
	}
	d.mu.Lock()
	copy(d.data[off:], p)
	d.mu.Unlock()
	return nil
}

func (d *memDev) ZeroSectors(lba, count uint64) error {
	defer d.leave()
	if err := d.enter("zero", lba); err != nil {
		return err
	}
	if count > d.Sectors() {
		return block.ErrOutOfRange
	}
	off, err := d.span(int(count)*d.ss, lba)
	if err != nil {
		return err
	}
	d.zeroes.Add(1)
	d.mu.Lock()
	clear(d.data[off : off+int(count)*d.ss])
	d.mu.Unlock()
	return nil
}

func (d *memDev) Flush() error {
	defer d.leave()
	if err := d.enter("flush", 0); err != nil {
		return err
	}
	d.flushes.Add(1)
	return nil
}

func (d *memDev) snapshot() []byte {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return append([]byte(nil), d.data...)
}

// newBTT returns a BTT with 4096-byte sectors on a RAM device of size bytes.
func newBTT(t testing.TB, size int64) *btt.BTT { return newBTTSectors(t, size, 4096) }

// newBTTSectors returns a Linux-format BTT with lbasize-byte sectors on a
// RAM device of size bytes, closed with the test.
func newBTTSectors(t testing.TB, size int64, lbasize uint32) *btt.BTT {
	t.Helper()
	dev, err := pmem.NewRAM(size)
	if err != nil {
		t.Fatal(err)
	}
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: lbasize})
	if err != nil {
		dev.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		b.Close()
		dev.Close()
	})
	return b
}

// testServer runs srv on a unix socket in a temporary directory; the
// cleanup shuts it down and checks Serve returned ErrServerClosed.
type testServer struct {
	*Server
	sock string
	addr string // "unix:PATH" for logs
}

func (ts *testServer) uri(name string) string {
	return fmt.Sprintf("nbd+unix:///%s?socket=%s", name, ts.sock)
}

// onlyConn returns the server side of the one open connection.
func (ts *testServer) onlyConn(t testing.TB) *conn {
	t.Helper()
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if len(ts.conns) != 1 {
		t.Fatalf("%d server connections, want 1", len(ts.conns))
	}
	for c := range ts.conns {
		return c
	}
	return nil
}

func startServer(t testing.TB, opt Options, exports ...func(*Server)) *testServer {
	t.Helper()
	srv := NewServer(opt)
	for _, add := range exports {
		add(srv)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		select {
		case err := <-done:
			if !errors.Is(err, ErrServerClosed) {
				t.Errorf("Serve returned %v, want ErrServerClosed", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return &testServer{Server: srv, sock: sock, addr: "unix:" + sock}
}

func withExport(name, desc string, dev block.Device, ro bool) func(*Server) {
	return func(s *Server) {
		if err := s.AddExport(name, desc, dev, ro); err != nil {
			panic(err)
		}
	}
}

// client is a minimal NBD client speaking the raw protocol, for tests.
type client struct {
	t          testing.TB
	nc         net.Conn
	br         *bufio.Reader
	structured bool
	size       uint64
	flags      uint16
	pending    map[uint64]uint32 // handle -> read length (simple replies need it)
	mu         sync.Mutex        // guards writes and pending
}

func dial(t testing.TB, ts *testServer) *client {
	t.Helper()
	nc, err := net.DialTimeout("unix", ts.sock, ioTimeout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, nc: nc, br: bufio.NewReader(nc), pending: map[uint64]uint32{}}
}

func (c *client) deadline() { c.nc.SetDeadline(time.Now().Add(ioTimeout)) }

func (c *client) read(n int) ([]byte, error) {
	c.deadline()
	b := make([]byte, n)
	_, err := io.ReadFull(c.br, b)
	return b, err
}

func (c *client) mustRead(n int) []byte {
	c.t.Helper()
	b, err := c.read(n)
	if err != nil {
		c.t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

func (c *client) write(b []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline()
	_, err := c.nc.Write(b)
	return err
}

func (c *client) mustWrite(b []byte) {
	c.t.Helper()
	if err := c.write(b); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// greet reads the server greeting and sends the client flags.
func (c *client) greet(clientFlags uint32) {
	c.t.Helper()
	g := c.mustRead(greetingLen)
	if be.Uint64(g) != magicInit || be.Uint64(g[8:]) != magicOption {
		c.t.Fatalf("bad greeting % x", g)
	}
	if hf := be.Uint16(g[16:]); hf != flagFixedNewstyle|flagNoZeroes {
		c.t.Fatalf("handshake flags %#x", hf)
	}
	c.mustWrite(be.AppendUint32(nil, clientFlags))
}

func (c *client) sendOption(opt uint32, data []byte) {
	c.t.Helper()
	b := be.AppendUint64(nil, magicOption)
	b = be.AppendUint32(b, opt)
	b = be.AppendUint32(b, uint32(len(data)))
	c.mustWrite(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (c *client) readOptReply() optReply {
	c.t.Helper()
	h := c.mustRead(optionReplyHdrLen)
	if be.Uint64(h) != magicOptionReply {
		c.t.Fatalf("option reply magic %#x", be.Uint64(h))
	}
	r := optReply{opt: be.Uint32(h[8:]), typ: be.Uint32(h[12:])}
	r.data = c.mustRead(int(be.Uint32(h[16:])))
	return r
}

func infoData(name string, infos ...uint16) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = be.AppendUint16(b, i)
	}
	return b
}

// goInfo is what NBD_OPT_INFO/GO returned.
type goInfo struct {
	final                uint32 // reply type of the final reply
	size                 uint64
	flags                uint16
	name, desc           string
	minBS, prefBS, maxBS uint32
	haveName, haveBS     bool
	haveDesc, haveExport bool
	finalData            []byte
}

func (c *client) info(opt uint32, name string, infos ...uint16) goInfo {
	c.t.Helper()
	c.sendOption(opt, infoData(name, infos...))
	var g goInfo
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		if r.typ != repInfo {
			g.final, g.finalData = r.typ, r.data
			break
		}
		switch be.Uint16(r.data) {
		case infoExport:
			if len(r.data) != 12 {
				c.t.Fatalf("NBD_INFO_EXPORT of %d bytes", len(r.data))
			}
			g.haveExport, g.size, g.flags = true, be.Uint64(r.data[2:]), be.Uint16(r.data[10:])
		case infoName:
			g.haveName, g.name = true, string(r.data[2:])
		case infoDescription:
			g.haveDesc, g.desc = true, string(r.data[2:])
		case infoBlockSize:
			if len(r.data) != 14 {
				c.t.Fatalf("NBD_INFO_BLOCK_SIZE of %d bytes", len(r.data))
			}
			g.haveBS = true
			g.minBS, g.prefBS, g.maxBS = be.Uint32(r.data[2:]), be.Uint32(r.data[6:]), be.Uint32(r.data[10:])
		}
	}
	if opt == optGo && g.final == repAck {
		c.size, c.flags = g.size, g.flags
	}
	return g
}

// metaData is the data of NBD_OPT_LIST/SET_META_CONTEXT.
func metaData(name string, queries ...string) []byte {
	b := be.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = be.AppendUint32(b, uint32(len(queries)))
	for _, q := range queries {
		b = be.AppendUint32(b, uint32(len(q)))
		b = append(b, q...)
	}
	return b
}

// metaReplies sends a meta-context option and collects its replies: the
// contexts (id and name) and the final reply type.
func (c *client) metaReplies(opt uint32, data []byte) (ctxs map[string]uint32, final uint32) {
	c.t.Helper()
	c.sendOption(opt, data)
	ctxs = map[string]uint32{}
	for {
		r := c.readOptReply()
		if r.opt != opt {
			c.t.Fatalf("reply for option %d, want %d", r.opt, opt)
		}
		if r.typ != repMetaContext {
			return ctxs, r.typ
		}
		if len(r.data) < 4 {
			c.t.Fatalf("NBD_REP_META_CONTEXT of %d bytes", len(r.data))
		}
		ctxs[string(r.data[4:])] = be.Uint32(r.data)
	}
}

// connect does a complete handshake (structured replies if asked) and
// enters transmission on the named export.
func connect(t testing.TB, ts *testServer, name string, structured bool) *client {
	t.Helper()
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	if structured {
		c.sendOption(optStructuredReply, nil)
		if r := c.readOptReply(); r.typ != repAck {
			t.Fatalf("structured reply: type %#x", r.typ)
		}
		c.structured = true
	}
	if g := c.info(optGo, name, infoBlockSize); g.final != repAck {
		t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, g.final, g.finalData)
	}
	return c
}

// send sends one request (with payload for writes) without waiting.
func (c *client) send(typ, flags uint16, handle, off uint64, length uint32, payload []byte) error {
	b := make([]byte, requestLen, requestLen+len(payload))
	putRequest(b, request{flags: flags, typ: typ, handle: handle, offset: off, length: length})
	c.mu.Lock()
	if typ == cmdRead {
		c.pending[handle] = length
	}
	c.mu.Unlock()
	return c.write(append(b, payload...))
}

type reply struct {
	handle  uint64
	errno   Errno
	data    []byte
	msg     string
	ctx     uint32   // NBD_REPLY_TYPE_BLOCK_STATUS: context id
	extents []extent // and its descriptors
}

type extent struct{ length, flags uint32 }

// recv reads one complete reply (all chunks of a structured reply).
func (c *client) recv() (reply, error) {
	h, err := c.read(4)
	if err != nil {
		return reply{}, err
	}
	switch be.Uint32(h) {
	case magicSimpleReply:
		rest, err := c.read(12)
		if err != nil {
			return reply{}, err
		}
		r := reply{errno: Errno(be.Uint32(rest)), handle: be.Uint64(rest[4:])}
		c.mu.Lock()
		n, isRead := c.pending[r.handle]
		delete(c.pending, r.handle)
		c.mu.Unlock()
		if isRead && r.errno == 0 && n > 0 {
			if c.structured {
				return r, fmt.Errorf("simple reply to a read after structured replies were negotiated")
			}
			if r.data, err = c.read(int(n)); err != nil {
				return r, err
			}
		}
		return r, nil
	case magicStructured:
		r := reply{}
		for {
			rest, err := c.read(structuredHdrLen - 4)
			if err != nil {
				return r, err
			}
			flags, typ := be.Uint16(rest), be.Uint16(rest[2:])
			r.handle = be.Uint64(rest[4:])
			plen := be.Uint32(rest[12:])
			if plen > 64<<20 {
				return r, fmt.Errorf("chunk of %d bytes", plen)
			}
			p, err := c.read(int(plen))
			if err != nil {
				return r, err
			}
			switch typ {
			case replyTypeOffsetData:
				r.data = append(r.data, p[8:]...)
			case replyTypeError:
				r.errno = Errno(be.Uint32(p))
				ml := be.Uint16(p[4:])
				r.msg = string(p[6 : 6+ml])
			case replyTypeBlockStatus:
				if len(p) < 12 || (len(p)-4)%8 != 0 {
					return r, fmt.Errorf("block status chunk of %d bytes", len(p))
				}
				r.ctx = be.Uint32(p)
				for q := p[4:]; len(q) > 0; q = q[8:] {
					r.extents = append(r.extents, extent{be.Uint32(q), be.Uint32(q[4:])})
				}
			case replyTypeNone:
			default:
				return r, fmt.Errorf("unexpected chunk type %#x", typ)
			}
			if flags&replyFlagDone != 0 {
				c.mu.Lock()
				delete(c.pending, r.handle)
				c.mu.Unlock()
				return r, nil
			}
			h, err := c.read(4)
			if err != nil {
				return r, err
			}
			if be.Uint32(h) != magicStructured {
				return r, fmt.Errorf("chunk magic %#x", be.Uint32(h))
			}
		}
	default:
		return reply{}, fmt.Errorf("reply magic %#x", be.Uint32(h))
	}
}

// do sends one request and waits for its reply.
func (c *client) do(typ, flags uint16, off uint64, length uint32, payload []byte) reply {
	c.t.Helper()
	handle := uint64(time.Now().UnixNano())
	if err := c.send(typ, flags, handle, off, length, payload); err != nil {
		c.t.Fatalf("send: %v", err)
	}
	r, err := c.recv()
	if err != nil {
		c.t.Fatalf("recv: %v", err)
	}
	if r.handle != handle {
		c.t.Fatalf("reply handle %d, want %d", r.handle, handle)
	}
	return r
}

func (c *client) disconnect() {
	c.send(cmdDisc, 0, 0, 0, 0, nil)
}

// expectClosed asserts that the server closes the connection (EOF or
// reset) within the timeout, discarding anything it still sends.
func (c *client) expectClosed() {
	c.t.Helper()
	c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
	_, err := io.Copy(io.Discard, c.br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection still open after %v", ioTimeout)
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7) ^ seed
	}
	return b
}

func listenUnix(t testing.TB, path string) net.Listener {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func readFull(r io.Reader, b []byte) (int, error) { return io.ReadFull(r, b) }
