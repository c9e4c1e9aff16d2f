package nbd

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
)

// TestKernelExt4OverNbdfuse runs the real kernel block and filesystem
// path over our server: nbdfuse exposes the export as a file, a loop
// device sits on that file, and ext4 is created, filled, checked with
// e2fsck and remounted. Finally the BTT's own contents (what the server
// acknowledged) must be a clean file system too.
func TestKernelExt4OverNbdfuse(t *testing.T) {
	if os.Geteuid() != 0 {
		if testutil.InCI() {
			t.Fatal("this test needs root (loop devices, mount) and CI runs as root")
		}
		t.Skip("needs root for loop devices and mount")
	}
	tools := map[string]string{}
	for _, name := range []string{"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "mount", "umount", "e2fsck", "sync"} {
		tools[name] = testutil.NeedTool(t, name)
	}
	for _, dev := range []string{"/dev/fuse", "/dev/loop-control"} {
		if _, err := os.Stat(dev); err != nil {
			if testutil.InCI() {
				t.Fatalf("%s is missing: %v", dev, err)
			}
			t.Skipf("%s is missing: %v", dev, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	run := func(name string, args ...string) string {
		t.Helper()
		cmd := exec.CommandContext(ctx, tools[name], args...)
		cmd.Env = toolEnv
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// try runs a cleanup command, bounded in time, ignoring failure.
	try := func(name string, args ...string) {
		cctx, ccancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer ccancel()
		cmd := exec.CommandContext(cctx, tools[name], args...)
		cmd.Env = toolEnv
		cmd.WaitDelay = 2 * time.Second
		cmd.Run()
	}

	b := newBTT(t, 96<<20)
	ts := startServer(t, Options{}, withExport("", "", b, false))
	dir := t.TempDir()
	fuseDir, mnt := filepath.Join(dir, "fuse"), filepath.Join(dir, "mnt")
	for _, d := range []string{fuseDir, mnt} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	// nbdfuse stays in the foreground until the mount point is unmounted.
	pidfile := filepath.Join(dir, "nbdfuse.pid")
	var fuseOut bytes.Buffer
	fuse := exec.CommandContext(ctx, tools["nbdfuse"], "-P", pidfile, filepath.Join(fuseDir, "disk"), ts.uri(""))
	fuse.Env, fuse.Stdout, fuse.Stderr = toolEnv, &fuseOut, &fuseOut
	fuse.WaitDelay = 5 * time.Second
	if err := fuse.Start(); err != nil {
		t.Fatal(err)
	}
	fuseDone := make(chan error, 1)
	go func() { fuseDone <- fuse.Wait() }()
	fuseGone := false
	unfuse := func() {
		if fuseGone {
			return
		}
		fuseGone = true
		try("fusermount3", "-u", fuseDir)
		select {
		case <-fuseDone:
		case <-time.After(10 * time.Second):
			try("fusermount3", "-uz", fuseDir)
			fuse.Process.Kill()
			<-fuseDone
		}
	}
	t.Cleanup(unfuse)
	for i := 0; ; i++ {
		if fi, err := os.Stat(pidfile); err == nil && fi.Size() > 0 {
			break
		}
		select {
		case err := <-fuseDone:
			fuseDone <- err
			t.Fatalf("nbdfuse exited: %v\n%s", err, fuseOut.String())
		case <-time.After(50 * time.Millisecond):
		}
		if i > 200 {
			t.Fatalf("nbdfuse not ready after 10 s\n%s", fuseOut.String())
		}
	}
	disk := filepath.Join(fuseDir, "disk")
	if fi, err := os.Stat(disk); err != nil || uint64(fi.Size()) != b.Sectors()*4096 {
		t.Fatalf("nbdfuse file: %v, size %v", err, fi)
	}

	// A loop device with 4 KiB logical blocks, so every request the
	// kernel sends is aligned to the export's minimum block size.
	loop := strings.TrimSpace(run("losetup", "-f", "--show", "--sector-size", "4096", disk))
	if !strings.HasPrefix(loop, "/dev/loop") {
		t.Fatalf("losetup printed %q", loop)
	}
	detached := false
	detach := func() {
		if !detached {
			try("losetup", "-d", loop)
			detached = true
		}
	}
	t.Cleanup(detach)
	mounted := false
	unmount := func() {
		if mounted {
			try("umount", mnt)
			try("umount", "-l", mnt)
			mounted = false
		}
	}
	t.Cleanup(unmount)

	run("mkfs.ext4", "-q", "-F", "-b", "4096", "-L", "nvblk", loop)
	run("mount", loop, mnt)
	mounted = true

	files := map[string][]byte{}
	r := rand.New(rand.NewPCG(42, 42))
	if err := os.Mkdir(filepath.Join(mnt, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 24; i++ {
		name := fmt.Sprintf("f%02d", i)
		if i%3 == 0 {
			name = filepath.Join("sub", name)
		}
		p := make([]byte, 1+r.IntN(1<<20))
		for j := range p {
			p[j] = byte(r.Uint32())
		}
		if err := os.WriteFile(filepath.Join(mnt, name), p, 0o644); err != nil {
			t.Fatal(err)
		}
		files[name] = p
	}
	// Delete a few files and fstrim: the freed blocks reach the server as
	// NBD_CMD_TRIM (loop discard -> FUSE fallocate -> nbdfuse). Best
	// effort: not every kernel passes discard through FUSE.
	for _, name := range []string{"f01", "f02"} {
		os.Remove(filepath.Join(mnt, name))
		delete(files, name)
	}
	if p, err := exec.LookPath("fstrim"); err == nil {
		tools["fstrim"] = p
		try("fstrim", mnt)
	}
	run("sync")
	run("umount", mnt)
	mounted = false

	out := run("e2fsck", "-fn", loop)
	if !strings.Contains(out, "Pass 5") {
		t.Errorf("e2fsck output:\n%s", out)
	}

	run("mount", loop, mnt)
	mounted = true
	for name, want := range files {
		got, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after remount: %v (%d bytes, want %d)", name, err, len(got), len(want))
		}
	}
	run("umount", mnt)
	mounted = false
	detach()
	unfuse()

	// What the BTT holds is a clean file system on its own.
	img := filepath.Join(dir, "btt.img")
	if err := os.WriteFile(img, bttContents(t, b), 0o644); err != nil {
		t.Fatal(err)
	}
	run("e2fsck", "-fn", img)
}
