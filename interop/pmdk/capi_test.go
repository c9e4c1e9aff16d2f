package pmdk

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmemblk"
)

// Tests of nvblk's libpmemblk.so.1 (capi/libpmemblk) as a drop-in for
// PMDK's: the C programs written for libpmemblk (blkhelper.c, capitest.c,
// bench/blkbench.c, Debian's fio) built against it or loaded with it
// through LD_LIBRARY_PATH.

// debianLib is PMDK's library as Debian installs it.
const debianLib = "/usr/lib/x86_64-linux-gnu/libpmemblk.so.1"

// fastEnv makes both libraries flush with CPU instructions instead of
// msync (PMEM_IS_PMEM_FORCE, honoured by both): the tests do thousands of
// writes.
var fastEnv = []string{"PMEM_IS_PMEM_FORCE=1"}

// gccBuild compiles one C file of this directory (or of the repository)
// into dir and returns the binary.
func gccBuild(t *testing.T, dir, out, src string, flags ...string) string {
	t.Helper()
	gcc := testutil.NeedTool(t, "gcc")
	bin := filepath.Join(dir, out)
	args := append([]string{"-O2", "-Wall", "-Werror", "-pthread", "-o", bin, src}, flags...)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if b, err := exec.CommandContext(ctx, gcc, args...).CombinedOutput(); err != nil {
		t.Fatalf("gcc %s: %v\n%s", strings.Join(args, " "), err, b)
	}
	return bin
}

// loadedFrom returns the path the dynamic loader resolves
// libpmemblk.so.1 to for bin (ldd), with env added.
func loadedFrom(t *testing.T, env []string, bin string) string {
	t.Helper()
	ldd := testutil.NeedTool(t, "ldd")
	out, err := runToolEnv(t, env, ldd, bin)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`libpmemblk\.so\.1 => (\S+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("ldd %s: no libpmemblk.so.1:\n%s", bin, out)
	}
	p, err := filepath.EvalSymlinks(string(m[1]))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func sameFile(t *testing.T, a, b string) bool {
	t.Helper()
	sa, err := os.Stat(a)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := os.Stat(b)
	if err != nil {
		t.Fatal(err)
	}
	return os.SameFile(sa, sb)
}

// dynSyms returns the defined dynamic symbols of a library with their
// versions ("pmemblk_open@LIBPMEMBLK_1.0"), from objdump -T.
func dynSyms(t *testing.T, lib string) []string {
	t.Helper()
	objdump := testutil.NeedTool(t, "objdump")
	out, err := runTool(t, objdump, "-T", lib)
	if err != nil {
		t.Fatal(err)
	}
	var syms []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || strings.Contains(line, "*UND*") || !strings.HasPrefix(f[len(f)-2], "LIBPMEMBLK") {
			continue
		}
		syms = append(syms, f[len(f)-1]+"@"+f[len(f)-2])
	}
	sort.Strings(syms)
	return syms
}

// The library's soname and exported symbols (names and version node) are
// PMDK's, so binaries linked against PMDK's library bind to it.
func TestCAPISymbols(t *testing.T) {
	c := needCAPI(t)
	want := dynSyms(t, debianLib)
	got := dynSyms(t, c.lib)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("exported symbols differ:\nnvblk:  %v\nlibpmemblk: %v", got, want)
	}
	if len(want) < 17 {
		t.Errorf("libpmemblk exports only %v", want)
	}
	readelf := testutil.NeedTool(t, "readelf")
	out, err := runTool(t, readelf, "-d", c.lib)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "Library soname: [libpmemblk.so.1]") {
		t.Errorf("soname:\n%s", out)
	}
	// The Go runtime cannot be unloaded: dlclose must keep the library.
	if !regexp.MustCompile(`FLAGS_1.*NODELETE`).Match(out) {
		t.Errorf("the library is not marked nodelete:\n%s", out)
	}
	for _, f := range []string{"libpmemblk.so", "libpmemblk.h", "libpmemblk.pc"} {
		if _, err := os.Stat(filepath.Join(c.dir, f)); err != nil {
			t.Error(err)
		}
	}
}

// capitest.c, the same binary, run against PMDK's libpmemblk and (through
// LD_LIBRARY_PATH) against nvblk's, prints the same results and errnos for
// every call; built against nvblk's header and library it prints them too.
func TestCAPIMatchesLibpmemblk(t *testing.T) {
	c := needCAPI(t)
	bdir := t.TempDir()
	pmdkBin := gccBuild(t, bdir, "capitest-pmdk", "capitest.c", "-lpmemblk")
	nvblkBin := gccBuild(t, bdir, "capitest-nvblk", "capitest.c", c.cflags...)
	nvEnv := append([]string{"LD_LIBRARY_PATH=" + c.dir}, fastEnv...)
	if p := loadedFrom(t, nil, pmdkBin); !sameFile(t, p, debianLib) {
		t.Fatalf("capitest-pmdk loads %s", p)
	}
	if p := loadedFrom(t, nvEnv, pmdkBin); !sameFile(t, p, c.lib) {
		t.Fatalf("with LD_LIBRARY_PATH capitest-pmdk loads %s, not nvblk's", p)
	}
	if p := loadedFrom(t, nil, nvblkBin); !sameFile(t, p, c.lib) {
		t.Fatalf("capitest-nvblk loads %s", p)
	}

	run := func(name string, env []string, bin string) string {
		dir := t.TempDir()
		out, err := runToolEnv(t, env, bin, "api", dir)
		if err != nil {
			t.Errorf("%s: %v\n%s", name, err, out)
		}
		return string(out)
	}
	want := run("PMDK", fastEnv, pmdkBin)
	if !strings.Contains(want, "threads.check 1 -") || !strings.Contains(want, "read.error -1 EIO") {
		t.Fatalf("unexpected output against PMDK's libpmemblk:\n%s", want)
	}
	for _, r := range []struct {
		name string
		env  []string
		bin  string
	}{{"nvblk through LD_LIBRARY_PATH", nvEnv, pmdkBin}, {"nvblk built against", fastEnv, nvblkBin}} {
		if got := run(r.name, r.env, r.bin); got != want {
			t.Errorf("%s differs from PMDK's libpmemblk:\n%s", r.name, lineDiff(want, got))
		}
	}

	// A pool file the caller cannot write: open fails with EACCES in
	// both (root may write anything, so the program runs as nobody).
	if os.Geteuid() != 0 {
		t.Log("not root: the read-only file case needs to switch users; skipped")
		return
	}
	dir, err := os.MkdirTemp("", "nvblk-capi-ro-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	pool := filepath.Join(dir, "pool")
	p, err := pmemblk.Create(pool, 4096, poolSize)
	if err != nil {
		t.Fatal(err)
	}
	p.Close()
	roBin := filepath.Join(dir, "capitest")
	copyFile(t, pmdkBin, roBin)
	for _, f := range []string{dir, pool, roBin} {
		mode := os.FileMode(0o755)
		if f == dir {
			mode = 0o777 // nobody creates a pool beside the read-only one
		}
		if f == pool {
			mode = 0o444
		}
		if err := os.Chmod(f, mode); err != nil {
			t.Fatal(err)
		}
	}
	asNobody := func(env []string) string {
		ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, roBin, "rofile", pool)
		cmd.Env = append(os.Environ(), env...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("capitest rofile as nobody: %v\n%s%s", err, out, stderr.String())
		}
		return string(out)
	}
	// The library directory must be readable by nobody too.
	for d := c.dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	wantRO := asNobody(nil)
	if !strings.Contains(wantRO, "rofile.open -1 EACCES") {
		t.Fatalf("PMDK's libpmemblk on a read-only file:\n%s", wantRO)
	}
	// One documented difference: nvblk's pmemblk_check opens the file
	// read-only, so it checks a pool the caller cannot write; PMDK's
	// opens it for writing and fails with EACCES.
	wantRO = strings.Replace(wantRO, "rofile.check -1 EACCES", "rofile.check 1 -", 1)
	if got := asNobody([]string{"LD_LIBRARY_PATH=" + c.dir}); got != wantRO {
		t.Errorf("read-only file, nvblk differs from PMDK's libpmemblk:\n%s", lineDiff(wantRO, got))
	}
}

// lineDiff shows the lines of b that differ from a.
func lineDiff(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out strings.Builder
	for i := 0; i < max(len(al), len(bl)); i++ {
		var x, y string
		if i < len(al) {
			x = al[i]
		}
		if i < len(bl) {
			y = bl[i]
		}
		if x != y {
			out.WriteString("- " + x + "\n+ " + y + "\n")
		}
	}
	return out.String()
}

// What only nvblk's library does: calls in a child after fork() fail at
// once with ENOTSUP and a message (no hang); a SIGBUS on the mapping (the
// file truncated underneath) reaches nvblk's handler and becomes EIO;
// so does it when the program installed its own SIGBUS handler after the
// library, with SA_ONSTACK, passing on faults it does not own; pool set
// files and copy-on-write opens are refused; messages are per thread.
func TestCAPINvblkOnly(t *testing.T) {
	c := needCAPI(t)
	bin := gccBuild(t, t.TempDir(), "capitest", "capitest.c", c.cflags...)
	for _, mode := range []string{"fork", "sigbus", "sigbus-chain", "extra"} {
		t.Run(mode, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, mode, t.TempDir())
			cmd.Env = append(os.Environ(), fastEnv...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if ctx.Err() != nil {
				t.Fatalf("capitest %s hung (killed after %v)\n%s%s", mode, toolTimeout, out, stderr.String())
			}
			if err != nil {
				t.Fatalf("capitest %s: %v\n%s%s", mode, err, out, stderr.String())
			}
			t.Logf("%s%s", out, stderr.String())
			switch mode {
			case "fork":
				if !strings.Contains(stderr.String(), "libpmemblk (nvblk): pmemblk_read: called in process") {
					t.Errorf("no fork message on stderr:\n%s", stderr.String())
				}
			case "sigbus", "sigbus-chain":
				if !strings.Contains(stderr.String(), "media error") {
					t.Errorf("the EIO is not a media error:\n%s", stderr.String())
				}
			}
		})
	}
}

// blkhelper.c, unchanged, built against nvblk's library: pools it writes
// read identically through PMDK's libpmemblk and pass `pmempool check`;
// pools PMDK's library writes read identically through it.
func TestCAPIBlkhelperInterop(t *testing.T) {
	c := needCAPI(t)
	pmdk := needTools(t)
	if p := loadedFrom(t, nil, c.helper); !sameFile(t, p, c.lib) {
		t.Fatalf("blkhelper built against nvblk's library loads %s", p)
	}
	for _, bs := range bsizes {
		t.Run(itoa(bs), func(t *testing.T) {
			for _, dir := range []struct {
				name          string
				writer, other tools
			}{{"nvblk-writes", c.tools, pmdk}, {"pmdk-writes", pmdk, c.tools}} {
				t.Run(dir.name, func(t *testing.T) {
					path := filepath.Join(t.TempDir(), "pool")
					n := dir.writer.create(t, path, bs, poolSize)
					if bs2, n2 := dir.other.info(t, path); bs2 != bs || n2 != n {
						t.Fatalf("the other library sees %d blocks of %d bytes, want %d of %d", n2, bs2, n, bs)
					}
					e := newExpect(bs, n)
					dir.writer.write(t, path, 7, 0, 1, 100, n-1)
					e.set(7, 0, 1, 100, n-1)
					dir.writer.write(t, path, 8, 1)
					e.set(8, 1)
					dir.writer.setState(t, path, "zero", 100, 200)
					e.zero(100, 200)
					dir.writer.setState(t, path, "error", 2)
					e.fail(2)
					x := dir.writer
					x.pmempoolCheck(t, path)
					e.verifyLibpmemblk(t, dir.other, path)
					e.verifyLibpmemblk(t, dir.writer, path)
					p, err := pmemblk.OpenWith(path, bs, pmemblk.Options{ReadOnly: true})
					if err != nil {
						t.Fatal(err)
					}
					e.verifyNvblk(t, p)
					p.Close()
					if out := dir.other.helperRun(t, "check", path, itoa(bs)); strings.TrimSpace(out) != "1" {
						t.Errorf("pmemblk_check: %q", out)
					}
				})
			}
		})
	}
}

// bench/blkbench.c, unchanged, built against nvblk's library, runs its
// pool modes.
func TestCAPIBlkbench(t *testing.T) {
	c := needCAPI(t)
	bin := gccBuild(t, t.TempDir(), "blkbench", filepath.Join(testutil.RepoRoot(), "bench", "blkbench.c"),
		append(c.cflags, "-lpmem")...)
	if p := loadedFrom(t, nil, bin); !sameFile(t, p, c.lib) {
		t.Fatalf("blkbench loads %s", p)
	}
	pool := filepath.Join(t.TempDir(), "pool")
	for _, args := range [][]string{
		{"fill", "-s", "32M", "-P", pool},
		{"write", "-t", "2", "-d", "200ms", "-P", pool},
		{"read", "-t", "2", "-d", "200ms", "-P", pool},
	} {
		out, err := runToolEnv(t, fastEnv, bin, args...)
		if err != nil {
			t.Fatal(err)
		}
		if !regexp.MustCompile(`^op=` + args[0] + ` threads=\d+ ops_per_s=[1-9]`).Match(out) {
			t.Errorf("blkbench %s: %q", args[0], out)
		}
	}
	pmdk := needTools(t)
	pmdk.pmempoolCheck(t, pool)
}

// Debian's fio, linked against libpmemblk.so.1, runs its pmemblk engine on
// nvblk's library through LD_LIBRARY_PATH: random writes verified with
// crc32c. Without --thread fio would fork; that run fails at once.
func TestCAPIFio(t *testing.T) {
	c := needCAPI(t)
	pmdk := needTools(t)
	fio := testutil.NeedTool(t, "fio")
	if p := loadedFrom(t, []string{"LD_LIBRARY_PATH=" + c.dir}, fio); !sameFile(t, p, c.lib) {
		t.Fatalf("fio with LD_LIBRARY_PATH loads %s", p)
	}
	dir := t.TempDir()
	pool := filepath.Join(dir, "fio.pool")
	args := func(extra ...string) []string {
		return append([]string{"--name=verify", "--ioengine=pmemblk", "--filename=" + pool + ",4096,64",
			"--rw=randwrite", "--bs=4k", "--size=8m", "--verify=crc32c", "--do_verify=1",
			"--verify_fatal=1", "--verify_state_save=0", "--randrepeat=0"}, extra...)
	}
	env := append([]string{"LD_LIBRARY_PATH=" + c.dir, "LD_DEBUG=libs"}, fastEnv...)
	ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, fio, args("--thread")...)
	cmd.Dir = dir // fio leaves files in its working directory
	cmd.Env = append(os.Environ(), env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("fio --thread: %v\n%s%s", err, out, tail(stderr.String(), 4000))
	}
	// LD_DEBUG=libs: the loader initialised nvblk's copy, not PMDK's.
	if !strings.Contains(stderr.String(), "calling init: "+c.lib) {
		t.Errorf("LD_DEBUG shows no init of %s:\n%s", c.lib, tail(stderr.String(), 4000))
	}
	if strings.Contains(stderr.String(), "calling init: "+debianLib) {
		t.Errorf("PMDK's library was loaded too")
	}
	if !regexp.MustCompile(`READ: bw=`).Match(out) || !regexp.MustCompile(`WRITE: bw=`).Match(out) {
		t.Errorf("fio did not write and verify:\n%s", out)
	}
	if !regexp.MustCompile(`err= 0`).Match(out) {
		t.Errorf("fio reports an error:\n%s", out)
	}
	pmdk.pmempoolCheck(t, pool)

	// Without --thread: fails, at once.
	ctx2, cancel2 := context.WithTimeout(context.Background(), toolTimeout)
	defer cancel2()
	cmd = exec.CommandContext(ctx2, fio, args()...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), append([]string{"LD_LIBRARY_PATH=" + c.dir}, fastEnv...)...)
	both, err := cmd.CombinedOutput()
	if ctx2.Err() != nil {
		t.Fatalf("fio without --thread hung (killed after %v):\n%s", toolTimeout, both)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("fio without --thread: %v, want a failure\n%s", err, both)
	}
	// fio 3.33's pmemblk engine refuses processes itself, before calling
	// the library; a fio that did call it in its child would get nvblk's
	// fork message (TestCAPINvblkOnly/fork).
	if !strings.Contains(string(both), "thread=1") && !strings.Contains(string(both), "libpmemblk (nvblk): ") {
		t.Errorf("fio without --thread failed without saying why:\n%s", both)
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// A program whose own SIGBUS handler was installed before it loaded the
// library (dlopen): the Go runtime installs its handler over it, turns a
// fault in the library's mapping into EIO, and passes a fault in the
// program's own code on to the program's handler. PMDK's library dies of
// the first fault in the program's handler.
func TestCAPISignalHandlerInstalledBefore(t *testing.T) {
	c := needCAPI(t)
	bin := gccBuild(t, t.TempDir(), "sigbustest", "sigbustest.c", "-ldl")
	for _, lib := range []struct{ name, path, want string }{
		{"nvblk", c.lib, "handler after load: other\nread -1 EIO\nown handler\n"},
		{"pmdk", debianLib, "handler after load: own\nown handler\n"},
	} {
		t.Run(lib.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), toolTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, lib.path, t.TempDir())
			cmd.Env = append(os.Environ(), fastEnv...)
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 7 {
				t.Fatalf("sigbustest %s: %v (want exit status 7, from the program's handler)\n%s%s", lib.name, err, out, stderr.String())
			}
			if string(out) != lib.want {
				t.Errorf("sigbustest %s printed\n%s\nwant\n%s(stderr: %s)", lib.name, out, lib.want, stderr.String())
			}
		})
	}
}
