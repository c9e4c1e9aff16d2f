// Package testutil holds helpers shared by nvblk's tests: the repository
// root, the kernel-written BTT images and their expectations, and external
// tools (which are required in CI and may be skipped only outside it).
package testutil

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// RepoRoot returns the module root directory.
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// InCI reports whether the tests run in CI (CI=true), where a missing
// tool is a failure rather than a skip.
func InCI() bool { return os.Getenv("CI") == "true" }

// NeedTool returns the path of an external tool, or fails (in CI) or
// skips (elsewhere) the test naming what is missing.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if InCI() {
			t.Fatalf("%s is required in CI but not found in PATH (install it with .ci/install-deps)", name)
		}
		t.Skipf("%s not found in PATH; run .ci/install-deps to run this test", name)
	}
	return p
}

// KernelSector is one written sector of a kernel image.
type KernelSector struct {
	LBA    uint64
	Gen    int
	Writes int
	SHA256 string
}

// KernelImage is a BTT image written by the Linux kernel, with what it
// must read as (testdata/kernel/*.expect).
type KernelImage struct {
	Name    string
	Keys    map[string]string
	Sectors []KernelSector
}

// Int returns an integer key.
func (k *KernelImage) Int(t testing.TB, key string) int64 {
	t.Helper()
	v, err := strconv.ParseInt(k.Keys[key], 10, 64)
	if err != nil {
		t.Fatalf("%s: key %s: %v", k.Name, key, err)
	}
	return v
}

// KernelImages lists the kernel-written images in testdata/kernel.
func KernelImages(t testing.TB) []*KernelImage {
	t.Helper()
	dir := filepath.Join(RepoRoot(), "testdata", "kernel")
	m, err := filepath.Glob(filepath.Join(dir, "*.img.expect"))
	if err != nil || len(m) == 0 {
		t.Fatalf("no kernel images in %s", dir)
	}
	var out []*KernelImage
	for _, p := range m {
		out = append(out, parseExpect(t, p))
	}
	return out
}

func parseExpect(t testing.TB, path string) *KernelImage {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	k := &KernelImage{Name: strings.TrimSuffix(filepath.Base(path), ".img.expect"), Keys: map[string]string{}}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "sector ") {
			var s KernelSector
			if _, err := fmt.Sscanf(line, "sector %d %d %d %s", &s.LBA, &s.Gen, &s.Writes, &s.SHA256); err != nil {
				t.Fatalf("%s: %q: %v", path, line, err)
			}
			k.Sectors = append(k.Sectors, s)
			continue
		}
		if kv := strings.SplitN(line, "=", 2); len(kv) == 2 {
			k.Keys[kv[0]] = kv[1]
		}
	}
	return k
}

// Extract unpacks the image into dir and returns the file's path.
func (k *KernelImage) Extract(t testing.TB, dir string) string {
	t.Helper()
	src := filepath.Join(RepoRoot(), "testdata", "kernel", k.Name+".img.gz")
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	zr, err := gzip.NewReader(in)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(dir, k.Name+".img")
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return dst
}

// ShmDir returns a fresh directory on tmpfs (/dev/shm), removed at the end
// of the test, or a t.TempDir() where /dev/shm is missing: benchmarks map
// files there, as PMDK's measurements did.
func ShmDir(t testing.TB) string {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		return t.TempDir()
	}
	dir, err := os.MkdirTemp("/dev/shm", "nvblk-test")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Unavailable reports that something a test needs is missing: a failure
// in CI (where scripts/install-deps.sh provides everything and CI runs as
// root), a skip naming the reason elsewhere.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("required in CI: "+format, args...)
	}
	t.Skipf(format, args...)
}

// LockedBuffer is an io.Writer that may be read (String) while other
// goroutines write to it: a command's output, a server's log.
type LockedBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
