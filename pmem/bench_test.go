package pmem_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/pmem"
)

// benchDevice maps a 64 MiB file on tmpfs (/dev/shm), prefaulted.
func benchDevice(b *testing.B) pmem.Device {
	b.Helper()
	dir := "/dev/shm"
	if st, err := os.Stat(dir); err != nil || !st.IsDir() {
		dir = b.TempDir()
	}
	dir, err := os.MkdirTemp(dir, "nvblk-bench")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	d, err := pmem.Open(filepath.Join(dir, "bench.img"), pmem.Options{CreateSize: 64 << 20})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { d.Close() })
	buf := make([]byte, 1<<20)
	for off := int64(0); off < d.Size(); off += int64(len(buf)) {
		d.WriteAt(buf, off)
	}
	return d
}

const benchBlocks = (64 << 20) / 4096

// BenchmarkWriteAtPersist4K: 4 KiB WriteAt + Persist (the mode the file
// gets: msync on tmpfs, or CPU flushes with PMEM_IS_PMEM_FORCE=1).
func BenchmarkWriteAtPersist4K(b *testing.B) {
	d := benchDevice(b)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		off := int64(i%benchBlocks) * 4096
		d.WriteAt(p, off)
		d.Persist(off, 4096)
		i += 7
	}
	b.Logf("mode %s", d.Mode())
}

// BenchmarkWriteAtPersistNT4K: the copy-and-persist path (non-temporal
// stores) of WriteAtPersist.
func BenchmarkWriteAtPersistNT4K(b *testing.B) {
	d := benchDevice(b)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		d.WriteAtPersist(p, int64(i%benchBlocks)*4096)
		i += 7
	}
}

func BenchmarkReadAt4K(b *testing.B) {
	d := benchDevice(b)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		d.ReadAt(p, int64(i%benchBlocks)*4096)
		i += 7
	}
}

// BenchmarkPlainCopy4K: a plain copy into the same kind of mapping, the
// floor the device layer is measured against.
func BenchmarkPlainCopy4K(b *testing.B) {
	d := benchDevice(b)
	m := mapping(b, d)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		off := (i % benchBlocks) * 4096
		copy(m[off:off+4096], p)
		i += 7
	}
}

func BenchmarkPlainLoad4K(b *testing.B) {
	d := benchDevice(b)
	m := mapping(b, d)
	p := make([]byte, 4096)
	b.SetBytes(4096)
	i := 0
	for b.Loop() {
		off := (i % benchBlocks) * 4096
		copy(p, m[off:off+4096])
		i += 7
	}
}

func mapping(b *testing.B, d pmem.Device) []byte {
	m := pmem.MappingForTest(d)
	if m == nil {
		b.Fatal("no mapping")
	}
	return m
}
