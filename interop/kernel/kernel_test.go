package kernel_test

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/bttfixture"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/nslabel"
	"github.com/nvblk/nvblk/pmem"
)

// harness holds what every boot needs.
type harness struct {
	dir       string
	kernel    guestKernel
	tools     tools
	initramfs string
	nvblk     string // the nvblk CLI, built for this run
	guestio   string // the guest's sector I/O helper (static), built for this run
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	tl := needTools(t)
	k := findKernel(t)
	h := &harness{dir: t.TempDir(), kernel: k, tools: tl}
	if os.Getenv("NVBLK_KERNEL_KEEP") != "" {
		// Keep everything (images, logs, initrds) for a look afterwards.
		d, err := os.MkdirTemp(cacheDir(), "run-")
		if err != nil {
			t.Fatal(err)
		}
		h.dir = d
		t.Logf("NVBLK_KERNEL_KEEP: keeping the run in %s", d)
	}
	start := time.Now()
	h.initramfs = baseInitramfs(t, k, tl)
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go not in PATH: %v", err)
	}
	h.nvblk = filepath.Join(h.dir, "nvblk")
	h.guestio = filepath.Join(h.dir, "guestio")
	for _, b := range []struct {
		out, pkg string
		env      []string
	}{
		{h.nvblk, "./cmd/nvblk", nil},
		{h.guestio, "./interop/kernel/guestio", []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64"}},
	} {
		cmd := exec.Command(goTool, "build", "-o", b.out, b.pkg)
		cmd.Dir = testutil.RepoRoot()
		cmd.Env = append(os.Environ(), b.env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", b.pkg, err, out)
		}
	}
	t.Logf("setup (initramfs, nvblk build): %s", time.Since(start).Round(time.Millisecond))
	// Keep the boots' serial logs and job scripts of a failed run (the
	// temporary directory goes away): $NVBLK_KERNEL_LOGDIR, else a
	// directory under the cache.
	t.Cleanup(func() {
		keep := os.Getenv("NVBLK_KERNEL_LOGDIR")
		if keep == "" && !t.Failed() {
			return
		}
		if keep == "" {
			keep = filepath.Join(cacheDir(), "failed-"+time.Now().Format("20060102-150405"))
		}
		files, _ := filepath.Glob(filepath.Join(h.dir, "*", "*"))
		for _, f := range files {
			if b := filepath.Base(f); b != "serial.log" && b != "job.sh" {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				continue
			}
			dst := filepath.Join(keep, filepath.Base(filepath.Dir(f))+"."+filepath.Base(f))
			if os.MkdirAll(keep, 0o755) == nil && os.WriteFile(dst, data, 0o644) == nil {
				t.Logf("kept %s", dst)
			}
		}
	})
	return h
}

// jobBuilder writes the guest's job script.
type jobBuilder struct{ strings.Builder }

func (j *jobBuilder) f(format string, a ...any) {
	fmt.Fprintf(&j.Builder, format, a...)
	j.WriteByte('\n')
}

// read has the guest read back every modelled LBA of im (O_DIRECT, one
// sector each) and scan the whole device; 512-byte devices are scanned
// through the page cache too (page-sized bio segments of eight sectors).
func (j *jobBuilder) read(im *image) {
	lbas := im.written()
	s := make([]string, len(lbas))
	for i, l := range lbas {
		s[i] = strconv.FormatUint(l, 10)
	}
	j.f("nv_dev %d && nv_sectors %d %d %s", im.slot, im.slot, im.ss, strings.Join(s, " "))
	if im.ss < 4096 {
		j.f("nv_scan %d %d cached", im.slot, im.ss)
	} else {
		j.f("nv_scan %d %d", im.slot, im.ss)
	}
}

func writeList(ws []write) string {
	s := make([]string, len(ws))
	for i, w := range ws {
		s[i] = w.shell()
	}
	return strings.Join(s, " ")
}

// kernelPlan is what the guest writes on a kernel-formatted image of n
// sectors: two writers pinned to the two vCPUs (so the kernel uses lanes 0
// and 1: nd_btt takes lane = CPU when it has at least as many lanes as
// CPUs), each rewriting its four sectors five times (the lane's log sequence
// number cycles 1-2-3-1-2 more than once), then single-threaded edge cases:
// a 4-sector bio, an overwrite with zeroes, one sector written four times, a
// 2-sector bio across LBA 256, the middle and the last sector.
func kernelPlan(n uint64) (cpu0, cpu1, rest []write) {
	for gen := 1; gen <= 5; gen++ {
		for lba := uint64(0); lba < 4; lba++ {
			cpu0 = append(cpu0, write{LBA: lba, Gen: gen})
			cpu1 = append(cpu1, write{LBA: 8 + lba, Gen: gen})
		}
	}
	rest = []write{
		{LBA: 4, Gen: 1, Count: 4}, {LBA: 7, Gen: 0},
		{LBA: 100, Gen: 1}, {LBA: 100, Gen: 2}, {LBA: 100, Gen: 3}, {LBA: 100, Gen: 4},
		{LBA: 255, Gen: 1}, {LBA: 256, Gen: 1, Count: 2}, {LBA: 1000, Gen: 1},
		{LBA: n / 2, Gen: 1}, {LBA: n - 1, Gen: 1},
	}
	return
}

// nvblkPlan is what nvblk writes on its own images: overwrites of the
// first sectors, a multi-sector write, a sector rewritten four times, and
// the edges.
func nvblkPlan(n uint64) []write {
	var ws []write
	for gen := 1; gen <= 4; gen++ {
		for lba := uint64(0); lba < 4; lba++ {
			ws = append(ws, write{LBA: lba, Gen: gen})
		}
	}
	return append(ws,
		write{LBA: 16, Gen: 1, Count: 8},
		write{LBA: 100, Gen: 1}, write{LBA: 100, Gen: 2}, write{LBA: 100, Gen: 3}, write{LBA: 100, Gen: 4},
		write{LBA: 255, Gen: 2}, write{LBA: 256, Gen: 2, Count: 2},
		write{LBA: n / 2, Gen: 3}, write{LBA: n - 1, Gen: 1})
}

// sectorsOf returns the exported sectors of a namespace of nsSize bytes.
func sectorsOf(t testing.TB, nsSize int64, v btt.Version, lbasize uint32) uint64 {
	t.Helper()
	l, err := btt.ComputeLayout(nsSize, v, lbasize, btt.DefaultNFree)
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, a := range l {
		n += uint64(a.ExternalNLBA)
	}
	return n
}

// guestView is what the guest reported about one disk.
type guestView struct {
	region     string
	regionBase int64
	ns         string
	nsBase     int64
	nsSize     int64
	nsUUID     string // "" when label-less
	bttUUID    string
	bttLBASize int
	blockdev   string
	sectors512 int64
	sectors    map[uint64][]string // LBA -> results of each read (sha256 or EIO), in order
	scan       *scan               // O_DIRECT, one sector per bio segment
	cscan      *scan               // through the page cache (page-sized bio segments)
	check      []string            // ndctl check-namespace exit status per run
	checkMsgs  []string
	logIndex   []string
}

func view(t testing.TB, rep *guestReport, k int, name string) *guestView {
	t.Helper()
	v := &guestView{sectors: map[uint64][]string{}}
	last := func(key string) []string {
		r := rep.Records[k][key]
		if len(r) == 0 {
			return nil
		}
		return r[len(r)-1]
	}
	if r := last("region"); len(r) == 3 {
		v.region = r[0]
		v.regionBase, _ = parseHex(r[1])
	} else {
		t.Errorf("%s: the guest reported no region", name)
	}
	if r := last("namespace"); len(r) == 5 {
		v.ns = r[0]
		v.nsBase, _ = parseHex(r[1])
		v.nsSize, _ = strconv.ParseInt(r[2], 10, 64)
		if r[3] != "-" {
			v.nsUUID = r[3]
		}
	}
	if r := last("btt"); len(r) == 5 {
		v.bttUUID = r[1]
		v.bttLBASize, _ = strconv.Atoi(r[2])
		v.blockdev = r[3]
		v.sectors512, _ = strconv.ParseInt(r[4], 10, 64)
	}
	for _, r := range rep.Records[k]["sector"] {
		if len(r) == 2 {
			lba, _ := strconv.ParseUint(r[0], 10, 64)
			v.sectors[lba] = append(v.sectors[lba], r[1])
		}
	}
	v.scan = parseScan(rep.Records[k], "")
	v.cscan = parseScan(rep.Records[k], "c")
	for _, r := range rep.Records[k]["check"] {
		v.check = append(v.check, r[0])
	}
	for _, r := range rep.Records[k]["checkmsg"] {
		v.checkMsgs = append(v.checkMsgs, r[0])
	}
	for _, r := range rep.Records[k]["debugfs"] {
		v.logIndex = append(v.logIndex, strings.Join(r, "="))
	}
	return v
}

// expectAttached checks that the kernel attached the disk in sector mode
// with the BTT nvblk sees.
func expectAttached(t testing.TB, im *image, v *guestView, o *opened) {
	t.Helper()
	if v.blockdev == "" || v.blockdev == "-" {
		t.Fatalf("%s: the kernel did not attach a BTT (no /dev/pmemNs)", im.name)
	}
	if got, want := v.bttUUID, uuid.UUID(o.UUID()).String(); got != want {
		t.Errorf("%s: kernel BTT uuid %s, nvblk %s (reformatted?)", im.name, got, want)
	}
	if got, want := uint32(v.bttLBASize), o.LBASize(); got != want {
		t.Errorf("%s: kernel lbasize %d, nvblk %d", im.name, got, want)
	}
	if got, want := v.sectors512*512, int64(o.Sectors())*int64(o.SectorSize()); got != want {
		t.Errorf("%s: kernel device bytes %d, nvblk %d", im.name, got, want)
	}
}

// expectGuestReads checks the kernel's reads against the model: the last
// reported read of every modelled LBA, and the whole-device scans.
func expectGuestReads(t testing.TB, im *image, v *guestView, sectors uint64) {
	t.Helper()
	for _, lba := range im.written() {
		r := v.sectors[lba]
		if len(r) == 0 {
			t.Errorf("%s: the guest did not read lba %d", im.name, lba)
			continue
		}
		if got, want := r[len(r)-1], sha(im.content(lba)); got != want {
			t.Errorf("%s: kernel reads lba %d as %s, want generation %d (%s)", im.name, lba, got, im.gens[lba], want)
		}
	}
	want := modelNonzero(im, sectors, false)
	switch {
	case v.scan == nil:
		t.Errorf("%s: no whole-device scan from the guest", im.name)
	case v.scan.eio:
		t.Errorf("%s: the kernel failed to read the whole device", im.name)
	default:
		if v.scan.sectors != sectors {
			t.Errorf("%s: the kernel exports %d sectors, want %d", im.name, v.scan.sectors, sectors)
		}
		if d := diffNonzero(v.scan.nz, want); d != "" {
			t.Errorf("%s: the kernel's whole device (O_DIRECT) differs from the model: %s", im.name, d)
		}
	}
	if v.cscan == nil {
		return
	}
	d := diffNonzero(v.cscan.nz, want)
	switch {
	case d == "" && !v.cscan.eio:
	case len(im.trimmed) > 0 && im.ss < 4096:
		// Linux's btt_read_pg zero-fills a sector in the Z state and then
		// returns, leaving the rest of the bio segment unread: through the
		// page cache the sectors after a Z sector in the same 4 KiB page
		// come back unfilled. nvblk therefore writes zero sectors instead
		// of Z entries on sub-page BTTs; seeing this again is a regression.
		t.Errorf("%s: through the page cache the kernel returns %s: did nvblk zero write Z entries on a %d-byte BTT? (Linux mis-reads pages holding a Z sector)",
			im.name, d, im.ss)
	default:
		t.Errorf("%s: the kernel's whole device through the page cache differs from the model: %s", im.name, d)
	}
}

// scan is a guest's whole-device scan: the sectors that are not zeroes.
type scan struct {
	sectors uint64
	nz      map[uint64]string // LBA -> sha256
	eio     bool
}

func parseScan(rec map[string][][]string, prefix string) *scan {
	end := rec[prefix+"scan"]
	if len(end) == 0 {
		return nil
	}
	s := &scan{nz: map[uint64]string{}}
	last := end[len(end)-1]
	if last[0] == "EIO" {
		s.eio = true
		return s
	}
	s.sectors, _ = strconv.ParseUint(last[0], 10, 64)
	for _, r := range rec[prefix+"nz"] {
		if len(r) == 2 {
			lba, _ := strconv.ParseUint(r[0], 10, 64)
			s.nz[lba] = r[1]
		}
	}
	return s
}

// diffNonzero describes how got differs from want ("" if not at all).
func diffNonzero(got, want map[uint64]string) string {
	var d []string
	for lba, w := range want {
		if g, ok := got[lba]; !ok {
			d = append(d, fmt.Sprintf("lba %d reads as zeroes", lba))
		} else if g != w {
			d = append(d, fmt.Sprintf("lba %d differs", lba))
		}
	}
	for lba := range got {
		if _, ok := want[lba]; !ok {
			d = append(d, fmt.Sprintf("lba %d is not zeroes", lba))
		}
	}
	sort.Strings(d)
	if len(d) > 8 {
		d = append(d[:8], fmt.Sprintf("and %d more", len(d)-8))
	}
	return strings.Join(d, ", ")
}

// expectSameDevice reads every sector through nvblk (against the model)
// and checks that the kernel's whole-device scan saw the same device.
func expectSameDevice(t testing.TB, im *image, v *guestView, o *opened) {
	t.Helper()
	nz := verifyNvblk(t, im, o, nil)
	if v.scan == nil || v.scan.eio {
		return // expectGuestReads reports it
	}
	if d := diffNonzero(nz, v.scan.nz); d != "" {
		t.Errorf("%s: nvblk and the kernel read different devices: %s", im.name, d)
	}
}

// expectClean checks ndctl check-namespace's verdict.
func expectClean(t testing.TB, im *image, v *guestView) {
	t.Helper()
	if len(v.check) == 0 {
		t.Errorf("%s: ndctl check-namespace did not run", im.name)
		return
	}
	if v.check[len(v.check)-1] != "0" {
		t.Errorf("%s: ndctl check-namespace exit %s: %s", im.name, v.check[len(v.check)-1], strings.Join(v.checkMsgs, " | "))
		return
	}
	t.Logf("%s: ndctl check-namespace: clean (%s)", im.name, strings.Join(v.checkMsgs, " | "))
}

// nvblkCheckHook is where `nvblk check` joins the harness: it runs the
// checker on every image the kernel has just handled, next to ndctl
// check-namespace.
//
// An image that ndctl finds clean must be clean for nvblk too (exit 0;
// fsck codes, never writes without --repair), labelled images included:
// the CLI finds their label area at the end of the file and checks the
// namespace it describes.
func (h *harness) nvblkCheckHook(t *testing.T, im *image, ndctlClean bool) {
	t.Helper()
	if err := exec.Command(h.nvblk, "check", "--help").Run(); err != nil {
		t.Fatalf("%s: nvblk check --help: %v", im.name, err)
	}
	out, err := exec.Command(h.nvblk, "check", im.path).CombinedOutput()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Errorf("%s: nvblk check: %v", im.name, err)
		return
	}
	msg := strings.TrimSpace(string(out))
	switch {
	case ndctlClean && code != 0:
		t.Errorf("%s: nvblk check exit %d where ndctl check-namespace is clean:\n%s", im.name, code, msg)
	default:
		t.Logf("%s: nvblk check exit %d (ndctl clean: %v): %s", im.name, code, ndctlClean, msg)
	}
}

// prepareRepaired makes an nvblk BTT, writes nvblkPlan on it, damages
// three lanes of its log as the log fixtures do (a padding byte, equal
// and impossible sequence numbers: Linux refuses such a log), and repairs
// it with nvblk check --repair, so that the kernel attaching it in boot 1
// shows the repaired log is one Linux reads.
func prepareRepaired(t *testing.T, h *harness, im *image) {
	t.Helper()
	o := createImage(t, im, btt.V11)
	writeNvblk(t, im, o, nvblkPlan(o.Sectors())...)
	a := o.Arenas()[0]
	o.close()
	dev, err := pmem.Open(im.path, pmem.Options{})
	if err != nil {
		t.Fatal(err)
	}
	err = bttfixture.DamageLanes(dev, im.nsOff+a.Offset+int64(a.Info.LogOff), int(a.Info.NFree))
	dev.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(h.nvblk, "check", "--repair", im.path).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 || strings.Count(string(out), "[repaired") != 3 {
		t.Fatalf("%s: nvblk check --repair of the damaged log: %v\n%s", im.name, err, out)
	}
	if out, err := exec.Command(h.nvblk, "check", im.path).CombinedOutput(); err != nil {
		t.Fatalf("%s: nvblk check after the repair: %v\n%s", im.name, err, out)
	}
}

// TestKernel runs nvblk against the Linux kernel's nd_btt under qemu, in
// two boots (see README.md):
//
//	boot 1: kernel-formatted images (1.1 and 2.0) written from two CPUs;
//	        nvblk-made 1.1 images (512, 4096, 4160) read by the kernel;
//	        an interrupted write handed from nvblk to the kernel;
//	        a real media error (machine check) under a data block.
//	boot 2: nvblk BTT 2.0 on the kernel's labelled namespaces; the media
//	        error cleared by nvblk; nvblk writes into a kernel image;
//	        nvblk's GPT parsed by the kernel (virtio disk, losetup -P).
//
// Each boot is a list of cases (kernelCase: images, host preparation, the
// guest's part of the job, verification), run by runBoot; a new kernel
// scenario is one more entry.
func TestKernel(t *testing.T) {
	h := newHarness(t)
	t.Logf("guest kernel: Linux %s (%s, %s), modules from %s", h.kernel.Release, h.kernel.Build(t), h.kernel.Image, h.kernel.ModDir)
	testStart := time.Now()
	imgDir := filepath.Join(h.dir, "images")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	slot := 0
	add := func(im *image, label int64, blank bool) *image {
		im.path = filepath.Join(imgDir, im.name+".img")
		im.label = label
		switch {
		case label != 0:
			im.nsSize = labelledSize
		case blank: // for ndctl to format
			im.nsSize = ndctlSize
		}
		im.slot = slot
		slot++
		if blank {
			if err := os.WriteFile(im.path, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Truncate(im.path, im.nsSize+im.label); err != nil {
				t.Fatal(err)
			}
		}
		return im
	}

	// ---- boot 1 images, one nvdimm slot each ----
	var (
		k11   = add(newImage("k11-512", 512, 512), 0, true)            // kernel: label-less, BTT 1.1
		k11m  = add(newImage("k11-4160", 4096, 4160), 0, true)         // kernel: label-less, BTT 1.1, 64 bytes of metadata per sector
		k20   = add(newImage("k20-4096", 4096, 4096), labelSize, true) // kernel: labelled, BTT 2.0
		k20s  = add(newImage("k20-512", 512, 512), labelSize, true)    // kernel: labelled, BTT 2.0
		n11   = add(newImage("n11-512", 512, 512), 0, false)           // nvblk command line
		n11b  = add(newImage("n11-4096", 4096, 4096), 0, false)        // nvblk Go API
		n11m  = add(newImage("n11-4160", 4096, 4160), 0, false)        // nvblk Go API
		crash = add(newImage("crash-4096", 4096, 4096), 0, false)
		media = add(newImage("media-4096", 4096, 4096), 0, false)
		n11a  = add(newImage("n11-arenas", 4096, 4096), 0, false)    // nvblk Go API, two 16 MiB arenas; the kernel writes too
		rep11 = add(newImage("repaired-4096", 4096, 4096), 0, false) // nvblk Go API, log damaged, then nvblk check --repair
	)
	kernelMade := []*image{k11, k11m, k20, k20s}
	nvblkMade := []*image{n11, n11b, n11m}
	// Shared between the cases (set by one's prepare, used by another's
	// job or verify).
	var (
		arenaEdge      uint64
		crashOld       map[uint64]uint32
		mediaX, mediaY uint64
		mediaOff       int64
		n20            []*image
		gpt            *gptImage
	)
	imgs := func(ims ...*image) func() []*image { return func() []*image { return ims } }

	// ---- boot 1: kernel-formatted images written from two CPUs, nvblk-made
	// BTT 1.1 images read by the kernel, an interrupted write handed from
	// nvblk to the kernel, a real media error under a data block ----
	rep1 := h.runBoot(t, "boot1", []string{"btt", "mce", "Memory failure", "Hardware Error"}, []kernelCase{{
		name:   "nvblk-made",
		images: imgs(nvblkMade...),
		prepare: func(t *testing.T) {
			// n11-512 through the command line: create, write, zero, info.
			{
				h.nvblkCLI(t, nil, "create", "--format", "linux", "--sector-size", "512", "--size", strconv.Itoa(labellessSize), n11.path)
				n := sectorsOf(t, n11.nsSize, btt.V11, 512)
				for _, w := range nvblkPlan(n) {
					c := max(w.Count, 1)
					var data []byte
					for i := 0; i < c; i++ {
						data = append(data, pattern(n11.seed, w.LBA+uint64(i), w.Gen, 512)...)
					}
					h.nvblkCLI(t, data, "write", "--lba", strconv.FormatUint(w.LBA, 10), n11.path)
					n11.apply(w)
				}
				// `nvblk zero` on 512-byte sectors writes zero sectors (not the Z
				// state, which Linux 6.1 mis-reads through the page cache).
				h.nvblkCLI(t, nil, "zero", "--lba", "18", "--count", "3", n11.path)
				n11.apply(write{LBA: 18, Gen: 0, Count: 3})
				n11.trim(18, 3)
				ci := h.info(t, n11.path)
				if ci.Format != "linux" || ci.Version != "1.1" || ci.Offset != 4096 || ci.SectorSize != 512 || ci.Sectors != n {
					t.Fatalf("n11-512: nvblk info %+v", ci)
				}
			}
			// n11-4096, n11-4160 through the Go API.
			for _, im := range []*image{n11b, n11m} {
				o := createImage(t, im, btt.V11)
				writeNvblk(t, im, o, nvblkPlan(o.Sectors())...)
				o.close()
			}
		},
		verify: func(t *testing.T, rep *guestReport) {
			for _, im := range nvblkMade {
				t.Run("nvblk-to-kernel/"+im.name, func(t *testing.T) { expectNvblkToKernel(t, h, im, view(t, rep, im.slot, im.name)) })
			}
		},
	}, {
		name:   "arenas",
		images: imgs(n11a),
		prepare: func(t *testing.T) {
			// n11-arenas: the kernel lays out at most one arena per 512 GiB, so a
			// multi-arena BTT is made here with 16 MiB arenas (ARENA_MIN_SIZE);
			// nvblk writes across the arena boundary, then the kernel does (boot 1
			// job), and both must read the other's writes in either arena.
			n11a.nsSize, n11a.arenas = 34*mib, 16*mib
			{
				o := createImage(t, n11a, btt.V11)
				ar := o.Arenas()
				if len(ar) != 2 {
					t.Fatalf("n11-arenas: %d arenas, want 2", len(ar))
				}
				arenaEdge = ar[1].ExternalStart
				n := o.Sectors()
				writeNvblk(t, n11a, o, append(nvblkPlan(n),
					write{LBA: arenaEdge - 1, Gen: 2}, write{LBA: arenaEdge, Gen: 2},
					write{LBA: arenaEdge - 2, Gen: 3, Count: 4}, write{LBA: arenaEdge + 5, Gen: 1})...)
				o.close()
			}
		},
		write: func(t *testing.T, j *jobBuilder) {
			{
				im := n11a
				kw := []write{
					{LBA: arenaEdge - 1, Gen: 5}, {LBA: arenaEdge + 1, Gen: 5},
					{LBA: arenaEdge - 3, Gen: 6, Count: 6}, // one bio across the arenas
					{LBA: arenaEdge + 5, Gen: 2}, {LBA: arenaEdge + 7, Gen: 1},
				}
				j.f("nv_phase write %s", im.name)
				j.f("nv_dev %d", im.slot)
				j.f("nv_write %d %d %s %s", im.slot, im.ss, im.seed, writeList(kw))
				im.apply(kw...)
			}
		},
		verify: func(t *testing.T, rep *guestReport) {
			t.Run("nvblk-to-kernel/"+n11a.name, func(t *testing.T) { expectNvblkToKernel(t, h, n11a, view(t, rep, n11a.slot, n11a.name)) })
		},
	}, {
		name:    "repaired",
		images:  imgs(rep11),
		prepare: func(t *testing.T) { prepareRepaired(t, h, rep11) },
		verify: func(t *testing.T, rep *guestReport) {
			t.Run("nvblk-to-kernel/"+rep11.name, func(t *testing.T) { expectNvblkToKernel(t, h, rep11, view(t, rep, rep11.slot, rep11.name)) })
		},
	}, {
		name:   "kernel-made",
		images: imgs(kernelMade...),
		write: func(t *testing.T, j *jobBuilder) {
			for _, im := range kernelMade {
				k := im.slot
				j.f("nv_phase format+write %s", im.name)
				v := btt.V11
				if im.label != 0 {
					v = btt.V20
					j.f("nv_mksector_labels %d %d", k, im.lbasize)
				} else {
					j.f("nv_mksector_io %d %d", k, im.lbasize)
				}
				c0, c1, rest := kernelPlan(sectorsOf(t, im.nsSize, v, im.lbasize))
				j.f("nv_dev %d", k)
				j.f("nv_write %d %d %s cpu 0 %s &", k, im.ss, im.seed, writeList(c0))
				j.f("nv_write %d %d %s cpu 1 %s &", k, im.ss, im.seed, writeList(c1))
				j.f("wait")
				j.f("nv_write %d %d %s %s", k, im.ss, im.seed, writeList(rest))
				im.apply(c0...)
				im.apply(c1...)
				im.apply(rest...)
				j.f("nv_info %d", k)
			}
		},
		verify: func(t *testing.T, rep *guestReport) {
			for _, im := range kernelMade {
				t.Run("kernel-to-nvblk/"+im.name, func(t *testing.T) {
					v := view(t, rep, im.slot, im.name)
					if v.blockdev == "" || v.blockdev == "-" {
						t.Fatalf("the kernel did not create a sector namespace")
					}
					im.nsOff = v.nsBase - v.regionBase
					im.nsSize = v.nsSize
					im.nsUUID = v.nsUUID
					if im.label != 0 {
						if im.nsUUID == "" {
							t.Fatalf("labelled namespace without a uuid")
						}
						expectLabels(t, im)
					}
					if fileNS := fileSize(t, im.path) - im.label; im.nsOff < 0 || im.nsOff+im.nsSize > fileNS {
						t.Fatalf("namespace [%d,+%d) outside the file's %d namespace bytes", im.nsOff, im.nsSize, fileNS)
					}
					o := openImage(t, im, true)
					defer o.close()
					wantV, wantOff := "1.1", int64(4096)
					if im.label != 0 {
						wantV, wantOff = "2.0", 0
					}
					if o.Version().String() != wantV || o.InitialOffset() != wantOff {
						t.Errorf("BTT %s at %d, want %s at %d", o.Version(), o.InitialOffset(), wantV, wantOff)
					}
					if im.nsUUID != "" && uuid.UUID(o.ParentUUID()).String() != im.nsUUID {
						t.Errorf("parent uuid %s, namespace uuid %s", uuid.UUID(o.ParentUUID()), im.nsUUID)
					}
					expectAttached(t, im, v, o)
					// The guest's reads are the kernel's contents; nvblk must read
					// the same bytes, sector for sector and as a whole.
					expectGuestReads(t, im, v, o.Sectors())
					expectSameDevice(t, im, v, o)
					// Lanes 0 and 1 (one per vCPU) carry the pinned writers' writes.
					a := o.Arenas()[0]
					lanes := readLanes(t, o.ns, a)
					for _, l := range lanes[:2] {
						if !l.OK || l.Cur.OldMap == l.Cur.NewMap {
							t.Errorf("lane %d: current log entry %+v (slots %+v): no write logged", l.Lane, l.Cur, l.Slots)
						}
					}
					used := 0
					for _, l := range lanes {
						if l.Cur.OldMap != l.Cur.NewMap {
							used++
						}
					}
					t.Logf("BTT %s at %d, lbasize %d, %d sectors, log index %v (kernel debugfs %v); %d lanes used; lane 0 %+v, lane 1 %+v; %d writes",
						o.Version(), o.InitialOffset(), o.LBASize(), o.Sectors(), a.LogIndex, v.logIndex, used, lanes[0].Cur, lanes[1].Cur, im.writes)
					if im.label == 0 {
						// The command line reads the same (label-less images are
						// whole files).
						ci := h.info(t, im.path)
						if ci.Version != wantV || ci.Offset != wantOff || ci.UUID != v.bttUUID {
							t.Errorf("nvblk info: %+v", ci)
						}
						for _, lba := range []uint64{0, 100, o.Sectors() - 1} {
							out := h.nvblkCLI(t, nil, "read", "--lba", strconv.FormatUint(lba, 10), "--count", "1", im.path)
							if sha(out) != sha(im.content(lba)) {
								t.Errorf("nvblk read --lba %d differs", lba)
							}
						}
					}
					expectClean(t, im, v)
					h.nvblkCheckHook(t, im, true)
				})
			}

		},
	}, {
		name:    "crash",
		images:  imgs(crash),
		prepare: func(t *testing.T) { crashOld = prepareCrash(t, crash) },
		verify: func(t *testing.T, rep *guestReport) {
			t.Run("crash-handoff", func(t *testing.T) {
				im := crash
				v := view(t, rep, im.slot, im.name)
				o := openImage(t, im, true)
				defer o.close()
				expectAttached(t, im, v, o)
				expectGuestReads(t, im, v, o.Sectors())
				expectSameDevice(t, im, v, o)
				a := o.Arenas()[0]
				for _, x := range slices.Sorted(maps.Keys(crashOld)) {
					raw := rawMapEntry(t, im, a, x)
					post, st, _ := o.MapEntry(x)
					t.Logf("after the kernel: lba %d map entry %#08x (%s, block %d; before the boot it pointed at block %d)", x, raw, st, post, crashOld[x])
					if post == crashOld[x] {
						t.Errorf("lba %d: the kernel did not persist the roll-forward (map still at block %d)", x, post)
					}
				}
				expectClean(t, im, v)
				h.nvblkCheckHook(t, im, true)
			})

		},
	}, {
		name:    "media",
		images:  imgs(media),
		prepare: func(t *testing.T) { mediaX, mediaY, mediaOff = prepareMedia(t, media) },
		after: func(t *testing.T, j *jobBuilder) {
			j.f("nv_phase poison")
			j.f("nv_poison %d %d", media.slot, mediaOff)
			j.f("nv_sectors %d %d %d %d", media.slot, media.ss, mediaX, mediaY)
		},
		verify: func(t *testing.T, rep *guestReport) {
			t.Run("media-error/kernel", func(t *testing.T) {
				im := media
				v := view(t, rep, im.slot, im.name)
				if r := rep.first(im.slot, "poisoned"); r == nil {
					t.Fatalf("the guest reported no poisoned range")
				} else {
					t.Logf("machine check at %s; region badblocks (first 512-byte sector from the region start, count): %s", r[0], strings.Join(r[1:], " "))
				}
				rx, ry := v.sectors[mediaX], v.sectors[mediaY]
				if len(rx) != 2 || rx[0] != sha(im.content(mediaX)) || rx[1] != "EIO" {
					t.Errorf("lba %d reads %v: want the data, then EIO after the machine check", mediaX, rx)
				}
				if len(ry) != 2 || ry[1] != sha(im.content(mediaY)) {
					t.Errorf("lba %d reads %v: want the data both times", mediaY, ry)
				}
				o := openImage(t, im, true)
				defer o.close()
				a := o.Arenas()[0]
				raw := rawMapEntry(t, im, a, mediaX)
				post, st, err := o.MapEntry(mediaX)
				if err != nil || st != btt.MapError {
					t.Errorf("lba %d: map entry %#08x state %s (%v), want the kernel's E flag", mediaX, raw, st, err)
				} else {
					t.Logf("the kernel set the E flag: lba %d map entry %#08x (block %d)", mediaX, raw, post)
				}
				buf := make([]byte, im.ss)
				if err := o.ReadSectors(buf, mediaX); !errors.Is(err, btt.ErrIO) {
					t.Errorf("nvblk read of lba %d: %v, want an error wrapping btt.ErrIO", mediaX, err)
				} else {
					t.Logf("nvblk read of lba %d: %v", mediaX, err)
				}
				verifyNvblk(t, im, o, map[uint64]bool{mediaX: true})
				expectClean(t, im, v)
				h.nvblkCheckHook(t, im, true)
			})

		},
	}})

	// ---- boot 2: nvblk BTT 2.0 on the kernel's labelled namespaces; the
	// media error cleared by nvblk; nvblk's writes into a kernel-formatted
	// image; a GPT written by nvblk ----
	rep2 := h.runBoot(t, "boot2", []string{"btt"}, []kernelCase{{
		name:   "n20",
		images: func() []*image { return n20 },
		prepare: func(t *testing.T) {
			// nvblk lays out BTT 2.0 on the kernel's labelled namespaces, with the
			// namespace uuid as parent_uuid, keeping the labels (and the slot:
			// the labels belong to that DIMM).
			for _, k := range []*image{k20, k20s} {
				if k.nsUUID == "" {
					t.Fatalf("%s: no namespace uuid from boot 1", k.name)
				}
				im := newImage("n20-"+strings.TrimPrefix(k.name, "k20-"), k.ss, k.lbasize)
				im.path, im.label, im.slot, im.nsOff, im.nsSize, im.nsUUID = k.path, k.label, k.slot, k.nsOff, k.nsSize, k.nsUUID
				// Like Linux, nvblk does not scrub data blocks when it lays out a
				// BTT: the kernel's old sectors would show through the identity
				// map. Zero the namespace (not the labels) so the model holds.
				labels := labelArea(t, im)
				zeroRange(t, im.path, im.nsOff, im.nsSize)
				o := createImage(t, im, btt.V20)
				writeNvblk(t, im, o, nvblkPlan(o.Sectors())...)
				o.close()
				if !bytes.Equal(labelArea(t, im), labels) {
					t.Fatalf("%s: the label area changed while nvblk wrote the namespace", im.name)
				}
				o = openImage(t, im, true)
				if o.Version() != btt.V20 || o.InitialOffset() != 0 || uuid.UUID(o.ParentUUID()).String() != im.nsUUID {
					t.Fatalf("%s: nvblk made %s at %d, parent %s", im.name, o.Version(), o.InitialOffset(), uuid.UUID(o.ParentUUID()))
				}
				o.close()
				n20 = append(n20, im)
			}
		},
		verify: func(t *testing.T, rep *guestReport) {
			for _, im := range n20 {
				t.Run("nvblk-to-kernel/"+im.name, func(t *testing.T) {
					v := view(t, rep, im.slot, im.name)
					if v.nsUUID != im.nsUUID {
						t.Errorf("namespace uuid %s, want %s", v.nsUUID, im.nsUUID)
					}
					expectNvblkToKernel(t, h, im, v)
				})
			}
		},
	}, {
		name:   "media-cleared",
		images: imgs(media),
		prepare: func(t *testing.T) {
			// nvblk rewrites the sector that has the kernel's E flag.
			{
				o := openImage(t, media, false)
				writeNvblk(t, media, o, write{LBA: mediaX, Gen: 2})
				buf := make([]byte, media.ss)
				if err := o.ReadSectors(buf, mediaX); err != nil || sha(buf) != sha(media.content(mediaX)) {
					t.Errorf("media: nvblk reads lba %d after rewriting it: %v", mediaX, err)
				}
				if _, st, _ := o.MapEntry(mediaX); st != btt.MapNormal {
					t.Errorf("media: lba %d map state %s after the write, want normal", mediaX, st)
				}
				o.close()
			}
		},
		verify: func(t *testing.T, rep *guestReport) {
			t.Run("media-error/cleared-by-nvblk", func(t *testing.T) {
				expectNvblkToKernelE(t, h, media, view(t, rep, media.slot, media.name), true)
			})
		},
	}, {
		name:   "k11-rewritten",
		images: imgs(k11),
		prepare: func(t *testing.T) {
			// nvblk writes into a kernel-formatted, kernel-written image.
			{
				o := openImage(t, k11, false)
				n := o.Sectors()
				writeNvblk(t, k11, o, write{LBA: 0, Gen: 6}, write{LBA: 9, Gen: 6}, write{LBA: 100, Gen: 5},
					write{LBA: 2000, Gen: 1, Count: 3}, write{LBA: n - 2, Gen: 1})
				o.close()
			}
		},
		verify: func(t *testing.T, rep *guestReport) {
			t.Run("nvblk-to-kernel/k11-512-rewritten", func(t *testing.T) {
				expectNvblkToKernel(t, h, k11, view(t, rep, k11.slot, k11.name))
			})
		},
	}, {
		// A GPT written by nvblk, for the kernel's partition parser (a virtio
		// disk and a loop device, see gpt_test.go).
		name:    "gpt",
		prepare: func(t *testing.T) { gpt = h.prepareGPT(t, imgDir) },
		extra:   func() []vmDisk { return []vmDisk{gpt.disk()} },
		after:   func(t *testing.T, j *jobBuilder) { gpt.job(j) },
		verify:  func(t *testing.T, rep *guestReport) { gpt.check(t, h, rep) },
	}, {
		name: "invariant",
		verify: func(t *testing.T, rep *guestReport) {
			// Every image the kernel touched still satisfies the BTT invariant.
			for _, im := range []*image{k11, k11m, n11, n11b, n11m, crash, media, n20[0], n20[1]} {
				o := openImage(t, im, true)
				if err := btt.VerifyPermutation(o.ns); err != nil {
					t.Errorf("%s: %v", im.name, err)
				}
				o.close()
			}
		},
	}})
	t.Logf("kernel interop: Linux %s, boots %s + %s, total %s",
		h.kernel.Release, rep1.Wall.Round(100*time.Millisecond), rep2.Wall.Round(100*time.Millisecond),
		time.Since(testStart).Round(100*time.Millisecond))
}

// kernelCase is one scenario of TestKernel, run in one of its two boots:
// the images it brings (each keeps the nvdimm slot it was made with),
// other disks, what the host prepares before the boot, its part of the
// guest's job (write: before the guest reads every image back; after:
// once it has), and what it verifies in the guest's report. Every image
// of every case is also listed (nv_info), read back in full and checked
// (ndctl check-namespace) by the job. Adding a kernel case is adding one
// entry to a boot's list.
type kernelCase struct {
	name    string
	images  func() []*image // called after the prepares
	extra   func() []vmDisk
	prepare func(t *testing.T)
	write   func(t *testing.T, j *jobBuilder)
	after   func(t *testing.T, j *jobBuilder)
	verify  func(t *testing.T, rep *guestReport)
}

// runBoot prepares the cases, boots the guest once with all their disks
// and a job made of their parts, logs the kernel messages that contain
// one of kmsg, and runs each case's verification as a subtest.
func (h *harness) runBoot(t *testing.T, name string, kmsg []string, cases []kernelCase) *guestReport {
	t.Helper()
	prepStart := time.Now()
	for _, c := range cases {
		if c.prepare != nil {
			c.prepare(t)
		}
	}
	var ims []*image
	var extra []vmDisk
	for _, c := range cases {
		if c.images != nil {
			ims = append(ims, c.images()...)
		}
		if c.extra != nil {
			extra = append(extra, c.extra()...)
		}
	}
	sort.Slice(ims, func(a, b int) bool { return ims[a].slot < ims[b].slot })
	t.Logf("%s: images prepared in %s", name, time.Since(prepStart).Round(time.Millisecond))
	var j jobBuilder
	for _, im := range ims {
		j.f("nv_info %d", im.slot)
	}
	for _, c := range cases {
		if c.write != nil {
			c.write(t, &j)
		}
	}
	for _, im := range ims {
		j.f("nv_phase read %s", im.name)
		j.read(im)
	}
	for _, c := range cases {
		if c.after != nil {
			c.after(t, &j)
		}
	}
	j.f("nv_phase check")
	for _, im := range ims {
		j.f("nv_check %d", im.slot)
	}
	rep := h.boot(t, name, append(vmDisks(ims), extra...), j.String())
	for _, l := range rep.Kmsg {
		for _, k := range kmsg {
			if strings.Contains(l, k) {
				t.Logf("%s kernel: %s", name, l)
				break
			}
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.verify(t, rep) })
	}
	return rep
}

// expectNvblkToKernel: an nvblk-made BTT the kernel attached, read in
// full and checked: it found the BTT, read nvblk's data, the same device
// byte for byte, ndctl check-namespace clean, nvblk check clean.
func expectNvblkToKernel(t *testing.T, h *harness, im *image, v *guestView) {
	expectNvblkToKernelE(t, h, im, v, false)
}

// expectNvblkToKernelE is expectNvblkToKernel where, with loggedE, an
// ndctl finding about a sector the kernel once marked E is allowed when
// the kernel logged it (expectCleanOrLoggedE).
func expectNvblkToKernelE(t *testing.T, h *harness, im *image, v *guestView, loggedE bool) {
	t.Helper()
	o := openImage(t, im, true)
	defer o.close()
	expectAttached(t, im, v, o)
	expectGuestReads(t, im, v, o.Sectors())
	expectSameDevice(t, im, v, o)
	clean := true
	if loggedE {
		clean = expectCleanOrLoggedE(t, im, v)
	} else {
		expectClean(t, im, v)
	}
	h.nvblkCheckHook(t, im, clean)
}

func vmDisks(ims []*image) []vmDisk {
	d := make([]vmDisk, len(ims))
	for i, im := range ims {
		d[i] = im.disk()
	}
	return d
}

// expectCleanOrLoggedE accepts a clean ndctl check-namespace, or exactly
// ndctl's known complaint about a log entry whose old_map carries the E
// flag (btt/doc.go, Checking): writing a sector in the error state
// logs its old block with the E bit (Linux does the same, btt_write_pg), so
// that the free block is scrubbed at the next load; ndctl compares the
// unmasked value with internal_nlba. It returns whether the check was clean.
func expectCleanOrLoggedE(t testing.TB, im *image, v *guestView) bool {
	t.Helper()
	if len(v.check) > 0 && v.check[len(v.check)-1] != "0" {
		for _, m := range v.checkMsgs {
			if strings.Contains(m, "out of bounds 'old' mapping") {
				o := openImage(t, im, true)
				defer o.close()
				for _, l := range readLanes(t, o.ns, o.Arenas()[0]) {
					if l.Cur.OldMap&0x40000000 != 0 {
						t.Logf("%s: ndctl check-namespace exit %s, its known false positive: lane %d logs old_map %#08x (E flag) — %s",
							im.name, v.check[len(v.check)-1], l.Lane, l.Cur.OldMap, strings.Join(v.checkMsgs, " | "))
						return false
					}
				}
			}
		}
	}
	expectClean(t, im, v)
	return true
}

// prepareCrash makes an image whose last writes are pending roll-forward:
// for LBA x (already written once, so its old block is a real free-list
// block), LBA y (never written before, so its old mapping is the
// identity), and the last write of every other lane, nvblk wrote the data
// and the log entry, and then the map entry is put back to the old block
// with raw byte writes, as if power had failed before the map update
// reached the media. nvblk, opened read-only, must read the new data
// without writing to the image. It returns each such LBA's old block.
func prepareCrash(t *testing.T, im *image) map[uint64]uint32 {
	t.Helper()
	o := createImage(t, im, btt.V11)
	n := o.Sectors()
	writeNvblk(t, im, o, nvblkPlan(n)...)
	var x, y uint64 = 50, 0
	writeNvblk(t, im, o, write{LBA: x, Gen: 1}, write{LBA: x, Gen: 2})
	a := o.Arenas()[0]
	// The two pending writes must be the current entries of two different
	// lanes; nvblk picks lanes at random, so retry with fresh LBAs.
	// A lane's current entry is lba's pending write only if it is the
	// entry of lba's latest write: its new block is lba's current mapping.
	find := func(lba uint64) (laneLog, bool) {
		post, _, err := o.MapEntry(lba)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range readLanes(t, o.ns, a) {
			if l.OK && uint64(l.Cur.LBA) == lba && l.Cur.NewMap&0x3FFFFFFF == post && l.Cur.OldMap != l.Cur.NewMap {
				return l, true
			}
		}
		return laneLog{}, false
	}
	var lx, ly laneLog
	found := false
	for try := 0; try < 50 && !found; try++ {
		y = 60 + uint64(try)
		writeNvblk(t, im, o, write{LBA: y, Gen: 1})
		var okx, oky bool
		lx, okx = find(x)
		ly, oky = find(y)
		if !okx {
			writeNvblk(t, im, o, write{LBA: x, Gen: im.gens[x] + 1})
			lx, okx = find(x)
			ly, oky = find(y)
		}
		found = okx && oky && lx.Lane != ly.Lane
	}
	if !found {
		t.Fatalf("crash: could not get two pending writes in different lanes")
	}
	const mask = 0x3FFFFFFF
	// Every other lane's last write too: nvblk leaves a write's map entry
	// to be written back by the lane's next write (btt's commit: two
	// fences per write), so a crash may find every lane's newest write
	// committed in the log and absent from the map.
	others := map[uint64]uint32{}
	for _, l := range readLanes(t, o.ns, a) {
		lba := uint64(l.Cur.LBA)
		if !l.OK || l.Lane == lx.Lane || l.Lane == ly.Lane || l.Cur.OldMap&mask == l.Cur.NewMap&mask || lba == x || lba == y {
			continue
		}
		if post, _, err := o.MapEntry(lba); err == nil && post == l.Cur.NewMap&mask {
			others[lba] = l.Cur.OldMap & mask
		}
	}
	if len(others) == 0 {
		t.Fatalf("crash: no other lane holds a write to leave unmapped")
	}
	o.close()
	old := map[uint64]uint32{x: lx.Cur.OldMap & mask, y: ly.Cur.OldMap & mask}
	if old[y] != uint32(y) {
		t.Fatalf("crash: lba %d's old mapping is %d, want the identity", y, old[y])
	}
	// Undo the map updates: x back to its old block (a normal entry), y
	// back to the never-written identity entry (raw 0).
	writeRawMapEntry(t, im, a, x, 0xC0000000|old[x])
	writeRawMapEntry(t, im, a, y, 0)
	for lba, o := range others {
		raw := 0xC0000000 | o
		if o == uint32(lba) {
			raw = 0 // the identity: never written before
		}
		writeRawMapEntry(t, im, a, lba, raw)
	}

	before := fileSHA(t, im.path)
	ro := openImage(t, im, true)
	unmapped := []uint64{x, y}
	for lba := range others {
		unmapped = append(unmapped, lba)
	}
	for _, lba := range unmapped {
		buf := make([]byte, im.ss)
		if err := ro.ReadSectors(buf, lba); err != nil {
			t.Fatalf("crash: nvblk (read-only) lba %d: %v", lba, err)
		}
		if sha(buf) != sha(im.content(lba)) {
			t.Fatalf("crash: nvblk (read-only) reads lba %d as %q, want the new generation %d", lba, trunc(buf), im.gens[lba])
		}
	}
	verifyNvblk(t, im, ro, nil)
	ro.close()
	if fileSHA(t, im.path) != before {
		t.Fatalf("crash: nvblk opened read-only changed the image")
	}
	maps.Copy(old, others)
	t.Logf("crash: pending roll-forward of lba %d (lane %d: %+v) and lba %d (lane %d: %+v), and of the last writes of %d other lanes (LBAs %v); nvblk read-only reads them all as new, image unchanged",
		x, lx.Lane, lx.Cur, y, ly.Lane, ly.Cur, len(others), others)
	return old
}

// prepareMedia makes the image of the media-error check and returns the
// LBA to poison (x), a healthy neighbour (y) and the namespace offset of
// x's data block.
func prepareMedia(t *testing.T, im *image) (x, y uint64, off int64) {
	t.Helper()
	o := createImage(t, im, btt.V11)
	defer o.close()
	x, y = 5, 6
	writeNvblk(t, im, o, write{LBA: 0, Gen: 1, Count: 16})
	post, st, err := o.MapEntry(x)
	if err != nil || st != btt.MapNormal {
		t.Fatalf("media: lba %d map %d %s %v", x, post, st, err)
	}
	return x, y, dataOffset(o.Arenas()[0], post)
}

// labelArea returns the label storage area of a labelled image: qemu keeps
// it in the last label-size bytes of the backing file.
func labelArea(t testing.TB, im *image) []byte {
	t.Helper()
	b, err := os.ReadFile(im.path)
	if err != nil {
		t.Fatal(err)
	}
	return b[len(b)-int(im.label):]
}

// expectLabels reads the namespace labels the kernel (through ndctl) wrote
// and checks them against what sysfs reported and the BTT holds: one active
// v1.2 label whose uuid is the namespace's, claim class BTT2 (the UEFI BTT
// GUID, which makes Linux read a BTT 2.0 at byte 0), the sector size, and
// the namespace's place on the DIMM.
func expectLabels(t testing.TB, im *image) {
	t.Helper()
	a, err := nslabel.Parse(labelArea(t, im))
	if err != nil {
		t.Errorf("%s: labels: %v", im.name, err)
		return
	}
	if a.Version() != "1.2" || len(a.Labels) != 1 {
		t.Errorf("%s: labels v%s, %d active (%d skipped), want v1.2 and 1", im.name, a.Version(), len(a.Labels), len(a.Skipped))
		return
	}
	l := a.Labels[0]
	if l.UUIDString() != im.nsUUID || l.ClaimClass() != "btt2" || l.LBASize != uint64(im.lbasize) ||
		int64(l.DPA) != im.nsOff || int64(l.RawSize) != im.nsSize || l.TypeGUID != nslabel.GUIDSPAPM {
		t.Errorf("%s: label slot %d: uuid %s claim %s lbasize %d dpa %#x rawsize %#x type %s; want uuid %s, btt2, %d, %#x, %#x, %s",
			im.name, l.Slot, l.UUIDString(), l.ClaimClass(), l.LBASize, l.DPA, l.RawSize, l.TypeGUID,
			im.nsUUID, im.lbasize, im.nsOff, im.nsSize, nslabel.GUIDSPAPM)
		return
	}
	t.Logf("%s: labels v%s, index %d (seq %d), 1 active label in slot %d: uuid %s, claim class %s, lbasize %d, dpa %#x, rawsize %#x, interleave-set cookie %#x",
		im.name, a.Version(), a.Current, a.Index[a.Current].Seq, l.Slot, l.UUIDString(), l.ClaimClass(), l.LBASize, l.DPA, l.RawSize, l.ISetCookie)
}
