package pmem

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"sync/atomic"
	"unsafe"

	"github.com/nvblk/nvblk/internal/cacheflush"
)

// mapDev is a Device over a memory mapping: a file, a /dev/dax character
// device or anonymous memory. Every access is bounds-checked against the
// mapping, and a fault during a copy (SIGBUS from a truncated file or
// poisoned memory) is turned into a *MediaError for that call.
type mapDev struct {
	data     []byte
	base     uintptr
	size     int64
	mode     Mode
	readOnly bool
	name     string
	bb       *BadBlocks
	log      *slog.Logger
	closed   atomic.Bool
	warned   atomic.Bool
	unmap    func() error
	file     *os.File // regular files only: for hole punching
	lockFile *os.File // devices from Open: the descriptor that holds the locks
}

var _ Device = (*mapDev)(nil)

func newMapDev(name string, data []byte, mode Mode, readOnly bool, log *slog.Logger, unmap func() error) *mapDev {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &mapDev{
		data:     data,
		base:     uintptr(unsafe.Pointer(unsafe.SliceData(data))),
		size:     int64(len(data)),
		mode:     mode,
		readOnly: readOnly,
		name:     name,
		bb:       NewBadBlocks(int64(len(data))),
		log:      log,
		unmap:    unmap,
	}
}

func (d *mapDev) String() string        { return d.name }
func (d *mapDev) Size() int64           { return d.size }
func (d *mapDev) Mode() Mode            { return d.mode }
func (d *mapDev) BadBlocks() *BadBlocks { return d.bb }

// check validates an access; it warns once per device on a range error,
// like the kernel's dev_WARN_ONCE in nsio_rw_bytes.
func (d *mapDev) check(op string, off, n int64) error {
	if d.closed.Load() {
		return ErrClosed
	}
	if err := CheckRange(op, off, n, d.size); err != nil {
		if d.warned.CompareAndSwap(false, true) {
			d.log.Warn("pmem: access out of range", "device", d.name, "op", op,
				"offset", off, "length", n, "size", d.size)
		}
		return err
	}
	return nil
}

// faultErr converts a recovered runtime fault inside our mapping into a
// media error; anything else is re-raised.
func (d *mapDev) faultErr(r any, op string, off, n int64) error {
	if e, ok := r.(interface{ Addr() uintptr }); ok {
		a := e.Addr()
		if a >= d.base && a < d.base+uintptr(d.size) {
			return &MediaError{Op: op, Off: off, Len: n, Why: fmt.Sprintf("fault at device offset %d", a-d.base)}
		}
	}
	panic(r)
}

// guarded runs fn with faults turned into panics, and converts a fault in
// the mapping into a *MediaError.
func (d *mapDev) readGuarded(p []byte, off int64) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = d.faultErr(r, "read", off, int64(len(p)))
		}
	}()
	copy(p, d.data[off:])
	return nil
}

func (d *mapDev) writeGuarded(p []byte, off int64, persist bool) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = d.faultErr(r, "write", off, int64(len(p)))
		}
	}()
	dst := d.data[off : off+int64(len(p))]
	if persist && d.cpuFlush() {
		cacheflush.CopyNT(dst, p)
	} else {
		copy(dst, p)
	}
	return nil
}

func (d *mapDev) cpuFlush() bool { return d.mode == ModeDAX || d.mode == ModeDAXForced }

func (d *mapDev) ReadAt(p []byte, off int64) (int, error) {
	n := int64(len(p))
	if err := d.check("read", off, n); err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, nil
	}
	if d.bb.Overlaps(off, n) {
		return 0, &MediaError{Op: "read", Off: off, Len: n, Why: "badblock"}
	}
	if err := d.readGuarded(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

// write stores p at off; persist: 0 plain store, 1 store and start the
// write-back (no fence), 2 store and make durable.
func (d *mapDev) write(p []byte, off int64, persist int) (int, error) {
	n := int64(len(p))
	op := "write"
	if err := d.check(op, off, n); err != nil {
		return 0, err
	}
	if d.readOnly {
		return 0, ErrReadOnly
	}
	if n == 0 {
		return 0, nil
	}
	mediaErr := d.bb.checkWrite(off, n)
	if err := d.writeGuarded(p, off, persist > 0); err != nil {
		return 0, err
	}
	// With CPU flushes, CopyNT (writeGuarded) has already started the
	// write-back of everything it stored with ordinary stores (a short
	// copy, an unaligned head and tail); only the fence is left. Flushing
	// those lines again cost a second write-back per small write, which
	// on CPUs whose CLWB evicts the line (AMD) is another trip to memory.
	switch {
	case persist == 2 && d.cpuFlush():
		cacheflush.Fence()
	case persist == 2:
		if err := d.persist(off, n); err != nil {
			return 0, err
		}
	case persist == 1 && !d.cpuFlush():
		if err := d.flush(off, n); err != nil {
			return 0, err
		}
	}
	if mediaErr {
		return len(p), &MediaError{Op: op, Off: off, Len: n, Why: "badblock not cleared by an unaligned write"}
	}
	return len(p), nil
}

func (d *mapDev) WriteAt(p []byte, off int64) (int, error) { return d.write(p, off, 0) }

func (d *mapDev) WriteAtFlush(p []byte, off int64) (int, error) { return d.write(p, off, 1) }

func (d *mapDev) WriteAtPersist(p []byte, off int64) (int, error) { return d.write(p, off, 2) }

func (d *mapDev) Flush(off, n int64) error {
	if err := d.check("flush", off, n); err != nil {
		return err
	}
	if n == 0 || d.readOnly {
		return nil
	}
	return d.flushGuarded(off, n)
}

// flushGuarded is flush for a range this call did not just store to: a
// cache line write-back touches the page, so a page that is gone (a
// truncated file) faults, which becomes a *MediaError.
func (d *mapDev) flushGuarded(off, n int64) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		if r := recover(); r != nil {
			err = d.faultErr(r, "flush", off, n)
		}
	}()
	return d.flush(off, n)
}

func (d *mapDev) flush(off, n int64) error {
	switch d.mode {
	case ModeDAX, ModeDAXForced:
		cacheflush.Flush(unsafe.Pointer(&d.data[off]), uintptr(n))
	case ModeMsync:
		return d.msync(off, n)
	}
	return nil
}

func (d *mapDev) Drain() error {
	if d.closed.Load() {
		return ErrClosed
	}
	cacheflush.Fence()
	return nil
}

func (d *mapDev) persist(off, n int64) error {
	if err := d.flush(off, n); err != nil {
		return err
	}
	cacheflush.Fence()
	return nil
}

func (d *mapDev) Persist(off, n int64) error {
	if err := d.check("persist", off, n); err != nil {
		return err
	}
	if n == 0 || d.readOnly {
		return nil
	}
	if err := d.flushGuarded(off, n); err != nil {
		return err
	}
	cacheflush.Fence()
	return nil
}

// Close unmaps the device. It must not run concurrently with other
// methods; an access racing with it fails with ErrClosed or ErrMedia.
func (d *mapDev) Close() error {
	if !d.closed.CompareAndSwap(false, true) {
		return nil
	}
	if d.unmap != nil {
		return d.unmap()
	}
	return nil
}
