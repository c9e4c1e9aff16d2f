// Package btt implements the Block Translation Table: atomic sector
// updates on byte-addressable persistent memory, in the Linux kernel's
// on-media format (drivers/nvdimm/btt.c; the kernel's
// Documentation/driver-api/nvdimm/btt.rst; UEFI 2.7 chapter 6 for
// version 2.0). Images written by Linux's nd_btt driver open here, and
// images written here attach in Linux.
//
// This comment is the project's description of the format and of the
// rules the code follows; comments elsewhere cite its sections by name
// ("doc.go, Arenas") or the kernel function they mirror.
//
// # Where the BTT sits
//
// Version 1.1 (label-less namespaces, the "linux" format) starts at
// namespace byte 4096 (InitialOffset11); version 2.0 (labelled
// namespaces, "uefi") at byte 0 (InitialOffset20). The kernel probes
// 4096 first, and accepts arena 0's info block there only with version
// 1.1, at 0 only with 2.0; so does Open. A PMDK pool keeps a 1.1 BTT at
// offset 0 of the area after its 8 KiB of headers (Options.At,
// Options.PMDK; see package pmemblk).
//
// # Constants
//
// Every section is 4 KiB aligned (PageSize) within its arena; an info
// block is 4 KiB (InfoSize). An arena is at most 512 GiB (ArenaMaxSize)
// and at least 16 MiB (ArenaMinSize). A map entry is 4 bytes, a log
// entry 16, a lane's log group 64. Linux writes nfree = 256 free blocks
// (DefaultNFree, one per lane). The internal block size is the external
// one rounded up to 64 bytes (InternalAlign).
//
// # Arenas
//
// The space after the initial offset is cut, from the start, into as
// many 512 GiB arenas as fit, then one shorter arena if at least 16 MiB
// is left; a tail under 16 MiB is unused (the kernel's create_arenas).
// Each arena's nextoff is its size, except the last's, which is 0.
//
// Within an arena of size bytes (the kernel's alloc_arena), with
// external sector size E and nfree free blocks, all in unsigned integer
// arithmetic:
//
//	L             = roundup(E, 64)                 internal_lbasize
//	avail         = rounddown(size, 4096) - 2*4096 minus the two info blocks
//	logsize       = roundup(nfree*64, 4096)
//	avail        -= logsize
//	internal_nlba = (avail - 4096) / (L + 4)       the 4096 leaves room to round the map up
//	external_nlba = internal_nlba - nfree
//	mapsize       = roundup(external_nlba*4, 4096)
//	dataoff = 4096, mapoff = dataoff + (avail - mapsize),
//	logoff  = mapoff + mapsize, info2off = logoff + logsize
//
// so an arena is laid out as:
//
//	+--------------------+ arena offset 0
//	| info block (4 KiB) |  signature, uuids, counts, offsets, checksum
//	+--------------------+ dataoff (4096)
//	| data blocks        |  internal_nlba blocks of internal_lbasize bytes
//	|  ...               |  (external_nlba in use + nfree free); block b
//	|                    |  is at dataoff + b*L; a few KiB of slack follow
//	+--------------------+ mapoff
//	| map                |  external_nlba little-endian u32
//	+--------------------+ logoff
//	| log (flog)         |  nfree lanes x 64 bytes
//	+--------------------+ info2off = rounddown(size, 4096) - 4096
//	| info2 (4 KiB)      |  backup of the info block
//	+--------------------+
//
// internal_nlba always fits in the map's 30 block bits. Reading the
// geometry back (Open, Check) never trusts it: every offset and count is
// checked against the arena and the device before it sizes anything.
//
// # The info block
//
// The field table is on Info. The checksum is the kernel's
// nd_fletcher64 over the 1024 little-endian 32-bit words of the block
// with the checksum field counted as zero (Checksum). A block is valid
// when its signature matches, its checksum matches, and its parent_uuid
// is either all zeros (no check: a label-less namespace) or the
// namespace's uuid (Verify). The error flag (bit 0 of flags) marks an
// arena Linux stopped writing to: it is read-only. info2 is a byte copy
// of the primary; Linux writes it at creation and never reads it; the
// checker restores either one from the other.
//
// # The map
//
// Entry i of an arena's map says where the arena's sector i lives. Bits
// 0-29 are the internal block; bit 30 (E) and bit 31 (Z) are flags:
//
//	Z E
//	0 0   the initial identity: sector i is block i (a map never written)
//	1 1   normal: the block in bits 0-29
//	1 0   zero: the sector reads as zeros (a trimmed sector)
//	0 1   error: reads fail until the sector is rewritten (a media error)
//
// A new map is all zeros, so every sector starts as the identity.
//
// # The log
//
// Lane k's log group is the 64 bytes at logoff + 64k: four 16-byte
// slots, two of which hold entries {lba, old_map, new_map, seq}, the
// other two being zero padding. Linux 4.15 and later, UEFI and PMDK use
// slots (0,1); older Linux used (0,2). The kernel's log_set_indices
// tells them apart at open by which slots hold non-zero bytes (a BTT
// never written has only slot 0 and is read as (0,1)); Open and Check do
// the same.
//
// seq is 1, 2 or 3 in a valid entry (0: empty) and cycles 1, 2, 3, 1;
// the lane's current entry is the newer of its two slots in that cycle
// (the kernel's btt_log_get_old, whose corner cases Open follows), and
// the next write goes into the other, older slot. old_map of the current
// entry is the lane's free block; map flags may appear in the log's map
// fields (Linux sets E on old_map when the replaced entry was in the
// error state; other writers set both), so they are masked before use.
//
// # The core invariant
//
// Within an arena, every internal block is referenced exactly once by
// the union of the map entries (identity rule applied) and the lanes'
// free blocks (after any pending roll-forward, below). The checker's
// bitmap step checks it; VerifyPermutation checks it on any image.
//
// # The update protocol
//
// A sector write never overwrites live data. The writing lane owns one
// free block: it writes the data there (P1), logs {lba, old, new, seq}
// into its older log slot as two 8-byte halves (P2a: lba and old; P2b:
// new and seq, which lands last, so a torn entry keeps its old seq and
// is ignored), then points the map at the new block (P3). The old block
// becomes the lane's free block. P1 and P2a share one fence before P2b
// (RELIABILITY.md proves the ordering; the crash explorer checks it).
//
// Readers publish the block they read in a per-lane read tracking table;
// a writer about to reuse a free block waits until no reader holds it.
// Map updates are serialised by locks hashed on the map's cache line.
//
// # Recovery at open
//
// For each lane, the current entry's old_map is the free block. If the
// log committed a write whose map update was lost (the map still holds
// old_map, not new_map), the map entry is rolled forward to new_map: the
// data reached the new block before the log entry did, so completing the
// update is always right (the kernel's btt_freelist_init). Every sector
// thus reads entirely old or entirely new data.
//
// # Checking
//
// Check follows ndctl check-namespace, step by step:
//
//   - Finding arena 0: a valid info block at 4096 (version 1.1), else at
//     0 (2.0); else recovery of arena 0's info block, for 4096 then 0,
//     from, in turn, the backup at the end of arena 0, the last arena's
//     backup with arena 0's own fields (flags, counts, offsets,
//     checksum) taken from the damaged primary, and the copy the damaged
//     primary's info2off points at. A recovered block must name its own
//     location in info2off, so another arena's backup is never taken
//     for arena 0's.
//   - Walking the arenas by nextoff, each damaged primary recovered from
//     its backup (at the end of its arena).
//   - For each arena, in order: the log entries (seq values, bounds of
//     lba, old_map and new_map, masked: flags in the log are legal and
//     reported as notices); the log against the map (an interrupted
//     write is reported, and rolled forward with --repair; the map and
//     bitmap steps see the map as rolled forward, so a pending
//     roll-forward is not mistaken for a block referenced twice); the map
//     entries' bounds (and the zero and error states, as notices); info2
//     against the primary; the bitmap (the core invariant); and, when
//     asked, the log rewritten in the (0,1) format with only slot 0
//     valid, which old and new kernels read alike.
//
// Where ndctl and the kernel disagree, Check sides with the kernel: BTTs
// with 520, 528 or 4104-byte sectors (internal size larger than the
// external one) are valid; flag bits in log map fields are legal; a
// lane the kernel would refuse (equal or out-of-cycle seqs) is an error.
//
// # Safety
//
// Every field read from the media is validated before it sizes an
// allocation or bounds a loop (nfree <= MaxNFree, offsets inside the
// arena and the device, counts consistent). Open never re-lays out an
// existing BTT; a damaged primary info block with a good backup opens
// read-only. Check is the offline checker and repairer behind `nvblk
// check`.
//
// A BTT is safe for concurrent use; Close must not run concurrently with
// I/O.
package btt
