package pmem

import (
	"errors"
	"fmt"
)

// Errors returned by every Device.
var (
	// ErrOutOfRange is wrapped by *RangeError when an access falls outside
	// the device.
	ErrOutOfRange = errors.New("pmem: access out of range")
	// ErrMedia is returned when the media cannot deliver or accept the data:
	// a known bad sector, or a machine check (SIGBUS) during the copy.
	ErrMedia = errors.New("pmem: media error")
	// ErrClosed is returned by any access after Close.
	ErrClosed = errors.New("pmem: device closed")
	// ErrReadOnly is returned by writes to a device opened read-only.
	ErrReadOnly = errors.New("pmem: device is read-only")
)

// RangeError describes an access outside the device. It wraps ErrOutOfRange.
type RangeError struct {
	Op   string // "read", "write", "flush", ...
	Off  int64  // requested byte offset (may be negative)
	Len  int64  // requested length in bytes
	Size int64  // device size in bytes
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("pmem: %s of %d bytes at offset %d is outside the device (size %d bytes)",
		e.Op, e.Len, e.Off, e.Size)
}

// Unwrap returns ErrOutOfRange.
func (e *RangeError) Unwrap() error { return ErrOutOfRange }

// MediaError describes a media error at a byte range. It wraps ErrMedia.
type MediaError struct {
	Op  string
	Off int64 // first byte of the access that failed
	Len int64
	Why string // "badblock", "SIGBUS", ...
}

func (e *MediaError) Error() string {
	return fmt.Sprintf("pmem: media error (%s) on %s of %d bytes at offset %d", e.Why, e.Op, e.Len, e.Off)
}

// Unwrap returns ErrMedia.
func (e *MediaError) Unwrap() error { return ErrMedia }

// CheckRange validates an access of n bytes at off on a device of the given
// size, guarding against negative values and overflow of off+n.
func CheckRange(op string, off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return &RangeError{Op: op, Off: off, Len: n, Size: size}
	}
	return nil
}
