// Package btt implements the Block Translation Table: atomic sector
// updates on byte-addressable persistent memory, in the Linux kernel's
// on-media format (drivers/nvdimm/btt.c; Documentation/driver-api/nvdimm/
// btt.rst; UEFI 2.7 chapter 6 for version 2.0). Images written by Linux's
// nd_btt driver open here, and images written here attach in Linux.
// shared/docs/btt-format.md is the specification this code follows; its
// section numbers are cited in comments.
//
// # Where the BTT sits
//
// Version 1.1 (label-less namespaces, "linux" format) starts at namespace
// byte 4096; version 2.0 (labelled namespaces, "uefi") at byte 0. Open
// probes both (4096 first); a PMDK pool keeps a 1.1 BTT at offset 0 of the
// area after its 8 KiB of headers (Options.At, Options.PMDK).
//
// # An arena
//
// The namespace is cut into arenas of at most 512 GiB (the last one at
// least 16 MiB). Each is laid out as:
//
//	+--------------------+ arena offset 0
//	| info block (4 KiB) |  signature, uuids, counts, offsets, checksum
//	+--------------------+ dataoff (4096)
//	| data blocks        |  internal_nlba blocks of internal_lbasize bytes
//	|  ...               |  (external_nlba in use + nfree free)
//	+--------------------+ mapoff
//	| map                |  external_nlba little-endian u32:
//	|                    |  bits 0-29 block, bit 30 E (error), bit 31 Z (zero)
//	+--------------------+ logoff
//	| log (flog)         |  nfree lanes x 64 bytes; two 16-byte entries
//	|                    |  {lba, old_map, new_map, seq} per lane, in slots
//	|                    |  (0,1) or, written by Linux < 4.15, (0,2)
//	+--------------------+ info2off
//	| info2 (4 KiB)      |  backup of the info block
//	+--------------------+
//
// A map entry with neither flag is the initial identity mapping (LBA i is
// block i); both flags: normal; Z only: reads zeros; E only: reads fail.
//
// # The update protocol
//
// A sector write never overwrites live data. The writing lane owns one
// free block: it writes the data there (P1), logs {lba, old, new, seq}
// into its older log slot (P2a: lba and old; P2b: new and seq, which lands
// last), then points the map at the new block (P3). The old block becomes
// the lane's free block. After a crash, recovery picks each lane's current
// entry (the newer seq) and, if the log committed a write whose map update
// was lost, rolls the map forward. So every sector reads entirely old or
// entirely new. P1 and P2a share one fence (RELIABILITY.md proves it).
//
// Readers publish the block they read in a per-lane read tracking table;
// a writer about to reuse a free block waits until no reader holds it.
// Map updates are serialised by locks hashed on the map's cache line.
//
// # Safety
//
// Every field read from the media is validated before it sizes an
// allocation or bounds a loop (nfree <= MaxNFree, offsets inside the
// arena and the device, counts consistent). Open never re-lays out an
// existing BTT; a damaged primary info block with a good backup opens
// read-only. Check (check.go) is the offline checker and repairer behind
// `nvblk check`.
//
// A BTT is safe for concurrent use; Close must not run concurrently with
// I/O.
package btt
