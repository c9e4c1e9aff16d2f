package kernel_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

// The GPT check rides on boot 2: an image partitioned by nvblk's command
// line is given to the guest as an ordinary disk (virtio-blk, read-only),
// and Linux's own GPT parser (block/partitions/efi.c) must find nvblk's
// partitions where nvblk put them, both on the disk (vda1..3) and on a
// copy of the image attached with busybox `losetup -P` (loopNp1..3).

const (
	// gptDisk is the disk number of the GPT records (@@R gptDisk ...); it
	// is not an nvdimm slot.
	gptDisk = 64
	gptSize = 32 * mib
	// gptSeed is the pattern seed of the sectors nvblk writes on the
	// partitions (512-byte sectors on 1 and 3, the BTT's on 2).
	gptSeed = "gpt"
	// gptFile is where the guest copies the disk for `losetup -P`.
	gptFile = "/tmp/gpt.img"
)

// gptPart is one partition as nvblk wrote it, and the byte ranges of the
// partition the guest hashes.
type gptPart struct {
	partition.Partition
	sums []gptRange
}

type gptRange struct {
	off, n int64
	sha    string // of the image file's bytes at the partition's offset+off
}

type gptImage struct {
	path  string
	parts []gptPart
	sha   string // the whole image file, before the boot
}

// gptSpecs are the partitions: 1 raw (filled with the pattern), 2 a BTT
// (nvblk create --partition 2; a BTT 1.1 needs 16 MiB after its 4 KiB
// offset), 3 the rest, raw, with its first and last sector written.
var gptSpecs = []string{"4M:nvblk-raw", "17M:nvblk-btt", "rest:nvblk-tail"}

// prepareGPT writes the GPT image with the nvblk command line and records
// what the guest must see.
func (h *harness) prepareGPT(t *testing.T, dir string) *gptImage {
	t.Helper()
	g := &gptImage{path: filepath.Join(dir, "gpt.img")}
	args := []string{"partition", "--size", strconv.Itoa(gptSize)}
	for _, s := range gptSpecs {
		args = append(args, "--add", s)
	}
	h.nvblkCLI(t, nil, append(args, g.path)...)
	h.nvblkCLI(t, nil, "create", "--partition", "2", "--sector-size", "4096", g.path)

	// nvblk's table, read back with the Go API.
	dev, err := pmem.Open(g.path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	tb, err := partition.Read(dev)
	dev.Close()
	if err != nil {
		t.Fatalf("gpt: partition.Read: %v", err)
	}
	if tb.Kind != partition.KindGPT || len(tb.Partitions) != 3 || len(tb.Warnings) > 0 {
		t.Fatalf("gpt: nvblk reads %s with %d partitions (warnings %q), want a GPT with 3", tb.Kind, len(tb.Partitions), tb.Warnings)
	}
	for i, p := range tb.Partitions {
		if want := gptSpecs[i][strings.Index(gptSpecs[i], ":")+1:]; p.Number != i+1 || p.Name != want {
			t.Fatalf("gpt: partition %d is number %d named %q, want %q", i+1, p.Number, p.Name, want)
		}
		g.parts = append(g.parts, gptPart{Partition: p})
	}
	p1, p2, p3 := &g.parts[0], &g.parts[1], &g.parts[2]

	// Partition 1: every sector holds the pattern, written through
	// `nvblk write --partition 1` (the raw personality).
	n1 := uint64(p1.Size() / 512)
	var data []byte
	for lba := uint64(0); lba < n1; lba++ {
		data = append(data, pattern(gptSeed+"1", lba, 1, 512)...)
	}
	h.nvblkCLI(t, data, "write", "--partition", "1", "--lba", "0", g.path)
	// Partition 3: its first and last sector.
	n3 := uint64(p3.Size() / 512)
	for _, lba := range []uint64{0, n3 - 1} {
		h.nvblkCLI(t, pattern(gptSeed+"3", lba, 1, 512), "write", "--partition", "3", "--lba", strconv.FormatUint(lba, 10), g.path)
	}
	// Partition 2: two sectors through its BTT.
	var b2 []byte
	for lba := uint64(0); lba < 2; lba++ {
		b2 = append(b2, pattern(gptSeed+"2", lba, 1, 4096)...)
	}
	h.nvblkCLI(t, b2, "write", "--partition", "2", "--lba", "0", g.path)

	// nvblk list sees the BTT on partition 2 only.
	var l struct {
		Devices []struct {
			Partitions []struct {
				Number      int `json:"number"`
				Personality struct {
					Driver string `json:"driver"`
				} `json:"personality"`
			} `json:"partitions"`
		} `json:"devices"`
	}
	out := h.nvblkCLI(t, nil, "list", "--json", g.path)
	if err := json.Unmarshal(out, &l); err != nil || len(l.Devices) != 1 || len(l.Devices[0].Partitions) != 3 {
		t.Fatalf("gpt: nvblk list --json: %v: %s", err, out)
	}
	for _, p := range l.Devices[0].Partitions {
		if want := map[bool]string{true: "btt", false: "raw"}[p.Number == 2]; p.Personality.Driver != want {
			t.Fatalf("gpt: nvblk list: partition %d is %q, want %q", p.Number, p.Personality.Driver, want)
		}
	}

	img, err := os.ReadFile(g.path)
	if err != nil {
		t.Fatal(err)
	}
	g.sha = sha(img)
	at := func(p *gptPart, off, n int64) []byte { return img[p.Offset()+off : p.Offset()+off+n] }
	if !bytes.Equal(at(p1, 0, p1.Size()), data) {
		t.Fatalf("gpt: partition 1's bytes in the file are not what nvblk write was given")
	}
	// The guest hashes: partition 1 whole; on 2 the BTT info block (at
	// 4096, after the 1.1 offset) and its backup (the partition's last
	// 4 KiB); on 3 the first and last sector.
	for _, r := range []struct {
		p      *gptPart
		off, n int64
	}{
		{p1, 0, p1.Size()},
		{p2, 0, 8192}, {p2, p2.Size() - 4096, 4096},
		{p3, 0, 512}, {p3, p3.Size() - 512, 512},
	} {
		r.p.sums = append(r.p.sums, gptRange{off: r.off, n: r.n, sha: sha(at(r.p, r.off, r.n))})
	}
	for _, off := range []int64{4096, p2.Size() - 4096} {
		if sig := at(p2, off, 16); !bytes.Equal(sig, []byte("BTT_ARENA_INFO\x00\x00")) {
			t.Fatalf("gpt: no BTT info block at byte %d of partition 2: %q", off, sig)
		}
	}
	for _, lba := range []int64{0, p3.Size()/512 - 1} {
		if !bytes.Equal(at(p3, lba*512, 512), pattern(gptSeed+"3", uint64(lba), 1, 512)) {
			t.Fatalf("gpt: partition 3 lba %d is not what nvblk write was given", lba)
		}
	}
	for _, p := range g.parts {
		t.Logf("gpt: partition %d %q: LBA %d-%d (%d sectors)", p.Number, p.Name, p.FirstLBA, p.LastLBA, p.Size()/512)
	}
	return g
}

// job has the guest load the block modules, report the kernel's view of
// the virtio disk (vda), hash the partitions through /dev/vdaN, and do the
// same on a copy of the disk attached with `losetup -P`.
func (g *gptImage) job(j *jobBuilder) {
	j.f("nv_phase gpt")
	j.f("nv_modules /etc/nvblk/modules.blk")
	j.f("if nv_wait_parts %d vda %d; then", gptDisk, len(g.parts))
	j.f("nv_parts %d vda", gptDisk)
	g.sums(j, "vda")
	j.f("fi")
	j.f("nv_phase gpt losetup -P")
	j.f("if nv_losetup %d /dev/vda %s %d; then", gptDisk, gptFile, len(g.parts))
	j.f("nv_parts %d $LOOP", gptDisk)
	// Partition 1 through the loop device's partition too.
	p := g.parts[0]
	j.f("guestio sum %d /dev/${LOOP}p%d %d %d", gptDisk, p.Number, p.sums[0].off, p.sums[0].n)
	j.f("losetup -d /dev/$LOOP")
	j.f("fi")
}

func (g *gptImage) sums(j *jobBuilder, dev string) {
	for _, p := range g.parts {
		for _, r := range p.sums {
			j.f("guestio sum %d /dev/%s%d %d %d", gptDisk, dev, p.Number, r.off, r.n)
		}
	}
}

func (g *gptImage) disk() vmDisk {
	return vmDisk{Name: "gpt", Path: g.path, Virtio: true}
}

// check compares what the guest kernel reported with nvblk's table (see
// mismatches), checks that the kernel's partition parser logged no GPT
// complaint, that the image is unchanged and that nvblk still reads the BTT
// on partition 2.
func (g *gptImage) check(t *testing.T, h *harness, rep *guestReport) {
	bad, ok := g.mismatches(rep)
	for _, m := range bad {
		t.Error(m)
	}
	for _, m := range ok {
		t.Log(m)
	}
	for _, l := range rep.Kmsg {
		if strings.Contains(l, "GPT") {
			t.Errorf("the kernel's partition parser complains: %s", l)
		}
	}
	if got := fileSHA(t, g.path); got != g.sha {
		t.Errorf("the GPT image changed during the boot (it was attached read-only)")
	}
	out := h.nvblkCLI(t, nil, "read", "--partition", "2", "--lba", "0", "--count", "2", g.path)
	if !bytes.Equal(out, append(pattern(gptSeed+"2", 0, 1, 4096), pattern(gptSeed+"2", 1, 1, 4096)...)) {
		t.Errorf("nvblk read --partition 2: the BTT does not read back what nvblk wrote")
	}
}

// mismatches compares the guest's GPT records with nvblk's table: for the
// disk (vda) and the loop device, the device size and every partition's
// start and size (sysfs, 512-byte sectors) and GPT name (PARTNAME), and the
// hashes of the bytes read through the partition devices. It returns the
// differences and, for the devices that matched, a line to log.
func (g *gptImage) mismatches(rep *guestReport) (bad, ok []string) {
	rec := rep.Records[gptDisk]
	if len(rec) == 0 {
		return []string{"the guest reported nothing about the GPT disk"}, nil
	}
	loop := ""
	if r := rec["losetup"]; len(r) > 0 && len(r[0]) > 0 {
		loop = r[0][0]
	}
	// device -> partition number -> [start size name]
	parts := map[string]map[string][]string{}
	for _, r := range rec["part"] {
		if len(r) == 5 {
			if parts[r[0]] == nil {
				parts[r[0]] = map[string][]string{}
			}
			parts[r[0]][r[1]] = r[2:]
		}
	}
	sums := map[string]string{} // "DEV OFF LEN" -> sha256
	for _, r := range rec["sum"] {
		if len(r) == 4 {
			sums[strings.Join(r[:3], " ")] = r[3]
		}
	}
	sizes := map[string]string{}
	for _, r := range rec["disk"] {
		if len(r) == 2 {
			sizes[r[0]] = r[1]
		}
	}
	devs := []string{"vda"}
	if loop == "" {
		bad = append(bad, "losetup -P: the guest attached no loop device")
	} else {
		devs = append(devs, loop)
	}
	want := strconv.FormatInt(gptSize/512, 10)
	for _, dev := range devs {
		nbad := len(bad)
		pfx := dev
		if strings.HasPrefix(dev, "loop") {
			pfx = dev + "p"
		}
		if sizes[dev] != want {
			bad = append(bad, fmt.Sprintf("%s: the kernel sees %q sectors, want %s", dev, sizes[dev], want))
		}
		if len(parts[dev]) != len(g.parts) {
			bad = append(bad, fmt.Sprintf("%s: the kernel found %d partitions, nvblk wrote %d", dev, len(parts[dev]), len(g.parts)))
		}
		for _, p := range g.parts {
			name := fmt.Sprintf("%s%d", pfx, p.Number)
			k := parts[dev][strconv.Itoa(p.Number)]
			wantK := []string{strconv.FormatUint(p.FirstLBA, 10), strconv.FormatInt(p.Size()/512, 10), p.Name}
			switch {
			case k == nil:
				bad = append(bad, fmt.Sprintf("%s: the kernel has no partition %d (%q, LBA %d, %d sectors)", dev, p.Number, p.Name, p.FirstLBA, p.Size()/512))
				continue
			case strings.Join(k, " ") != strings.Join(wantK, " "):
				bad = append(bad, fmt.Sprintf("%s: the kernel has start %s, size %s sectors, name %q; nvblk wrote start %s, size %s, name %q",
					name, k[0], k[1], k[2], wantK[0], wantK[1], wantK[2]))
			}
			for i, r := range p.sums {
				if dev != "vda" && (p.Number != 1 || i > 0) {
					continue // through the loop device only partition 1 (see job)
				}
				key := fmt.Sprintf("/dev/%s %d %d", name, r.off, r.n)
				switch got := sums[key]; got {
				case r.sha:
				case "":
					bad = append(bad, fmt.Sprintf("%s: the guest did not read bytes %d+%d", name, r.off, r.n))
				default:
					bad = append(bad, fmt.Sprintf("%s: bytes %d+%d read by the kernel hash to %s, the image's bytes at %d to %s",
						name, r.off, r.n, got, p.Offset()+r.off, r.sha))
				}
			}
		}
		if len(bad) == nbad {
			ok = append(ok, fmt.Sprintf("%s: the kernel found nvblk's %d partitions (start, size and name as nvblk wrote them) and reads their bytes as nvblk wrote them",
				dev, len(g.parts)))
		}
	}
	return bad, ok
}
