package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

// This file is where every command finds the device it addresses: the
// whole device at PATH, or (--partition N) partition N of the partition
// table on it, as a pmem.Window. What the device or partition holds (BTT,
// PMDK pool, raw) is then decided by block.Probe, as for a namespace.

// partitionFlag is the name of the flag every device command has.
const partitionFlag = "partition"

// addPartitionFlag registers --partition N on cmd.
func addPartitionFlag(cmd *cobra.Command) {
	cmd.Flags().Int(partitionFlag, 0, "address partition N (1-based) of the GPT or MBR on PATH instead of the whole device")
}

// forceShareFlag is the name of the flag of the read-only commands that
// skips the lock (qemu-img's -U, --force-share).
const forceShareFlag = "force-share"

// addForceShareFlag registers --force-share on a read-only command.
func addForceShareFlag(cmd *cobra.Command) {
	cmd.Flags().Bool(forceShareFlag, false, "open read-only without taking the shared lock, for a look at an image in use (what it shows may be mid-update)")
}

// forceShareOf reports whether cmd has --force-share and it was given.
func forceShareOf(cmd *cobra.Command) bool {
	v, err := cmd.Flags().GetBool(forceShareFlag)
	return err == nil && v
}

// partitionOf returns the --partition value of cmd (0: the whole device).
func partitionOf(cmd *cobra.Command) int {
	n, _ := cmd.Flags().GetInt(partitionFlag)
	return n
}

// partTarget is a partition window whose Close also releases the device
// under it, so callers close a partition as they close a whole device.
type partTarget struct {
	*pmem.Window
	parent pmem.Device
	path   string
	number int
}

func (p *partTarget) Close() error { return errors.Join(p.Window.Close(), p.parent.Close()) }

// String names the target in messages ("disk.img partition 2").
func (p *partTarget) String() string { return fmt.Sprintf("%s partition %d", p.path, p.number) }

// openTarget opens what a command addresses: the device at path (part 0;
// opt.CreateSize creates a missing file), or partition part of its
// partition table as a window (the file must exist). Closing the returned
// device releases everything openTarget opened.
//
// Unless opt.NoLock is set, the opener owns the bytes it addresses (see
// pmem.Lock): the whole device, or only the partition, so that two
// processes can each serve a partition of one disk while a whole-device
// open is refused. A partition's table is read before its range is
// locked, so it is read again once the lock is held: a table rewritten in
// between (by a whole-device writer, which the lock now keeps out) fails
// the open instead of locking stale bytes.
func openTarget(path string, part int, opt pmem.Options) (pmem.Device, error) {
	if part < 0 {
		return nil, &ExitError{Code: 16, Err: fmt.Errorf("--partition %d: partitions are numbered from 1", part)}
	}
	if part == 0 {
		return pmem.Open(path, opt)
	}
	opt.CreateSize = 0 // a partition needs an existing table
	lock := !opt.NoLock
	opt.NoLock = true
	dev, err := pmem.Open(path, opt)
	if err != nil {
		return nil, err
	}
	w, t, err := partitionWindow(dev, path, part)
	if err == nil && lock {
		err = lockPartition(dev, w, path, part)
	}
	if err != nil {
		dev.Close()
		return nil, err
	}
	if t.FromBackup {
		slog.Warn("the primary GPT is damaged; partitions were read from the backup (rewrite the table to restore it)", "path", path)
	}
	return &partTarget{Window: w, parent: dev, path: path, number: part}, nil
}

// lockPartition locks the bytes of window w, partition part of dev, and
// checks that the table still places the partition there.
func lockPartition(dev pmem.Device, w *pmem.Window, path string, part int) error {
	if err := pmem.Lock(w, 0, w.Size()); err != nil {
		return err
	}
	again, _, err := partitionWindow(dev, path, part)
	if err != nil {
		return err
	}
	_, off0 := w.Parent()
	_, off1 := again.Parent()
	if off0 != off1 || w.Size() != again.Size() {
		return fmt.Errorf("%s: --partition %d: the partition table changed while the partition was being opened; try again", path, part)
	}
	return nil
}

// partitionWindow reads the partition table of dev and returns the
// window of partition part.
func partitionWindow(dev pmem.Device, path string, part int) (*pmem.Window, *partition.Table, error) {
	t, err := readTable(dev)
	if err != nil {
		if errors.Is(err, partition.ErrNoTable) {
			return nil, nil, fmt.Errorf("%s: --partition %d: %w (create one with `nvblk partition --add SIZE PATH`)", path, part, err)
		}
		return nil, nil, fmt.Errorf("%s: --partition %d: %w", path, part, err)
	}
	w, err := t.Window(dev, part)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: --partition %d: %w", path, part, err)
	}
	return w, t, nil
}

// openBlockTarget is openBlock for a target: it opens the device or
// partition (opt as for openTarget) and the block driver that claims it.
// Closing the returned pmem.Device releases the whole device.
func openBlockTarget(path string, part int, opt pmem.Options) (block.Device, block.Driver, pmem.Device, error) {
	dev, err := openTarget(path, part, opt)
	if err != nil {
		return nil, block.Driver{}, nil, err
	}
	bd, drv, err := block.Open(dev, block.OpenOptions{ReadOnly: opt.ReadOnly})
	if err != nil {
		dev.Close()
		return nil, drv, nil, fmt.Errorf("%s: %w", targetName(path, part), err)
	}
	return bd, drv, dev, nil
}

// withBlock opens the block device at the command's PATH (and
// --partition, and --force-share on read-only commands), runs fn on it
// and closes it.
func withBlock(cmd *cobra.Command, path string, readOnly bool, fn func(bd block.Device) error) error {
	opt := pmem.Options{ReadOnly: readOnly, NoLock: readOnly && forceShareOf(cmd)}
	bd, _, dev, err := openBlockTarget(path, partitionOf(cmd), opt)
	if err != nil {
		return err
	}
	defer dev.Close()
	defer bd.Close()
	return fn(bd)
}

func targetName(path string, part int) string {
	if part == 0 {
		return path
	}
	return fmt.Sprintf("%s partition %d", path, part)
}

// readTable reads the partition table of a whole device, with nvblk's
// precedence between a table and a personality of the whole device: a
// GPT whose primary copy is valid wins (a BTT or pool written over the
// whole device would have overwritten it); otherwise a driver that
// claims the whole device wins over a backup GPT or an MBR, which are
// then stale leftovers (a whole-device BTT 1.1 leaves the end of the
// device, and so a backup GPT, untouched). It returns
// partition.ErrNoTable when the device holds no table, or when a driver
// claims it.
func readTable(dev pmem.Device) (*partition.Table, error) {
	t, err := partition.Read(dev)
	if err == nil && t.Kind == partition.KindGPT && !t.FromBackup {
		return t, nil
	}
	if drv, desc := block.Probe(dev); drv.Name != "raw" {
		return nil, fmt.Errorf("%w: the whole device holds %s", partition.ErrNoTable, desc)
	}
	return t, err
}

// probeTarget is block.Probe for commands about to write a new format:
// on a whole device it also reports a partition table (driver name
// "partition-table"), which the new format would destroy.
func probeTarget(dev pmem.Device) (block.Driver, string) {
	if _, ok := dev.(*partTarget); !ok {
		if t, err := readTable(dev); err == nil || errors.Is(err, partition.ErrCorrupt) {
			desc := "a damaged partition table"
			if err == nil {
				desc = fmt.Sprintf("a %s partition table with %d partition(s) (use --partition N to address one)", t.Kind, len(t.Partitions))
			}
			return block.Driver{Name: "partition-table"}, desc
		}
	}
	return block.Probe(dev)
}

// addPartitionExports serves every partition of the device behind the
// default export as an NBD export of its own, named "p1", "p2", ... (by
// partition number), when the whole device is served (part == 0) and
// holds a partition table. It prints the exports' URIs on w, next to
// the default export's uri, and returns a func that closes them.
func addPartitionExports(srv interface {
	AddExport(name, desc string, dev block.Device, readOnly bool) error
}, dev pmem.Device, part int, readOnly bool, uri string, w io.Writer) (func(), error) {
	nop := func() {}
	if part != 0 {
		return nop, nil
	}
	t, err := readTable(dev)
	if err != nil {
		return nop, nil // no table: the default export is all there is
	}
	var closers []func()
	closeAll := func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	for _, p := range t.Partitions {
		win, err := t.Window(dev, p.Number)
		if err != nil {
			closeAll()
			return nop, err
		}
		bd, drv, err := block.Open(win, block.OpenOptions{ReadOnly: readOnly})
		if err != nil {
			win.Close()
			closeAll()
			return nop, fmt.Errorf("partition %d: %w", p.Number, err)
		}
		closers = append(closers, func() { bd.Close(); win.Close() })
		info := describe(fmt.Sprintf("partition %d", p.Number), win, bd, drv)
		name := fmt.Sprintf("p%d", p.Number)
		desc := fmt.Sprintf("partition %d %q: %s", p.Number, p.Name, formatDesc(info))
		if err := srv.AddExport(name, desc, bd, readOnly || info.ReadOnly); err != nil {
			closeAll()
			return nop, err
		}
		fmt.Fprintf(w, "partition %d (%s, %d bytes) is NBD export %q: %s\n", p.Number, formatDesc(info),
			info.Sectors*uint64(info.SectorSize), name, exportURI(uri, name))
	}
	return closeAll, nil
}

// exportURI replaces the export name in an NBD URI.
func exportURI(uri, name string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return uri
	}
	u.Path = "/" + name
	return u.String()
}

// fileExists reports whether path exists (errors other than "does not
// exist" count as existing, so the caller's open reports them).
func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil || !errors.Is(err, os.ErrNotExist)
}
