package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
)

// These tests run the real binary in several processes: one writer per
// image (or per partition) is the point, and a lock that one process
// holds is what another must meet.

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// nvblkBinary builds ./cmd/nvblk once per test binary and returns its path.
func nvblkBinary(t *testing.T) string {
	t.Helper()
	goTool := testutil.NeedTool(t, "go")
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "nvblk-bin")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "nvblk")
		ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
		defer cancel()
		build := exec.CommandContext(ctx, goTool, "build", "-o", binPath, "./cmd/nvblk")
		build.Dir = testutil.RepoRoot()
		if out, err := build.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// serveProc is `nvblk serve` running in a process of its own.
type serveProc struct {
	cmd            *exec.Cmd
	uri            string
	stdout, stderr *testutil.LockedBuffer
	waited         chan error
}

// startServeProc runs `nvblk serve args...` and waits for its URI.
func startServeProc(t *testing.T, args ...string) *serveProc {
	t.Helper()
	p := &serveProc{stdout: &testutil.LockedBuffer{}, stderr: &testutil.LockedBuffer{}, waited: make(chan error, 1)}
	p.cmd = exec.Command(nvblkBinary(t), append([]string{"serve"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.stdout, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.waited <- p.cmd.Wait() }()
	t.Cleanup(func() { p.kill() })
	for deadline := time.Now().Add(20 * time.Second); ; {
		if m := listenRE.FindStringSubmatch(p.stdout.String()); m != nil {
			p.uri = m[1]
			return p
		}
		select {
		case err := <-p.waited:
			p.waited <- err
			t.Fatalf("serve %v exited early: %v\n%s", args, err, p.stderr)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve %v printed no address in 20 s\n%s", args, p.stderr)
		}
	}
}

// kill SIGKILLs the server and waits for it.
func (p *serveProc) kill() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case err := <-p.waited:
		p.waited <- err
	case <-time.After(10 * time.Second):
	}
}

// runBin runs the binary to completion with stdin and returns stdout,
// stderr and the exit status.
func runBin(t *testing.T, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, nvblkBinary(t), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("nvblk %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// wantRefused checks that a command met the lock: exit status code, one
// line on stderr naming the image, the range and the holder's pid and
// command.
func wantRefused(t *testing.T, what string, stderr string, code, wantCode int, img string, holder *serveProc) {
	t.Helper()
	line := strings.TrimSpace(stderr)
	if code != wantCode || strings.Count(line, "\n") != 0 {
		t.Errorf("%s: exit %d (want %d), stderr:\n%s", what, code, wantCode, stderr)
		return
	}
	for _, want := range []string{img + " is in use", "bytes ", fmt.Sprintf("pid %d (", holder.cmd.Process.Pid), "nvblk serve", "nothing was written"} {
		if !strings.Contains(line, want) {
			t.Errorf("%s: %q does not say %q", what, line, want)
		}
	}
}

// TestSecondWriterRefused: with `nvblk serve` on an image, a second
// serve, write, zero, check --repair, create --force and partition are
// refused and the image stays byte-identical; check, read, info and list
// are refused without --force-share and work with it; when the server is
// SIGKILLed its lock goes with it.
func TestSecondWriterRefused(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	if _, e, c := runBin(t, nil, "create", "--size", "32M", img); c != 0 {
		t.Fatalf("create: %d %s", c, e)
	}
	srv := startServeProc(t, "--socket", filepath.Join(dir, "a.sock"), img)
	pattern := bytes.Repeat([]byte("served!\n"), 512)
	c := dialURI(t, srv.uri)
	if errno, _ := c.cmd(t, 1, 4096, 4096, pattern); errno != 0 {
		t.Fatalf("write through the server: errno %d", errno)
	}
	if errno, _ := c.cmd(t, 3, 0, 0, nil); errno != 0 { // NBD_CMD_FLUSH
		t.Fatalf("flush: errno %d", errno)
	}
	before := fileHash(t, img)

	sector := bytes.Repeat([]byte{0xee}, 4096)
	for _, tc := range []struct {
		args  []string
		stdin []byte
	}{
		{[]string{"serve", "--socket", filepath.Join(dir, "b.sock"), img}, nil},
		{[]string{"write", "--lba", "1", img}, sector},
		{[]string{"zero", "--lba", "1", img}, nil},
		{[]string{"check", "--repair", img}, nil},
		{[]string{"create", "--force", img}, nil},
		{[]string{"partition", "--add", "8M", "--force", img}, nil},
		{[]string{"bench", "--op", "write", "--duration", "100ms", img}, nil},
	} {
		_, e, code := runBin(t, tc.stdin, tc.args...)
		want := 1
		if tc.args[0] == "check" {
			want = 8 // fsck's "operational error": 1 would mean "errors corrected"
		}
		wantRefused(t, strings.Join(tc.args[:1], " "), e, code, want, img, srv)
		if strings.Contains(e, "--force-share") {
			t.Errorf("%s: a writer is offered --force-share: %s", tc.args[0], e)
		}
		if fileHash(t, img) != before {
			t.Fatalf("%v changed the image it was refused", tc.args)
		}
	}

	// Read-only looks: refused without --force-share, served with it.
	for _, args := range [][]string{
		{"check", img}, {"read", "--lba", "1", "--count", "1", img}, {"info", img}, {"list", img},
	} {
		_, e, code := runBin(t, nil, args...)
		want := 1
		if args[0] == "check" {
			want = 8
		}
		wantRefused(t, args[0], e, code, want, img, srv)
		if !strings.Contains(e, "--force-share") {
			t.Errorf("%s: the refusal does not mention --force-share: %s", args[0], e)
		}
		forced := append([]string{args[0], "--force-share"}, args[1:]...)
		out, e, code := runBin(t, nil, forced...)
		if code != 0 {
			t.Errorf("%v: exit %d\n%s", forced, code, e)
			continue
		}
		switch args[0] {
		case "read":
			if out != string(pattern) {
				t.Errorf("read --force-share: %d bytes, not what the server wrote", len(out))
			}
		case "check":
			if !strings.Contains(out, "0 error(s) found") {
				t.Errorf("check --force-share: %s", out)
			}
		case "info", "list":
			if !strings.Contains(strings.ToUpper(out), "BTT 1.1") {
				t.Errorf("%s --force-share: %s", args[0], out)
			}
		}
	}
	if _, e, code := runBin(t, nil, "check", "--force-share", "--repair", img); code != 16 {
		t.Errorf("check --force-share --repair: exit %d %s", code, e)
	}
	if fileHash(t, img) != before {
		t.Fatal("a refused or read-only command changed the image")
	}

	// The server dies without a word: its lock dies with it.
	c.Close()
	srv.kill()
	if _, e, code := runBin(t, sector, "write", "--lba", "1", img); code != 0 {
		t.Fatalf("write after the server was killed: %d %s", code, e)
	}
	out, e, code := runBin(t, nil, "read", "--lba", "1", "--count", "1", img)
	if code != 0 || out != string(sector) {
		t.Fatalf("read back: exit %d %s", code, e)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if e.Name() != "img" && e.Name() != "a.sock" {
			t.Errorf("left beside the image: %s", e.Name())
		}
	}
}

// TestPartitionServers: two servers, each on its own partition of one
// disk, both run; a whole-disk writer and a second opener of either
// partition are refused meanwhile; a read of the other partition's
// bytes through the whole disk needs --force-share.
func TestPartitionServers(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk")
	for _, args := range [][]string{
		{"partition", "--add", "20M:a", "--add", "rest:b", "--size", "48M", disk},
		{"create", "--partition", "1", disk},
		{"create", "--partition", "2", "--sector-size", "512", disk},
	} {
		if _, e, c := runBin(t, nil, args...); c != 0 {
			t.Fatalf("%v: %d %s", args, c, e)
		}
	}
	p1 := startServeProc(t, "--socket", filepath.Join(dir, "p1.sock"), "--partition", "1", disk)
	p2 := startServeProc(t, "--socket", filepath.Join(dir, "p2.sock"), "--partition", "2", disk)
	for i, p := range []*serveProc{p1, p2} {
		c := dialURI(t, p.uri)
		if errno, _ := c.cmd(t, 1, 0, 4096, bytes.Repeat([]byte{byte('1' + i)}, 4096)); errno != 0 {
			t.Fatalf("write through the server of partition %d: errno %d", i+1, errno)
		}
		c.Close()
	}
	before := fileHash(t, disk)

	_, e, code := runBin(t, bytes.Repeat([]byte{9}, 4096), "write", "--lba", "0", disk)
	wantRefused(t, "whole-disk write", e, code, 1, disk, p1)
	_, e, code = runBin(t, nil, "serve", "--socket", filepath.Join(dir, "w.sock"), disk)
	wantRefused(t, "whole-disk serve", e, code, 1, disk, p1)
	_, e, code = runBin(t, nil, "zero", "--partition", "2", "--lba", "0", disk)
	wantRefused(t, "zero --partition 2", e, code, 1, disk, p2)
	_, e, code = runBin(t, nil, "read", "--partition", "1", "--lba", "0", "--count", "1", disk)
	wantRefused(t, "read --partition 1", e, code, 1, disk, p1)
	if fileHash(t, disk) != before {
		t.Fatal("a refused command changed the disk")
	}
	out, e, code := runBin(t, nil, "read", "--force-share", "--partition", "1", "--lba", "0", "--count", "1", disk)
	if code != 0 || out != strings.Repeat("1", 4096) {
		t.Fatalf("read --force-share --partition 1: exit %d %s", code, e)
	}

	// With partition 2's server gone, partition 2 is free and 1 is not.
	p2.kill()
	if _, e, code := runBin(t, bytes.Repeat([]byte{7}, 512), "write", "--partition", "2", "--lba", "3", disk); code != 0 {
		t.Fatalf("write --partition 2 after its server stopped: %d %s", code, e)
	}
	_, e, code = runBin(t, nil, "check", "--repair", "--partition", "1", disk)
	wantRefused(t, "check --repair --partition 1", e, code, 8, disk, p1)
}

// TestLockPeers: the lock is the one the peers understand. qemu (OFD
// locks on its own bytes) cannot write an image nvblk serves, nvblk
// cannot write an image qemu-nbd serves, and PMDK's pmempool (flock)
// cannot open a pool nvblk serves.
func TestLockPeers(t *testing.T) {
	qemuIO := testutil.NeedTool(t, "qemu-io")
	qemuNBD := testutil.NeedTool(t, "qemu-nbd")
	pmempool := testutil.NeedTool(t, "pmempool")
	dir := t.TempDir()
	img := filepath.Join(dir, "img")
	pool := filepath.Join(dir, "pool")
	for _, args := range [][]string{
		{"create", "--size", "32M", img},
		{"create", "--format", "pmemblk", "--size", "32M", pool},
	} {
		if _, e, c := runBin(t, nil, args...); c != 0 {
			t.Fatalf("%v: %d %s", args, c, e)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	srv := startServeProc(t, "--socket", filepath.Join(dir, "a.sock"), img)
	before := fileHash(t, img)
	out, err := exec.CommandContext(ctx, qemuIO, "-f", "raw", "-c", "write -P 0x55 0 4k", img).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "lock") {
		t.Errorf("qemu-io write beside nvblk serve: %v\n%s", err, out)
	}
	if fileHash(t, img) != before {
		t.Fatal("qemu-io changed an image nvblk serves")
	}
	srv.kill()

	sock := filepath.Join(dir, "q.sock")
	q := exec.CommandContext(ctx, qemuNBD, "-f", "raw", "--socket="+sock, img)
	var qerr testutil.LockedBuffer
	q.Stderr = &qerr
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { q.Process.Kill(); q.Wait() }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu-nbd did not listen in 20 s: %s", qerr.String())
		}
	}
	_, e, code := runBin(t, bytes.Repeat([]byte{1}, 4096), "write", "--lba", "0", img)
	if code != 1 || !strings.Contains(e, "is in use") || !strings.Contains(e, fmt.Sprintf("pid %d (", q.Process.Pid)) {
		t.Errorf("nvblk write beside qemu-nbd: exit %d %s", code, e)
	}

	psrv := startServeProc(t, "--socket", filepath.Join(dir, "p.sock"), pool)
	out, err = exec.CommandContext(ctx, pmempool, "info", pool).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Resource temporarily unavailable") {
		t.Errorf("pmempool info beside nvblk serve of the pool: %v\n%s", err, out)
	}
	psrv.kill()
	if out, err := exec.CommandContext(ctx, pmempool, "info", pool).CombinedOutput(); err != nil {
		t.Errorf("pmempool info after the server stopped: %v\n%s", err, out)
	}
}
