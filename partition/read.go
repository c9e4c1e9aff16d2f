package partition

import (
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/nvblk/nvblk/pmem"
)

// minGPTSectors is the smallest device that can hold a GPT: protective
// MBR, two headers, two one-sector entry arrays.
const minGPTSectors = 5

// gptCopy is one validated copy (primary or backup) of the GPT.
type gptCopy struct {
	hdr     header
	entries []byte
}

// errNoSignature is returned by readGPT when the block holds no GPT
// signature at all (a zeroed or never-written header).
var errNoSignature = errors.New("no GPT signature")

// Read reads the partition table of dev: a GPT (primary, or the backup
// when the primary is damaged; see Table.FromBackup and Table.Warnings),
// else the primary partitions of an MBR. It returns ErrNoTable when there
// is neither, and a *CorruptError (ErrCorrupt) when a GPT is present but
// no copy of it is valid. It never writes.
func Read(dev pmem.Device) (*Table, error) {
	nLBA := uint64(dev.Size() / SectorSize)
	if nLBA < minGPTSectors {
		return nil, ErrNoTable
	}
	last := nLBA - 1
	block := make([]byte, SectorSize)
	if _, err := dev.ReadAt(block, 0); err != nil {
		return nil, fmt.Errorf("partition: read MBR: %w", err)
	}
	mbr, mbrSig := decodeMBR(block)
	protective := false
	if mbrSig {
		for _, e := range mbr {
			if e.typ == mbrTypeGPT {
				protective = true
			}
		}
	}

	prim, perr := readGPT(dev, 1, last, true)
	if perr != nil && !errors.Is(perr, errNoSignature) && !errors.As(perr, new(*CorruptError)) {
		return nil, perr // an I/O error, not a verdict on the table
	}
	backLBA := last
	if perr == nil && prim.hdr.altLBA != last && prim.hdr.altLBA > 1 && prim.hdr.altLBA < last {
		backLBA = prim.hdr.altLBA
	}
	back, berr := readGPT(dev, backLBA, last, false)
	if berr != nil && !errors.Is(berr, errNoSignature) && !errors.As(berr, new(*CorruptError)) {
		return nil, berr
	}

	switch {
	case perr == nil:
		t := tableFrom(prim, last)
		if !protective {
			t.warnf("no protective MBR (LBA 0 has no 0xEE entry); Linux ignores such a GPT unless booted with gpt")
		}
		if backLBA != last {
			t.warnf("the backup GPT header is at LBA %d, not at the last LBA %d (the device grew?)", backLBA, last)
		}
		if berr != nil {
			t.warnf("backup GPT damaged (%s); rewrite the table to restore it", msgOf(berr))
		} else {
			compareCopies(t, prim, back)
		}
		t.decodeEntries(prim)
		return t, nil
	case berr == nil:
		t := tableFrom(back, last)
		t.FromBackup = true
		t.warnf("primary GPT damaged (%s); using the backup at LBA %d", msgOf(perr), backLBA)
		if !protective {
			t.warnf("no protective MBR (LBA 0 has no 0xEE entry)")
		}
		t.decodeEntries(back)
		return t, nil
	case errors.Is(perr, errNoSignature) && errors.Is(berr, errNoSignature) && !protective:
		return readMBR(block, mbr, mbrSig, nLBA)
	default:
		return nil, &CorruptError{Where: "GPT", LBA: -1,
			Msg: fmt.Sprintf("no valid copy: primary: %s; backup: %s", msgOf(perr), msgOf(berr))}
	}
}

func msgOf(err error) string {
	var ce *CorruptError
	if errors.As(err, &ce) {
		return fmt.Sprintf("%s at LBA %d: %s", ce.Where, ce.LBA, ce.Msg)
	}
	return err.Error()
}

func tableFrom(c *gptCopy, last uint64) *Table {
	return &Table{Kind: KindGPT, DiskGUID: c.hdr.diskGUID, FirstUsableLBA: c.hdr.firstUsable,
		LastUsableLBA: c.hdr.lastUsable, LastLBA: last, Entries: int(c.hdr.numEntries), EntrySize: int(c.hdr.entrySize)}
}

// readGPT reads and validates the GPT header at lba and its entry array.
// Every field that sizes the allocation or the read is checked first.
func readGPT(dev pmem.Device, lba, last uint64, primary bool) (*gptCopy, error) {
	where := "backup GPT header"
	if primary {
		where = "primary GPT header"
	}
	bad := func(format string, args ...any) error {
		return &CorruptError{Where: where, LBA: int64(lba), Msg: fmt.Sprintf(format, args...)}
	}
	b := make([]byte, SectorSize)
	if _, err := dev.ReadAt(b, int64(lba)*SectorSize); err != nil {
		return nil, fmt.Errorf("partition: read %s at LBA %d: %w", where, lba, err)
	}
	if string(b[:8]) != gptSignature {
		if allZero(b) {
			return nil, &noSig{bad("zeroed (no \"EFI PART\" signature)")}
		}
		return nil, &noSig{bad("no \"EFI PART\" signature")}
	}
	h := decodeHeader(b)
	if h.headerSize < gptHeaderSize || h.headerSize > SectorSize {
		return nil, bad("header size %d outside [%d, %d]", h.headerSize, gptHeaderSize, SectorSize)
	}
	if c := headerCRC(b, h.headerSize); c != h.crc {
		return nil, bad("bad header CRC32 (stored %#08x, computed %#08x)", h.crc, c)
	}
	if h.myLBA != lba {
		return nil, bad("MyLBA is %d", h.myLBA)
	}
	if h.firstUsable > h.lastUsable || h.lastUsable > last || h.firstUsable < 2 {
		return nil, bad("usable LBAs %d-%d outside the device's 0-%d", h.firstUsable, h.lastUsable, last)
	}
	if h.entrySize < EntrySize || h.entrySize > MaxEntrySize || h.entrySize&(h.entrySize-1) != 0 {
		return nil, bad("partition entry size %d (want 128 x 2^n, at most %d)", h.entrySize, MaxEntrySize)
	}
	if h.numEntries == 0 || h.numEntries > MaxEntries {
		return nil, bad("%d partition entries (want 1 to %d)", h.numEntries, MaxEntries)
	}
	arrayBytes := uint64(h.numEntries) * uint64(h.entrySize)
	if arrayBytes > MaxArrayBytes {
		return nil, bad("partition entry array of %d bytes (at most %d)", arrayBytes, MaxArrayBytes)
	}
	arrayLBAs := (arrayBytes + SectorSize - 1) / SectorSize
	aFirst, aLast := h.entriesLBA, h.entriesLBA+arrayLBAs-1
	if aFirst < 1 || aFirst > last || aLast > last || aLast < aFirst ||
		(aFirst <= lba && lba <= aLast) ||
		(aFirst <= h.lastUsable && h.firstUsable <= aLast) {
		return nil, bad("partition entry array at LBAs %d-%d overlaps the header, the usable LBAs %d-%d or the device end %d",
			aFirst, aLast, h.firstUsable, h.lastUsable, last)
	}
	entries := make([]byte, arrayBytes)
	if _, err := dev.ReadAt(entries, int64(aFirst)*SectorSize); err != nil {
		return nil, fmt.Errorf("partition: read %s entries at LBA %d: %w", where, aFirst, err)
	}
	if c := crc32.ChecksumIEEE(entries); c != h.entriesCRC {
		return nil, &CorruptError{Where: where[:len(where)-len("header")] + "entries", LBA: int64(aFirst),
			Msg: fmt.Sprintf("bad partition entry array CRC32 (stored %#08x, computed %#08x)", h.entriesCRC, c)}
	}
	return &gptCopy{hdr: h, entries: entries}, nil
}

// noSig marks a CorruptError that means "no GPT here at all".
type noSig struct{ err error }

func (e *noSig) Error() string   { return e.err.Error() }
func (e *noSig) Unwrap() []error { return []error{e.err, errNoSignature} }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// decodeEntries fills t.Partitions from a validated copy. Entries with
// inverted LBAs or LBAs past the device are left out with a warning.
func (t *Table) decodeEntries(c *gptCopy) {
	es := int(c.hdr.entrySize)
	for i := 0; i < int(c.hdr.numEntries); i++ {
		e := decodeEntry(c.entries[i*es : i*es+EntrySize])
		if e.typ.IsZero() {
			continue
		}
		n := i + 1
		if e.first > e.last || e.last > t.LastLBA {
			t.warnf("partition %d: LBAs %d-%d are inverted or past the device's last LBA %d; ignored", n, e.first, e.last, t.LastLBA)
			continue
		}
		if e.first < t.FirstUsableLBA || e.last > t.LastUsableLBA {
			t.warnf("partition %d: LBAs %d-%d are outside the usable LBAs %d-%d", n, e.first, e.last, t.FirstUsableLBA, t.LastUsableLBA)
		}
		t.Partitions = append(t.Partitions, Partition{Number: n, Name: e.name, Type: e.typ, GUID: e.guid,
			Attributes: e.attrs, FirstLBA: e.first, LastLBA: e.last})
	}
	t.checkPartitions()
}

// compareCopies warns when the primary and backup GPT disagree (UEFI:
// the primary wins; the backup should be rewritten).
func compareCopies(t *Table, p, b *gptCopy) {
	ph, bh := p.hdr, b.hdr
	var diffs []string
	if ph.diskGUID != bh.diskGUID {
		diffs = append(diffs, "disk GUID")
	}
	if ph.firstUsable != bh.firstUsable || ph.lastUsable != bh.lastUsable {
		diffs = append(diffs, "usable LBAs")
	}
	if ph.numEntries != bh.numEntries || ph.entrySize != bh.entrySize || ph.entriesCRC != bh.entriesCRC {
		diffs = append(diffs, "partition entries")
	}
	if ph.altLBA != bh.myLBA || bh.altLBA != ph.myLBA {
		diffs = append(diffs, "header locations")
	}
	if len(diffs) > 0 {
		t.warnf("primary and backup GPT differ (%v); the primary is used", diffs)
	}
}

// readMBR returns the primary partitions of a classic MBR, or ErrNoTable
// when LBA 0 is not one (no 0x55AA signature, a boot indicator other than
// 0x00/0x80, or no partition at all).
func readMBR(block []byte, ents [4]mbrEntry, sig bool, nLBA uint64) (*Table, error) {
	if !sig {
		return nil, ErrNoTable
	}
	for _, e := range ents {
		if e.boot != 0 && e.boot != 0x80 {
			return nil, ErrNoTable
		}
	}
	t := &Table{Kind: KindMBR, LastLBA: nLBA - 1, FirstUsableLBA: 1, LastUsableLBA: nLBA - 1,
		DiskSignature: uint32(block[mbrDiskSigOff]) | uint32(block[mbrDiskSigOff+1])<<8 |
			uint32(block[mbrDiskSigOff+2])<<16 | uint32(block[mbrDiskSigOff+3])<<24}
	used := 0
	for i, e := range ents {
		if e.typ == 0 || e.count == 0 {
			continue
		}
		used++
		n := i + 1
		switch e.typ {
		case 0x05, 0x0F, 0x85:
			t.warnf("partition %d is an extended partition (type %#02x); its logical partitions are not read", n, e.typ)
			continue
		}
		first, last := uint64(e.start), uint64(e.start)+uint64(e.count)-1
		if first == 0 || last >= nLBA {
			t.warnf("partition %d: LBAs %d-%d are outside the device (%d sectors); ignored", n, first, last, nLBA)
			continue
		}
		var attrs uint64
		if e.boot == 0x80 {
			attrs = 0x80
		}
		t.Partitions = append(t.Partitions, Partition{Number: n, MBRType: e.typ, Attributes: attrs, FirstLBA: first, LastLBA: last})
	}
	if used == 0 {
		return nil, ErrNoTable
	}
	t.checkPartitions()
	return t, nil
}
