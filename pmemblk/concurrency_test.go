package pmemblk

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"sync"
	"testing"
	"time"
)

// Concurrent first writers on a new pool: one layout, every write kept.
func TestConcurrentFirstWrites(t *testing.T) {
	for round := 0; round < 5; round++ {
		p, dev := newRAMPool(t, 20<<20, 512)
		const writers = 8
		var start, done sync.WaitGroup
		start.Add(1)
		errs := make([]error, writers)
		for w := 0; w < writers; w++ {
			done.Add(1)
			go func() {
				defer done.Done()
				start.Wait()
				if w%3 == 0 {
					errs[w] = p.SetError(int64(100 + w))
					return
				}
				errs[w] = p.Write(pattern(make([]byte, 512), 1, uint64(w)), int64(w))
			}()
		}
		start.Done()
		done.Wait()
		for w, err := range errs {
			if err != nil {
				t.Fatalf("writer %d: %v", w, err)
			}
		}
		buf := make([]byte, 512)
		for w := 0; w < writers; w++ {
			if w%3 == 0 {
				if err := p.Read(buf, int64(100+w)); !errors.Is(err, ErrIO) {
					t.Errorf("round %d: block %d: %v, want the error state", round, 100+w, err)
				}
				continue
			}
			if err := p.Read(buf, int64(w)); err != nil || !bytes.Equal(buf, pattern(make([]byte, 512), 1, uint64(w))) {
				t.Errorf("round %d: block %d lost (%v)", round, w, err)
			}
		}
		if rep, err := CheckDevice(dev, CheckOptions{}); err != nil || !rep.Clean() {
			t.Fatalf("round %d: check %+v %v", round, rep, err)
		}
	}
}

// Readers see every block entirely old or entirely new while writers
// rewrite it, and Close waits for operations in flight.
func TestConcurrentReadWriteClose(t *testing.T) {
	p, _ := newRAMPool(t, 20<<20, 4096)
	const blocks, gens = 8, 15
	gen := func(g, blk int) []byte {
		if g == 0 {
			return make([]byte, 4096)
		}
		return pattern(make([]byte, 4096), uint64(g), uint64(blk))
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []string
	fail := func(s string) {
		mu.Lock()
		failures = append(failures, s)
		mu.Unlock()
	}
	stop := make(chan struct{})
	for blk := 0; blk < blocks; blk++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := 1; g <= gens; g++ {
				if err := p.Write(gen(g, blk), int64(blk)); err != nil {
					fail(err.Error())
					return
				}
			}
		}()
	}
	var readers sync.WaitGroup
	for r := 0; r < 4; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			rng := rand.New(rand.NewPCG(uint64(r), 1))
			buf := make([]byte, 4096)
			for i := 0; i < 5000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				blk := rng.IntN(blocks)
				if err := p.Read(buf, int64(blk)); err != nil {
					fail(err.Error())
					return
				}
				ok := false
				for g := 0; g <= gens && !ok; g++ {
					ok = bytes.Equal(buf, gen(g, blk))
				}
				if !ok {
					fail("torn read")
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	readers.Wait()
	if len(failures) > 0 {
		t.Fatal(failures[0])
	}

	// Close while reads run: each read either completes or sees ErrClosed.
	var closers sync.WaitGroup
	for r := 0; r < 4; r++ {
		closers.Add(1)
		go func() {
			defer closers.Done()
			buf := make([]byte, 4096)
			deadline := time.Now().Add(5 * time.Second)
			for time.Now().Before(deadline) {
				err := p.Read(buf, int64(r))
				if errors.Is(err, ErrClosed) {
					return
				}
				if err != nil || !bytes.Equal(buf, gen(gens, r)) {
					fail("read during close")
					return
				}
			}
			fail("never saw ErrClosed")
		}()
	}
	time.Sleep(10 * time.Millisecond)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	closers.Wait()
	if len(failures) > 0 {
		t.Fatal(failures[0])
	}
}

// A layout interrupted after any number of writes leaves a pool that
// opens either unlaid (and lays out again) or laid out: never corrupt,
// never with data lost.
func TestInterruptedLayout(t *testing.T) {
	const size = 20 << 20
	want := pattern(make([]byte, 4096), 4, 1)
	sawNone, sawLaid, sawBackupOnly := false, false, false
	geo, _, err := pmdkGeometry(size-BTTOffset, 4096)
	if err != nil {
		t.Fatal(err)
	}
	info := make([]byte, infoSize)
	valid := func(dev interface {
		ReadAt([]byte, int64) (int, error)
	}, off int64) bool {
		_, err := dev.ReadAt(info, BTTOffset+off)
		return err == nil && validInfo(info, nil)
	}
	for budget := int64(0); budget < 2000; budget++ {
		dev := newRAM(t, size)
		if err := Format(dev, 4096); err != nil {
			t.Fatal(err)
		}
		fd := &failDev{Device: dev}
		fd.budget.Store(budget)
		p, err := NewPool(fd, 0, Options{})
		if err != nil {
			t.Fatal(err)
		}
		werr := p.Write(want, 1)
		p.Close()
		if !valid(dev, 0) && valid(dev, geo[0].info2Off) {
			sawBackupOnly = true // crash between info2 and the primary
		}

		p, err = NewPool(dev, 0, Options{})
		if err != nil {
			t.Fatalf("budget %d: reopen after an interrupted layout: %v", budget, err)
		}
		if p.LaidOut() {
			sawLaid = true
		} else {
			sawNone = true
		}
		buf := make([]byte, 4096)
		// A failed write may have committed (its log entry landed, the
		// map update did not: the open rolls it forward): old or new.
		if err := p.Read(buf, 1); err != nil || !(isZero(buf) || bytes.Equal(buf, want)) {
			t.Fatalf("budget %d: block 1 after the interruption: %v", budget, err)
		}
		if werr == nil && !bytes.Equal(buf, want) {
			t.Fatalf("budget %d: an acknowledged write was lost", budget)
		}
		if err := p.Write(want, 1); err != nil {
			t.Fatalf("budget %d: write after the interruption: %v", budget, err)
		}
		if err := p.Read(buf, 1); err != nil || !bytes.Equal(buf, want) {
			t.Fatalf("budget %d: read back: %v", budget, err)
		}
		p.Close()
		if rep, err := CheckDevice(dev, CheckOptions{}); err != nil || !rep.Clean() {
			t.Fatalf("budget %d: check: %+v %v", budget, rep, err)
		}
		dev.Close()
		if werr == nil {
			if !sawNone || !sawLaid || !sawBackupOnly {
				t.Errorf("explored states: unlaid %v, laid out %v, backup only %v", sawNone, sawLaid, sawBackupOnly)
			}
			t.Logf("layout + first write complete after %d device writes", budget)
			return
		}
	}
	t.Fatal("the first write never completed")
}
