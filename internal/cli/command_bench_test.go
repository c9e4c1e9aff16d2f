package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

var benchLine = regexp.MustCompile(`^op=(read|write|fill) threads=(\d+) ops_per_s=(\d+) mb_per_s=(\d+\.\d) ns_per_op=(\d+)$`)

// parseBenchLine checks one text result line and returns its numbers.
func parseBenchLine(t *testing.T, out, op string, threads int) (opsPerS, mbPerS, nsPerOp float64) {
	t.Helper()
	line := strings.TrimSuffix(out, "\n")
	if strings.Contains(line, "\n") {
		t.Fatalf("want one line, got %q", out)
	}
	m := benchLine.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("bad bench line %q", line)
	}
	if m[1] != op || m[2] != strconv.Itoa(threads) {
		t.Fatalf("line %q: want op=%s threads=%d", line, op, threads)
	}
	f := func(s string) float64 {
		v, err := strconv.ParseFloat(s, 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	opsPerS, mbPerS, nsPerOp = f(m[3]), f(m[4]), f(m[5])
	if opsPerS <= 0 || nsPerOp <= 0 {
		t.Fatalf("line %q: no progress", line)
	}
	if want := opsPerS * 4096 / 1e6; mbPerS < want*0.99-0.1 || mbPerS > want*1.01+0.1 {
		t.Errorf("line %q: mb_per_s %v, want about %v", line, mbPerS, want)
	}
	return opsPerS, mbPerS, nsPerOp
}

// benchDir is a temporary directory on tmpfs where there is one: there
// msync, the persistence of a file that is not DAX, costs no disk write,
// so a short run does many operations.
func benchDir(t *testing.T) string {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		if dir, err := os.MkdirTemp("/dev/shm", "nvblk-clitest"); err == nil {
			t.Cleanup(func() { os.RemoveAll(dir) })
			return dir
		}
	}
	return t.TempDir()
}

func TestBench(t *testing.T) {
	dir := benchDir(t)
	img := filepath.Join(dir, "bench.img")
	// A missing PATH is created, fully written (not sparse).
	out, errOut, code := run(t, nil, "bench", "--op", "write", "--duration", "200ms", "--create-size", "20M", img)
	if code != 0 {
		t.Fatalf("bench write: %d %s", code, errOut)
	}
	parseBenchLine(t, out, "write", 1)
	if !strings.Contains(errOut, "created "+img) {
		t.Errorf("stderr %q does not report the creation", errOut)
	}
	st, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() != 20<<20 {
		t.Errorf("image size %d, want %d", st.Size(), 20<<20)
	}
	out, errOut, code = run(t, nil, "info", "--json", img)
	var info InfoJSON
	if code != 0 || json.Unmarshal([]byte(out), &info) != nil || info.SectorSize != 4096 || info.Format != "linux" {
		t.Errorf("info after bench: %d %s %s", code, out, errOut)
	}

	out, errOut, code = run(t, nil, "bench", "--op", "read", "--threads", "2", "--duration", "200ms", img)
	if code != 0 {
		t.Fatalf("bench read: %d %s", code, errOut)
	}
	parseBenchLine(t, out, "read", 2)

	// fill writes every sector exactly once and ignores --duration.
	out, errOut, code = run(t, nil, "bench", "--op", "fill", "--threads", "2", "--json", "--duration", "1ms", img)
	if code != 0 {
		t.Fatalf("bench fill: %d %s", code, errOut)
	}
	var res BenchJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("bench --json: %v in %q", err, out)
	}
	if res.Op != "fill" || res.Threads != 2 || res.Ops != int64(res.Sectors) || res.Sectors == 0 ||
		res.Sector != 4096 || res.Driver != "btt" || res.Created || !res.Prefault || res.Bytes != 20<<20 {
		t.Errorf("fill result %+v", res)
	}
	if res.VmHWMKiB <= 0 && runtimeHasProc() {
		t.Errorf("no peak RSS in %+v", res)
	}
	if out, e, c := run(t, nil, "check", img); c != 0 {
		t.Errorf("check after fill: %d %s %s", c, out, e)
	}

	// Without prefault, with a CPU profile.
	prof := filepath.Join(dir, "cpu.prof")
	out, errOut, code = run(t, nil, "bench", "--op", "write", "--prefault=false", "--duration", "200ms", "--cpuprofile", prof, img)
	if code != 0 {
		t.Fatalf("bench --prefault=false: %d %s", code, errOut)
	}
	parseBenchLine(t, out, "write", 1)
	if st, err := os.Stat(prof); err != nil || st.Size() == 0 {
		t.Errorf("cpu profile: %v", err)
	}
}

func TestBenchSectorSize(t *testing.T) {
	img := filepath.Join(benchDir(t), "b512.img")
	out, errOut, code := run(t, nil, "bench", "--sector-size", "512", "--create-size", "17M", "--json", "--duration", "100ms", "--prefault=false", img)
	if code != 0 {
		t.Fatalf("bench: %d %s", code, errOut)
	}
	var res BenchJSON
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatal(err)
	}
	if res.Op != "write" || res.Sector != 512 || !res.Created || res.Ops <= 0 || res.Prefault {
		t.Errorf("result %+v", res)
	}
}

func TestBenchUsage(t *testing.T) {
	img := filepath.Join(t.TempDir(), "u.img")
	for _, args := range [][]string{
		{"--op", "trim"},
		{"--threads", "0"},
		{"--threads", "1025"},
		{"--duration", "0s"},
		{"--duration", "2h"},
		{"--create-size", "lots"},
	} {
		_, e, c := run(t, nil, append(append([]string{"bench"}, args...), img)...)
		if c != 16 || e == "" {
			t.Errorf("bench %v: exit %d %q, want 16", args, c, e)
		}
	}
	if _, err := os.Stat(img); err == nil {
		t.Error("a usage error created the image")
	}
}

func runtimeHasProc() bool {
	_, err := os.Stat("/proc/self/status")
	return err == nil
}
