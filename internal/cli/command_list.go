package cli

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/nslabel"
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
	PartitionTable *TableJSON `json:"partition_table,omitempty"`
	// LabelArea is present when the device is a labelled NVDIMM image:
	// then Namespaces lists what its labels describe, each with its
	// personality, and the device has no Personality of its own.
	LabelArea   *LabelAreaJSON   `json:"label_area,omitempty"`
	Namespaces  []NamespaceJSON  `json:"namespaces,omitempty"`
	Partitions  []PartitionJSON  `json:"partitions,omitempty"`
	Personality *PersonalityJSON `json:"personality,omitempty"` // without a (valid) table
}

// LabelAreaJSON describes the namespace label storage area of a device.
type LabelAreaJSON struct {
	Offset    int64    `json:"offset"` // bytes; the area runs to the end of the device
	Size      int64    `json:"size"`
	Version   string   `json:"version,omitempty"` // label format: 1.1, 1.2
	LabelSize int      `json:"label_size,omitempty"`
	Slots     uint32   `json:"slots,omitempty"`
	FreeSlots int      `json:"free_slots,omitempty"`
	Index     int      `json:"current_index"` // 0 or 1
	Sequence  uint32   `json:"sequence,omitempty"`
	Problems  []string `json:"problems,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// NamespaceJSON is one namespace of a label area; Offset and Size are
// bytes of the device.
type NamespaceJSON struct {
	Number      int              `json:"number"` // --namespace N (ndctl's namespaceR.N)
	UUID        string           `json:"uuid"`
	Name        string           `json:"name"`
	Offset      int64            `json:"offset"`
	Size        int64            `json:"size"`
	LBASize     uint64           `json:"lbasize"`
	ClaimClass  string           `json:"claim_class"`         // btt, btt2, pfn, dax, none, unknown
	Mode        string           `json:"mode,omitempty"`      // as ndctl: sector (a BTT), fsdax, devdax, raw
	Cookie      string           `json:"isetcookie"`          // 0x-prefixed hex
	QEMUSlot    *int             `json:"qemu_slot,omitempty"` // the qemu NVDIMM slot whose cookie the label carries
	Slot        uint32           `json:"slot"`
	Error       string           `json:"error,omitempty"`
	Personality *PersonalityJSON `json:"personality,omitempty"`
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
		Short: "Show devices, their namespaces or partitions and what each holds (BTT, PMDK pool, raw)",
		Long: `list shows each PATH as a tree, like ndctl list and lsblk: the device (size,
persistence mode); for a labelled NVDIMM image its label area (version, slots,
sequence number) and namespaces (number, uuid, name, size, claim class, mode);
otherwise its partition table and partitions (number, name, start, size, type and
partition GUIDs); and the personality of the device, of each namespace or of each
partition, found by probing the registered block drivers (btt, pmemblk, raw). It
never writes.`,
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
	dev, err := pmem.Open(path, pmem.Options{Logger: slog.Default(), ReadOnly: true, NoLock: forceShare})
	if err != nil {
		d.Error, d.err = err.Error(), err
		return d
	}
	defer dev.Close()
	d.Size, d.Mode = dev.Size(), dev.Mode()
	if l, err := locateLabels(dev, target{}); l != nil || err != nil {
		d.LabelArea, d.Namespaces = labelsJSON(dev, l, err)
		if err == nil {
			return d
		}
	}
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

// labelsJSON describes a label area and its namespaces (each probed in
// its own extent); err is Locate's.
func labelsJSON(dev pmem.Device, l *nslabel.Labels, err error) (*LabelAreaJSON, []NamespaceJSON) {
	if l == nil {
		return &LabelAreaJSON{Error: err.Error()}, nil
	}
	lj := &LabelAreaJSON{Offset: l.Offset, Size: l.Size}
	for _, p := range l.Problems {
		lj.Problems = append(lj.Problems, p.Message)
	}
	if err != nil {
		lj.Error = err.Error()
		return lj, nil
	}
	a := l.Area
	ix := &a.Index[a.Current]
	lj.Version, lj.LabelSize, lj.Slots, lj.Index, lj.Sequence = a.Version(), a.LabelSize, ix.NSlot, a.Current, ix.Seq
	for s := uint32(0); s < ix.NSlot; s++ {
		if ix.SlotFree(s) {
			lj.FreeSlots++
		}
	}
	nss := []NamespaceJSON{}
	for _, ns := range l.Namespaces {
		nj := NamespaceJSON{Number: ns.Number, UUID: ns.UUID, Name: ns.Name, Offset: ns.Offset, Size: ns.Size,
			LBASize: ns.LBASize, ClaimClass: ns.ClaimClass, Cookie: fmt.Sprintf("%#x", ns.Cookie), Slot: ns.Slot}
		if slot, ok := nslabel.QEMUSlotOf(a.Version(), ns.Cookie); ok {
			nj.QEMUSlot = &slot
		}
		if ns.Err != nil {
			nj.Error = ns.Err.Error()
			nss = append(nss, nj)
			continue
		}
		w, err := pmem.NewWindow(dev, ns.Offset, ns.Size)
		if err != nil {
			nj.Error = err.Error()
			nss = append(nss, nj)
			continue
		}
		nt := &nsTarget{Window: w, parent: dev, ns: ns, labels: l}
		nj.Personality = personality(nt)
		w.Close()
		nj.Mode = namespaceMode(ns.ClaimClass, nj.Personality)
		nss = append(nss, nj)
	}
	return lj, nss
}

// namespaceMode is ndctl's mode of a namespace as Linux would use it:
// fsdax or devdax for those claim classes (whatever the namespace
// holds), sector when it holds a BTT (or a damaged one its label names),
// raw otherwise.
func namespaceMode(claim string, p *PersonalityJSON) string {
	switch {
	case claim == "pfn":
		return "fsdax"
	case claim == "dax":
		return "devdax"
	case p != nil && (p.Driver == "btt" || (p.Driver == "unclaimed" && (claim == "btt" || claim == "btt2"))):
		return "sector"
	}
	return "raw"
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
	if l := d.LabelArea; l != nil {
		switch {
		case l.Error != "":
			fmt.Fprintf(w, "  labels: ERROR %s\n", l.Error)
		default:
			fmt.Fprintf(w, "  labels v%s at %d (%s): %d slots of %d bytes, %d free, index %d current (sequence %d)\n",
				l.Version, l.Offset, humanSize(l.Size), l.Slots, l.LabelSize, l.FreeSlots, l.Index, l.Sequence)
		}
		for _, m := range l.Problems {
			fmt.Fprintf(w, "  WARNING: %s\n", m)
		}
	}
	if d.Personality != nil {
		fmt.Fprintf(w, "  └─ %s\n", personalityLine(d.Personality))
	}
	for i, ns := range d.Namespaces {
		branch := "├─"
		if i == len(d.Namespaces)-1 {
			branch = "└─"
		}
		qs := ""
		if ns.QEMUSlot != nil {
			qs = fmt.Sprintf("  qemu slot %d", *ns.QEMUSlot)
		}
		fmt.Fprintf(w, "  %snamespace %d  %s  %s  at %d  uuid %s  claim %s  mode %s%s\n", branch, ns.Number, quoteName(ns.Name),
			humanSize(ns.Size), ns.Offset, ns.UUID, ns.ClaimClass, ns.Mode, qs)
		indent := "│ "
		if i == len(d.Namespaces)-1 {
			indent = "  "
		}
		switch {
		case ns.Error != "":
			fmt.Fprintf(w, "  %s└─ ERROR %s\n", indent, ns.Error)
		case ns.Personality != nil:
			fmt.Fprintf(w, "  %s└─ %s\n", indent, personalityLine(ns.Personality))
		}
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
