package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmemblk"
)

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
