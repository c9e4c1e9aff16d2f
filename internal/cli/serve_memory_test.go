package cli

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// rssAnon reads a process's anonymous resident memory (bytes) from
// /proc/PID/status: the heap, not the mapped image.
func rssAnon(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "RssAnon:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no RssAnon in /proc/%d/status", pid)
}

// TestServeMemoryBudget: 64 clients each ask for two 32 MiB reads and
// read the replies slowly. Without a server-wide bound that is 4 GiB of
// reply buffers; with --max-memory 256M the server's anonymous memory
// stays under the budget plus a fixed overhead, and 10 s after the
// clients are gone it is back under 100 MB.
func TestServeMemoryBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("short: moves 4 GiB through a server process")
	}
	const (
		clients = 64
		reqs    = 2
		reqLen  = 32 << 20
		budget  = 256 << 20
		over    = 128 << 20 // runtime, goroutines, per-connection buffers, the collector's lag
	)
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if _, e, c := runBin(t, nil, "create", "--size", "64M", img); c != 0 {
		t.Fatalf("create: %s", e)
	}
	srv := startServeProc(t, "--socket", filepath.Join(dir, "s.sock"), "--max-memory", "256M", img)
	pid := srv.cmd.Process.Pid
	base, err := rssAnon(pid)
	if err != nil {
		t.Fatal(err)
	}
	var conns []*nbdConn
	for i := 0; i < clients; i++ {
		conns = append(conns, dialURI(t, srv.uri))
	}
	// Sample the server's memory while the clients read.
	var peak int64
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if r, err := rssAnon(pid); err == nil && r > peak {
				peak = r
			}
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	deadline := time.Now().Add(90 * time.Second)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.SetDeadline(deadline)
			var req []byte
			for k := 0; k < reqs; k++ {
				req = be.AppendUint32(req, 0x25609513)
				req = be.AppendUint16(req, 0)
				req = be.AppendUint16(req, 0) // NBD_CMD_READ
				req = be.AppendUint64(req, uint64(i*reqs+k))
				req = be.AppendUint64(req, uint64(k)*(16<<20))
				req = be.AppendUint32(req, reqLen)
			}
			if _, err := c.Write(req); err != nil {
				errs <- err
				return
			}
			buf := make([]byte, 1<<20)
			for k := 0; k < reqs; k++ {
				h := make([]byte, 16)
				if _, err := io.ReadFull(c.br, h); err != nil || be.Uint32(h) != 0x67446698 || be.Uint32(h[4:]) != 0 {
					errs <- fmt.Errorf("client %d: reply % x: %v", i, h, err)
					return
				}
				for left := reqLen; left > 0; left -= len(buf) {
					if _, err := io.ReadFull(c.br, buf[:min(left, len(buf))]); err != nil {
						errs <- fmt.Errorf("client %d: %v", i, err)
						return
					}
					time.Sleep(2 * time.Millisecond) // a slow reader
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, c := range conns {
		c.Close()
	}
	t.Logf("server anonymous memory: %d MiB at start, peak %d MiB with %d clients x %d reads of %d MiB in flight (budget %d MiB)",
		base>>20, peak>>20, clients, reqs, reqLen>>20, budget>>20)
	if peak > budget+over {
		t.Errorf("peak anonymous memory %d MiB, more than the %d MiB budget plus %d MiB", peak>>20, budget>>20, over>>20)
	}
	var after int64
	for end := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if after, err = rssAnon(pid); err != nil {
			t.Fatal(err)
		}
		if after < 100<<20 || time.Now().After(end) {
			break
		}
	}
	t.Logf("server anonymous memory after the clients left: %d MiB", after>>20)
	if after >= 100<<20 {
		t.Errorf("anonymous memory %d MiB 10 s after the clients left, want under 100 MB", after>>20)
	}
}

// TestServeNoDurabilityClaimAfterIOErrors: when the image file is cut
// short under the server, requests fail with EIO, and at the end the
// server says how many failed instead of calling every acknowledged
// write durable.
func TestServeNoDurabilityClaimAfterIOErrors(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if _, e, c := runBin(t, nil, "create", "--size", "32M", img); c != 0 {
		t.Fatalf("create: %s", e)
	}
	srv := startServeProc(t, "--socket", filepath.Join(dir, "s.sock"), img)
	c := dialURI(t, srv.uri)
	if errno, _ := c.cmd(t, 1, 0, 4096, make([]byte, 4096)); errno != 0 {
		t.Fatalf("write before the damage: errno %d", errno)
	}
	if err := os.Truncate(img, 8192); err != nil {
		t.Fatal(err)
	}
	failed := 0
	for lba := uint64(100); lba < 103; lba++ {
		if errno, _ := c.cmd(t, 0, lba*4096, 4096, nil); errno == 5 { // EIO
			failed++
		}
	}
	if failed != 3 {
		t.Fatalf("%d of 3 reads of the truncated image failed with EIO", failed)
	}
	c.Close()
	srv.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-srv.waited:
	case <-time.After(30 * time.Second):
		t.Fatal("serve did not stop")
	}
	e := srv.stderr.String()
	if strings.Contains(e, "durable") || !strings.Contains(e, "3 request(s) failed with I/O errors") {
		t.Errorf("serve's last words after I/O errors:\n%s", e)
	}
}

// TestServeLongSocketPathIsNotUsage: a unix socket path longer than the
// system allows is an operational error (exit 1, naming the bind), not
// a usage error (16): the exit status used to be picked by matching
// "invalid argument" in the message.
func TestServeLongSocketPathIsNotUsage(t *testing.T) {
	dir := t.TempDir()
	long := filepath.Join(dir, strings.Repeat("s", 200)+".sock")
	_, e, code := run(t, nil, "serve", "--socket", long, "--size", "32M", filepath.Join(dir, "img"))
	if code != 1 || !strings.Contains(e, "bind") {
		t.Errorf("serve on a %d-byte socket path: exit %d, %s", len(long), code, e)
	}
	// Real usage errors still exit 16.
	for _, args := range [][]string{{"read", "--lba", "x", "img"}, {"read"}, {"info", "a", "b"}, {"serve", "--bogus"}, {"frobnicate"}} {
		if _, e, code := run(t, nil, args...); code != 16 {
			t.Errorf("nvblk %v: exit %d, want 16 (%s)", args, code, e)
		}
	}
}

// TestSmallImageNoWarning: commands on an image under 8 KiB print no
// "pmem: access out of range" warning (the BTT probe read past the end
// of the device, which the device reports as a caller bug).
func TestSmallImageNoWarning(t *testing.T) {
	img := filepath.Join(t.TempDir(), "small.img")
	if err := os.WriteFile(img, make([]byte, 6144), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"info", img}, {"list", img}, {"read", "--lba", "0", "--count", "1", "--force-raw", img}} {
		_, e, _ := run(t, nil, args...)
		if strings.Contains(e, "out of range") || strings.Contains(e, "WARN") {
			t.Errorf("nvblk %v warns: %s", args, e)
		}
	}
}
