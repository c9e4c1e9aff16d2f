package cli

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/internal/bttfixture"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/nslabel"
	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/list, testdata/check and testdata/info")

// Fixed identities of the list fixtures, so the golden files are stable.
var (
	listDiskGUID = partition.MustParseGUID("6e76626c-0000-4000-8000-000000000000")
	listPartGUID = func(n int) partition.GUID {
		g := partition.MustParseGUID("6e76626c-0000-4000-8000-000000000000")
		g[15] = byte(n)
		return g
	}
)

const (
	listUUIDWhole = "b77b0000-0000-4000-8000-000000000001"
	listUUIDP2    = "b77b0000-0000-4000-8000-000000000002"
	listUUIDP3    = "b77b0000-0000-4000-8000-000000000003"
)

// gptImage writes a GPT with fixed GUIDs on a new image file.
func gptImage(t *testing.T, path string, size int64, specs []partition.Spec) *partition.Table {
	t.Helper()
	for i := range specs {
		specs[i].GUID = listPartGUID(i + 1)
	}
	dev, err := pmem.Open(path, pmem.Options{CreateSize: size})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	tb, err := partition.Create(dev, specs, partition.Options{DiskGUID: listDiskGUID, Wipe: true})
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

func patchFile(t *testing.T, path string, off int64, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// listFixture builds one fixture in dir and returns its path.
type listFixture struct {
	name  string
	build func(t *testing.T, path string)
}

func listFixtures() []listFixture {
	return []listFixture{
		{"btt", func(t *testing.T, p string) {
			mustRun(t, nil, "create", "--size", "20M", "--sector-size", "4096", "--uuid", listUUIDWhole, p)
		}},
		{"raw", func(t *testing.T, p string) {
			if err := os.WriteFile(p, make([]byte, 4<<20), 0o644); err != nil {
				t.Fatal(err)
			}
		}},
		{"gpt-mixed", func(t *testing.T, p string) {
			gptImage(t, p, 96<<20, []partition.Spec{{Size: 16 << 20, Name: "data"}, {Size: 24 << 20, Name: "log"}, {Name: "bulk"}})
			mustRun(t, nil, "create", "--partition", "2", "--format", "linux", "--sector-size", "512", "--uuid", listUUIDP2, p)
			mustRun(t, nil, "create", "--partition", "3", "--format", "uefi", "--sector-size", "4096", "--uuid", listUUIDP3, p)
		}},
		{"gpt-backup", func(t *testing.T, p string) {
			gptImage(t, p, 8<<20, []partition.Spec{{Size: 2 << 20, Name: "a"}, {Name: "b"}})
			patchFile(t, p, 512, make([]byte, 512)) // primary header zeroed
		}},
		{"gpt-damaged", func(t *testing.T, p string) {
			gptImage(t, p, 8<<20, []partition.Spec{{Size: 2 << 20, Name: "a"}})
			patchFile(t, p, 512+60, []byte{0xFF})                 // primary header CRC
			patchFile(t, p, 8<<20-512+60, []byte{0xFF})           // backup header CRC
			patchFile(t, p, 1<<20, []byte("nothing probes here")) // partition 1 content
		}},
		{"gpt-damaged-btt", func(t *testing.T, p string) {
			tb := gptImage(t, p, 48<<20, []partition.Spec{{Size: 20 << 20, Name: "bad-geometry"}, {Size: 20 << 20, Name: "bad-info"}})
			dev, err := pmem.Open(p, pmem.Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer dev.Close()
			cases := map[string]bttfixture.Case{}
			for _, c := range bttfixture.Cases() {
				cases[c.Name] = c
			}
			for i, name := range []string{"bad-geometry", "bad-info-v1.1"} {
				w, err := tb.Window(dev, i+1)
				if err != nil {
					t.Fatal(err)
				}
				c, ok := cases[name]
				if !ok || c.Size > w.Size() {
					t.Fatalf("bttfixture %q missing or larger than its partition", name)
				}
				sub, err := pmem.NewWindow(w, 0, c.Size)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Build(sub); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"labels-v1.2", func(t *testing.T, p string) {
			mustRun(t, nil, "create", "--labels", "--size", "24M", "--name", "vm-disk", "--parent-uuid", listUUIDP3, "--uuid", listUUIDWhole, p)
		}},
		{"labels-v1.1-512", func(t *testing.T, p string) {
			mustRun(t, nil, "create", "--labels", "--label-version", "1.1", "--label-size", "256K", "--size", "24M",
				"--sector-size", "512", "--parent-uuid", listUUIDP2, "--uuid", listUUIDWhole, "--nvdimm-slot", "1", p)
		}},
		{"labels-damaged-btt", func(t *testing.T, p string) {
			mustRun(t, nil, "create", "--labels", "--size", "24M", "--name", "damaged", "--parent-uuid", listUUIDP3, "--uuid", listUUIDWhole, p)
			patchFile(t, p, 0, make([]byte, 4096)) // primary info block
			d, err := pmem.Open(p, pmem.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			l, err := nslabel.Locate(d, nil)
			if err != nil {
				t.Fatal(err)
			}
			// info2: the last 4 KiB of arena 0 (the namespace is one arena).
			patchFile(t, p, l.Namespaces[0].Size-4096, make([]byte, 4096))
		}},
		{"pmemblk", func(t *testing.T, p string) {
			if _, err := block.Lookup("pmemblk"); err != nil {
				t.Fatal("the pmemblk driver is not registered")
			}
			mustRun(t, nil, "create", "--format", "pmemblk", "--size", "32M", "--sector-size", "4096", p)
		}},
		{"gpt-pmemblk", func(t *testing.T, p string) {
			if _, err := block.Lookup("pmemblk"); err != nil {
				t.Fatal("the pmemblk driver is not registered")
			}
			gptImage(t, p, 64<<20, []partition.Spec{{Size: 32 << 20, Name: "pool"}, {Name: "btt"}})
			mustRun(t, nil, "create", "--partition", "1", "--format", "pmemblk", "--sector-size", "512", p)
			mustRun(t, nil, "create", "--partition", "2", "--uuid", listUUIDP2, p)
		}},
	}
}

var uuidRE = regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`)

// normalize makes list output independent of the temporary directory and
// of the persistence mode of the file system under it; the PMDK pool's
// random UUIDs are replaced too (nvblk create cannot fix them).
func normalize(s, dir, mode, name string) string {
	s = strings.ReplaceAll(s, dir, "$DIR")
	s = strings.ReplaceAll(s, `"mode": "`+mode+`"`, `"mode": "$MODE"`)
	s = strings.ReplaceAll(s, "  "+mode+"\n", "  $MODE\n")
	if strings.Contains(name, "pmemblk") {
		fixed := map[string]bool{listDiskGUID.String(): true, listUUIDWhole: true, listUUIDP2: true, listUUIDP3: true,
			partition.LinuxFilesystemData.String(): true, "00000000-0000-0000-0000-000000000000": true}
		for n := 1; n <= 8; n++ {
			fixed[listPartGUID(n).String()] = true
		}
		s = uuidRE.ReplaceAllStringFunc(s, func(u string) string {
			if fixed[u] {
				return u
			}
			return "$UUID"
		})
	}
	return s
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	checkGoldenIn(t, "list", name, got, "TestListGolden")
}

// checkGoldenIn compares got with testdata/dir/name, or with -update
// writes it there; test names the test that -update must be run with.
func checkGoldenIn(t *testing.T, dir, name, got, test string) {
	t.Helper()
	path := filepath.Join(testutil.RepoRoot(), "testdata", dir, name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/cli -run %s -update to create it)", err, test)
	}
	if string(want) != got {
		t.Errorf("%s differs (run with -update if the change is intended):\n--- got\n%s\n--- want\n%s", name, got, want)
	}
}

// TestListGolden: `nvblk list --json` (and the text tree) over fixtures
// generated here, compared with testdata/list/*.golden.
func TestListGolden(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	mode := ""
	for _, f := range listFixtures() {
		path := filepath.Join(dir, f.name+".img")
		t.Run(f.name, func(t *testing.T) {
			f.build(t, path)
			d, err := pmem.Open(path, pmem.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			mode = string(d.Mode())
			d.Close()
			before, _ := os.ReadFile(path)
			out, e, c := run(t, nil, "list", "--json", path)
			if c != 0 {
				t.Fatalf("list: exit %d %s", c, e)
			}
			var lj ListJSON
			if err := json.Unmarshal([]byte(out), &lj); err != nil || len(lj.Devices) != 1 {
				t.Fatalf("%v\n%s", err, out)
			}
			checkGolden(t, f.name+".golden", normalize(out, dir, mode, f.name))
			if after, _ := os.ReadFile(path); string(after) != string(before) {
				t.Error("list changed the image")
			}
			paths = append(paths, path)
		})
	}
	t.Run("text", func(t *testing.T) {
		var keep []string
		for _, p := range paths {
			if !strings.Contains(p, "pmemblk") {
				keep = append(keep, p)
			}
		}
		out, e, c := run(t, nil, append([]string{"list"}, keep...)...)
		if c != 0 {
			t.Fatalf("list: exit %d %s", c, e)
		}
		checkGolden(t, "all.txt.golden", normalize(out, dir, mode, "text"))
	})
	t.Run("missing", func(t *testing.T) {
		out, e, c := run(t, nil, "list", "--json", paths[0], filepath.Join(dir, "missing.img"))
		var lj ListJSON
		if c != 1 || json.Unmarshal([]byte(out), &lj) != nil || len(lj.Devices) != 2 || lj.Devices[0].Error != "" ||
			!strings.Contains(lj.Devices[1].Error, "missing.img") || !strings.Contains(e, "1 of 2") {
			t.Errorf("exit %d\n%s%s", c, out, e)
		}
		if _, _, c := run(t, nil, "list"); c != 16 {
			t.Errorf("list without PATH: exit %d", c)
		}
	})
}
