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
			return Open(dev, Options{ReadOnly: opt.ReadOnly})
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
	return ""
}
