package main

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmemblk"
)

// The errno of each failure is libpmemblk 1.12's (interop/pmdk compares
// the two libraries call by call; this pins the mapping itself).
func TestErrnoOf(t *testing.T) {
	for _, c := range []struct {
		err  error
		want syscall.Errno
	}{
		{&pmemblk.BlockError{Op: "read", Kind: pmemblk.ErrIO}, syscall.EIO},
		{&pmemblk.BlockError{Op: "read", Kind: pmemblk.ErrIO, Err: &pmem.MediaError{Op: "read", Why: "SIGBUS"}}, syscall.EIO},
		{&pmem.MediaError{Op: "read", Why: "badblock"}, syscall.EIO},
		{&pmemblk.BlockError{Op: "write", Kind: pmemblk.ErrReadOnly}, syscall.EROFS},
		{&pmemblk.BlockError{Op: "read", Kind: pmemblk.ErrOutOfRange}, syscall.EINVAL},
		{fmt.Errorf("x: %w", pmemblk.ErrFormat), syscall.EINVAL},
		{fmt.Errorf("x: %w", pmemblk.ErrBadBSize), syscall.EINVAL},
		{fmt.Errorf("x: %w", pmemblk.ErrPoolSize), syscall.EINVAL},
		{fmt.Errorf("x: %w", pmemblk.ErrCorrupt), syscall.EINVAL},
		{&fs.PathError{Op: "open", Path: "p", Err: syscall.ENOENT}, syscall.ENOENT},
		{&fs.PathError{Op: "open", Path: "p", Err: syscall.EACCES}, syscall.EACCES},
		{fmt.Errorf("%w: header not zero", os.ErrExist), syscall.EEXIST},
		{fmt.Errorf("something else"), syscall.EINVAL},
	} {
		if got := errnoOf(c.err); got != c.want {
			t.Errorf("errnoOf(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}

// Handles: 0 is never one, closed slots are reused, lookups of closed or
// unknown handles find nothing.
func TestHandles(t *testing.T) {
	dir := t.TempDir()
	var ps []*pmemblk.Pool
	for i := range 3 {
		p, err := pmemblk.Create(filepath.Join(dir, fmt.Sprint(i)), 512, pmemblk.MinPoolSize)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		ps = append(ps, p)
	}
	h0, h1 := register(ps[0]), register(ps[1])
	if h0 == 0 || h1 == 0 || h0 == h1 {
		t.Fatalf("handles %d, %d", h0, h1)
	}
	if lookup(0) != nil || lookup(1<<20) != nil || lookup(_Ctype_uintptr_t(h1)) != ps[1] {
		t.Fatal("lookup")
	}
	if unregister(_Ctype_uintptr_t(h0)) != ps[0] || unregister(_Ctype_uintptr_t(h0)) != nil || lookup(_Ctype_uintptr_t(h0)) != nil {
		t.Fatal("unregister")
	}
	if h2 := register(ps[2]); h2 != h0 || lookup(_Ctype_uintptr_t(h2)) != ps[2] {
		t.Fatalf("the free slot %d is not reused: %d", h0, h2)
	}
	unregister(_Ctype_uintptr_t(h0))
	unregister(_Ctype_uintptr_t(h1))
}
