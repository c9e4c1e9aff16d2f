package partition

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/nvblk/nvblk/pmem/pmemtest"
)

// fuzzMaxImage bounds the device a fuzz input becomes.
const fuzzMaxImage = 1 << 20

// seedImage builds a small GPT image (4 entries, sector alignment) so the
// fuzzer starts from valid structures it can mutate cheaply.
func seedImage(t testing.TB, size int64, specs []Spec, damage func([]byte)) []byte {
	t.Helper()
	dev := pmemtest.NewCrashMem(size)
	if _, err := Create(dev, specs, Options{DiskGUID: testDisk, Alignment: SectorSize, Entries: 4}); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, size)
	dev.ReadAt(b, 0)
	if damage != nil {
		damage(b)
	}
	return b
}

// FuzzRead feeds arbitrary images to Read. It must never panic or
// allocate beyond its bounds; a table it returns must have every
// partition inside the device, and a GPT it returns must survive a
// Write + Read round trip unchanged (or be refused by Write as ErrLayout).
// The inputs are whole (small) images, which the fuzzer is slow to
// minimize: run it as
//
//	go test -run XXX -fuzz FuzzRead -fuzzminimizetime 1s ./partition/
func FuzzRead(f *testing.F) {
	specs := []Spec{{Size: 2048, Name: "a", GUID: testP1}, {Size: 0, Name: "b\u00e9", GUID: testP2}}
	f.Add(seedImage(f, 12288, specs, nil))
	f.Add(seedImage(f, 12288, specs, func(b []byte) { b[512+60] ^= 1 }))        // primary header CRC
	f.Add(seedImage(f, 12288, specs, func(b []byte) { clear(b[512:1024]) }))    // primary zeroed
	f.Add(seedImage(f, 12288, specs, func(b []byte) { b[1024] ^= 1 }))          // primary entries
	f.Add(seedImage(f, 12288, specs, func(b []byte) { clear(b[len(b)-512:]) })) // backup zeroed
	f.Add(seedImage(f, 12288, specs[:1], func(b []byte) { b[512+80] = 0xFF }))  // entry count
	f.Add(seedImage(f, 8192, nil, nil))                                         // empty GPT
	mbr := make([]byte, 8192)
	mbr[446], mbr[450] = 0x80, 0x83
	binary.LittleEndian.PutUint32(mbr[454:], 2)
	binary.LittleEndian.PutUint32(mbr[458:], 4)
	mbr[462+4] = 0x05
	binary.LittleEndian.PutUint32(mbr[462+8:], 8)
	binary.LittleEndian.PutUint32(mbr[462+12:], 4)
	mbr[510], mbr[511] = 0x55, 0xAA
	f.Add(mbr)
	f.Add(make([]byte, 4096))

	f.Fuzz(func(t *testing.T, img []byte) {
		if len(img) > fuzzMaxImage {
			img = img[:fuzzMaxImage]
		}
		size := max(int64(len(img)+SectorSize-1)/SectorSize*SectorSize, SectorSize)
		dev := pmemtest.NewCrashMem(size)
		dev.WriteAt(img, 0)
		tb, err := Read(dev)
		if err != nil {
			if !errors.Is(err, ErrNoTable) && !errors.Is(err, ErrCorrupt) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return
		}
		for _, p := range tb.Partitions {
			if p.FirstLBA > p.LastLBA || p.Offset()+p.Size() > size {
				t.Fatalf("partition %+v outside the %d-byte device", p, size)
			}
			w, err := tb.Window(dev, p.Number)
			if err != nil {
				t.Fatalf("window %d: %v", p.Number, err)
			}
			w.Close()
		}
		if tb.Kind != KindGPT {
			return
		}
		dev2 := pmemtest.NewCrashMem(size)
		if err := tb.Write(dev2); err != nil {
			if !errors.Is(err, ErrLayout) {
				t.Fatalf("Write: %v", err)
			}
			return
		}
		again, err := Read(dev2)
		if err != nil {
			t.Fatalf("re-read of a written table: %v", err)
		}
		if again.DiskGUID != tb.DiskGUID || again.FromBackup || len(again.Partitions) != len(tb.Partitions) {
			t.Fatalf("round trip: %+v, was %+v", again, tb)
		}
		for i := range again.Partitions {
			if again.Partitions[i] != tb.Partitions[i] {
				t.Fatalf("round trip partition %+v, was %+v", again.Partitions[i], tb.Partitions[i])
			}
		}
	})
}
