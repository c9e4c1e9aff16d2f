package cli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/bttfixture"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// TestCheckGolden pins `nvblk check` (text and --json, stdout then
// stderr) over every generated fixture (internal/bttfixture): compared
// with testdata/check/*.golden (go test ./internal/cli -run
// TestCheckGolden -update rewrites them), with the exit status the
// fixture expects. Paths are normalised to $DIR.
func TestCheckGolden(t *testing.T) {
	for _, c := range bttfixture.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			path := fixtureFile(t, c)
			dir := filepath.Dir(path)
			out, e, code := run(t, nil, "check", path)
			if code != c.Exit {
				t.Errorf("exit %d, want %d\n%s%s", code, c.Exit, out, e)
			}
			checkGoldenIn(t, "check", c.Name+".txt.golden", normalize(out+e, dir, "", ""), "TestCheckGolden")
			out, e, code = run(t, nil, "check", "--json", path)
			if code != c.Exit {
				t.Errorf("--json: exit %d, want %d\n%s%s", code, c.Exit, out, e)
			}
			checkGoldenIn(t, "check", c.Name+".json.golden", normalize(out+e, dir, "", ""), "TestCheckGolden")
		})
	}
}

// TestInfoGolden pins `nvblk info` (text and --json) over the images
// Linux wrote (testdata/kernel), compared with testdata/info/*.golden;
// paths are normalised to $DIR, the persistence mode (which depends on
// the file system) to $MODE.
func TestInfoGolden(t *testing.T) {
	for _, k := range testutil.KernelImages(t) {
		t.Run(k.Name, func(t *testing.T) {
			dir := t.TempDir()
			path := k.Extract(t, dir)
			d, err := pmem.Open(path, pmem.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			mode := string(d.Mode()) // depends on the file system under dir
			d.Close()
			for _, f := range []struct{ ext, flag string }{{"txt", ""}, {"json", "--json"}} {
				args := []string{"info", path}
				if f.flag != "" {
					args = []string{"info", f.flag, path}
				}
				out, e, code := run(t, nil, args...)
				if code != 0 {
					t.Fatalf("%v: exit %d\n%s", args, code, e)
				}
				out = strings.ReplaceAll(out, "persistence "+mode+")", "persistence $MODE)")
				checkGoldenIn(t, "info", k.Name+"."+f.ext+".golden", normalize(out+e, dir, mode, ""), "TestInfoGolden")
			}
		})
	}
}
