package cli

import (
	"fmt"
	"os"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

type createOptions struct {
	format     string
	sectorSize uint32
	size       string
	force      bool
	uuid       string
	parent     string
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
	f.StringVar(&o.parent, "parent-uuid", "", "namespace uuid to record as parent_uuid (default none)")
	addPartitionFlag(cmd)
	return cmd
}

func createFunc(cmd *cobra.Command, path string, o *createOptions) error {
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
