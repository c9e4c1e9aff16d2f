package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// maxBenchDuration bounds --duration: a benchmark always ends.
const maxBenchDuration = time.Hour

// benchBatch is how many operations a worker does between two looks at
// the stop flag: the run overshoots its duration by at most one batch.
const benchBatch = 64

// BenchJSON is the output of `nvblk bench --json`: one object per result.
// The first five fields are those of the text line.
type BenchJSON struct {
	Op       string  `json:"op"`
	Threads  int     `json:"threads"`
	OpsPerS  float64 `json:"ops_per_s"`
	MBPerS   float64 `json:"mb_per_s"`
	NsPerOp  float64 `json:"ns_per_op"`
	Ops      int64   `json:"ops"`
	Seconds  float64 `json:"seconds"`
	Path     string  `json:"path"`
	Driver   string  `json:"driver"`
	Mode     string  `json:"mode"`
	Bytes    int64   `json:"device_bytes"`
	Sector   int     `json:"sector_size"`
	Sectors  uint64  `json:"sectors"`
	Created  bool    `json:"created"`
	Prefault bool    `json:"prefault"`
	// PrefaultSeconds is the time spent touching the mapping (not part of
	// the measurement).
	PrefaultSeconds float64 `json:"prefault_seconds"`
	// MinorFaults and MajorFaults happened during the measurement; with
	// --prefault they should be near zero.
	MinorFaults int64 `json:"minor_faults"`
	MajorFaults int64 `json:"major_faults"`
	// MallocsPerOp is heap allocations per operation during the
	// measurement (the whole process: workers and the device).
	MallocsPerOp float64 `json:"mallocs_per_op"`
	// Memory of the process at the end, from /proc/self/status, in KiB:
	// peak and current resident set, and its anonymous (heap, stacks),
	// file-backed and shared-memory (a tmpfs image) parts.
	VmHWMKiB    int64 `json:"vm_hwm_kib"`
	VmRSSKiB    int64 `json:"vm_rss_kib"`
	RssAnonKiB  int64 `json:"rss_anon_kib"`
	RssFileKiB  int64 `json:"rss_file_kib"`
	RssShmemKiB int64 `json:"rss_shmem_kib"`
}

type benchOptions struct {
	op         string
	threads    int
	duration   time.Duration
	sectorSize uint32
	createSize string
	prefault   bool
	asJSON     bool
	cpuProfile string
}

func newBenchCommand() *cobra.Command {
	o := &benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench [--op read|write|fill] [--threads N] [--duration D] [--sector-size N] [--create-size SIZE] [--prefault=false] [--json] [PATH]",
		Short: "Random single-sector I/O over the whole device (PATH defaults to ./nvblk.img, created if missing)",
		Long: `bench runs random single-sector reads or writes over the whole device from N
goroutines for a fixed time and prints one line per result:

  op=write threads=1 ops_per_s=... mb_per_s=... ns_per_op=...

ns_per_op is the time one goroutine spends per operation (elapsed x threads / ops).
--op fill writes every sector once (sequentially, the device split between the
threads) and ignores --duration.

A missing PATH is created with --create-size bytes (default 1G) and a BTT of
--sector-size sectors (linux format). With --prefault (the default) the new file
is written with zeros, not left sparse, and before every measurement every page of
the mapping is touched, so that page faults are not measured. Set
PMEM_IS_PMEM_FORCE=1 to use CPU cache flushes on a file that is not DAX (what
PMDK's benchmarks do on tmpfs).`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, _ := pathArg(args)
			return benchFunc(cmd, path, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.op, "op", "write", "read, write or fill (write every sector once)")
	f.IntVar(&o.threads, "threads", 1, "concurrent goroutines")
	f.DurationVar(&o.duration, "duration", 3*time.Second, "how long to run (3s, 500ms)")
	f.Uint32Var(&o.sectorSize, "sector-size", DefaultSectorSize, "sector size of a device created by bench")
	f.StringVar(&o.createSize, "create-size", "1G", "size of a device created by bench when PATH is missing")
	f.BoolVar(&o.prefault, "prefault", true, "write a new image fully and touch every page before measuring")
	f.BoolVar(&o.asJSON, "json", false, "print JSON (with page-fault, allocation and memory figures)")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the measurement to FILE")
	_ = f.MarkHidden("cpuprofile")
	addPartitionFlag(cmd)
	addForceRawFlag(cmd)
	return cmd
}

func benchFunc(cmd *cobra.Command, path string, o *benchOptions) error {
	if o.op != "read" && o.op != "write" && o.op != "fill" {
		return &ExitError{Code: 16, Err: fmt.Errorf("--op %q: want read, write or fill", o.op)}
	}
	if o.threads < 1 || o.threads > 1024 {
		return &ExitError{Code: 16, Err: fmt.Errorf("--threads %d: want 1..1024", o.threads)}
	}
	if o.duration <= 0 || o.duration > maxBenchDuration {
		return &ExitError{Code: 16, Err: fmt.Errorf("--duration %s: want more than 0 and at most %s", o.duration, maxBenchDuration)}
	}
	res := BenchJSON{Op: o.op, Threads: o.threads, Path: path, Prefault: o.prefault}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		size, err := ParseSize(o.createSize)
		if err != nil {
			return &ExitError{Code: 16, Err: fmt.Errorf("--create-size: %w", err)}
		}
		if err := benchCreate(path, size, o.sectorSize, o.prefault, cmd.ErrOrStderr()); err != nil {
			return err
		}
		res.Created = true
	} else if err != nil {
		return err
	}
	readOnly := o.op == "read"
	bd, drv, dev, err := openBlockTarget(path, partitionOf(cmd), pmem.Options{ReadOnly: readOnly})
	if err != nil {
		return err
	}
	defer dev.Close()
	defer bd.Close()
	res.Driver, res.Mode, res.Bytes = drv.Name, string(dev.Mode()), dev.Size()
	res.Sector, res.Sectors = bd.SectorSize(), bd.Sectors()
	if res.Sectors == 0 {
		return fmt.Errorf("%s: device has no sectors", path)
	}
	if o.prefault {
		t0 := time.Now()
		if err := prefaultDevice(dev, !readOnly); err != nil {
			return fmt.Errorf("%s: prefault: %w", path, err)
		}
		res.PrefaultSeconds = time.Since(t0).Seconds()
	}

	var prof *os.File
	if o.cpuProfile != "" {
		if prof, err = os.Create(o.cpuProfile); err != nil {
			return err
		}
		defer prof.Close()
	}
	m, err := runBench(bd, o, prof, &res)
	if err != nil {
		return err
	}
	res.Ops, res.Seconds = m.ops, m.elapsed.Seconds()
	res.OpsPerS = float64(m.ops) / m.elapsed.Seconds()
	res.MBPerS = res.OpsPerS * float64(res.Sector) / 1e6
	res.NsPerOp = float64(m.elapsed.Nanoseconds()) * float64(o.threads) / float64(max(m.ops, 1))
	if prof != nil {
		if err := prof.Close(); err != nil {
			return err
		}
	}
	out := cmd.OutOrStdout()
	if o.asJSON {
		readProcStatus(&res)
		enc := json.NewEncoder(out)
		return enc.Encode(res)
	}
	_, err = fmt.Fprintf(out, "op=%s threads=%d ops_per_s=%.0f mb_per_s=%.1f ns_per_op=%.0f\n",
		res.Op, res.Threads, res.OpsPerS, res.MBPerS, res.NsPerOp)
	return err
}

// benchCreate creates a new image of size bytes at path holding a BTT of
// sectorSize sectors. With full, the file is written with zeros first so
// that every page exists (a sparse tmpfs or DAX file would allocate pages
// on first touch, inside the measurement).
func benchCreate(path string, size int64, sectorSize uint32, full bool, w io.Writer) error {
	if full {
		if err := writeZeroFile(path, size); err != nil {
			return err
		}
	}
	dev, err := pmem.Open(path, pmem.Options{Logger: slog.Default(), CreateSize: size})
	if err != nil {
		return err
	}
	defer dev.Close()
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: sectorSize})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(w, "created %s: %d bytes, BTT %s, %d sectors of %d bytes\n", path, dev.Size(), b.Version(), b.Sectors(), b.SectorSize())
	return b.Close()
}

// writeZeroFile creates path (which must not exist) with size zero bytes
// written out.
func writeZeroFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	zeros := make([]byte, 1<<20)
	for off := int64(0); off < size && err == nil; off += int64(len(zeros)) {
		_, err = f.WriteAt(zeros[:min(int64(len(zeros)), size-off)], off)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("create %s: %w", path, err)
	}
	return nil
}

// prefaultDevice touches every page of the device's mapping, as PMDK's
// benchmarks prefault a pool: it reads the whole device and, for a write
// test, writes every chunk back unchanged so that the pages are also
// mapped writable (a read fault may map a shared page read-only or map
// the zero page). Writing back is content-preserving; the bench writes
// random sectors anyway, so nobody else may use the device meanwhile.
func prefaultDevice(dev pmem.Device, write bool) error {
	buf := make([]byte, 1<<20)
	size := dev.Size()
	for off := int64(0); off < size; off += int64(len(buf)) {
		p := buf[:min(int64(len(buf)), size-off)]
		if _, err := dev.ReadAt(p, off); err != nil {
			return err
		}
		if write {
			if _, err := dev.WriteAt(p, off); err != nil {
				return err
			}
		}
	}
	return nil
}

type benchMeasure struct {
	ops     int64
	elapsed time.Duration
}

// runBench runs the workers and measures them. Each worker has its own
// RNG and buffer, allocated before the start; the loop allocates nothing.
func runBench(bd block.Device, o *benchOptions, prof io.Writer, res *BenchJSON) (benchMeasure, error) {
	ss := bd.SectorSize()
	n := bd.Sectors()
	var (
		stop     atomic.Bool
		total    atomic.Int64
		firstErr atomic.Pointer[error]
		ready    sync.WaitGroup
		wg       sync.WaitGroup
	)
	startCh := make(chan struct{})
	errCh := make(chan struct{}, 1)
	fail := func(err error) {
		if firstErr.CompareAndSwap(nil, &err) {
			errCh <- struct{}{}
		}
		stop.Store(true)
	}
	for t := 0; t < o.threads; t++ {
		ready.Add(1)
		wg.Add(1)
		p := make([]byte, ss)
		for i := range p {
			p[i] = byte(i*(t+1) + 0x5a)
		}
		r := rand.New(rand.NewPCG(uint64(t)+1, 0x6e76626c6b))
		lo, hi := n*uint64(t)/uint64(o.threads), n*uint64(t+1)/uint64(o.threads)
		go func() {
			defer wg.Done()
			ready.Done()
			<-startCh
			var local int64
			defer func() { total.Add(local) }()
			switch o.op {
			case "write":
				for !stop.Load() {
					for k := 0; k < benchBatch; k++ {
						if err := bd.WriteSectors(p, r.Uint64N(n)); err != nil {
							fail(err)
							return
						}
					}
					local += benchBatch
				}
			case "read":
				for !stop.Load() {
					for k := 0; k < benchBatch; k++ {
						if err := bd.ReadSectors(p, r.Uint64N(n)); err != nil {
							fail(err)
							return
						}
					}
					local += benchBatch
				}
			case "fill":
				for lba := lo; lba < hi && !stop.Load(); lba++ {
					p[0], p[1], p[2], p[3] = byte(lba), byte(lba>>8), byte(lba>>16), byte(lba>>24)
					if err := bd.WriteSectors(p, lba); err != nil {
						fail(err)
						return
					}
					local++
				}
			}
		}()
	}
	ready.Wait()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	if prof != nil {
		if err := pprof.StartCPUProfile(prof); err != nil {
			stop.Store(true)
			close(startCh)
			<-done
			return benchMeasure{}, err
		}
	}
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	var ru0, ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	var timeout <-chan time.Time
	if o.op != "fill" {
		timer := time.NewTimer(o.duration)
		defer timer.Stop()
		timeout = timer.C
	}
	start := time.Now()
	close(startCh)
	select {
	case <-timeout:
	case <-errCh:
	case <-done:
	}
	stop.Store(true)
	<-done
	elapsed := time.Since(start)
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	runtime.ReadMemStats(&ms1)
	if prof != nil {
		pprof.StopCPUProfile()
	}
	if e := firstErr.Load(); e != nil {
		return benchMeasure{}, *e
	}
	ops := total.Load()
	res.MinorFaults = ru1.Minflt - ru0.Minflt
	res.MajorFaults = ru1.Majflt - ru0.Majflt
	res.MallocsPerOp = float64(ms1.Mallocs-ms0.Mallocs) / float64(max(ops, 1))
	return benchMeasure{ops: ops, elapsed: elapsed}, nil
}

// readProcStatus fills the memory figures from /proc/self/status (Linux);
// elsewhere they stay zero.
func readProcStatus(res *BenchJSON) {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return
	}
	fields := map[string]*int64{"VmHWM:": &res.VmHWMKiB, "VmRSS:": &res.VmRSSKiB,
		"RssAnon:": &res.RssAnonKiB, "RssFile:": &res.RssFileKiB, "RssShmem:": &res.RssShmemKiB}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			if dst, ok := fields[f[0]]; ok {
				*dst, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
	}
}
