package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

type partitionOptions struct {
	add      []string
	size     string
	force    bool
	asJSON   bool
	diskGUID string
}

func newPartitionCommand() *cobra.Command {
	o := &partitionOptions{}
	cmd := &cobra.Command{
		Use:   "partition [--add SIZE[:NAME]]... [--size SIZE] [--force] [--json] PATH",
		Short: "Write a GPT with the given partitions, or list the partitions of PATH",
		Long: `Without --add, partition lists the partition table of PATH (as nvblk list does).

With --add, it writes a new GPT (protective MBR, primary and backup headers and entry
arrays, 512-byte logical blocks) holding one partition per --add, in order, numbered
from 1 and aligned to 1 MiB. SIZE is 64M, 1G or bytes (a multiple of 512); the last
one may be "rest" or "-" for the rest of the device (rounded down to whole 4 KiB
pages). NAME (everything after the first colon) is the GPT partition name, at most 36
UTF-16 code units. Every partition gets the Linux filesystem data type GUID; what it
holds is decided by its content: put a BTT on partition N with
"nvblk create --partition N PATH". The first and last 8 KiB of every new partition
are zeroed so that old signatures are not probed.

A missing PATH is created sparse, of --size bytes or, without --size, just large
enough. An existing partition table, BTT or pool is replaced only with --force.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return partitionFunc(cmd, args[0], o) },
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.add, "add", nil, "add a partition: SIZE[:NAME] (SIZE may be rest or - for the last one); repeat for more")
	f.StringVar(&o.size, "size", "", "size of PATH if it has to be created (64M, 1G or bytes)")
	f.BoolVar(&o.force, "force", false, "replace an existing partition table, BTT or pool")
	f.BoolVar(&o.asJSON, "json", false, "print the result as nvblk list --json prints one device")
	f.StringVar(&o.diskGUID, "disk-guid", "", "GPT disk GUID (default random)")
	return cmd
}

// parseAddSpec parses SIZE[:NAME].
func parseAddSpec(s string) (partition.Spec, error) {
	sz, name, _ := strings.Cut(s, ":")
	if sz == "rest" || sz == "-" {
		return partition.Spec{Name: name}, nil
	}
	n, err := ParseSize(sz)
	if err != nil {
		return partition.Spec{}, fmt.Errorf("--add %q: %v", s, err)
	}
	return partition.Spec{Size: n, Name: name}, nil
}

func partitionFunc(cmd *cobra.Command, path string, o *partitionOptions) error {
	out := cmd.OutOrStdout()
	show := func() error {
		d := inspectDevice(path, false)
		if o.asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			if err := enc.Encode(d); err != nil {
				return err
			}
		} else {
			printDevice(out, d)
		}
		if d.Error != "" {
			return &ExitError{Code: 1, Err: errors.New(d.Error)}
		}
		return nil
	}
	if len(o.add) == 0 {
		if o.size != "" || o.force || o.diskGUID != "" {
			return &ExitError{Code: 16, Err: errors.New("--size, --force and --disk-guid need --add")}
		}
		return show()
	}
	var specs []partition.Spec
	for i, a := range o.add {
		s, err := parseAddSpec(a)
		if err != nil {
			return &ExitError{Code: 16, Err: err}
		}
		if s.Size == 0 && i != len(o.add)-1 {
			return &ExitError{Code: 16, Err: fmt.Errorf("--add %q: only the last partition can take the rest", a)}
		}
		specs = append(specs, s)
	}
	opt := partition.Options{Wipe: true}
	if o.diskGUID != "" {
		g, err := partition.ParseGUID(o.diskGUID)
		if err != nil {
			return &ExitError{Code: 16, Err: err}
		}
		opt.DiskGUID = g
	}
	var size int64
	if o.size != "" {
		s, err := ParseSize(o.size)
		if err != nil {
			return &ExitError{Code: 16, Err: err}
		}
		size = s
	}
	existed := fileExists(path)
	if !existed && size == 0 {
		if specs[len(specs)-1].Size == 0 {
			return &ExitError{Code: 16, Err: fmt.Errorf("%s does not exist: give --size for the rest partition", path)}
		}
		size = minimalSize(specs)
	}
	dev, err := pmem.Open(path, pmem.Options{Logger: slog.Default(), CreateSize: size})
	if err != nil {
		return err
	}
	if err := writeTable(dev, path, existed, size, specs, opt, o.force); err != nil {
		dev.Close()
		if !existed {
			os.Remove(path)
		}
		return err
	}
	if err := dev.Close(); err != nil {
		return err
	}
	return show()
}

func writeTable(dev pmem.Device, path string, existed bool, size int64, specs []partition.Spec, opt partition.Options, force bool) error {
	if existed && size != 0 && dev.Size() != size {
		return fmt.Errorf("%s exists with %d bytes, not the %d asked by --size", path, dev.Size(), size)
	}
	if existed && !force {
		if drv, desc := probeTarget(dev); drv.Name != "raw" {
			return fmt.Errorf("%s already holds %s; use --force to replace it", path, desc)
		}
	}
	if _, err := partition.Create(dev, specs, opt); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// minimalSize is the device size that fits specs (all of fixed size):
// 1 MiB for the protective MBR and primary GPT, each partition rounded up
// to the 1 MiB alignment, and 1 MiB for the backup GPT.
func minimalSize(specs []partition.Spec) int64 {
	const a = partition.DefaultAlignment
	total := int64(2 * a)
	for _, s := range specs {
		total += (s.Size + a - 1) / a * a
	}
	return total
}
