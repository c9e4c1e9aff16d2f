package block

import (
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/pmem"
)

// rawDriver exposes a pmem device as sectors with no translation and no
// atomicity: a sector write torn by a crash stays torn.
var rawDriver = Driver{
	Name:     "raw",
	Priority: -1000,
	Probe: func(dev pmem.Device) (bool, string) {
		if RawRefusal(dev) != "" {
			return false, ""
		}
		return true, "raw"
	},
	Open: func(dev pmem.Device, opt OpenOptions) (Device, error) {
		return NewRaw(dev, opt.SectorSize, opt.ReadOnly)
	},
}

func init() { Register(rawDriver) }

// The error vocabulary of block devices. Every driver's errors of these
// kinds wrap them (see Sentinel), so a consumer such as the NBD server
// tests only these, whatever the driver.
var (
	ErrOutOfRange = errors.New("block: sector out of range")
	ErrAlignment  = errors.New("block: buffer is not a whole number of sectors")
	ErrReadOnly   = errors.New("block: device is read-only")
)

// ReadOnlyDevice is implemented by devices that can refuse writes (a
// raw device or a BTT opened read-only, a BTT read from a backup info
// block); such a device is always exported read-only.
type ReadOnlyDevice interface {
	ReadOnly() bool
}

var _ ReadOnlyDevice = (*Raw)(nil)

// Sentinel returns a driver's own sentinel error with message msg that
// is also of kind (ErrOutOfRange, ErrAlignment or ErrReadOnly):
// errors.Is finds both.
func Sentinel(msg string, kind error) error { return &sentinel{msg, kind} }

type sentinel struct {
	msg  string
	kind error
}

func (e *sentinel) Error() string { return e.msg }
func (e *sentinel) Unwrap() error { return e.kind }

// Raw is a sector view of a pmem.Device.
type Raw struct {
	dev      pmem.Device
	ss       int
	n        uint64
	readOnly bool
}

// NewRaw returns a raw sector view with sectorSize-byte sectors (default
// 512); a tail shorter than a sector is not exposed.
func NewRaw(dev pmem.Device, sectorSize int, readOnly bool) (*Raw, error) {
	if sectorSize == 0 {
		sectorSize = 512
	}
	if sectorSize < 512 || sectorSize&(sectorSize-1) != 0 {
		return nil, fmt.Errorf("block: raw sector size %d is not a power of two >= 512", sectorSize)
	}
	return &Raw{dev: dev, ss: sectorSize, n: uint64(dev.Size()) / uint64(sectorSize), readOnly: readOnly}, nil
}

func (r *Raw) SectorSize() int     { return r.ss }
func (r *Raw) Sectors() uint64     { return r.n }
func (r *Raw) AtomicSectors() bool { return false }
func (r *Raw) ReadOnly() bool      { return r.readOnly }
func (r *Raw) Flush() error        { return r.dev.Drain() }
func (r *Raw) Close() error        { return nil }

func (r *Raw) check(n int, lba uint64) (uint64, error) {
	if n%r.ss != 0 {
		return 0, fmt.Errorf("%w: %d bytes with %d-byte sectors", ErrAlignment, n, r.ss)
	}
	c := uint64(n / r.ss)
	if lba > r.n || c > r.n-lba {
		return 0, fmt.Errorf("%w: LBA %d (+%d sectors) past the end (%d sectors)", ErrOutOfRange, lba, c, r.n)
	}
	return c, nil
}

func (r *Raw) ReadSectors(p []byte, lba uint64) error {
	if _, err := r.check(len(p), lba); err != nil {
		return err
	}
	_, err := r.dev.ReadAt(p, int64(lba)*int64(r.ss))
	return err
}

func (r *Raw) WriteSectors(p []byte, lba uint64) error {
	if _, err := r.check(len(p), lba); err != nil {
		return err
	}
	if r.readOnly {
		return ErrReadOnly
	}
	_, err := r.dev.WriteAtPersist(p, int64(lba)*int64(r.ss))
	return err
}

func (r *Raw) ZeroSectors(lba, count uint64) error {
	if lba > r.n || count > r.n-lba {
		return fmt.Errorf("%w: LBA %d (+%d sectors) past the end (%d sectors)", ErrOutOfRange, lba, count, r.n)
	}
	if r.readOnly {
		return ErrReadOnly
	}
	off, n := int64(lba)*int64(r.ss), int64(count)*int64(r.ss)
	return pmem.Zero(r.dev, off, n)
}
