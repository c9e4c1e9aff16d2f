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
	"github.com/nvblk/nvblk/nslabel"
	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

// This file is where every command finds the device it addresses: the
// whole device at PATH; or, when PATH is a labelled NVDIMM image (a label
// storage area at its end, nslabel.Locate), one namespace of it as a
// pmem.Window (--namespace N|UUID; the only one by default); or
// (--partition N) partition N of the partition table on the device or
// namespace, as a window. What the target holds (BTT, PMDK pool, raw) is
// then decided by block.Probe, inside the namespace's extent.

// partitionFlag is the name of the flag every device command has.
const partitionFlag = "partition"

// addPartitionFlag registers --partition N, --namespace N|UUID and
// --label-size SIZE on cmd.
func addPartitionFlag(cmd *cobra.Command) {
	cmd.Flags().Int(partitionFlag, 0, "address partition N (1-based) of the GPT or MBR on PATH (or on its namespace) instead of the whole device")
	cmd.Flags().String("namespace", "", "address namespace N (0-based, in DIMM address order, as ndctl's namespaceR.N) or UUID of a labelled NVDIMM image (default: its only namespace)")
	cmd.Flags().String("label-size", "", "size of the label area at the end of PATH (default: found by its index block signature among 128K, 256K, 512K, 1M and 2M; create --labels writes 128K)")
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

// addForceRawFlag registers --force-raw on a command that opens a block
// device.
func addForceRawFlag(cmd *cobra.Command) {
	cmd.Flags().Bool("force-raw", false, "access the device as raw sectors even when it carries the marks of a damaged BTT (a label naming the BTT claim class, a backup info block)")
}

// target is what the device flags of a command address.
type target struct {
	part      int    // --partition (0: none)
	ns        string // --namespace ("": the only one, if labelled)
	labelSize string // --label-size ("": the common sizes)
	forceRaw  bool   // --force-raw
}

// partitionOf returns the device flags of cmd.
func partitionOf(cmd *cobra.Command) target {
	var t target
	t.part, _ = cmd.Flags().GetInt(partitionFlag)
	t.ns, _ = cmd.Flags().GetString("namespace")
	t.labelSize, _ = cmd.Flags().GetString("label-size")
	t.forceRaw, _ = cmd.Flags().GetBool("force-raw")
	return t
}

// whole reports whether t addresses the whole PATH (no flag narrows it).
func (t target) whole() bool { return t.part == 0 && t.ns == "" }

// labelSizes returns the label area sizes to look for.
func (t target) labelSizes() ([]int64, error) {
	if t.labelSize == "" {
		return nil, nil
	}
	n, err := ParseSize(t.labelSize)
	if err != nil {
		return nil, &ExitError{Code: 16, Err: fmt.Errorf("--label-size: %v", err)}
	}
	return []int64{n}, nil
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

// nsTarget is a namespace of a labelled image as a window; Close also
// releases the device. Its ClaimClass (the label's) makes the raw driver
// refuse a namespace whose label names the BTT when no BTT is found.
type nsTarget struct {
	*pmem.Window
	parent pmem.Device
	path   string
	ns     nslabel.Namespace
	labels *nslabel.Labels
}

func (n *nsTarget) Close() error { return errors.Join(n.Window.Close(), n.parent.Close()) }

// ClaimClass is the namespace label's claim class (block.Claimed).
func (n *nsTarget) ClaimClass() string { return n.ns.ClaimClass }

// String names the target in messages ("pmem.img namespace 0").
func (n *nsTarget) String() string { return fmt.Sprintf("%s namespace %d", n.path, n.ns.Number) }

// locateLabels finds the label area of dev (nil, nil: none).
func locateLabels(dev pmem.Device, t target) (*nslabel.Labels, error) {
	sizes, err := t.labelSizes()
	if err != nil {
		return nil, err
	}
	l, err := nslabel.Locate(dev, sizes)
	if errors.Is(err, nslabel.ErrNoLabels) {
		if t.labelSize != "" {
			return nil, fmt.Errorf("--label-size %s: no label index block at byte %d", t.labelSize, dev.Size()-sizes[0])
		}
		return nil, nil
	}
	return l, err
}

// openNamespace returns the namespace of dev that t selects, or dev
// itself when dev has no label area. On error it closes dev.
func openNamespace(dev pmem.Device, path string, t target) (pmem.Device, error) {
	l, err := locateLabels(dev, t)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if l == nil {
		if t.ns != "" {
			dev.Close()
			return nil, fmt.Errorf("%s: --namespace %s: no namespace label area at the end of the device", path, t.ns)
		}
		return dev, nil
	}
	var ns *nslabel.Namespace
	switch {
	case t.ns != "":
		ns, err = l.Select(t.ns)
	case len(l.Namespaces) == 1:
		ns, err = l.Select("0")
	case len(l.Namespaces) == 0:
		err = fmt.Errorf("its v%s label area at byte %d holds no namespace (`nvblk create --labels --force` writes one)", l.Version(), l.Offset)
	default:
		err = fmt.Errorf("%d namespaces in its label area: choose one with --namespace N or UUID (`nvblk list` shows them)", len(l.Namespaces))
	}
	if err != nil {
		dev.Close()
		return nil, &ExitError{Code: 16, Err: fmt.Errorf("%s: %w", path, err)}
	}
	w, err := pmem.NewWindow(dev, ns.Offset, ns.Size)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("%s namespace %d: %w", path, ns.Number, err)
	}
	return &nsTarget{Window: w, parent: dev, path: path, ns: *ns, labels: l}, nil
}

// openTarget opens what a command addresses: the device at path
// (opt.CreateSize creates a missing file), or its namespace, or partition
// t.part of the partition table on either as a window (the file must
// exist). Closing the returned device releases everything openTarget
// opened.
//
// Unless opt.NoLock is set, the opener owns the bytes it addresses (see
// pmem.Lock): the whole device, or only the namespace or partition, so
// that two processes can each serve a partition of one disk while a
// whole-device open is refused. A narrowed target is found (labels,
// table) before its range is locked, so it is found again once the lock
// is held: a table rewritten in between (by a whole-device writer, which
// the lock now keeps out) fails the open instead of locking stale bytes.
func openTarget(path string, t target, opt pmem.Options) (pmem.Device, error) {
	if t.part < 0 {
		return nil, &ExitError{Code: 16, Err: fmt.Errorf("--partition %d: partitions are numbered from 1", t.part)}
	}
	lock := !opt.NoLock && !t.whole()
	if !t.whole() {
		opt.CreateSize = 0 // a partition or namespace needs an existing device
		opt.NoLock = true  // its own bytes are locked below
	}
	dev, err := narrowTarget(path, t, opt)
	if err != nil || !lock {
		return dev, err
	}
	if err := lockTarget(path, t, dev); err != nil {
		dev.Close()
		return nil, err
	}
	return dev, nil
}

// lockTarget locks the bytes of dev, the namespace or partition t of the
// device at path, and checks that t still addresses the same bytes.
func lockTarget(path string, t target, dev pmem.Device) error {
	if err := pmem.Lock(dev, 0, dev.Size()); err != nil {
		return err
	}
	again, err := narrowTarget(path, t, pmem.Options{ReadOnly: true, NoLock: true})
	if err != nil {
		return err
	}
	defer again.Close()
	if off0, off1 := deviceOffset(dev), deviceOffset(again); off0 != off1 || dev.Size() != again.Size() {
		return fmt.Errorf("%s: the partition table or labels changed while it was being opened; try again", targetName(path, t))
	}
	return nil
}

// deviceOffset is the byte offset of a (nested) window in the whole device.
func deviceOffset(d pmem.Device) int64 {
	var off int64
	for {
		p, ok := d.(interface{ Parent() (pmem.Device, int64) })
		if !ok {
			return off
		}
		var o int64
		d, o = p.Parent()
		off += o
	}
}

// narrowTarget opens the device at path and the namespace and partition
// t selects on it (see openTarget), without locking anything but what
// pmem.Open does with opt.
func narrowTarget(path string, t target, opt pmem.Options) (pmem.Device, error) {
	part := t.part
	if opt.Logger == nil {
		opt.Logger = slog.Default() // pmem's warnings: Main sets it up
	}
	whole, err := pmem.Open(path, opt)
	if err != nil {
		return nil, err
	}
	dev, err := openNamespace(whole, path, t)
	if err != nil || part == 0 {
		return dev, err
	}
	name := targetName(path, target{ns: t.ns})
	if nt, ok := dev.(*nsTarget); ok {
		name = nt.String()
	}
	tb, err := readTable(dev)
	if err != nil {
		dev.Close()
		if errors.Is(err, partition.ErrNoTable) {
			return nil, fmt.Errorf("%s: --partition %d: %w (create one with `nvblk partition --add SIZE PATH`)", name, part, err)
		}
		return nil, fmt.Errorf("%s: --partition %d: %w", name, part, err)
	}
	if tb.FromBackup {
		slog.Warn("the primary GPT is damaged; partitions were read from the backup (rewrite the table to restore it)", "path", path)
	}
	w, err := tb.Window(dev, part)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("%s: --partition %d: %w", name, part, err)
	}
	return &partTarget{Window: w, parent: dev, path: name, number: part}, nil
}

// openBlockTarget is openBlock for a target: it opens the device or
// partition (opt as for openTarget) and the block driver that claims it.
// Closing the returned pmem.Device releases the whole device.
func openBlockTarget(path string, part target, opt pmem.Options) (block.Device, block.Driver, pmem.Device, error) {
	dev, err := openTarget(path, part, opt)
	if err != nil {
		return nil, block.Driver{}, nil, err
	}
	bd, drv, err := block.Open(dev, block.OpenOptions{ReadOnly: opt.ReadOnly, ForceRaw: part.forceRaw, Logger: slog.Default()})
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

func targetName(path string, t target) string {
	if t.ns != "" {
		path = fmt.Sprintf("%s namespace %s", path, t.ns)
	}
	if t.part == 0 {
		return path
	}
	return fmt.Sprintf("%s partition %d", path, t.part)
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
// on a whole device it also reports a namespace label area (driver name
// "labels") and a partition table (driver name "partition-table"), which
// the new format would destroy.
func probeTarget(dev pmem.Device) (block.Driver, string) {
	_, isPart := dev.(*partTarget)
	if _, isNS := dev.(*nsTarget); !isPart && !isNS {
		// A whole labelled device: a new format would destroy the label
		// area (a backup GPT lives where the labels are).
		if l, err := locateLabels(dev, target{}); l != nil || err != nil {
			if err != nil {
				return block.Driver{Name: "labels"}, "a damaged namespace label area (" + err.Error() + ")"
			}
			return block.Driver{Name: "labels"}, fmt.Sprintf("a v%s namespace label area with %d namespace(s) (use --namespace N to address one)",
				l.Version(), len(l.Namespaces))
		}
	}
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
}, dev pmem.Device, part target, readOnly bool, uri string, w io.Writer) (func(), error) {
	nop := func() {}
	if part.part != 0 {
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
		bd, drv, err := block.Open(win, block.OpenOptions{ReadOnly: readOnly, Logger: slog.Default()})
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
