package partition_test

import (
	"fmt"
	"log"

	"github.com/nvblk/nvblk/partition"
	"github.com/nvblk/nvblk/pmem"
)

// Partition a device with a GPT, then open a partition: it is a
// pmem.Device of its own (a window), on which a block driver can be
// probed or created as on a whole namespace.
func Example() {
	dev, err := pmem.NewRAM(64 << 20)
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	specs := []partition.Spec{{Name: "data", Size: 16 << 20}, {Name: "rest"}}
	if _, err := partition.Create(dev, specs, partition.Options{}); err != nil {
		log.Fatal(err)
	}

	t, err := partition.Read(dev)
	if err != nil {
		log.Fatal(err)
	}
	for _, p := range t.Partitions {
		fmt.Printf("%d %-4s offset %8d size %8d\n", p.Number, p.Name, p.Offset(), p.Size())
	}

	win, _, err := partition.Open(dev, 2)
	if err != nil {
		log.Fatal(err)
	}
	defer win.Close()
	fmt.Println("partition 2 is a device of", win.Size(), "bytes")
	// Output:
	// 1 data offset  1048576 size 16777216
	// 2 rest offset 17825792 size 48234496
	// partition 2 is a device of 48234496 bytes
}
