package nslabel_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/nvblk/nvblk/nslabel"
	"github.com/nvblk/nvblk/pmem/pmemtest"
)

const testArea = 128 << 10

// newLabel is a pmem namespace label as nvblk create writes it.
func newLabel(version string, name string, uuidByte byte, dpa, size uint64) *nslabel.Label {
	l := &nslabel.Label{Name: name, NLabel: 1, LBASize: 4096, DPA: dpa, RawSize: size,
		ISetCookie: nslabel.InterleaveSetCookie(version, nslabel.QEMUSerial(0), nslabel.QEMUVendor)}
	for i := range l.UUID {
		l.UUID[i] = uuidByte + byte(i)
	}
	if version == "1.2" {
		l.TypeGUID, l.AbstractionGUID = nslabel.GUIDSPAPM, nslabel.GUIDBTT2
	}
	return l
}

// labelledDevice is a CrashMem of dataSize bytes plus a label area at its
// end, initialised, holding label l if not nil.
func labelledDevice(t testing.TB, version string, dataSize int64, l *nslabel.Label) *pmemtest.CrashMem {
	t.Helper()
	dev := pmemtest.NewCrashMem(dataSize + testArea)
	if err := nslabel.Init(dev, dataSize, testArea, version); err != nil {
		t.Fatal(err)
	}
	if l != nil {
		if err := nslabel.Update(dev, dataSize, testArea, l, nil); err != nil {
			t.Fatal(err)
		}
	}
	return dev
}

func TestInitUpdateLocate(t *testing.T) {
	for _, version := range []string{"1.1", "1.2"} {
		t.Run(version, func(t *testing.T) {
			const data = 4 << 20
			dev := labelledDevice(t, version, data, nil)
			l, err := nslabel.Locate(dev, nil)
			if err != nil {
				t.Fatal(err)
			}
			a := l.Area
			wantLS := map[string]int{"1.1": 128, "1.2": 256}[version]
			if l.Offset != data || l.Size != testArea || a.Version() != version || a.LabelSize != wantLS ||
				a.Current != 0 || a.Index[0].Seq != 3 || a.Index[1].Seq != 2 || len(a.Labels) != 0 || len(l.Namespaces) != 0 {
				t.Fatalf("empty area: off %d size %d v%s ls %d current %d seq %d/%d labels %d",
					l.Offset, l.Size, a.Version(), a.LabelSize, a.Current, a.Index[0].Seq, a.Index[1].Seq, len(a.Labels))
			}
			if int(a.Index[0].NSlot) != nslabel.NumSlots(testArea, wantLS) || a.Index[0].Err != nil || a.Index[1].Err != nil {
				t.Fatalf("index: %+v", a.Index[0])
			}
			put := newLabel(version, "ns-one", 0x10, 0, 2<<20)
			if err := nslabel.Update(dev, data, testArea, put, nil); err != nil {
				t.Fatal(err)
			}
			if l, err = nslabel.Locate(dev, nil); err != nil {
				t.Fatal(err)
			}
			if l.Area.Current != 1 || l.Area.Index[1].Seq != 1 || len(l.Namespaces) != 1 {
				t.Fatalf("after one update: current %d seq %d, %d namespaces", l.Area.Current, l.Area.Index[1].Seq, len(l.Namespaces))
			}
			ns := l.Namespaces[0]
			wantClaim := map[string]string{"1.1": "none", "1.2": "btt2"}[version]
			if ns.Err != nil || ns.Name != "ns-one" || ns.UUID != "10111213-1415-1617-1819-1a1b1c1d1e1f" ||
				ns.Offset != 0 || ns.Size != 2<<20 || ns.LBASize != 4096 || ns.ClaimClass != wantClaim || ns.Slot != 0 {
				t.Fatalf("namespace %+v", ns)
			}
			// A second namespace, then replace the first (a new slot, the
			// old one freed in the same index write).
			if err := nslabel.Update(dev, data, testArea, newLabel(version, "two", 0x40, 2<<20, 1<<20), nil); err != nil {
				t.Fatal(err)
			}
			repl := newLabel(version, "ns-one-renamed", 0x10, 0, 2<<20)
			if err := nslabel.Update(dev, data, testArea, repl, func(x *nslabel.Label) bool { return x.UUID == repl.UUID }); err != nil {
				t.Fatal(err)
			}
			if l, err = nslabel.Locate(dev, nil); err != nil {
				t.Fatal(err)
			}
			if len(l.Namespaces) != 2 || l.Namespaces[0].Name != "ns-one-renamed" || l.Namespaces[0].Slot != 2 ||
				l.Namespaces[1].Name != "two" || l.Namespaces[1].Offset != 2<<20 || len(l.Problems) != 0 {
				t.Fatalf("namespaces %+v, problems %+v", l.Namespaces, l.Problems)
			}
			if _, err := l.Select("1"); err != nil {
				t.Error(err)
			}
			if ns, err := l.Select(l.Namespaces[0].UUID); err != nil || ns.Number != 0 {
				t.Errorf("select by uuid: %v", err)
			}
			if _, err := l.Select("7"); err == nil {
				t.Error("namespace 7 selected")
			}
		})
	}
}

// TestQEMUCookie: the cookie nvblk computes for qemu's first NVDIMM is the
// one Linux wrote into the kernel-labelled image.
func TestQEMUCookie(t *testing.T) {
	area, _ := kernelLabels(t)
	a, err := nslabel.Parse(area)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := nslabel.InterleaveSetCookie("1.2", nslabel.QEMUSerial(0), nslabel.QEMUVendor), a.Labels[0].ISetCookie; got != want {
		t.Errorf("cookie2 %#x, kernel wrote %#x", got, want)
	}
	if slot, ok := nslabel.QEMUSlotOf("1.2", a.Labels[0].ISetCookie); !ok || slot != 0 {
		t.Errorf("QEMUSlotOf: %d %v, want slot 0", slot, ok)
	}
	if slot, ok := nslabel.QEMUSlotOf("1.1", nslabel.InterleaveSetCookie("1.1", nslabel.QEMUSerial(7), nslabel.QEMUVendor)); !ok || slot != 7 {
		t.Errorf("QEMUSlotOf v1.1: %d %v, want slot 7", slot, ok)
	}
	if _, ok := nslabel.QEMUSlotOf("1.2", 12345); ok {
		t.Error("QEMUSlotOf found a slot for cookie 12345")
	}
	// cookie1 of one DIMM at region offset 0: Fletcher64 of (0, 0, sn, 0).
	sn := uint64(nslabel.QEMUSerial(3))
	if got, want := nslabel.InterleaveSetCookie("1.1", uint32(sn), nslabel.QEMUVendor), 2*sn<<32|sn; got != want {
		t.Errorf("cookie1 %#x, want %#x", got, want)
	}
}

// TestLocateProblems: labels outside the device and overlapping labels are
// reported; both index blocks invalid is an error wrapping ErrNoIndex; a
// device without the signature has no labels, even with a valid-looking
// area elsewhere.
func TestLocateProblems(t *testing.T) {
	const data = 4 << 20
	dev := labelledDevice(t, "1.2", data, newLabel("1.2", "a", 0x10, 0, 2<<20))
	if err := nslabel.Update(dev, data, testArea, newLabel("1.2", "b", 0x20, 1<<20, 2<<20), nil); err != nil {
		t.Fatal(err)
	}
	if err := nslabel.Update(dev, data, testArea, newLabel("1.2", "c", 0x30, 3<<20, 2<<20), nil); err != nil {
		t.Fatal(err)
	}
	l, err := nslabel.Locate(dev, nil)
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]int{}
	for _, p := range l.Problems {
		codes[p.Code]++
	}
	if codes["label-overlap"] != 1 || codes["label-outside"] != 1 || len(l.Problems) != 2 {
		t.Errorf("problems %+v", l.Problems)
	}
	if _, err := l.Select("1"); err == nil {
		t.Error("overlapping namespace selected")
	}
	if _, err := l.Select("0"); err != nil {
		t.Error(err)
	}
	// Damage both index blocks.
	dev.WriteAtPersist([]byte{0xff}, data+40)
	dev.WriteAtPersist([]byte{0xff}, data+256+40)
	l, err = nslabel.Locate(dev, nil)
	if !errors.Is(err, nslabel.ErrNoIndex) || l == nil || len(l.Problems) != 1 || l.Problems[0].Code != "label-index" {
		t.Errorf("both indexes damaged: %v %+v", err, l)
	}
	// No signature where an area of a common size would start: no labels
	// (an area further in is not looked for).
	bare := pmemtest.NewCrashMem(data + testArea + 4<<20)
	if err := nslabel.Init(bare, data, testArea, "1.2"); err != nil {
		t.Fatal(err)
	}
	if _, err := nslabel.Locate(bare, nil); !errors.Is(err, nslabel.ErrNoLabels) {
		t.Errorf("area not at the end: %v", err)
	}
}

// TestUpdateCrash interrupts label updates at every store, flush and drain
// on CrashMem (with random subsets of the unflushed words landing): the
// area must always parse, and hold either the old namespace or its
// replacement, never none and never both.
func TestUpdateCrash(t *testing.T) {
	for _, version := range []string{"1.1", "1.2"} {
		t.Run(version, func(t *testing.T) {
			const data = 1 << 20
			dev := labelledDevice(t, version, data, newLabel(version, "gen0", 0x10, 0, 1<<20))
			rng := rand.New(rand.NewPCG(1, 2))
			states := 0
			for gen := 1; gen <= 6; gen++ { // 6 updates: the sequence numbers wrap twice
				old, neu := fmt.Sprintf("gen%d", gen-1), fmt.Sprintf("gen%d", gen)
				var fails []string
				dev.SetHook(func(e pmemtest.Event) {
					for k := range 12 {
						var img *pmemtest.CrashMem
						switch k {
						case 0:
							img = dev.CrashDurableOnly()
						case 1:
							img = dev.CrashAll()
						default:
							img = dev.Crash(rng)
						}
						states++
						l, err := nslabel.Locate(img, nil)
						if err != nil {
							fails = append(fails, fmt.Sprintf("%v: %v", e, err))
							continue
						}
						if len(l.Namespaces) != 1 || (l.Namespaces[0].Name != old && l.Namespaces[0].Name != neu) {
							var names []string
							for _, ns := range l.Namespaces {
								names = append(names, ns.Name)
							}
							fails = append(fails, fmt.Sprintf("%v: namespaces %q, want %s or %s", e, names, old, neu))
						}
					}
				})
				put := newLabel(version, neu, 0x10, 0, 1<<20)
				err := nslabel.Update(dev, data, testArea, put, func(x *nslabel.Label) bool { return x.UUID == put.UUID })
				dev.SetHook(nil)
				if err != nil {
					t.Fatal(err)
				}
				if len(fails) > 0 {
					t.Fatalf("update %d: %d bad crash states, first: %s", gen, len(fails), fails[0])
				}
				l, err := nslabel.Locate(dev, nil)
				if err != nil || len(l.Namespaces) != 1 || l.Namespaces[0].Name != neu {
					t.Fatalf("after update %d: %v %+v", gen, err, l)
				}
			}
			if states < 100 {
				t.Errorf("only %d crash states explored", states)
			}
			t.Logf("%d crash states", states)
		})
	}
}

// FuzzParse feeds arbitrary label areas to Parse and Locate: they must
// not panic, and every label Parse returns must lie in a slot inside the
// area with a valid index. Run longer with
//
//	go test -run XXX -fuzz FuzzParse ./nslabel/
//
// An input shorter than 128 KiB (the smallest area that holds two index
// blocks and slots) is the start of a 128 KiB area whose rest is zeroes:
// the index blocks and the first slots, where the structure is, so the
// fuzzer mutates small inputs.
func FuzzParse(f *testing.F) {
	for _, v := range []string{"1.1", "1.2"} {
		dev := labelledDevice(f, v, 0, newLabel(v, "seed", 0x10, 0, 1<<20))
		nslabel.Update(dev, 0, testArea, newLabel(v, "seed2", 0x20, 0, 1<<20), nil)
		f.Add(dev.Snapshot()[:2048])
		b := dev.Snapshot()[:2048]
		b[40] ^= 1 // index 0 damaged
		f.Add(b)
	}
	f.Add(labelledDevice(f, "1.2", 0, nil).Snapshot()) // a whole area
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, area []byte) {
		if len(area) > nslabel.MaxAreaSize {
			area = area[:nslabel.MaxAreaSize]
		}
		if len(area) < testArea {
			area = append(area, make([]byte, testArea-len(area))...)
		}
		a, err := nslabel.Parse(area)
		if err != nil {
			if !errors.Is(err, nslabel.ErrNoIndex) {
				t.Fatalf("error %v does not wrap ErrNoIndex", err)
			}
			return
		}
		if a.Current < 0 || a.Current > 1 || a.Index[a.Current].Err != nil {
			t.Fatalf("current index %d invalid", a.Current)
		}
		isize := nslabel.IndexSize(len(area), a.LabelSize)
		for _, l := range append(a.Labels, a.Skipped...) {
			if end := 2*isize + int(l.Slot+1)*a.LabelSize; l.Err == nil && end > len(area) {
				t.Fatalf("label slot %d ends at %d, past the %d-byte area", l.Slot, end, len(area))
			}
		}
		// Re-encoding a valid label gives its bytes back.
		for _, l := range a.Labels {
			off := 2*isize + int(l.Slot)*a.LabelSize
			got := nslabel.EncodeLabel(&l, a.LabelSize)
			want := area[off : off+a.LabelSize]
			same := bytes.Equal(got[:124], want[:124])
			if a.LabelSize == 256 {
				same = same && got[124] == want[124] && bytes.Equal(got[128:160], want[128:160]) && bytes.Equal(got[248:], want[248:])
			}
			if !same {
				t.Fatalf("slot %d re-encodes differently", l.Slot)
			}
		}
	})
}

// TestParseMutations is a short, bounded run of the fuzz target's
// property in every test run: seed areas with random bytes changed (in the
// index blocks and the first slots, where the structure is) must parse or
// fail cleanly, never panic, and Locate must agree with Parse.
func TestParseMutations(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	var seeds [][]byte
	for _, v := range []string{"1.1", "1.2"} {
		dev := labelledDevice(t, v, 0, newLabel(v, "seed", 0x10, 0, 1<<20))
		nslabel.Update(dev, 0, testArea, newLabel(v, "seed2", 0x20, 0, 1<<20), nil)
		seeds = append(seeds, dev.Snapshot())
	}
	for i := range 400 {
		area := append([]byte(nil), seeds[i%len(seeds)]...)
		for range 1 + rng.IntN(8) {
			off := rng.IntN(2048)
			if rng.IntN(4) == 0 {
				off = rng.IntN(len(area))
			}
			area[off] = byte(rng.Uint32())
		}
		a, err := nslabel.Parse(area)
		if err != nil {
			if !errors.Is(err, nslabel.ErrNoIndex) {
				t.Fatalf("mutation %d: %v", i, err)
			}
			continue
		}
		if i%8 != 0 {
			continue
		}
		dev := pmemtest.NewCrashMem(int64(len(area)))
		dev.WriteAt(area, 0)
		l, err := nslabel.Locate(dev, []int64{testArea})
		if err != nil || len(l.Area.Labels) != len(a.Labels) {
			t.Fatalf("mutation %d: Locate %v, %d labels; Parse found %d", i, err, len(l.Area.Labels), len(a.Labels))
		}
	}
}
