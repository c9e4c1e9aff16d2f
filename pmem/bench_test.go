package pmem_test

import (
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// benchDevice maps a 64 MiB file on tmpfs (/dev/shm), prefaulted.
func benchDevice(b *testing.B) pmem.Device {
	b.Helper()
	d, err := pmem.Open(filepath.Join(testutil.ShmDir(b), "bench.img"), pmem.Options{CreateSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	buf := make([]byte, 1<<20)
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		d.WriteAt(buf, off)
	}
	b.Logf("mode %s", d.Mode())
	return d
}

const benchBlocks = (64 << 20) / 4096

// benchBlocksLoop calls op on a scattered 4 KiB block offset per iteration.
func benchBlocksLoop(b *testing.B, op func(off int64)) {
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		op(int64(i%benchBlocks) * 4096)
		i += 7
	}
}

// BenchmarkWriteAtPersist4K: 4 KiB WriteAt + Persist (the mode the file
// gets: msync on tmpfs, or CPU flushes with PMEM_IS_PMEM_FORCE=1).
func BenchmarkWriteAtPersist4K(b *testing.B) {
	d, p := benchDevice(b), make([]byte, 4096)
	benchBlocksLoop(b, func(off int64) { d.WriteAt(p, off); d.Persist(off, 4096) })
}

// BenchmarkWriteAtPersistNT4K: the copy-and-persist path (non-temporal
// stores) of WriteAtPersist.
func BenchmarkWriteAtPersistNT4K(b *testing.B) {
	d, p := benchDevice(b), make([]byte, 4096)
	benchBlocksLoop(b, func(off int64) { d.WriteAtPersist(p, off) })
}

func BenchmarkReadAt4K(b *testing.B) {
	d, p := benchDevice(b), make([]byte, 4096)
	benchBlocksLoop(b, func(off int64) { d.ReadAt(p, off) })
}

// BenchmarkPlainCopy4K: a plain copy into the same kind of mapping, the
// floor the device layer is measured against.
func BenchmarkPlainCopy4K(b *testing.B) {
	m, p := pmem.MappingForTest(benchDevice(b)), make([]byte, 4096)
	benchBlocksLoop(b, func(off int64) { copy(m[off:off+4096], p) })
}

func BenchmarkPlainLoad4K(b *testing.B) {
	m, p := pmem.MappingForTest(benchDevice(b)), make([]byte, 4096)
	benchBlocksLoop(b, func(off int64) { copy(p, m[off:off+4096]) })
}
