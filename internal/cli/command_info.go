package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/google/uuid"
	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
	"github.com/nvblk/nvblk/pmemblk"
)

// InfoJSON is the stable output of `nvblk info --json`.
type InfoJSON struct {
	Path       string      `json:"path"`
	DeviceSize int64       `json:"device_size"`
	Mode       pmem.Mode   `json:"mode"`
	Format     string      `json:"format"` // linux, uefi, pmemblk, raw
	Version    string      `json:"version,omitempty"`
	Offset     int64       `json:"offset"`
	LBASize    uint32      `json:"lbasize"`
	SectorSize int         `json:"sector_size"`
	Sectors    uint64      `json:"sectors"`
	UUID       string      `json:"uuid,omitempty"`
	ParentUUID string      `json:"parent_uuid,omitempty"`
	ReadOnly   bool        `json:"read_only"`
	FromBackup bool        `json:"from_backup,omitempty"`
	Truncated  bool        `json:"truncated,omitempty"`
	Arenas     []ArenaJSON `json:"arenas,omitempty"`
	Pool       *PoolJSON   `json:"pool,omitempty"` // pmemblk pools only
	// Namespace is the namespace of a labelled image the device is
	// (offsets above are then bytes into the namespace), with its label
	// area.
	Namespace *NamespaceJSON `json:"namespace,omitempty"`
	LabelArea *LabelAreaJSON `json:"label_area,omitempty"`
}

// ArenaJSON describes one arena; offsets are as stored (arena-relative)
// except Offset, the namespace offset of the arena's info block.
type ArenaJSON struct {
	Offset          int64  `json:"offset"`
	ExternalNLBA    uint32 `json:"external_nlba"`
	InternalNLBA    uint32 `json:"internal_nlba"`
	ExternalLBASize uint32 `json:"external_lbasize"`
	InternalLBASize uint32 `json:"internal_lbasize"`
	NFree           uint32 `json:"nfree"`
	Flags           uint32 `json:"flags"`
	DataOff         uint64 `json:"dataoff"`
	MapOff          uint64 `json:"mapoff"`
	LogOff          uint64 `json:"logoff"`
	Info2Off        uint64 `json:"info2off"`
	NextOff         uint64 `json:"nextoff"`
	LogIndex        [2]int `json:"log_index"`
}

func newInfoCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info [--json] [PATH]",
		Short: "Describe the device and the BTT on it (PATH defaults to ./nvblk.img, created if missing)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			path, def := pathArg(args)
			if def {
				if err := ensureDefault(path, cmd.ErrOrStderr()); err != nil {
					return err
				}
			}
			bd, drv, dev, err := openBlockTarget(path, partitionOf(cmd), pmem.Options{ReadOnly: true, NoLock: forceShareOf(cmd)})
			if err != nil {
				return err
			}
			defer dev.Close()
			defer bd.Close()
			info := describe(path, dev, bd, drv)
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			printInfo(cmd.OutOrStdout(), info)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	addPartitionFlag(cmd)
	addForceShareFlag(cmd)
	addForceRawFlag(cmd)
	return cmd
}

func describe(path string, dev pmem.Device, bd block.Device, drv block.Driver) InfoJSON {
	info := InfoJSON{Path: path, DeviceSize: dev.Size(), Mode: dev.Mode(), Format: drv.Name,
		SectorSize: bd.SectorSize(), Sectors: bd.Sectors(), LBASize: uint32(bd.SectorSize())}
	if p, ok := bd.(*pmemblk.Pool); ok {
		describePool(&info, p)
	}
	if nt, ok := dev.(*nsTarget); ok {
		ns := nt.ns
		info.Namespace = &NamespaceJSON{Number: ns.Number, UUID: ns.UUID, Name: ns.Name, Offset: ns.Offset, Size: ns.Size,
			LBASize: ns.LBASize, ClaimClass: ns.ClaimClass, Cookie: fmt.Sprintf("%#x", ns.Cookie), Slot: ns.Slot}
		a := nt.labels.Area
		ix := &a.Index[a.Current]
		info.LabelArea = &LabelAreaJSON{Offset: nt.labels.Offset, Size: nt.labels.Size, Version: a.Version(),
			LabelSize: a.LabelSize, Slots: ix.NSlot, Index: a.Current, Sequence: ix.Seq}
		for _, p := range nt.labels.Problems {
			info.LabelArea.Problems = append(info.LabelArea.Problems, p.Message)
		}
	}
	if b, ok := bd.(*btt.BTT); ok {
		info.Format = "linux"
		if b.Version().Major >= 2 {
			info.Format = "uefi"
		}
		info.Version = b.Version().String()
		info.Offset = b.InitialOffset()
		info.LBASize = b.LBASize()
		info.UUID = uuid.UUID(b.UUID()).String()
		info.ParentUUID = uuid.UUID(b.ParentUUID()).String()
		info.FromBackup = b.FromBackup()
		info.Truncated = b.Truncated()
		info.ReadOnly = b.FromBackup() || b.Truncated()
		for _, a := range b.Arenas() {
			info.ReadOnly = info.ReadOnly || a.ErrorFlag
			ib := a.Info
			info.Arenas = append(info.Arenas, ArenaJSON{Offset: a.Offset, ExternalNLBA: ib.ExternalNLBA,
				InternalNLBA: ib.InternalNLBA, ExternalLBASize: ib.ExternalLBASize, InternalLBASize: ib.InternalLBASize,
				NFree: ib.NFree, Flags: ib.Flags, DataOff: ib.DataOff, MapOff: ib.MapOff, LogOff: ib.LogOff,
				Info2Off: ib.Info2Off, NextOff: ib.NextOff, LogIndex: a.LogIndex})
		}
	}
	return info
}

func printInfo(w io.Writer, i InfoJSON) {
	fmt.Fprintf(w, "device:      %s (%d bytes, persistence %s)\n", i.Path, i.DeviceSize, i.Mode)
	if ns, l := i.Namespace, i.LabelArea; ns != nil && l != nil {
		fmt.Fprintf(w, "labels:      v%s at byte %d (%d bytes), index %d current (sequence %d)\n", l.Version, l.Offset, l.Size, l.Index, l.Sequence)
		fmt.Fprintf(w, "namespace:   %d %s, uuid %s, %d bytes at byte %d, claim class %s\n", ns.Number, quoteName(ns.Name), ns.UUID, ns.Size, ns.Offset, ns.ClaimClass)
		for _, p := range l.Problems {
			fmt.Fprintf(w, "WARNING:     %s\n", p)
		}
	}
	if i.Pool != nil {
		printPoolInfo(w, i)
		return
	}
	if i.Format == "raw" {
		fmt.Fprintf(w, "format:      raw (no BTT found; %d sectors of %d bytes, no atomicity)\n", i.Sectors, i.SectorSize)
		return
	}
	fmt.Fprintf(w, "format:      %s (BTT %s, info block at byte %d)\n", i.Format, i.Version, i.Offset)
	fmt.Fprintf(w, "uuid:        %s\n", i.UUID)
	fmt.Fprintf(w, "parent uuid: %s\n", i.ParentUUID)
	fmt.Fprintf(w, "sectors:     %d of %d bytes (lbasize %d), %d bytes\n", i.Sectors, i.SectorSize, i.LBASize, i.Sectors*uint64(i.SectorSize))
	if i.FromBackup {
		fmt.Fprintf(w, "WARNING:     a primary info block is damaged; read-only from its backup. Run `nvblk check --repair`.\n")
	}
	if i.Truncated {
		fmt.Fprintf(w, "WARNING:     the device ends before the backup info block: the image was truncated; read-only. Run `nvblk check --repair` to extend it.\n")
	}
	printArenas(w, i.Arenas)
}

func printArenas(w io.Writer, arenas []ArenaJSON) {
	for n, a := range arenas {
		fmt.Fprintf(w, "arena %d:     at %#x: %d external / %d internal blocks of %d bytes, nfree %d, flags %#x, log (%d,%d)\n",
			n, a.Offset, a.ExternalNLBA, a.InternalNLBA, a.InternalLBASize, a.NFree, a.Flags, a.LogIndex[0], a.LogIndex[1])
		fmt.Fprintf(w, "             data %#x map %#x log %#x info2 %#x next %#x\n", a.DataOff, a.MapOff, a.LogOff, a.Info2Off, a.NextOff)
	}
}
