// Package partition reads and writes GUID Partition Tables (GPT) and reads
// MBR partition tables on a pmem.Device, and exposes each partition as a
// pmem.Window: the partition is then a device of its own, on which the
// block drivers (btt, pmemblk, raw) are probed as on a whole namespace.
//
// The authority for the GPT layout is the UEFI specification, chapter 5
// ("GUID Partition Table (GPT) Disk Layout"); Linux's reader is
// block/partitions/efi.c. The logical block size is always 512 bytes
// (SectorSize), whatever the sector size of a BTT inside a partition.
//
// # Layout
//
//	LBA 0               protective MBR: one entry of type 0xEE covering the disk
//	LBA 1               primary GPT header (MyLBA = 1, AlternateLBA = last LBA)
//	LBA 2 .. 33         primary partition entry array (128 entries x 128 bytes)
//	LBA 34              FirstUsableLBA ... partitions (1 MiB aligned) ...
//	LBA last-33         LastUsableLBA
//	LBA last-32 .. -1   backup partition entry array (same bytes as the primary)
//	LBA last            backup GPT header (MyLBA = last, AlternateLBA = 1)
//
// GPT header (little-endian; HeaderSize bytes are covered by HeaderCRC32,
// computed with the CRC field zeroed; the rest of the block is zero):
//
//	off  size  field
//	  0     8  Signature "EFI PART"
//	  8     4  Revision 0x00010000
//	 12     4  HeaderSize (92)
//	 16     4  HeaderCRC32 (IEEE CRC32, as zlib)
//	 20     4  reserved, zero
//	 24     8  MyLBA
//	 32     8  AlternateLBA
//	 40     8  FirstUsableLBA
//	 48     8  LastUsableLBA (inclusive)
//	 56    16  DiskGUID (mixed-endian, see below)
//	 72     8  PartitionEntryLBA
//	 80     4  NumberOfPartitionEntries
//	 84     4  SizeOfPartitionEntry (128 x 2^n)
//	 88     4  PartitionEntryArrayCRC32 (over Number x Size bytes)
//
// Partition entry (an all-zero type GUID marks an unused entry; entry i is
// partition number i+1, as Linux numbers them):
//
//	off  size  field
//	  0    16  PartitionTypeGUID
//	 16    16  UniquePartitionGUID
//	 32     8  StartingLBA
//	 40     8  EndingLBA (inclusive)
//	 48     8  Attributes (bit 0 required, 1 no block IO, 2 legacy BIOS bootable, 48-63 type specific)
//	 56    72  PartitionName: 36 UTF-16LE code units, NUL padded
//
// GUIDs are stored mixed-endian: the first three fields (4, 2 and 2 bytes)
// little-endian, the last 8 bytes as they are written in the text form. So
// 0FC63DAF-8483-4772-8E79-3D69D8477DE4 is stored as
// AF 3D C6 0F 83 84 72 47 8E 79 3D 69 D8 47 7D E4. GUID holds the text
// order (RFC 4122 byte order, like github.com/google/uuid); the swap happens
// only in encode and decode.
//
// # Reading
//
// Read validates the primary header (signature, header CRC, MyLBA, the
// usable range, entry size and count, where the entry array lies, the
// entry array CRC) and then the backup at the primary's AlternateLBA (or
// the last LBA). A valid primary is used; a damaged one (bad CRC, zeroed,
// inconsistent) falls back to a valid backup, and the Table says so in
// FromBackup and Warnings. Every field that sizes an allocation or bounds a
// loop is checked first: at most MaxEntries entries of at most MaxEntrySize
// bytes and MaxArrayBytes in all. Entries whose LBAs are inverted or past
// the end of the device are reported in Warnings and left out.
//
// Without a GPT (no signature at either end and no protective MBR), Read
// returns the primary partitions of a classic MBR (slots 1 to 4; extended
// partitions are reported in Warnings, their logical partitions are not
// read), or ErrNoTable.
//
// # Writing
//
// Plan lays out partitions (1 MiB aligned by default; the last one may take
// the rest of the disk, and then ends on an alignment boundary too, so its
// size is whole 4 KiB pages, which Linux needs to use a partition for DAX)
// and Table.Write writes the backup entry array and header
// first, then the primary ones, then the protective MBR, each step made
// durable before the next. Create does both, and with Options.Wipe zeroes
// the first and last 8 KiB of every new partition, where the BTT (both
// versions, and their backup info blocks) and PMDK pool headers are
// probed, so that a stale signature is not mistaken for content.
//
// # Type GUIDs
//
// nvblk gives every partition it creates the Linux filesystem data type
// (0FC63DAF-8483-4772-8E79-3D69D8477DE4), including the partitions that
// later hold a BTT or a PMDK pool: what a partition holds is decided by
// probing its content (the block driver registry), never by its type GUID,
// as Linux does for namespaces. Tables written by other tools keep their
// types.
//
// Nothing in this package is safe for concurrent use with a writer of the
// same table; a Table value is plain data.
package partition
