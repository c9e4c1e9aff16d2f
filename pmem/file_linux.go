package pmem

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/internal/cacheflush"
)

// Options control how Open maps a path.
type Options struct {
	// ReadOnly maps the device read-only; writes fail with ErrReadOnly.
	ReadOnly bool
	// CreateSize, when > 0 and the path does not exist, creates a sparse
	// regular file of that many bytes.
	CreateSize int64
	// Logger receives warnings (the once-per-device range warning). Nil
	// discards them, as in every nvblk package (btt, pmemblk, nbd): a
	// library is silent unless its caller hands it a logger (the command
	// line passes slog.Default(), which it sets up).
	Logger *slog.Logger
	// NoLock skips the lock Open takes on the whole device (see Lock):
	// for callers that coordinate access themselves, that lock only a
	// part of the device with Lock, or that look at an image in use
	// read-only (the CLI's --force-share).
	NoLock bool
}

// Open maps the file, block device or /dev/dax character device at path.
// Unless opt.NoLock is set it locks the whole device, exclusively when
// it maps it for writing and shared when read-only, and fails with a
// *LockError (wrapping ErrLocked) when another open holds a conflicting
// lock, before anything is read or written; the lock is released by
// Close (or by the kernel when the process dies).
func Open(path string, opt Options) (Device, error) {
	// O_NONBLOCK: a FIFO given as a device must be refused (below), not
	// wait for a writer; it changes nothing for files and devices.
	flags := os.O_RDWR | unix.O_NONBLOCK
	if opt.ReadOnly {
		flags = os.O_RDONLY | unix.O_NONBLOCK
	}
	f, err := os.OpenFile(path, flags, 0)
	if errors.Is(err, os.ErrNotExist) && opt.CreateSize > 0 && !opt.ReadOnly {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
		if err == nil {
			if terr := f.Truncate(opt.CreateSize); terr != nil {
				f.Close()
				os.Remove(path)
				return nil, fmt.Errorf("pmem: create %s: %w", path, terr)
			}
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pmem: open %s: %w", path, err)
	}
	keep := false
	defer func() {
		if !keep {
			f.Close()
		}
	}()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("pmem: stat %s: %w", path, err)
	}
	var size int64
	kind := "file"
	switch m := st.Mode(); {
	case m.IsRegular():
		size = st.Size()
	case m&os.ModeDevice != 0 && m&os.ModeCharDevice != 0:
		kind = "devdax"
		var align int64
		size, align, err = daxGeometry(f)
		if err != nil {
			return nil, fmt.Errorf("pmem: %s: %w", path, err)
		}
		if align > 0 && size%align != 0 {
			return nil, fmt.Errorf("pmem: %s: size %d is not a multiple of the device alignment %d", path, size, align)
		}
	case m&os.ModeDevice != 0:
		kind = "blockdev"
		var s uint64
		s, err = unix.IoctlGetUint64(int(f.Fd()), unix.BLKGETSIZE64)
		if err != nil {
			return nil, fmt.Errorf("pmem: %s: BLKGETSIZE64: %w", path, err)
		}
		size = int64(s)
	default:
		return nil, fmt.Errorf("pmem: %s: not a regular file, block device or /dev/dax device", path)
	}
	if size <= 0 {
		return nil, fmt.Errorf("pmem: %s: empty device (size %d)", path, size)
	}
	if int64(int(size)) != size {
		return nil, fmt.Errorf("pmem: %s: size %d does not fit in the address space", path, size)
	}
	if !opt.NoLock {
		if err := lockFile(f, path, !opt.ReadOnly, 0, size, true); err != nil {
			return nil, err
		}
	}
	prot := unix.PROT_READ
	if !opt.ReadOnly {
		prot |= unix.PROT_WRITE
	}
	fd := int(f.Fd())
	var data []byte
	mode := ModeMsync
	switch {
	case kind == "devdax":
		data, err = unix.Mmap(fd, 0, int(size), prot, unix.MAP_SHARED)
		mode = ModeDAX
	default:
		if !opt.ReadOnly {
			data, err = unix.Mmap(fd, 0, int(size), prot, unix.MAP_SHARED_VALIDATE|unix.MAP_SYNC)
			if err == nil {
				mode = ModeDAX
				break
			}
		}
		data, err = unix.Mmap(fd, 0, int(size), prot, unix.MAP_SHARED)
		if err == nil && cacheflush.PmemForced() {
			mode = ModeDAXForced
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pmem: mmap %s (%d bytes): %w", path, size, err)
	}
	_ = unix.Madvise(data, unix.MADV_RANDOM)
	d := newMapDev(path, data, mode, opt.ReadOnly, opt.Logger, func() error {
		err := unix.Munmap(data)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	})
	if kind == "file" {
		d.file = f
	}
	d.lockFile = f
	keep = true
	return d, nil
}

// NewRAM returns a volatile device of size bytes in anonymous memory.
func NewRAM(size int64) (Device, error) {
	if size <= 0 || int64(int(size)) != size {
		return nil, fmt.Errorf("pmem: invalid RAM device size %d", size)
	}
	data, err := unix.Mmap(-1, 0, int(size), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("pmem: RAM device of %d bytes: %w", size, err)
	}
	return newMapDev(fmt.Sprintf("ram:%d", size), data, ModeNone, false, nil,
		func() error { return unix.Munmap(data) }), nil
}

// msync writes back the pages covering [off, off+n).
func (d *mapDev) msync(off, n int64) error {
	page := int64(os.Getpagesize())
	start := off &^ (page - 1)
	end := min((off+n+page-1)&^(page-1), d.size)
	if err := unix.Msync(d.data[start:end], unix.MS_SYNC); err != nil {
		return &MediaError{Op: "flush", Off: off, Len: n, Why: "msync: " + err.Error()}
	}
	return nil
}

// daxGeometry reads the size and alignment of a /dev/daxX.Y device from
// sysfs: /sys/dev/char/MAJ:MIN/{size,align}.
func daxGeometry(f *os.File) (size, align int64, err error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return 0, 0, err
	}
	return daxGeometryFor("/sys", unix.Major(st.Rdev), unix.Minor(st.Rdev))
}

func daxGeometryFor(sysfsRoot string, major, minor uint32) (size, align int64, err error) {
	if sysfsRoot == "" {
		sysfsRoot = "/sys"
	}
	dir := filepath.Join(sysfsRoot, "dev", "char", fmt.Sprintf("%d:%d", major, minor))
	sub, err := os.Readlink(filepath.Join(dir, "subsystem"))
	if err != nil || filepath.Base(sub) != "dax" {
		return 0, 0, fmt.Errorf("character device %d:%d is not a dax device (sysfs %s)", major, minor, dir)
	}
	size, err = readSysfsInt(filepath.Join(dir, "size"))
	if err != nil {
		return 0, 0, err
	}
	align, err = readSysfsInt(filepath.Join(dir, "align"))
	if errors.Is(err, os.ErrNotExist) {
		align, err = readSysfsInt(filepath.Join(dir, "device", "align"))
	}
	if errors.Is(err, os.ErrNotExist) {
		align, err = 0, nil // older kernels: no align attribute
	}
	return size, align, err
}

func readSysfsInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	s := strings.TrimSpace(string(b))
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("sysfs %s: bad value %q", path, s)
	}
	return v, nil
}

// ZeroRange makes [off, off+n) durable zeros. On a regular file the
// page-aligned middle is a hole punched with fallocate, so zeroing the
// metadata of a large sparse image allocates nothing.
func (d *mapDev) ZeroRange(off, n int64) error {
	if err := d.check("zero", off, n); err != nil {
		return err
	}
	if d.readOnly {
		return ErrReadOnly
	}
	if n == 0 {
		return nil
	}
	page := int64(os.Getpagesize())
	start := (off + page - 1) &^ (page - 1)
	end := (off + n) &^ (page - 1)
	if d.file == nil || end-start < 16*page {
		return d.zeroBytes(off, n)
	}
	if err := d.zeroBytes(off, start-off); err != nil {
		return err
	}
	if err := d.zeroBytes(end, off+n-end); err != nil {
		return err
	}
	err := unix.Fallocate(int(d.file.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, start, end-start)
	if err != nil {
		return d.zeroBytes(start, end-start)
	}
	d.bb.Clear(start, end-start)
	if err := unix.Fdatasync(int(d.file.Fd())); err != nil {
		return &MediaError{Op: "zero", Off: off, Len: n, Why: "fdatasync: " + err.Error()}
	}
	return nil
}

func (d *mapDev) zeroBytes(off, n int64) error {
	const chunk = 1 << 16
	var zeros [chunk]byte
	for done := int64(0); done < n; {
		c := min(n-done, chunk)
		if _, err := d.write(zeros[:c], off+done, 0); err != nil {
			return err
		}
		if err := d.flush(off+done, c); err != nil {
			return err
		}
		done += c
	}
	cacheflush.Fence()
	return nil
}

var _ Sparse = (*mapDev)(nil)

// Release implements Releaser for devices from Open (shared file and
// /dev/dax mappings): MADV_DONTNEED on the whole pages inside the range
// drops them from this process's page tables; the data stays in the file
// (dirty pages keep their dirty state). Anonymous RAM devices keep their
// pages, which hold the only copy.
func (d *mapDev) Release(off, n int64) {
	if d.lockFile == nil || d.closed.Load() || CheckRange("release", off, n, d.size) != nil {
		return
	}
	page := int64(os.Getpagesize())
	start, end := (off+page-1)&^(page-1), (off+n)&^(page-1)
	if end > start {
		_ = unix.Madvise(d.data[start:end], unix.MADV_DONTNEED)
	}
}

// Extent implements Sparse: on a regular file, SEEK_DATA and SEEK_HOLE
// find the extent holding off. Anything else (/dev/dax, RAM, a file
// system without hole information) is all data.
func (d *mapDev) Extent(off, n int64) (hole bool, run int64, err error) {
	if err := d.check("extent", off, n); err != nil {
		return false, 0, err
	}
	if d.file == nil || n == 0 {
		return false, n, nil
	}
	fd := int(d.file.Fd())
	next, err := unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case err == unix.ENXIO: // no data from off to the end of the file
		return true, n, nil
	case err != nil: // EINVAL: no hole information
		return false, n, nil
	case next > off:
		return true, min(next-off, n), nil
	}
	end, err := unix.Seek(fd, off, unix.SEEK_HOLE)
	if err != nil || end <= off {
		return false, n, nil
	}
	return false, min(end-off, n), nil
}
