package pmem_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmem/pmemtest"
)

func fileFactory(dir func(t *testing.T) string) func(t *testing.T, size int64) pmem.Device {
	return func(t *testing.T, size int64) pmem.Device {
		d, err := pmem.Open(filepath.Join(dir(t), "conf.img"), pmem.Options{CreateSize: size})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Close() })
		return d
	}
}

func shmDir(t *testing.T) string {
	if st, err := os.Stat("/dev/shm"); err != nil || !st.IsDir() {
		t.Skip("no /dev/shm tmpfs")
	}
	d, err := os.MkdirTemp("/dev/shm", "nvblk-conf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// TestConformance runs the Device conformance suite on every backing.
func TestConformance(t *testing.T) {
	t.Run("file-tmpfs", func(t *testing.T) { pmemtest.RunConformance(t, fileFactory(shmDir)) })
	t.Run("file-tempdir", func(t *testing.T) {
		// /tmp here is ext4 on the machine's disk: the msync path.
		pmemtest.RunConformance(t, fileFactory(func(t *testing.T) string { return t.TempDir() }))
	})
	t.Run("file-forced-cpu-flush", func(t *testing.T) {
		t.Cleanup(reloadEnv) // runs after t.Setenv's restore
		t.Setenv("PMEM_IS_PMEM_FORCE", "1")
		reloadEnv()
		pmemtest.RunConformance(t, fileFactory(shmDir))
	})
	t.Run("ram", func(t *testing.T) {
		pmemtest.RunConformance(t, func(t *testing.T, size int64) pmem.Device {
			d, err := pmem.NewRAM(size)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			return d
		})
	})
	t.Run("crashmem", func(t *testing.T) {
		pmemtest.RunConformance(t, func(t *testing.T, size int64) pmem.Device { return pmemtest.NewCrashMem(size) })
	})
	t.Run("window", func(t *testing.T) {
		pmemtest.RunConformance(t, func(t *testing.T, size int64) pmem.Device {
			parent, err := pmem.NewRAM(size + 8192)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { parent.Close() })
			w, err := pmem.NewWindow(parent, 4096, size)
			if err != nil {
				t.Fatal(err)
			}
			return w
		})
	})
}
