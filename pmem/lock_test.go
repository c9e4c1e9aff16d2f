package pmem_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// The lock tests run a second process: this test binary again, running
// TestLockHelperProcess with the request in its environment. The helper
// opens the image as asked, prints "locked" (or the error), and holds the
// device open until its stdin closes or it is killed.

const lockHelperEnv = "NVBLK_LOCK_HELPER"

// TestLockHelperProcess is the helper's body; it does nothing in a
// normal run.
func TestLockHelperProcess(t *testing.T) {
	spec := os.Getenv(lockHelperEnv)
	if spec == "" {
		return
	}
	// spec: "path mode off len" where mode is rw|ro|rw-window|ro-window.
	f := strings.Fields(spec)
	path, mode := f[0], f[1]
	off, _ := strconv.ParseInt(f[2], 10, 64)
	n, _ := strconv.ParseInt(f[3], 10, 64)
	ro := strings.HasPrefix(mode, "ro")
	window := strings.HasSuffix(mode, "window")
	d, err := pmem.Open(path, pmem.Options{ReadOnly: ro, NoLock: window})
	if err == nil && window {
		var w *pmem.Window
		if w, err = pmem.NewWindow(d, off, n); err == nil {
			err = pmem.Lock(w, 0, n)
		}
	}
	if err != nil {
		fmt.Println("error:", err)
		os.Exit(3)
	}
	if !ro {
		if _, err := d.WriteAt([]byte("helper"), off); err != nil {
			fmt.Println("error:", err)
			os.Exit(3)
		}
	}
	fmt.Println("locked")
	io.Copy(io.Discard, os.Stdin) // hold until the test closes stdin
	d.Close()
	os.Exit(0)
}

// lockHelper is a running helper process.
type lockHelper struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
}

// startLockHelper runs the helper on path and waits for its first line:
// it returns the helper holding its lock, or fails the test with the
// helper's error when wantLocked is set, and returns the error line
// otherwise.
func startLockHelper(t *testing.T, path, mode string, off, n int64) (*lockHelper, string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %s %d %d", lockHelperEnv, path, mode, off, n))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &lockHelper{cmd: cmd, stdin: stdin}
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(out).ReadString('\n')
		line <- strings.TrimSpace(s)
		io.Copy(io.Discard, out)
	}()
	select {
	case l := <-line:
		if l == "locked" {
			t.Cleanup(func() { h.stop() })
			return h, ""
		}
		h.stop()
		return nil, l
	case <-time.After(30 * time.Second):
		h.kill()
		t.Fatal("lock helper did not answer in 30 s")
	}
	return nil, ""
}

func (h *lockHelper) stop() {
	h.stdin.Close()
	done := make(chan struct{})
	go func() { h.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		h.kill()
		<-done
	}
}

func (h *lockHelper) kill() { h.cmd.Process.Signal(syscall.SIGKILL) }

func newImage(t *testing.T, size int64) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, size), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestOpenLocksAcrossProcesses: a writer in another process keeps every
// other open out (writable or read-only); readers share; NoLock gets
// past it; the refusal names the image, the range and the holder.
func TestOpenLocksAcrossProcesses(t *testing.T) {
	const size = 1 << 20
	path := newImage(t, size)
	h, _ := startLockHelper(t, path, "rw", 0, size)
	pid := h.cmd.Process.Pid

	for _, ro := range []bool{false, true} {
		d, err := pmem.Open(path, pmem.Options{ReadOnly: ro})
		if err == nil {
			d.Close()
			t.Fatalf("read-only=%v: a second open of an image open for writing succeeded", ro)
		}
		var le *pmem.LockError
		if !errors.Is(err, pmem.ErrLocked) || !errors.As(err, &le) {
			t.Fatalf("read-only=%v: %v, want a *LockError wrapping ErrLocked", ro, err)
		}
		msg := err.Error()
		for _, want := range []string{path, fmt.Sprintf("bytes 0-%d", size-1), fmt.Sprintf("pid %d", pid), "nothing was written"} {
			if !strings.Contains(msg, want) {
				t.Errorf("read-only=%v: message %q does not name %q", ro, msg, want)
			}
		}
	}
	// NoLock: a caller that coordinates itself (or a forced read-only look).
	d, err := pmem.Open(path, pmem.Options{ReadOnly: true, NoLock: true})
	if err != nil {
		t.Fatalf("NoLock open: %v", err)
	}
	buf := make([]byte, 6)
	if _, err := d.ReadAt(buf, 0); err != nil || string(buf) != "helper" {
		t.Fatalf("NoLock read: %v %q", err, buf)
	}
	d.Close()

	// When the writer is gone, a writer gets in.
	h.stop()
	d, err = pmem.Open(path, pmem.Options{})
	if err != nil {
		t.Fatalf("open after the writer closed: %v", err)
	}
	d.Close()

	// Two readers share; a writer is refused while they read.
	startLockHelper(t, path, "ro", 0, size)
	r, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("second reader: %v", err)
	}
	defer r.Close()
	if _, msg := startLockHelper(t, path, "rw", 0, size); !strings.Contains(msg, "is in use") || !strings.Contains(msg, "for writing") {
		t.Fatalf("writer beside two readers: %q", msg)
	}
}

// TestLockReleasedOnKill: a SIGKILLed holder leaves no lock behind (OFD
// locks die with the descriptor; there is no lock file).
func TestLockReleasedOnKill(t *testing.T) {
	const size = 1 << 16
	path := newImage(t, size)
	h, _ := startLockHelper(t, path, "rw", 0, size)
	if d, err := pmem.Open(path, pmem.Options{}); err == nil {
		d.Close()
		t.Fatal("open beside a live writer succeeded")
	}
	h.kill()
	h.cmd.Wait()
	d, err := pmem.Open(path, pmem.Options{})
	if err != nil {
		t.Fatalf("open after the writer was killed: %v", err)
	}
	d.Close()
	if m, _ := filepath.Glob(filepath.Join(filepath.Dir(path), "*")); len(m) != 1 {
		t.Fatalf("files beside the image: %v", m)
	}
}

// TestLockRanges: two processes each own a disjoint part (partitions);
// a whole-device open, and an open of an overlapping part, are refused
// meanwhile.
func TestLockRanges(t *testing.T) {
	const size = 1 << 20
	path := newImage(t, size)
	startLockHelper(t, path, "rw-window", 0, size/2)
	startLockHelper(t, path, "rw-window", size/2, size/2)
	for _, ro := range []bool{false, true} {
		if d, err := pmem.Open(path, pmem.Options{ReadOnly: ro}); !errors.Is(err, pmem.ErrLocked) {
			if err == nil {
				d.Close()
			}
			t.Fatalf("whole-device open (read-only=%v) beside two partition writers: %v", ro, err)
		}
	}
	_, msg := startLockHelper(t, path, "ro-window", size/2-4096, 8192)
	if !strings.Contains(msg, "is in use") {
		t.Fatalf("overlapping window: %q", msg)
	}
	// In this process: Lock on a window of a NoLock open.
	d, err := pmem.Open(path, pmem.Options{NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	w, err := pmem.NewWindow(d, size/4, size/2)
	if err != nil {
		t.Fatal(err)
	}
	if err := pmem.Lock(w, 0, 4096); !errors.Is(err, pmem.ErrLocked) {
		t.Fatalf("Lock on a window inside another's partition: %v", err)
	}
	if err := pmem.Lock(w, size/2, 1); !errors.Is(err, pmem.ErrOutOfRange) {
		t.Fatalf("Lock past the window: %v", err)
	}
}

// TestLockSameProcess: OFD locks belong to the open, so a second
// writable Open in one process is refused too.
func TestLockSameProcess(t *testing.T) {
	path := newImage(t, 1<<16)
	d, err := pmem.Open(path, pmem.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = pmem.Open(path, pmem.Options{})
	if !errors.Is(err, pmem.ErrLocked) || !strings.Contains(err.Error(), "this process") {
		t.Fatalf("second open in the same process: %v", err)
	}
	d.Close()
	d, err = pmem.Open(path, pmem.Options{})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	d.Close()
	ram, err := pmem.NewRAM(1 << 16)
	if err != nil {
		t.Fatal(err)
	}
	defer ram.Close()
	if err := pmem.Lock(ram, 0, 1<<16); err != nil {
		t.Fatalf("Lock on RAM: %v", err)
	}
}

// TestLockKeepsPMDKOut: a whole-device open holds flock too, which is
// what PMDK's tools take (flock LOCK_EX|LOCK_NB), and is refused while
// one of them holds it.
func TestLockKeepsPMDKOut(t *testing.T) {
	path := newImage(t, 1<<16)
	d, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); !errors.Is(err, syscall.EWOULDBLOCK) {
		t.Fatalf("flock(LOCK_EX) beside a read-only open: %v, want EWOULDBLOCK", err)
	}
	d.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		t.Fatalf("flock after close: %v", err)
	}
	if d, err := pmem.Open(path, pmem.Options{ReadOnly: true}); !errors.Is(err, pmem.ErrLocked) {
		if err == nil {
			d.Close()
		}
		t.Fatalf("open beside a flock(LOCK_EX) holder: %v", err)
	}
}

// TestLockThroughWrappers: a device that wraps a Window (as the command
// line's partition and namespace targets do) is locked through it.
func TestLockThroughWrappers(t *testing.T) {
	path := newImage(t, 1<<16)
	d, err := pmem.Open(path, pmem.Options{NoLock: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	w, err := pmem.NewWindow(d, 4096, 8192)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := struct{ *pmem.Window }{w}
	if err := pmem.Lock(wrapped, 0, 8192); err != nil {
		t.Fatal(err)
	}
	if _, msg := startLockHelper(t, path, "rw-window", 8192, 4096); !strings.Contains(msg, "is in use") || !strings.Contains(msg, "bytes 8192-12287") {
		t.Fatalf("a writer of the locked bytes: %q", msg)
	}
}

// TestLockBlockDevice: the lock works on a block device (a loop device
// over a file) as on a regular file: a second writer is refused, a
// reader too, and the lock goes with the first open.
func TestLockBlockDevice(t *testing.T) {
	losetup := testutil.NeedTool(t, "losetup")
	if os.Geteuid() != 0 {
		if testutil.InCI() {
			t.Fatal("CI runs as root; loop devices need it")
		}
		t.Skip("loop devices need root")
	}
	img := newImage(t, 4<<20)
	out, err := exec.Command(losetup, "--find", "--show", img).CombinedOutput()
	if err != nil {
		if testutil.InCI() {
			t.Fatalf("losetup: %v %s", err, out)
		}
		t.Skipf("no loop device here: %v %s", err, out)
	}
	loop := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command(losetup, "-d", loop).Run() })
	d, err := pmem.Open(loop, pmem.Options{})
	if err != nil {
		t.Fatalf("open %s: %v", loop, err)
	}
	if _, msg := startLockHelper(t, loop, "ro", 0, 4<<20); !strings.Contains(msg, loop+" is in use") || !strings.Contains(msg, "pid") {
		t.Fatalf("a reader of the loop device beside a writer: %q", msg)
	}
	if _, err := pmem.Open(loop, pmem.Options{}); !errors.Is(err, pmem.ErrLocked) {
		t.Fatalf("second writer of %s: %v", loop, err)
	}
	d.Close()
	h, msg := startLockHelper(t, loop, "rw", 0, 4<<20)
	if h == nil {
		t.Fatalf("a writer after the first closed: %q", msg)
	}
	h.stop()
}
