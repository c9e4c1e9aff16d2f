package pmem

// Window is the sub-range [off, off+size) of a parent Device, itself a
// Device: offsets are translated (the kernel's
// offset += get_start_sect(bdev) << 9) and anything outside the window is
// refused with a *RangeError naming the window's own size. Closing a
// Window does not close its parent. It is safe for concurrent use.
type Window struct {
	d         Device
	off, size int64
	bb        *BadBlocks
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
func (w *Window) Drain() error          { return w.d.Drain() }
func (w *Window) Close() error          { return nil }

func (w *Window) ReadAt(p []byte, off int64) (int, error) {
	if err := CheckRange("read", off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	return w.d.ReadAt(p, w.off+off)
}

func (w *Window) WriteAt(p []byte, off int64) (int, error) {
	if err := CheckRange("write", off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	return w.d.WriteAt(p, w.off+off)
}

func (w *Window) WriteAtPersist(p []byte, off int64) (int, error) {
	if err := CheckRange("write", off, int64(len(p)), w.size); err != nil {
		return 0, err
	}
	return w.d.WriteAtPersist(p, w.off+off)
}

func (w *Window) Flush(off, n int64) error {
	if err := CheckRange("flush", off, n, w.size); err != nil {
		return err
	}
	return w.d.Flush(w.off+off, n)
}

func (w *Window) Persist(off, n int64) error {
	if err := CheckRange("persist", off, n, w.size); err != nil {
		return err
	}
	return w.d.Persist(w.off+off, n)
}
