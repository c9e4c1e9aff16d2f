package kernel_test

import (
	"testing"

	"github.com/nvblk/nvblk/internal/testutil"
)

// TestPatternMatchesTestdata checks the sector pattern against the hashes
// of the kernel-written images in testdata/kernel, which used the same
// recipe in a shell: guest_lib.sh's nv_pat and pattern agree with it.
func TestPatternMatchesTestdata(t *testing.T) {
	for _, k := range testutil.KernelImages(t) {
		ss := int(k.Int(t, "sector_size"))
		for _, s := range k.Sectors {
			if got := sha(pattern(k.Keys["seed"], s.LBA, s.Gen, ss)); got != s.SHA256 {
				t.Errorf("%s: lba %d gen %d: pattern sha256 %s, want %s", k.Name, s.LBA, s.Gen, got, s.SHA256)
			}
		}
	}
}
