//go:build !unix

package cacheflush

import (
	"os"
	"testing"
)

const haveGuardPages = false

// mapGuarded returns page-rounded heap memory: no mmap, no guard pages.
func mapGuarded(tb testing.TB, size int) []byte {
	page := os.Getpagesize()
	rw := (size + page - 1) / page * page
	if rw == 0 {
		rw = page
	}
	return make([]byte, rw)
}
