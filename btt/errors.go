package btt

import (
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/block"
)

// Errors returned when opening a BTT.
var (
	// ErrNotFound: no valid BTT info block at either namespace offset.
	ErrNotFound = errors.New("btt: no BTT found")
	// ErrCorrupt is wrapped by every *CorruptError.
	ErrCorrupt = errors.New("btt: corrupt metadata")
)

// Errors returned by I/O.
var (
	// ErrOutOfRange is wrapped by *RangeError.
	ErrOutOfRange = block.Sentinel("btt: LBA out of range", block.ErrOutOfRange)
	// ErrIO: the sector is in the error (E) state, or the media failed.
	ErrIO = errors.New("btt: I/O error")
	// ErrReadOnly: the BTT (or the arena, whose error flag is set) is
	// read-only.
	ErrReadOnly = block.Sentinel("btt: read-only", block.ErrReadOnly)
	// ErrClosed: the BTT was closed.
	ErrClosed = errors.New("btt: closed")
	// ErrAlignment: a buffer is not a whole number of sectors.
	ErrAlignment = block.Sentinel("btt: buffer is not a whole number of sectors", block.ErrAlignment)
)

// CorruptError locates a metadata inconsistency. It wraps ErrCorrupt.
type CorruptError struct {
	Arena int    // arena index, -1 when not arena specific
	Off   int64  // namespace byte offset of the offending structure
	What  string // what is wrong
}

func (e *CorruptError) Error() string {
	if e.Arena < 0 {
		return fmt.Sprintf("btt: corrupt metadata at byte %#x: %s", e.Off, e.What)
	}
	return fmt.Sprintf("btt: arena %d: corrupt metadata at byte %#x: %s", e.Arena, e.Off, e.What)
}

func (e *CorruptError) Unwrap() error { return ErrCorrupt }

func corruptf(arena int, off int64, format string, a ...any) error {
	return &CorruptError{Arena: arena, Off: off, What: fmt.Sprintf(format, a...)}
}

// RangeError reports an access past the end of the device. It wraps
// ErrOutOfRange.
type RangeError struct {
	LBA     uint64 // first LBA requested
	Count   uint64 // sectors requested
	Sectors uint64 // device size in sectors
}

func (e *RangeError) Error() string {
	return fmt.Sprintf("btt: LBA %d (+%d sectors) is past the end of the device (%d sectors)", e.LBA, e.Count, e.Sectors)
}

func (e *RangeError) Unwrap() error { return ErrOutOfRange }

// SectorError reports a failed sector. It wraps its cause and ErrIO.
type SectorError struct {
	Op  string
	LBA uint64
	Err error
}

func (e *SectorError) Error() string {
	return fmt.Sprintf("btt: %s of LBA %d: %v", e.Op, e.LBA, e.Err)
}

func (e *SectorError) Unwrap() []error { return []error{ErrIO, e.Err} }
