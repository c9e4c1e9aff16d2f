package nslabel

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/nvblk/nvblk/pmem"
)

// CommonSizes are the label area sizes Locate tries when not told one:
// qemu's minimum label-size (128 KiB, also what real NVDIMMs carry) and
// its doublings up to 2 MiB.
var CommonSizes = []int64{128 << 10, 256 << 10, 512 << 10, 1 << 20, 2 << 20}

// ErrNoLabels: the device has no label area at its end.
var ErrNoLabels = errors.New("nslabel: no label area")

// Namespace is one pmem namespace a label describes: an extent of the
// device (qemu maps DIMM address 0 to byte 0 of the backing file).
type Namespace struct {
	Number     int    // 0-based, in DPA order (ndctl's namespaceR.N)
	UUID       string // lowercase 8-4-4-4-12
	Name       string
	Offset     int64 // byte offset in the device (the label's DPA)
	Size       int64
	LBASize    uint64
	ClaimClass string // btt, btt2, pfn, dax, none, unknown (ClaimClass of the label)
	Cookie     uint64 // interleave-set cookie
	Slot       uint32
	Label      Label
	Err        error // why it cannot be addressed as an extent (interleaved, outside the device...)
}

// Problem is something wrong in a label area.
type Problem struct {
	Error   bool   // an error (else a warning)
	Code    string // label-index, label-outside, label-overlap, label-skipped, label-interleaved
	Offset  int64  // device byte offset of the structure
	Message string
}

// Labels is a label area found on a device.
type Labels struct {
	Offset     int64 // byte offset of the area in the device
	Size       int64
	Area       *Area
	Namespaces []Namespace
	Problems   []Problem
}

// Version is the label format, "1.1" or "1.2".
func (l *Labels) Version() string { return l.Area.Version() }

// DataSize is the size of the DIMM's address space: the device before the
// label area.
func (l *Labels) DataSize() int64 { return l.Offset }

// Locate finds the label area at the end of dev: the last size bytes for
// the first size in sizes (CommonSizes if empty) whose first or second
// index block carries the index signature. It never looks anywhere else,
// so data inside the device cannot be mistaken for labels. It returns
// ErrNoLabels if no size has the signature, and an error wrapping
// ErrNoIndex (with the Labels, whose Problems say why) if the signature
// is there but neither index block is valid.
func Locate(dev pmem.Device, sizes []int64) (*Labels, error) {
	if len(sizes) == 0 {
		sizes = CommonSizes
	}
	sig := make([]byte, len(IndexSignature))
	for _, size := range sizes {
		off := dev.Size() - size
		if size < MinAreaSize || size > MaxAreaSize || off < 0 {
			continue
		}
		found := false
		for _, ls := range []int{LabelSizeV11, LabelSizeV12} {
			for _, at := range []int64{0, int64(IndexSize(int(size), ls))} {
				if _, err := dev.ReadAt(sig, off+at); err == nil && string(sig) == IndexSignature {
					found = true
				}
			}
		}
		if !found {
			continue
		}
		buf := make([]byte, size)
		if _, err := dev.ReadAt(buf, off); err != nil {
			return nil, fmt.Errorf("nslabel: reading the label area at %#x: %w", off, err)
		}
		l := &Labels{Offset: off, Size: size}
		a, err := Parse(buf)
		l.Area = a
		if err != nil {
			l.Problems = append(l.Problems, Problem{Error: true, Code: "label-index", Offset: off,
				Message: fmt.Sprintf("label area of %d bytes at %#x: no valid index block (index 0: %v; index 1: %v)",
					size, off, a.Index[0].Err, a.Index[1].Err)})
			return l, fmt.Errorf("label area of %d bytes at %#x: %w", size, off, err)
		}
		l.namespaces()
		return l, nil
	}
	return nil, ErrNoLabels
}

// namespaces turns the active labels into namespaces and records problems.
func (l *Labels) namespaces() {
	a := l.Area
	isize := IndexSize(int(l.Size), a.LabelSize)
	slotOff := func(slot uint32) int64 { return l.Offset + int64(2*isize) + int64(slot)*int64(a.LabelSize) }
	for i := range a.Index {
		if a.Index[i].Err != nil {
			l.Problems = append(l.Problems, Problem{Code: "label-index", Offset: l.Offset + int64(a.Index[i].Offset),
				Message: fmt.Sprintf("label index block %d is invalid (%v); index %d is used", i, a.Index[i].Err, a.Current)})
		}
	}
	for _, s := range a.Skipped {
		l.Problems = append(l.Problems, Problem{Code: "label-skipped", Offset: slotOff(s.Slot),
			Message: fmt.Sprintf("label slot %d is marked in use but is invalid (%v); Linux ignores it", s.Slot, s.Err)})
	}
	for _, lb := range a.Labels {
		ns := Namespace{UUID: lb.UUIDString(), Name: lb.Name, Offset: int64(lb.DPA), Size: int64(lb.RawSize),
			LBASize: lb.LBASize, ClaimClass: lb.ClaimClass(), Cookie: lb.ISetCookie, Slot: lb.Slot, Label: lb}
		switch {
		case lb.Flags&FlagLocal != 0:
			ns.Err = errors.New("a BLK-mode (local) label, not a pmem namespace")
		case lb.NLabel > 1:
			ns.Err = fmt.Errorf("interleaved over %d DIMMs (position %d): this device holds only a part of it", lb.NLabel, lb.Position)
			l.Problems = append(l.Problems, Problem{Code: "label-interleaved", Offset: slotOff(lb.Slot),
				Message: fmt.Sprintf("label slot %d (namespace %s) is one of %d labels of an interleaved namespace", lb.Slot, ns.UUID, lb.NLabel)})
		case lb.RawSize == 0:
			ns.Err = errors.New("size 0")
		case lb.DPA > uint64(l.Offset) || lb.RawSize > uint64(l.Offset)-lb.DPA:
			ns.Err = fmt.Errorf("extent [%#x, +%#x) is outside the %#x bytes before the label area", lb.DPA, lb.RawSize, l.Offset)
			l.Problems = append(l.Problems, Problem{Error: true, Code: "label-outside", Offset: slotOff(lb.Slot),
				Message: fmt.Sprintf("label slot %d (namespace %s): %v", lb.Slot, ns.UUID, ns.Err)})
		}
		l.Namespaces = append(l.Namespaces, ns)
	}
	sort.SliceStable(l.Namespaces, func(i, j int) bool { return l.Namespaces[i].Offset < l.Namespaces[j].Offset })
	for i := range l.Namespaces {
		l.Namespaces[i].Number = i
	}
	for i := range l.Namespaces {
		for j := i + 1; j < len(l.Namespaces); j++ {
			p, q := &l.Namespaces[i], &l.Namespaces[j]
			if p.Err != nil || q.Err != nil || q.Offset >= p.Offset+p.Size {
				continue
			}
			err := fmt.Errorf("overlaps namespace %d (%s) at [%#x, +%#x)", p.Number, p.UUID, p.Offset, p.Size)
			if p.UUID == q.UUID {
				err = fmt.Errorf("a second label of namespace %s overlapping the first", p.UUID)
			}
			q.Err = err
			l.Problems = append(l.Problems, Problem{Error: true, Code: "label-overlap", Offset: slotOff(q.Slot),
				Message: fmt.Sprintf("label slot %d (namespace %d, %s): %v", q.Slot, q.Number, q.UUID, err)})
		}
	}
}

// Select returns the namespace that sel names: its number (0-based, as
// ndctl's namespaceR.N) or its uuid.
func (l *Labels) Select(sel string) (*Namespace, error) {
	for i := range l.Namespaces {
		ns := &l.Namespaces[i]
		if sel == fmt.Sprint(ns.Number) || strings.EqualFold(sel, ns.UUID) {
			if ns.Err != nil {
				return nil, fmt.Errorf("namespace %d (%s): %w", ns.Number, ns.UUID, ns.Err)
			}
			return ns, nil
		}
	}
	var have []string
	for _, ns := range l.Namespaces {
		have = append(have, fmt.Sprintf("%d (%s)", ns.Number, ns.UUID))
	}
	if len(have) == 0 {
		return nil, fmt.Errorf("no namespace %q: the label area holds no namespace", sel)
	}
	return nil, fmt.Errorf("no namespace %q (have %s)", sel, strings.Join(have, ", "))
}
