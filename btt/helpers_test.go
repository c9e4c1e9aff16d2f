package btt_test

import (
	"math/rand/v2"

	"github.com/nvblk/nvblk/internal/testutil"
	"syscall"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

func diskUsage(t *testing.T, path string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

// checkPermutation asserts the core invariant (doc.go) on every arena: each internal
// block is referenced exactly once by the map and the free list.
func checkPermutation(t *testing.T, dev pmem.Device) {
	t.Helper()
	if err := btt.VerifyPermutation(dev); err != nil {
		t.Fatal(err)
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 17)) }

type kernelDev struct {
	name string
	dev  pmem.Device
}

func kernelImagesForCheck(t *testing.T) []kernelDev {
	var out []kernelDev
	for _, k := range testutil.KernelImages(t) {
		_, ns, _ := openKernelImage(t, k, true)
		out = append(out, kernelDev{k.Name, ns})
	}
	return out
}
