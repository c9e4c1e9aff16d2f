package partition

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"strings"
	"unicode/utf16"

	"github.com/google/uuid"
)

// Geometry and limits.
const (
	// SectorSize is the GPT/MBR logical block size in bytes.
	SectorSize = 512

	// DefaultEntries is the number of partition entries nvblk writes
	// (16 KiB of entries: the UEFI minimum, what sgdisk and sfdisk write).
	DefaultEntries = 128
	// EntrySize is the size of a partition entry nvblk writes. Linux reads
	// only tables with this entry size.
	EntrySize = 128
	// MaxEntries bounds NumberOfPartitionEntries accepted from media.
	MaxEntries = 1024
	// MaxEntrySize bounds SizeOfPartitionEntry accepted from media.
	MaxEntrySize = 4096
	// MaxArrayBytes bounds the entry array read from media.
	MaxArrayBytes = 1 << 20

	// DefaultAlignment is the partition start alignment of Plan, in bytes.
	DefaultAlignment = 1 << 20

	// NameLen is the length of a partition name in UTF-16 code units.
	NameLen = 36

	// WipeBytes is how much Create (with Options.Wipe) zeroes at the start
	// and at the end of each new partition.
	WipeBytes = 8 << 10

	pageSize = 4096
)

// On-media constants (see Layout in the package documentation).
const (
	gptSignature  = "EFI PART"
	gptRevision   = 0x00010000
	gptHeaderSize = 92

	mbrSigOff       = 510
	mbrTableOff     = 446
	mbrEntrySize    = 16
	mbrDiskSigOff   = 440
	mbrTypeGPT      = 0xEE
	mbrMaxSectors32 = 0xFFFFFFFF
)

// GUID is a GPT GUID in text byte order (the order of its
// 8-4-4-4-12 hexadecimal form, as uuid.UUID). On media the first three
// fields are little-endian; see the package documentation.
type GUID [16]byte

// Well-known partition type GUIDs.
var (
	// LinuxFilesystemData is the type nvblk gives every partition it
	// creates, whatever it will hold (see the package documentation).
	LinuxFilesystemData = MustParseGUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")
	// EFISystem is the EFI system partition type.
	EFISystem = MustParseGUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
)

// typeNames names the type GUIDs that `nvblk list` and `nvblk partition`
// print; unknown types are shown as GUIDs only.
var typeNames = map[GUID]string{
	LinuxFilesystemData: "Linux filesystem",
	EFISystem:           "EFI System",
	MustParseGUID("21686148-6449-6E6F-744E-656564454649"): "BIOS boot",
	MustParseGUID("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F"): "Linux swap",
	MustParseGUID("E6D6D379-F507-44C2-A23C-238F2A3DF928"): "Linux LVM",
	MustParseGUID("A19D880F-05FC-4D3B-A006-743F0F84911E"): "Linux RAID",
	MustParseGUID("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"): "Linux root (x86-64)",
	MustParseGUID("933AC7E1-2EB4-4F13-B844-0E14E2AEF915"): "Linux home",
	MustParseGUID("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"): "Microsoft basic data",
	MustParseGUID("E3C9E316-0B5C-4DB8-817D-F92DF00215AE"): "Microsoft reserved",
}

// TypeName returns a human name for a partition type GUID, or "".
func TypeName(g GUID) string { return typeNames[g] }

// ParseGUID parses the 8-4-4-4-12 text form (any case, optional braces
// or urn:uuid: prefix, as uuid.Parse).
func ParseGUID(s string) (GUID, error) {
	u, err := uuid.Parse(s)
	if err != nil {
		return GUID{}, fmt.Errorf("partition: bad GUID %q: %w", s, err)
	}
	return GUID(u), nil
}

// MustParseGUID is ParseGUID for constants; it panics on a bad GUID.
func MustParseGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic("assertion failed: " + err.Error())
	}
	return g
}

// NewGUID returns a random (version 4, RFC 4122 variant) GUID.
func NewGUID() GUID {
	var g GUID
	if _, err := rand.Read(g[:]); err != nil {
		panic("assertion failed: partition: crypto/rand: " + err.Error())
	}
	g[6] = g[6]&0x0f | 0x40
	g[8] = g[8]&0x3f | 0x80
	return g
}

// String returns the lowercase 8-4-4-4-12 form.
func (g GUID) String() string { return uuid.UUID(g).String() }

// IsZero reports whether g is the all-zero GUID (an unused entry's type).
func (g GUID) IsZero() bool { return g == GUID{} }

// MarshalText implements encoding.TextMarshaler (lowercase 8-4-4-4-12).
func (g GUID) MarshalText() ([]byte, error) { return []byte(g.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (g *GUID) UnmarshalText(b []byte) error {
	v, err := ParseGUID(string(b))
	if err != nil {
		return err
	}
	*g = v
	return nil
}

// putGUID stores g mixed-endian at b[0:16].
func putGUID(b []byte, g GUID) {
	_ = b[15]
	b[0], b[1], b[2], b[3] = g[3], g[2], g[1], g[0]
	b[4], b[5] = g[5], g[4]
	b[6], b[7] = g[7], g[6]
	copy(b[8:16], g[8:16])
}

// getGUID decodes a mixed-endian GUID from b[0:16].
func getGUID(b []byte) GUID {
	_ = b[15]
	var g GUID
	g[0], g[1], g[2], g[3] = b[3], b[2], b[1], b[0]
	g[4], g[5] = b[5], b[4]
	g[6], g[7] = b[7], b[6]
	copy(g[8:16], b[8:16])
	return g
}

// header is a decoded GPT header.
type header struct {
	revision    uint32
	headerSize  uint32
	crc         uint32
	myLBA       uint64
	altLBA      uint64
	firstUsable uint64
	lastUsable  uint64
	diskGUID    GUID
	entriesLBA  uint64
	numEntries  uint32
	entrySize   uint32
	entriesCRC  uint32
}

// encode writes h into the 512-byte block b (zeroing the rest) and
// computes the header CRC over headerSize bytes.
func (h *header) encode(b []byte) {
	clear(b[:SectorSize])
	le := binary.LittleEndian
	copy(b[0:8], gptSignature)
	le.PutUint32(b[8:], h.revision)
	le.PutUint32(b[12:], h.headerSize)
	le.PutUint64(b[24:], h.myLBA)
	le.PutUint64(b[32:], h.altLBA)
	le.PutUint64(b[40:], h.firstUsable)
	le.PutUint64(b[48:], h.lastUsable)
	putGUID(b[56:], h.diskGUID)
	le.PutUint64(b[72:], h.entriesLBA)
	le.PutUint32(b[80:], h.numEntries)
	le.PutUint32(b[84:], h.entrySize)
	le.PutUint32(b[88:], h.entriesCRC)
	h.crc = crc32.ChecksumIEEE(b[:h.headerSize])
	le.PutUint32(b[16:], h.crc)
}

// decodeHeader decodes the fields of a 512-byte block; it checks nothing.
func decodeHeader(b []byte) header {
	le := binary.LittleEndian
	return header{
		revision:    le.Uint32(b[8:]),
		headerSize:  le.Uint32(b[12:]),
		crc:         le.Uint32(b[16:]),
		myLBA:       le.Uint64(b[24:]),
		altLBA:      le.Uint64(b[32:]),
		firstUsable: le.Uint64(b[40:]),
		lastUsable:  le.Uint64(b[48:]),
		diskGUID:    getGUID(b[56:]),
		entriesLBA:  le.Uint64(b[72:]),
		numEntries:  le.Uint32(b[80:]),
		entrySize:   le.Uint32(b[84:]),
		entriesCRC:  le.Uint32(b[88:]),
	}
}

// headerCRC computes the CRC of a header block with its CRC field zeroed;
// n must already be validated (92 <= n <= 512).
func headerCRC(b []byte, n uint32) uint32 {
	var tmp [SectorSize]byte
	copy(tmp[:], b[:SectorSize])
	clear(tmp[16:20])
	return crc32.ChecksumIEEE(tmp[:n])
}

// entry is a decoded partition entry.
type entry struct {
	typ   GUID
	guid  GUID
	first uint64
	last  uint64
	attrs uint64
	name  string
}

func decodeEntry(b []byte) entry {
	le := binary.LittleEndian
	return entry{
		typ:   getGUID(b[0:]),
		guid:  getGUID(b[16:]),
		first: le.Uint64(b[32:]),
		last:  le.Uint64(b[40:]),
		attrs: le.Uint64(b[48:]),
		name:  decodeName(b[56 : 56+2*NameLen]),
	}
}

func (e *entry) encode(b []byte) error {
	clear(b[:EntrySize])
	u, err := encodeName(e.name)
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	putGUID(b[0:], e.typ)
	putGUID(b[16:], e.guid)
	le.PutUint64(b[32:], e.first)
	le.PutUint64(b[40:], e.last)
	le.PutUint64(b[48:], e.attrs)
	for i, c := range u {
		le.PutUint16(b[56+2*i:], c)
	}
	return nil
}

// decodeName decodes UTF-16LE up to the first NUL. Unpaired surrogates
// become U+FFFD.
func decodeName(b []byte) string {
	u := make([]uint16, 0, NameLen)
	for i := 0; i+1 < len(b); i += 2 {
		c := binary.LittleEndian.Uint16(b[i:])
		if c == 0 {
			break
		}
		u = append(u, c)
	}
	return string(utf16.Decode(u))
}

// encodeName encodes a partition name as UTF-16 code units.
func encodeName(s string) ([]uint16, error) {
	if strings.ContainsRune(s, 0) {
		return nil, fmt.Errorf("%w: partition name %q contains a NUL", ErrLayout, s)
	}
	u := utf16.Encode([]rune(s))
	if len(u) > NameLen {
		return nil, fmt.Errorf("%w: partition name %q is %d UTF-16 code units long (at most %d)", ErrLayout, s, len(u), NameLen)
	}
	return u, nil
}

// mbrEntry is one of the four MBR partition slots.
type mbrEntry struct {
	boot  byte
	typ   byte
	start uint32 // LBA
	count uint32 // sectors
}

func decodeMBR(b []byte) (ents [4]mbrEntry, sig bool) {
	sig = b[mbrSigOff] == 0x55 && b[mbrSigOff+1] == 0xAA
	for i := range ents {
		e := b[mbrTableOff+i*mbrEntrySize:]
		ents[i] = mbrEntry{boot: e[0], typ: e[4],
			start: binary.LittleEndian.Uint32(e[8:]), count: binary.LittleEndian.Uint32(e[12:])}
	}
	return ents, sig
}

// encodeProtectiveMBR writes a protective MBR for a disk of nLBA sectors
// into the 512-byte block b: one 0xEE entry from LBA 1 to the end (or
// 0xFFFFFFFF sectors when the disk is larger), CHS fields as sgdisk
// writes them (start 0/0/2, end 0xFF 0xFF 0xFF), no boot code.
func encodeProtectiveMBR(b []byte, nLBA uint64) {
	clear(b[:SectorSize])
	e := b[mbrTableOff:]
	e[0] = 0x00                // not bootable
	e[1], e[2], e[3] = 0, 2, 0 // CHS of LBA 1
	e[4] = mbrTypeGPT
	e[5], e[6], e[7] = 0xFF, 0xFF, 0xFF
	binary.LittleEndian.PutUint32(e[8:], 1)
	binary.LittleEndian.PutUint32(e[12:], uint32(min(nLBA-1, mbrMaxSectors32)))
	b[mbrSigOff], b[mbrSigOff+1] = 0x55, 0xAA
}
