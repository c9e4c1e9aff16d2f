// Command libpmemblk is nvblk's libpmemblk.so.1: the C API of PMDK's
// libpmemblk 1.12 (pmemblk_create, _open, _read, _write, ...) over the
// pmemblk package, built with `go build -buildmode=c-shared` by
// scripts/build-capi.sh. Programs built against PMDK's library load it
// through LD_LIBRARY_PATH without being rebuilt: the soname
// (libpmemblk.so.1) and the symbol version (LIBPMEMBLK_1.0) are PMDK's.
//
// # Structure
//
// abi.c holds the exported C functions. They keep the per-thread error
// message, set errno, answer pmemblk_bsize, pmemblk_nblock,
// pmemblk_check_version and pmemblk_ctl_* without entering Go, refuse
// every call in a child process after fork(), and call the Go functions
// of this file (nvblk_go_*) for the rest. A Go function returns 0 or a
// positive errno, and writes its message into the caller's per-thread
// buffer. An open pool is a small C struct (PMEMblkpool) holding a handle
// into the pools table here, plus the block size and count.
//
// # The Go runtime inside a C process
//
// The runtime starts when the library is loaded (a constructor), with a
// few threads of its own. Calls from C threads run Go on those threads
// (the runtime binds an M to each calling thread on its first call), so
// any number of C threads may use one pool at once, as with libpmemblk.
//
// fork: a child gets only the forking thread; the runtime's threads are
// gone. A call into Go there may seem to work (a short call on a thread
// the runtime already knows does), but it hangs as soon as it needs
// another thread (a garbage collection, a lock held at fork time by a
// thread the child does not have), and the child's pools are copies of
// the parent's in-memory BTT state (free blocks, lanes): a child writing
// while the parent does would hand out the parent's free blocks a second
// time. So abi.c records the pid when the library is loaded and registers
// a pthread_atfork child handler; in a child every function fails at once
// with ENOTSUP and a message (printed once to stderr too) without
// entering Go. exec in the child is fine.
//
// Signals: when the library is loaded the runtime installs handlers for
// the synchronous signals (SIGSEGV, SIGBUS, SIGFPE) and SIGPIPE, keeping
// the host's earlier handlers, which it calls for faults outside Go code.
// A SIGBUS in Go code (a media error, or a file truncated under the
// mapping) is turned by the pmem package into a media error, and the call
// fails with EIO, as in a Go program. A host that installs its own SIGBUS
// or SIGSEGV handler after loading the library replaces the runtime's,
// and such a fault then reaches the host's handler instead (its process
// most likely dies, as it would with PMDK's libpmemblk), unless that
// handler runs on the alternate stack (SA_ONSTACK) and calls the previous
// one for faults it does not own: then the runtime's handler still turns
// the fault into EIO (interop/pmdk, capitest sigbus-chain). See the
// README, "Migrating from libpmemblk".
package main

/*
#include "nvblk_capi.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmemblk"
)

func main() {}

// pools maps handles (indexes; 0 is never used) to open pools. Lookups
// are one atomic load; open and close copy the table under mu.
var pools struct {
	mu  sync.Mutex
	tab atomic.Pointer[[]*pmemblk.Pool]
}

func lookup(h C.uintptr_t) *pmemblk.Pool {
	t := pools.tab.Load()
	if t == nil || uintptr(h) >= uintptr(len(*t)) {
		return nil
	}
	return (*t)[h]
}

func register(p *pmemblk.Pool) uintptr {
	pools.mu.Lock()
	defer pools.mu.Unlock()
	var old []*pmemblk.Pool
	if t := pools.tab.Load(); t != nil {
		old = *t
	}
	h := 0
	for i := 1; i < len(old); i++ {
		if old[i] == nil {
			h = i
			break
		}
	}
	n := append([]*pmemblk.Pool(nil), old...)
	if len(n) == 0 {
		n = append(n, nil)
	}
	if h == 0 {
		h = len(n)
		n = append(n, p)
	} else {
		n[h] = p
	}
	pools.tab.Store(&n)
	return uintptr(h)
}

func unregister(h C.uintptr_t) *pmemblk.Pool {
	pools.mu.Lock()
	defer pools.mu.Unlock()
	t := pools.tab.Load()
	if t == nil || uintptr(h) >= uintptr(len(*t)) || (*t)[h] == nil {
		return nil
	}
	n := append([]*pmemblk.Pool(nil), (*t)...)
	p := n[h]
	n[h] = nil
	pools.tab.Store(&n)
	return p
}

// umask returns the process's file mode creation mask (from
// /proc/self/status: reading it with umask(2) would change it for a
// moment under other threads), or 022 if it cannot be read.
func umask() os.FileMode {
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return os.FileMode(m).Perm()
				}
			}
		}
	}
	return 0o022
}

// errnoOf maps an error of the pmemblk or pmem package, or of the system,
// to the errno libpmemblk 1.12 sets for the same failure.
func errnoOf(err error) syscall.Errno {
	var en syscall.Errno
	switch {
	case errors.Is(err, pmemblk.ErrIO), errors.Is(err, pmem.ErrMedia):
		return syscall.EIO
	case errors.Is(err, pmem.ErrLocked):
		// In use: libpmemblk's flock(LOCK_EX|LOCK_NB) fails with EAGAIN.
		// pmem.Open's locks (an OFD lock, and the flock PMDK takes)
		// exclude PMDK's library and this one, in any processes, and
		// two opens in one process.
		return syscall.EAGAIN
	case errors.Is(err, pmem.ErrNoLock):
		return syscall.ENOLCK
	case errors.Is(err, pmemblk.ErrReadOnly):
		return syscall.EROFS
	case errors.Is(err, pmemblk.ErrOutOfRange), errors.Is(err, pmemblk.ErrBadBSize),
		errors.Is(err, pmemblk.ErrPoolSize), errors.Is(err, pmemblk.ErrFormat),
		errors.Is(err, pmemblk.ErrCorrupt), errors.Is(err, pmemblk.ErrClosed):
		return syscall.EINVAL
	case errors.As(err, &en) && en != 0:
		return en
	case errors.Is(err, fs.ErrExist):
		return syscall.EEXIST
	case errors.Is(err, fs.ErrNotExist):
		return syscall.ENOENT
	case errors.Is(err, fs.ErrPermission):
		return syscall.EACCES
	}
	return syscall.EINVAL
}

// setMsg writes "fn: text" (or text when fn is empty) into the caller's
// NVBLK_MSG_MAX-byte buffer.
func setMsg(msg *C.char, fn, text string) {
	if msg == nil {
		return
	}
	buf := unsafe.Slice((*byte)(unsafe.Pointer(msg)), C.NVBLK_MSG_MAX)
	n := 0
	if fn != "" {
		n += copy(buf[:len(buf)-1], fn)
		n += copy(buf[n:len(buf)-1], ": ")
	}
	n += copy(buf[n:len(buf)-1], text)
	buf[n] = 0
}

// fail records err for pmemblk_errormsg and returns its errno. The
// pmemblk package's errors name the operation and the file already.
func fail(msg *C.char, err error) C.int {
	setMsg(msg, "", err.Error())
	return C.int(errnoOf(err))
}

// poolSetSignature starts a PMDK pool set file (a text file naming the
// parts and replicas of a pool).
const poolSetSignature = "PMEMPOOLSET"

// refusePoolSet fails for a pool set file: nvblk opens single-file pools
// only.
func refusePoolSet(path string) error {
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		return nil // the open proper reports it, or it is a device
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil
	}
	defer f.Close()
	var b [len(poolSetSignature)]byte
	if n, _ := f.Read(b[:]); n == len(b) && string(b[:]) == poolSetSignature {
		return &os.PathError{Op: "open", Path: path, Err: errPoolSet}
	}
	return nil
}

// fileType fails, with EINVAL as libpmemblk, for an existing path that is
// neither a regular file nor a device (a directory, a FIFO, a socket).
func fileType(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return nil // the open proper reports it
	}
	m := fi.Mode()
	if m.IsRegular() || m&os.ModeDevice != 0 {
		return nil
	}
	kind := "special file"
	switch {
	case m.IsDir():
		kind = "directory"
	case m&os.ModeNamedPipe != 0:
		kind = "FIFO"
	case m&os.ModeSocket != 0:
		kind = "socket"
	}
	return fmt.Errorf("pmemblk: open %s: a %s is not a pool (pools are regular files or devices): %w", path, kind, syscall.EINVAL)
}

var errPoolSet = errors.New("a PMDK pool set file: nvblk's libpmemblk opens single-file pools only (convert it with `pmempool transform` to one file)")

func fillInfo(out *C.struct_nvblk_pool_info, h uintptr, p *pmemblk.Pool) {
	out.handle = C.uintptr_t(h)
	out.bsize = C.size_t(p.BSize())
	out.nblock = C.size_t(p.NBlock())
}

// nvblk_go_open opens (create == 0) or creates the pool at path; see
// pmemblk_open and pmemblk_create.
//
//export nvblk_go_open
func nvblk_go_open(path *C.char, bsize C.size_t, create C.int, poolsize C.size_t, mode C.uint,
	out *C.struct_nvblk_pool_info, msg *C.char) C.int {
	fn := "pmemblk_open"
	if create != 0 {
		fn = "pmemblk_create"
	}
	if path == nil {
		setMsg(msg, fn, "path is NULL")
		return C.int(syscall.EINVAL)
	}
	name := C.GoString(path)
	if err := refusePoolSet(name); err != nil {
		setMsg(msg, fn, err.Error())
		return C.int(syscall.ENOTSUP)
	}
	if err := fileType(name); err != nil {
		return fail(msg, err)
	}
	var p *pmemblk.Pool
	var err error
	if create != 0 {
		if uint64(bsize) > 1<<32-1 || uint64(poolsize) > 1<<63-1 {
			setMsg(msg, fn, "block size or pool size out of range")
			return C.int(syscall.EINVAL)
		}
		// An existing file (poolsize 0) is locked by the open that
		// writes the pool into it, before anything is written.
		// libpmemblk keeps the descriptor it created the file with, so a
		// mode without owner read and write (0444, 0) still gives a
		// writable pool; the pmemblk package opens the file again, so it
		// creates it with them and the mode asked for is set afterwards.
		perm := os.FileMode(mode).Perm()
		p, err = pmemblk.CreateWith(name, int(bsize), int64(poolsize), pmemblk.Options{Mode: perm | 0o600})
		if err == nil && poolsize != 0 && perm&0o600 != 0o600 {
			if err = os.Chmod(name, perm&^umask()); err != nil {
				p.Close()
				os.Remove(name)
			}
		}
	} else {
		if uint64(bsize) > 1<<32-1 {
			setMsg(msg, fn, "block size out of range")
			return C.int(syscall.EINVAL)
		}
		p, err = pmemblk.Open(name, int(bsize))
	}
	if err != nil {
		return fail(msg, err)
	}
	fillInfo(out, register(p), p)
	return 0
}

// nvblk_go_close closes the pool of handle h: 0, a positive errno when
// closing failed (the pool is closed all the same), or -1 when h is not
// an open pool.
//
//export nvblk_go_close
func nvblk_go_close(h C.uintptr_t, msg *C.char) C.int {
	p := unregister(h)
	if p == nil {
		setMsg(msg, "pmemblk_close", "not an open pool")
		return -1
	}
	if err := p.Close(); err != nil {
		return fail(msg, err)
	}
	return 0
}

// nvblk_go_read reads block blockno into buf (bsize bytes).
//
//export nvblk_go_read
func nvblk_go_read(h C.uintptr_t, buf unsafe.Pointer, blockno C.longlong, msg *C.char) C.int {
	p := lookup(h)
	if p == nil {
		setMsg(msg, "pmemblk_read", "not an open pool")
		return C.int(syscall.EINVAL)
	}
	if err := p.Read(unsafe.Slice((*byte)(buf), p.BSize()), int64(blockno)); err != nil {
		return fail(msg, err)
	}
	return 0
}

// nvblk_go_write writes buf (bsize bytes) to block blockno.
//
//export nvblk_go_write
func nvblk_go_write(h C.uintptr_t, buf unsafe.Pointer, blockno C.longlong, msg *C.char) C.int {
	p := lookup(h)
	if p == nil {
		setMsg(msg, "pmemblk_write", "not an open pool")
		return C.int(syscall.EINVAL)
	}
	if err := p.Write(unsafe.Slice((*byte)(buf), p.BSize()), int64(blockno)); err != nil {
		return fail(msg, err)
	}
	return 0
}

// nvblk_go_set sets block blockno to zeros (zero != 0) or to the error
// state.
//
//export nvblk_go_set
func nvblk_go_set(h C.uintptr_t, blockno C.longlong, zero C.int, msg *C.char) C.int {
	fn := "pmemblk_set_error"
	if zero != 0 {
		fn = "pmemblk_set_zero"
	}
	p := lookup(h)
	if p == nil {
		setMsg(msg, fn, "not an open pool")
		return C.int(syscall.EINVAL)
	}
	var err error
	if zero != 0 {
		err = p.SetZero(int64(blockno))
	} else {
		err = p.SetError(int64(blockno))
	}
	if err != nil {
		return fail(msg, err)
	}
	return 0
}

// nvblk_go_check checks the pool at path: 1 consistent, 0 not, or a
// negative errno.
//
//export nvblk_go_check
func nvblk_go_check(path *C.char, bsize C.size_t, msg *C.char) C.int {
	const fn = "pmemblk_check"
	if path == nil {
		setMsg(msg, fn, "path is NULL")
		return -C.int(syscall.EINVAL)
	}
	name := C.GoString(path)
	if err := refusePoolSet(name); err != nil {
		setMsg(msg, fn, err.Error())
		return -C.int(syscall.ENOTSUP)
	}
	if err := fileType(name); err != nil {
		return -fail(msg, err)
	}
	if uint64(bsize) > 1<<32-1 {
		setMsg(msg, fn, "block size out of range")
		return -C.int(syscall.EINVAL)
	}
	// libpmemblk opens the pool first: what it cannot open is an error
	// (-1 and errno), not an inconsistent pool. A pool open elsewhere is
	// refused by the lock (EAGAIN), as libpmemblk's flock refuses it.
	p, err := pmemblk.OpenWith(name, int(bsize), pmemblk.Options{ReadOnly: true})
	if err != nil {
		return -fail(msg, err)
	}
	if err := p.Close(); err != nil {
		return -fail(msg, err)
	}
	ok, err := pmemblk.Check(name, int(bsize))
	if err != nil {
		return -fail(msg, err)
	}
	if !ok {
		setMsg(msg, fn, "the pool is not consistent (run `nvblk check` on it for the details)")
		return 0
	}
	return 1
}
