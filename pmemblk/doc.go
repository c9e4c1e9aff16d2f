// Package pmemblk reads and writes PMDK libpmemblk pools: files holding
// an array of fixed-size blocks, each updated atomically, through a BTT.
// The API mirrors libpmemblk's (pmemblk_create, _open, _close, _bsize,
// _nblock, _read, _write, _set_zero, _set_error, _check) with Go idioms,
// and pools stay readable by libpmemblk 1.12 and pass `pmempool check`.
//
// # Pool layout
//
// Facts from PMDK 1.12.1 (src/common/pool_hdr.h, set.c, util.c,
// src/libpmemblk/blk.c, btt.c) and checked against pools made by
// `pmempool create blk`:
//
//	file offset
//	0      +--------------------------------------------------+
//	       | pool header (struct pool_hdr, 4 KiB, see Header) |
//	       |   "PMEMBLK\0", major 1, features, uuids, crtime,  |
//	       |   arch flags, shutdown state, checksum            |
//	4096   +--------------------------------------------------+
//	       | bsize (u32) | is_zeroed (u32) | run-time junk     |
//	8192   +--------------------------------------------------+
//	       | BTT: arena 0 info block | data | map | flog |    |
//	       |      info2, [arena 1 ...] (the btt package)       |
//	size   +--------------------------------------------------+
//
// The pool size is the file size rounded down to 4 KiB. The BTT's
// parent_uuid is the pool header's poolset_uuid. Its geometry is the
// kernel's except that the internal block size is max(bsize, 512)
// rounded up to 256, and libpmemblk's flog words carry map-style flag
// bits (the btt package's PMDK mode writes them the same way).
//
// The header checksum is util_checksum's Fletcher-64: 32-bit words, lo
// and hi wrapping at 32 bits, the checksum field counted as zero; with
// the CKSUM_2K incompat feature (set in every pool PMDK 1.5+ creates)
// only the first 2 KiB are summed, the rest counting as zero words. New
// pools get PMDK 1.12's default features: compat CHECK_BAD_BLOCKS,
// incompat CKSUM_2K|SHUTDOWN_STATE, the host's architecture flags, and an
// all-zero shutdown state (what libpmemblk records for a file not on
// pmem: "clean"). After bsize and is_zeroed, struct pmemblk holds
// libpmemblk's run-time state, which `pmempool info` reads to find the
// BTT (data - addr); new pools get addr 0 and data 8192 there.
//
// # Lazy layout
//
// Like libpmemblk, Create writes only the two headers. Until the first
// Write or SetError every block reads as zeros and NBlock is what the
// layout will hold; that first call lays the BTT out (once, under a
// mutex, concurrent first writers wait). The layout writes the map and
// flog, then the backup info block, and the primary info block last, so
// a crash leaves either a complete layout or none.
//
// Where libpmemblk treats any pool without a valid primary info block as
// never laid out (and would lay a new BTT over the data on the next
// write), nvblk does so only when no write can have been committed: the
// flog is untouched and, when a backup info block or a non-zero primary
// exists, the map is too. Otherwise a damaged primary is bypassed with
// its backup: the pool opens read-only (FromBackup) and `nvblk check
// --repair` restores the primary.
//
// # Concurrency and durability
//
// A Pool is safe for concurrent use. Every Write, SetZero and SetError
// is durable when it returns nil; Close writes nothing.
//
// # Errors
//
// Failures of block operations are *BlockError values matching one of
// ErrOutOfRange, ErrReadOnly, ErrBadBSize, ErrIO, ErrAlignment or
// ErrClosed with errors.Is (and the btt or pmem cause, when there is
// one). Opening fails with ErrFormat, ErrBadBSize, ErrPoolSize or
// ErrCorrupt.
//
// # Limits
//
// Single-file pools only (no pool sets, no replicas, as libpmemblk for
// replicas), block sizes up to MaxBSize (1 MiB; libpmemblk allows up to
// 2^32-1), pools of 4 KiB-page architectures (not ppc64). The shutdown
// state is neither checked nor updated.
package pmemblk
