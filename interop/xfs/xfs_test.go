package xfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
)

// sh runs a command with a deadline and fails the test with its output.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := try(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func try(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// kernelHas reports whether /proc/filesystems lists fs.
func kernelHas(fs string) bool {
	b, err := os.ReadFile("/proc/filesystems")
	return err == nil && regexp.MustCompile(`(?m)\s`+fs+`$`).Match(b)
}

// start runs a long-lived child; the returned stop (also run in Cleanup)
// interrupts it by its PID, kills it after 10 s, and waits for it.
func start(t *testing.T, stdout io.Writer, env []string, name string, args ...string) (stop func()) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout = stdout
	cmd.Stderr = stdout
	if err := cmd.Start(); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	stop = func() {
		select {
		case <-done:
			return
		default:
		}
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// waitFor polls cond for up to 20 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

// syncBuf collects a child's output; it is safe to read while the child
// writes (no embedded bytes.Buffer, whose ReadFrom would bypass the lock).
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func newSyncBuf() *syncBuf { return &syncBuf{} }

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestXFSOnPartitions is the seed's end-to-end example.
func TestXFSOnPartitions(t *testing.T) {
	if os.Geteuid() != 0 {
		testutil.Unavailable(t, "needs root (loop devices, mount)")
	}
	for _, tool := range []string{"mkfs.xfs", "xfs_repair", "nbdfuse", "fusermount3", "losetup", "mount", "umount"} {
		testutil.NeedTool(t, tool)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testutil.Unavailable(t, "no /dev/fuse")
	}
	if !kernelHas("xfs") || !kernelHas("fuse") {
		testutil.Unavailable(t, "the kernel has no XFS or FUSE")
	}
	dir := t.TempDir()
	nvblk := filepath.Join(dir, "nvblk")
	build := exec.Command("go", "build", "-o", nvblk, "./cmd/nvblk")
	build.Dir = testutil.RepoRoot()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	// The disk: XFS needs at least 300 MiB of data; the log partition holds
	// a BTT with 512-byte sectors, so every log sector write is atomic.
	img := filepath.Join(dir, "disk.img")
	sh(t, nvblk, "partition", "--add", "320M:xfs-data", "--add", "rest:xfs-log", "--size", "420M", img)
	sh(t, nvblk, "create", "--partition", "2", "--sector-size", "512", img)
	if out := sh(t, nvblk, "list", img); !strings.Contains(out, "btt 1.1") || !strings.Contains(out, "raw") {
		t.Fatalf("list:\n%s", out)
	}

	sock := filepath.Join(dir, "nbd.sock")
	serveOut := newSyncBuf()
	// PMEM_IS_PMEM_FORCE=1: CPU cache flushes instead of msync on the
	// image (a page-cache file here), as PMDK's own tests do; durability
	// against power loss is not what this test is about, and msync per
	// BTT persistence point makes mkfs's log zeroing take half a minute.
	stopServe := start(t, serveOut, []string{"PMEM_IS_PMEM_FORCE=1"}, nvblk, "serve", "--socket", sock, img)
	waitFor(t, "nvblk serve", func() bool { return strings.Contains(serveOut.String(), `NBD export "p2"`) })

	// nbdfuse files for the two partitions.
	fuse := filepath.Join(dir, "fuse")
	files := map[string]string{}
	for _, p := range []string{"p1", "p2"} {
		mp := filepath.Join(fuse, p)
		if err := os.MkdirAll(mp, 0o755); err != nil {
			t.Fatal(err)
		}
		start(t, io.Discard, nil, "nbdfuse", mp+"/disk", fmt.Sprintf("nbd+unix:///%s?socket=%s", p, sock))
		t.Cleanup(func() { try("fusermount3", "-u", mp) })
		files[p] = filepath.Join(mp, "disk")
		waitFor(t, "nbdfuse "+p, func() bool { _, err := os.Stat(files[p]); return err == nil })
	}
	loops := map[string]string{}
	for _, p := range []string{"p1", "p2"} {
		dev := strings.TrimSpace(sh(t, "losetup", "-f", "--show", files[p]))
		t.Cleanup(func() { try("losetup", "-d", dev) })
		loops[p] = dev
	}
	data, logdev := loops["p1"], loops["p2"]

	t0 := time.Now()
	sh(t, "mkfs.xfs", "-f", "-q", "-K", "-l", "logdev="+logdev+",size=64m", data)
	t.Logf("mkfs.xfs: %v", time.Since(t0))
	mnt := filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	mounted := false
	mount := func() {
		sh(t, "mount", "-t", "xfs", "-o", "logdev="+logdev, data, mnt)
		mounted = true
	}
	umount := func() {
		sh(t, "umount", mnt)
		mounted = false
	}
	t.Cleanup(func() {
		if mounted {
			try("umount", "-l", mnt)
		}
	})
	mount()
	if out := sh(t, "mount"); !strings.Contains(out, mnt) || !strings.Contains(out, "logdev="+logdev) {
		t.Fatalf("mount table lacks the external log:\n%s", out)
	}

	// Files of several sizes, some in a directory, then fsync'd.
	r := rand.New(rand.NewPCG(7, 11))
	want := map[string][32]byte{}
	if err := os.Mkdir(filepath.Join(mnt, "dir"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i, size := range []int{0, 1, 511, 4096, 65537, 1 << 20, 3<<20 + 17} {
		name := fmt.Sprintf("f%d", i)
		if i%2 == 1 {
			name = "dir/" + name
		}
		b := make([]byte, size)
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(mnt, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
		want[name] = sha256.Sum256(b)
	}
	sh(t, "sync")
	umount()

	out, err := try("xfs_repair", "-n", "-l", logdev, data)
	if err != nil {
		t.Fatalf("xfs_repair -n: %v\n%s", err, out)
	}

	mount()
	for name, sum := range want {
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(b) != sum {
			t.Errorf("%s differs after remount", name)
		}
	}
	umount()

	// The log went through the BTT: once everything is detached and the
	// server has stopped, partition 2 checks clean offline.
	for _, p := range []string{"p1", "p2"} {
		sh(t, "losetup", "-d", loops[p])
		sh(t, "fusermount3", "-u", filepath.Join(fuse, p))
	}
	stopServe()
	if !strings.Contains(serveOut.String(), "every acknowledged write is durable") {
		t.Errorf("serve did not stop cleanly:\n%s", serveOut.String())
	}
	if out, err := try(nvblk, "check", "--partition", "2", img); err != nil {
		t.Errorf("check --partition 2: %v\n%s", err, out)
	}
}
