package btt_test

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmem/pmemtest"
)

// TestFaultInjection fails, one at a time, every device operation of a
// sector write, zero and read (data, map and log reads and writes,
// flushes and drains, with and without the failed store landing). Each
// failure must surface as an error for that request only; afterwards the
// media (crashed right away, durable state only and random subsets) opens,
// passes the permutation check, keeps every acknowledged write, and holds
// the failed sector entirely old or entirely new. The same BTT instance
// must also stay usable or refuse writes cleanly.
func TestFaultInjection(t *testing.T) {
	type opFn func(b *btt.BTT, p []byte) error
	const lba = 5
	ops := map[string]opFn{
		"write": func(b *btt.BTT, p []byte) error { return b.WriteSectors(p, lba) },
		"zero":  func(b *btt.BTT, p []byte) error { return b.ZeroSectors(lba, 1) },
		"read":  func(b *btt.BTT, p []byte) error { return b.ReadSectors(p, lba) },
	}
	injected := 0
	for name, op := range ops {
		for _, storeOnFail := range []bool{false, true} {
			for idx := int64(0); ; idx++ {
				done := runFault(t, fmt.Sprintf("%s/op%d/store=%v", name, idx, storeOnFail), op, idx, storeOnFail)
				if done {
					break
				}
				injected++
			}
		}
	}
	if injected < 20 {
		t.Fatalf("only %d faults injected", injected)
	}
	t.Logf("%d faults injected", injected)
}

// runFault injects a failure at the idx-th device op of one request. It
// reports true when the request made fewer than idx+1 ops.
func runFault(t *testing.T, name string, op func(*btt.BTT, []byte) error, idx int64, storeOnFail bool) bool {
	t.Helper()
	mem := pmemtest.NewCrashMem(16 << 20)
	f := pmemtest.NewFaulty(mem)
	b, err := btt.Create(f, btt.CreateOptions{Version: btt.V20, LBASize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	ss := b.SectorSize()
	acked := map[uint64]uint32{}
	for l := uint64(0); l < 8; l++ {
		if err := b.WriteSectors(sectorData(ss, l, uint32(l+1)), l); err != nil {
			t.Fatal(err)
		}
		acked[l] = uint32(l + 1)
	}
	f.SetStoreOnFail(storeOnFail)
	start := f.Ops()
	f.SetInjector(pmemtest.OnIndex(start+idx, nil))
	p := sectorData(ss, 5, 100)
	reqErr := op(b, p)
	f.SetInjector(nil)
	if f.Injected() == 0 {
		return true
	}
	if reqErr == nil {
		// A failed read of metadata we did not need, or a failure the
		// request legitimately absorbed (a free block cleared later):
		// only acceptable if the result is still right, checked below.
		t.Logf("%s: request succeeded despite the fault", name)
	} else if !errors.Is(reqErr, pmem.ErrMedia) && !errors.Is(reqErr, btt.ErrIO) {
		t.Errorf("%s: error %v does not say I/O or media", name, reqErr)
	}
	// The failed sector holds old (gen 6) or new (gen 100 / zeros).
	allowed := func(got []byte, err error) bool {
		if err != nil {
			return errors.Is(err, btt.ErrIO) // E state set by a failed read is legitimate
		}
		return bytes.Equal(got, sectorData(ss, 5, 6)) || bytes.Equal(got, p) || bytes.Equal(got, make([]byte, ss))
	}
	check := func(img pmem.Device, how string) {
		b2, err := btt.Open(img, btt.Options{})
		if err != nil {
			t.Errorf("%s (%s): open: %v", name, how, err)
			return
		}
		if err := btt.VerifyPermutation(img); err != nil {
			t.Errorf("%s (%s): %v", name, how, err)
		}
		q := make([]byte, ss)
		for l, gen := range acked {
			err := b2.ReadSectors(q, l)
			if l == 5 {
				if !allowed(q, err) {
					t.Errorf("%s (%s): LBA 5 neither old nor new (err %v)", name, how, err)
				}
				continue
			}
			if err != nil || !bytes.Equal(q, sectorData(ss, l, gen)) {
				t.Errorf("%s (%s): acknowledged LBA %d lost (err %v)", name, how, l, err)
			}
		}
	}
	check(mem.CrashDurableOnly(), "durable only")
	rng := rand.New(rand.NewPCG(uint64(idx), 7))
	for i := 0; i < 4; i++ {
		check(mem.Crash(rng), "random crash")
	}
	// The live instance: later writes succeed, or fail with a clear
	// error without harming acknowledged data.
	if err := b.WriteSectors(sectorData(ss, 6, 200), 6); err == nil {
		acked[6] = 200
	} else if !errors.Is(err, btt.ErrIO) {
		t.Errorf("%s: later write: %v", name, err)
	}
	check(mem.CrashDurableOnly(), "after a later write")
	return false
}

// TestFaultDuringOpen: a media error on any read of Open (info blocks,
// log, map for roll-forward) fails Open with an error naming the problem,
// never a panic, and the next Open without the fault works.
func TestFaultDuringOpen(t *testing.T) {
	mem := pmemtest.NewCrashMem(16 << 20)
	b, err := btt.Create(mem, btt.CreateOptions{Version: btt.V20, LBASize: 4096})
	if err != nil {
		t.Fatal(err)
	}
	for l := uint64(0); l < 4; l++ {
		if err := b.WriteSectors(sectorData(4096, l, 1), l); err != nil {
			t.Fatal(err)
		}
	}
	failed := 0
	for idx := int64(0); idx < 2000; idx++ {
		f := pmemtest.NewFaulty(mem)
		f.SetInjector(pmemtest.OnIndex(idx, nil))
		_, err := btt.Open(f, btt.Options{ReadOnly: true})
		if f.Injected() == 0 {
			if err != nil {
				t.Fatalf("open without a fault: %v", err)
			}
			t.Logf("Open makes %d device operations; each failed once, %d opens failed", idx, failed)
			return
		}
		if err != nil {
			failed++
			if err.Error() == "" {
				t.Fatal("empty error")
			}
		}
	}
	t.Fatal("Open made more than 2000 operations")
}
