package btt

import (
	"fmt"

	"github.com/nvblk/nvblk/block"
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
