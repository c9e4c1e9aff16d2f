package pmemblk

import (
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/block"
)

// Errors returned when creating or opening a pool.
var (
	// ErrFormat: the file is not a pmemblk pool nvblk can open (bad
	// signature, checksum or version, unknown incompatible features, a
	// pool set, another architecture's layout).
	ErrFormat = errors.New("pmemblk: not a valid pmemblk pool")
	// ErrBadBSize: the block size is 0, too large, differs from the one
	// the pool was created with, or a buffer is not one block long.
	ErrBadBSize = errors.New("pmemblk: bad block size")
	// ErrPoolSize: the pool is smaller than MinPoolSize or too small to
	// hold the BTT for its block size.
	ErrPoolSize = errors.New("pmemblk: bad pool size")
	// ErrCorrupt: the pool's BTT metadata is inconsistent and cannot be
	// opened (it also matches btt.ErrCorrupt where that is the cause).
	ErrCorrupt = errors.New("pmemblk: corrupt pool")
)

// Errors returned by block I/O.
var (
	// ErrOutOfRange: a negative block number, or one >= NBlock (EINVAL
	// "lba out of range" in libpmemblk).
	ErrOutOfRange = block.Sentinel("pmemblk: block number out of range", block.ErrOutOfRange)
	// ErrReadOnly: the pool was opened read-only, or from a backup info
	// block because its primary is damaged (EROFS in libpmemblk).
	ErrReadOnly = block.Sentinel("pmemblk: pool is read-only", block.ErrReadOnly)
	// ErrIO: the block is in the error state (SetError), the media
	// failed, or the arena is in the error state (EIO in libpmemblk).
	ErrIO = errors.New("pmemblk: I/O error")
	// ErrAlignment: a ReadAt/WriteAt offset or length is not a whole
	// number of blocks.
	ErrAlignment = block.Sentinel("pmemblk: offset or length is not a whole number of blocks", block.ErrAlignment)
	// ErrClosed: the pool was closed.
	ErrClosed = errors.New("pmemblk: pool closed")
)

// BlockError reports a failed operation on one block. It matches its
// kind (ErrIO, ErrReadOnly, ErrOutOfRange, ...) and its cause with
// errors.Is.
type BlockError struct {
	Op    string // "read", "write", "set-zero", "set-error", "layout"
	Block int64
	Kind  error // one of this package's sentinels
	Err   error // the cause, from the btt or pmem layer; may be nil
}

func (e *BlockError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("pmemblk: %s of block %d: %v", e.Op, e.Block, e.Kind)
	}
	return fmt.Sprintf("pmemblk: %s of block %d: %v", e.Op, e.Block, e.Err)
}

// Unwrap returns the kind and the cause.
func (e *BlockError) Unwrap() []error {
	if e.Err == nil {
		return []error{e.Kind}
	}
	return []error{e.Kind, e.Err}
}
