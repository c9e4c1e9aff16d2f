package block_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"

	"github.com/nvblk/nvblk/block"
	_ "github.com/nvblk/nvblk/btt" // registers the BTT driver
	"github.com/nvblk/nvblk/pmem"
)

// Open the block device on a pmem device, whatever driver claims it, and
// use it through the io interfaces with block.NewIO.
func Example() {
	dev, err := pmem.NewRAM(16 << 20)
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	// Nothing on the device: the raw driver (no atomicity) takes it.
	bd, drv, err := block.Open(dev, block.OpenOptions{SectorSize: 4096})
	if err != nil {
		log.Fatal(err)
	}
	defer bd.Close()
	fmt.Println(drv.Name, bd.Sectors(), "sectors of", bd.SectorSize(), "bytes")

	rw := block.NewIO(bd)
	sector := make([]byte, bd.SectorSize())
	copy(sector, "written through io.WriterAt")
	if _, err := rw.WriteAt(sector, 3*4096); err != nil {
		log.Fatal(err)
	}
	r := io.NewSectionReader(rw, 3*4096, 4096)
	got := make([]byte, 4096) // whole sectors
	if _, err := io.ReadFull(r, got); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", bytes.TrimRight(got, "\x00"))

	// Requests must be whole sectors.
	_, err = rw.ReadAt(got[:100], 0)
	fmt.Println(errors.Is(err, block.ErrAlignment))
	// Output:
	// raw 4096 sectors of 4096 bytes
	// written through io.WriterAt
	// true
}
