//go:build linux

// Command guestio does the sector I/O of the kernel interop guest: exact
// O_DIRECT reads and writes of whole sectors, which busybox dd cannot
// promise (it quietly falls back to buffered I/O when its buffer is not
// aligned), and sha256 of what the kernel returns. The test (interop/kernel)
// builds it static and puts it into the guest's initramfs. Its output lines
// follow guest_lib.sh's protocol (@@R DISK KEY VALUES...).
//
//	guestio write DISK DEV SS SEED LBA:GEN[:COUNT]...  one O_DIRECT write (one bio) per item
//	guestio wsync DISK DEV SS SEED LBA:GEN[:COUNT]...  the same with O_DSYNC (FUA writes)
//	guestio fsync DISK DEV                             fsync (a cache flush): @@R DISK fsync ok
//	guestio read  DISK DEV SS LBA...                   O_DIRECT, one sector each: @@R DISK sector LBA SHA256|EIO
//	guestio scan  DISK DEV SS                          the whole device with O_DIRECT, one sector per bio
//	                                                   segment: @@R DISK nz LBA SHA256 for every sector that
//	                                                   is not all zeroes, then @@R DISK scan SECTORS NONZERO
//	guestio cscan DISK DEV SS                          the same through the page cache (page-sized bio
//	                                                   segments): cnz and cscan records
//	guestio nbd   DISK ADDR:PORT[,...] DEV BS [NAME]   connect the kernel NBD client (ioctls) on DEV to the
//	                                                   server's export NAME (default ""); blocks until disconnected:
//	                                                   @@R DISK nbd SIZE FLAGS CONNS, then @@R DISK nbd-done OK
//	guestio nbd-disconnect DEV                         NBD_DISCONNECT
//	guestio sum   DISK DEV OFF LEN                     sha256 of LEN bytes from byte OFF (O_DIRECT, 1 MiB
//	                                                   reads; both 512-byte multiples):
//	                                                   @@R DISK sum DEV OFF LEN SHA256|EIO
//
// Hashing every byte of a device is slow under TCG, so a scan hashes only
// the sectors that are not zero: a model of the device (written sectors,
// zeroes elsewhere) compares exactly.
package main

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/interop/kernel/internal/pattern"
)

var out = bufio.NewWriter(os.Stdout)

func die(format string, a ...any) {
	out.Flush()
	fmt.Fprintf(os.Stdout, "@@E - guestio: "+format+"\n", a...)
	os.Exit(1)
}

// aligned returns a page-aligned buffer of n bytes (O_DIRECT needs memory
// aligned to the logical block size).
func aligned(n int) []byte {
	b := make([]byte, n+4096)
	off := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) % 4096); r != 0 {
		off = 4096 - r
	}
	return b[off : off+n]
}

func atoi(s string) int {
	n, err := strconv.Atoi(s)
	if err != nil {
		die("bad number %q", s)
	}
	return n
}

func main() {
	defer out.Flush()
	if (len(os.Args) == 6 || len(os.Args) == 7) && os.Args[1] == "nbd" {
		name := ""
		if len(os.Args) == 7 {
			name = os.Args[6]
		}
		nbdAttach(os.Args[2], os.Args[3], os.Args[4], atoi(os.Args[5]), name)
		return
	}
	if len(os.Args) == 4 && os.Args[1] == "fsync" {
		f, err := os.OpenFile(os.Args[3], os.O_RDWR, 0)
		if err != nil {
			die("%v", err)
		}
		if err := f.Sync(); err != nil {
			die("fsync %s: %v", os.Args[3], err)
		}
		f.Close()
		fmt.Fprintf(out, "@@R %s fsync ok\n", os.Args[2])
		return
	}
	if len(os.Args) == 3 && os.Args[1] == "nbd-disconnect" {
		nbdDetach(os.Args[2])
		return
	}
	if len(os.Args) == 6 && os.Args[1] == "sum" {
		sum(os.Args[2], os.Args[3], int64(atoi(os.Args[4])), int64(atoi(os.Args[5])))
		return
	}
	if len(os.Args) < 5 {
		die("usage: guestio write|read|scan|cscan DISK DEV SS ... | sum DISK DEV OFF LEN")
	}
	cmd, disk, dev, ss := os.Args[1], os.Args[2], os.Args[3], atoi(os.Args[4])
	args := os.Args[5:]
	flags := os.O_RDONLY | syscall.O_DIRECT
	switch cmd {
	case "write":
		flags = os.O_RDWR | syscall.O_DIRECT
	case "wsync":
		flags = os.O_RDWR | syscall.O_DIRECT | syscall.O_DSYNC
	case "cscan":
		flags = os.O_RDONLY
	}
	f, err := os.OpenFile(dev, flags, 0)
	if err != nil {
		die("%v", err)
	}
	defer f.Close()
	switch cmd {
	case "write", "wsync":
		if len(args) < 1 {
			die("write: no seed")
		}
		seed, items := args[0], args[1:]
		for _, it := range items {
			p := strings.Split(it, ":")
			if len(p) < 2 {
				die("bad write %q", it)
			}
			lba, gen, count := uint64(atoi(p[0])), atoi(p[1]), 1
			if len(p) > 2 {
				count = atoi(p[2])
			}
			buf := aligned(count * ss)
			for i := 0; i < count; i++ {
				copy(buf[i*ss:], pattern.Sector(seed, lba+uint64(i), gen, ss))
			}
			if _, err := f.WriteAt(buf, int64(lba)*int64(ss)); err != nil {
				die("write %s lba %d x%d: %v", dev, lba, count, err)
			}
		}
	case "read":
		buf := aligned(ss)
		for _, a := range args {
			lba := atoi(a)
			if _, err := f.ReadAt(buf, int64(lba)*int64(ss)); err != nil {
				fmt.Fprintf(out, "@@R %s sector %d EIO\n", disk, lba)
				fmt.Fprintf(out, "@@L %s read lba %d: %v\n", disk, lba, err)
				continue
			}
			s := sha256.Sum256(buf)
			fmt.Fprintf(out, "@@R %s sector %d %s\n", disk, lba, hex.EncodeToString(s[:]))
		}
	case "scan", "cscan":
		prefix := ""
		if cmd == "cscan" {
			prefix = "c"
		}
		size, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			die("%s: size: %v", dev, err)
		}
		nonzero := 0
		sector := func(lba int64, b []byte) {
			if isZero(b) {
				return
			}
			nonzero++
			s := sha256.Sum256(b)
			fmt.Fprintf(out, "@@R %s %snz %d %s\n", disk, prefix, lba, hex.EncodeToString(s[:]))
		}
		if cmd == "cscan" {
			err = readBuffered(f, size, ss, sector)
		} else {
			err = readDirect(f, size, ss, sector)
		}
		if err != nil {
			fmt.Fprintf(out, "@@R %s %sscan EIO\n", disk, prefix)
			fmt.Fprintf(out, "@@L %s %sscan: %v\n", disk, prefix, err)
			return
		}
		fmt.Fprintf(out, "@@R %s %sscan %d %d\n", disk, prefix, size/int64(ss), nonzero)
	default:
		die("unknown command %q", cmd)
	}
}

// sum reports the sha256 of n bytes of dev from byte off, read with
// O_DIRECT in 1 MiB pieces (a partition's content, hashed whole: the
// generic sha256 of a few MiB takes well under a second under TCG).
func sum(disk, dev string, off, n int64) {
	f, err := os.OpenFile(dev, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		die("%v", err)
	}
	defer f.Close()
	h := sha256.New()
	buf := aligned(1 << 20)
	for pos, end := off, off+n; pos < end; {
		c := int(min(int64(len(buf)), end-pos))
		if _, err := f.ReadAt(buf[:c], pos); err != nil {
			fmt.Fprintf(out, "@@R %s sum %s %d %d EIO\n", disk, dev, off, n)
			fmt.Fprintf(out, "@@L %s sum %s at %d: %v\n", disk, dev, pos, err)
			return
		}
		h.Write(buf[:c])
		pos += int64(c)
	}
	fmt.Fprintf(out, "@@R %s sum %s %d %d %s\n", disk, dev, off, n, hex.EncodeToString(h.Sum(nil)))
}

// readDirect reads the device with O_DIRECT so that every bio segment is
// exactly one sector: 1 MiB reads when sectors are pages (the block layer
// splits bios into page-sized segments), else vectored reads whose
// 512-byte pieces sit 1 KiB apart, which the block layer cannot merge into
// page-sized segments.
func readDirect(f *os.File, size int64, ss int, sector func(int64, []byte)) error {
	if ss >= 4096 {
		const chunk = 1 << 20
		buf := aligned(chunk)
		for off := int64(0); off < size; {
			n := int(min(int64(chunk), size-off))
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				return fmt.Errorf("read at %d: %w", off, err)
			}
			for i := 0; i < n; i += ss {
				sector((off+int64(i))/int64(ss), buf[i:i+ss])
			}
			off += int64(n)
		}
		return nil
	}
	const per = 128 // sectors per call
	raw := aligned(per * 2 * ss)
	iov := make([][]byte, per)
	for i := range iov {
		iov[i] = raw[2*i*ss : 2*i*ss+ss]
	}
	fd := int(f.Fd())
	for off := int64(0); off < size; {
		n := int(min(int64(per), (size-off)/int64(ss)))
		got, err := unix.Preadv(fd, iov[:n], off)
		if err != nil {
			return fmt.Errorf("preadv at %d: %w", off, err)
		}
		if got != n*ss {
			return fmt.Errorf("preadv at %d: %d bytes, want %d", off, got, n*ss)
		}
		for i, v := range iov[:n] {
			sector(off/int64(ss)+int64(i), v)
		}
		off += int64(n * ss)
	}
	return nil
}

// readBuffered reads the device through the page cache.
func readBuffered(f *os.File, size int64, ss int, sector func(int64, []byte)) error {
	const chunk = 1 << 20
	buf := make([]byte, chunk)
	for off := int64(0); off < size; {
		n := int(min(int64(chunk), size-off))
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return fmt.Errorf("read at %d: %w", off, err)
		}
		for i := 0; i < n; i += ss {
			sector((off+int64(i))/int64(ss), buf[i:i+ss])
		}
		off += int64(n)
	}
	return nil
}

// isZero reports whether b (a multiple of 8 bytes) is all zeroes. A plain
// word loop: under TCG it runs as translated integer code, many times
// faster than the vector instructions of bytes.Equal, which qemu emulates
// through helper calls.
func isZero(b []byte) bool {
	w := unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8)
	var acc uint64
	for i := 0; i < len(w); i += 8 {
		acc |= w[i] | w[i+1] | w[i+2] | w[i+3] | w[i+4] | w[i+5] | w[i+6] | w[i+7]
	}
	return acc == 0
}
