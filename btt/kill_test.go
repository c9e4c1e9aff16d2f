package btt_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// TestKillWriter is the process-level crash test: a child process writes
// sectors as fast as it can on a file image and prints "ack LBA GEN" after
// each write returns; the parent kills it with SIGKILL mid-run, reopens
// the image, checks it, and verifies every acknowledged write (the last
// one per LBA, or the single write that was in flight).
func TestKillWriter(t *testing.T) {
	if os.Getenv("NVBLK_KILL_CHILD") != "" {
		killChild()
		return
	}
	path := filepath.Join(t.TempDir(), "kill.img")
	dev, err := pmem.Open(path, pmem.Options{CreateSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := btt.Create(dev, btt.CreateOptions{LBASize: 512}); err != nil {
		t.Fatal(err)
	}
	dev.Close()
	for round := 0; round < 3; round++ {
		acks, inflight := runKillChild(t, path, round)
		dev, err := pmem.Open(path, pmem.Options{})
		if err != nil {
			t.Fatal(err)
		}
		b, err := btt.Open(dev, btt.Options{})
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		if err := btt.VerifyPermutation(dev); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		p := make([]byte, b.SectorSize())
		for lba, gen := range acks {
			if err := b.ReadSectors(p, lba); err != nil {
				t.Fatal(err)
			}
			got, ok := classify(p, lba)
			next := inflight[lba]
			if !ok || (got != gen && got != next) {
				t.Errorf("round %d: LBA %d holds gen %d (valid %v), acknowledged %d, in flight %d", round, lba, got, ok, gen, next)
			}
		}
		t.Logf("round %d: %d LBAs verified after SIGKILL", round, len(acks))
		dev.Close()
	}
}

// runKillChild runs the writer and kills it; it returns the last
// acknowledged generation per LBA and the generation that may be in flight.
func runKillChild(t *testing.T, path string, round int) (map[uint64]uint32, map[uint64]uint32) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestKillWriter$")
	cmd.Env = append(os.Environ(), "NVBLK_KILL_CHILD="+path, "NVBLK_KILL_ROUND="+strconv.Itoa(round), "PMEM_IS_PMEM_FORCE=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	acks := map[uint64]uint32{}
	inflight := map[uint64]uint32{}
	sc := bufio.NewScanner(out)
	n := 0
	killAt := 2000 + round*1500
	for sc.Scan() {
		var lba uint64
		var gen uint32
		line := sc.Text()
		if strings.HasPrefix(line, "next ") {
			fmt.Sscanf(line, "next %d %d", &lba, &gen)
			inflight[lba] = gen
			continue
		}
		if _, err := fmt.Sscanf(line, "ack %d %d", &lba, &gen); err != nil {
			continue
		}
		acks[lba] = gen
		if n++; n == killAt {
			cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	err = cmd.Wait()
	if n < killAt {
		t.Fatalf("child stopped after %d acks (%v): %s", n, err, stderr.String())
	}
	return acks, inflight
}

// killChild is the writer process.
func killChild() {
	path := os.Getenv("NVBLK_KILL_CHILD")
	round, _ := strconv.Atoi(os.Getenv("NVBLK_KILL_ROUND"))
	dev, err := pmem.Open(path, pmem.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	b, err := btt.Open(dev, btt.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	w := bufio.NewWriter(os.Stdout)
	r := rand.New(rand.NewPCG(uint64(round), 3))
	p := make([]byte, b.SectorSize())
	gens := map[uint64]uint32{}
	// Resume generations above anything a previous round wrote.
	base := uint32(round+1) << 24
	for i := 0; i < 10_000_000; i++ {
		lba := r.Uint64N(64)
		gen := base + uint32(i) + 1
		// Announce the write before it starts: it is in flight until acked.
		fmt.Fprintf(w, "next %d %d\n", lba, gen)
		w.Flush()
		fillSector(p, lba, gen)
		if err := b.WriteSectors(p, lba); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		gens[lba] = gen
		fmt.Fprintf(w, "ack %d %d\n", lba, gen)
		w.Flush()
	}
	os.Exit(0)
}
