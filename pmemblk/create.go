package pmemblk

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/pmem"
)

// Creating pools: Create, CreateWith, Format and the pool header they write.

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
	perm := opt.Mode.Perm()
	if perm == 0 {
		perm = 0o644
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
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
	p, err := formatOpen(dev, path, bsize, true, crtime, opt)
	ok = err == nil
	return p, err
}

// formatOpen writes the pool header of a new pool on dev (the file at
// path) and opens it; the pool owns dev. On error dev is closed.
func formatOpen(dev pmem.Device, path string, bsize int, fallocated bool, crtime int64, opt Options) (*Pool, error) {
	if err := format(dev, uint32(bsize), fallocated, crtime); err != nil {
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
	return formatOpen(dev, path, bsize, false, time.Now().Unix(), opt)
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
