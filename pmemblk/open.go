package pmemblk

import (
	"fmt"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// Opening pools: Open, OpenWith, NewPool, and reading the pool header.

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
