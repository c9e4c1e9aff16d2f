// Package pattern is the sector content of the kernel interop tests, shared
// by the host-side test and the guest helper: testdata/kernel's recipe
// ({ printf 'KBTT-PATTERN seed=%s lba=%s gen=%s ss=%s\n'; yes kbtt:SEED:LBA:GEN; } | head -c SS),
// all zeroes for generation 0.
package pattern

import "fmt"

// Sector returns the ss bytes of sector lba at generation gen.
func Sector(seed string, lba uint64, gen, ss int) []byte {
	if gen == 0 {
		return make([]byte, ss)
	}
	b := make([]byte, 0, ss+64)
	b = fmt.Appendf(b, "KBTT-PATTERN seed=%s lba=%d gen=%d ss=%d\n", seed, lba, gen, ss)
	line := fmt.Sprintf("kbtt:%s:%d:%d\n", seed, lba, gen)
	for len(b) < ss {
		b = append(b, line...)
	}
	return b[:ss]
}
