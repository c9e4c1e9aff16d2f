package pmemblk

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Options.Mode gives the new file's permission bits (less the umask);
// 0 keeps the default 0644.
func TestCreateMode(t *testing.T) {
	old := syscall.Umask(0o022)
	defer syscall.Umask(old)
	dir := t.TempDir()
	for _, c := range []struct {
		mode, want os.FileMode
	}{{0, 0o644}, {0o600, 0o600}, {0o666, 0o644}, {0o640, 0o640}} {
		path := filepath.Join(dir, c.mode.String())
		p, err := CreateWith(path, 512, MinPoolSize, Options{Mode: c.mode})
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("Mode %v: file mode %v, want %v", c.mode, got, c.want)
		}
	}
}
