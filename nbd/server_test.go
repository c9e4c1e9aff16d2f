package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmemblk"
)

func TestHandshakeGoInfo(t *testing.T) {
	dev := newMemDev(4096, 256)
	ts := startServer(t, Options{}, withExport("disk", "a test disk", dev, false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)

	g := c.info(optInfo, "disk", infoName, infoDescription, infoBlockSize)
	if g.final != repAck || !g.haveExport {
		t.Fatalf("NBD_OPT_INFO: final %#x, export info %v", g.final, g.haveExport)
	}
	if g.size != 256*4096 {
		t.Errorf("size %d", g.size)
	}
	want := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero | FlagCanMultiConn | FlagSendCache
	if g.flags != want {
		t.Errorf("flags %#x, want %#x", g.flags, want)
	}
	if !g.haveName || g.name != "disk" || !g.haveDesc || g.desc != "a test disk" {
		t.Errorf("name %q (%v) desc %q (%v)", g.name, g.haveName, g.desc, g.haveDesc)
	}
	if !g.haveBS || g.minBS != 4096 || g.prefBS != 4096 || g.maxBS != 32<<20 {
		t.Errorf("block sizes %d/%d/%d", g.minBS, g.prefBS, g.maxBS)
	}

	// Structured replies add SEND_DF; NBD_OPT_GO then enters transmission.
	c.sendOption(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("structured: %#x", r.typ)
	}
	c.structured = true
	g = c.info(optGo, "disk")
	if g.final != repAck || g.flags != want|FlagSendDF || !g.haveBS {
		t.Fatalf("NBD_OPT_GO: final %#x flags %#x block size sent %v", g.final, g.flags, g.haveBS)
	}
	if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || len(r.data) != 4096 {
		t.Fatalf("read after GO: %v, %d bytes", r.errno, len(r.data))
	}
	c.disconnect()
	c.expectClosed()
}

func TestBlockSizes512(t *testing.T) {
	ts := startServer(t, Options{MaxBlockSize: 1<<20 + 100}, withExport("", "", newMemDev(512, 100), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle)
	g := c.info(optInfo, "", infoBlockSize)
	if g.minBS != 512 || g.prefBS != 4096 || g.maxBS != 1<<20 {
		t.Errorf("block sizes %d/%d/%d, want 512/4096/1048576", g.minBS, g.prefBS, g.maxBS)
	}
}

func TestExportNameOption(t *testing.T) {
	dev := newMemDev(512, 64)
	ts := startServer(t, Options{}, withExport("x", "", dev, true))
	for _, noZeroes := range []bool{false, true} {
		c := dial(t, ts)
		cf := clientFixedNewstyle
		if noZeroes {
			cf |= clientNoZeroes
		}
		c.greet(cf)
		c.sendOption(optExportName, []byte("x"))
		n := 10
		if !noZeroes {
			n += zeroPadLen
		}
		b := c.mustRead(n)
		if be.Uint64(b) != 64*512 {
			t.Errorf("size %d", be.Uint64(b))
		}
		if f := be.Uint16(b[8:]); f != FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn|FlagSendCache {
			t.Errorf("flags %#x", f)
		}
		if !noZeroes && !bytes.Equal(b[10:], make([]byte, zeroPadLen)) {
			t.Errorf("padding not zero")
		}
		// Transmission works right away (simple replies).
		if r := c.do(cmdRead, 0, 512, 1024, nil); r.errno != 0 || len(r.data) != 1024 {
			t.Fatalf("read: %v", r.errno)
		}
		c.disconnect()
		c.expectClosed()
	}
	// An unknown name cannot be refused with an error: the server closes.
	c := dial(t, ts)
	c.greet(clientFixedNewstyle)
	c.sendOption(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestListAndDefaultExport(t *testing.T) {
	a, b := newMemDev(512, 8), newMemDev(4096, 8)
	ts := startServer(t, Options{DefaultExport: "b"},
		withExport("a", "first", a, false), withExport("b", "second", b, false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)

	c.sendOption(optList, nil)
	var got []string
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("reply type %#x", r.typ)
		}
		n := be.Uint32(r.data)
		got = append(got, string(r.data[4:4+n])+"="+string(r.data[4+n:]))
	}
	if strings.Join(got, ",") != "a=first,b=second" {
		t.Errorf("list: %v", got)
	}
	if ex := ts.Exports(); len(ex) != 2 || ex[0].Name != "a" || ex[1].SectorSize != 4096 {
		t.Errorf("Exports() = %+v", ex)
	}

	c.sendOption(optList, []byte{1})
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("LIST with data: %#x", r.typ)
	}
	// The empty name resolves to the default export "b"; its canonical
	// name is reported.
	g := c.info(optInfo, "", infoName)
	if g.final != repAck || g.name != "b" || g.minBS != 4096 {
		t.Errorf("default export: final %#x name %q min %d", g.final, g.name, g.minBS)
	}
	g = c.info(optInfo, "zzz")
	if g.final != repErrUnknown || g.haveExport {
		t.Errorf("unknown export: %#x", g.final)
	}
	if err := ts.AddExport("a", "", a, false); !errors.Is(err, ErrExportExists) {
		t.Errorf("duplicate AddExport: %v", err)
	}
}

func TestUnsupportedOptionsAndAbort(t *testing.T) {
	ts := startServer(t, Options{}, withExport("", "", newMemDev(512, 8), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle)
	for _, opt := range []uint32{optStartTLS, 11, 4, 99, 0xffffffff} { // 11: NBD_OPT_EXTENDED_HEADERS
		c.sendOption(opt, []byte("some data"))
		if r := c.readOptReply(); r.typ != repErrUnsup || r.opt != opt {
			t.Errorf("option %d: reply %#x for %d", opt, r.typ, r.opt)
		}
	}
	c.sendOption(optStructuredReply, []byte{0})
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("STRUCTURED_REPLY with data: %#x", r.typ)
	}
	// Malformed NBD_OPT_GO data gets NBD_REP_ERR_INVALID, not a disconnect.
	for _, data := range [][]byte{nil, {0, 0, 0}, {0, 0, 0, 9, 'a', 0, 0}, {0, 0, 0, 0, 0, 2, 0, 1}} {
		c.sendOption(optGo, data)
		if r := c.readOptReply(); r.typ != repErrInvalid {
			t.Errorf("GO %x: %#x", data, r.typ)
		}
	}
	c.sendOption(optAbort, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Errorf("abort: %#x", r.typ)
	}
	c.expectClosed()
}

func TestReadWriteTrimZeroFlush(t *testing.T) {
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			dev := newMemDev(4096, 64)
			ts := startServer(t, Options{}, withExport("", "", dev, false))
			c := connect(t, ts, "", structured)

			p := pattern(8*4096, 3)
			if r := c.do(cmdWrite, 0, 4096, uint32(len(p)), p); r.errno != 0 {
				t.Fatalf("write: %v", r.errno)
			}
			if r := c.do(cmdRead, 0, 4096, uint32(len(p)), nil); r.errno != 0 || !bytes.Equal(r.data, p) {
				t.Fatalf("read back: %v, equal %v", r.errno, bytes.Equal(r.data, p))
			}
			if !bytes.Equal(dev.snapshot()[4096:4096+len(p)], p) {
				t.Fatal("device does not hold the written data")
			}
			f0 := dev.flushes.Load()
			if r := c.do(cmdWrite, cmdFlagFUA, 0, 4096, p[:4096]); r.errno != 0 {
				t.Fatalf("FUA write: %v", r.errno)
			}
			if dev.flushes.Load() != f0+1 {
				t.Errorf("FUA write did not flush")
			}
			if r := c.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 || dev.flushes.Load() != f0+2 {
				t.Errorf("flush: %v, %d flushes", r.errno, dev.flushes.Load()-f0)
			}
			if r := c.do(cmdTrim, 0, 4096, 2*4096, nil); r.errno != 0 {
				t.Fatalf("trim: %v", r.errno)
			}
			if r := c.do(cmdWriteZeroes, cmdFlagNoHole|cmdFlagFUA, 3*4096, 4096, nil); r.errno != 0 {
				t.Fatalf("write zeroes: %v", r.errno)
			}
			r := c.do(cmdRead, 0, 0, 5*4096, nil)
			want := append(append(append([]byte(nil), p[:4096]...), make([]byte, 3*4096)...), p[3*4096:4*4096]...)
			if r.errno != 0 || !bytes.Equal(r.data, want) {
				t.Fatalf("after trim/zero: %v, equal %v", r.errno, bytes.Equal(r.data, want))
			}
			if dev.zeroes.Load() != 2 {
				t.Errorf("%d ZeroSectors calls, want 2", dev.zeroes.Load())
			}
			// Zero-length requests are harmless.
			if r := c.do(cmdRead, 0, 4096, 0, nil); r.errno != 0 || len(r.data) != 0 {
				t.Errorf("zero-length read: %v", r.errno)
			}
			if r := c.do(cmdWrite, 0, 4096, 0, nil); r.errno != 0 {
				t.Errorf("zero-length write: %v", r.errno)
			}
			// The whole export at once, then at the very end.
			if r := c.do(cmdRead, 0, 0, 64*4096, nil); r.errno != 0 || len(r.data) != 64*4096 {
				t.Errorf("whole-export read: %v", r.errno)
			}
			if r := c.do(cmdWrite, 0, 63*4096, 4096, p[:4096]); r.errno != 0 {
				t.Errorf("last-sector write: %v", r.errno)
			}
			c.disconnect()
			c.expectClosed()
		})
	}
}

// TestRequestErrors: every malformed or refused request gets an error
// reply and the connection carries on.
func TestRequestErrors(t *testing.T) {
	failing := newMemDev(512, 64)
	failing.hook = func(op string, lba uint64) error {
		if lba == 13 {
			return &btt.SectorError{Op: op, LBA: lba, Err: pmem.ErrMedia}
		}
		return nil
	}
	ro := newMemDev(512, 64)
	for _, structured := range []bool{false, true} {
		t.Run(fmt.Sprintf("structured=%v", structured), func(t *testing.T) {
			ts := startServer(t, Options{MaxBlockSize: 64 << 10},
				withExport("", "", failing, false), withExport("ro", "", ro, true))
			c := connect(t, ts, "", structured)
			w := pattern(512, 1)
			cases := []struct {
				name       string
				typ, flags uint16
				off        uint64
				length     uint32
				payload    []byte
				want       Errno
			}{
				{"unaligned offset read", cmdRead, 0, 100, 512, nil, EINVAL},
				{"unaligned length read", cmdRead, 0, 0, 100, nil, EINVAL},
				{"unaligned write", cmdWrite, 0, 1, 512, w, EINVAL},
				{"read past end", cmdRead, 0, 63 * 512, 1024, nil, EINVAL},
				{"read far past end", cmdRead, 0, 1 << 62, 512, nil, EINVAL},
				{"offset overflow", cmdRead, 0, ^uint64(0) - 511, 1024, nil, EINVAL},
				{"write past end", cmdWrite, 0, 64 * 512, 512, w, EINVAL},
				{"trim past end", cmdTrim, 0, 0, 65 * 512, nil, EINVAL},
				{"zero past end", cmdWriteZeroes, 0, 64 * 512, 512, nil, EINVAL},
				{"read over maximum", cmdRead, 0, 0, 128 << 10, nil, EINVAL},
				{"unknown command", 42, 0, 0, 512, nil, EINVAL},
				{"cache past end", cmdCache, 0, 63 * 512, 1024, nil, EINVAL},
				{"unaligned cache", cmdCache, 0, 100, 512, nil, EINVAL},
				{"block status without contexts", cmdBlockStatus, 0, 0, 512, nil, EINVAL},
				{"unknown flag", cmdRead, 1 << 9, 0, 512, nil, EINVAL},
				{"fast zero on a device without fast zeroing", cmdWriteZeroes, cmdFlagFastZero, 0, 512, nil, ENOTSUP},
				{"fast zero on trim", cmdTrim, cmdFlagFastZero, 0, 512, nil, EINVAL},
				{"no-hole on write", cmdWrite, cmdFlagNoHole, 0, 512, w, EINVAL},
				{"media error read", cmdRead, 0, 13 * 512, 512, nil, EIO},
				{"media error write", cmdWrite, 0, 13 * 512, 1024, append(w, w...), EIO},
			}
			for _, tc := range cases {
				r := c.do(tc.typ, tc.flags, tc.off, tc.length, tc.payload)
				if r.errno != tc.want {
					t.Errorf("%s: errno %d, want %d", tc.name, r.errno, tc.want)
				}
				if len(r.data) != 0 {
					t.Errorf("%s: %d data bytes with an error", tc.name, len(r.data))
				}
				if structured && r.msg == "" {
					t.Errorf("%s: structured error without a message", tc.name)
				}
			}
			// Still in step: a good request works.
			if r := c.do(cmdWrite, 0, 0, 512, w); r.errno != 0 {
				t.Fatalf("write after errors: %v", r.errno)
			}

			rc := connect(t, ts, "ro", structured)
			if rc.flags&FlagReadOnly == 0 || rc.flags&(FlagSendTrim|FlagSendWriteZeroes|FlagSendFUA|FlagSendFastZero) != 0 {
				t.Errorf("read-only export flags %#x", rc.flags)
			}
			for _, typ := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
				var p []byte
				if typ == cmdWrite {
					p = w
				}
				if r := rc.do(typ, 0, 0, 512, p); r.errno != EPERM {
					t.Errorf("command %d on read-only export: %v, want EPERM", typ, r.errno)
				}
			}
			if r := rc.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
				t.Errorf("read on read-only export: %v", r.errno)
			}
			// CACHE is a hint, fine on both exports, over the whole
			// device (more than the maximum block size).
			for _, cc := range []*client{c, rc} {
				if cc.flags&FlagSendCache == 0 {
					t.Errorf("SEND_CACHE not advertised (flags %#x)", cc.flags)
				}
				if r := cc.do(cmdCache, 0, 0, 64*512, nil); r.errno != 0 || len(r.data) != 0 {
					t.Errorf("cache: %v, %d data bytes", r.errno, len(r.data))
				}
			}
			if r := rc.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
				t.Errorf("flush on read-only export: %v", r.errno)
			}
		})
	}
}

func TestErrnoOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Errno
	}{
		{nil, 0},
		{&btt.RangeError{LBA: 1, Count: 2, Sectors: 1}, EINVAL},
		{fmt.Errorf("x: %w", block.ErrOutOfRange), EINVAL},
		{&pmem.RangeError{}, EINVAL},
		{btt.ErrAlignment, EINVAL},
		{btt.ErrReadOnly, EPERM},
		{&btt.SectorError{Op: "write", Err: btt.ErrReadOnly}, EPERM},
		{pmem.ErrReadOnly, EPERM},
		{block.ErrReadOnly, EPERM},
		{&btt.SectorError{Op: "read", Err: pmem.ErrMedia}, EIO},
		{btt.ErrClosed, EIO},
		{errors.New("anything"), EIO},
		{fmt.Errorf("wrapped %w", ENOSPC), ENOSPC},
		// A pmemblk pool's errors reached clients as EIO while ErrnoOf
		// knew only the BTT's sentinels.
		{pmemblk.ErrOutOfRange, EINVAL},
		{fmt.Errorf("pool: %w", pmemblk.ErrAlignment), EINVAL},
		{pmemblk.ErrReadOnly, EPERM},
		{pmemblk.ErrIO, EIO},
	} {
		if got := ErrnoOf(tc.err); got != tc.want {
			t.Errorf("ErrnoOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

// TestPipelinedOutOfOrder sends many requests before reading any reply;
// a slow request must not hold back the others.
func TestPipelinedOutOfOrder(t *testing.T) {
	release := make(chan struct{})
	dev := newMemDev(512, 1024)
	dev.hook = func(op string, lba uint64) error {
		if lba == 0 && op == "read" {
			select {
			case <-release:
			case <-time.After(ioTimeout):
			}
		}
		return nil
	}
	ts := startServer(t, Options{Workers: 4}, withExport("", "", dev, false))
	c := connect(t, ts, "", true)
	const n = 50
	for i := uint64(0); i < n; i++ {
		if i%2 == 1 {
			if err := c.send(cmdWrite, 0, i, i*512, 512, pattern(512, byte(i))); err != nil {
				t.Fatal(err)
			}
		} else if err := c.send(cmdRead, 0, i, i*512, 512, nil); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint64]bool{}
	for len(seen) < n-1 {
		r, err := c.recv()
		if err != nil {
			t.Fatal(err)
		}
		if r.errno != 0 || seen[r.handle] || r.handle >= n {
			t.Fatalf("reply %d: errno %v, duplicate %v", r.handle, r.errno, seen[r.handle])
		}
		if r.handle == 0 {
			t.Fatal("the blocked read was answered first")
		}
		seen[r.handle] = true
	}
	close(release)
	r, err := c.recv()
	if err != nil || r.handle != 0 || len(r.data) != 512 {
		t.Fatalf("last reply: %v handle %d", err, r.handle)
	}
	if m := dev.maxSeen.Load(); m > 4 {
		t.Errorf("%d device calls at once with 4 workers", m)
	}
}

// TestInFlightBound: with every worker blocked, the reader stops after
// MaxInFlight requests; nothing is lost when the device resumes.
func TestInFlightBound(t *testing.T) {
	gate := make(chan struct{})
	var mu sync.Mutex
	started := 0
	dev := newMemDev(4096, 1024)
	dev.hook = func(op string, lba uint64) error {
		mu.Lock()
		started++
		mu.Unlock()
		<-gate
		return nil
	}
	ts := startServer(t, Options{Workers: 2, MaxInFlight: 4}, withExport("", "", dev, false))
	c := connect(t, ts, "", false)
	const n = 40
	go func() {
		for i := uint64(0); i < n; i++ {
			c.send(cmdWrite, 0, i, i*4096, 4096, pattern(4096, byte(i)))
		}
	}()
	time.Sleep(200 * time.Millisecond)
	srvConn := ts.onlyConn(t)
	srvConn.budget.mu.Lock()
	inflight := srvConn.budget.n
	srvConn.budget.mu.Unlock()
	mu.Lock()
	s := started
	mu.Unlock()
	if inflight > 4 || s > 2 {
		t.Errorf("%d requests in flight (max 4), %d device calls started (2 workers)", inflight, s)
	}
	close(gate)
	for i := 0; i < n; i++ {
		if r, err := c.recv(); err != nil || r.errno != 0 {
			t.Fatalf("reply %d: %v %v", i, err, r.errno)
		}
	}
	for i := uint64(0); i < n; i++ {
		if !bytes.Equal(dev.snapshot()[i*4096:(i+1)*4096], pattern(4096, byte(i))) {
			t.Fatalf("sector %d not written", i)
		}
	}
}

// TestMultiConn: a write acknowledged on one connection is visible to a
// read on another, and FLUSH on either reaches the shared device.
func TestMultiConn(t *testing.T) {
	b := newBTT(t, 32<<20)
	ts := startServer(t, Options{}, withExport("", "", b, false))
	c1 := connect(t, ts, "", true)
	c2 := connect(t, ts, "", false)
	var wg sync.WaitGroup
	for k, c := range []*client{c1, c2} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				lba := uint64(k*100 + i)
				p := pattern(4096, byte(i+k))
				if r := c.do(cmdWrite, 0, lba*4096, 4096, p); r.errno != 0 {
					t.Errorf("write: %v", r.errno)
					return
				}
			}
		}()
	}
	wg.Wait()
	if r := c2.do(cmdFlush, 0, 0, 0, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	for k, c := range []*client{c2, c1} { // read the other connection's writes
		for i := 0; i < 50; i++ {
			lba := uint64(k*100 + i)
			r := c.do(cmdRead, 0, lba*4096, 4096, nil)
			if r.errno != 0 || !bytes.Equal(r.data, pattern(4096, byte(i+k))) {
				t.Fatalf("conn %d lba %d: %v", k, lba, r.errno)
			}
		}
	}
}

// TestShutdownDrainsInFlight: Shutdown waits for a request executing in
// the device, delivers its reply, closes the connection, then flushes.
func TestShutdownDrainsInFlight(t *testing.T) {
	gate := make(chan struct{})
	entered := make(chan struct{}, 1)
	dev := newMemDev(4096, 16)
	dev.hook = func(op string, lba uint64) error {
		if op == "write" {
			entered <- struct{}{}
			<-gate
		}
		return nil
	}
	srv := NewServer(Options{})
	if err := srv.AddExport("", "", dev, false); err != nil {
		t.Fatal(err)
	}
	ts := &testServer{Server: srv}
	ts.sock = t.TempDir() + "/s"
	ln := listenUnix(t, ts.sock)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	c := connect(t, ts, "", false)
	idle := connect(t, ts, "", true) // an idle connection must not hold Shutdown up
	if err := c.send(cmdWrite, 0, 7, 0, 4096, pattern(4096, 9)); err != nil {
		t.Fatal(err)
	}
	<-entered
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- srv.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	if dev.flushes.Load() != 0 {
		t.Error("flushed before the in-flight write finished")
	}
	close(gate)
	r, err := c.recv()
	if err != nil || r.handle != 7 || r.errno != 0 {
		t.Fatalf("in-flight write reply: %v %+v", err, r)
	}
	c.expectClosed()
	idle.expectClosed()
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if dev.flushes.Load() != 1 {
		t.Errorf("%d flushes at shutdown, want 1", dev.flushes.Load())
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Errorf("Serve: %v", err)
	}
	if err := srv.AddExport("late", "", dev, false); !errors.Is(err, ErrServerClosed) {
		t.Errorf("AddExport after shutdown: %v", err)
	}
}

// TestShutdownDeadline: when the context ends first, connections are
// closed and the context error is returned.
func TestShutdownDeadline(t *testing.T) {
	gate := make(chan struct{})
	defer close(gate)
	dev := newMemDev(4096, 16)
	dev.hook = func(op string, lba uint64) error {
		if op == "read" {
			select {
			case <-gate:
			case <-time.After(300 * time.Millisecond):
			}
		}
		return nil
	}
	srv := NewServer(Options{})
	srv.AddExport("", "", dev, false)
	ts := &testServer{Server: srv, sock: t.TempDir() + "/s"}
	go srv.Serve(listenUnix(t, ts.sock))
	c := connect(t, ts, "", false)
	c.send(cmdRead, 0, 1, 0, 4096, nil)
	time.Sleep(50 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := srv.Shutdown(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Shutdown: %v, want deadline exceeded", err)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("Shutdown took %v", el)
	}
	c.expectClosed()
}

func TestAddExportValidation(t *testing.T) {
	srv := NewServer(Options{})
	if err := srv.AddExport("", "", newMemDev(1000, 4), false); !errors.Is(err, ErrBadExport) {
		t.Errorf("sector size 1000: %v", err)
	}
	if err := srv.AddExport(strings.Repeat("x", MaxStringLen+1), "", newMemDev(512, 4), false); !errors.Is(err, ErrBadExport) {
		t.Errorf("long name: %v", err)
	}
	ro := newMemDev(512, 4)
	ro.readOnly = true
	if err := srv.AddExport("ro", "", ro, false); err != nil {
		t.Fatal(err)
	}
	if ex := srv.Exports(); len(ex) != 1 || !ex[0].ReadOnly {
		t.Errorf("a read-only device must be exported read-only: %+v", ex)
	}
}

// TestBTTExport runs the protocol against a real BTT: data written
// through NBD is what the BTT holds, trim gives the zero state.
func TestBTTExport(t *testing.T) {
	b := newBTT(t, 32<<20)
	ts := startServer(t, Options{}, withExport("", "", b, false))
	c := connect(t, ts, "", true)
	p := pattern(64<<10, 5)
	if r := c.do(cmdWrite, cmdFlagFUA, 1<<20, uint32(len(p)), p); r.errno != 0 {
		t.Fatal(r.errno)
	}
	got := make([]byte, len(p))
	if err := b.ReadSectors(got, (1<<20)/4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("BTT content: %v", err)
	}
	if r := c.do(cmdTrim, 0, 1<<20, 4096, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	if _, st, err := b.MapEntry((1 << 20) / 4096); err != nil || st != btt.MapZero {
		t.Errorf("trimmed sector state %v, %v; want zero", st, err)
	}
	if r := c.do(cmdRead, 0, 1<<20, 8192, nil); r.errno != 0 || !bytes.Equal(r.data[:4096], make([]byte, 4096)) || !bytes.Equal(r.data[4096:], p[4096:8192]) {
		t.Fatalf("read after trim: %v", r.errno)
	}
}

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
