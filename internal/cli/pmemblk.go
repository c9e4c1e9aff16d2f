package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmemblk"
)

// This file holds what the commands do differently for PMDK libpmemblk
// pools (--format pmemblk): creation, the pool part of `info`, and the
// pool header checks of `check`.

// PoolJSON describes a pmemblk pool's headers in `info --json`.
type PoolJSON struct {
	Signature   string   `json:"signature"`
	Major       uint32   `json:"major"`
	Compat      uint32   `json:"compat_features"`
	Incompat    uint32   `json:"incompat_features"`
	ROCompat    uint32   `json:"ro_compat_features"`
	Features    []string `json:"features"`
	PoolsetUUID string   `json:"poolset_uuid"`
	UUID        string   `json:"pool_uuid"`
	CrTime      int64    `json:"crtime"` // seconds since the epoch
	Machine     string   `json:"machine"`
	Checksum    uint64   `json:"checksum"`
	BSize       int      `json:"bsize"`
	IsZeroed    bool     `json:"is_zeroed"`
	PoolSize    int64    `json:"pool_size"`
	LaidOut     bool     `json:"btt_laid_out"` // false until the first write
}

// createPool is `create --format pmemblk`: a new pool file (fully
// allocated, as pmemblk_create makes it), or a pool written over an
// existing file, device or partition (with --force if it holds one).
func createPool(cmd *cobra.Command, path string, o *createOptions) error {
	if o.uuid != "" || o.parent != "" {
		return &ExitError{Code: 16, Err: errors.New("--uuid and --parent-uuid do not apply to --format pmemblk (the BTT gets a random uuid when the first write lays it out; its parent uuid is the pool set uuid)")}
	}
	size, err := sizeFlag(o.size)
	if err != nil {
		return err
	}
	bsize := int(o.sectorSize)
	part := partitionOf(cmd)
	var p *pmemblk.Pool
	if _, err := os.Stat(path); part.whole() && errors.Is(err, os.ErrNotExist) {
		p, err = pmemblk.Create(path, bsize, size)
		if err != nil {
			return err
		}
	} else {
		dev, err := openTarget(path, part, pmem.Options{})
		if err != nil {
			return err
		}
		defer dev.Close()
		if o.size != "" && dev.Size() != size {
			return fmt.Errorf("%s exists with %d bytes, not the %d asked by --size", targetName(path, part), dev.Size(), size)
		}
		if drv, desc := probeTarget(dev); drv.Name != "raw" && !o.force {
			return fmt.Errorf("%s already holds %s; use --force to overwrite it", targetName(path, part), desc)
		}
		if err := pmemblk.Format(dev, bsize); err != nil {
			return fmt.Errorf("%s: %w", targetName(path, part), err)
		}
		if p, err = pmemblk.NewPool(dev, bsize, pmemblk.Options{}); err != nil {
			return fmt.Errorf("%s: %w", targetName(path, part), err)
		}
	}
	defer p.Close()
	h := p.Header()
	fmt.Fprintf(cmd.OutOrStdout(), "%s: pmemblk pool of %d bytes, pool set uuid %s, %d blocks of %d bytes (BTT at byte %d, laid out by the first write)\n",
		targetName(path, part), p.Size(), uuid.UUID(h.PoolsetUUID), p.NBlock(), p.BSize(), pmemblk.BTTOffset)
	return nil
}

// describePool fills info for a pool: offset and geometry of the BTT
// inside it (arena offsets as file offsets), and the pool headers.
func describePool(info *InfoJSON, p *pmemblk.Pool) {
	h := p.Header()
	info.Format = "pmemblk"
	info.Offset = pmemblk.BTTOffset
	info.LBASize = uint32(p.BSize())
	info.SectorSize = p.BSize()
	info.Sectors = uint64(p.NBlock())
	// As for a BTT: read-only by its state, whatever `info` opened it as.
	info.ReadOnly = p.FromBackup() || h.ROCompat != 0
	info.FromBackup = p.FromBackup()
	info.Pool = &PoolJSON{Signature: string(h.Signature[:7]), Major: h.Major, Compat: h.Compat, Incompat: h.Incompat,
		ROCompat: h.ROCompat, Features: pmemblk.FeatureNames(h.Compat, h.Incompat, h.ROCompat),
		PoolsetUUID: uuid.UUID(h.PoolsetUUID).String(), UUID: uuid.UUID(h.UUID).String(), CrTime: int64(h.CrTime),
		Machine: pmemblk.Machine(h.Arch.Machine), Checksum: h.Checksum, BSize: p.BSize(), IsZeroed: p.IsZeroed(),
		PoolSize: p.Size(), LaidOut: p.LaidOut()}
	b := p.BTT()
	if b == nil {
		return
	}
	info.Version = b.Version().String()
	info.UUID = uuid.UUID(b.UUID()).String()
	info.ParentUUID = uuid.UUID(b.ParentUUID()).String()
	for _, a := range b.Arenas() {
		info.ReadOnly = info.ReadOnly || a.ErrorFlag
		ib := a.Info
		info.Arenas = append(info.Arenas, ArenaJSON{Offset: pmemblk.BTTOffset + a.Offset, ExternalNLBA: ib.ExternalNLBA,
			InternalNLBA: ib.InternalNLBA, ExternalLBASize: ib.ExternalLBASize, InternalLBASize: ib.InternalLBASize,
			NFree: ib.NFree, Flags: ib.Flags, DataOff: ib.DataOff, MapOff: ib.MapOff, LogOff: ib.LogOff,
			Info2Off: ib.Info2Off, NextOff: ib.NextOff, LogIndex: a.LogIndex})
	}
}

// printPoolInfo is the text form of `info` for a pool, after the device
// line.
func printPoolInfo(w io.Writer, i InfoJSON) {
	p := i.Pool
	fmt.Fprintf(w, "format:      pmemblk (PMDK libpmemblk pool, major %d, %d bytes)\n", p.Major, p.PoolSize)
	fmt.Fprintf(w, "features:    compat %#x, incompat %#x, ro_compat %#x %v\n", p.Compat, p.Incompat, p.ROCompat, p.Features)
	fmt.Fprintf(w, "pool set:    %s\n", p.PoolsetUUID)
	fmt.Fprintf(w, "pool uuid:   %s\n", p.UUID)
	fmt.Fprintf(w, "created:     %s on %s\n", time.Unix(p.CrTime, 0).UTC().Format(time.RFC3339), p.Machine)
	fmt.Fprintf(w, "blocks:      %d of %d bytes (is_zeroed %v)\n", i.Sectors, p.BSize, p.IsZeroed)
	if !p.LaidOut {
		fmt.Fprintf(w, "BTT:         not laid out yet (at byte %d); every block reads as zeros until the first write\n", i.Offset)
		return
	}
	fmt.Fprintf(w, "BTT:         %s at byte %d, uuid %s, parent uuid %s\n", i.Version, i.Offset, i.UUID, i.ParentUUID)
	if i.FromBackup {
		fmt.Fprintf(w, "WARNING:     a primary info block is damaged; read-only from its backup. Run `nvblk check --repair`.\n")
	}
	printArenas(w, i.Arenas)
}

// checkTarget checks what dev holds: a pmemblk pool (pool header checks,
// then its BTT) or a bare BTT. It returns the report and a one-line
// description of what was checked.
func checkTarget(dev pmem.Device, path string, opt btt.CheckOptions) (*btt.Report, string, error) {
	if !pmemblk.HasSignature(dev) {
		rep, err := btt.Check(dev, opt)
		if err != nil {
			return nil, "", err
		}
		return rep, fmt.Sprintf("BTT %s at %#x", rep.Version, rep.Offset), nil
	}
	if opt.RewriteLog {
		return nil, "", &ExitError{Code: 16, Err: errors.New("--rewrite-log applies to a bare BTT, not to a pmemblk pool (libpmemblk only writes the (0,1) log)")}
	}
	popt := pmemblk.CheckOptions{Repair: opt.Repair, OnFinding: opt.OnFinding, Progress: opt.Progress}
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() {
		popt.ModTime = st.ModTime()
	}
	rep, err := pmemblk.CheckDevice(dev, popt)
	if err != nil {
		return nil, "", err
	}
	what := "pmemblk pool, no BTT layout"
	if rep.Version != "" {
		what = fmt.Sprintf("pmemblk pool, BTT %s at %#x", rep.Version, rep.Offset)
	}
	return rep, what, nil
}

// exitCodeOf is the status an *ExitError in err carries, else def.
func exitCodeOf(err error, def int) int {
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return def
}
