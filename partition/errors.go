package partition

import (
	"errors"
	"fmt"
)

// Errors returned by Read and Open.
var (
	// ErrNoTable is returned when the device holds neither a GPT (no
	// signature in the primary or backup header position and no protective
	// MBR) nor an MBR partition table.
	ErrNoTable = errors.New("partition: no partition table")
	// ErrCorrupt is wrapped by *CorruptError when a GPT is present (a
	// signature or a protective MBR says so) but no copy of it is valid.
	ErrCorrupt = errors.New("partition: corrupt partition table")
	// ErrNoPartition is returned when a partition number is not in use.
	ErrNoPartition = errors.New("partition: no such partition")
)

// Errors returned by Plan, Create and Table.Write.
var (
	// ErrLayout is returned when the partitions asked for do not fit on the
	// device, or are malformed (size, name, number of partitions).
	ErrLayout = errors.New("partition: bad layout")
)

// CorruptError describes why a GPT could not be used. It wraps ErrCorrupt.
type CorruptError struct {
	// Where names the structure: "primary GPT header", "backup GPT
	// entries", "GPT" (both copies).
	Where string
	// LBA is the 512-byte block where the structure was read (-1 when it
	// does not apply).
	LBA int64
	Msg string
}

func (e *CorruptError) Error() string {
	if e.LBA < 0 {
		return fmt.Sprintf("partition: %s: %s", e.Where, e.Msg)
	}
	return fmt.Sprintf("partition: %s at LBA %d: %s", e.Where, e.LBA, e.Msg)
}

// Unwrap returns ErrCorrupt.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }
