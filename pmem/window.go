package pmem

import "sync/atomic"

// Window is the sub-range [off, off+size) of a parent Device, itself a
// Device: offsets are translated (the kernel's
// offset += get_start_sect(bdev) << 9) and anything outside the window is
// refused with a *RangeError naming the window's own size. Closing a
// Window does not close its parent. It is safe for concurrent use.
type Window struct {
	d         Device
	off, size int64
	bb        *BadBlocks
	closed    atomic.Bool
}

var _ Device = (*Window)(nil)

// NewWindow returns the window of size bytes at byte offset off of d.
func NewWindow(d Device, off, size int64) (*Window, error) {
	if err := CheckRange("window", off, size, d.Size()); err != nil {
		return nil, err
	}
	return &Window{d: d, off: off, size: size, bb: d.BadBlocks().View(off, size)}, nil
}

// Parent returns the underlying device and the window's offset in it.
func (w *Window) Parent() (Device, int64) { return w.d, w.off }

func (w *Window) Size() int64           { return w.size }
func (w *Window) Mode() Mode            { return w.d.Mode() }
func (w *Window) BadBlocks() *BadBlocks { return w.bb }

// Drain waits for the parent's flushes.
func (w *Window) Drain() error {
	if w.closed.Load() {
		return ErrClosed
	}
	return w.d.Drain()
}

// Close ends the window (not its parent): every later access fails with
// ErrClosed.
func (w *Window) Close() error {
	w.closed.Store(true)
	return nil
}

func (w *Window) check(op string, off, n int64) error {
	if w.closed.Load() {
		return ErrClosed
	}
	return CheckRange(op, off, n, w.size)
}

func (w *Window) ReadAt(p []byte, off int64) (int, error) {
	if err := w.check("read", off, int64(len(p))); err != nil {
		return 0, err
	}
	return w.d.ReadAt(p, w.off+off)
}

func (w *Window) WriteAt(p []byte, off int64) (int, error) {
	if err := w.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return w.d.WriteAt(p, w.off+off)
}

func (w *Window) WriteAtPersist(p []byte, off int64) (int, error) {
	if err := w.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return w.d.WriteAtPersist(p, w.off+off)
}

func (w *Window) WriteAtFlush(p []byte, off int64) (int, error) {
	if err := w.check("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return w.d.WriteAtFlush(p, w.off+off)
}

func (w *Window) Flush(off, n int64) error {
	if err := w.check("flush", off, n); err != nil {
		return err
	}
	return w.d.Flush(w.off+off, n)
}

func (w *Window) Persist(off, n int64) error {
	if err := w.check("persist", off, n); err != nil {
		return err
	}
	return w.d.Persist(w.off+off, n)
}

// Release implements Releaser through the parent.
func (w *Window) Release(off, n int64) {
	if w.check("release", off, n) == nil {
		Release(w.d, w.off+off, n)
	}
}

// ZeroRange implements Zeroer through the parent: a window of a file
// image punches holes as the file does (Zero falls back to writing zeros
// when the parent cannot).
func (w *Window) ZeroRange(off, n int64) error {
	if err := w.check("zero", off, n); err != nil {
		return err
	}
	return Zero(w.d, w.off+off, n)
}

// Extent implements Sparse through the parent (all data if the parent
// cannot tell).
func (w *Window) Extent(off, n int64) (hole bool, run int64, err error) {
	if err := w.check("extent", off, n); err != nil {
		return false, 0, err
	}
	if s, ok := w.d.(Sparse); ok {
		return s.Extent(w.off+off, n)
	}
	return false, n, nil
}
