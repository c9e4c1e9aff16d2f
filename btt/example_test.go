package btt_test

import (
	"bytes"
	"fmt"
	"log"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// Lay out a BTT on a device, write a sector atomically, then reopen the
// BTT as Linux's nd_btt would and read the sector back.
func Example() {
	dev, err := pmem.NewRAM(32 << 20)
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()

	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: 4096})
	if err != nil {
		log.Fatal(err)
	}
	sector := make([]byte, b.SectorSize())
	copy(sector, "hello, BTT")
	if err := b.WriteSectors(sector, 7); err != nil { // atomic and durable
		log.Fatal(err)
	}
	if err := b.Close(); err != nil {
		log.Fatal(err)
	}

	b, err = btt.Open(dev, btt.Options{})
	if err != nil {
		log.Fatal(err)
	}
	defer b.Close()
	got := make([]byte, b.SectorSize())
	if err := b.ReadSectors(got, 7); err != nil {
		log.Fatal(err)
	}
	fmt.Println(b.Version(), b.Sectors(), "sectors of", b.SectorSize(), "bytes")
	fmt.Printf("%s\n", bytes.TrimRight(got, "\x00"))
	// Output:
	// 1.1 7920 sectors of 4096 bytes
	// hello, BTT
}

// Check a BTT offline, as `nvblk check` does: a report of findings and
// an fsck-style exit status.
func ExampleCheck() {
	dev, err := pmem.NewRAM(32 << 20)
	if err != nil {
		log.Fatal(err)
	}
	defer dev.Close()
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V20, LBASize: 512})
	if err != nil {
		log.Fatal(err)
	}
	b.Close()

	// Damage the backup info block of arena 0 (the last 4 KiB of the
	// arena): Check reports it, and with Repair restores it.
	a := b.Arenas()[0]
	if _, err := dev.WriteAtPersist([]byte("scribble"), a.Offset+int64(a.Info.Info2Off)+100); err != nil {
		log.Fatal(err)
	}
	rep, err := btt.Check(dev, btt.CheckOptions{})
	if err != nil {
		log.Fatal(err)
	}
	for _, f := range rep.Findings {
		fmt.Println(f.Code)
	}
	fmt.Println("exit", rep.ExitCode())
	rep, err = btt.Check(dev, btt.CheckOptions{Repair: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("after --repair: exit", rep.ExitCode())
	// Output:
	// info2-restore
	// exit 4
	// after --repair: exit 1
}
