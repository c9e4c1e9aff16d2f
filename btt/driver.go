package btt

import (
	"bytes"
	"fmt"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/nslabel"
	"github.com/nvblk/nvblk/pmem"
)

func init() {
	block.Register(block.Driver{
		Name:     "btt",
		Priority: 100,
		Probe: func(dev pmem.Device) (bool, string) {
			pr, err := probe(dev, nil)
			if err != nil {
				return false, ""
			}
			if pr.backup {
				return true, fmt.Sprintf("BTT %s at %#x (primary info block damaged, backup good)", pr.version, pr.initOff)
			}
			return true, fmt.Sprintf("BTT %s at %#x", pr.version, pr.initOff)
		},
		Open: func(dev pmem.Device, opt block.OpenOptions) (block.Device, error) {
			return Open(dev, Options{ReadOnly: opt.ReadOnly, Logger: opt.Logger})
		},
	})
}

var _ block.Device = (*BTT)(nil)

// AtomicSectors reports true: every sector write is atomic.
func (b *BTT) AtomicSectors() bool { return true }

func init() { block.RegisterRawGuard(rawGuard) }

// rawGuard refuses a device that no driver claimed as raw when it still
// carries a BTT's marks where the BTT keeps them: an info block signature
// at byte 0 or 4096 (a primary whose checksum or geometry is damaged), or
// a valid info block where arena 0's backup (info2) would be, either for
// the device's size or for the size before a label area of one of the
// common sizes (a labelled NVDIMM image opened without its labels).
func rawGuard(dev pmem.Device) string {
	buf := make([]byte, InfoSize)
	for _, v := range []Version{V11, V20} {
		off := v.InitialOffset()
		if readInfo(dev, off, buf) == nil && bytes.Equal(buf[:16], Signature[:]) {
			return fmt.Sprintf("a BTT info block signature at byte %#x with a damaged block (%s) and no valid backup: a damaged BTT (`nvblk check` tells more)",
				off, Verify(buf, nil))
		}
	}
	for _, v := range []Version{V11, V20} {
		off := v.InitialOffset()
		for _, cut := range append([]int64{0}, nslabel.CommonSizes...) {
			b2 := backupOffset(dev.Size()-cut, off, off)
			if b2 < 0 || readInfo(dev, b2, buf) != nil || Verify(buf, nil) != InfoOK {
				continue
			}
			// Arena 0's own info2: it points back to an arena at the
			// BTT's initial offset (a BTT further in, in a partition,
			// has its info2 elsewhere relative to its start).
			if ib := DecodeInfo(buf); ib.Info2Off == 0 || off+int64(ib.Info2Off) != b2 || ib.NextOff != 0 && off+int64(ib.NextOff) > dev.Size() {
				continue
			}
			if cut == 0 {
				return fmt.Sprintf("a valid BTT backup info block at byte %#x (arena 0's info2) but no usable primary: a damaged BTT (`nvblk check --repair` restores it)", b2)
			}
			return fmt.Sprintf("a valid BTT backup info block at byte %#x, where arena 0's info2 lies if the last %d KiB are a namespace label area: a damaged BTT on a labelled image", b2, cut>>10)
		}
	}
	if off, ok := flogAt(dev); ok {
		return fmt.Sprintf("no BTT info block, but a BTT log (flog) at byte %#x where arena 0 keeps it: a BTT whose info blocks are all damaged", off)
	}
	return ""
}

// flogLanes is how many lanes of a candidate log flogAt checks.
const flogLanes = 8

// flogAt looks for arena 0's log where Linux's layout puts it (its offset
// depends on the arena size only, not on the sector size), for both
// versions, for the device's size and for the sizes before a label area
// of a common size: the first flogLanes log groups must each hold a live
// entry (sequence number 1 to 3) and only entries that fit the arena (LBA
// below the external count, map values below the internal count of the
// densest layout). A zeroed or random area does not pass; a BTT's log,
// freshly created or written, does. A device with a partition table
// signature (an MBR boot signature, a GPT header for 512- or 4096-byte
// blocks) is not looked at: the log of a BTT in its last partition lies
// near where a whole-device arena's would.
func flogAt(dev pmem.Device) (int64, bool) {
	sig := make([]byte, 8)
	if _, err := dev.ReadAt(sig[:2], 510); err == nil && sig[0] == 0x55 && sig[1] == 0xAA {
		return 0, false
	}
	for _, off := range []int64{512, 4096} {
		if _, err := dev.ReadAt(sig, off); err == nil && string(sig) == "EFI PART" {
			return 0, false
		}
	}
	buf := make([]byte, flogLanes*LogGroupSize)
	for _, v := range []Version{V11, V20} {
		for _, cut := range append([]int64{0}, nslabel.CommonSizes...) {
			l, err := ComputeLayout(dev.Size()-cut, v, 512, DefaultNFree)
			if err != nil {
				continue
			}
			a := l[0]
			off := a.Off + int64(a.LogOff)
			if _, err := dev.ReadAt(buf, off); err != nil {
				continue
			}
			if flogLooksLive(buf, a) {
				return off, true
			}
		}
	}
	return 0, false
}

func flogLooksLive(buf []byte, a ArenaLayout) bool {
	for lane := range flogLanes {
		g := buf[lane*LogGroupSize : (lane+1)*LogGroupSize]
		live := false
		for slot := range 4 {
			e := DecodeLogEntry(g[slot*LogEntrySize:])
			if e == (LogEntry{}) {
				continue
			}
			if e.Seq == 0 || e.Seq > 3 || e.LBA >= a.ExternalNLBA ||
				e.OldMap&mapLBAMask >= a.InternalNLBA || e.NewMap&mapLBAMask >= a.InternalNLBA {
				if slot < 2 {
					return false
				}
				continue // slots 2 and 3 are padding in the (0,1) format
			}
			live = true
		}
		if !live {
			return false
		}
	}
	return true
}
