package pmemtest

import (
	"bytes"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

func TestFaultyConformance(t *testing.T) {
	RunConformance(t, func(t *testing.T, size int64) pmem.Device { return NewFaulty(NewCrashMem(size)) })
}

func TestFaultyConformanceOffToggle(t *testing.T) {
	// An injector that is switched off changes nothing.
	RunConformance(t, func(t *testing.T, size int64) pmem.Device {
		f := NewFaulty(NewCrashMem(size))
		f.SetInjector(NewToggle(Always(nil)))
		return f
	})
}

// checkInjected checks that err is an injected fault of the given op.
func checkInjected(t *testing.T, err error, kind OpKind, index int64) {
	t.Helper()
	if !errors.Is(err, pmem.ErrMedia) || !errors.Is(err, ErrInjected) {
		t.Fatalf("error %v: want an injected pmem.ErrMedia", err)
	}
	var fe *FaultError
	if !errors.As(err, &fe) {
		t.Fatalf("error %v is not a *FaultError", err)
	}
	if fe.Op.Kind != kind || fe.Op.Index != index {
		t.Fatalf("fault on %v, want %v op #%d", fe.Op, kind, index)
	}
}

func TestFaultyOnIndex(t *testing.T) {
	m := NewCrashMem(1 << 16)
	f := NewFaulty(m)
	f.SetInjector(OnIndex(2, nil))
	p := []byte("12345678")
	if _, err := f.WriteAt(p, 0); err != nil { // op 0
		t.Fatal(err)
	}
	if _, err := f.ReadAt(make([]byte, 8), 0); err != nil { // op 1
		t.Fatal(err)
	}
	n, err := f.WriteAt([]byte("abcdefgh"), 0) // op 2 fails
	checkInjected(t, err, OpWrite, 2)
	if n != 0 {
		t.Errorf("failed write returned n = %d, want 0", n)
	}
	if got := read(t, m, 0, 8); !bytes.Equal(got, p) {
		t.Errorf("failed write stored %q", got)
	}
	if err := f.Persist(0, 8); err != nil { // op 3
		t.Fatal(err)
	}
	if f.Ops() != 4 || f.Injected() != 1 {
		t.Errorf("Ops() = %d, Injected() = %d; want 4, 1", f.Ops(), f.Injected())
	}
	if f.Count(OpWrite) != 2 || f.Count(OpRead) != 1 || f.Count(OpPersist) != 1 || f.Count(AllOps) != 4 || f.Count(WriteOps|OpRead) != 3 {
		t.Errorf("Count: write %d read %d persist %d all %d", f.Count(OpWrite), f.Count(OpRead), f.Count(OpPersist), f.Count(AllOps))
	}
}

func TestFaultyEveryOpKind(t *testing.T) {
	f := NewFaulty(NewCrashMem(1 << 16))
	f.SetInjector(Always(nil))
	buf := bytes.Repeat([]byte{7}, 8)
	_, err := f.ReadAt(buf, 8)
	checkInjected(t, err, OpRead, 0)
	if !bytes.Equal(buf, bytes.Repeat([]byte{7}, 8)) {
		t.Error("failed read changed the buffer")
	}
	_, err = f.WriteAt(buf, 8)
	checkInjected(t, err, OpWrite, 1)
	_, err = f.WriteAtPersist(buf, 8)
	checkInjected(t, err, OpWritePersist, 2)
	checkInjected(t, f.Flush(0, 8), OpFlush, 3)
	checkInjected(t, f.Drain(), OpDrain, 4)
	checkInjected(t, f.Persist(0, 8), OpPersist, 5)
	if got := read(t, f.Device(), 8, 8); !bytes.Equal(got, make([]byte, 8)) {
		t.Errorf("failed writes stored %x", got)
	}
	// Size, Mode, BadBlocks and Close are not injected.
	if f.Size() != 1<<16 || f.Mode() != pmem.ModeDAX || f.BadBlocks() == nil {
		t.Error("pass-through methods wrong")
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
}

func TestFaultyFailedFlushFlushesNothing(t *testing.T) {
	m := NewCrashMem(1 << 16)
	f := NewFaulty(m)
	f.SetInjector(OnKind(OpFlush|OpPersist, Always(nil)))
	if _, err := f.WriteAt([]byte("data"), 64); err != nil {
		t.Fatal(err)
	}
	if err := f.Flush(64, 4); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("Flush = %v", err)
	}
	if err := f.Persist(64, 4); !errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("Persist = %v", err)
	}
	if err := f.Drain(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, m.CrashDurableOnly(), 64, 4); !bytes.Equal(got, make([]byte, 4)) {
		t.Errorf("data durable after a failed flush: %q", got)
	}
	f.SetInjector(nil)
	if err := f.Persist(64, 4); err != nil {
		t.Fatal(err)
	}
	if got := read(t, m.CrashDurableOnly(), 64, 4); string(got) != "data" {
		t.Errorf("data not durable after Persist: %q", got)
	}
}

func TestFaultyInRange(t *testing.T) {
	f := NewFaulty(NewCrashMem(1 << 16))
	f.SetInjector(InRange(4096, 512, Always(nil)))
	for _, c := range []struct {
		off, n int64
		fail   bool
	}{
		{0, 4096, false}, {4095, 2, true}, {4096, 1, true}, {4607, 1, true}, {4608, 100, false},
		{0, 1 << 16, true}, {4100, 0, false},
	} {
		_, err := f.WriteAt(make([]byte, c.n), c.off)
		if (err != nil) != c.fail {
			t.Errorf("WriteAt(%d bytes, %d) = %v, want failure %v", c.n, c.off, err, c.fail)
		}
		if err := f.Flush(c.off, c.n); (err != nil) != c.fail {
			t.Errorf("Flush(%d, %d) = %v, want failure %v", c.off, c.n, err, c.fail)
		}
	}
	if err := f.Drain(); err != nil {
		t.Errorf("Drain in a range injector = %v", err)
	}
}

func TestFaultyAfterEveryLimit(t *testing.T) {
	f := NewFaulty(NewCrashMem(1 << 16))
	var failed []int64
	run := func(n int) {
		failed = failed[:0]
		for range n {
			if _, err := f.WriteAt([]byte{1}, 0); err != nil {
				var fe *FaultError
				if !errors.As(err, &fe) {
					t.Fatal(err)
				}
				failed = append(failed, fe.Op.Index)
			}
			if err := f.Drain(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Writes are even ops, drains odd ones. After/Every count what reaches
	// them, so these fail the third write on / every second write.
	base := f.Ops()
	f.SetInjector(OnKind(OpWrite, After(2, Always(nil))))
	run(5)
	if want := []int64{base + 4, base + 6, base + 8}; !slices.Equal(failed, want) {
		t.Errorf("After: failed ops %v, want %v", failed, want)
	}
	base = f.Ops()
	f.SetInjector(OnKind(OpWrite, Every(2, Always(nil))))
	run(6)
	if want := []int64{base + 2, base + 6, base + 10}; !slices.Equal(failed, want) {
		t.Errorf("Every: failed ops %v, want %v", failed, want)
	}
	base = f.Ops()
	f.SetInjector(Limit(2, OnKind(OpWrite, Always(nil))))
	run(4)
	if want := []int64{base, base + 2}; !slices.Equal(failed, want) {
		t.Errorf("Limit: failed ops %v, want %v", failed, want)
	}
	base = f.Ops()
	f.SetInjector(Any(OnIndex(base+2, nil), OnIndex(base+6, nil)))
	run(4)
	if want := []int64{base + 2, base + 6}; !slices.Equal(failed, want) {
		t.Errorf("Any: failed ops %v, want %v", failed, want)
	}
}

func TestFaultyToggle(t *testing.T) {
	f := NewFaulty(NewCrashMem(1 << 16))
	tg := NewToggle(Always(nil))
	f.SetInjector(tg)
	if tg.Enabled() {
		t.Fatal("new Toggle is on")
	}
	if err := f.Drain(); err != nil {
		t.Fatalf("toggle off: %v", err)
	}
	tg.On()
	if err := f.Drain(); !errors.Is(err, ErrInjected) {
		t.Fatalf("toggle on: %v", err)
	}
	tg.Off()
	if err := f.Drain(); err != nil {
		t.Fatalf("toggle off again: %v", err)
	}
}

func TestFaultyCustomErrorAndStoreOnFail(t *testing.T) {
	m := NewCrashMem(1 << 16)
	f := NewFaulty(m)
	myErr := errors.New("boom")
	f.SetInjector(OnKind(WriteOps, InjectorFunc(func(op Op) error {
		if op.Off == 100 {
			return myErr
		}
		return nil
	})))
	f.SetStoreOnFail(true)
	n, err := f.WriteAt([]byte("stored"), 100)
	if !errors.Is(err, myErr) || errors.Is(err, pmem.ErrMedia) {
		t.Fatalf("WriteAt = %v, want the injector's error", err)
	}
	if n != 6 || string(read(t, m, 100, 6)) != "stored" {
		t.Errorf("store-on-fail write: n = %d, content %q", n, read(t, m, 100, 6))
	}
	// A failed WriteAtPersist that stores does not persist.
	if _, err := f.WriteAtPersist([]byte("nopersist"), 100); !errors.Is(err, myErr) {
		t.Fatalf("WriteAtPersist = %v", err)
	}
	if got := read(t, m.CrashDurableOnly(), 100, 9); !bytes.Equal(got, make([]byte, 9)) {
		t.Errorf("failed WriteAtPersist persisted %q", got)
	}
	// A real error of the device wins over the injected one.
	f.SetInjector(Always(nil))
	if _, err := f.WriteAt([]byte("x"), 1<<20); !errors.Is(err, pmem.ErrOutOfRange) {
		t.Errorf("store-on-fail write out of range = %v, want pmem.ErrOutOfRange", err)
	}
}

func TestFaultyConcurrentCounts(t *testing.T) {
	f := NewFaulty(NewCrashMem(1 << 16))
	f.SetInjector(Every(3, Always(nil)))
	var wg sync.WaitGroup
	var mu sync.Mutex
	failures := 0
	for g := range 8 {
		wg.Go(func() {
			for i := range 300 {
				_, err := f.WriteAt([]byte{byte(i)}, int64(g*64))
				if err != nil {
					mu.Lock()
					failures++
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	if f.Ops() != 2400 || f.Count(OpWrite) != 2400 {
		t.Errorf("Ops() = %d, Count(OpWrite) = %d, want 2400", f.Ops(), f.Count(OpWrite))
	}
	if failures != 800 || f.Injected() != 800 {
		t.Errorf("failures %d, Injected() %d, want 800", failures, f.Injected())
	}
}

func TestOpKindString(t *testing.T) {
	for k, want := range map[OpKind]string{
		OpRead:         "read",
		OpWritePersist: "write-persist",
		WriteOps:       "write|write-persist",
		0:              "none",
		AllOps | 0x80:  "read|write|write-persist|flush|drain|persist|OpKind(0x80)",
	} {
		if got := k.String(); got != want {
			t.Errorf("OpKind(%#x).String() = %q, want %q", uint8(k), got, want)
		}
	}
	op := Op{Kind: OpWrite, Off: 4096, Len: 512, Index: 7}
	if got, want := op.String(), "op #7: write of 512 bytes at offset 4096"; got != want {
		t.Errorf("Op.String() = %q, want %q", got, want)
	}
}
