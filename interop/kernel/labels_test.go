package kernel_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/nslabel"
)

// TestKernelLabels: labelled images that nvblk makes from nothing
// (`nvblk create --labels`: the label area, one namespace, its BTT) attach
// in Linux with no template, in one boot with five NVDIMMs: v1.2 labels
// (claim class btt2, BTT 2.0; and once claim class btt, BTT 1.1) and v1.1
// labels (no claim class, BTT 1.1), 4096- and 512-byte sectors. The kernel must find each namespace in
// sector mode with the uuids and name nvblk gave (`ndctl list -N -v`), read
// what nvblk wrote, write, and leave a namespace `ndctl check-namespace`
// finds clean; nvblk then reads the kernel's writes and checks the image
// clean through the labels.
func TestKernelLabels(t *testing.T) {
	h := newHarness(t)
	start := time.Now()
	imgDir := filepath.Join(h.dir, "labelled")
	if err := os.MkdirAll(imgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, version string
		ss            int
		claim         string
		v             btt.Version
	}{
		{"nl12-4096", "1.2", 4096, "btt2", btt.V20},
		{"nl12-512", "1.2", 512, "btt2", btt.V20},
		{"nl12b-4096", "1.2", 4096, "btt", btt.V11}, // --format linux: the Linux BTT claim class, BTT 1.1 at 4096
		{"nl11-4096", "1.1", 4096, "none", btt.V11},
		{"nl11-512", "1.1", 512, "none", btt.V11},
	}
	var ims []*image
	before := map[*image]map[uint64]string{} // what nvblk wrote: LBA -> sha256, before the kernel writes
	bttUUID := map[*image]string{}
	var j jobBuilder
	for k, c := range cases {
		im := newImage(c.name, c.ss, uint32(c.ss))
		im.path = filepath.Join(imgDir, c.name+".img")
		im.slot, im.label, im.nsOff = k, labelSize, 0
		im.nsSize = labellessSize // a BTT 1.1 needs 16 MiB after its 4 KiB offset
		im.nsUUID = uuid.NewSHA1(uuid.NameSpaceOID, []byte("nvblk namespace "+c.name)).String()
		bttUUID[im] = uuid.NewSHA1(uuid.NameSpaceOID, []byte("nvblk btt "+c.name)).String()
		args := []string{"create", "--labels", "--label-version", c.version, "--sector-size", strconv.Itoa(c.ss),
			"--size", strconv.FormatInt(im.nsSize+im.label, 10), "--name", "nvblk-" + c.name, "--parent-uuid", im.nsUUID,
			"--uuid", bttUUID[im], "--nvdimm-slot", strconv.Itoa(k)}
		if c.claim == "btt" {
			args = append(args, "--format", "linux")
		}
		h.nvblkCLI(t, nil, append(args, im.path)...)
		n := sectorsOf(t, im.nsSize, c.v, im.lbasize)
		for _, w := range nvblkPlan(n) {
			var data []byte
			for i := 0; i < max(w.Count, 1); i++ {
				data = append(data, pattern(im.seed, w.LBA+uint64(i), w.Gen, c.ss)...)
			}
			h.nvblkCLI(t, data, "write", "--lba", strconv.FormatUint(w.LBA, 10), im.path)
			im.apply(w)
		}
		before[im] = map[uint64]string{}
		for _, lba := range im.written() {
			before[im][lba] = sha(im.content(lba))
		}
		// The guest: what the kernel made of it, a read of nvblk's
		// sectors, the kernel's writes, a full read, ndctl's view.
		j.f("nv_info %d", k)
		j.f("nv_phase read+write %s", im.name)
		j.read(im)
		kw := []write{{LBA: 1, Gen: 7}, {LBA: 5, Gen: 1, Count: 3}, {LBA: 100, Gen: 9}, {LBA: n - 2, Gen: 2, Count: 2}}
		j.f("nv_dev %d && nv_write %d %d %s %s", k, k, im.ss, im.seed, writeList(kw))
		im.apply(kw...)
		j.read(im)
		j.f("nv_ndctl_ns %d", k)
		ims = append(ims, im)
	}
	j.f("nv_phase check")
	for _, im := range ims {
		j.f("nv_check %d", im.slot)
	}
	rep := h.boot(t, "labels", vmDisks(ims), j.String())

	for i, im := range ims {
		c := cases[i]
		t.Run(im.name, func(t *testing.T) {
			v := view(t, rep, im.slot, im.name)
			if v.nsUUID != im.nsUUID || v.nsSize != im.nsSize || v.nsBase != v.regionBase {
				t.Fatalf("the kernel's namespace: uuid %q size %d at %#x (region at %#x); nvblk labelled uuid %s size %d at 0",
					v.nsUUID, v.nsSize, v.nsBase, v.regionBase, im.nsUUID, im.nsSize)
			}
			// The first read of each sector is what nvblk wrote.
			for lba, want := range before[im] {
				if r := v.sectors[lba]; len(r) == 0 || r[0] != want {
					t.Errorf("the kernel's first read of lba %d: %v, want nvblk's %s", lba, r, want)
				}
			}
			o := openImage(t, im, true)
			expectAttached(t, im, v, o)
			if o.Version() != c.v {
				t.Errorf("BTT %s after the boot, want %s", o.Version(), c.v)
			}
			expectGuestReads(t, im, v, o.Sectors())
			expectSameDevice(t, im, v, o)
			o.close()
			expectClean(t, im, v)

			// ndctl list -N -v: sector mode, nvblk's name, the BTT's uuid
			// (ndctl's "uuid" of a sector namespace) and the namespace's
			// (its "raw_uuid").
			type nsJSON struct {
				Mode    string `json:"mode"`
				UUID    string `json:"uuid"`
				RawUUID string `json:"raw_uuid"`
				Name    string `json:"name"`
			}
			var nls []nsJSON // ndctl prints an array (or one object)
			rec := rep.first(im.slot, "ndctl")
			if len(rec) == 1 && json.Unmarshal([]byte(rec[0]), &nls) != nil {
				var one nsJSON
				if json.Unmarshal([]byte(rec[0]), &one) == nil {
					nls = []nsJSON{one}
				}
			}
			if len(nls) != 1 {
				t.Fatalf("ndctl list -N: %q", rec)
			}
			nl := nls[0]
			if nl.Mode != "sector" || nl.UUID != bttUUID[im] || nl.RawUUID != im.nsUUID || nl.Name != "nvblk-"+im.name {
				t.Errorf("ndctl list -N -v: mode %q uuid %q raw_uuid %q name %q; want sector, %s, %s, nvblk-%s",
					nl.Mode, nl.UUID, nl.RawUUID, nl.Name, bttUUID[im], im.nsUUID, im.name)
			}
			t.Logf("ndctl list -N -v: %s", rec[0])

			// nvblk, after the kernel: the labels are what it wrote (the
			// kernel did not rewrite them), the whole file checks clean
			// and reads the kernel's writes.
			a, err := nslabel.Parse(labelArea(t, im))
			if err != nil || len(a.Labels) != 1 || a.Labels[0].UUIDString() != im.nsUUID || a.Version() != c.version ||
				a.Labels[0].ClaimClass() != c.claim {
				t.Errorf("labels after the boot: %v %+v", err, a)
			}
			if out, err := exec.Command(h.nvblk, "check", im.path).CombinedOutput(); err != nil {
				t.Errorf("nvblk check %s: %v\n%s", im.name, err, out)
			}
			for _, lba := range []uint64{1, 6, 100} {
				out := h.nvblkCLI(t, nil, "read", "--lba", strconv.FormatUint(lba, 10), "--count", "1", im.path)
				if sha(out) != sha(im.content(lba)) {
					t.Errorf("nvblk read --lba %d differs from the kernel's write", lba)
				}
			}
		})
	}
	t.Logf("labelled images: boot %s, total %s", rep.Wall.Round(100*time.Millisecond), time.Since(start).Round(100*time.Millisecond))
}
