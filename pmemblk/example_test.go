package pmemblk_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"path/filepath"

	"github.com/nvblk/nvblk/pmemblk"
)

// tempPool returns a path for a new pool and a function removing it.
func tempPool() (string, func()) {
	dir, err := os.MkdirTemp("", "pmemblk-example")
	if err != nil {
		log.Fatal(err)
	}
	return filepath.Join(dir, "pool"), func() { os.RemoveAll(dir) }
}

// Create a pool of 4 KiB blocks, write a block, and read it back after
// reopening: the same calls as libpmemblk's pmemblk_create, _write,
// _close, _open and _read.
func Example() {
	path, cleanup := tempPool()
	defer cleanup()

	pool, err := pmemblk.Create(path, 4096, 32<<20)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("blocks:", pool.NBlock(), "of", pool.BSize(), "bytes")

	block := make([]byte, pool.BSize())
	copy(block, "hello, persistent memory")
	if err := pool.Write(block, 42); err != nil { // atomic and durable
		log.Fatal(err)
	}
	pool.Close()

	pool, err = pmemblk.Open(path, 0) // 0: block size from the pool
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	buf := make([]byte, pool.BSize())
	if err := pool.Read(buf, 42); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("block 42: %s\n", bytes.TrimRight(buf, "\x00"))
	if err := pool.Read(buf, 7); err == nil && bytes.Count(buf, []byte{0}) == len(buf) {
		fmt.Println("block 7: never written, reads as zeros")
	}
	// Output:
	// blocks: 7919 of 4096 bytes
	// block 42: hello, persistent memory
	// block 7: never written, reads as zeros
}

// Errors are sentinels to test with errors.Is.
func Example_errors() {
	path, cleanup := tempPool()
	defer cleanup()
	pool, err := pmemblk.Create(path, 512, pmemblk.MinPoolSize)
	if err != nil {
		log.Fatal(err)
	}
	buf := make([]byte, 512)
	err = pool.Read(buf, pool.NBlock())
	fmt.Println("past the end:", errors.Is(err, pmemblk.ErrOutOfRange))
	pool.Close()

	_, err = pmemblk.Open(path, 4096)
	fmt.Println("wrong block size:", errors.Is(err, pmemblk.ErrBadBSize))

	ro, err := pmemblk.OpenWith(path, 0, pmemblk.Options{ReadOnly: true})
	if err != nil {
		log.Fatal(err)
	}
	defer ro.Close()
	fmt.Println("read-only:", errors.Is(ro.Write(buf, 0), pmemblk.ErrReadOnly))
	// Output:
	// past the end: true
	// wrong block size: true
	// read-only: true
}

// SetError makes reads of a block fail until it is written again;
// SetZero makes it read as zeros. Neither writes the block's data.
func ExamplePool_SetError() {
	path, cleanup := tempPool()
	defer cleanup()
	pool, err := pmemblk.Create(path, 512, pmemblk.MinPoolSize)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	buf := bytes.Repeat([]byte{0xAB}, 512)
	if err := pool.Write(buf, 3); err != nil {
		log.Fatal(err)
	}
	if err := pool.SetError(3); err != nil {
		log.Fatal(err)
	}
	fmt.Println("read in the error state:", errors.Is(pool.Read(buf, 3), pmemblk.ErrIO))
	if err := pool.Write(buf, 3); err != nil {
		log.Fatal(err)
	}
	fmt.Println("read after a write:", pool.Read(buf, 3))
	if err := pool.SetZero(3); err != nil {
		log.Fatal(err)
	}
	_ = pool.Read(buf, 3)
	fmt.Println("zeroed:", bytes.Equal(buf, make([]byte, 512)))
	// Output:
	// read in the error state: true
	// read after a write: <nil>
	// zeroed: true
}

// A Pool is an io.ReaderAt and io.WriterAt for whole blocks at block
// boundaries, so it composes with io.SectionReader and friends.
func ExamplePool_ReadAt() {
	path, cleanup := tempPool()
	defer cleanup()
	pool, err := pmemblk.Create(path, 512, pmemblk.MinPoolSize)
	if err != nil {
		log.Fatal(err)
	}
	defer pool.Close()
	data := bytes.Repeat([]byte("0123456789abcdef"), 64) // two blocks
	if _, err := pool.WriteAt(data, 10*512); err != nil {
		log.Fatal(err)
	}
	r := io.NewSectionReader(pool, 10*512, int64(len(data)))
	got := make([]byte, len(data))
	if _, err := io.ReadFull(r, got); err != nil {
		log.Fatal(err)
	}
	fmt.Println(bytes.Equal(got, data), string(got[:16]))
	_, err = pool.ReadAt(got[:100], 0)
	fmt.Println("partial block:", errors.Is(err, pmemblk.ErrAlignment))
	// Output:
	// true 0123456789abcdef
	// partial block: true
}

// Check is pmemblk_check: the pool header and the BTT's metadata.
func ExampleCheck() {
	path, cleanup := tempPool()
	defer cleanup()
	pool, err := pmemblk.Create(path, 4096, 32<<20)
	if err != nil {
		log.Fatal(err)
	}
	if err := pool.Write(make([]byte, 4096), 0); err != nil {
		log.Fatal(err)
	}
	pool.Close()
	ok, err := pmemblk.Check(path, 0)
	fmt.Println("consistent:", ok, err)
	// Output:
	// consistent: true <nil>
}
