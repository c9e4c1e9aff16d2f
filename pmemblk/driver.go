package pmemblk

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/pmem"
)

// DriverPriority puts pools before the BTT driver (100), so the BTT
// inside a pool is never mistaken for a bare one.
const DriverPriority = 200

func init() {
	block.Register(block.Driver{
		Name:     "pmemblk",
		Priority: DriverPriority,
		Probe:    Probe,
		Open: func(dev pmem.Device, opt block.OpenOptions) (block.Device, error) {
			return NewPool(dev, 0, Options{ReadOnly: opt.ReadOnly, Logger: opt.Logger})
		},
	})
}

var (
	_ block.Device     = (*Pool)(nil)
	_ block.Atomic     = (*Pool)(nil)
	_ block.ZeroMapper = (*Pool)(nil)
	_ block.FastZeroer = (*Pool)(nil)
)

// ZeroIsFast reports true: SetZero is a map update per block.
func (p *Pool) ZeroIsFast() bool { return true }

// HasSignature reports whether dev starts with the pmemblk signature,
// valid header or not (a checker wants to look at a damaged one).
func HasSignature(dev pmem.Device) bool {
	var sig [8]byte
	if dev.Size() < HeaderSize {
		return false
	}
	if _, err := dev.ReadAt(sig[:], 0); err != nil {
		return false
	}
	return bytes.Equal(sig[:], Signature[:])
}

// Probe reports whether dev holds a pmemblk pool: a pool header with
// the PMEMBLK signature, format major 1, known incompatible features and
// a correct checksum. It reads the first 8 KiB and never writes.
func Probe(dev pmem.Device) (bool, string) {
	_, bsize, _, err := readHeader(dev)
	if err != nil {
		return false, ""
	}
	return true, fmt.Sprintf("pmemblk pool, %d-byte blocks, BTT area at %#x", bsize, BTTOffset)
}

// SectorSize is BSize: a block device view of the pool.
func (p *Pool) SectorSize() int { return int(p.bsize) }

// Sectors is NBlock.
func (p *Pool) Sectors() uint64 { return p.nblock }

// AtomicSectors reports true: every block write is atomic.
func (p *Pool) AtomicSectors() bool { return true }

// ReadSectors reads len(buf)/BSize() whole blocks from lba.
func (p *Pool) ReadSectors(buf []byte, lba uint64) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	n, err := p.sectors("read", buf, lba)
	if err != nil || n == 0 {
		return err
	}
	b := p.b.Load()
	if b == nil {
		clear(buf)
		return nil
	}
	if err := b.ReadSectors(buf, lba); err != nil {
		return p.wrap("read", int64(lba), b, err)
	}
	return nil
}

// WriteSectors writes len(buf)/BSize() whole blocks at lba, each
// atomically; durable when it returns nil.
func (p *Pool) WriteSectors(buf []byte, lba uint64) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	n, err := p.sectors("write", buf, lba)
	if err != nil || n == 0 {
		return err
	}
	b, err := p.writable("write", int64(lba))
	if err != nil {
		return err
	}
	if err := b.WriteSectors(buf, lba); err != nil {
		return p.wrap("write", int64(lba), b, err)
	}
	return nil
}

// ZeroSectors puts count blocks from lba in the zero state (SetZero).
func (p *Pool) ZeroSectors(lba, count uint64) error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	if count == 0 {
		return nil
	}
	if lba > p.nblock || count > p.nblock-lba {
		return p.checkBlock("set-zero", int64(min(lba, 1<<62)), int64(min(count, 1<<62)))
	}
	if p.readOnly {
		return &BlockError{Op: "set-zero", Block: int64(lba), Kind: ErrReadOnly}
	}
	b := p.b.Load()
	if b == nil {
		return nil
	}
	if err := b.ZeroSectors(lba, count); err != nil {
		return p.wrap("set-zero", int64(lba), b, err)
	}
	return nil
}

// Flush waits for the device; every write is already durable.
func (p *Pool) Flush() error {
	if err := p.enter(); err != nil {
		return err
	}
	defer p.exit()
	return p.dev.Drain()
}

func (p *Pool) sectors(op string, buf []byte, lba uint64) (uint64, error) {
	bs := uint64(p.bsize)
	if uint64(len(buf))%bs != 0 {
		return 0, &BlockError{Op: op, Block: int64(min(lba, 1<<62)), Kind: ErrAlignment,
			Err: fmt.Errorf("%d bytes with %d-byte blocks", len(buf), bs)}
	}
	n := uint64(len(buf)) / bs
	if lba > p.nblock || n > p.nblock-lba {
		return 0, &BlockError{Op: op, Block: int64(min(lba, 1<<62)), Kind: ErrOutOfRange,
			Err: fmt.Errorf("%d blocks at %d: the pool has %d blocks", n, lba, p.nblock)}
	}
	return n, nil
}

// ZeroRun reports runs of blocks that read as zeros without reading
// them (block.ZeroMapper): blocks never written or set to zero. Before
// the first write (no BTT laid out yet) every block does.
func (p *Pool) ZeroRun(lba, count uint64) (n uint64, zero bool, err error) {
	if err := p.enter(); err != nil {
		return 0, false, err
	}
	defer p.exit()
	if count == 0 {
		return 0, false, &BlockError{Op: "zero-map", Block: int64(min(lba, 1<<62)), Kind: ErrOutOfRange, Err: errors.New("no blocks asked for")}
	}
	if err := p.checkBlock("zero-map", int64(min(lba, 1<<62)), int64(min(count, 1<<62))); err != nil {
		return 0, false, err
	}
	b := p.b.Load()
	if b == nil {
		return count, true, nil
	}
	n, zero, err = b.ZeroRun(lba, count)
	if err != nil {
		return 0, false, p.wrap("zero-map", int64(lba), b, err)
	}
	return n, zero, nil
}
