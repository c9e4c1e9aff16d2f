package nslabel

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/pmem"
)

// Label sizes of the two label formats.
const (
	LabelSizeV11 = 128
	LabelSizeV12 = 256
)

// LabelSizeFor returns the label size of a format version, "1.1" or "1.2".
func LabelSizeFor(version string) (int, error) {
	switch version {
	case "1.1":
		return LabelSizeV11, nil
	case "1.2":
		return LabelSizeV12, nil
	}
	return 0, fmt.Errorf("nslabel: label version %q (want 1.1 or 1.2)", version)
}

// MinAreaSize is the smallest label area Init lays out (qemu's minimum
// label-size); MaxAreaSize bounds what is read into memory.
const (
	MinAreaSize = 128 << 10
	MaxAreaSize = 16 << 20
)

// EncodeLabel returns the on-media bytes of l in a slot of labelSize bytes
// (128 or 256): the v1.2 fields and checksum only in 256-byte labels.
func EncodeLabel(l *Label, labelSize int) []byte {
	b := make([]byte, labelSize)
	copy(b[0:16], l.UUID[:])
	copy(b[16:80], l.Name) // NSLABEL_NAME_LEN: longer names are cut
	binary.LittleEndian.PutUint32(b[80:], l.Flags)
	binary.LittleEndian.PutUint16(b[84:], l.NLabel)
	binary.LittleEndian.PutUint16(b[86:], l.Position)
	binary.LittleEndian.PutUint64(b[88:], l.ISetCookie)
	binary.LittleEndian.PutUint64(b[96:], l.LBASize)
	binary.LittleEndian.PutUint64(b[104:], l.DPA)
	binary.LittleEndian.PutUint64(b[112:], l.RawSize)
	binary.LittleEndian.PutUint32(b[120:], l.Slot)
	if labelSize >= LabelSizeV12 {
		b[124] = l.Align
		copy(b[128:144], l.TypeGUID[:])
		copy(b[144:160], l.AbstractionGUID[:])
		binary.LittleEndian.PutUint64(b[248:], Fletcher64(b))
	}
	return b
}

// encodeIndex builds index block i (of two) of an area of areaSize bytes
// with labelSize-byte labels: the kernel's nd_label_write_index.
func encodeIndex(i, areaSize, labelSize int, seq uint32, nslot uint32, free []byte) []byte {
	isize := IndexSize(areaSize, labelSize)
	b := make([]byte, isize)
	copy(b, IndexSignature)
	b[19] = byte(labelSize >> 8) // labelsize: 0 for 128, 1 for 256
	binary.LittleEndian.PutUint32(b[20:], seq)
	binary.LittleEndian.PutUint64(b[24:], uint64(i*isize))
	binary.LittleEndian.PutUint64(b[32:], uint64(isize))
	binary.LittleEndian.PutUint64(b[40:], uint64((1-i)*isize))
	binary.LittleEndian.PutUint64(b[48:], uint64(2*isize))
	binary.LittleEndian.PutUint32(b[56:], nslot)
	binary.LittleEndian.PutUint16(b[60:], 1)
	minor := uint16(1)
	if labelSize >= LabelSizeV12 {
		minor = 2
	}
	binary.LittleEndian.PutUint16(b[62:], minor)
	copy(b[indexHeader:], free)
	binary.LittleEndian.PutUint64(b[64:], Fletcher64(b))
	return b
}

// Init lays out an empty label area of size bytes at byte off of dev, as
// the kernel's init_labels and ndctl's init-labels do: the slots zeroed,
// then index block 0 with sequence number 3 and index block 1 with 2,
// every slot free. Index 0 is then current.
func Init(dev pmem.Device, off, size int64, version string) error {
	ls, err := LabelSizeFor(version)
	if err != nil {
		return err
	}
	if size < MinAreaSize || size > MaxAreaSize {
		return fmt.Errorf("nslabel: label area of %d bytes (want %d to %d)", size, MinAreaSize, MaxAreaSize)
	}
	if err := pmem.CheckRange("label area", off, size, dev.Size()); err != nil {
		return err
	}
	isize := IndexSize(int(size), ls)
	if isize == 0 {
		return fmt.Errorf("nslabel: label area of %d bytes too small for %d-byte labels", size, ls)
	}
	nslot := NumSlots(int(size), ls)
	free := make([]byte, isize-indexHeader)
	for s := range nslot {
		free[s/8] |= 1 << (s % 8)
	}
	if _, err := dev.WriteAtPersist(make([]byte, size-int64(2*isize)), off+int64(2*isize)); err != nil {
		return err
	}
	for i, seq := range []uint32{3, 2} {
		if _, err := dev.WriteAtPersist(encodeIndex(i, int(size), ls, seq, uint32(nslot), free), off+int64(i*isize)); err != nil {
			return err
		}
	}
	return nil
}

// ErrFull: no free label slot.
var ErrFull = errors.New("nslabel: no free label slot")

// Update changes the labels of the area of size bytes at byte off of dev
// with the kernel's protocol (__pmem_label_update): put, if not nil, is
// written to the lowest slot the current index marks free; then the other
// index block is written with the next sequence number and a free bitmap
// in which put's slot is in use and the slots of the labels drop selects
// are free. Each write is durable before the next starts, and nothing in
// use is overwritten, so a crash at any point leaves either the old set of
// labels (the old index is still the newer valid one: a torn new index
// fails its checksum) or the new one. put.Slot is set to the slot used.
func Update(dev pmem.Device, off, size int64, put *Label, drop func(*Label) bool) error {
	if size < MinAreaSize || size > MaxAreaSize {
		return fmt.Errorf("nslabel: label area of %d bytes (want %d to %d)", size, MinAreaSize, MaxAreaSize)
	}
	buf := make([]byte, size)
	if _, err := dev.ReadAt(buf, off); err != nil {
		return err
	}
	a, err := Parse(buf)
	if err != nil {
		return err
	}
	cur := &a.Index[a.Current]
	isize := IndexSize(int(size), a.LabelSize)
	free := append([]byte(nil), cur.Free...)
	if put != nil {
		slot := -1
		for s := uint32(0); s < cur.NSlot; s++ {
			if cur.SlotFree(s) {
				slot = int(s)
				break
			}
		}
		if slot < 0 {
			return ErrFull
		}
		put.Slot = uint32(slot)
		b := EncodeLabel(put, a.LabelSize)
		if _, err := dev.WriteAtPersist(b, off+int64(2*isize+slot*a.LabelSize)); err != nil {
			return err
		}
		free[slot/8] &^= 1 << (slot % 8)
	}
	if drop != nil {
		for i := range a.Labels {
			l := &a.Labels[i]
			if drop(l) && (put == nil || l.Slot != put.Slot) {
				free[l.Slot/8] |= 1 << (l.Slot % 8)
			}
		}
	}
	next := 1 - a.Current
	ix := encodeIndex(next, int(size), a.LabelSize, nextSeq(cur.Seq), cur.NSlot, free)
	_, err = dev.WriteAtPersist(ix, off+int64(next*isize))
	return err
}

// QEMUSerial is the serial number qemu gives the NVDIMM in slot (its
// nvdimm_slot_to_sn): 0x123456 plus the slot.
func QEMUSerial(slot int) uint32 { return 0x123456 + uint32(slot) }

// InterleaveSetCookie is the cookie a label must carry for Linux to
// accept it on a region of one DIMM with this serial number at region
// offset 0, as drivers/acpi/nfit's acpi_nfit_init_interleave_set computes
// it: the Fletcher64 of the region offset and serial number (v1.1 labels,
// cookie1), or of those plus the vendor id, manufacturing date and
// location (v1.2, cookie2). vendor is the DIMM's vendor id (qemu: 0x8086,
// no manufacturing data).
func InterleaveSetCookie(version string, serial uint32, vendor uint16) uint64 {
	if version == "1.1" {
		b := make([]byte, 16) // nfit_set_info
		binary.LittleEndian.PutUint32(b[8:], serial)
		return Fletcher64(b)
	}
	b := make([]byte, 48) // nfit_set_info2
	binary.LittleEndian.PutUint32(b[8:], serial)
	binary.LittleEndian.PutUint16(b[12:], vendor)
	return Fletcher64(b)
}

// QEMUVendor is the vendor id of qemu's NVDIMMs.
const QEMUVendor = 0x8086

// QEMUSlotOf returns the qemu NVDIMM slot (0 to 255) whose interleave-set
// cookie a label of this format version carries, if any: the slot the
// image must be attached in for Linux to accept its labels.
func QEMUSlotOf(version string, cookie uint64) (int, bool) {
	for slot := range 256 {
		if InterleaveSetCookie(version, QEMUSerial(slot), QEMUVendor) == cookie {
			return slot, true
		}
	}
	return 0, false
}
