package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
)

var listenRE = regexp.MustCompile(`listening on (\S+)`)

// runServe starts `nvblk serve args...` in-process and waits for the
// URI it prints. The returned stop cancels the command's context and
// returns RunE's error.
func runServe(t *testing.T, args ...string) (uri string, stdout, stderr *testutil.LockedBuffer, stop func() error) {
	t.Helper()
	stdout, stderr = &testutil.LockedBuffer{}, &testutil.LockedBuffer{}
	root := NewRoot()
	root.SetArgs(append([]string{"serve"}, args...))
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.SetIn(strings.NewReader(""))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- root.ExecuteContext(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(20 * time.Second):
				runErr = errors.New("serve did not stop within 20 s")
			}
		})
		return runErr
	}
	t.Cleanup(func() { stop() })
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := listenRE.FindStringSubmatch(stdout.String()); m != nil {
			return m[1], stdout, stderr, stop
		}
		select {
		case err := <-done:
			t.Fatalf("serve exited early: %v\nstdout:\n%s\nstderr:\n%s", err, stdout, stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve printed no address within 20 s\nstdout:\n%s\nstderr:\n%s", stdout, stderr)
		}
	}
}

// nbdConn is a minimal raw NBD client: fixed-newstyle NBD_OPT_GO, then
// simple replies.
type nbdConn struct {
	net.Conn
	br    *bufio.Reader
	size  uint64
	flags uint16
}

var be = binary.BigEndian

// dialURI connects to an nbd:// or nbd+unix:// URI and enters
// transmission on its export.
func dialURI(t *testing.T, uri string) *nbdConn {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	network, addr := "tcp", u.Host
	if u.Scheme == "nbd+unix" {
		network, addr = "unix", u.Query().Get("socket")
	}
	nc, err := net.DialTimeout(network, addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	c := &nbdConn{Conn: nc, br: bufio.NewReader(nc)}
	name := strings.TrimPrefix(u.Path, "/")
	g := make([]byte, 18)
	if _, err := io.ReadFull(c.br, g); err != nil || string(g[:8]) != "NBDMAGIC" || string(g[8:16]) != "IHAVEOPT" {
		t.Fatalf("greeting % x: %v", g, err)
	}
	msg := be.AppendUint32(nil, 1) // NBD_FLAG_C_FIXED_NEWSTYLE
	msg = append(msg, "IHAVEOPT"...)
	msg = be.AppendUint32(msg, 7) // NBD_OPT_GO
	msg = be.AppendUint32(msg, uint32(4+len(name)+2))
	msg = be.AppendUint32(msg, uint32(len(name)))
	msg = append(msg, name...)
	msg = be.AppendUint16(msg, 0)
	if _, err := nc.Write(msg); err != nil {
		t.Fatal(err)
	}
	for {
		h := make([]byte, 20)
		if _, err := io.ReadFull(c.br, h); err != nil {
			t.Fatal(err)
		}
		typ := be.Uint32(h[12:])
		data := make([]byte, be.Uint32(h[16:]))
		if _, err := io.ReadFull(c.br, data); err != nil {
			t.Fatal(err)
		}
		switch {
		case typ == 1: // NBD_REP_ACK
			return c
		case typ == 3 && be.Uint16(data) == 0: // NBD_INFO_EXPORT
			c.size, c.flags = be.Uint64(data[2:]), be.Uint16(data[10:])
		case typ >= 1<<31:
			t.Fatalf("NBD_OPT_GO %q: error reply %#x %q", name, typ, data[:])
		}
	}
}

// cmd sends one request and returns the reply's error and data.
func (c *nbdConn) cmd(t *testing.T, typ uint16, off uint64, length uint32, payload []byte) (uint32, []byte) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	b := be.AppendUint32(nil, 0x25609513)
	b = be.AppendUint16(b, 0)
	b = be.AppendUint16(b, typ)
	b = be.AppendUint64(b, 1)
	b = be.AppendUint64(b, off)
	b = be.AppendUint32(b, length)
	if _, err := c.Write(append(b, payload...)); err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 16)
	if _, err := io.ReadFull(c.br, r); err != nil || be.Uint32(r) != 0x67446698 {
		t.Fatalf("reply % x: %v", r, err)
	}
	errno := be.Uint32(r[4:])
	var data []byte
	if typ == 0 && errno == 0 {
		data = make([]byte, length)
		if _, err := io.ReadFull(c.br, data); err != nil {
			t.Fatal(err)
		}
	}
	return errno, data
}

func TestServeDefaultDevice(t *testing.T) {
	t.Chdir(t.TempDir())
	uri, stdout, stderr, stop := runServe(t, "--listen", "127.0.0.1:0", "--size", "64M")
	if !strings.HasPrefix(uri, "nbd://127.0.0.1:") {
		t.Fatalf("URI %q", uri)
	}
	fi, err := os.Stat(DefaultImage)
	if err != nil || fi.Size() != 64<<20 {
		t.Fatalf("default image: %v %v", err, fi)
	}
	out := stdout.String()
	port := strings.TrimPrefix(uri, "nbd://127.0.0.1:")
	for _, want := range []string{
		"nbdinfo '" + uri + "'",
		"qemu-img info '" + uri + "'",
		"nbd-client 127.0.0.1 " + port + " /dev/nbd0 -b 4096",
		"read-write",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if !strings.Contains(stderr.String(), "created nvblk.img") {
		t.Errorf("stderr: %s", stderr)
	}

	c := dialURI(t, uri)
	if c.flags&2 != 0 || c.size == 0 || c.size%4096 != 0 {
		t.Fatalf("export: size %d flags %#x", c.size, c.flags)
	}
	p := bytes.Repeat([]byte("nvblk!!!"), 512)
	if errno, _ := c.cmd(t, 1, 8192, 4096, p); errno != 0 {
		t.Fatalf("write: errno %d", errno)
	}
	if errno, got := c.cmd(t, 0, 8192, 4096, nil); errno != 0 || !bytes.Equal(got, p) {
		t.Fatalf("read back: errno %d", errno)
	}
	if errno, _ := c.cmd(t, 0, 100, 4096, nil); errno != 22 {
		t.Errorf("misaligned read: errno %d, want EINVAL", errno)
	}
	// A second, concurrent client.
	c2 := dialURI(t, uri)
	if errno, got := c2.cmd(t, 0, 8192, 4096, nil); errno != 0 || !bytes.Equal(got, p) {
		t.Fatalf("second client: errno %d", errno)
	}
	// Stop while a client is still connected: in-flight work finishes.
	if err := stop(); err != nil {
		t.Fatalf("serve: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr.String(), "stopped") {
		t.Errorf("stderr: %s", stderr)
	}

	// The data is in the image.
	bd, _, dev, err := openBlock(DefaultImage, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	defer bd.Close()
	got := make([]byte, 4096)
	if err := bd.ReadSectors(got, 2); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("image content: %v", err)
	}
}

func TestServeUnixSocketReadOnlyNamed(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	sock := filepath.Join(dir, "nbd.sock")
	// A stale socket from a dead server is replaced.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	uri, stdout, stderr, stop := runServe(t, "--socket", sock, "--read-only", "--size", "32M", "--export-name", "disk0", img)
	if want := "nbd+unix:///disk0?socket=" + sock; uri != want {
		t.Fatalf("URI %q, want %q", uri, want)
	}
	if out := stdout.String(); !strings.Contains(out, "nbd-client -unix "+sock+" /dev/nbd0 -b 4096 -N disk0") ||
		!strings.Contains(out, "read-only") {
		t.Errorf("output:\n%s", out)
	}
	c := dialURI(t, uri)
	if c.flags&2 == 0 {
		t.Errorf("read-only flag missing: %#x", c.flags)
	}
	if errno, _ := c.cmd(t, 1, 0, 4096, make([]byte, 4096)); errno != 1 {
		t.Errorf("write to a read-only export: errno %d, want EPERM", errno)
	}
	// The default (empty) name selects the export too.
	d := dialURI(t, "nbd+unix:///?socket="+sock)
	if errno, _ := d.cmd(t, 0, 0, 4096, nil); errno != 0 {
		t.Errorf("read via default name: errno %d", errno)
	}
	if err := stop(); err != nil {
		t.Fatalf("serve: %v\n%s", err, stderr)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if fi, err := os.Stat(img); err != nil || fi.Size() != 32<<20 {
		t.Errorf("created image: %v %v", err, fi)
	}
}

func TestServeUsageErrors(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"serve", "--listen", "127.0.0.1:0", "--socket", filepath.Join(dir, "s"), filepath.Join(dir, "a")},
		{"serve", "--size", "lots", filepath.Join(dir, "b")},
		{"serve", "--listen", "no-port", filepath.Join(dir, "c")},
		{"serve", "a", "b"},
	} {
		var out, errb bytes.Buffer
		if code := Main(args, strings.NewReader(""), &out, &errb); code != 16 {
			t.Errorf("%v: exit %d, want 16\n%s", args, code, errb.String())
		}
	}
	// A live server's socket is not stolen.
	sock := filepath.Join(dir, "live.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var out, errb bytes.Buffer
	if code := Main([]string{"serve", "--socket", sock, "--size", "32M", filepath.Join(dir, "d")}, strings.NewReader(""), &out, &errb); code == 0 ||
		!strings.Contains(errb.String(), "another server") {
		t.Errorf("serve on a live socket: exit %d, %s", code, errb.String())
	}
}

// TestServeSignal runs the real binary and stops it with SIGTERM and
// SIGINT: it exits 0, and what it acknowledged is in the image.
func TestServeSignal(t *testing.T) {
	goTool := testutil.NeedTool(t, "go")
	dir := t.TempDir()
	bin := filepath.Join(dir, "nvblk")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	build := exec.CommandContext(ctx, goTool, "build", "-o", bin, "./cmd/nvblk")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	img := filepath.Join(dir, "sig.img")
	for i, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		sock := filepath.Join(dir, fmt.Sprintf("s%d.sock", i))
		cmd := exec.CommandContext(ctx, bin, "serve", "--socket", sock, "--size", "32M", img)
		var stdout, stderr testutil.LockedBuffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.WaitDelay = 5 * time.Second
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		waited := make(chan error, 1)
		go func() { waited <- cmd.Wait() }()
		var uri string
		for deadline := time.Now().Add(20 * time.Second); uri == ""; {
			if m := listenRE.FindStringSubmatch(stdout.String()); m != nil {
				uri = m[1]
				break
			}
			if time.Now().After(deadline) {
				cmd.Process.Kill()
				t.Fatalf("no address printed\n%s\n%s", stdout.String(), stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		c := dialURI(t, uri)
		p := bytes.Repeat([]byte{byte(0x30 + i)}, 4096)
		if errno, _ := c.cmd(t, 1, uint64(i)*4096, 4096, p); errno != 0 {
			t.Fatalf("write: errno %d", errno)
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-waited:
			if err != nil {
				t.Fatalf("%v: exit %v\n%s", sig, err, stderr.String())
			}
		case <-time.After(30 * time.Second):
			cmd.Process.Kill()
			t.Fatalf("%v: server still running", sig)
		}
		if !strings.Contains(stderr.String(), "stopped") {
			t.Errorf("%v: stderr %s", sig, stderr.String())
		}
	}
	bd, _, dev, err := openBlock(img, true)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	defer bd.Close()
	got := make([]byte, 8192)
	if err := bd.ReadSectors(got, 0); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got[:4096], bytes.Repeat([]byte{0x30}, 4096)) || !bytes.Equal(got[4096:], bytes.Repeat([]byte{0x31}, 4096)) {
		t.Fatal("acknowledged writes are missing from the image")
	}
}

// TestServeNbdinfo checks the printed connect line with the real tool.
func TestServeNbdinfo(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	dir := t.TempDir()
	uri, _, _, stop := runServe(t, "--socket", filepath.Join(dir, "s.sock"), "--size", "32M", filepath.Join(dir, "x.img"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nbdinfo, uri)
	cmd.Env = []string{"PATH=/usr/bin:/bin"}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "block_size_minimum: 4096") || !strings.Contains(string(out), "can_multi_conn: true") {
		t.Errorf("nbdinfo: %v\n%s", err, out)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}
