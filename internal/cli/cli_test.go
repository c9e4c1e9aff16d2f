package cli

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/bttfixture"
	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/pmem"
)

// run executes the CLI in-process and returns stdout, stderr and the exit
// status.
func run(t *testing.T, stdin []byte, args ...string) (string, string, int) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(args, bytes.NewReader(stdin), &out, &errb)
	return out.String(), errb.String(), code
}

func TestCreateInfoReadWriteZero(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "a.img")
	for _, format := range []string{"linux", "uefi"} {
		for _, ss := range []string{"512", "4096", "4160"} {
			os.Remove(img)
			if _, e, c := run(t, nil, "create", "--format", format, "--sector-size", ss, "--size", "32M", img); c != 0 {
				t.Fatalf("create %s/%s: %d %s", format, ss, c, e)
			}
			out, e, c := run(t, nil, "info", "--json", img)
			if c != 0 {
				t.Fatalf("info: %s", e)
			}
			var info InfoJSON
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatal(err)
			}
			wantOff := map[string]int64{"linux": 4096, "uefi": 0}[format]
			wantVer := map[string]string{"linux": "1.1", "uefi": "2.0"}[format]
			if info.Format != format || info.Version != wantVer || info.Offset != wantOff || len(info.Arenas) != 1 ||
				info.Arenas[0].NFree != 256 || strings.Count(info.UUID, "-") != 4 {
				t.Errorf("info %+v", info)
			}
			sec := info.SectorSize
			data := bytes.Repeat([]byte{0xAB}, 3*sec)
			if _, e, c := run(t, data, "write", "--lba", "10", img); c != 0 {
				t.Fatalf("write: %s", e)
			}
			got, _, c := run(t, nil, "read", "--lba", "10", "--count", "3", img)
			if c != 0 || got != string(data) {
				t.Fatalf("read back %d bytes, code %d", len(got), c)
			}
			if _, e, c := run(t, nil, "zero", "--lba", "11", img); c != 0 {
				t.Fatalf("zero: %s", e)
			}
			got, _, _ = run(t, nil, "read", "--lba", "11", "--count", "1", img)
			if got != string(make([]byte, sec)) {
				t.Error("zeroed sector not zero")
			}
		}
	}
	// Errors: one line on stderr naming the object, non-zero status.
	if _, e, c := run(t, nil, "read", "--lba", "999999999", img); c == 0 || !strings.Contains(e, "999999999") {
		t.Errorf("read past the end: %d %q", c, e)
	}
	if _, e, c := run(t, []byte("short"), "write", img); c == 0 || !strings.Contains(e, "whole") {
		t.Errorf("partial sector: %d %q", c, e)
	}
	if _, e, c := run(t, nil, "create", img); c == 0 || !strings.Contains(e, "--force") {
		t.Errorf("create over a BTT: %d %q", c, e)
	}
	if _, _, c := run(t, nil, "info", "--bogus"); c != 16 {
		t.Errorf("usage error exit %d", c)
	}
	if _, e, c := run(t, nil, "info", filepath.Join(dir, "missing.img")); c == 0 || !strings.Contains(e, "missing.img") {
		t.Errorf("missing file: %d %q", c, e)
	}
}

// TestKernelImagesThroughCLI: `nvblk info --json` and `nvblk read` on the
// images Linux wrote.
func TestKernelImagesThroughCLI(t *testing.T) {
	for _, k := range testutil.KernelImages(t) {
		t.Run(k.Name, func(t *testing.T) {
			path := k.Extract(t, t.TempDir())
			out, e, c := run(t, nil, "info", "--json", path)
			if c != 0 {
				t.Fatal(e)
			}
			var info InfoJSON
			if err := json.Unmarshal([]byte(out), &info); err != nil {
				t.Fatal(err)
			}
			if info.UUID != k.Keys["btt_uuid"] || info.Version != k.Keys["btt_version"] ||
				info.Offset != k.Int(t, "btt_info_offset") || int64(info.LBASize) != k.Int(t, "sector_size") ||
				int64(info.Sectors) != k.Int(t, "device_sectors") {
				t.Errorf("info %+v", info)
			}
			if nu := k.Keys["namespace_uuid"]; nu != "" && info.ParentUUID != nu {
				t.Errorf("parent %s, want %s", info.ParentUUID, nu)
			}
			whole, _, c := run(t, nil, "read", path)
			if c != 0 {
				t.Fatal("read failed")
			}
			sum := sha256.Sum256([]byte(whole))
			if hex.EncodeToString(sum[:]) != k.Keys["whole_sha256"] {
				t.Errorf("whole-device sha256 mismatch")
			}
			ss := int(k.Int(t, "sector_size"))
			for _, s := range k.Sectors {
				sec := whole[int(s.LBA)*ss : int(s.LBA+1)*ss]
				h := sha256.Sum256([]byte(sec))
				if hex.EncodeToString(h[:]) != s.SHA256 {
					t.Errorf("LBA %d hash mismatch", s.LBA)
				}
			}
			if out, _, c := run(t, nil, "check", path); c != 0 {
				t.Errorf("check of a kernel image: exit %d\n%s", c, out)
			}
		})
	}
}

func fixtureFile(t *testing.T, c bttfixture.Case) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), c.Name+".img")
	dev, err := pmem.Open(path, pmem.Options{CreateSize: c.Size})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Build(dev); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	if c.Truncate > 0 {
		if err := os.Truncate(path, c.Truncate); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// TestCheckCommand runs `nvblk check` over every fixture: exit status,
// the image unchanged without --repair, and --repair's exit status (the
// output itself is pinned by TestCheckGolden).
func TestCheckCommand(t *testing.T) {
	for _, c := range bttfixture.Cases() {
		t.Run(c.Name, func(t *testing.T) {
			path := fixtureFile(t, c)
			before, _ := os.ReadFile(path)
			out, e, code := run(t, nil, "check", path)
			if code != c.Exit {
				t.Errorf("exit %d, want %d\n%s%s", code, c.Exit, out, e)
			}
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Fatal("check without --repair changed the file")
			}
			jout, _, jcode := run(t, nil, "check", "--json", path)
			var res CheckJSON
			if err := json.Unmarshal([]byte(jout), &res); err != nil || res.ExitCode != c.Exit || jcode != c.Exit {
				t.Errorf("--json: %v exit %d/%d\n%s", err, res.ExitCode, jcode, jout)
			}
			args := []string{"check", "--repair"}
			if c.RewriteLog {
				args = append(args, "--rewrite-log")
			}
			out, e, code = run(t, nil, append(args, path)...)
			want := cmp.Or(c.CLIRepairExit, c.RepairExit)
			if code != want {
				t.Errorf("--repair exit %d, want %d\n%s%s", code, want, out, e)
			}
			if want <= 1 {
				if out, _, code := run(t, nil, "check", path); code != 0 {
					t.Errorf("after --repair: exit %d\n%s", code, out)
				}
			}
		})
	}
	// Usage and operational errors.
	if _, _, c := run(t, nil, "check", "--rewrite-log", "x"); c != 16 {
		t.Errorf("--rewrite-log without --repair: exit %d", c)
	}
	empty := filepath.Join(t.TempDir(), "zeros.img")
	os.WriteFile(empty, make([]byte, 20<<20), 0o644)
	if _, e, c := run(t, nil, "check", empty); c != 8 || !strings.Contains(e, "BTT") {
		t.Errorf("check of zeros: exit %d %q", c, e)
	}
	if _, _, c := run(t, nil, "check", filepath.Join(t.TempDir(), "nope")); c != 8 {
		t.Errorf("check of a missing file: exit %d", c)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"64M": 64 << 20, "1G": 1 << 30, "1T": 1 << 40, "4096": 4096, "512K": 512 << 10, "2GiB": 2 << 30} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("%s: %d %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "x", "-1", "0", "99999999999T"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
