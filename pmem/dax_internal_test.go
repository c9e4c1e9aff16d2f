package pmem

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fakeSysfs lays out /sys/dev/char/MAJ:MIN for a dax device.
func fakeSysfs(t *testing.T, subsystem, size, align string, alignInDevice bool) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, "dev", "char", "252:3")
	if err := os.MkdirAll(filepath.Join(dir, "device"), 0o755); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(root, "bus", subsystem)
	os.MkdirAll(sub, 0o755)
	if err := os.Symlink(sub, filepath.Join(dir, "subsystem")); err != nil {
		t.Fatal(err)
	}
	if size != "" {
		os.WriteFile(filepath.Join(dir, "size"), []byte(size+"\n"), 0o644)
	}
	if align != "" {
		p := filepath.Join(dir, "align")
		if alignInDevice {
			p = filepath.Join(dir, "device", "align")
		}
		os.WriteFile(p, []byte(align+"\n"), 0o644)
	}
	return root
}

// TestDaxGeometry: /dev/dax discovery from sysfs, as far as this machine
// allows (there is no /dev/dax here): size and alignment, the older
// device/align location, and refusal of non-dax character devices.
func TestDaxGeometry(t *testing.T) {
	root := fakeSysfs(t, "dax", "4294967296", "2097152", false)
	size, align, err := daxGeometryFor(root, 252, 3)
	if err != nil || size != 4<<30 || align != 2<<20 {
		t.Fatalf("got %d %d %v", size, align, err)
	}
	root = fakeSysfs(t, "dax", "1073741824", "4096", true)
	if _, align, err := daxGeometryFor(root, 252, 3); err != nil || align != 4096 {
		t.Fatalf("device/align: %d %v", align, err)
	}
	root = fakeSysfs(t, "dax", "1073741824", "", false)
	if _, align, err := daxGeometryFor(root, 252, 3); err != nil || align != 0 {
		t.Fatalf("no align attribute: %d %v", align, err)
	}
	root = fakeSysfs(t, "mem", "1073741824", "", false)
	if _, _, err := daxGeometryFor(root, 252, 3); err == nil || !strings.Contains(err.Error(), "not a dax device") {
		t.Fatalf("non-dax char device: %v", err)
	}
	root = fakeSysfs(t, "dax", "garbage", "", false)
	if _, _, err := daxGeometryFor(root, 252, 3); err == nil || !strings.Contains(err.Error(), "bad value") {
		t.Fatalf("bad size: %v", err)
	}
	if _, _, err := daxGeometryFor(t.TempDir(), 1, 3); err == nil {
		t.Fatal("missing sysfs entry accepted")
	}
}
