package btt_test

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/internal/bttfixture"
	"github.com/nvblk/nvblk/pmem"
)

func buildFixture(t *testing.T, c bttfixture.Case) pmem.Device {
	t.Helper()
	dev := newRAM(t, c.Size)
	if err := c.Build(dev); err != nil {
		t.Fatalf("%s: build: %v", c.Name, err)
	}
	if c.Truncate > 0 {
		w, err := pmem.NewWindow(dev, 0, c.Truncate)
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	return dev
}

func codes(r *btt.Report, sev btt.Severity) []string {
	var out []string
	for _, f := range r.Findings {
		if f.Severity == sev && !slices.Contains(out, f.Code) {
			out = append(out, f.Code)
		}
	}
	slices.Sort(out)
	return out
}

// TestCheckFixtures runs the checker over every fixture: the exact error
// codes and exit status without --repair (and the image left
// byte-identical), then with --repair, and what the repair leaves.
func TestCheckFixtures(t *testing.T) {
	for _, c := range bttfixture.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			dev := buildFixture(t, c)
			before := snapshot(t, dev)
			rep, err := btt.Check(dev, btt.CheckOptions{})
			if err != nil {
				t.Fatalf("check: %v", err)
			}
			want := slices.Clone(c.Codes)
			slices.Sort(want)
			if got := codes(rep, btt.SevError); !slices.Equal(got, want) {
				t.Errorf("error codes %v, want %v\n%s", got, want, findings(rep))
			}
			for _, info := range c.Infos {
				if !slices.Contains(codes(rep, btt.SevInfo), info) {
					t.Errorf("info %s missing\n%s", info, findings(rep))
				}
			}
			if rep.ExitCode() != c.Exit {
				t.Errorf("exit %d, want %d", rep.ExitCode(), c.Exit)
			}
			if !bytes.Equal(before, snapshot(t, dev)) {
				t.Fatal("check without --repair changed the image")
			}
			// Repair.
			rrep, err := btt.Check(dev, btt.CheckOptions{Repair: true, RewriteLog: c.RewriteLog})
			if err != nil {
				t.Fatalf("check --repair: %v", err)
			}
			if rrep.ExitCode() != c.RepairExit {
				t.Errorf("repair exit %d, want %d\n%s", rrep.ExitCode(), c.RepairExit, findings(rrep))
			}
			if c.RepairExit > 1 {
				return
			}
			after, err := btt.Check(dev, btt.CheckOptions{})
			if err != nil || !after.Clean() {
				t.Fatalf("after repair: %v\n%s", err, findings(after))
			}
			b, err := btt.Open(dev, btt.Options{})
			if err != nil {
				t.Fatalf("open after repair: %v", err)
			}
			if b.FromBackup() || b.ReadOnly() {
				t.Error("still read-only after repair")
			}
			if err := btt.VerifyPermutation(dev); err != nil {
				t.Fatal(err)
			}
			if c.RewriteLog {
				if idx := b.Arenas()[0].LogIndex; idx != [2]int{0, 1} {
					t.Errorf("log index after --rewrite-log %v", idx)
				}
			}
		})
	}
}

func findings(r *btt.Report) string {
	if r == nil {
		return "(no report)"
	}
	var s string
	for _, f := range r.Findings {
		s += "  " + f.String() + "\n"
	}
	return s
}

// TestCheckRollForwardRepair: the pending write is applied by --repair,
// and the sector then reads the new data.
func TestCheckRollForwardRepair(t *testing.T) {
	for _, c := range bttfixture.Cases() {
		if c.Name != "pending-roll-forward" {
			continue
		}
		dev := buildFixture(t, c)
		if _, err := btt.Check(dev, btt.CheckOptions{Repair: true}); err != nil {
			t.Fatal(err)
		}
		b, err := btt.Open(dev, btt.Options{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		p := make([]byte, 4096)
		if err := b.ReadSectors(p, 40); err != nil || !bytes.Equal(p, bytes.Repeat([]byte{0x77}, 4096)) {
			t.Fatalf("LBA 40 after roll-forward repair: %v", err)
		}
	}
}

// TestCheckPadCompatReads: the old-padding image reads LBA 0 through both
// layouts, before and after --rewrite-log.
func TestCheckPadCompatReads(t *testing.T) {
	for _, c := range bttfixture.Cases() {
		if c.Name != "pad-compat" {
			continue
		}
		dev := buildFixture(t, c)
		want := bytes.Repeat([]byte("pad-compat LBA 0"), 256)
		for _, rewrite := range []bool{false, true} {
			if rewrite {
				if _, err := btt.Check(dev, btt.CheckOptions{Repair: true, RewriteLog: true}); err != nil {
					t.Fatal(err)
				}
			}
			b, err := btt.Open(dev, btt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			wantIdx := [2]int{0, 2}
			if rewrite {
				wantIdx = [2]int{0, 1}
			}
			if idx := b.Arenas()[0].LogIndex; idx != wantIdx {
				t.Errorf("rewrite=%v: log index %v, want %v", rewrite, idx, wantIdx)
			}
			p := make([]byte, 4096)
			if err := b.ReadSectors(p, 0); err != nil || !bytes.Equal(p, want) {
				t.Errorf("rewrite=%v: LBA 0: %v", rewrite, err)
			}
			// A write through the old layout keeps it consistent.
			if err := b.WriteSectors(bytes.Repeat([]byte{9}, 4096), 1); err != nil {
				t.Fatal(err)
			}
			if r, err := btt.Check(dev, btt.CheckOptions{}); err != nil || !r.Clean() {
				t.Fatalf("rewrite=%v: check after a write: %v\n%s", rewrite, err, findings(r))
			}
		}
	}
}

// TestCheckKernelImages: the Linux-written images check clean.
func TestCheckKernelImagesClean(t *testing.T) {
	for _, k := range kernelImagesForCheck(t) {
		rep, err := btt.Check(k.dev, btt.CheckOptions{})
		if err != nil || !rep.Clean() {
			t.Errorf("%s: %v\n%s", k.name, err, findings(rep))
		}
	}
}

// TestCheckRandomFlips: random byte flips in the metadata never panic the
// checker; when it says clean, the BTT really opens and is consistent.
func TestCheckRandomFlips(t *testing.T) {
	base := buildFixture(t, bttfixture.Cases()[0])
	img := snapshot(t, base)
	b, err := btt.Open(base, btt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	a := b.Arenas()[0]
	regions := [][2]int64{
		{a.Offset, 128},
		{a.Offset + int64(a.Info.MapOff), 64 * 4},
		{a.Offset + int64(a.Info.LogOff), 256 * 64},
		{a.Offset + int64(a.Info.Info2Off), 128},
	}
	rng := newRand(1)
	dirty := 0
	for iter := 0; iter < 300; iter++ {
		dev := newRAM(t, int64(len(img)))
		dev.WriteAt(img, 0)
		for k := 0; k < 1+rng.IntN(4); k++ {
			r := regions[rng.IntN(len(regions))]
			off := r[0] + rng.Int64N(r[1])
			var x [1]byte
			dev.ReadAt(x[:], off)
			x[0] ^= byte(1 << rng.IntN(8))
			dev.WriteAt(x[:], off)
		}
		rep, err := btt.Check(dev, btt.CheckOptions{})
		if err != nil {
			continue // no BTT left at all: a clean operational error
		}
		if rep.Clean() {
			if _, err := btt.Open(dev, btt.Options{}); err != nil {
				t.Fatalf("iteration %d: check clean but open fails: %v", iter, err)
			}
			if err := btt.VerifyPermutation(dev); err != nil {
				t.Fatalf("iteration %d: check clean but %v", iter, err)
			}
		} else {
			dirty++
		}
		dev.Close()
	}
	if dirty == 0 {
		t.Fatal("300 rounds of flips and the checker never found anything")
	}
}

// TestCheckListsSectorStates: sectors in the error and zero states are
// legal, so the check exits 0, but it says how many there are and names
// the first LBAs (device LBAs, in any arena), and counts them.
func TestCheckListsSectorStates(t *testing.T) {
	dev := newRAM(t, 32<<20+4096)
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: 4096, MaxArenaSize: 16 << 20})
	if err != nil {
		t.Fatal(err)
	}
	edge := b.Arenas()[1].ExternalStart
	if err := b.SetError(3, 2); err != nil {
		t.Fatal(err)
	}
	if err := b.SetError(edge+1, 1); err != nil {
		t.Fatal(err)
	}
	for k := uint64(0); k < 12; k++ {
		if err := b.ZeroSectors(20+2*k, 1); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := btt.Check(dev, btt.CheckOptions{})
	if err != nil || rep.ExitCode() != 0 {
		t.Fatalf("exit %d, %v\n%s", rep.ExitCode(), err, findings(rep))
	}
	if rep.ErrorSectors != 3 || rep.ZeroSectors != 12 {
		t.Errorf("error sectors %d (want 3), zero sectors %d (want 12)", rep.ErrorSectors, rep.ZeroSectors)
	}
	all := findings(rep)
	for _, want := range []string{
		"2 sector(s) in the error state: reads of them fail until they are rewritten (LBAs 3, 4)",
		fmt.Sprintf("1 sector(s) in the error state: reads of them fail until they are rewritten (LBA %d)", edge+1),
		"12 sector(s) in the zero state: they read as zeros (first LBAs 20, 22, 24, 26, 28, 30, 32, 34)",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("missing %q in\n%s", want, all)
		}
	}
}

// TestCheckUnreadableIsOperational: metadata the media cannot deliver
// (a bad block under the map) is an operational error, exit 8, with or
// without --repair, not "errors left, run with --repair" (4).
func TestCheckUnreadableIsOperational(t *testing.T) {
	dev := newRAM(t, 20<<20)
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	a := b.Arenas()[0]
	dev.BadBlocks().Add(a.Offset+int64(a.Info.MapOff)+8192, 512)
	for _, repair := range []bool{false, true} {
		rep, err := btt.Check(dev, btt.CheckOptions{Repair: repair})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Unreadable == 0 || rep.ExitCode() != 8 {
			t.Errorf("repair=%v: unreadable %d, exit %d, want 8\n%s", repair, rep.Unreadable, rep.ExitCode(), findings(rep))
		}
	}
}

// TestOpenTruncatedInfo2: a BTT whose device ends before the last
// backup info block (an image file cut short by a page) opens read-only,
// says why, and reads everything.
func TestOpenTruncatedInfo2(t *testing.T) {
	var c bttfixture.Case
	for _, f := range bttfixture.Cases() {
		if f.Name == "truncated-info2" {
			c = f
		}
	}
	dev := buildFixture(t, c)
	b, err := btt.Open(dev, btt.Options{})
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	if !b.ReadOnly() || !b.Truncated() || b.FromBackup() {
		t.Fatalf("read-only %v, truncated %v, from backup %v", b.ReadOnly(), b.Truncated(), b.FromBackup())
	}
	p := make([]byte, b.SectorSize())
	for lba := uint64(0); lba < b.Sectors(); lba += 97 {
		if err := b.ReadSectors(p, lba); err != nil || !bytes.Equal(p, bttfixture.WrittenData(lba, len(p))) {
			t.Fatalf("LBA %d: %v", lba, err)
		}
	}
	if err := b.WriteSectors(p, 0); !errors.Is(err, btt.ErrReadOnly) {
		t.Fatalf("write: %v", err)
	}
}

// panicDev panics on reads at or past from: a stand-in for a checker bug
// that some damaged metadata provokes.
type panicDev struct {
	pmem.Device
	from int64
}

func (d panicDev) ReadAt(p []byte, off int64) (int, error) {
	if off >= d.from {
		panic(fmt.Sprintf("injected panic reading %d bytes at %#x", len(p), off))
	}
	return d.Device.ReadAt(p, off)
}

// TestCheckRecoversPanic: a panic inside Check becomes an internal-error
// finding (exit 8: the check is incomplete), and the findings made
// before it are kept.
func TestCheckRecoversPanic(t *testing.T) {
	dev := newRAM(t, 32<<20)
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	// Reading arena 0's info block (at 4096 in a 1.1 BTT) works; the
	// first read past it (the log or the map) panics.
	var seen []btt.Finding
	rep, err := btt.Check(panicDev{dev, btt.InitialOffset11 + btt.InfoSize}, btt.CheckOptions{OnFinding: func(f btt.Finding) { seen = append(seen, f) }})
	if err != nil {
		t.Fatalf("Check returned an error instead of a finding: %v", err)
	}
	if got := codes(rep, btt.SevError); !slices.Equal(got, []string{btt.CodeInternal}) {
		t.Fatalf("error codes %v, want [%s]\n%s", got, btt.CodeInternal, findings(rep))
	}
	f := rep.Findings[len(rep.Findings)-1]
	if !strings.Contains(f.Message, "injected panic") || f.Arena != -1 {
		t.Errorf("finding %+v", f)
	}
	if rep.ExitCode() != 8 || rep.Unreadable != 1 || rep.Arenas != 1 {
		t.Errorf("exit %d, unreadable %d, arenas %d; want 8, 1, 1", rep.ExitCode(), rep.Unreadable, rep.Arenas)
	}
	if len(seen) != len(rep.Findings) {
		t.Errorf("OnFinding saw %d findings, the report has %d", len(seen), len(rep.Findings))
	}
}
