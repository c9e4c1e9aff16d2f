package kernel_test

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"

	"github.com/nvblk/nvblk/partition"
)

// These tests cover the harness itself and need neither qemu nor a kernel.

// TestCpioNewc reads back an archive written by fsTree: every entry with
// its mode, device numbers and data, parents before children, and the
// trailer.
func TestCpioNewc(t *testing.T) {
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, []byte("from a file"), 0o644); err != nil {
		t.Fatal(err)
	}
	tree := fsTree{}
	tree.addData("init", 0o755, []byte("#!/bin/busybox sh\n"))
	tree.addFile("lib/x86_64-linux-gnu/libz.so.1", src, 0o755)
	tree.addChar("dev/console", 5, 1)
	tree.addDir("proc")
	var buf bytes.Buffer
	if err := tree.writeGzip(&buf); err != nil {
		t.Fatal(err)
	}
	zr, err := gzip.NewReader(&buf)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	type ent struct {
		name string
		mode uint64
		rdev [2]uint64
		data string
	}
	var got []ent
	for off := 0; ; {
		if len(raw) < off+110 || string(raw[off:off+6]) != "070701" {
			t.Fatalf("bad header at %d", off)
		}
		field := func(i int) uint64 {
			v, err := strconv.ParseUint(string(raw[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return v
		}
		mode, size, namesize := field(1), int(field(6)), int(field(11))
		rdev := [2]uint64{field(9), field(10)}
		name := string(raw[off+110 : off+110+namesize-1])
		p := (off + 110 + namesize + 3) &^ 3
		data := string(raw[p : p+size])
		off = (p + size + 3) &^ 3
		if name == "TRAILER!!!" {
			break
		}
		got = append(got, ent{name: name, mode: mode, rdev: rdev, data: data})
	}
	want := []ent{
		{name: "dev", mode: cpioDir | 0o755},
		{name: "dev/console", mode: cpioChr | 0o600, rdev: [2]uint64{5, 1}},
		{name: "init", mode: cpioReg | 0o755, data: "#!/bin/busybox sh\n"},
		{name: "lib", mode: cpioDir | 0o755},
		{name: "lib/x86_64-linux-gnu", mode: cpioDir | 0o755},
		{name: "lib/x86_64-linux-gnu/libz.so.1", mode: cpioReg | 0o755, data: "from a file"},
		{name: "proc", mode: cpioDir | 0o755},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("archive holds\n%+v\nwant\n%+v", got, want)
	}
}

// TestModuleOrder resolves modules.dep dependencies, deepest first.
func TestModuleOrder(t *testing.T) {
	dir := t.TempDir()
	dep := "kernel/drivers/acpi/nfit/nfit.ko: kernel/drivers/nvdimm/libnvdimm.ko\n" +
		"kernel/drivers/nvdimm/libnvdimm.ko:\n" +
		"kernel/drivers/nvdimm/nd_pmem.ko: kernel/drivers/nvdimm/nd_btt.ko kernel/drivers/nvdimm/libnvdimm.ko\n" +
		"kernel/drivers/nvdimm/nd_btt.ko: kernel/drivers/nvdimm/libnvdimm.ko\n"
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := moduleOrder(dir, []string{"nfit", "nd_pmem", "nd_btt"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/drivers/nvdimm/libnvdimm.ko",
		"kernel/drivers/acpi/nfit/nfit.ko",
		"kernel/drivers/nvdimm/nd_btt.ko",
		"kernel/drivers/nvdimm/nd_pmem.ko",
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("order %v, want %v", got, want)
	}
	if _, err := moduleOrder(dir, []string{"nope"}); err == nil {
		t.Error("an unknown module resolved")
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		less bool
	}{
		{"/boot/vmlinuz-6.1.0-9-amd64", "/boot/vmlinuz-6.1.0-56-amd64", true},
		{"/boot/vmlinuz-6.1.0-56-amd64", "/boot/vmlinuz-6.1.0-9-amd64", false},
		{"/boot/vmlinuz-5.10.0-30-amd64", "/boot/vmlinuz-6.1.0-1-amd64", true},
	} {
		if got := versionLess(c.a, c.b); got != c.less {
			t.Errorf("versionLess(%s, %s) = %v", c.a, c.b, got)
		}
	}
}

// TestOldSlot follows the kernel's btt_log_get_old on every seq pair.
func TestOldSlot(t *testing.T) {
	for _, c := range []struct {
		s0, s1 uint32
		old    int
		ok     bool
	}{
		{1, 0, 1, true}, // a fresh log: slot 0 is current
		{0, 0, 0, true}, // the kernel accepts an all-zero lane
		{1, 2, 0, true}, {2, 3, 0, true}, {3, 1, 0, true},
		{2, 1, 1, true}, {3, 2, 1, true}, {1, 3, 1, true},
		{2, 2, 0, false}, {3, 3, 0, false},
	} {
		old, ok := oldSlot(c.s0, c.s1)
		if old != c.old || ok != c.ok {
			t.Errorf("oldSlot(%d, %d) = %d, %v; want %d, %v", c.s0, c.s1, old, ok, c.old, c.ok)
		}
	}
}

// TestGPTMismatches: the GPT check accepts the guest's records when they
// match nvblk's table and reports every kind of difference (a partition
// moved, resized, renamed or missing, other bytes, no loop device).
func TestGPTMismatches(t *testing.T) {
	g := &gptImage{}
	for i, p := range []partition.Partition{
		{Number: 1, Name: "a", FirstLBA: 2048, LastLBA: 4095},
		{Number: 2, Name: "b", FirstLBA: 4096, LastLBA: 8191},
	} {
		g.parts = append(g.parts, gptPart{Partition: p, sums: []gptRange{{0, 512, "h" + strconv.Itoa(i+1)}}})
	}
	good := func() *guestReport {
		d := strconv.Itoa(gptSize / 512)
		return &guestReport{Records: map[int]map[string][][]string{gptDisk: {
			"disk":    {{"vda", d}, {"loop3", d}},
			"losetup": {{"loop3", "/tmp/gpt.img"}},
			"part": {
				{"vda", "1", "2048", "2048", "a"}, {"vda", "2", "4096", "4096", "b"},
				{"loop3", "1", "2048", "2048", "a"}, {"loop3", "2", "4096", "4096", "b"},
			},
			"sum": {{"/dev/vda1", "0", "512", "h1"}, {"/dev/vda2", "0", "512", "h2"}, {"/dev/loop3p1", "0", "512", "h1"}},
		}}}
	}
	if bad, ok := g.mismatches(good()); len(bad) != 0 || len(ok) != 2 {
		t.Fatalf("matching records: bad %q, ok %q", bad, ok)
	}
	for name, edit := range map[string]func(r map[string][][]string){
		"start":   func(r map[string][][]string) { r["part"][1][2] = "4097" },
		"size":    func(r map[string][][]string) { r["part"][3][3] = "4095" },
		"name":    func(r map[string][][]string) { r["part"][0][4] = "-" },
		"missing": func(r map[string][][]string) { r["part"] = r["part"][:3] },
		"bytes":   func(r map[string][][]string) { r["sum"][2][3] = "x" },
		"unread":  func(r map[string][][]string) { r["sum"] = r["sum"][1:] },
		"disk":    func(r map[string][][]string) { r["disk"][0][1] = "1" },
		"no loop": func(r map[string][][]string) { delete(r, "losetup") },
	} {
		rep := good()
		edit(rep.Records[gptDisk])
		if bad, _ := g.mismatches(rep); len(bad) == 0 {
			t.Errorf("%s: the mismatch went unreported", name)
		}
	}
	if bad, _ := g.mismatches(&guestReport{}); len(bad) == 0 {
		t.Error("no records at all went unreported")
	}
}
