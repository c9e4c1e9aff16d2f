package pmemblk

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/block"
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

// Create creates a pool file at path of poolsize bytes holding bsize-byte
// blocks, like pmemblk_create: the file must not exist (poolsize 0 uses
// an existing file's size instead; its header must be all zeros). The
// file is fully allocated; only the pool header and the block size are
// written, the BTT is laid out by the first Write or SetError.
func Create(path string, bsize int, poolsize int64) (*Pool, error) {
	return CreateWith(path, bsize, poolsize, Options{})
}

// CreateWith is Create with options.
func CreateWith(path string, bsize int, poolsize int64, opt Options) (*Pool, error) {
	if opt.ReadOnly {
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, ErrReadOnly)
	}
	if err := validBSize(bsize); err != nil {
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	if poolsize == 0 {
		return createInExisting(path, bsize, opt)
	}
	if poolsize < MinPoolSize {
		return nil, fmt.Errorf("pmemblk: create %s: %w: %d bytes is below the %d-byte minimum", path, ErrPoolSize, poolsize, MinPoolSize)
	}
	if _, _, err := pmdkGeometry(poolsize&^(PageSize-1)-BTTOffset, uint32(bsize)); err != nil {
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("pmemblk: create: %w", err)
	}
	ok := false
	defer func() {
		if !ok {
			os.Remove(path)
		}
	}()
	// Allocate every block now (pmemblk_create's posix_fallocate): a
	// full file system then fails here, not with SIGBUS mid-write.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, poolsize); err != nil {
		if !errors.Is(err, unix.EOPNOTSUPP) {
			f.Close()
			return nil, fmt.Errorf("pmemblk: create %s: allocate %d bytes: %w", path, poolsize, err)
		}
		if err := f.Truncate(poolsize); err != nil {
			f.Close()
			return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
		}
	}
	crtime := time.Now().Unix()
	var st unix.Stat_t
	if unix.Fstat(int(f.Fd()), &st) == nil {
		crtime = st.Ctim.Sec // what util_header_create records
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	dev, err := pmem.Open(path, pmem.Options{Logger: opt.Logger})
	if err != nil {
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	if err := format(dev, uint32(bsize), true, crtime); err != nil {
		dev.Close()
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	p, err := open(dev, uint32(bsize), opt)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	p.ownDev = true
	ok = true
	return p, nil
}

func createInExisting(path string, bsize int, opt Options) (*Pool, error) {
	dev, err := pmem.Open(path, pmem.Options{Logger: opt.Logger})
	if err != nil {
		return nil, fmt.Errorf("pmemblk: create: %w", err)
	}
	hdr := make([]byte, HeaderSize)
	if _, err := dev.ReadAt(hdr, 0); err != nil || !isZero(hdr) {
		dev.Close()
		if err == nil {
			err = fmt.Errorf("%w: the pool header of an existing file must be all zeros", os.ErrExist)
		}
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	if err := format(dev, uint32(bsize), false, time.Now().Unix()); err != nil {
		dev.Close()
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	p, err := open(dev, uint32(bsize), opt)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("pmemblk: create %s: %w", path, err)
	}
	p.ownDev = true
	return p, nil
}

// Format writes a new, empty pool over whatever dev holds (a file, a
// block device, /dev/dax), as pmemblk_create would on a file: the pool
// header, the block size, and zeros over every place a BTT's metadata
// (info blocks, map, flog) of this geometry lives, so no earlier BTT or
// pool survives. The BTT is laid out lazily, by the first write.
func Format(dev pmem.Device, bsize int) error {
	if err := validBSize(bsize); err != nil {
		return err
	}
	return format(dev, uint32(bsize), false, time.Now().Unix())
}

func validBSize(bsize int) error {
	if bsize <= 0 || bsize > MaxBSize {
		return fmt.Errorf("%w: %d (want 1 to %d)", ErrBadBSize, bsize, MaxBSize)
	}
	return nil
}

// format writes a pool. zeroed says the device is known to read as zeros
// (a new file), which is recorded in is_zeroed and spares the zeroing.
// The pool header is written last: it is the commit point.
func format(dev pmem.Device, bsize uint32, zeroed bool, crtime int64) error {
	size := dev.Size() &^ (PageSize - 1)
	if size < MinPoolSize {
		return fmt.Errorf("%w: %d bytes is below the %d-byte minimum", ErrPoolSize, size, MinPoolSize)
	}
	geo, _, err := pmdkGeometry(size-BTTOffset, bsize)
	if err != nil {
		return err
	}
	h, err := newHeader(crtime)
	if err != nil {
		return err
	}
	if !zeroed {
		// Invalidate the old identity first, then every BTT structure
		// of the geometry a layout will use.
		if err := pmem.Zero(dev, 0, BTTOffset); err != nil {
			return err
		}
		for _, a := range geo {
			if err := pmem.Zero(dev, BTTOffset+a.off, infoSize); err != nil {
				return err
			}
			if err := pmem.Zero(dev, BTTOffset+a.mapOff, a.off+a.size-a.mapOff); err != nil {
				return err
			}
		}
	}
	desc := encodeDesc(bsize, zeroed, size)
	if _, err := dev.WriteAtPersist(desc, DescOffset); err != nil {
		return err
	}
	buf := make([]byte, HeaderSize)
	h.Encode(buf)
	_, err = dev.WriteAtPersist(buf, 0)
	return err
}

// newHeader builds the header of a new single-file pool: random pool set
// and file uuids, the part and replica links pointing at the file itself.
func newHeader(crtime int64) (Header, error) {
	ps, err := uuid.NewRandom()
	if err != nil {
		return Header{}, err
	}
	u, err := uuid.NewRandom()
	if err != nil {
		return Header{}, err
	}
	arch, err := HostArchFlags()
	if err != nil {
		return Header{}, err
	}
	return Header{
		Signature:    Signature,
		Major:        FormatMajor,
		Compat:       DefaultCompat,
		Incompat:     DefaultIncompat,
		ROCompat:     DefaultROCompat,
		PoolsetUUID:  ps,
		UUID:         u,
		PrevPartUUID: u,
		NextPartUUID: u,
		PrevReplUUID: u,
		NextReplUUID: u,
		CrTime:       uint64(crtime),
		Arch:         arch,
	}, nil
}

// Open opens the pool at path, like pmemblk_open: bsize 0 takes the block
// size from the pool, any other value must match it (ErrBadBSize).
func Open(path string, bsize int) (*Pool, error) {
	return OpenWith(path, bsize, Options{})
}

// OpenWith is Open with options.
func OpenWith(path string, bsize int, opt Options) (*Pool, error) {
	if bsize < 0 || bsize > 1<<32-1 {
		return nil, fmt.Errorf("pmemblk: open %s: %w: %d", path, ErrBadBSize, bsize)
	}
	dev, err := pmem.Open(path, pmem.Options{ReadOnly: opt.ReadOnly, Logger: opt.Logger})
	if err != nil {
		return nil, fmt.Errorf("pmemblk: open: %w", err)
	}
	p, err := open(dev, uint32(bsize), opt)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("pmemblk: open %s: %w", path, err)
	}
	p.ownDev = true
	return p, nil
}

// NewPool opens the pool held by dev (the whole pool file, starting with
// its header). Closing the pool does not close dev. bsize is as for Open.
func NewPool(dev pmem.Device, bsize int, opt Options) (*Pool, error) {
	if bsize < 0 || bsize > 1<<32-1 {
		return nil, fmt.Errorf("%w: %d", ErrBadBSize, bsize)
	}
	return open(dev, uint32(bsize), opt)
}

// readHeader reads and validates the pool header and the block size.
func readHeader(dev pmem.Device) (Header, uint32, bool, error) {
	if dev.Size() < BTTOffset {
		return Header{}, 0, false, fmt.Errorf("%w: %d bytes is too small for a pool", ErrFormat, dev.Size())
	}
	buf := make([]byte, HeaderSize)
	if _, err := dev.ReadAt(buf, 0); err != nil {
		return Header{}, 0, false, err
	}
	if f := VerifyHeader(buf); f != HeaderOK {
		return Header{}, 0, false, fmt.Errorf("%w: %s", ErrFormat, f)
	}
	h := DecodeHeader(buf)
	if !btt4KPage(h.Arch.Machine) || h.Arch.MachineClass != MachineClass64 || h.Arch.Data != DataLE {
		return h, 0, false, fmt.Errorf("%w: pool made on %s (class %d, data %d): only 64-bit little-endian pools with 4 KiB pages are supported",
			ErrFormat, Machine(h.Arch.Machine), h.Arch.MachineClass, h.Arch.Data)
	}
	if h.Incompat&FeatSingleHdr != 0 || h.PrevPartUUID != h.UUID || h.NextPartUUID != h.UUID {
		return h, 0, false, fmt.Errorf("%w: the file is one part of a multi-part pool set, which is not supported", ErrFormat)
	}
	if h.PrevReplUUID != h.UUID || h.NextReplUUID != h.UUID {
		return h, 0, false, fmt.Errorf("%w: the pool has replicas, which libpmemblk does not support either", ErrFormat)
	}
	if _, err := dev.ReadAt(buf[:8], DescOffset); err != nil {
		return h, 0, false, err
	}
	bsize := le.Uint32(buf[0:])
	if bsize == 0 || bsize > MaxBSize {
		return h, 0, false, fmt.Errorf("%w: the pool's block size is %d (nvblk supports 1 to %d)", ErrBadBSize, bsize, MaxBSize)
	}
	return h, bsize, le.Uint32(buf[4:]) != 0, nil
}

func open(dev pmem.Device, bsize uint32, opt Options) (*Pool, error) {
	h, hb, zeroed, err := readHeader(dev)
	if err != nil {
		return nil, err
	}
	if bsize != 0 && bsize != hb {
		return nil, fmt.Errorf("%w: %d, the pool was created with %d", ErrBadBSize, bsize, hb)
	}
	size := dev.Size() &^ (PageSize - 1)
	if size < MinPoolSize {
		return nil, fmt.Errorf("%w: %d bytes is below the %d-byte minimum", ErrPoolSize, size, MinPoolSize)
	}
	geo, total, err := pmdkGeometry(size-BTTOffset, hb)
	if err != nil {
		return nil, err
	}
	win, err := pmem.NewWindow(dev, BTTOffset, size-BTTOffset)
	if err != nil {
		return nil, err
	}
	p := &Pool{dev: dev, win: win, hdr: h, bsize: hb, zeroed: zeroed, size: size, nblock: total, opt: opt,
		readOnly: opt.ReadOnly || h.ROCompat != 0}
	laidOut, err := detectLayout(win, geo, &p.hdr.PoolsetUUID)
	if err != nil {
		return nil, err
	}
	if laidOut {
		b, err := btt.Open(p.win, p.bttOptions())
		if err != nil {
			return nil, fmt.Errorf("%w: BTT: %w", ErrCorrupt, err)
		}
		if b.LBASize() != hb {
			b.Close()
			return nil, fmt.Errorf("%w: the BTT holds %d-byte blocks, the pool header says %d", ErrCorrupt, b.LBASize(), hb)
		}
		p.nblock = b.Sectors()
		p.b.Store(b)
	}
	return p, nil
}

func (p *Pool) bttOptions() btt.Options {
	zero := int64(0)
	return btt.Options{At: &zero, PMDK: true, ParentUUID: &p.hdr.PoolsetUUID, ReadOnly: p.readOnly,
		Lanes: p.opt.Lanes, Logger: p.opt.Logger}
}

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

func (p *Pool) checkBlock(op string, blockno int64, count int64) error {
	if blockno < 0 || uint64(blockno) >= p.nblock || count > int64(p.nblock)-blockno {
		return &BlockError{Op: op, Block: blockno, Kind: ErrOutOfRange,
			Err: fmt.Errorf("the pool has %d blocks", p.nblock)}
	}
	return nil
}

func (p *Pool) checkBuf(op string, buf []byte, blockno int64) error {
	if len(buf) != int(p.bsize) {
		return &BlockError{Op: op, Block: blockno, Kind: ErrBadBSize,
			Err: fmt.Errorf("buffer of %d bytes for %d-byte blocks", len(buf), p.bsize)}
	}
	return p.checkBlock(op, blockno, 1)
}

// wrap maps an error of the btt or pmem layer to this package's kinds.
func (p *Pool) wrap(op string, blockno int64, b *btt.BTT, err error) error {
	kind := ErrIO
	switch {
	case errors.Is(err, btt.ErrReadOnly) && (b == nil || b.ReadOnly()), errors.Is(err, pmem.ErrReadOnly):
		kind = ErrReadOnly
	case errors.Is(err, btt.ErrOutOfRange):
		kind = ErrOutOfRange
	case errors.Is(err, btt.ErrClosed):
		kind = ErrClosed
	}
	return &BlockError{Op: op, Block: blockno, Kind: kind, Err: err}
}

// Read reads block blockno into buf, which must be BSize bytes long
// (pmemblk_read). Blocks never written, or zeroed, read as zeros; a
// block in the error state fails with ErrIO.
func (p *Pool) Read(buf []byte, blockno int64) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	if err := p.checkBuf("read", buf, blockno); err != nil {
		return err
	}
	return p.read(buf, blockno)
}

func (p *Pool) read(buf []byte, blockno int64) error {
	b := p.b.Load()
	if b == nil {
		clear(buf)
		return nil
	}
	if err := b.ReadSectors(buf, uint64(blockno)); err != nil {
		return p.wrap("read", blockno, b, err)
	}
	return nil
}

// Write writes buf, BSize bytes, to block blockno atomically
// (pmemblk_write): after a crash the block reads entirely old or
// entirely new. When Write returns nil the block is durable. The first
// write to a new pool lays out the BTT.
func (p *Pool) Write(buf []byte, blockno int64) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	if err := p.checkBuf("write", buf, blockno); err != nil {
		return err
	}
	return p.write(buf, blockno)
}

func (p *Pool) write(buf []byte, blockno int64) error {
	b, err := p.writable("write", blockno)
	if err != nil {
		return err
	}
	if err := b.WriteSectors(buf, uint64(blockno)); err != nil {
		return p.wrap("write", blockno, b, err)
	}
	return nil
}

// SetZero makes block blockno read as zeros without writing its data
// (pmemblk_set_zero). On a pool whose BTT is not laid out it does
// nothing: every block already reads as zeros.
func (p *Pool) SetZero(blockno int64) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	if err := p.checkBlock("set-zero", blockno, 1); err != nil {
		return err
	}
	if p.readOnly {
		return &BlockError{Op: "set-zero", Block: blockno, Kind: ErrReadOnly}
	}
	b := p.b.Load()
	if b == nil {
		return nil
	}
	if err := b.ZeroSectors(uint64(blockno), 1); err != nil {
		return p.wrap("set-zero", blockno, b, err)
	}
	return nil
}

// SetError puts block blockno in the error state: reads fail with ErrIO
// until it is written (pmemblk_set_error). It lays out the BTT of a new
// pool.
func (p *Pool) SetError(blockno int64) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	if err := p.checkBlock("set-error", blockno, 1); err != nil {
		return err
	}
	b, err := p.writable("set-error", blockno)
	if err != nil {
		return err
	}
	if err := b.SetError(uint64(blockno), 1); err != nil {
		return p.wrap("set-error", blockno, b, err)
	}
	return nil
}

// writable returns the BTT for a write, laying it out first if needed.
// Concurrent first writers wait for one layout.
func (p *Pool) writable(op string, blockno int64) (*btt.BTT, error) {
	if p.readOnly {
		return nil, &BlockError{Op: op, Block: blockno, Kind: ErrReadOnly}
	}
	if b := p.b.Load(); b != nil {
		return b, nil
	}
	p.layoutMu.Lock()
	defer p.layoutMu.Unlock()
	if b := p.b.Load(); b != nil {
		return b, nil
	}
	b, err := btt.Create(p.win, btt.CreateOptions{LBASize: p.bsize, ParentUUID: p.hdr.PoolsetUUID,
		NFree: DefaultNFree, Options: p.bttOptions()})
	if err != nil {
		return nil, &BlockError{Op: "layout", Block: blockno, Kind: ErrIO, Err: err}
	}
	if b.Sectors() != p.nblock || b.LBASize() != p.bsize {
		b.Close()
		return nil, &BlockError{Op: "layout", Block: blockno, Kind: ErrIO,
			Err: fmt.Errorf("assertion failed: pmemblk: laid out %d blocks of %d bytes, expected %d of %d", b.Sectors(), b.LBASize(), p.nblock, p.bsize)}
	}
	p.b.Store(b)
	return b, nil
}

// ReadAt reads whole blocks: off and len(buf) must be multiples of
// BSize (ErrAlignment). Past the last block it returns io.EOF with the
// number of bytes of the whole blocks read before it. It is block.IO's
// ReadAt over the pool, with the pool's own errors.
func (p *Pool) ReadAt(buf []byte, off int64) (int, error) {
	if _, _, err := p.span("read", buf, off); err != nil {
		return 0, err
	}
	return block.NewIO(p).ReadAt(buf, off)
}

// WriteAt writes whole blocks: off and len(buf) must be multiples of
// BSize. Each block is written atomically; a write past the last block
// writes the blocks before it and fails with ErrOutOfRange. It is
// block.IO's WriteAt over the pool, with the pool's own errors.
func (p *Pool) WriteAt(buf []byte, off int64) (int, error) {
	if _, _, err := p.span("write", buf, off); err != nil {
		return 0, err
	}
	return block.NewIO(p).WriteAt(buf, off)
}

// span validates a ReadAt/WriteAt request: first block and block count.
func (p *Pool) span(op string, buf []byte, off int64) (int64, int64, error) {
	bs := int64(p.bsize)
	if off < 0 {
		return 0, 0, &BlockError{Op: op, Block: off / bs, Kind: ErrOutOfRange, Err: fmt.Errorf("negative offset %d", off)}
	}
	if off%bs != 0 || int64(len(buf))%bs != 0 {
		return 0, 0, &BlockError{Op: op, Block: off / bs, Kind: ErrAlignment,
			Err: fmt.Errorf("%d bytes at offset %d with %d-byte blocks", len(buf), off, bs)}
	}
	first := off / bs
	if op == "read" && first >= int64(p.nblock) && len(buf) > 0 {
		return 0, 0, io.EOF
	}
	return first, int64(len(buf)) / bs, nil
}

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
