package pmem

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Sharing rules. Two openers that both write one image allocate from the
// same free lists in their own memory and hand one free block to two
// sectors, so every writer owns the bytes it uses, as qemu-img, qemu-nbd
// and libpmemblk do. Open takes an open file description lock
// (F_OFD_SETLK) on the whole device: exclusive (F_WRLCK) when it maps
// the device for writing, shared (F_RDLCK) when read-only. A caller that
// uses only part of a device (a partition) opens it with Options.NoLock
// and locks its part with Lock, so that two processes can each own a
// different partition while a whole-device writer still excludes both.
//
// OFD locks belong to the open file description, not to the process: a
// second Open of the same image in one process conflicts with the first
// exactly as another process would, they are never inherited across
// exec (Open's descriptors are close-on-exec), and the kernel drops them
// when the descriptor is closed, including when the process is killed,
// so there is no lock file to go stale. They work on regular files,
// block devices and /dev/dax character devices alike.
//
// A whole-device Open also takes a flock(2) lock of the same kind,
// because PMDK (libpmemblk, pmempool) locks pool files with
// flock(LOCK_EX|LOCK_NB) and never looks at OFD locks: with both, nvblk
// and PMDK's tools refuse to open a pool the other has open.

// ErrLocked is wrapped by *LockError when another open holds a lock that
// conflicts with the one an open needs.
var ErrLocked = errors.New("pmem: device in use")

// ErrNoLock is wrapped by *LockError when a lock cannot be taken at all
// (a file system without lock support): the open is refused, because
// nothing would stop a second writer.
var ErrNoLock = errors.New("pmem: device cannot be locked")

// LockError describes a refused lock on [Off, Off+Len) of the device at
// Path. It wraps ErrLocked or ErrNoLock.
type LockError struct {
	Path      string
	Off, Len  int64
	Exclusive bool   // the lock wanted: exclusive (for writing) or shared
	Holder    string // "pid 1234 (nvblk serve img)" when it could be found
	Errno     error  // ErrNoLock: what fcntl or flock said
}

func (e *LockError) Error() string {
	want := "read-only"
	if e.Exclusive {
		want = "for writing"
	}
	rng := fmt.Sprintf("bytes %d-%d", e.Off, e.Off+e.Len-1)
	if e.Errno != nil {
		return fmt.Sprintf("pmem: %s: cannot lock %s to open it %s: %v (the file system does not support locks, so nothing could keep a second writer out)",
			e.Path, rng, want, e.Errno)
	}
	by := "another open"
	if e.Holder != "" {
		by = e.Holder
	}
	return fmt.Sprintf("pmem: %s is in use: %s are locked by %s; opening it %s was refused and nothing was written",
		e.Path, rng, by, want)
}

// Unwrap returns ErrLocked or ErrNoLock.
func (e *LockError) Unwrap() error {
	if e.Errno != nil {
		return ErrNoLock
	}
	return ErrLocked
}

// Lock takes the lock Open takes, on [off, off+n) of d only: exclusive
// when d is writable, shared when it is read-only. d is a Device returned
// by Open (with Options.NoLock, or the lock Open took would conflict) or
// a Window of one (any device with Window's Parent method); the range is
// in d's own offsets. The lock lasts until
// the device Open returned is closed. Devices that are not backed by a
// file (NewRAM) have nothing to lock: Lock returns nil.
func Lock(d Device, off, n int64) error {
	if err := CheckRange("lock", off, n, d.Size()); err != nil {
		return err
	}
	for {
		w, ok := d.(interface{ Parent() (Device, int64) })
		if !ok {
			break
		}
		var base int64
		d, base = w.Parent()
		off += base
	}
	m, ok := d.(*mapDev)
	if !ok || m.lockFile == nil {
		return nil
	}
	return lockFile(m.lockFile, m.name, !m.readOnly, off, n, false)
}

// setLock is fcntl(F_OFD_SETLK); a variable so that a test can play a
// file system without lock support.
var setLock = func(fd int, lk *unix.Flock_t) error {
	return unix.FcntlFlock(uintptr(fd), unix.F_OFD_SETLK, lk)
}

// lockFile takes the OFD lock on [off, off+n) of f (exclusive or
// shared) and, when whole is set, the flock that keeps PMDK's tools out.
// name is the path in errors.
func lockFile(f *os.File, name string, exclusive bool, off, n int64, whole bool) error {
	fd := int(f.Fd())
	typ := int16(unix.F_RDLCK)
	if exclusive {
		typ = unix.F_WRLCK
	}
	lk := unix.Flock_t{Type: typ, Whence: 0, Start: off, Len: n}
	lerr := &LockError{Path: name, Off: off, Len: n, Exclusive: exclusive}
	if err := setLock(fd, &lk); err != nil {
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EACCES) {
			lerr.Holder = lockHolder(fd, off, n, exclusive)
			return lerr
		}
		lerr.Errno = err
		return lerr
	}
	if !whole {
		return nil
	}
	how := unix.LOCK_SH
	if exclusive {
		how = unix.LOCK_EX
	}
	if err := unix.Flock(fd, how|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			lerr.Holder = lockHolder(fd, off, n, exclusive)
			return lerr
		}
		// flock is only there for PMDK's tools; the OFD lock, which
		// nvblk relies on, is held.
	}
	return nil
}

// lockHolder names the process holding a lock that conflicts with the
// one wanted on [off, off+n) of the file open on fd. F_OFD_GETLK and
// /proc/locks report no pid for OFD locks (-1), so it looks for the
// lock in /proc/PID/fdinfo/FD, whose "lock:" lines list the locks held
// through that descriptor, among the descriptors open on the same inode.
// It returns "" when none can be found (another user's process, whose
// descriptors are not visible).
func lockHolder(fd int, off, n int64, exclusive bool) string {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return ""
	}
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	self := os.Getpid()
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return ""
	}
	found := -1
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid <= 0 || (found >= 0 && pid == self) {
			continue
		}
		if holdsLock(pid, st.Dev, st.Ino, id, off, n, exclusive) {
			if pid != self {
				found = pid
				break
			}
			found = pid // ours only if no other process holds one
		}
	}
	switch {
	case found < 0:
		return ""
	case found == self:
		return fmt.Sprintf("this process (pid %d, another open of the same image)", self)
	}
	cmd, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", found))
	args := strings.Fields(strings.ReplaceAll(string(bytes.TrimRight(cmd, "\x00")), "\x00", " "))
	if err != nil || len(args) == 0 {
		return fmt.Sprintf("pid %d", found)
	}
	s := strings.Join(args, " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return fmt.Sprintf("pid %d (%s)", found, s)
}

// holdsLock reports whether process pid has a descriptor open on the
// inode (dev, ino) through which it holds a lock conflicting with the
// one wanted on [off, off+n).
func holdsLock(pid int, dev, ino uint64, id string, off, n int64, exclusive bool) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, f := range fds {
		var st unix.Stat_t
		if unix.Stat(dir+"/"+f.Name(), &st) != nil || st.Dev != dev || st.Ino != ino {
			continue
		}
		info, err := os.ReadFile(fmt.Sprintf("/proc/%d/fdinfo/%s", pid, f.Name()))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(info))
		for sc.Scan() {
			if l, ok := strings.CutPrefix(sc.Text(), "lock:"); ok && lockConflicts(l, id, off, n, exclusive) {
				return true
			}
		}
	}
	return false
}

// lockConflicts parses one lock line of /proc/locks or fdinfo, such as
// "1: OFDLCK ADVISORY  WRITE -1 00:2a:5678 0 EOF", and reports whether it
// is a lock on inode id that overlaps [off, off+n) and conflicts with the
// wanted kind (a flock covers the whole file).
func lockConflicts(line, id string, off, n int64, exclusive bool) bool {
	f := strings.Fields(line)
	if len(f) < 8 || f[1] == "->" {
		return false // a blocked waiter, or a line we do not understand
	}
	kind, typ, ino, start, end := f[1], f[3], f[5], f[6], f[7]
	if ino != id || (kind != "OFDLCK" && kind != "FLOCK" && kind != "POSIX") {
		return false
	}
	if !exclusive && typ == "READ" {
		return false // shared locks do not conflict with a shared lock
	}
	if kind == "FLOCK" {
		return true
	}
	s, err := strconv.ParseInt(start, 10, 64)
	if err != nil {
		return false
	}
	if end != "EOF" {
		e, err := strconv.ParseInt(end, 10, 64)
		if err != nil || e < off {
			return false
		}
	}
	return s < off+n
}
