package pmemblk

import (
	"errors"
	"fmt"
	"io"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// Block I/O: Read, Write, SetZero, SetError, ReadAt, WriteAt, and the
// first write that lays out the BTT.

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
