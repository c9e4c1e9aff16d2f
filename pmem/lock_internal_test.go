package pmem

import "testing"

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
