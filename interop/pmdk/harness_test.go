package pmdk

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/cli"
	"github.com/nvblk/nvblk/internal/testutil"
)

// toolTimeout bounds every subprocess: each does a few milliseconds of
// work on a 32 MiB pool.
const toolTimeout = 30 * time.Second

var (
	buildOnce sync.Once
	helperBin string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// tools locates pmempool and builds blkhelper once per test binary.
type tools struct {
	helper   string
	pmempool string
}

func needTools(t *testing.T) tools {
	t.Helper()
	gcc := testutil.NeedTool(t, "gcc")
	pmempool := testutil.NeedTool(t, "pmempool")
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "nvblk-pmdk-")
		if buildErr != nil {
			return
		}
		helperBin = filepath.Join(buildDir, "blkhelper")
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, gcc, "-O2", "-Wall", "-Werror", "-o", helperBin, "blkhelper.c", "-lpmemblk").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("gcc blkhelper.c -lpmemblk: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		if testutil.InCI() {
			t.Fatalf("%v (install libpmemblk-dev with scripts/install-deps.sh)", buildErr)
		}
		t.Skipf("cannot build the libpmemblk helper: %v", buildErr)
	}
	return tools{helper: helperBin, pmempool: pmempool}
}

// capi is nvblk's libpmemblk (capi/libpmemblk), built once per test
// binary by scripts/build-capi.sh into dir, with blkhelper.c built
// unchanged against it (through its pkg-config file).
type capi struct {
	dir    string // OUTDIR: libpmemblk.so.1, libpmemblk.h, libpmemblk.pc
	lib    string // dir/libpmemblk.so.1
	cflags []string
	tools  // helper: blkhelper linked against dir (rpath)
}

var (
	capiOnce  sync.Once
	capiBuilt capi
	capiErr   error
)

// needCAPI builds nvblk's libpmemblk and blkhelper against it.
func needCAPI(t *testing.T) capi {
	t.Helper()
	x := needTools(t)
	gcc := testutil.NeedTool(t, "gcc")
	pkgConfig := testutil.NeedTool(t, "pkg-config")
	goTool := testutil.NeedTool(t, "go")
	capiOnce.Do(func() {
		c := capi{dir: filepath.Join(buildDir, "capi")}
		c.lib = filepath.Join(c.dir, "libpmemblk.so.1")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, filepath.Join(testutil.RepoRoot(), "scripts", "build-capi.sh"), c.dir)
		cmd.Env = append(os.Environ(), "PATH="+filepath.Dir(goTool)+string(os.PathListSeparator)+os.Getenv("PATH"))
		if out, err := cmd.CombinedOutput(); err != nil {
			capiErr = fmt.Errorf("scripts/build-capi.sh: %v\n%s", err, out)
			return
		}
		cmd = exec.CommandContext(ctx, pkgConfig, "--cflags", "--libs", "libpmemblk")
		cmd.Env = append(os.Environ(), "PKG_CONFIG_PATH="+c.dir)
		out, err := cmd.Output()
		if err != nil {
			capiErr = fmt.Errorf("pkg-config libpmemblk: %v", err)
			return
		}
		c.cflags = append(strings.Fields(string(out)), "-Wl,-rpath,"+c.dir)
		c.tools = tools{pmempool: x.pmempool, helper: filepath.Join(c.dir, "blkhelper")}
		args := append([]string{"-O2", "-Wall", "-Werror", "-o", c.helper, "blkhelper.c"}, c.cflags...)
		if out, err := exec.CommandContext(ctx, gcc, args...).CombinedOutput(); err != nil {
			capiErr = fmt.Errorf("gcc blkhelper.c against nvblk's libpmemblk: %v\n%s", err, out)
			return
		}
		capiBuilt = c
	})
	if capiErr != nil {
		t.Fatal(capiErr)
	}
	return capiBuilt
}

// run runs a tool under a deadline and returns its stdout; a non-zero exit
// is returned as an error carrying stderr.
func runTool(t *testing.T, name string, args ...string) ([]byte, error) {
	t.Helper()
	return runToolEnv(t, nil, name, args...)
}

// runToolEnv is runTool with variables added to the environment.
func runToolEnv(t *testing.T, env []string, name string, args ...string) ([]byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %v: %s(stdout %q)", filepath.Base(name), strings.Join(args, " "), err, stderr.String(), out[:min(len(out), 256)])
	}
	return out, nil
}

func (x tools) helperRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := runTool(t, x.helper, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// create makes a pool with libpmemblk and returns its block count.
func (x tools) create(t *testing.T, path string, bsize int, size int64) int64 {
	t.Helper()
	out := x.helperRun(t, "create", path, strconv.Itoa(bsize), strconv.FormatInt(size, 10))
	var n int64
	if _, err := fmt.Sscanf(out, "nblock %d", &n); err != nil {
		t.Fatalf("blkhelper create: %q", out)
	}
	return n
}

// write writes pattern(seed, blk) to each block with libpmemblk.
func (x tools) write(t *testing.T, path string, seed uint64, blocks ...int64) {
	t.Helper()
	args := []string{"write", path, strconv.FormatUint(seed, 10)}
	for _, b := range blocks {
		args = append(args, strconv.FormatInt(b, 10))
	}
	x.helperRun(t, args...)
}

func (x tools) setState(t *testing.T, path, op string, blocks ...int64) {
	t.Helper()
	args := []string{op, path}
	for _, b := range blocks {
		args = append(args, strconv.FormatInt(b, 10))
	}
	x.helperRun(t, args...)
}

// readRaw reads count blocks from first with libpmemblk.
func (x tools) readRaw(t *testing.T, path string, first, count int64) []byte {
	t.Helper()
	return []byte(x.helperRun(t, "read", path, strconv.FormatInt(first, 10), strconv.FormatInt(count, 10), "raw"))
}

// readSums returns libpmemblk's "sha256 hex" or "error EIO" per block.
func (x tools) readSums(t *testing.T, path string, first, count int64) map[int64]string {
	t.Helper()
	out := x.helperRun(t, "read", path, strconv.FormatInt(first, 10), strconv.FormatInt(count, 10), "sha256")
	sums := map[int64]string{}
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		blk, rest, ok := strings.Cut(line, " ")
		n, err := strconv.ParseInt(blk, 10, 64)
		if !ok || err != nil {
			t.Fatalf("blkhelper read: %q", line)
		}
		sums[n] = rest
	}
	return sums
}

// info returns libpmemblk's bsize and nblock of a pool.
func (x tools) info(t *testing.T, path string) (int, int64) {
	t.Helper()
	var bs int
	var n int64
	if _, err := fmt.Sscanf(x.helperRun(t, "info", path), "bsize %d nblock %d", &bs, &n); err != nil {
		t.Fatal(err)
	}
	return bs, n
}

// pmempoolCheck runs `pmempool check -v` and fails unless it reports the
// pool consistent.
func (x tools) pmempoolCheck(t *testing.T, path string) {
	t.Helper()
	out, err := runTool(t, x.pmempool, "check", "-v", path)
	if err != nil || !strings.Contains(string(out), ": consistent") {
		t.Fatalf("pmempool check: %v\n%s", err, out)
	}
}

// pmempoolInfo runs `pmempool info` (which must parse the pool).
func (x tools) pmempoolInfo(t *testing.T, path string) string {
	t.Helper()
	out, err := runTool(t, x.pmempool, "info", path)
	if err != nil {
		t.Fatalf("pmempool info: %v\n%s", err, out)
	}
	return string(out)
}

// nvblk runs the CLI in-process.
func nvblk(t *testing.T, args ...string) (string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := cli.Main(args, bytes.NewReader(nil), &out, &errb)
	return out.String() + errb.String(), code
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// pattern is blkhelper.c's pattern(): the bytes written for (seed, blk).
func pattern(bsize int, seed, blk uint64) []byte {
	buf := make([]byte, bsize)
	x := seed*0x9E3779B97F4A7C15 ^ (blk+1)*0xBF58476D1CE4E5B9
	x |= 1
	for i := range buf {
		if i%8 == 0 {
			x ^= x << 13
			x ^= x >> 7
			x ^= x << 17
		}
		buf[i] = byte(x >> (8 * (i % 8)))
	}
	return buf
}

func mainWithStdin(stdin []byte, out, errb *bytes.Buffer, args ...string) int {
	return cli.Main(args, bytes.NewReader(stdin), out, errb)
}

func itoa(n int) string { return strconv.Itoa(n) }
