package kernel_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/nvblk/nvblk/btt"
	kpattern "github.com/nvblk/nvblk/interop/kernel/internal/pattern"
	"github.com/nvblk/nvblk/pmem"
)

const (
	mib = 1 << 20
	// Namespace bytes (the qemu nvdimm size less the label area). Small
	// devices keep the guest's whole-device scans short. A BTT needs at
	// least 16 MiB: label-less namespaces give 4 KiB of that to the 1.1
	// offset, so nvblk's own images have 18 MiB; ndctl sizes what it
	// formats in the region's 16 MiB alignment, so the kernel's label-less
	// images have 32 MiB and its labelled ones 16 MiB.
	labellessSize = 18 * mib
	ndctlSize     = 32 * mib
	labelledSize  = 16 * mib
	labelSize     = 128 << 10 // qemu label-size for labelled images
)

// pattern is the content of a sector (internal/pattern, which the guest's
// guestio uses too).
func pattern(seed string, lba uint64, gen, ss int) []byte {
	return kpattern.Sector(seed, lba, gen, ss)
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// write is one planned write: Count sectors from LBA, all of generation Gen
// (one O_DIRECT bio in the guest, one WriteSectors call in nvblk).
type write struct {
	LBA   uint64
	Gen   int
	Count int
}

// shell is the write as guestio takes it: LBA:GEN[:COUNT].
func (w write) shell() string {
	if w.Count > 1 {
		return fmt.Sprintf("%d:%d:%d", w.LBA, w.Gen, w.Count)
	}
	return fmt.Sprintf("%d:%d", w.LBA, w.Gen)
}

// image is one test image (a qemu nvdimm backing file) across boots, with
// the model of what its BTT must read as: the final generation of every
// written sector; every other sector reads as zeroes.
type image struct {
	name    string
	slot    int // qemu nvdimm slot: kept across boots (labels are tied to the DIMM's identity)
	path    string
	label   int64  // label area at the end of the file (0: label-less)
	nsOff   int64  // namespace start in the file
	nsSize  int64  // namespace bytes
	nsUUID  string // labelled namespaces: the namespace uuid (= BTT parent_uuid)
	ss      int    // exported sector size
	lbasize uint32 // external LBA size on media
	seed    string
	gens    map[uint64]int
	trimmed map[uint64]bool // sectors nvblk put in the Z state (and nothing wrote since)
	writes  int             // writes applied, for the log
	arenas  int64           // nvblk-made images: the largest arena (0: the kernel's 512 GiB)
}

func newImage(name string, ss int, lbasize uint32) *image {
	return &image{name: name, nsSize: labellessSize, ss: ss, lbasize: lbasize, seed: name,
		gens: map[uint64]int{}, trimmed: map[uint64]bool{}}
}

// trim records that count sectors from lba are in the Z state.
func (im *image) trim(lba uint64, count int) {
	for i := 0; i < count; i++ {
		im.trimmed[lba+uint64(i)] = true
	}
}

func (im *image) apply(ws ...write) {
	for _, w := range ws {
		n := max(w.Count, 1)
		for i := 0; i < n; i++ {
			im.gens[w.LBA+uint64(i)] = w.Gen
			delete(im.trimmed, w.LBA+uint64(i))
		}
		im.writes++
	}
}

func (im *image) content(lba uint64) []byte {
	return pattern(im.seed, lba, im.gens[lba], im.ss)
}

// written lists the LBAs with a recorded generation, sorted.
func (im *image) written() []uint64 {
	l := make([]uint64, 0, len(im.gens))
	for lba := range im.gens {
		l = append(l, lba)
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l
}

func (im *image) disk() vmDisk {
	return vmDisk{Name: im.name, Path: im.path, LabelSize: im.label, Slot: im.slot}
}

// opened is an image's BTT opened through nvblk's Go API on the namespace
// window of the file (the label area excluded).
type opened struct {
	*btt.BTT
	file   pmem.Device
	ns     pmem.Device
	closed bool
}

// close releases the image (and its lock); a second call does nothing.
func (o *opened) close() {
	if o.closed {
		return
	}
	o.closed = true
	o.BTT.Close()
	o.ns.Close()
	o.file.Close()
}

func openImage(t testing.TB, im *image, ro bool) *opened {
	t.Helper()
	file, err := pmem.Open(im.path, pmem.Options{ReadOnly: ro})
	if err != nil {
		t.Fatalf("%s: %v", im.name, err)
	}
	ns, err := pmem.NewWindow(file, im.nsOff, im.nsSize)
	if err != nil {
		file.Close()
		t.Fatalf("%s: window: %v", im.name, err)
	}
	opt := btt.Options{ReadOnly: ro}
	if im.nsUUID != "" {
		u := uuid.MustParse(im.nsUUID)
		p := [16]byte(u)
		opt.ParentUUID = &p
	}
	b, err := btt.Open(ns, opt)
	if err != nil {
		ns.Close()
		file.Close()
		t.Fatalf("%s: nvblk open (read-only %v): %v", im.name, ro, err)
	}
	return &opened{BTT: b, file: file, ns: ns}
}

// createImage lays out a new BTT with nvblk's Go API over the namespace
// part of im's file (creating a label-less file if there is none).
func createImage(t testing.TB, im *image, v btt.Version) *opened {
	t.Helper()
	if _, err := os.Stat(im.path); os.IsNotExist(err) {
		if err := os.WriteFile(im.path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(im.path, im.nsOff+im.nsSize+im.label); err != nil {
			t.Fatal(err)
		}
	}
	file, err := pmem.Open(im.path, pmem.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ns, err := pmem.NewWindow(file, im.nsOff, im.nsSize)
	if err != nil {
		t.Fatal(err)
	}
	opt := btt.CreateOptions{Version: v, LBASize: im.lbasize, MaxArenaSize: im.arenas}
	if im.nsUUID != "" {
		opt.ParentUUID = [16]byte(uuid.MustParse(im.nsUUID))
		p := opt.ParentUUID
		opt.Options.ParentUUID = &p
	}
	b, err := btt.Create(ns, opt)
	if err != nil {
		t.Fatalf("%s: nvblk create: %v", im.name, err)
	}
	return &opened{BTT: b, file: file, ns: ns}
}

// writeNvblk applies writes through nvblk (one WriteSectors call each).
func writeNvblk(t testing.TB, im *image, o *opened, ws ...write) {
	t.Helper()
	for _, w := range ws {
		n := max(w.Count, 1)
		buf := make([]byte, 0, n*im.ss)
		for i := 0; i < n; i++ {
			buf = append(buf, pattern(im.seed, w.LBA+uint64(i), w.Gen, im.ss)...)
		}
		if err := o.WriteSectors(buf, w.LBA); err != nil {
			t.Fatalf("%s: nvblk write lba %d x%d: %v", im.name, w.LBA, n, err)
		}
		im.apply(w)
	}
}

// verifyNvblk reads every sector through nvblk, compares it with the model
// (skipping LBAs in skip) and returns the sha256 of every sector that is not
// all zeroes, as the guest's scan does.
func verifyNvblk(t testing.TB, im *image, o *opened, skip map[uint64]bool) map[uint64]string {
	t.Helper()
	if o.SectorSize() != im.ss {
		t.Errorf("%s: nvblk sector size %d, want %d", im.name, o.SectorSize(), im.ss)
		return nil
	}
	nz := map[uint64]string{}
	zero := make([]byte, im.ss)
	const chunk = 64
	buf := make([]byte, chunk*im.ss)
	bad := 0
	for lba := uint64(0); lba < o.Sectors(); {
		n := min(uint64(chunk), o.Sectors()-lba)
		p := buf[:n*uint64(im.ss)]
		if err := o.ReadSectors(p, lba); err != nil {
			// Read sector by sector to name the failing ones.
			for i := uint64(0); i < n; i++ {
				s := p[i*uint64(im.ss) : (i+1)*uint64(im.ss)]
				if err := o.ReadSectors(s, lba+i); err != nil {
					if !skip[lba+i] {
						t.Errorf("%s: nvblk read lba %d: %v", im.name, lba+i, err)
					}
					clear(s)
				}
			}
		}
		for i := uint64(0); i < n; i++ {
			s := p[i*uint64(im.ss) : (i+1)*uint64(im.ss)]
			if skip[lba+i] {
				continue
			}
			if want := im.content(lba + i); !bytes.Equal(s, want) {
				bad++
				if bad <= 5 {
					t.Errorf("%s: nvblk lba %d reads %q..., want generation %d %q...",
						im.name, lba+i, trunc(s), im.gens[lba+i], trunc(want))
				}
			}
		}
		for i := uint64(0); i < n; i++ {
			if s := p[i*uint64(im.ss) : (i+1)*uint64(im.ss)]; !bytes.Equal(s, zero) {
				nz[lba+i] = sha(s)
			}
		}
		lba += n
	}
	if bad > 5 {
		t.Errorf("%s: %d sectors differ in all", im.name, bad)
	}
	return nz
}

func trunc(b []byte) string {
	if i := bytes.IndexByte(b, '\n'); i >= 0 && i < 60 {
		return string(b[:i])
	}
	if len(b) > 40 {
		b = b[:40]
	}
	return fmt.Sprintf("%x", b)
}

// modelNonzero is the model's device as a scan reports it: the sha256 of
// every sector that is not all zeroes. With zfill it is what Linux's
// btt_read_pg returns for page-sized bio segments: the sectors after a Z
// sector in the same 4 KiB page are left unread (here: zeroes).
func modelNonzero(im *image, sectors uint64, zfill bool) map[uint64]string {
	m := map[uint64]string{}
	perPage := uint64(max(4096/im.ss, 1))
	skip := map[uint64]bool{}
	if zfill {
		for lba := range im.trimmed {
			for l := lba + 1; l%perPage != 0; l++ {
				skip[l] = true
			}
		}
	}
	for lba, gen := range im.gens {
		if gen != 0 && lba < sectors && !skip[lba] {
			m[lba] = sha(im.content(lba))
		}
	}
	return m
}

// laneLog is a lane's current log entry, chosen by the kernel's rule
// (btt_log_get_old) from the two slots in use.
type laneLog struct {
	Lane  int
	Cur   btt.LogEntry
	Slots [2]btt.LogEntry
	OK    bool // the seq pair is one the kernel accepts
}

// oldSlot is the kernel's btt_log_get_old: the index (0 or 1) of the
// older of two log slots, and whether the pair is valid.
func oldSlot(s0, s1 uint32) (int, bool) {
	switch {
	case s0 == 0:
		return 0, true
	case s0 == s1 || s0+s1 > 5:
		return 0, false
	case s0 < s1:
		if s1-s0 == 1 {
			return 0, true
		}
		return 1, true
	default:
		if s0-s1 == 1 {
			return 1, true
		}
		return 0, true
	}
}

// readLanes decodes the log of arena a (read-only, raw bytes).
func readLanes(t testing.TB, dev pmem.Device, a btt.ArenaInfo) []laneLog {
	t.Helper()
	n := int(a.Info.NFree)
	raw := make([]byte, n*btt.LogGroupSize)
	if _, err := dev.ReadAt(raw, a.Offset+int64(a.Info.LogOff)); err != nil {
		t.Fatalf("read log: %v", err)
	}
	out := make([]laneLog, n)
	for i := range out {
		g := raw[i*btt.LogGroupSize:]
		l := laneLog{Lane: i}
		for s, idx := range a.LogIndex {
			l.Slots[s] = btt.DecodeLogEntry(g[idx*btt.LogEntrySize:])
		}
		old, ok := oldSlot(l.Slots[0].Seq, l.Slots[1].Seq)
		l.OK = ok
		l.Cur = l.Slots[1-old]
		out[i] = l
	}
	return out
}

// mapOffset is the namespace offset of lba's map entry (single-arena
// images).
func mapOffset(a btt.ArenaInfo, lba uint64) int64 {
	return a.Offset + int64(a.Info.MapOff) + btt.MapEntrySize*int64(lba-a.ExternalStart)
}

// dataOffset is the namespace offset of internal block post.
func dataOffset(a btt.ArenaInfo, post uint32) int64 {
	return a.Offset + int64(a.Info.DataOff) + int64(post)*int64(a.Info.InternalLBASize)
}

// rawMapEntry reads the raw 32-bit map entry of lba from the file.
func rawMapEntry(t testing.TB, im *image, a btt.ArenaInfo, lba uint64) uint32 {
	t.Helper()
	f, err := os.Open(im.path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b [4]byte
	if _, err := f.ReadAt(b[:], im.nsOff+mapOffset(a, lba)); err != nil {
		t.Fatal(err)
	}
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

// writeRawMapEntry overwrites lba's map entry in the file with raw byte
// writes (no nvblk involved) and syncs.
func writeRawMapEntry(t testing.TB, im *image, a btt.ArenaInfo, lba uint64, v uint32) {
	t.Helper()
	f, err := os.OpenFile(im.path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)}
	if _, err := f.WriteAt(b, im.nsOff+mapOffset(a, lba)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func fileSize(t testing.TB, path string) int64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Size()
}

// zeroRange writes zeroes over [off, off+n) of the file.
func zeroRange(t testing.TB, path string, off, n int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zero := make([]byte, 1<<20)
	for n > 0 {
		c := min(n, int64(len(zero)))
		if _, err := f.WriteAt(zero[:c], off); err != nil {
			t.Fatal(err)
		}
		off += c
		n -= c
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
}

func fileSHA(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha(b)
}

// nvblkCLI runs the nvblk command line.
func (h *harness) nvblkCLI(t testing.TB, stdin []byte, args ...string) []byte {
	t.Helper()
	cmd := exec.Command(h.nvblk, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("nvblk %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// cliInfo is the part of `nvblk info --json` the tests look at.
type cliInfo struct {
	Format     string `json:"format"`
	Version    string `json:"version"`
	Offset     int64  `json:"offset"`
	LBASize    uint32 `json:"lbasize"`
	SectorSize int    `json:"sector_size"`
	Sectors    uint64 `json:"sectors"`
	UUID       string `json:"uuid"`
	ParentUUID string `json:"parent_uuid"`
}

func (h *harness) info(t testing.TB, path string) cliInfo {
	t.Helper()
	var ci cliInfo
	out := h.nvblkCLI(t, nil, "info", "--json", path)
	if err := json.Unmarshal(out, &ci); err != nil {
		t.Fatalf("nvblk info --json %s: %v: %s", path, err, out)
	}
	return ci
}

// parseHex parses a sysfs number like 0x100000000.
func parseHex(s string) (int64, error) {
	return strconv.ParseInt(s, 0, 64)
}
