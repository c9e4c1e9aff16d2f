package cli

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

// ListJSON is the stable output of `nvblk list --json`: the tree that
// `ndctl list` and `lsblk` show, device -> partitions -> personality.
// Fields that do not apply are left out. NOTE: the field names are
// documented in README.md; change both together.
type ListJSON struct {
	Devices []DeviceJSON `json:"devices"`
}

// DeviceJSON is one PATH.
type DeviceJSON struct {
	Path string    `json:"path"`
	Size int64     `json:"size"` // bytes
	Mode pmem.Mode `json:"mode"` // dax, dax-forced, msync, none
	// Error says why the device could not be opened.
	Error string `json:"error,omitempty"`
	err   error  // the error behind Error
	// PartitionTable is present when the device holds a partition table,
	// or a damaged one (then with Error set, and Personality describing
	// the whole device).
	PartitionTable *TableJSON       `json:"partition_table,omitempty"`
	Partitions     []PartitionJSON  `json:"partitions,omitempty"`
	Personality    *PersonalityJSON `json:"personality,omitempty"` // without a (valid) table
}

// TableJSON describes a partition table.
type TableJSON struct {
	Type          string   `json:"type"`                     // gpt, mbr
	DiskGUID      string   `json:"disk_guid,omitempty"`      // gpt
	DiskSignature string   `json:"disk_signature,omitempty"` // mbr, 0x-prefixed hex
	FirstUsable   uint64   `json:"first_usable_lba,omitempty"`
	LastUsable    uint64   `json:"last_usable_lba,omitempty"`
	Entries       int      `json:"entries,omitempty"` // gpt entry slots
	FromBackup    bool     `json:"from_backup"`
	Warnings      []string `json:"warnings,omitempty"`
	Error         string   `json:"error,omitempty"`
}

// PartitionJSON is one partition; Start and Size are bytes.
type PartitionJSON struct {
	Number        int              `json:"number"`
	Name          string           `json:"name"`
	Start         int64            `json:"start"`
	Size          int64            `json:"size"`
	StartLBA      uint64           `json:"start_lba"`
	EndLBA        uint64           `json:"end_lba"` // inclusive
	TypeGUID      string           `json:"type_guid,omitempty"`
	TypeName      string           `json:"type_name,omitempty"`
	PartitionGUID string           `json:"partition_guid,omitempty"`
	MBRType       string           `json:"mbr_type,omitempty"`
	Attributes    uint64           `json:"attributes"`
	Personality   *PersonalityJSON `json:"personality"`
}

// PersonalityJSON is what the block driver registry found on a device or
// partition.
type PersonalityJSON struct {
	Driver      string `json:"driver"`                // btt, pmemblk, raw, ...
	Description string `json:"description,omitempty"` // the driver's probe text
	Format      string `json:"format,omitempty"`      // linux, uefi (btt); the driver name otherwise
	Version     string `json:"version,omitempty"`
	Offset      int64  `json:"offset,omitempty"` // first info block, bytes into the device or partition
	LBASize     uint32 `json:"lbasize,omitempty"`
	SectorSize  int    `json:"sector_size,omitempty"`
	Sectors     uint64 `json:"sectors,omitempty"`
	UUID        string `json:"uuid,omitempty"`
	ParentUUID  string `json:"parent_uuid,omitempty"`
	Arenas      int    `json:"arenas,omitempty"`
	ReadOnly    bool   `json:"read_only,omitempty"`
	FromBackup  bool   `json:"from_backup,omitempty"`
	Error       string `json:"error,omitempty"` // the driver claimed it but could not open it
}

func newListCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json] PATH...",
		Short: "Show devices, their partitions and what each holds (BTT, PMDK pool, raw)",
		Long: `list shows each PATH as a tree, like ndctl list and lsblk: the device (size,
persistence mode), its partition table and partitions (number, name, start, size,
type and partition GUIDs), and the personality of the device or of each partition,
found by probing the registered block drivers (btt, pmemblk, raw). It never writes.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return &ExitError{Code: 16, Err: errors.New("list needs at least one PATH")}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			out := ListJSON{Devices: []DeviceJSON{}}
			failed := 0
			var firstErr error
			for _, p := range args {
				d := inspectDevice(p, forceShareOf(cmd))
				if d.Error != "" {
					failed++
					firstErr = cmp.Or(firstErr, d.err)
				}
				out.Devices = append(out.Devices, d)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(out); err != nil {
					return err
				}
			} else {
				for _, d := range out.Devices {
					printDevice(cmd.OutOrStdout(), d)
				}
			}
			if failed > 0 {
				return &ExitError{Code: 1, Err: fmt.Errorf("%d of %d device(s) could not be read; the first: %w", failed, len(args), firstErr)}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addForceShareFlag(cmd)
	return cmd
}

// inspectDevice builds the tree of one PATH, opened read-only (without
// the shared lock when forceShare is set).
func inspectDevice(path string, forceShare bool) DeviceJSON {
	d := DeviceJSON{Path: path}
	dev, err := pmem.Open(path, pmem.Options{ReadOnly: true, NoLock: forceShare})
	if err != nil {
		d.Error, d.err = err.Error(), err
		return d
	}
	defer dev.Close()
	d.Size, d.Mode = dev.Size(), dev.Mode()
	t, err := readTable(dev)
	switch {
	case err == nil:
		d.PartitionTable = tableJSON(t)
		d.Partitions = []PartitionJSON{}
		for _, p := range t.Partitions {
			pj := partitionJSON(p)
			if w, err := t.Window(dev, p.Number); err != nil {
				pj.Personality = &PersonalityJSON{Error: err.Error()}
			} else {
				pj.Personality = personality(w)
				w.Close()
			}
			d.Partitions = append(d.Partitions, pj)
		}
	case errors.Is(err, partition.ErrCorrupt):
		d.PartitionTable = &TableJSON{Type: string(partition.KindGPT), Error: err.Error()}
		d.Personality = personality(dev)
	default:
		d.Personality = personality(dev)
	}
	return d
}

func tableJSON(t *partition.Table) *TableJSON {
	tj := &TableJSON{Type: string(t.Kind), FromBackup: t.FromBackup, Warnings: t.Warnings}
	switch t.Kind {
	case partition.KindGPT:
		tj.DiskGUID = t.DiskGUID.String()
		tj.FirstUsable, tj.LastUsable, tj.Entries = t.FirstUsableLBA, t.LastUsableLBA, t.Entries
	case partition.KindMBR:
		tj.DiskSignature = fmt.Sprintf("%#08x", t.DiskSignature)
	}
	return tj
}

func partitionJSON(p partition.Partition) PartitionJSON {
	pj := PartitionJSON{Number: p.Number, Name: p.Name, Start: p.Offset(), Size: p.Size(),
		StartLBA: p.FirstLBA, EndLBA: p.LastLBA, Attributes: p.Attributes}
	if p.MBRType != 0 {
		pj.MBRType = fmt.Sprintf("%#02x", p.MBRType)
	} else {
		pj.TypeGUID, pj.TypeName, pj.PartitionGUID = p.Type.String(), partition.TypeName(p.Type), p.GUID.String()
	}
	return pj
}

// personality probes dev with the driver registry and opens it read-only
// with the driver that claims it.
func personality(dev pmem.Device) *PersonalityJSON {
	drv, desc := block.Probe(dev)
	p := &PersonalityJSON{Driver: drv.Name, Description: desc}
	bd, err := drv.Open(dev, block.OpenOptions{ReadOnly: true})
	if err != nil {
		p.Error = err.Error()
		return p
	}
	defer bd.Close()
	i := describe("", dev, bd, drv)
	p.Format, p.Version, p.Offset, p.LBASize = i.Format, i.Version, i.Offset, i.LBASize
	p.SectorSize, p.Sectors, p.UUID, p.ParentUUID = i.SectorSize, i.Sectors, i.UUID, i.ParentUUID
	p.Arenas, p.ReadOnly, p.FromBackup = len(i.Arenas), i.ReadOnly, i.FromBackup
	return p
}

// printDevice prints one device as an lsblk-style tree.
func printDevice(w io.Writer, d DeviceJSON) {
	if d.Error != "" {
		fmt.Fprintf(w, "%s: %s\n", d.Path, d.Error)
		return
	}
	fmt.Fprintf(w, "%s  %s  %s\n", d.Path, humanSize(d.Size), d.Mode)
	if t := d.PartitionTable; t != nil {
		switch {
		case t.Error != "":
			fmt.Fprintf(w, "  partition table: %s\n", t.Error)
		case t.Type == "gpt":
			fmt.Fprintf(w, "  gpt, disk guid %s, %d entries, usable LBAs %d-%d\n", t.DiskGUID, t.Entries, t.FirstUsable, t.LastUsable)
		default:
			fmt.Fprintf(w, "  %s, disk signature %s\n", t.Type, t.DiskSignature)
		}
		for _, m := range t.Warnings {
			fmt.Fprintf(w, "  WARNING: %s\n", m)
		}
	}
	if d.Personality != nil {
		fmt.Fprintf(w, "  └─ %s\n", personalityLine(d.Personality))
	}
	if len(d.Partitions) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for i, p := range d.Partitions {
		branch := "├─"
		if i == len(d.Partitions)-1 {
			branch = "└─"
		}
		typ := p.TypeName
		if typ == "" {
			typ = p.TypeGUID
		}
		if p.MBRType != "" {
			typ = "mbr type " + p.MBRType
		}
		fmt.Fprintf(tw, "  %s%d\t%s\t%s\tat %d\t%s\t%s\n", branch, p.Number, quoteName(p.Name), humanSize(p.Size), p.Start, typ,
			personalityLine(p.Personality))
	}
	tw.Flush()
}

func quoteName(s string) string {
	if s == "" {
		return "-"
	}
	return fmt.Sprintf("%q", s)
}

func personalityLine(p *PersonalityJSON) string {
	var b strings.Builder
	b.WriteString(p.Driver)
	switch {
	case p.Error != "":
		fmt.Fprintf(&b, ": ERROR %s", p.Error)
	case p.Driver == "btt":
		fmt.Fprintf(&b, " %s (%s), %d sectors of %d bytes (lbasize %d), %d arena(s), uuid %s", p.Version, p.Format,
			p.Sectors, p.SectorSize, p.LBASize, p.Arenas, p.UUID)
	default:
		fmt.Fprintf(&b, ", %d sectors of %d bytes", p.Sectors, p.SectorSize)
	}
	if p.FromBackup {
		b.WriteString(", read-only: primary info block damaged")
	} else if p.ReadOnly {
		b.WriteString(", read-only")
	}
	return b.String()
}

// humanSize prints bytes in binary units with one decimal.
func humanSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	v, u := float64(n), 0
	for v >= unit && u < 5 {
		v /= unit
		u++
	}
	return fmt.Sprintf("%.1f %ciB", v, "KMGTPE"[u-1])
}
