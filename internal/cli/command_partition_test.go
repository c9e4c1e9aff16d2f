package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/internal/testutil"
	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

func mustRun(t *testing.T, stdin []byte, args ...string) string {
	t.Helper()
	out, e, c := run(t, stdin, args...)
	if c != 0 {
		t.Fatalf("nvblk %s: exit %d\n%s%s", strings.Join(args, " "), c, out, e)
	}
	return out
}

func readTableOf(t *testing.T, path string) *partition.Table {
	t.Helper()
	dev, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	tb, err := partition.Read(dev)
	if err != nil {
		t.Fatal(err)
	}
	return tb
}

// TestPartitionCommand: --add writes a GPT (a missing file is created),
// without --add it lists; bad requests are usage errors; an existing
// table is replaced only with --force.
func TestPartitionCommand(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	out := mustRun(t, nil, "partition", "--add", "20M:data", "--add", "24M:log", "--add", "rest:bulk",
		"--size", "96M", "--disk-guid", "0d15c0de-0000-4000-8000-000000000001", img)
	for _, want := range []string{`"data"`, `"log"`, `"bulk"`, "0d15c0de-0000-4000-8000-000000000001", "raw"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	tb := readTableOf(t, img)
	if len(tb.Partitions) != 3 || tb.Partitions[0].Offset() != 1<<20 || tb.Partitions[0].Size() != 20<<20 ||
		tb.Partitions[1].Size() != 24<<20 || tb.Partitions[2].Name != "bulk" || tb.Partitions[2].Size()%(1<<20) != 0 {
		t.Fatalf("table %+v", tb.Partitions)
	}
	// Listing, text and JSON.
	if out := mustRun(t, nil, "partition", img); !strings.Contains(out, "gpt") || !strings.Contains(out, `"bulk"`) {
		t.Errorf("partition PATH:\n%s", out)
	}
	var d DeviceJSON
	if err := json.Unmarshal([]byte(mustRun(t, nil, "partition", "--json", img)), &d); err != nil || len(d.Partitions) != 3 {
		t.Fatalf("partition --json: %v %+v", err, d)
	}

	// Without --size, a missing file is made just large enough.
	small := filepath.Join(dir, "small.img")
	mustRun(t, nil, "partition", "--add", "3M", "--add", "1M:x", small)
	if st, _ := os.Stat(small); st.Size() != 6<<20 {
		t.Errorf("minimal size %d", st.Size())
	}

	for name, args := range map[string][]string{
		"rest-not-last": {"--add", "rest", "--add", "1M"},
		"bad-size":      {"--add", "12Q"},
		"rest-no-size":  {"--add", "rest"},
		"size-no-add":   {"--size", "1G"},
		"bad-guid":      {"--add", "1M", "--disk-guid", "xyz"},
	} {
		p := filepath.Join(dir, name+".img")
		if _, e, c := run(t, nil, append(append([]string{"partition"}, args...), p)...); c != 16 {
			t.Errorf("%s: exit %d %s", name, c, e)
		}
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s: a refused request left %s behind", name, p)
		}
	}
	if _, e, c := run(t, nil, "partition", "--add", "200M", filepath.Join(dir, "nofit.img"), "--size", "64M"); c == 0 || !strings.Contains(e, "does not fit") {
		t.Errorf("too big: %d %s", c, e)
	}
	if _, err := os.Stat(filepath.Join(dir, "nofit.img")); err == nil {
		t.Error("a failed partition left its new file behind")
	}
	// Replacing a table, or a BTT, needs --force.
	if _, e, c := run(t, nil, "partition", "--add", "8M", img); c == 0 || !strings.Contains(e, "--force") {
		t.Errorf("over a table: %d %s", c, e)
	}
	bttImg := filepath.Join(dir, "btt.img")
	mustRun(t, nil, "create", "--size", "32M", bttImg)
	if _, e, c := run(t, nil, "partition", "--add", "8M", bttImg); c == 0 || !strings.Contains(e, "BTT") {
		t.Errorf("over a BTT: %d %s", c, e)
	}
	mustRun(t, nil, "partition", "--force", "--add", "rest", bttImg)
	if tb := readTableOf(t, bttImg); len(tb.Partitions) != 1 {
		t.Errorf("after --force: %+v", tb)
	}
}

// TestPartitionFlagOnEveryCommand: `create --partition 2` puts a BTT on
// partition 2 and leaves partition 1 raw; read, write, zero, info, check
// and bench address one partition through its window, and nothing
// strays outside it.
func TestPartitionFlagOnEveryCommand(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	mustRun(t, nil, "partition", "--add", "20M:raw", "--add", "24M:btt", "--add", "rest:uefi", "--size", "80M", img)
	mustRun(t, nil, "create", "--partition", "2", "--sector-size", "512", img)
	mustRun(t, nil, "create", "--partition", "3", "--format", "uefi", img)
	tb := readTableOf(t, img)

	info := func(part string) InfoJSON {
		var i InfoJSON
		if err := json.Unmarshal([]byte(mustRun(t, nil, "info", "--json", "--partition", part, img)), &i); err != nil {
			t.Fatal(err)
		}
		return i
	}
	if i := info("1"); i.Format != "raw" || i.DeviceSize != 20<<20 || i.Sectors != 20<<20/512 {
		t.Errorf("partition 1: %+v", i)
	}
	if i := info("2"); i.Format != "linux" || i.Version != "1.1" || i.LBASize != 512 || i.DeviceSize != 24<<20 {
		t.Errorf("partition 2: %+v", i)
	}
	if i := info("3"); i.Format != "uefi" || i.Version != "2.0" || i.SectorSize != 4096 || i.Offset != 0 {
		t.Errorf("partition 3: %+v", i)
	}
	// The whole device stays a raw disk with a table; create refuses it.
	if i := func() InfoJSON {
		var i InfoJSON
		json.Unmarshal([]byte(mustRun(t, nil, "info", "--json", img)), &i)
		return i
	}(); i.Format != "raw" || i.DeviceSize != 80<<20 {
		t.Errorf("whole device: %+v", i)
	}
	if _, e, c := run(t, nil, "create", img); c == 0 || !strings.Contains(e, "partition table") {
		t.Errorf("create over a partitioned disk: %d %s", c, e)
	}

	// Write through partitions 1 and 2; the bytes land inside them.
	data := bytes.Repeat([]byte("P1"), 256)
	mustRun(t, data, "write", "--partition", "1", "--lba", "3", img)
	if got := mustRun(t, nil, "read", "--partition", "1", "--lba", "3", "--count", "1", img); got != string(data) {
		t.Error("partition 1 read back differs")
	}
	raw, _ := os.ReadFile(img)
	if off := tb.Partitions[0].Offset() + 3*512; !bytes.Equal(raw[off:off+512], data) {
		t.Error("partition 1 LBA 3 is not at the partition's offset + 3*512 in the file")
	}
	mustRun(t, bytes.Repeat([]byte{0xB7}, 1024), "write", "--partition", "2", "--lba", "7", img)
	if got := mustRun(t, nil, "read", "--partition", "2", "--lba", "7", "--count", "2", img); got != string(bytes.Repeat([]byte{0xB7}, 1024)) {
		t.Error("partition 2 read back differs")
	}
	mustRun(t, nil, "zero", "--partition", "2", "--lba", "8", img)
	if got := mustRun(t, nil, "read", "--partition", "2", "--lba", "8", "--count", "1", img); got != string(make([]byte, 512)) {
		t.Error("zeroed sector of partition 2 is not zero")
	}
	// The end of partition 1 and the table are untouched by all this.
	if t2 := readTableOf(t, img); len(t2.Warnings) != 0 || len(t2.Partitions) != 3 {
		t.Errorf("table after the writes: %+v", t2)
	}
	if out, e, c := run(t, nil, "check", "--partition", "2", img); c != 0 {
		t.Errorf("check --partition 2: %d\n%s%s", c, out, e)
	}
	if out, _, c := run(t, nil, "check", "--partition", "3", "--json", img); c != 0 || !strings.Contains(out, `"exit_code": 0`) {
		t.Errorf("check --partition 3: %d\n%s", c, out)
	}
	if out, e, c := run(t, nil, "bench", "--partition", "2", "--op", "read", "--duration", "50ms", "--prefault=false", img); c != 0 || !strings.Contains(out, "op=read") {
		t.Errorf("bench --partition 2: %d %s %s", c, out, e)
	}
	// Errors name the partition; --partition on a disk without a table.
	if _, e, c := run(t, nil, "read", "--partition", "4", img); c == 0 || !strings.Contains(e, "no such partition: 4") {
		t.Errorf("partition 4: %d %s", c, e)
	}
	if _, e, c := run(t, nil, "read", "--partition", "-1", img); c != 16 {
		t.Errorf("partition -1: %d %s", c, e)
	}
	plain := filepath.Join(dir, "plain.img")
	mustRun(t, nil, "create", "--size", "20M", plain)
	if _, e, c := run(t, nil, "info", "--partition", "1", plain); c == 0 || !strings.Contains(e, "BTT") {
		t.Errorf("--partition on a whole-device BTT: %d %s", c, e)
	}
	if _, e, c := run(t, nil, "create", "--partition", "1", filepath.Join(dir, "missing.img")); c == 0 || !strings.Contains(e, "missing.img") {
		t.Errorf("--partition on a missing file: %d %s", c, e)
	}
	if _, err := os.Stat(filepath.Join(dir, "missing.img")); err == nil {
		t.Error("create --partition made a file")
	}
}

// TestServePartitions: serving a partitioned disk exports the whole disk
// as the default export and each partition as "pN" with its own
// personality and size.
func TestServePartitions(t *testing.T) {
	nbdinfo := testutil.NeedTool(t, "nbdinfo")
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	mustRun(t, nil, "partition", "--add", "20M:data", "--add", "rest:log", "--size", "48M", img)
	mustRun(t, nil, "create", "--partition", "2", "--sector-size", "512", img)
	tb := readTableOf(t, img)
	sock := filepath.Join(dir, "nbd.sock")
	uri, stdout, _, stop := runServe(t, "--socket", sock, img)
	if !strings.Contains(stdout.String(), `NBD export "p2"`) {
		t.Errorf("serve output:\n%s", stdout.String())
	}
	out, err := exec.Command(nbdinfo, "--list", "--json", uri).CombinedOutput()
	if err != nil {
		t.Fatalf("nbdinfo --list: %v\n%s", err, out)
	}
	var list struct {
		Exports []struct {
			Name string `json:"export-name"`
			Size int64  `json:"export-size"`
			Min  int    `json:"block_size_minimum"`
		} `json:"exports"`
	}
	if err := json.Unmarshal(out, &list); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := map[string]int64{}
	for _, e := range list.Exports {
		got[e.Name] = e.Size
	}
	if got[""] != 48<<20 || got["p1"] != tb.Partitions[0].Size() || got["p2"] == 0 || got["p2"] >= tb.Partitions[1].Size() {
		t.Errorf("exports %v (p2 is a BTT: smaller than its partition)", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	// --partition N serves only that partition, as the default export.
	uri, _, _, stop = runServe(t, "--socket", filepath.Join(dir, "p2.sock"), "--partition", "2", img)
	out, err = exec.Command(nbdinfo, "--size", uri).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != strconv.FormatInt(got["p2"], 10) {
		t.Errorf("nbdinfo --size of --partition 2: %v %s, want %d", err, out, got["p2"])
	}
	stop()
}
