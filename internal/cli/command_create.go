package cli

import (
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/nslabel"
	"github.com/nvblk/nvblk/pmem"
)

type createOptions struct {
	format     string
	sectorSize uint32
	size       string
	force      bool
	uuid       string
	parent     string

	labels       bool
	labelVersion string
	name         string
	nvdimmSlot   int
}

func newCreateCommand() *cobra.Command {
	o := &createOptions{}
	cmd := &cobra.Command{
		Use:   "create [flags] PATH",
		Short: "Lay out a new BTT on a device or image file (created sparse if missing)",
		Args:  cobra.ExactArgs(1),
		RunE:  func(cmd *cobra.Command, args []string) error { return createFunc(cmd, args[0], o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.format, "format", "linux", "on-media format: linux (BTT 1.1 at byte 4096), uefi (BTT 2.0 at byte 0), pmemblk (PMDK libpmemblk pool; --sector-size is its block size, any 1 to 1 MiB)")
	f.Uint32Var(&o.sectorSize, "sector-size", DefaultSectorSize, "external sector size: 512, 520, 528, 4096, 4104, 4160 or 4224")
	f.StringVar(&o.size, "size", "", "size of a new image file (64M, 1G, 1T or bytes); default 1G")
	f.BoolVar(&o.force, "force", false, "overwrite an existing BTT")
	f.StringVar(&o.uuid, "uuid", "", "BTT uuid (default random)")
	f.StringVar(&o.parent, "parent-uuid", "", "namespace uuid to record as parent_uuid (default none; with --labels, the namespace uuid, default random)")
	f.BoolVar(&o.labels, "labels", false, "write a namespace label area at the end of PATH (last --label-size bytes, default 128K) holding one namespace over the rest, with the BTT in it: a labelled sector-mode NVDIMM image for qemu's nvdimm label-size")
	f.StringVar(&o.labelVersion, "label-version", "1.2", "label format with --labels: 1.2 (BTT 2.0, claim class btt2; --format linux: BTT 1.1, claim class btt) or 1.1 (BTT 1.1, no claim class)")
	f.StringVar(&o.name, "name", "", "namespace name with --labels (up to 63 bytes, as ndctl create-namespace --name)")
	f.IntVar(&o.nvdimmSlot, "nvdimm-slot", 0, "with --labels: the qemu NVDIMM slot the image is attached to (0 for the first -device nvdimm); the labels carry the interleave-set cookie Linux computes for it")
	addPartitionFlag(cmd)
	return cmd
}

func createFunc(cmd *cobra.Command, path string, o *createOptions) error {
	if o.labels {
		return createLabelled(cmd, path, o)
	}
	for _, f := range []string{"label-version", "name", "nvdimm-slot"} {
		if cmd.Flags().Changed(f) {
			return &ExitError{Code: 16, Err: fmt.Errorf("--%s needs --labels", f)}
		}
	}
	var v btt.Version
	switch o.format {
	case "linux":
		v = btt.V11
	case "uefi":
		v = btt.V20
	case "pmemblk":
		return createPool(cmd, path, o)
	default:
		return &ExitError{Code: 16, Err: fmt.Errorf("unknown --format %q (want linux, uefi or pmemblk)", o.format)}
	}
	opt := btt.CreateOptions{Version: v, LBASize: o.sectorSize}
	for _, u := range []struct {
		s   string
		dst *[16]byte
	}{{o.uuid, &opt.UUID}, {o.parent, &opt.ParentUUID}} {
		if u.s != "" {
			id, err := uuid.Parse(u.s)
			if err != nil {
				return &ExitError{Code: 16, Err: fmt.Errorf("bad uuid %q: %v", u.s, err)}
			}
			*u.dst = id
		}
	}
	size, err := sizeFlag(o.size)
	if err != nil {
		return err
	}
	_, statErr := os.Stat(path)
	existed := statErr == nil
	dev, err := openTarget(path, partitionOf(cmd), pmem.Options{CreateSize: size})
	if err != nil {
		return err
	}
	defer dev.Close()
	if existed && o.size != "" && dev.Size() != size {
		return fmt.Errorf("%s exists with %d bytes, not the %d asked by --size", path, dev.Size(), size)
	}
	if nt, ok := dev.(*nsTarget); ok {
		if err := namespaceBTT(cmd, nt, &opt); err != nil {
			return err
		}
	}
	if drv, desc := probeTarget(dev); drv.Name != "raw" && !o.force {
		return fmt.Errorf("%s already holds %s; use --force to overwrite it", path, desc)
	}
	b, err := btt.Create(dev, opt)
	if err != nil {
		if !existed {
			os.Remove(path)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: BTT %s, uuid %s, %d sectors of %d bytes (lbasize %d), %d arena(s)\n",
		path, b.Version(), uuid.UUID(b.UUID()), b.Sectors(), b.SectorSize(), b.LBASize(), len(b.Arenas()))
	return nil
}

// namespaceBTT fits a BTT created in a labelled namespace to its label,
// as Linux will read it: the version the claim class selects (btt2: 2.0
// at byte 0; btt, none: 1.1 at 4096), unless --format says otherwise, and
// parent_uuid = the namespace uuid.
func namespaceBTT(cmd *cobra.Command, nt *nsTarget, opt *btt.CreateOptions) error {
	want := btt.V11
	switch nt.ns.ClaimClass {
	case "btt2":
		want = btt.V20
	case "btt", "none":
	default:
		return &ExitError{Code: 16, Err: fmt.Errorf("%s: its label's claim class %q makes Linux use it for something else than a BTT", nt, nt.ns.ClaimClass)}
	}
	if !cmd.Flags().Changed("format") {
		opt.Version = want
	} else if opt.Version != want {
		return &ExitError{Code: 16, Err: fmt.Errorf("%s: its label's claim class %q makes Linux look for a BTT %s, not %s (leave out --format)",
			nt, nt.ns.ClaimClass, want, opt.Version)}
	}
	if opt.ParentUUID == ([16]byte{}) {
		id, err := uuid.Parse(nt.ns.UUID)
		if err != nil {
			return err
		}
		opt.ParentUUID = id
	}
	return nil
}

// createLabelled is `create --labels`: the label area in the last
// --label-size bytes of PATH (index blocks, as init-labels writes them),
// a BTT in the namespace over the rest (rounded down to 4 KiB), then the
// namespace label, last, as its commit point: what `ndctl
// create-namespace -m sector` leaves on a qemu NVDIMM with label-size.
func createLabelled(cmd *cobra.Command, path string, o *createOptions) error {
	t := partitionOf(cmd)
	if !t.whole() {
		return &ExitError{Code: 16, Err: errors.New("--labels writes the whole device: it does not take --partition or --namespace")}
	}
	if _, err := nslabel.LabelSizeFor(o.labelVersion); err != nil {
		return &ExitError{Code: 16, Err: err}
	}
	var err error
	v, claim := btt.V20, nslabel.GUIDBTT2
	switch {
	case o.format == "pmemblk":
		return &ExitError{Code: 16, Err: errors.New("--labels makes a sector-mode namespace (a BTT): not with --format pmemblk")}
	case o.labelVersion == "1.1" && cmd.Flags().Changed("format") && o.format != "linux":
		return &ExitError{Code: 16, Err: errors.New("v1.1 labels have no claim class: Linux reads a BTT 1.1 (--format linux) from them")}
	case o.labelVersion == "1.1":
		v, claim = btt.V11, nslabel.GUID{}
	case cmd.Flags().Changed("format") && o.format == "linux":
		v, claim = btt.V11, nslabel.GUIDBTT
	case o.format != "linux" && o.format != "uefi":
		return &ExitError{Code: 16, Err: fmt.Errorf("unknown --format %q (want linux or uefi with --labels)", o.format)}
	}
	if len(o.name) > 63 {
		return &ExitError{Code: 16, Err: fmt.Errorf("--name is %d bytes; a label holds 63", len(o.name))}
	}
	if o.nvdimmSlot < 0 || o.nvdimmSlot > 255 {
		return &ExitError{Code: 16, Err: fmt.Errorf("--nvdimm-slot %d (want 0 to 255)", o.nvdimmSlot)}
	}
	areaSize := int64(nslabel.MinAreaSize)
	if t.labelSize != "" {
		if areaSize, err = ParseSize(t.labelSize); err != nil {
			return &ExitError{Code: 16, Err: fmt.Errorf("--label-size: %v", err)}
		}
		if areaSize < nslabel.MinAreaSize || areaSize > nslabel.MaxAreaSize || areaSize%4096 != 0 {
			return &ExitError{Code: 16, Err: fmt.Errorf("--label-size %s: want a multiple of 4 KiB from 128K to 16M (qemu's label-size)", t.labelSize)}
		}
	}
	opt := btt.CreateOptions{Version: v, LBASize: o.sectorSize}
	nsUUID := uuid.New()
	for _, u := range []struct {
		s   string
		dst *[16]byte
	}{{o.uuid, &opt.UUID}, {o.parent, (*[16]byte)(&nsUUID)}} {
		if u.s != "" {
			id, err := uuid.Parse(u.s)
			if err != nil {
				return &ExitError{Code: 16, Err: fmt.Errorf("bad uuid %q: %v", u.s, err)}
			}
			*u.dst = id
		}
	}
	opt.ParentUUID = nsUUID
	size, err := sizeFlag(o.size)
	if err != nil {
		return err
	}
	existed := fileExists(path)
	dev, err := pmem.Open(path, pmem.Options{Logger: slog.Default(), CreateSize: size})
	if err != nil {
		return err
	}
	defer dev.Close()
	fail := func(err error) error {
		if !existed {
			os.Remove(path)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	if existed && o.size != "" && dev.Size() != size {
		return fmt.Errorf("%s exists with %d bytes, not the %d asked by --size", path, dev.Size(), size)
	}
	if !o.force {
		if l, err := locateLabels(dev, target{}); l != nil || err != nil {
			return fmt.Errorf("%s already holds a namespace label area; use --force to overwrite it", path)
		}
		if drv, desc := probeTarget(dev); drv.Name != "raw" {
			return fmt.Errorf("%s already holds %s; use --force to overwrite it", path, desc)
		}
	}
	areaOff := dev.Size() - areaSize
	nsSize := areaOff &^ 4095
	if nsSize < btt.ArenaMinSize {
		return fail(fmt.Errorf("%d bytes leave %d for the namespace after a %d-byte label area: too small for a BTT", dev.Size(), nsSize, areaSize))
	}
	if err := nslabel.Init(dev, areaOff, areaSize, o.labelVersion); err != nil {
		return fail(err)
	}
	w, err := pmem.NewWindow(dev, 0, nsSize)
	if err != nil {
		return fail(err)
	}
	defer w.Close()
	b, err := btt.Create(w, opt)
	if err != nil {
		return fail(err)
	}
	lbasize := uint64(512)
	if b.SectorSize() == 4096 {
		lbasize = 4096
	}
	lab := &nslabel.Label{UUID: nsUUID, Name: o.name, NLabel: 1, LBASize: lbasize, RawSize: uint64(nsSize),
		ISetCookie: nslabel.InterleaveSetCookie(o.labelVersion, nslabel.QEMUSerial(o.nvdimmSlot), nslabel.QEMUVendor)}
	if o.labelVersion != "1.1" {
		lab.TypeGUID, lab.AbstractionGUID = nslabel.GUIDSPAPM, claim
	}
	if err := nslabel.Update(dev, areaOff, areaSize, lab, nil); err != nil {
		return fail(err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "%s: labels v%s (%d bytes at byte %d), namespace 0 %q uuid %s, %d bytes; BTT %s, uuid %s, %d sectors of %d bytes (lbasize %d), %d arena(s)\n",
		path, o.labelVersion, areaSize, areaOff, o.name, nsUUID, nsSize, b.Version(), uuid.UUID(b.UUID()), b.Sectors(), b.SectorSize(), b.LBASize(), len(b.Arenas()))
	return b.Close()
}
