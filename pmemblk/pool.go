package pmemblk

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// Options control how a pool is opened or created.
type Options struct {
	// ReadOnly maps the pool read-only: writes, SetZero and SetError
	// fail with ErrReadOnly and nothing is written, not even the
	// completion of an interrupted write (applied in memory instead).
	ReadOnly bool
	// Lanes bounds the number of concurrent BTT operations (0: the btt
	// package's default, 2*GOMAXPROCS, at least 8, at most nfree).
	Lanes int
	// Logger receives notices (a damaged primary info block, an arena in
	// the error state) and the pool file's device warnings (pmem). Nil
	// discards them, as in every nvblk package (pmem, btt, nbd).
	Logger *slog.Logger
	// Mode holds the permission bits of the file Create makes, before
	// the umask (pmemblk_create's mode); 0 means 0644.
	Mode os.FileMode
}

// Pool is an open pmemblk pool: an array of NBlock blocks of BSize bytes,
// each read and written atomically. It is safe for concurrent use;
// Close waits for operations in progress.
type Pool struct {
	dev      pmem.Device  // the whole pool file
	ownDev   bool         // Close closes dev
	win      *pmem.Window // the BTT area: [BTTOffset, size)
	hdr      Header
	bsize    uint32
	zeroed   bool
	size     int64 // pool size: the device size rounded down to PageSize
	nblock   uint64
	readOnly bool
	opt      Options

	mu       sync.RWMutex // read-held by every operation, write-held by Close
	closed   bool
	layoutMu sync.Mutex // serialises laying out the BTT
	b        atomic.Pointer[btt.BTT]
}

var (
	_ io.ReaderAt = (*Pool)(nil)
	_ io.WriterAt = (*Pool)(nil)
)

// BSize is the block size the pool was created with (pmemblk_bsize).
func (p *Pool) BSize() int { return int(p.bsize) }

// NBlock is the number of usable blocks (pmemblk_nblock).
func (p *Pool) NBlock() int64 { return int64(p.nblock) }

// Header returns the pool header.
func (p *Pool) Header() Header { return p.hdr }

// Size is the pool size in bytes: the file size rounded down to 4 KiB.
func (p *Pool) Size() int64 { return p.size }

// IsZeroed reports the pool header's is_zeroed flag: the file read as
// zeros when the pool was created.
func (p *Pool) IsZeroed() bool { return p.zeroed }

// LaidOut reports whether the BTT has been laid out (by a first write or
// SetError). Until then every block reads as zeros.
func (p *Pool) LaidOut() bool { return p.b.Load() != nil }

// BTT returns the BTT inside the pool (its offsets are relative to file
// offset BTTOffset), or nil before the layout is written.
func (p *Pool) BTT() *btt.BTT { return p.b.Load() }

// ReadOnly reports whether writes are refused: the pool was opened
// read-only, or the BTT was opened from a backup info block.
func (p *Pool) ReadOnly() bool {
	if b := p.b.Load(); b != nil && b.ReadOnly() {
		return true
	}
	return p.readOnly
}

// FromBackup reports whether a damaged primary BTT info block was
// bypassed with its backup (the pool is then read-only until `nvblk
// check --repair` restores the primary).
func (p *Pool) FromBackup() bool {
	b := p.b.Load()
	return b != nil && b.FromBackup()
}

// Device returns the device holding the whole pool file.
func (p *Pool) Device() pmem.Device { return p.dev }

// enter read-locks the pool for one operation.
func (p *Pool) enter() error {
	p.mu.RLock()
	if p.closed {
		p.mu.RUnlock()
		return ErrClosed
	}
	return nil
}

func (p *Pool) exit() { p.mu.RUnlock() }

// Close releases the pool, after waiting for operations in progress.
// Every write already returned is durable; Close writes nothing. Later
// calls fail with ErrClosed.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	p.closed = true
	var errs []error
	if b := p.b.Load(); b != nil {
		errs = append(errs, b.Close())
	}
	errs = append(errs, p.win.Close())
	if p.ownDev {
		errs = append(errs, p.dev.Close())
	}
	return errors.Join(errs...)
}
