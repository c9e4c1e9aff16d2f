package partition

import (
	"fmt"
	"hash/crc32"

	"github.com/nvblk/nvblk/pmem"
)

// Spec asks for one partition.
type Spec struct {
	// Size in bytes, a multiple of 512. 0 means the rest of the device
	// (only for the last Spec), ending on an Alignment boundary (or, if
	// that leaves nothing, on a 4 KiB page boundary).
	Size int64
	// Name is the GPT partition name: at most 36 UTF-16 code units.
	Name string
	// Type is the partition type GUID; zero means LinuxFilesystemData.
	Type GUID
	// GUID is the unique partition GUID; zero means a random one.
	GUID GUID
	// Attributes are the GPT attribute bits.
	Attributes uint64
}

// Options control Plan and Create.
type Options struct {
	// DiskGUID is the disk GUID; zero means a random one.
	DiskGUID GUID
	// Alignment of partition starts in bytes, a multiple of 512;
	// 0 means DefaultAlignment (1 MiB).
	Alignment int64
	// Entries is the number of partition entries (each 128 bytes);
	// 0 means DefaultEntries (128). At most MaxEntries.
	Entries int
	// Wipe (Create only) zeroes the first and last WipeBytes of every new
	// partition, so that a signature left by earlier content (a BTT info
	// block or its backup, a PMDK pool header) is not probed.
	Wipe bool
}

// Plan lays out a GPT with the given partitions on a device of size
// bytes, numbered 1, 2, ... in order, each starting on an Alignment
// boundary. It writes nothing.
func Plan(size int64, specs []Spec, opt Options) (*Table, error) {
	align := opt.Alignment
	if align == 0 {
		align = DefaultAlignment
	}
	if align < SectorSize || align%SectorSize != 0 {
		return nil, fmt.Errorf("%w: alignment %d is not a positive multiple of %d", ErrLayout, align, SectorSize)
	}
	nent := opt.Entries
	if nent == 0 {
		nent = DefaultEntries
	}
	if nent < 1 || nent > MaxEntries {
		return nil, fmt.Errorf("%w: %d partition entries (want 1 to %d)", ErrLayout, nent, MaxEntries)
	}
	if len(specs) > nent {
		return nil, fmt.Errorf("%w: %d partitions but only %d entries", ErrLayout, len(specs), nent)
	}
	arrayLBAs := uint64((nent*EntrySize + SectorSize - 1) / SectorSize)
	nLBA := uint64(size / SectorSize)
	if size <= 0 || nLBA < 3+2*arrayLBAs {
		return nil, fmt.Errorf("%w: a %d-byte device is too small for a GPT", ErrLayout, size)
	}
	last := nLBA - 1
	t := &Table{Kind: KindGPT, DiskGUID: opt.DiskGUID, FirstUsableLBA: 2 + arrayLBAs,
		LastUsableLBA: last - arrayLBAs - 1, LastLBA: last, Entries: nent, EntrySize: EntrySize}
	if t.DiskGUID.IsZero() {
		t.DiskGUID = NewGUID()
	}
	alignLBAs := uint64(align / SectorSize)
	next := roundUp(t.FirstUsableLBA, alignLBAs)
	for i, s := range specs {
		n := i + 1
		if _, err := encodeName(s.Name); err != nil {
			return nil, err
		}
		if s.Size < 0 || s.Size%SectorSize != 0 {
			return nil, fmt.Errorf("%w: partition %d: size %d is not a multiple of %d bytes", ErrLayout, n, s.Size, SectorSize)
		}
		if s.Size == 0 && i != len(specs)-1 {
			return nil, fmt.Errorf("%w: partition %d: only the last partition can take the rest of the device", ErrLayout, n)
		}
		if next > t.LastUsableLBA {
			return nil, fmt.Errorf("%w: partition %d does not fit: no space left after LBA %d", ErrLayout, n, next-1)
		}
		var end uint64
		if s.Size == 0 {
			// The rest ends on an alignment boundary (sgdisk and sfdisk
			// align ends too), or at least on a page boundary.
			endx := (t.LastUsableLBA + 1) / alignLBAs * alignLBAs
			if endx <= next {
				endx = t.LastUsableLBA + 1
			}
			sectors := (endx - next) &^ (pageSize/SectorSize - 1)
			if sectors == 0 {
				return nil, fmt.Errorf("%w: partition %d (rest of the device) would be empty", ErrLayout, n)
			}
			end = next + sectors - 1
		} else {
			sectors := uint64(s.Size / SectorSize)
			end = next + sectors - 1
			if end > t.LastUsableLBA || end < next {
				return nil, fmt.Errorf("%w: partition %d (%d bytes) does not fit: %d bytes left from byte %d",
					ErrLayout, n, s.Size, int64(t.LastUsableLBA-next+1)*SectorSize, int64(next)*SectorSize)
			}
		}
		p := Partition{Number: n, Name: s.Name, Type: s.Type, GUID: s.GUID, Attributes: s.Attributes, FirstLBA: next, LastLBA: end}
		if p.Type.IsZero() {
			p.Type = LinuxFilesystemData
		}
		if p.GUID.IsZero() {
			p.GUID = NewGUID()
		}
		t.Partitions = append(t.Partitions, p)
		next = roundUp(end+1, alignLBAs)
	}
	return t, nil
}

func roundUp(x, a uint64) uint64 { return (x + a - 1) / a * a }

// Write writes t as a GPT on dev: the backup entry array and header at
// the end first, then the primary ones, then the protective MBR, each
// durable before the next, so that an interrupted Write leaves at least
// one valid copy of the old or the new table in most cases. t must be a
// GPT planned for (or read from) a device of dev's size. Entries not used
// by t's partitions are zeroed.
func (t *Table) Write(dev pmem.Device) error {
	if t.Kind != KindGPT {
		return fmt.Errorf("%w: can only write a GPT, not %q", ErrLayout, t.Kind)
	}
	nLBA := uint64(dev.Size() / SectorSize)
	if nLBA == 0 || t.LastLBA != nLBA-1 {
		return fmt.Errorf("%w: the table is for a device with last LBA %d, this one has %d sectors", ErrLayout, t.LastLBA, nLBA)
	}
	if t.EntrySize != EntrySize || t.Entries < 1 || t.Entries > MaxEntries {
		return fmt.Errorf("%w: %d entries of %d bytes (nvblk writes 1 to %d entries of %d bytes)", ErrLayout, t.Entries, t.EntrySize, MaxEntries, EntrySize)
	}
	arrayLBAs := uint64((t.Entries*EntrySize + SectorSize - 1) / SectorSize)
	if t.FirstUsableLBA < 2+arrayLBAs || t.LastUsableLBA+arrayLBAs+1 > t.LastLBA || t.FirstUsableLBA > t.LastUsableLBA {
		return fmt.Errorf("%w: usable LBAs %d-%d overlap the entry arrays", ErrLayout, t.FirstUsableLBA, t.LastUsableLBA)
	}
	array := make([]byte, arrayLBAs*SectorSize)
	for _, p := range t.Partitions {
		if p.Number < 1 || p.Number > t.Entries {
			return fmt.Errorf("%w: partition number %d outside 1-%d", ErrLayout, p.Number, t.Entries)
		}
		if p.FirstLBA > p.LastLBA || p.FirstLBA < t.FirstUsableLBA || p.LastLBA > t.LastUsableLBA {
			return fmt.Errorf("%w: partition %d: LBAs %d-%d outside the usable LBAs %d-%d", ErrLayout, p.Number, p.FirstLBA, p.LastLBA, t.FirstUsableLBA, t.LastUsableLBA)
		}
		if p.Type.IsZero() {
			return fmt.Errorf("%w: partition %d has no type GUID", ErrLayout, p.Number)
		}
		off := (p.Number - 1) * EntrySize
		if !allZero(array[off : off+EntrySize]) {
			return fmt.Errorf("%w: partition number %d used twice", ErrLayout, p.Number)
		}
		e := entry{typ: p.Type, guid: p.GUID, first: p.FirstLBA, last: p.LastLBA, attrs: p.Attributes, name: p.Name}
		if err := e.encode(array[off:]); err != nil {
			return err
		}
	}
	arrayCRC := crc32.ChecksumIEEE(array[:t.Entries*EntrySize])
	h := header{revision: gptRevision, headerSize: gptHeaderSize, firstUsable: t.FirstUsableLBA, lastUsable: t.LastUsableLBA,
		diskGUID: t.DiskGUID, numEntries: uint32(t.Entries), entrySize: EntrySize, entriesCRC: arrayCRC}
	block := make([]byte, SectorSize)

	// Backup: entries just before the last LBA, header at the last LBA.
	bh := h
	bh.myLBA, bh.altLBA, bh.entriesLBA = t.LastLBA, 1, t.LastLBA-arrayLBAs
	if err := writeDurable(dev, array, int64(bh.entriesLBA)*SectorSize); err != nil {
		return err
	}
	bh.encode(block)
	if err := writeDurable(dev, block, int64(t.LastLBA)*SectorSize); err != nil {
		return err
	}
	// Primary: header at LBA 1, entries from LBA 2.
	ph := h
	ph.myLBA, ph.altLBA, ph.entriesLBA = 1, t.LastLBA, 2
	if err := writeDurable(dev, array, 2*SectorSize); err != nil {
		return err
	}
	ph.encode(block)
	if err := writeDurable(dev, block, SectorSize); err != nil {
		return err
	}
	encodeProtectiveMBR(block, nLBA)
	return writeDurable(dev, block, 0)
}

func writeDurable(dev pmem.Device, p []byte, off int64) error {
	if _, err := dev.WriteAtPersist(p, off); err != nil {
		return fmt.Errorf("partition: write at byte %d: %w", off, err)
	}
	return nil
}

// Create plans a GPT for dev (see Plan), zeroes the ends of the new
// partitions when opt.Wipe is set, and writes the table. Whatever table
// dev held is replaced.
func Create(dev pmem.Device, specs []Spec, opt Options) (*Table, error) {
	t, err := Plan(dev.Size(), specs, opt)
	if err != nil {
		return nil, err
	}
	if opt.Wipe {
		zeros := make([]byte, WipeBytes)
		for _, p := range t.Partitions {
			n := min(int64(WipeBytes), p.Size())
			if err := writeDurable(dev, zeros[:n], p.Offset()); err != nil {
				return nil, err
			}
			if err := writeDurable(dev, zeros[:n], p.Offset()+p.Size()-n); err != nil {
				return nil, err
			}
		}
	}
	if err := t.Write(dev); err != nil {
		return nil, err
	}
	return t, nil
}
