package partition

import (
	"fmt"
	"sort"

	"github.com/nvblk/nvblk/pmem"
)

// Kind is the partition table format.
type Kind string

// Partition table kinds.
const (
	KindGPT Kind = "gpt"
	KindMBR Kind = "mbr"
)

// Partition is one partition. LBAs are 512-byte sectors of the device.
type Partition struct {
	// Number is 1-based: the GPT entry index + 1, or the MBR slot (1-4),
	// as Linux numbers partitions (sda1, loop0p1, pmem0p1).
	Number int
	// Name is the GPT partition name ("" for MBR).
	Name string
	// Type is the GPT partition type GUID (zero for MBR).
	Type GUID
	// GUID is the GPT unique partition GUID (zero for MBR).
	GUID GUID
	// Attributes are the GPT attribute bits (for MBR: 0x80 if the slot
	// is marked bootable).
	Attributes uint64
	// MBRType is the MBR partition type byte (0 for GPT).
	MBRType byte
	// FirstLBA and LastLBA are the first and last sector, inclusive.
	FirstLBA, LastLBA uint64
}

// Offset is the partition's first byte on the device.
func (p Partition) Offset() int64 { return int64(p.FirstLBA) * SectorSize }

// Size is the partition's size in bytes.
func (p Partition) Size() int64 { return int64(p.LastLBA-p.FirstLBA+1) * SectorSize }

// Table is a partition table as read from a device or planned for one.
// It is plain data, not tied to a device.
type Table struct {
	Kind Kind
	// DiskGUID is the GPT disk GUID.
	DiskGUID GUID
	// DiskSignature is the MBR disk signature (bytes 440-443).
	DiskSignature uint32
	// FirstUsableLBA and LastUsableLBA bound the partitions (GPT).
	FirstUsableLBA, LastUsableLBA uint64
	// LastLBA is the device's last 512-byte sector, where the backup GPT
	// header belongs.
	LastLBA uint64
	// Entries and EntrySize describe the GPT partition entry array.
	Entries, EntrySize int
	// Partitions in increasing Number order.
	Partitions []Partition
	// FromBackup reports that the primary GPT is damaged and the table
	// was read from the backup at the end of the device.
	FromBackup bool
	// Warnings lists what Read found wrong but could work around: a
	// damaged primary or backup, entries left out, overlaps.
	Warnings []string
}

// Lookup returns partition number n.
func (t *Table) Lookup(n int) (Partition, error) {
	for _, p := range t.Partitions {
		if p.Number == n {
			return p, nil
		}
	}
	nums := make([]int, 0, len(t.Partitions))
	for _, p := range t.Partitions {
		nums = append(nums, p.Number)
	}
	if len(nums) == 0 {
		return Partition{}, fmt.Errorf("%w: %d (the %s has no partitions)", ErrNoPartition, n, t.Kind)
	}
	return Partition{}, fmt.Errorf("%w: %d (the %s has partitions %v)", ErrNoPartition, n, t.Kind, nums)
}

// Window returns partition n of dev as a pmem.Window: offsets are
// translated by the partition's start and bounded by its size. Closing
// the window does not close dev.
func (t *Table) Window(dev pmem.Device, n int) (*pmem.Window, error) {
	p, err := t.Lookup(n)
	if err != nil {
		return nil, err
	}
	w, err := pmem.NewWindow(dev, p.Offset(), p.Size())
	if err != nil {
		return nil, fmt.Errorf("partition %d: %w", n, err)
	}
	return w, nil
}

// Open reads dev's partition table and returns partition n as a window,
// with the table it was found in.
func Open(dev pmem.Device, n int) (*pmem.Window, *Table, error) {
	t, err := Read(dev)
	if err != nil {
		return nil, nil, err
	}
	w, err := t.Window(dev, n)
	if err != nil {
		return nil, t, err
	}
	return w, t, nil
}

func (t *Table) warnf(format string, args ...any) {
	t.Warnings = append(t.Warnings, fmt.Sprintf(format, args...))
}

// checkPartitions sorts the partitions and warns about overlaps.
func (t *Table) checkPartitions() {
	sort.Slice(t.Partitions, func(i, j int) bool { return t.Partitions[i].Number < t.Partitions[j].Number })
	byStart := append([]Partition(nil), t.Partitions...)
	sort.Slice(byStart, func(i, j int) bool { return byStart[i].FirstLBA < byStart[j].FirstLBA })
	for i := 1; i < len(byStart); i++ {
		a, b := byStart[i-1], byStart[i]
		if b.FirstLBA <= a.LastLBA {
			t.warnf("partitions %d and %d overlap (LBAs %d-%d and %d-%d)", a.Number, b.Number, a.FirstLBA, a.LastLBA, b.FirstLBA, b.LastLBA)
		}
	}
}
