package cli

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/nslabel"
	"github.com/nvblk/nvblk/pmem"
)

// labelledKernelImage extracts the kernel-written labelled image.
func labelledKernelImage(t *testing.T) (string, *testutil.KernelImage) {
	t.Helper()
	for _, k := range testutil.KernelImages(t) {
		if k.Keys["labels"] != "" && k.Keys["labels"] != "none" {
			return k.Extract(t, t.TempDir()), k
		}
	}
	t.Fatal("no labelled kernel image")
	return "", nil
}

func listOne(t *testing.T, path string) DeviceJSON {
	t.Helper()
	out := mustRun(t, nil, "list", "--json", path)
	var lj ListJSON
	if err := json.Unmarshal([]byte(out), &lj); err != nil || len(lj.Devices) != 1 {
		t.Fatalf("%v\n%s", err, out)
	}
	return lj.Devices[0]
}

func infoOf(t *testing.T, args ...string) InfoJSON {
	t.Helper()
	out := mustRun(t, nil, append([]string{"info", "--json"}, args...)...)
	var ij InfoJSON
	if err := json.Unmarshal([]byte(out), &ij); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	return ij
}

func deviceSHA(t *testing.T, args ...string) string {
	t.Helper()
	out := mustRun(t, nil, append([]string{"read"}, args...)...)
	sum := sha256.Sum256([]byte(out))
	return hex.EncodeToString(sum[:])
}

// TestKernelLabelledImage: the image Linux labelled and formatted lists its
// namespace as ndctl does (uuid, size, mode sector); with the primary info
// block zeroed it opens from the backup inside the namespace, reads
// byte-identical, and check --repair restores it.
func TestKernelLabelledImage(t *testing.T) {
	img, k := labelledKernelImage(t)
	d := listOne(t, img)
	if d.LabelArea == nil || d.LabelArea.Version != "1.2" || d.LabelArea.Size != k.Int(t, "label_area_bytes") ||
		d.LabelArea.Offset != k.Int(t, "image_bytes")-k.Int(t, "label_area_bytes") || len(d.Namespaces) != 1 || d.Personality != nil {
		t.Fatalf("list: %+v", d)
	}
	ns := d.Namespaces[0]
	if ns.UUID != k.Keys["namespace_uuid"] || ns.Size != k.Int(t, "namespace_bytes") || ns.Offset != 0 || ns.Mode != "sector" ||
		ns.ClaimClass != "btt2" || ns.Personality == nil || ns.Personality.Driver != "btt" || ns.Personality.UUID != k.Keys["btt_uuid"] ||
		ns.Personality.Sectors != uint64(k.Int(t, "device_sectors")) || ns.Cookie != "0xba90120012b4dc" || ns.QEMUSlot == nil || *ns.QEMUSlot != 0 {
		t.Fatalf("namespace: %+v personality %+v", ns, ns.Personality)
	}
	if got := deviceSHA(t, img); got != k.Keys["whole_sha256"] {
		t.Fatalf("read: sha256 %s, want %s", got, k.Keys["whole_sha256"])
	}
	before, _ := os.ReadFile(img)

	patchFile(t, img, 0, make([]byte, 4096)) // the primary info block
	ij := infoOf(t, img)
	if !ij.FromBackup || !ij.ReadOnly || ij.Namespace == nil || ij.Namespace.UUID != k.Keys["namespace_uuid"] || ij.Format != "uefi" {
		t.Fatalf("info of the damaged image: %+v", ij)
	}
	if got := deviceSHA(t, "--namespace", k.Keys["namespace_uuid"], img); got != k.Keys["whole_sha256"] {
		t.Fatalf("read from the backup: sha256 %s, want %s", got, k.Keys["whole_sha256"])
	}
	if d := listOne(t, img); d.Namespaces[0].Personality.Driver != "btt" || !d.Namespaces[0].Personality.FromBackup {
		t.Fatalf("list of the damaged image: %+v", d.Namespaces[0].Personality)
	}
	if _, e, c := run(t, make([]byte, 4096), "write", img); c == 0 || !strings.Contains(e, "read-only") {
		t.Errorf("write to a BTT opened from its backup: exit %d %s", c, e)
	}
	if out, _, c := run(t, nil, "check", img); c != 4 || !strings.Contains(out, "info-restore") && !strings.Contains(out, "needs to be restored") {
		t.Errorf("check: exit %d\n%s", c, out)
	}
	if out, e, c := run(t, nil, "check", "--repair", img); c != 1 {
		t.Fatalf("check --repair: exit %d\n%s%s", c, out, e)
	}
	after, _ := os.ReadFile(img)
	if string(after) != string(before) {
		t.Error("check --repair did not restore the image byte for byte")
	}
	mustRun(t, nil, "check", img)
}

// TestDamagedBTTNeverRaw: a labelled namespace whose label names the BTT
// but whose info blocks are all gone, and a labelled image whose label
// area is gone too (only arena 0's backup left, before where the labels
// were), are refused by the raw driver, and so by info, read, write,
// zero and serve; --force-raw is the way out.
func TestDamagedBTTNeverRaw(t *testing.T) {
	img, k := labelledKernelImage(t)
	info2 := int64(0x3fff000) // arena 0's info2 (the .expect's info2off)
	nsOnly := filepath.Join(t.TempDir(), "ns.img")
	raw, _ := os.ReadFile(img)
	clear(raw[0:4096])
	clear(raw[info2 : info2+4096])
	if err := os.WriteFile(nsOnly, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	// The label area gone as well: the whole file, with the backup where
	// it lies before a 128 KiB label area.
	whole := filepath.Join(t.TempDir(), "whole.img")
	raw, _ = os.ReadFile(img)
	clear(raw[0:4096])
	clear(raw[len(raw)-int(k.Int(t, "label_area_bytes")):])
	if err := os.WriteFile(whole, raw, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, why string }{
		{nsOnly, "names the BTT claim class"},
		{whole, "backup info block"},
	} {
		before, _ := os.ReadFile(c.path)
		for _, args := range [][]string{
			{"info", c.path},
			{"read", "--count", "1", c.path},
			{"write", c.path},
			{"zero", "--lba", "0", c.path},
			{"serve", "--listen", "127.0.0.1:0", c.path},
		} {
			out, e, code := run(t, make([]byte, 4096), args...)
			if code == 0 || !strings.Contains(e, c.why) || !strings.Contains(e, "--force-raw") {
				t.Errorf("nvblk %s: exit %d, want a refusal saying %q\n%s%s", strings.Join(args, " "), code, c.why, out, e)
			}
		}
		if after, _ := os.ReadFile(c.path); string(after) != string(before) {
			t.Errorf("%s: a refused command changed the image", c.path)
		}
		d := listOne(t, c.path)
		p := d.Personality
		if len(d.Namespaces) == 1 {
			p = d.Namespaces[0].Personality
			if d.Namespaces[0].Mode != "sector" {
				t.Errorf("list: mode %q", d.Namespaces[0].Mode)
			}
		}
		if p == nil || p.Driver != "unclaimed" || !strings.Contains(p.Error, c.why) {
			t.Errorf("list: %+v", p)
		}
		if ij := infoOf(t, "--force-raw", c.path); ij.Format != "raw" {
			t.Errorf("info --force-raw: format %q", ij.Format)
		}
	}
	// --force-raw writes.
	mustRun(t, make([]byte, 512), "write", "--force-raw", "--lba", "1", whole)
}

// TestCreateLabels: create --labels makes a labelled image (v1.1 and v1.2,
// 512 and 4096) with the namespace name, uuid, claim class and BTT that
// Linux expects, readable and writable through nvblk.
func TestCreateLabels(t *testing.T) {
	dir := t.TempDir()
	const nsUUID = "4e53b77b-0000-4000-8000-0000000000aa"
	for _, c := range []struct {
		version, format, ss string
		claim, bttVersion   string
		labelSize           int
	}{
		{"1.2", "", "4096", "btt2", "2.0", 256},
		{"1.2", "", "512", "btt2", "2.0", 256},
		{"1.2", "linux", "4096", "btt", "1.1", 256},
		{"1.1", "", "512", "none", "1.1", 128},
		{"1.1", "", "4096", "none", "1.1", 128},
	} {
		name := "v" + c.version + "-" + c.format + c.ss
		t.Run(name, func(t *testing.T) {
			img := filepath.Join(dir, name+".img")
			args := []string{"create", "--labels", "--label-version", c.version, "--size", "24M", "--sector-size", c.ss,
				"--name", "vm " + name, "--parent-uuid", nsUUID, "--nvdimm-slot", "2"}
			if c.format != "" {
				args = append(args, "--format", c.format)
			}
			mustRun(t, nil, append(args, img)...)
			d := listOne(t, img)
			if d.LabelArea == nil || d.LabelArea.Version != c.version || d.LabelArea.LabelSize != c.labelSize ||
				d.LabelArea.Offset != 24<<20-128<<10 || len(d.Namespaces) != 1 {
				t.Fatalf("list: %+v", d)
			}
			ns := d.Namespaces[0]
			p := ns.Personality
			if ns.UUID != nsUUID || ns.Name != "vm "+name || ns.ClaimClass != c.claim || ns.Mode != "sector" || ns.Offset != 0 ||
				ns.Size != 24<<20-128<<10 || p == nil || p.Driver != "btt" || p.Version != c.bttVersion ||
				p.ParentUUID != nsUUID || p.SectorSize != atoi(t, c.ss) || ns.LBASize != uint64(atoi(t, c.ss)) {
				t.Fatalf("namespace %+v personality %+v", ns, p)
			}
			want := nslabel.InterleaveSetCookie(c.version, nslabel.QEMUSerial(2), nslabel.QEMUVendor)
			if ns.Cookie != "0x"+strings.TrimLeft(hex.EncodeToString([]byte{byte(want >> 56), byte(want >> 48), byte(want >> 40),
				byte(want >> 32), byte(want >> 24), byte(want >> 16), byte(want >> 8), byte(want)}), "0") {
				t.Errorf("cookie %s, want %#x", ns.Cookie, want)
			}
			if ns.QEMUSlot == nil || *ns.QEMUSlot != 2 {
				t.Errorf("qemu_slot %v, want 2", ns.QEMUSlot)
			}
			data := []byte(strings.Repeat("labelled namespace data ", 1024))[:3*atoi(t, c.ss)]
			mustRun(t, data, "write", "--lba", "5", img)
			if got := mustRun(t, nil, "read", "--lba", "5", "--count", "3", "--namespace", "0", img); got != string(data) {
				t.Error("read back differs")
			}
			mustRun(t, nil, "check", img)
			if _, e, code := run(t, nil, "create", "--labels", img); code == 0 || !strings.Contains(e, "--force") {
				t.Errorf("create over a labelled image without --force: exit %d %s", code, e)
			}
			if _, e, code := run(t, nil, "partition", "--add", "8M", img); code == 0 || !strings.Contains(e, "label area") {
				t.Errorf("a partition table over a labelled image without --force: exit %d %s", code, e)
			}
			// Re-creating the BTT in the namespace follows the claim class.
			mustRun(t, nil, "create", "--force", "--sector-size", c.ss, img)
			if ij := infoOf(t, img); ij.Version != c.bttVersion || ij.ParentUUID != nsUUID {
				t.Errorf("BTT re-created in the namespace: version %s parent %s", ij.Version, ij.ParentUUID)
			}
		})
	}
	if _, _, code := run(t, nil, "create", "--labels", "--label-version", "1.1", "--format", "uefi", filepath.Join(dir, "x.img")); code != 16 {
		t.Errorf("v1.1 labels with a BTT 2.0: exit %d", code)
	}
	if _, _, code := run(t, nil, "create", "--name", "x", filepath.Join(dir, "x.img")); code != 16 {
		t.Errorf("--name without --labels: exit %d", code)
	}
}

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := ParseSize(s)
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// TestCheckLabels: check reports label problems with fsck's exit codes:
// both index blocks invalid, a label outside the device, overlapping
// labels.
func TestCheckLabels(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "l.img")
	mustRun(t, nil, "create", "--labels", "--size", "24M", img)
	areaOff := int64(24<<20 - 128<<10)
	addLabel := func(l *nslabel.Label) {
		dev, err := pmem.Open(img, pmem.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		if err := nslabel.Update(dev, areaOff, 128<<10, l, nil); err != nil {
			t.Fatal(err)
		}
	}
	mustRun(t, nil, "check", img)
	// The namespace relabelled as fsdax (claim class pfn): no BTT goes
	// there, and it is a raw namespace (not refused).
	{
		dev, err := pmem.Open(img, pmem.Options{})
		if err != nil {
			t.Fatal(err)
		}
		l, err := nslabel.Locate(dev, nil)
		if err != nil {
			t.Fatal(err)
		}
		pfn := l.Namespaces[0].Label
		pfn.AbstractionGUID = nslabel.GUIDPFN
		err = nslabel.Update(dev, areaOff, 128<<10, &pfn, func(x *nslabel.Label) bool { return x.UUID == pfn.UUID })
		dev.Close()
		if err != nil {
			t.Fatal(err)
		}
		if _, e, c := run(t, nil, "create", "--force", img); c != 16 || !strings.Contains(e, `"pfn"`) {
			t.Errorf("create in a pfn namespace: exit %d %s", c, e)
		}
		if d := listOne(t, img); d.Namespaces[0].ClaimClass != "pfn" || d.Namespaces[0].Mode != "fsdax" || d.Namespaces[0].Personality.Driver != "btt" {
			t.Errorf("list of the pfn namespace: %+v %+v", d.Namespaces[0], d.Namespaces[0].Personality)
		}
	}
	// A second namespace overlapping the first, and a third outside.
	addLabel(&nslabel.Label{UUID: [16]byte{1}, NLabel: 1, DPA: 4 << 20, RawSize: 4 << 20, TypeGUID: nslabel.GUIDSPAPM})
	addLabel(&nslabel.Label{UUID: [16]byte{2}, NLabel: 1, DPA: 20 << 20, RawSize: 8 << 20, TypeGUID: nslabel.GUIDSPAPM})
	out, e, c := run(t, nil, "check", "--json", "--namespace", "0", img)
	var cj CheckJSON
	if err := json.Unmarshal([]byte(out), &cj); err != nil {
		t.Fatalf("%v\n%s%s", err, out, e)
	}
	codes := map[string]int{}
	for _, f := range cj.Findings {
		codes[f.Code]++
	}
	if c != 4 || cj.ExitCode != 4 || codes["label-overlap"] != 1 || codes["label-outside"] != 1 || cj.Errors != 2 {
		t.Errorf("check: exit %d, findings %v\n%s", c, codes, out)
	}
	if _, e, c := run(t, nil, "info", img); c != 16 || !strings.Contains(e, "--namespace") {
		t.Errorf("info of a 3-namespace image without --namespace: exit %d %s", c, e)
	}
	// Both index blocks damaged.
	patchFile(t, img, areaOff+40, []byte{0xff})
	patchFile(t, img, areaOff+256+40, []byte{0xff})
	out, _, c = run(t, nil, "check", img)
	if c != 4 || !strings.Contains(out, "label-index") && !strings.Contains(out, "no valid index block") {
		t.Errorf("check with both index blocks damaged: exit %d\n%s", c, out)
	}
	if _, e, c := run(t, nil, "info", img); c == 0 || !strings.Contains(e, "index") {
		t.Errorf("info with both index blocks damaged: exit %d %s", c, e)
	}
}
