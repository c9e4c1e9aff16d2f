package cli

import (
	"fmt"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/pmem"
)

// openDevice maps PATH.
func openDevice(path string, readOnly bool) (pmem.Device, error) {
	return pmem.Open(path, pmem.Options{ReadOnly: readOnly})
}

// openBlock maps PATH and opens the block device that claims it.
func openBlock(path string, readOnly bool) (block.Device, block.Driver, pmem.Device, error) {
	dev, err := openDevice(path, readOnly)
	if err != nil {
		return nil, block.Driver{}, nil, err
	}
	bd, drv, err := block.Open(dev, block.OpenOptions{ReadOnly: readOnly})
	if err != nil {
		dev.Close()
		return nil, drv, nil, fmt.Errorf("%s: %w", path, err)
	}
	return bd, drv, dev, nil
}
