package nbd

import (
	"errors"
	"syscall"

	"github.com/nvblk/nvblk/block"
	"github.com/nvblk/nvblk/pmem"
)

// Errors returned by Server methods.
var (
	// ErrServerClosed is returned by Serve after Shutdown or Close, and
	// by AddExport on a closed server.
	ErrServerClosed = errors.New("nbd: server closed")
	// ErrExportExists is returned by AddExport for a name already served.
	ErrExportExists = errors.New("nbd: export already exists")
	// ErrBadExport is returned by AddExport for a device the protocol
	// cannot describe (sector size not a power of two in 1..64 KiB, or a
	// name longer than MaxStringLen).
	ErrBadExport = errors.New("nbd: unsuitable export")
)

// ErrProtocol is wrapped by the errors that end one connection because
// the client broke the protocol in a way that cannot be answered with
// an error (wrong magic, truncated message, a payload larger than
// announced limits). It never stops the server.
var ErrProtocol = errors.New("nbd: protocol violation")

// ErrnoOf maps an error from a block.Device (or from request
// validation) to the NBD error value sent to the client. It is the one
// place where Go errors meet the protocol's small error space:
//
//   - out of range or misaligned: EINVAL
//   - read-only (export, device or media): EPERM
//   - an Errno: itself
//   - anything else: EIO
//
// It knows only block's error kinds (which every driver's sentinels
// wrap: block.Sentinel), pmem's and the system's, so a new driver needs
// no change here.
func ErrnoOf(err error) Errno {
	if err == nil {
		return 0
	}
	var e Errno
	if errors.As(err, &e) && e != 0 {
		return e
	}
	switch {
	case errors.Is(err, block.ErrReadOnly), errors.Is(err, pmem.ErrReadOnly),
		errors.Is(err, syscall.EROFS), errors.Is(err, syscall.EPERM):
		return EPERM
	case errors.Is(err, block.ErrOutOfRange), errors.Is(err, pmem.ErrOutOfRange),
		errors.Is(err, block.ErrAlignment), errors.Is(err, syscall.EINVAL):
		return EINVAL
	}
	return EIO
}
