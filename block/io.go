package block

import (
	"fmt"
	"io"
)

// IO is an io.ReaderAt and io.WriterAt over a Device, in bytes, for code
// that speaks the io interfaces (io.NewSectionReader, io.Copy through an
// io.OffsetWriter, ...). Like the sectors under it, a request must be
// whole sectors: off and len(p) multiples of SectorSize (else an error
// wrapping ErrAlignment). Past the last sector ReadAt returns io.EOF with
// the bytes of the sectors before it, as io.SectionReader does; WriteAt
// writes the sectors before the end, then returns the device's own error
// for the rest (wrapping ErrOutOfRange). Each call is one ReadSectors or
// WriteSectors of the device (two for a write past the end), so the
// sector-atomicity of the device holds per sector; after a failed call
// the count is 0 (or that of the part before the end). It is safe for
// concurrent use when the device is.
type IO struct {
	dev Device
	ss  int64
}

var (
	_ io.ReaderAt = (*IO)(nil)
	_ io.WriterAt = (*IO)(nil)
)

// NewIO returns the byte view of dev.
func NewIO(dev Device) *IO { return &IO{dev: dev, ss: int64(dev.SectorSize())} }

// Size is the device size in bytes.
func (o *IO) Size() int64 { return int64(o.dev.Sectors()) * o.ss }

// span checks a request and splits it at the end of the device: the
// first sector and the bytes of p that lie before the end.
func (o *IO) span(op string, p []byte, off int64) (lba uint64, in int64, err error) {
	if off < 0 {
		return 0, 0, fmt.Errorf("block: %s at negative offset %d: %w", op, off, ErrOutOfRange)
	}
	if off%o.ss != 0 || int64(len(p))%o.ss != 0 {
		return 0, 0, fmt.Errorf("block: %s of %d bytes at offset %d with %d-byte sectors: %w", op, len(p), off, o.ss, ErrAlignment)
	}
	return uint64(off / o.ss), max(0, min(int64(len(p)), o.Size()-off)), nil
}

// ReadAt reads len(p) bytes at off.
func (o *IO) ReadAt(p []byte, off int64) (int, error) {
	lba, in, err := o.span("read", p, off)
	if err != nil {
		return 0, err
	}
	if in > 0 {
		if err := o.dev.ReadSectors(p[:in], lba); err != nil {
			return 0, err
		}
	}
	if in < int64(len(p)) {
		return int(in), io.EOF
	}
	return len(p), nil
}

// WriteAt writes len(p) bytes at off; when it returns nil they are
// durable.
func (o *IO) WriteAt(p []byte, off int64) (int, error) {
	lba, in, err := o.span("write", p, off)
	if err != nil {
		return 0, err
	}
	if in > 0 {
		if err := o.dev.WriteSectors(p[:in], lba); err != nil {
			return 0, err
		}
	}
	if in < int64(len(p)) {
		// The device names the error of the part past its end.
		err := o.dev.WriteSectors(p[in:], lba+uint64(in/o.ss))
		if err == nil {
			err = fmt.Errorf("block: write of %d bytes at offset %d past the end (%d bytes): %w", len(p), off, o.Size(), ErrOutOfRange)
		}
		return int(in), err
	}
	return len(p), nil
}
