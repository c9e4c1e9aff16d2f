package btt_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// peakRSS returns the process's peak resident memory (VmHWM) in bytes;
// resetPeakRSS starts a new peak (/proc/self/clear_refs, "5").
func peakRSS(b *testing.B) int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmHWM")
	return 0
}

func resetPeakRSS(b *testing.B) {
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Skipf("cannot reset the peak RSS: %v", err)
	}
}

// benchCheck measures btt.Check of the image at path (opened as
// nvblk check opens it) and reports the peak resident memory of the
// check, in MiB (the process's VmHWM, reset before each run).
func benchCheck(b *testing.B, path string) {
	var peak int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		dev, err := pmem.Open(path, pmem.Options{ReadOnly: true})
		if err != nil {
			b.Fatal(err)
		}
		resetPeakRSS(b)
		b.StartTimer()
		rep, err := btt.Check(dev, btt.CheckOptions{})
		b.StopTimer()
		if err != nil || !rep.Clean() {
			b.Fatalf("check: %v %+v", err, rep)
		}
		peak = max(peak, peakRSS(b))
		dev.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(peak)/(1<<20), "peak-RSS-MiB")
}

// BenchmarkCheckSparse1TiB: nvblk check of a 1 TiB image (two 512 GiB
// arenas, 1 GiB of map) on which four sectors were written. Goal: under
// 1 s and 64 MiB of resident memory.
func BenchmarkCheckSparse1TiB(b *testing.B) {
	path := filepath.Join(b.TempDir(), "sparse.img")
	dev, err := pmem.Open(path, pmem.Options{CreateSize: 1 << 40})
	if err != nil {
		b.Fatal(err)
	}
	t, err := btt.Create(dev, btt.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ar := t.Arenas()
	for _, lba := range []uint64{0, uint64(ar[0].Info.ExternalNLBA) - 1, ar[1].ExternalStart, t.Sectors() - 1} {
		if err := t.WriteSectors(make([]byte, t.SectorSize()), lba); err != nil {
			b.Fatal(err)
		}
	}
	t.Close()
	dev.Close()
	benchCheck(b, path)
}

// BenchmarkCheckDense32GiB: nvblk check of a 32 GiB image whose map is
// written in full (every sector mapped: 32 MiB of map entries; the data
// blocks stay holes, which the check does not read). The time is the
// map's: linear in the written map.
func BenchmarkCheckDense32GiB(b *testing.B) {
	path := filepath.Join(b.TempDir(), "dense.img")
	dev, err := pmem.Open(path, pmem.Options{CreateSize: 32 << 30})
	if err != nil {
		b.Fatal(err)
	}
	t, err := btt.Create(dev, btt.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	for _, a := range t.Arenas() {
		n := a.Info.ExternalNLBA
		buf := make([]byte, 4<<20)
		for start := uint32(0); start < n; start += uint32(len(buf) / 4) {
			k := min(uint32(len(buf)/4), n-start)
			for i := uint32(0); i < k; i++ {
				binary.LittleEndian.PutUint32(buf[4*i:], 0xC0000000|(start+i)) // a normal entry: the sector's own block
			}
			if _, err := dev.WriteAt(buf[:4*k], a.Offset+int64(a.Info.MapOff)+4*int64(start)); err != nil {
				b.Fatal(err)
			}
		}
	}
	t.Close()
	dev.Close()
	benchCheck(b, path)
}
