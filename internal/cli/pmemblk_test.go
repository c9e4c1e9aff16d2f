package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/pmemblk"
)

func poolInfo(t *testing.T, path string) InfoJSON {
	t.Helper()
	out, e, c := run(t, nil, "info", "--json", path)
	if c != 0 {
		t.Fatalf("info: %d %s", c, e)
	}
	var info InfoJSON
	if err := json.Unmarshal([]byte(out), &info); err != nil {
		t.Fatal(err)
	}
	return info
}

func TestCreatePmemblk(t *testing.T) {
	dir := t.TempDir()
	for _, bs := range []int{512, 4096} {
		path := filepath.Join(dir, "pool")
		os.Remove(path)
		out, e, c := run(t, nil, "create", "--format", "pmemblk", "--sector-size", itoa(bs), "--size", "32M", path)
		if c != 0 || !strings.Contains(out, "pmemblk pool") {
			t.Fatalf("create: %d %s%s", c, out, e)
		}
		info := poolInfo(t, path)
		p := info.Pool
		if info.Format != "pmemblk" || info.Offset != pmemblk.BTTOffset || info.LBASize != uint32(bs) || info.SectorSize != bs ||
			info.Version != "" || info.UUID != "" || p == nil || p.LaidOut || p.BSize != bs || p.Major != 1 ||
			p.Incompat != pmemblk.DefaultIncompat || p.Compat != pmemblk.DefaultCompat || !p.IsZeroed || p.PoolSize != 32<<20 {
			t.Fatalf("info of a new pool: %+v %+v", info, p)
		}
		nblock := info.Sectors
		data := bytes.Repeat([]byte{0x5A}, 2*bs)
		if _, e, c := run(t, data, "write", "--lba", "7", path); c != 0 {
			t.Fatalf("write: %s", e)
		}
		info = poolInfo(t, path)
		if info.Version != "1.1" || info.Sectors != nblock || info.ParentUUID != info.Pool.PoolsetUUID || len(info.Arenas) != 1 ||
			info.Arenas[0].Offset != pmemblk.BTTOffset || info.Arenas[0].ExternalLBASize != uint32(bs) || !info.Pool.LaidOut || info.ReadOnly {
			t.Fatalf("info after a write: %+v", info)
		}
		got, _, c := run(t, nil, "read", "--lba", "6", "--count", "3", path)
		if c != 0 || got != string(make([]byte, bs))+string(data) {
			t.Fatalf("read back: exit %d", c)
		}
		if _, e, c := run(t, nil, "zero", "--lba", "8", path); c != 0 {
			t.Fatalf("zero: %s", e)
		}
		if got, _, _ := run(t, nil, "read", "--lba", "8", "--count", "1", path); got != string(make([]byte, bs)) {
			t.Error("zeroed block")
		}
		text, _, c := run(t, nil, "info", path)
		if c != 0 || !strings.Contains(text, "pmemblk") || !strings.Contains(text, "arena 0:") {
			t.Errorf("info text:\n%s", text)
		}
		if out, _, c := run(t, nil, "check", path); c != 0 || !strings.Contains(out, "pmemblk pool, BTT 1.1 at 0x2000") {
			t.Errorf("check: %d\n%s", c, out)
		}
	}
	path := filepath.Join(dir, "pool")
	if _, e, c := run(t, nil, "create", "--format", "pmemblk", path); c == 0 || !strings.Contains(e, "--force") {
		t.Errorf("create over a pool: %d %s", c, e)
	}
	if _, e, c := run(t, nil, "create", "--format", "pmemblk", "--sector-size", "520", "--force", path); c != 0 {
		t.Fatalf("create --force: %s", e)
	}
	if info := poolInfo(t, path); info.SectorSize != 520 || info.Pool.IsZeroed || info.Pool.LaidOut {
		t.Errorf("pool over a pool: %+v", info)
	}
	if _, _, c := run(t, nil, "create", "--format", "pmemblk", "--uuid", "1b4e28ba-2fa1-11d2-883f-0016d3cca427", filepath.Join(dir, "u")); c != 16 {
		t.Errorf("--uuid with pmemblk: exit %d", c)
	}
	if _, _, c := run(t, nil, "create", "--format", "pmemblk", "--size", "1M", filepath.Join(dir, "small")); c == 0 {
		t.Error("a 1 MiB pool was created")
	}
	if _, _, c := run(t, nil, "check", "--repair", "--rewrite-log", path); c != 16 {
		t.Errorf("--rewrite-log on a pool: exit %d", c)
	}
	// A BTT written over a pool is found as a BTT, and vice versa.
	if _, e, c := run(t, nil, "create", "--format", "linux", "--force", "--size", "32M", path); c != 0 {
		t.Fatalf("linux over a pool: %s", e)
	}
	if info := poolInfo(t, path); info.Format != "linux" || info.Pool != nil {
		t.Errorf("after --format linux: %+v", info)
	}
	if _, e, c := run(t, nil, "create", "--format", "pmemblk", "--force", "--size", "32M", path); c != 0 {
		t.Fatalf("pmemblk over a BTT: %s", e)
	}
	if info := poolInfo(t, path); info.Format != "pmemblk" {
		t.Errorf("after --format pmemblk: %+v", info)
	}
}

// A damaged primary info block: check reports it and leaves the file
// alone, --repair restores it from the backup, reads work throughout.
func TestCheckPmemblk(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool")
	if _, e, c := run(t, nil, "create", "--format", "pmemblk", "--sector-size", "4096", "--size", "32M", path); c != 0 {
		t.Fatal(e)
	}
	if out, _, c := run(t, nil, "check", path); c != 0 || !strings.Contains(out, "no BTT layout") {
		t.Errorf("check of an unlaid pool: %d\n%s", c, out)
	}
	data := bytes.Repeat([]byte("nvblk!!!"), 512)
	if _, e, c := run(t, data, "write", "--lba", "1", path); c != 0 {
		t.Fatal(e)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("garbage"), pmemblk.BTTOffset+64)
	f.Close()
	before, _ := os.ReadFile(path)
	if got, e, c := run(t, nil, "read", "--lba", "1", "--count", "1", path); c != 0 || got != string(data) {
		t.Fatalf("read through the backup: %d %s", c, e)
	}
	if _, e, c := run(t, data, "write", "--lba", "2", path); c == 0 || !strings.Contains(e, "read-only") {
		t.Errorf("write with a damaged primary: %d %s", c, e)
	}
	out, _, c := run(t, nil, "check", path)
	if c != 4 || !strings.Contains(out, "needs to be restored") {
		t.Errorf("check: %d\n%s", c, out)
	}
	if info := poolInfo(t, path); !info.FromBackup || !info.ReadOnly {
		t.Errorf("info: %+v", info)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("read, write, check or info changed a pool with a damaged primary")
	}
	if out, _, c := run(t, nil, "check", "--repair", path); c != 1 {
		t.Errorf("check --repair: %d\n%s", c, out)
	}
	if out, _, c := run(t, nil, "check", "--json", path); c != 0 {
		t.Errorf("check after repair: %d\n%s", c, out)
	}
	if _, e, c := run(t, data, "write", "--lba", "2", path); c != 0 {
		t.Errorf("write after repair: %s", e)
	}
	// A bad pool header checksum: not a pool to open, but check says why.
	f, _ = os.OpenFile(path, os.O_RDWR, 0)
	f.WriteAt([]byte{1}, 200)
	f.Close()
	out, _, c = run(t, nil, "check", path)
	if c != 4 || !strings.Contains(out, "incorrect pool header") {
		t.Errorf("check of a bad header: %d\n%s", c, out)
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}
