// Package nslabel reads NVDIMM namespace labels: the label storage area of
// a DIMM (qemu keeps it in the last label-size bytes of an nvdimm's backing
// file), as Linux's drivers/nvdimm/label.c validates and reads it.
//
// The area holds two index blocks followed by an array of label slots:
//
//	+-----------+-----------+--------+--------+-----+----------+
//	| nsindex 0 | nsindex 1 | slot 0 | slot 1 | ... | slot n-1 |
//	+-----------+-----------+--------+--------+-----+----------+
//
// Neither is updated in place: a new label goes to a free slot, then the
// other index block is written with the next sequence number (1, 2, 3, 1,
// ...) and a free bitmap in which that slot is in use. The current index is
// the valid one with the newer sequence number; the active labels are the
// slots its bitmap marks in use whose contents are valid.
//
// Label format v1.1 has 128-byte labels; v1.2 (UEFI 2.7) has 256-byte labels
// with a type GUID, an abstraction GUID (the claim class: which personality,
// BTT 1.1, BTT 2.0, PFN or DAX, owns the namespace) and a checksum. The
// abstraction GUID is what makes Linux look for a BTT 2.0 at namespace
// offset 0; the kernel's btt_claim_class.
//
// The package reads an area (Parse, the decoder the kernel's validation
// rules define), finds it on a device (Locate: by the index block signature
// at the end of a backing file, as qemu places it), turns its labels into
// namespaces (extents of the device), and writes it (Init, Update) with the
// same crash-safe protocol as the kernel: a new label never overwrites a
// label in use, and the index block written last is the commit point.
package nslabel

import (
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// On-media constants (drivers/nvdimm/label.h).
const (
	IndexSignature = "NAMESPACE_INDEX\x00"
	IndexAlign     = 256 // NSINDEX_ALIGN: index blocks are multiples of this
	indexHeader    = 72  // struct nd_namespace_index without the free bitmap
	seqMask        = 3   // NSINDEX_SEQ_MASK

	FlagReadOnly = 0x1 // NSLABEL_FLAG_ROLABEL
	FlagLocal    = 0x2 // NSLABEL_FLAG_LOCAL (BLK-mode labels)
	FlagBTT      = 0x4 // NSLABEL_FLAG_BTT (v1.1)
	FlagUpdating = 0x8 // NSLABEL_FLAG_UPDATING: a multi-label update is in progress
)

// GUID is a UEFI GUID as stored on media: the first three fields little
// endian (Linux's guid_t).
type GUID [16]byte

// ParseGUID parses the canonical text form.
func ParseGUID(s string) (GUID, error) {
	var g GUID
	h := strings.ReplaceAll(s, "-", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 16 || len(s) != 36 {
		return g, fmt.Errorf("nslabel: bad GUID %q", s)
	}
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:], b[8:])
	return g, nil
}

func mustGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String returns the canonical text form.
func (g GUID) String() string {
	return fmt.Sprintf("%02x%02x%02x%02x-%02x%02x-%02x%02x-%x-%x",
		g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8:10], g[10:])
}

// Abstraction GUIDs (claim classes) of v1.2 labels, and the NFIT address
// range type of persistent memory.
var (
	GUIDBTT   = mustGUID("8aed63a2-29a2-4c66-8b12-f05d15d3922a") // Linux BTT: version 1.1 at namespace byte 4096
	GUIDBTT2  = mustGUID("18633bfc-1735-4217-8ac9-17239282d3f8") // UEFI BTT: version 2.0 at byte 0
	GUIDPFN   = mustGUID("266400ba-fb9f-4677-bcb0-968f11d0d225") // fsdax (struct page) info block
	GUIDDAX   = mustGUID("97a86d9c-3cdd-4eda-986f-5068b4f80088") // device-dax
	GUIDSPAPM = mustGUID("66f0d379-b4f3-4074-ac43-0d3318b78cdb") // ACPI NFIT SPA range type: persistent memory
)

// Fletcher64 is the kernel's nd_fletcher64 over little-endian 32-bit words
// (the checksum of index blocks, v1.2 labels and BTT info blocks).
func Fletcher64(b []byte) uint64 {
	var lo uint32
	var hi uint64
	for i := 0; i+4 <= len(b); i += 4 {
		lo += binary.LittleEndian.Uint32(b[i:])
		hi += uint64(lo)
	}
	return hi<<32 | uint64(lo)
}

// nextSeq is nd_inc_seq: 1 -> 2 -> 3 -> 1 (0 stays invalid).
func nextSeq(s uint32) uint32 {
	return [4]uint32{0, 2, 3, 1}[s&seqMask]
}

// bestSeq is the kernel's best_seq: the newer of two sequence numbers.
func bestSeq(a, b uint32) uint32 {
	a, b = a&seqMask, b&seqMask
	switch {
	case a == 0 || a == b:
		return b
	case b == 0:
		return a
	case nextSeq(a) == b:
		return b
	default:
		return a
	}
}

// Index is one index block.
type Index struct {
	Offset    int    // byte offset in the area
	LabelSize int    // label slot size it declares (128 << labelsize field for v1.2, else 128)
	Seq       uint32 // sequence number (1, 2 or 3)
	MyOff     uint64
	MySize    uint64
	OtherOff  uint64
	LabelOff  uint64
	NSlot     uint32
	Major     uint16
	Minor     uint16
	Checksum  uint64
	Free      []byte // bitmap, bit set = slot free (little-endian bit order)
	Err       error  // why the kernel would reject it; nil if valid
}

// SlotFree reports whether the index marks slot as free.
func (ix *Index) SlotFree(slot uint32) bool {
	if int(slot/8) >= len(ix.Free) {
		return true
	}
	return ix.Free[slot/8]&(1<<(slot%8)) != 0
}

// Label is one namespace label.
type Label struct {
	Slot            uint32
	UUID            [16]byte // namespace uuid, in the byte order it prints in
	Name            string
	Flags           uint32
	NLabel          uint16 // labels in the set (DIMMs of the interleave set)
	Position        uint16
	ISetCookie      uint64 // interleave-set cookie: ties the label to the DIMMs' identity
	LBASize         uint64
	DPA             uint64 // start in the DIMM's address space
	RawSize         uint64
	Align           uint8  // v1.2
	TypeGUID        GUID   // v1.2
	AbstractionGUID GUID   // v1.2: the claim class
	Checksum        uint64 // v1.2
	Err             error  // why the kernel would skip the slot; nil if valid
	raw             []byte
}

// UUIDString formats the namespace uuid as sysfs shows it.
func (l *Label) UUIDString() string {
	u := l.UUID
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:])
}

// ClaimClass names the abstraction GUID as the kernel's to_nvdimm_cclass
// does: "btt", "btt2", "pfn", "dax", "none" (null GUID) or "unknown".
func (l *Label) ClaimClass() string {
	switch l.AbstractionGUID {
	case GUIDBTT:
		return "btt"
	case GUIDBTT2:
		return "btt2"
	case GUIDPFN:
		return "pfn"
	case GUIDDAX:
		return "dax"
	case GUID{}:
		return "none"
	}
	return "unknown"
}

// Area is a parsed label storage area.
type Area struct {
	Size      int
	LabelSize int      // 128 (v1.1) or 256 (v1.2)
	Index     [2]Index // both index blocks, valid or not
	Current   int      // the current index block (0 or 1)
	Labels    []Label  // active labels of the current index, valid ones only
	Skipped   []Label  // slots in use whose label the kernel would skip
}

// ErrNoIndex: neither index block is valid (an uninitialized area: Linux
// then treats the DIMM as label-less).
var ErrNoIndex = errors.New("nslabel: no valid namespace index")

// Version is the label format of the current index, "1.1" or "1.2".
func (a *Area) Version() string {
	ix := &a.Index[a.Current]
	return fmt.Sprintf("%d.%d", ix.Major, ix.Minor)
}

// NumSlots is nvdimm_num_label_slots: slots of labelSize bytes, one free
// bitmap bit each, fit in the area.
func NumSlots(areaSize, labelSize int) int {
	return areaSize / (labelSize + 1)
}

// IndexSize is sizeof_namespace_index: the header and the free bitmap,
// rounded up to IndexAlign; 0 if two of them and the slots do not fit.
func IndexSize(areaSize, labelSize int) int {
	nslot := NumSlots(areaSize, labelSize)
	space := areaSize - nslot*labelSize
	size := (indexHeader + (nslot+7)/8 + IndexAlign - 1) / IndexAlign * IndexAlign
	if 2*size <= space {
		return size
	}
	return 0
}

// Parse reads a label area the way Linux does (nd_label_validate, then the
// active labels of the current index): it tries 128-byte and then 256-byte
// labels, validates both index blocks, picks the current one, and returns
// the slots it marks in use.
func Parse(area []byte) (*Area, error) {
	var firstErr *Area
	for _, ls := range []int{128, 256} {
		a := parseWith(area, ls)
		if a.Current >= 0 {
			return a, nil
		}
		if firstErr == nil {
			firstErr = a
		}
	}
	return firstErr, fmt.Errorf("%w (index 0: %v; index 1: %v)", ErrNoIndex, firstErr.Index[0].Err, firstErr.Index[1].Err)
}

func parseWith(area []byte, labelSize int) *Area {
	a := &Area{Size: len(area), LabelSize: labelSize, Current: -1}
	isize := IndexSize(len(area), labelSize)
	var valid [2]bool
	for i := range a.Index {
		ix := &a.Index[i]
		ix.Offset = i * isize
		if isize == 0 || ix.Offset+isize > len(area) {
			ix.Err = fmt.Errorf("label area of %d bytes too small for %d-byte labels", len(area), labelSize)
			continue
		}
		b := area[ix.Offset : ix.Offset+isize]
		ix.Seq = binary.LittleEndian.Uint32(b[20:])
		ix.MyOff = binary.LittleEndian.Uint64(b[24:])
		ix.MySize = binary.LittleEndian.Uint64(b[32:])
		ix.OtherOff = binary.LittleEndian.Uint64(b[40:])
		ix.LabelOff = binary.LittleEndian.Uint64(b[48:])
		ix.NSlot = binary.LittleEndian.Uint32(b[56:])
		ix.Major = binary.LittleEndian.Uint16(b[60:])
		ix.Minor = binary.LittleEndian.Uint16(b[62:])
		ix.Checksum = binary.LittleEndian.Uint64(b[64:])
		ix.Free = b[indexHeader:]
		ix.LabelSize = 128
		if int(ix.Major)*100+int(ix.Minor) >= 102 {
			ix.LabelSize = 128 << min(b[19], 16)
		}
		ix.Err = validateIndex(b, ix, i, isize, labelSize, len(area))
		valid[i] = ix.Err == nil
	}
	switch {
	case valid[0] && valid[1]:
		if bestSeq(a.Index[0].Seq, a.Index[1].Seq) == a.Index[1].Seq&seqMask {
			a.Current = 1
		} else {
			a.Current = 0
		}
	case valid[0]:
		a.Current = 0
	case valid[1]:
		a.Current = 1
	default:
		return a
	}
	ix := &a.Index[a.Current]
	base := 2 * isize
	for slot := uint32(0); slot < ix.NSlot; slot++ {
		if ix.SlotFree(slot) {
			continue
		}
		off := base + int(slot)*labelSize
		l := decodeLabel(area[off:off+labelSize], labelSize)
		l.Err = validateLabel(&l, slot, labelSize)
		if l.Err != nil {
			a.Skipped = append(a.Skipped, l)
			continue
		}
		a.Labels = append(a.Labels, l)
	}
	return a
}

func validateIndex(b []byte, ix *Index, i, isize, labelSize, areaSize int) error {
	if string(b[:16]) != IndexSignature {
		return errors.New("bad signature")
	}
	if ix.LabelSize != labelSize {
		return fmt.Errorf("label size %d, probing %d", ix.LabelSize, labelSize)
	}
	c := make([]byte, isize)
	copy(c, b)
	clear(c[64:72])
	if sum := Fletcher64(c); sum != ix.Checksum {
		return fmt.Errorf("checksum %#x, computed %#x", ix.Checksum, sum)
	}
	if ix.Seq&seqMask == 0 {
		return fmt.Errorf("sequence number %#x", ix.Seq)
	}
	if ix.MyOff != uint64(i*isize) {
		return fmt.Errorf("myoff %#x, want %#x", ix.MyOff, i*isize)
	}
	if ix.OtherOff != uint64((1-i)*isize) {
		return fmt.Errorf("otheroff %#x, want %#x", ix.OtherOff, (1-i)*isize)
	}
	if ix.MySize > uint64(isize) || ix.MySize < indexHeader {
		return fmt.Errorf("mysize %#x", ix.MySize)
	}
	if uint64(ix.NSlot)*uint64(labelSize)+2*uint64(isize) > uint64(areaSize) {
		return fmt.Errorf("nslot %d does not fit", ix.NSlot)
	}
	return nil
}

func decodeLabel(b []byte, size int) Label {
	var l Label
	l.raw = b
	copy(l.UUID[:], b[0:16])
	l.Name = strings.TrimRight(string(b[16:80]), "\x00")
	l.Flags = binary.LittleEndian.Uint32(b[80:])
	l.NLabel = binary.LittleEndian.Uint16(b[84:])
	l.Position = binary.LittleEndian.Uint16(b[86:])
	l.ISetCookie = binary.LittleEndian.Uint64(b[88:])
	l.LBASize = binary.LittleEndian.Uint64(b[96:])
	l.DPA = binary.LittleEndian.Uint64(b[104:])
	l.RawSize = binary.LittleEndian.Uint64(b[112:])
	l.Slot = binary.LittleEndian.Uint32(b[120:])
	if size >= 256 {
		l.Align = b[124]
		copy(l.TypeGUID[:], b[128:144])
		copy(l.AbstractionGUID[:], b[144:160])
		l.Checksum = binary.LittleEndian.Uint64(b[248:])
	}
	return l
}

// validateLabel is the kernel's slot_valid.
func validateLabel(l *Label, slot uint32, size int) error {
	if l.Slot != slot {
		return fmt.Errorf("slot %d holds a label for slot %d", slot, l.Slot)
	}
	if (l.DPA|l.RawSize)%4096 != 0 {
		return fmt.Errorf("dpa %#x / rawsize %#x not 4 KiB aligned", l.DPA, l.RawSize)
	}
	if size >= 256 {
		c := make([]byte, size)
		copy(c, l.raw)
		clear(c[248:256])
		if sum := Fletcher64(c); sum != l.Checksum {
			return fmt.Errorf("checksum %#x, computed %#x", l.Checksum, sum)
		}
	}
	return nil
}
