package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckRepairsTruncatedImage: an image file whose last page (the
// backup info block) was cut off opens read-only with a warning; check
// says why (exit 4); check --repair extends the file to the size the
// info block describes and restores the backup (exit 1); then it is
// clean, writable, and holds what it held.
func TestCheckRepairsTruncatedImage(t *testing.T) {
	img := filepath.Join(t.TempDir(), "img")
	mustRun(t, nil, "create", "--size", "32M", img)
	data := bytes.Repeat([]byte("truncated image "), 256) // one 4096-byte sector
	mustRun(t, data, "write", "--lba", "5", img)
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, st.Size()-4096); err != nil {
		t.Fatal(err)
	}
	out, e, code := run(t, nil, "info", img)
	if code != 0 || !strings.Contains(out, "truncated") {
		t.Errorf("info of the truncated image: exit %d\n%s%s", code, out, e)
	}
	if got, e, _ := run(t, nil, "read", "--lba", "5", "--count", "1", img); got != string(data) || !strings.Contains(e, "the image was truncated") {
		t.Errorf("read of the truncated image: wrong data, or no warning naming the cause: %s", e)
	}
	if _, e, code := run(t, data, "write", "--lba", "6", img); code == 0 || !strings.Contains(e, "read-only") {
		t.Errorf("write to the truncated image: exit %d %s", code, e)
	}
	out, _, code = run(t, nil, "check", img)
	if code != 4 || !strings.Contains(out, "the image was truncated") {
		t.Errorf("check: exit %d\n%s", code, out)
	}
	out, _, code = run(t, nil, "check", "--repair", img)
	if code != 1 || !strings.Contains(out, "extended "+img) || !strings.Contains(out, "0 remaining") {
		t.Errorf("check --repair: exit %d\n%s", code, out)
	}
	if st2, _ := os.Stat(img); st2.Size() != st.Size() {
		t.Errorf("size after repair %d, want %d", st2.Size(), st.Size())
	}
	if out, _, code := run(t, nil, "check", img); code != 0 {
		t.Errorf("check after repair: exit %d\n%s", code, out)
	}
	mustRun(t, data, "write", "--lba", "6", img)
	if got := mustRun(t, nil, "read", "--lba", "5", "--count", "2", img); got != string(data)+string(data) {
		t.Error("data after the repair")
	}
}
