//go:build unix

package cacheflush

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
)

// haveGuardPages reports whether mapGuarded surrounds its result with
// inaccessible pages.
const haveGuardPages = true

// mapGuarded returns an anonymous read-write mapping of size bytes rounded
// up to whole pages, with a PROT_NONE guard page immediately before and
// after it, so an access just outside the returned slice faults. The mapping
// is removed when tb ends.
func mapGuarded(tb testing.TB, size int) []byte {
	tb.Helper()
	page := os.Getpagesize()
	rw := (size + page - 1) / page * page
	if rw == 0 {
		rw = page
	}
	m, err := unix.Mmap(-1, 0, rw+2*page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		tb.Fatalf("mmap: %v", err)
	}
	tb.Cleanup(func() {
		if err := unix.Munmap(m); err != nil {
			tb.Errorf("munmap: %v", err)
		}
	})
	if err := unix.Mprotect(m[:page], unix.PROT_NONE); err != nil {
		tb.Fatalf("mprotect: %v", err)
	}
	if err := unix.Mprotect(m[page+rw:], unix.PROT_NONE); err != nil {
		tb.Fatalf("mprotect: %v", err)
	}
	return m[page : page+rw : page+rw]
}
