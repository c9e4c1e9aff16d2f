package kernel_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/nvblk/nvblk/internal/testutil"
)

//go:embed guest_init.sh
var guestInit []byte

//go:embed guest_lib.sh
var guestLib []byte

// guestModules are the kernel modules the guest loads (with their
// dependencies from modules.dep): the ACPI NFIT bus, libnvdimm, the pmem
// namespace driver and the BTT.
var guestModules = []string{"nfit", "libnvdimm", "nd_pmem", "nd_btt"}

// guestBlkModules are in the initramfs too (/etc/nvblk/modules.blk) but
// loaded only by a job that needs them (nv_modules): virtio-blk disks and
// loop devices, for the GPT check. Debian builds them as modules; the GPT
// parser (CONFIG_EFI_PARTITION) is built in.
var guestBlkModules = []string{"virtio_pci", "virtio_blk", "loop"}

// guestNetModules (/etc/nvblk/modules.net) give the guest a virtio network
// card, the kernel's NBD client and ext4 (which mounts ext2; it needs a
// crc32c driver, which nothing would load on demand here), for the NBD
// check.
var guestNetModules = []string{"virtio_pci", "virtio_net", "nbd", "crc32c_generic", "ext4"}

// guestKernel is the kernel the guest boots.
type guestKernel struct {
	Release string // uname -r, e.g. 6.1.0-56-amd64
	Image   string // the bzImage (/boot/vmlinuz-RELEASE)
	ModDir  string // /lib/modules/RELEASE
}

// Build is the kernel's build string (the version line of the bzImage
// header, e.g. "#1 SMP PREEMPT_DYNAMIC Debian 6.1.192-2 (...)"), or "" if
// it cannot be read.
func (k guestKernel) Build(t testing.TB) string {
	b, err := os.ReadFile(k.Image)
	if err != nil || len(b) < 0x210 || string(b[0x202:0x206]) != "HdrS" {
		return ""
	}
	// The setup header's kernel_version field points (from 0x200) at a
	// NUL-terminated string: "RELEASE (builder) BUILD".
	off := int(b[0x20e]) | int(b[0x20f])<<8
	if off == 0 || 0x200+off >= len(b) {
		return ""
	}
	v := b[0x200+off:]
	if i := bytes.IndexByte(v, 0); i >= 0 {
		v = v[:i]
	}
	s := string(v)
	if i := strings.Index(s, "#"); i >= 0 {
		s = s[i:]
	}
	return s
}

// needFile fails (in CI) or skips (elsewhere) when path is not readable.
func needFile(t testing.TB, path, why string) {
	t.Helper()
	f, err := os.Open(path)
	if err == nil {
		f.Close()
		return
	}
	if testutil.InCI() {
		t.Fatalf("%s is required in CI (%s): %v", path, why, err)
	}
	t.Skipf("%s not usable (%s): %v", path, why, err)
}

// findKernel picks the kernel to boot: $NVBLK_KERNEL (a vmlinuz-RELEASE
// path) or the newest /boot/vmlinuz-* whose modules include nd_btt.
func findKernel(t testing.TB) guestKernel {
	t.Helper()
	cands := []string{}
	if p := os.Getenv("NVBLK_KERNEL"); p != "" {
		cands = append(cands, p)
	} else {
		m, _ := filepath.Glob("/boot/vmlinuz-*")
		sort.Slice(m, func(i, j int) bool { return versionLess(m[j], m[i]) })
		cands = m
	}
	for _, img := range cands {
		rel := strings.TrimPrefix(filepath.Base(img), "vmlinuz-")
		k := guestKernel{Release: rel, Image: img, ModDir: filepath.Join("/lib/modules", rel)}
		dep, err := os.ReadFile(filepath.Join(k.ModDir, "modules.dep"))
		if err != nil || !bytes.Contains(dep, []byte("/nd_btt.ko")) {
			continue
		}
		needFile(t, img, "the guest kernel")
		return k
	}
	msg := "no kernel with nd_btt: need /boot/vmlinuz-R and /lib/modules/R (Debian package linux-image-amd64; run scripts/install-deps.sh)"
	if testutil.InCI() {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return guestKernel{}
}

var numRun = regexp.MustCompile(`\d+|\D+`)

// versionLess compares kernel file names by their numeric runs.
func versionLess(a, b string) bool {
	pa, pb := numRun.FindAllString(a, -1), numRun.FindAllString(b, -1)
	for i := 0; i < len(pa) && i < len(pb); i++ {
		if pa[i] == pb[i] {
			continue
		}
		na, ea := strconv.Atoi(pa[i])
		nb, eb := strconv.Atoi(pb[i])
		if ea == nil && eb == nil {
			return na < nb
		}
		return pa[i] < pb[i]
	}
	return len(pa) < len(pb)
}

// moduleOrder resolves names (basenames without .ko) to module paths
// relative to modDir, dependencies first, from modules.dep.
func moduleOrder(modDir string, names []string) ([]string, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{}
	byName := map[string]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<16), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
		base := filepath.Base(mod)
		if i := strings.Index(base, ".ko"); i > 0 {
			byName[strings.ReplaceAll(base[:i], "-", "_")] = mod
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var order []string
	seen := map[string]bool{}
	var visit func(m string)
	visit = func(m string) {
		if seen[m] {
			return
		}
		seen[m] = true
		// modules.dep lists the deepest dependency last.
		d := deps[m]
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, m)
	}
	for _, n := range names {
		m, ok := byName[n]
		if !ok {
			return nil, fmt.Errorf("module %s not in %s/modules.dep", n, modDir)
		}
		visit(m)
	}
	for _, m := range order {
		if !strings.HasSuffix(m, ".ko") {
			return nil, fmt.Errorf("module %s is compressed; busybox insmod needs plain .ko files", m)
		}
	}
	return order, nil
}

// sharedLibs lists the shared objects a dynamic executable loads (ldd),
// the program interpreter included; none for a static one.
func sharedLibs(ldd, bin string) ([]string, error) {
	out, err := exec.Command(ldd, bin).CombinedOutput()
	if err != nil {
		if bytes.Contains(out, []byte("not a dynamic executable")) || bytes.Contains(out, []byte("statically linked")) {
			return nil, nil
		}
		return nil, fmt.Errorf("ldd %s: %v: %s", bin, err, out)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			libs = append(libs, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			libs = append(libs, f[0]) // the interpreter
		case len(f) >= 2 && f[1] == "=>" && strings.Contains(line, "not found"):
			return nil, fmt.Errorf("ldd %s: %s", bin, strings.TrimSpace(line))
		}
	}
	return libs, nil
}

// cpioWriter writes a cpio archive in the "newc" format the kernel's
// initramfs unpacker reads (Documentation/driver-api/early-userspace).
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	cpioDir  = 0o040000
	cpioReg  = 0o100000
	cpioLink = 0o120000
	cpioChr  = 0o020000
)

func (c *cpioWriter) entry(name string, mode uint32, data []byte, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	buf := make([]byte, 0, len(hdr)+len(name)+8+len(data)+4)
	buf = append(buf, hdr...)
	buf = append(buf, name...)
	buf = append(buf, 0)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	buf = append(buf, data...)
	for len(buf)%4 != 0 {
		buf = append(buf, 0)
	}
	_, c.err = c.w.Write(buf)
}

func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, nil, 0, 0)
	return c.err
}

// fsTree is the content of an archive: paths (without a leading slash) to
// entries; parent directories are added automatically.
type fsTree map[string]fsEntry

type fsEntry struct {
	mode       uint32 // type and permission bits
	data       []byte // file content or symlink target
	rdev       [2]uint32
	sourcePath string // regular file read at write time
}

func (t fsTree) dirs(p string) {
	for d := filepath.Dir(p); d != "." && d != "/"; d = filepath.Dir(d) {
		if _, ok := t[d]; !ok {
			t[d] = fsEntry{mode: cpioDir | 0o755}
		}
	}
}

func (t fsTree) addData(p string, perm uint32, data []byte) {
	p = strings.TrimPrefix(p, "/")
	t.dirs(p)
	t[p] = fsEntry{mode: cpioReg | perm, data: data}
}

func (t fsTree) addFile(p, src string, perm uint32) {
	p = strings.TrimPrefix(p, "/")
	t.dirs(p)
	t[p] = fsEntry{mode: cpioReg | perm, sourcePath: src}
}

func (t fsTree) addDir(p string) {
	p = strings.TrimPrefix(p, "/")
	t.dirs(p + "/x")
}

func (t fsTree) addChar(p string, major, minor uint32) {
	p = strings.TrimPrefix(p, "/")
	t.dirs(p)
	t[p] = fsEntry{mode: cpioChr | 0o600, rdev: [2]uint32{major, minor}}
}

// writeGzip writes the tree as a gzip-compressed newc archive, in sorted
// path order (parents before children).
func (t fsTree) writeGzip(w io.Writer) error {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return err
	}
	c := &cpioWriter{w: zw}
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		e := t[p]
		data := e.data
		if e.sourcePath != "" {
			if data, err = os.ReadFile(e.sourcePath); err != nil {
				return err
			}
		}
		c.entry(p, e.mode, data, e.rdev[0], e.rdev[1])
	}
	if err := c.close(); err != nil {
		return err
	}
	return zw.Close()
}

// fingerprint identifies the tree's inputs for the cache key: paths,
// inline data, and the size and mtime of source files.
func (t fsTree) fingerprint() (string, error) {
	h := sha256.New()
	paths := make([]string, 0, len(t))
	for p := range t {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		e := t[p]
		fmt.Fprintf(h, "%s\x00%o\x00%d\x00", p, e.mode, len(e.data))
		h.Write(e.data)
		if e.sourcePath != "" {
			st, err := os.Stat(e.sourcePath)
			if err != nil {
				return "", err
			}
			fmt.Fprintf(h, "%s\x00%d\x00%d\x00", e.sourcePath, st.Size(), st.ModTime().UnixNano())
		}
	}
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

// tools are the host programs the harness uses.
type tools struct {
	qemu, busybox, ndctl, ldd string
}

var (
	initramfsMu    sync.Mutex
	initramfsCache = map[string]string{}
)

// cacheDir is where base initramfs images are kept between runs:
// $NVBLK_KERNEL_CACHE, else $TMPDIR/nvblk-interop-kernel.
func cacheDir() string {
	if d := os.Getenv("NVBLK_KERNEL_CACHE"); d != "" {
		return d
	}
	return filepath.Join(os.TempDir(), "nvblk-interop-kernel")
}

// baseInitramfs builds (or finds in the cache) the guest's initramfs:
// static busybox, ndctl and its shared libraries, the nvdimm modules and
// the /init script. The cache key is the kernel release plus a fingerprint
// of every input, so a kernel, ndctl or script update rebuilds it.
func baseInitramfs(t testing.TB, k guestKernel, tl tools) string {
	t.Helper()
	tree := fsTree{}
	for _, d := range []string{"bin", "dev", "proc", "sys", "tmp", "run", "root", "etc/nvblk"} {
		tree.addDir(d)
	}
	tree.addChar("dev/console", 5, 1)
	tree.addChar("dev/null", 1, 3)
	tree.addData("init", 0o755, guestInit)
	tree.addData("etc/nvblk/lib.sh", 0o644, guestLib)
	for _, bin := range []string{tl.busybox, tl.ndctl} {
		real, err := filepath.EvalSymlinks(bin)
		if err != nil {
			t.Fatal(err)
		}
		tree.addFile("bin/"+filepath.Base(bin), real, 0o755)
		libs, err := sharedLibs(tl.ldd, real)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range libs {
			real, err := filepath.EvalSymlinks(l)
			if err != nil {
				t.Fatal(err)
			}
			tree.addFile(l, real, 0o755) // at the path the loader asks for
		}
	}
	mods, err := moduleOrder(k.ModDir, guestModules)
	if err != nil {
		t.Fatal(err)
	}
	blk, err := moduleOrder(k.ModDir, guestBlkModules)
	if err != nil {
		t.Fatal(err)
	}
	netm, err := moduleOrder(k.ModDir, guestNetModules)
	if err != nil {
		t.Fatal(err)
	}
	for list, ms := range map[string][]string{"etc/nvblk/modules": mods, "etc/nvblk/modules.blk": blk, "etc/nvblk/modules.net": netm} {
		var b strings.Builder
		for _, m := range ms {
			dst := filepath.Join("lib/modules", k.Release, m)
			tree.addFile(dst, filepath.Join(k.ModDir, m), 0o644)
			fmt.Fprintln(&b, dst)
		}
		tree.addData(list, 0o644, []byte(b.String()))
	}

	fp, err := tree.fingerprint()
	if err != nil {
		t.Fatal(err)
	}
	key := k.Release + "-" + fp
	initramfsMu.Lock()
	defer initramfsMu.Unlock()
	if p, ok := initramfsCache[key]; ok {
		return p
	}
	dir := cacheDir()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "initramfs-"+key+".cpio.gz")
	if _, err := os.Stat(path); err == nil {
		t.Logf("initramfs: cached %s", path)
		initramfsCache[key] = path
		return path
	}
	tmp, err := os.CreateTemp(dir, "initramfs-*.tmp")
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(tmp.Name())
	bw := bufio.NewWriterSize(tmp, 1<<20)
	if err := tree.writeGzip(bw); err != nil {
		t.Fatal(err)
	}
	if err := bw.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := tmp.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	t.Logf("initramfs: built %s (%d bytes; modules %s; on demand %s; %s)", path, st.Size(), strings.Join(mods, " "), strings.Join(blk, " "), strings.Join(netm, " "))
	initramfsCache[key] = path
	return path
}

// bootInitrd is the base initramfs with the job script and the guestio
// helper appended as a second (gzip'd newc) archive: the kernel unpacks
// concatenated archives in order.
func bootInitrd(t testing.TB, base, dir, job, guestio string) string {
	t.Helper()
	b, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.Write(b)
	extra := fsTree{
		"job.sh":      {mode: cpioReg | 0o755, data: []byte(job)},
		"bin/guestio": {mode: cpioReg | 0o755, sourcePath: guestio},
	}
	if err := extra.writeGzip(&buf); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "initrd.img")
	if err := os.WriteFile(p, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
