package pmem

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestLockConflicts: the lock lines of /proc/PID/fdinfo, as the kernel
// prints them, against wanted locks.
func TestLockConflicts(t *testing.T) {
	const id = "fe:00:9977966"
	for _, tc := range []struct {
		line      string
		off, n    int64
		exclusive bool
		want      bool
	}{
		{"1: OFDLCK ADVISORY  WRITE -1 fe:00:9977966 4096 12287", 0, 4096, false, false},   // before it
		{"1: OFDLCK ADVISORY  WRITE -1 fe:00:9977966 4096 12287", 0, 4097, false, true},    // touches its first byte
		{"1: OFDLCK ADVISORY  WRITE -1 fe:00:9977966 4096 12287", 12287, 1, false, true},   // its last byte
		{"1: OFDLCK ADVISORY  WRITE -1 fe:00:9977966 4096 12287", 12288, 100, true, false}, // after it
		{"1: OFDLCK ADVISORY  READ  -1 fe:00:9977966 0 EOF", 1 << 40, 1, false, false},     // shared with shared
		{"1: OFDLCK ADVISORY  READ  -1 fe:00:9977966 0 EOF", 1 << 40, 1, true, true},       // to EOF
		{"1: OFDLCK ADVISORY  WRITE -1 fe:00:9977967 0 EOF", 0, 1, false, false},           // another inode
		{"2: FLOCK  ADVISORY  WRITE 4242 fe:00:9977966 0 EOF", 1 << 20, 1, false, true},    // flock: the whole file
		{"2: FLOCK  ADVISORY  READ  4242 fe:00:9977966 0 EOF", 1 << 20, 1, false, false},   // shared flock
		{"3: -> OFDLCK ADVISORY  WRITE -1 fe:00:9977966 0 EOF", 0, 1, true, false},         // a waiter holds nothing
		{"4: LEASE  ACTIVE    READ  17 fe:00:9977966 0 EOF", 0, 1, true, false},            // not a lock we take
		{"garbage", 0, 1, true, false},
		{"1: OFDLCK ADVISORY  WRITE -1 fe:00:9977966 x EOF", 0, 1, true, false},
	} {
		if got := lockConflicts(tc.line, id, tc.off, tc.n, tc.exclusive); got != tc.want {
			t.Errorf("%q vs [%d,+%d) exclusive=%v: %v, want %v", tc.line, tc.off, tc.n, tc.exclusive, got, tc.want)
		}
	}
}

// TestNoLockSupport: where the file system cannot lock (fcntl fails
// with ENOLCK, as NFS without a lock manager does), Open refuses and
// says why; NoLock still opens.
func TestNoLockSupport(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	if err := os.WriteFile(path, make([]byte, 1<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	saved := setLock
	setLock = func(int, *unix.Flock_t) error { return unix.ENOLCK }
	defer func() { setLock = saved }()
	for _, ro := range []bool{false, true} {
		d, err := Open(path, Options{ReadOnly: ro})
		if err == nil {
			d.Close()
			t.Fatalf("read-only=%v: opened without a lock", ro)
		}
		if !errors.Is(err, ErrNoLock) || errors.Is(err, ErrLocked) ||
			!strings.Contains(err.Error(), "does not support locks") || !strings.Contains(err.Error(), path) {
			t.Fatalf("read-only=%v: %v", ro, err)
		}
	}
	d, err := Open(path, Options{NoLock: true})
	if err != nil {
		t.Fatalf("NoLock: %v", err)
	}
	d.Close()
}
