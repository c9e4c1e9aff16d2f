package pmem

import "io"

// Mode says how a Device makes data durable.
type Mode string

// Persistence modes.
const (
	// ModeDAX: CPU cache flushes (CLWB/CLFLUSHOPT/CLFLUSH + SFENCE) make
	// stores durable (MAP_SYNC file on a DAX filesystem, /dev/dax).
	ModeDAX Mode = "dax"
	// ModeDAXForced: CPU cache flushes are used because PMEM_IS_PMEM_FORCE=1
	// was set, whatever the backing really is (PMDK's semantics).
	ModeDAXForced Mode = "dax-forced"
	// ModeMsync: a page-cache mapping; persistence is msync(MS_SYNC).
	ModeMsync Mode = "msync"
	// ModeNone: volatile memory; Persist only orders stores.
	ModeNone Mode = "none"
)

// Device is byte-addressable, memory-backed storage: the rw_bytes interface.
//
// ReadAt and WriteAt transfer exactly len(p) bytes or return an error; they
// never return a short count with a nil error, and never panic on any
// offset or length. Implementations are safe for concurrent use by several
// goroutines; concurrent writes to overlapping ranges leave an unspecified
// mix of their bytes, with 8-byte aligned stores not torn.
type Device interface {
	io.ReaderAt
	io.WriterAt

	// Size is the device size in bytes. It never changes.
	Size() int64

	// WriteAtPersist writes p at off and returns once it is durable.
	// Large copies use non-temporal stores where the CPU has them.
	WriteAtPersist(p []byte, off int64) (int, error)
	// WriteAtFlush writes p at off and starts its write-back (non-temporal
	// stores or cache-line flushes); it is durable after the next Drain.
	// It lets a caller make several writes durable with one fence when
	// their mutual order does not matter.
	WriteAtFlush(p []byte, off int64) (int, error)

	// Flush starts writing back the range [off, off+n) to the persistence
	// domain. The data is durable only after a later Drain.
	Flush(off, n int64) error
	// Drain waits until every Flush issued before it is complete.
	Drain() error
	// Persist is Flush(off, n) followed by Drain.
	Persist(off, n int64) error

	// Mode reports how durability is achieved.
	Mode() Mode
	// BadBlocks returns the device's badblock list (never nil).
	BadBlocks() *BadBlocks

	// Close releases the device. Every access after Close fails with
	// ErrClosed. Close does not imply Persist.
	Close() error
}

// SectorSize is the granularity of badblock tracking, as in the kernel.
const SectorSize = 512

// Sparse is implemented by devices that know where their backing file
// has holes: ranges that hold no storage and read as zeros (a new image
// created sparse, a punched range). Extent reports whether off lies in a
// hole and how many bytes from off, at most n, are the same (hole or
// data); a device that cannot tell reports data. The answer is a snapshot:
// a store into a hole makes it data.
type Sparse interface {
	Extent(off, n int64) (hole bool, run int64, err error)
}

var _ Sparse = (*Window)(nil)

// Zeroer is implemented by devices that can zero a range faster than by
// writing zeros (a hole punch on a regular file). The range must read as
// zeros, durably, when ZeroRange returns.
type Zeroer interface {
	ZeroRange(off, n int64) error
}

var _ Zeroer = (*Window)(nil)

// zeroChunk is what Zero writes from when d is not a Zeroer: it is only
// ever read, so it is shared by every caller.
var zeroChunk [64 << 10]byte

// Zero makes [off, off+n) of d durable zeros: d's ZeroRange when d is a
// Zeroer (a Window forwards to its parent), else zeros written a chunk at
// a time, then persisted. It allocates nothing.
func Zero(d Device, off, n int64) error {
	if z, ok := d.(Zeroer); ok {
		return z.ZeroRange(off, n)
	}
	if err := CheckRange("zero", off, n, d.Size()); err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	for done := int64(0); done < n; {
		c := min(n-done, int64(len(zeroChunk)))
		if _, err := d.WriteAt(zeroChunk[:c], off+done); err != nil {
			return err
		}
		done += c
	}
	return d.Persist(off, n)
}

// Releaser is implemented by devices whose memory mapping can let go of
// the pages under a range without losing anything (a shared file or
// /dev/dax mapping: the data stays in the file, a later access maps it
// again), so that a scan of a large device does not keep every page it
// read resident. Release is a hint; it never changes what reads return.
type Releaser interface {
	Release(off, n int64)
}

var _ Releaser = (*Window)(nil)

// Release lets go of the pages of [off, off+n) of d when d can (see
// Releaser); otherwise it does nothing.
func Release(d Device, off, n int64) {
	if r, ok := d.(Releaser); ok {
		r.Release(off, n)
	}
}
