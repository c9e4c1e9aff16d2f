//go:build linux

package main

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// The kernel NBD client's ioctl interface (include/uapi/linux/nbd.h): the
// handshake is done in user space, then the socket is handed to the kernel.
const (
	nbdSetSock       = 0xab00
	nbdSetBlksize    = 0xab01
	nbdDoIt          = 0xab03
	nbdClearSock     = 0xab04
	nbdClearQue      = 0xab05
	nbdSetSizeBlocks = 0xab07
	nbdDisconnect    = 0xab08
	nbdSetTimeout    = 0xab09
	nbdSetFlags      = 0xab0a
)

// nbdAttach connects to an NBD server at each of addrs (IPv4:port, comma
// separated: one connection each, which needs NBD_FLAG_CAN_MULTI_CONN),
// negotiates the
// export name ("" for the default) with NBD_OPT_GO (fixed newstyle, no structured replies:
// the kernel's ioctl client speaks simple replies), hands the socket to
// dev (/dev/nbdN) and serves it until a disconnect: NBD_DO_IT blocks.
// It prints @@R DISK nbd SIZE FLAGS CONNECTIONS once the device is set up.
func nbdAttach(disk, addrs, dev string, bs int, name string) {
	var (
		socks []int
		size  uint64
		flags uint16
	)
	for _, addr := range strings.Split(addrs, ",") {
		ap, err := netip.ParseAddrPort(addr)
		if err != nil || !ap.Addr().Is4() {
			die("nbd: bad address %q", addr)
		}
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		if err != nil {
			die("nbd: socket: %v", err)
		}
		if err := unix.Connect(fd, &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}); err != nil {
			die("nbd: connect %s: %v", addr, err)
		}
		s, fl := nbdHandshake(fd, name)
		if len(socks) > 0 && (s != size || fl != flags) {
			die("nbd: connection %d sees %d bytes, flags %#x; the first saw %d, %#x", len(socks), s, fl, size, flags)
		}
		if len(socks) > 0 && fl&(1<<8) == 0 {
			die("nbd: several connections, but the server does not offer NBD_FLAG_CAN_MULTI_CONN")
		}
		socks, size, flags = append(socks, fd), s, fl
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		die("nbd: %v", err)
	}
	defer f.Close() // also keeps f (and nfd) alive through NBD_DO_IT
	nfd := int(f.Fd())
	for _, c := range []struct {
		req uint
		arg uintptr
	}{
		{nbdSetBlksize, uintptr(bs)},
		{nbdSetSizeBlocks, uintptr(size / uint64(bs))},
		{nbdSetTimeout, 60},
		{nbdSetFlags, uintptr(flags)},
	} {
		if err := unix.IoctlSetInt(nfd, c.req, int(c.arg)); err != nil {
			die("nbd: ioctl %#x on %s: %v", c.req, dev, err)
		}
	}
	for _, fd := range socks { // one connection (and hardware queue) each
		if err := unix.IoctlSetInt(nfd, nbdSetSock, fd); err != nil {
			die("nbd: NBD_SET_SOCK on %s: %v", dev, err)
		}
	}
	fmt.Fprintf(out, "@@R %s nbd %d %d %d\n", disk, size, flags, len(socks))
	out.Flush()
	// Returns when the device is disconnected (NBD_DISCONNECT from
	// another process, or the server going away).
	err = unix.IoctlSetInt(nfd, nbdDoIt, 0)
	unix.IoctlSetInt(nfd, nbdClearQue, 0)
	unix.IoctlSetInt(nfd, nbdClearSock, 0)
	if err != nil {
		fmt.Fprintf(os.Stderr, "guestio: NBD_DO_IT on %s: %v\n", dev, err)
	}
	fmt.Fprintf(out, "@@R %s nbd-done %v\n", disk, err == nil)
}

// nbdDetach disconnects dev as nbd-client -d does: NBD_DISCONNECT (the
// kernel sends NBD_CMD_DISC), then NBD_CLEAR_SOCK, which shuts the socket
// down so that NBD_DO_IT returns even if the server's close never reaches
// the guest (qemu's guestfwd does not pass it on).
func nbdDetach(dev string) {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		die("nbd: %v", err)
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), nbdDisconnect, 0); err != nil {
		die("nbd: NBD_DISCONNECT on %s: %v", dev, err)
	}
	if err := unix.IoctlSetInt(int(f.Fd()), nbdClearSock, 0); err != nil {
		die("nbd: NBD_CLEAR_SOCK on %s: %v", dev, err)
	}
}

func readFull(fd int, b []byte) {
	for n := 0; n < len(b); {
		m, err := unix.Read(fd, b[n:])
		if err != nil || m == 0 {
			die("nbd: handshake read: %v (%d of %d bytes)", err, n, len(b))
		}
		n += m
	}
}

func writeAll(fd int, b []byte) {
	for n := 0; n < len(b); {
		m, err := unix.Write(fd, b[n:])
		if err != nil {
			die("nbd: handshake write: %v", err)
		}
		n += m
	}
}

// nbdHandshake runs the fixed newstyle negotiation for the export name
// and returns its size and transmission flags.
func nbdHandshake(fd int, name string) (size uint64, flags uint16) {
	be := binary.BigEndian
	hello := make([]byte, 18)
	readFull(fd, hello)
	if string(hello[:8]) != "NBDMAGIC" || be.Uint64(hello[8:]) != 0x49484156454F5054 {
		die("nbd: not a newstyle server: % x", hello)
	}
	if be.Uint16(hello[16:])&1 == 0 {
		die("nbd: server is not fixed newstyle")
	}
	writeAll(fd, []byte{0, 0, 0, 1}) // NBD_FLAG_C_FIXED_NEWSTYLE
	// NBD_OPT_GO: the name, no information requests.
	opt := make([]byte, 16+4+len(name)+2)
	be.PutUint64(opt, 0x49484156454F5054)
	be.PutUint32(opt[8:], 7)
	be.PutUint32(opt[12:], uint32(4+len(name)+2))
	be.PutUint32(opt[16:], uint32(len(name)))
	copy(opt[20:], name)
	writeAll(fd, opt)
	for i := 0; i < 16; i++ {
		h := make([]byte, 20)
		readFull(fd, h)
		if be.Uint64(h) != 0x3e889045565a9 || be.Uint32(h[8:]) != 7 {
			die("nbd: bad option reply % x", h)
		}
		typ, n := be.Uint32(h[12:]), be.Uint32(h[16:])
		if n > 4096 {
			die("nbd: option reply of %d bytes", n)
		}
		data := make([]byte, n)
		readFull(fd, data)
		switch {
		case typ == 1: // NBD_REP_ACK
			if size == 0 {
				die("nbd: no NBD_INFO_EXPORT before the ACK")
			}
			return size, flags
		case typ == 3 && n >= 12 && be.Uint16(data) == 0: // NBD_REP_INFO, NBD_INFO_EXPORT
			size, flags = be.Uint64(data[2:]), be.Uint16(data[10:])
		case typ&(1<<31) != 0:
			die("nbd: NBD_OPT_GO refused: error %#x %q", typ, data)
		}
	}
	die("nbd: too many option replies")
	return
}
