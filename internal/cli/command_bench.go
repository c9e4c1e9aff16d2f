package cli

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"
)

func newBenchCommand() *cobra.Command {
	var op string
	var threads int
	var duration time.Duration
	var sectorSize uint32
	cmd := &cobra.Command{
		Use:   "bench [--op read|write] [--threads N] [--duration D] [--sector-size N] [PATH]",
		Short: "Random single-sector I/O over the whole device (PATH defaults to ./nvblk.img, created if missing)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if op != "read" && op != "write" {
				return &ExitError{Code: 16, Err: fmt.Errorf("--op %q: want read or write", op)}
			}
			if threads < 1 || threads > 1024 {
				return &ExitError{Code: 16, Err: fmt.Errorf("--threads %d: want 1..1024", threads)}
			}
			path, def := pathArg(args)
			if def {
				if err := ensureDefault(path, cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			bd, _, dev, err := openBlock(path, op == "read")
			if err != nil {
				return err
			}
			defer dev.Close()
			defer bd.Close()
			ss := bd.SectorSize()
			n := bd.Sectors()
			var ops atomic.Int64
			var firstErr atomic.Value
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for t := 0; t < threads; t++ {
				wg.Add(1)
				go func(seed uint64) {
					defer wg.Done()
					r := rand.New(rand.NewPCG(seed, 0x6e76))
					p := make([]byte, ss)
					for i := range p {
						p[i] = byte(i * int(seed+1))
					}
					var local int64
					for {
						for k := 0; k < 256; k++ {
							lba := r.Uint64N(n)
							var err error
							if op == "write" {
								err = bd.WriteSectors(p, lba)
							} else {
								err = bd.ReadSectors(p, lba)
							}
							if err != nil {
								firstErr.CompareAndSwap(nil, err)
								ops.Add(local)
								return
							}
							local++
						}
						select {
						case <-stop:
							ops.Add(local)
							return
						default:
						}
					}
				}(uint64(t))
			}
			start := time.Now()
			time.Sleep(duration)
			close(stop)
			wg.Wait()
			el := time.Since(start)
			if e := firstErr.Load(); e != nil {
				return e.(error)
			}
			total := ops.Load()
			ps := float64(total) / el.Seconds()
			fmt.Fprintf(cmd.OutOrStdout(), "op=%s threads=%d ops_per_s=%.0f mb_per_s=%.1f ns_per_op=%.0f\n",
				op, threads, ps, ps*float64(ss)/1e6, float64(el.Nanoseconds())*float64(threads)/float64(max(total, 1)))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&op, "op", "write", "read or write")
	f.IntVar(&threads, "threads", 1, "concurrent goroutines")
	f.DurationVar(&duration, "duration", 3*time.Second, "how long to run (3s, 500ms)")
	f.Uint32Var(&sectorSize, "sector-size", DefaultSectorSize, "sector size of a default device created by bench")
	return cmd
}
