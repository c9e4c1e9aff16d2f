// Package pmem is nvblk's byte-addressable device layer: the user-space
// equivalent of the Linux kernel's ->rw_bytes() on a pmem namespace.
//
// A Device is a fixed-size range of memory-backed storage with synchronous,
// bounds-checked, byte-granular reads and writes and explicit persistence.
// Everything above it (the BTT, partitions, the NBD server) is written
// against the Device interface only.
//
// # Backings
//
// OpenFile picks the backing from what the path is:
//
//   - a regular file is mapped MAP_SHARED_VALIDATE|MAP_SYNC when its
//     filesystem supports DAX (mode "dax": CPU cache flushes make data
//     durable); otherwise MAP_SHARED, and persistence is msync (mode "msync");
//   - a /dev/daxX.Y character device is mapped whole, size and alignment
//     from sysfs (mode "dax");
//
// NewRAM gives anonymous memory (mode "none": nothing survives the process).
// PMEM_IS_PMEM_FORCE=1 makes a file mapping use CPU cache flushes instead
// of msync, as PMDK does (mode "dax-forced"): fast, but durable only if the
// file really is on persistent memory.
//
// # Sharing
//
// Open locks what it opens, so that a second writer cannot corrupt an
// image another process is writing: an open file description lock
// (F_OFD_SETLK) on the whole device, exclusive for a writable open and
// shared for a read-only one, plus the flock(2) lock PMDK's tools take.
// A conflicting open fails with a *LockError (ErrLocked) naming the
// range and the holder; Options.NoLock skips the lock, and Lock takes it
// on a part of a device (a partition). See lock_linux.go.
//
// # Persistence
//
// WriteAt only stores. Flush(off, n) starts the write-back of the cache
// lines covering the range, Drain waits for all started write-backs (a
// store fence), and Persist is Flush followed by Drain. WriteAtPersist
// copies with non-temporal stores where the CPU has them and returns only
// when the data is durable: the equivalent of the kernel's
// memcpy_flushcache + nvdimm_flush, and of PMDK's pmem_memcpy_persist.
//
// # Errors
//
// A range outside the device is a *RangeError wrapping ErrOutOfRange, never
// a panic; the first one on each device is also logged once. A media error
// (a SIGBUS on the mapping: the file was truncated underneath, or the
// memory is poisoned; or a read of a sector on the device's badblock list)
// is ErrMedia for that call only.
//
// # Badblocks
//
// Every device built here keeps a badblock list at 512-byte granularity with
// the kernel's semantics: a read touching a bad sector fails with ErrMedia
// without touching memory; a write whose offset and length are both
// 512-aligned clears the bad sectors it covers (the data is written); any
// other write over a bad sector writes the data and returns ErrMedia.
// Tests inject badblocks with BadBlocks().Add.
package pmem
