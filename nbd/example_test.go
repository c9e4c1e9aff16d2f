package nbd_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/nbd"
	"github.com/nvblk/nvblk/pmem"
)

// Example serves a block device (here raw sectors over 1 MiB of RAM;
// nvblk serve exports a BTT) on a unix socket, then shuts the server
// down, which lets requests in flight finish and flushes the exports.
func Example() {
	ram, err := pmem.NewRAM(1 << 20)
	if err != nil {
		panic(err)
	}
	defer ram.Close()
	dev, err := block.NewRaw(ram, 512, false)
	if err != nil {
		panic(err)
	}
	srv := nbd.NewServer(nbd.Options{})
	if err := srv.AddExport("disk", "1 MiB of RAM", dev, false); err != nil {
		panic(err)
	}
	for _, e := range srv.Exports() {
		fmt.Printf("export %q: %d bytes, %d-byte blocks, read-only %v\n", e.Name, e.Size, e.SectorSize, e.ReadOnly)
	}

	dir, err := os.MkdirTemp("", "nbd-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	ln, err := net.Listen("unix", filepath.Join(dir, "nbd.sock"))
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	// Clients connect to nbd+unix:///disk?socket=DIR/nbd.sock here.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	fmt.Println("shutdown:", srv.Shutdown(ctx))
	fmt.Println("serve:", <-done)
	// Output:
	// export "disk": 1048576 bytes, 512-byte blocks, read-only false
	// shutdown: <nil>
	// serve: nbd: server closed
}
