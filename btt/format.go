package btt

import (
	"bytes"
	"encoding/binary"
)

// On-media constants (doc.go, Constants).
const (
	PageSize        = 4096    // BTT_PG_SIZE: alignment of every section, info block size
	InfoSize        = 4096    // size of an info block
	ArenaMinSize    = 1 << 24 // ARENA_MIN_SIZE: 16 MiB
	ArenaMaxSize    = 1 << 39 // ARENA_MAX_SIZE: 512 GiB
	MapEntrySize    = 4       // bytes per map entry
	LogEntrySize    = 16      // bytes per flog entry
	LogGroupSize    = 64      // bytes per lane's log group (4 slots)
	DefaultNFree    = 256     // nfree written by Linux (ND_MAX_LANES)
	InternalAlign   = 64      // internal_lbasize = roundup(external, 64)
	InitialOffset11 = 4096    // namespace offset of arena 0 for version 1.1
	InitialOffset20 = 0       // namespace offset of arena 0 for version 2.0

	infoFlagError = 0x00000001 // IB_FLAG_ERROR

	mapZ       = 1 << 31    // MAP_TRIM_SHIFT: zero
	mapE       = 1 << 30    // MAP_ERR_SHIFT: error
	mapLBAMask = 0x3FFFFFFF // postmap bits
	mapNormal  = mapZ | mapE
)

// Signature is the 16-byte info block signature.
var Signature = [16]byte{'B', 'T', 'T', '_', 'A', 'R', 'E', 'N', 'A', '_', 'I', 'N', 'F', 'O', 0, 0}

// SupportedLBASizes are the external sector sizes Linux accepts
// (btt_lbasize_supported).
var SupportedLBASizes = []uint32{512, 520, 528, 4096, 4104, 4160, 4224}

// LBASizeSupported reports whether n is one of SupportedLBASizes.
func LBASizeSupported(n uint32) bool {
	for _, s := range SupportedLBASizes {
		if s == n {
			return true
		}
	}
	return false
}

// Info is a decoded BTT info block (struct btt_sb). Offsets are
// arena-relative, as stored.
//
//	off  size  field
//	  0    16  signature "BTT_ARENA_INFO\0\0"
//	 16    16  uuid
//	 32    16  parent_uuid
//	 48     4  flags (bit 0: arena error)
//	 52     2  version_major
//	 54     2  version_minor
//	 56     4  external_lbasize
//	 60     4  external_nlba
//	 64     4  internal_lbasize
//	 68     4  internal_nlba
//	 72     4  nfree
//	 76     4  infosize
//	 80     8  nextoff
//	 88     8  dataoff
//	 96     8  mapoff
//	104     8  logoff
//	112     8  info2off
//	120  3968  padding (zero)
//	4088    8  checksum (Fletcher-64 variant, see Checksum)
type Info struct {
	Signature       [16]byte
	UUID            [16]byte
	ParentUUID      [16]byte
	Flags           uint32
	Major, Minor    uint16
	ExternalLBASize uint32
	ExternalNLBA    uint32
	InternalLBASize uint32
	InternalNLBA    uint32
	NFree           uint32
	InfoSize        uint32
	NextOff         uint64
	DataOff         uint64
	MapOff          uint64
	LogOff          uint64
	Info2Off        uint64
	Checksum        uint64
}

// Field offsets in an info block (the table on Info).
const (
	ibSignature  = 0
	ibUUID       = 16
	ibParentUUID = 32
	ibFlags      = 48
	ibMajor      = 52
	ibMinor      = 54
	ibExtLBASize = 56
	ibExtNLBA    = 60
	ibIntLBASize = 64
	ibIntNLBA    = 68
	ibNFree      = 72
	ibInfoSize   = 76
	ibNextOff    = 80
	ibDataOff    = 88
	ibMapOff     = 96
	ibLogOff     = 104
	ibInfo2Off   = 112
	ibPadding    = 120
	ibChecksum   = 4088
)

// Encode writes the info block into b (len >= InfoSize), with a zero
// padding area and a freshly computed checksum (ib.Checksum is updated).
func (ib *Info) Encode(b []byte) {
	b = b[:InfoSize]
	clear(b)
	le := binary.LittleEndian
	copy(b[ibSignature:], ib.Signature[:])
	copy(b[ibUUID:], ib.UUID[:])
	copy(b[ibParentUUID:], ib.ParentUUID[:])
	le.PutUint32(b[ibFlags:], ib.Flags)
	le.PutUint16(b[ibMajor:], ib.Major)
	le.PutUint16(b[ibMinor:], ib.Minor)
	le.PutUint32(b[ibExtLBASize:], ib.ExternalLBASize)
	le.PutUint32(b[ibExtNLBA:], ib.ExternalNLBA)
	le.PutUint32(b[ibIntLBASize:], ib.InternalLBASize)
	le.PutUint32(b[ibIntNLBA:], ib.InternalNLBA)
	le.PutUint32(b[ibNFree:], ib.NFree)
	le.PutUint32(b[ibInfoSize:], ib.InfoSize)
	le.PutUint64(b[ibNextOff:], ib.NextOff)
	le.PutUint64(b[ibDataOff:], ib.DataOff)
	le.PutUint64(b[ibMapOff:], ib.MapOff)
	le.PutUint64(b[ibLogOff:], ib.LogOff)
	le.PutUint64(b[ibInfo2Off:], ib.Info2Off)
	ib.Checksum = Checksum(b)
	le.PutUint64(b[ibChecksum:], ib.Checksum)
}

// DecodeInfo decodes an info block without validating it.
func DecodeInfo(b []byte) Info {
	b = b[:InfoSize]
	le := binary.LittleEndian
	var ib Info
	copy(ib.Signature[:], b[ibSignature:ibUUID])
	copy(ib.UUID[:], b[ibUUID:ibParentUUID])
	copy(ib.ParentUUID[:], b[ibParentUUID:ibFlags])
	ib.Flags = le.Uint32(b[ibFlags:])
	ib.Major = le.Uint16(b[ibMajor:])
	ib.Minor = le.Uint16(b[ibMinor:])
	ib.ExternalLBASize = le.Uint32(b[ibExtLBASize:])
	ib.ExternalNLBA = le.Uint32(b[ibExtNLBA:])
	ib.InternalLBASize = le.Uint32(b[ibIntLBASize:])
	ib.InternalNLBA = le.Uint32(b[ibIntNLBA:])
	ib.NFree = le.Uint32(b[ibNFree:])
	ib.InfoSize = le.Uint32(b[ibInfoSize:])
	ib.NextOff = le.Uint64(b[ibNextOff:])
	ib.DataOff = le.Uint64(b[ibDataOff:])
	ib.MapOff = le.Uint64(b[ibMapOff:])
	ib.LogOff = le.Uint64(b[ibLogOff:])
	ib.Info2Off = le.Uint64(b[ibInfo2Off:])
	ib.Checksum = le.Uint64(b[ibChecksum:])
	return ib
}

// Checksum computes the info block checksum of b (4096 bytes) with the
// checksum field taken as zero: the kernel's nd_fletcher64 over 1024
// little-endian 32-bit words, lo wrapping at 32 bits, hi at 64.
func Checksum(b []byte) uint64 {
	b = b[:InfoSize]
	var lo uint32
	var hi uint64
	for i := 0; i < InfoSize; i += 4 {
		w := binary.LittleEndian.Uint32(b[i:])
		if i >= ibChecksum {
			w = 0
		}
		lo += w
		hi += uint64(lo)
	}
	return hi<<32 | uint64(lo)
}

// InfoFault says why an info block is not valid; "" means valid.
type InfoFault string

// Reasons an info block is rejected.
const (
	InfoOK          InfoFault = ""
	InfoBadSig      InfoFault = "bad signature"
	InfoBadParent   InfoFault = "parent uuid does not match the namespace"
	InfoBadChecksum InfoFault = "checksum mismatch"
)

// Verify applies the kernel's nd_btt_arena_is_valid to raw (4096 bytes):
// signature, parent uuid (when non-null and parent is non-nil), checksum.
func Verify(raw []byte, parent *[16]byte) InfoFault {
	if !bytes.Equal(raw[:16], Signature[:]) {
		return InfoBadSig
	}
	var zero [16]byte
	if parent != nil && !bytes.Equal(raw[32:48], zero[:]) && !bytes.Equal(raw[32:48], parent[:]) {
		return InfoBadParent
	}
	if binary.LittleEndian.Uint64(raw[4088:]) != Checksum(raw) {
		return InfoBadChecksum
	}
	return InfoOK
}

// LogEntry is one 16-byte flog entry. OldMap and NewMap may carry flag
// bits (bit 30 E, bit 31 Z); mask them with mapLBAMask before use.
type LogEntry struct {
	LBA    uint32
	OldMap uint32
	NewMap uint32
	Seq    uint32
}

// DecodeLogEntry decodes 16 bytes.
func DecodeLogEntry(b []byte) LogEntry {
	le := binary.LittleEndian
	return LogEntry{le.Uint32(b[0:]), le.Uint32(b[4:]), le.Uint32(b[8:]), le.Uint32(b[12:])}
}

// Encode writes the entry into b[:16].
func (e LogEntry) Encode(b []byte) {
	le := binary.LittleEndian
	le.PutUint32(b[0:], e.LBA)
	le.PutUint32(b[4:], e.OldMap)
	le.PutUint32(b[8:], e.NewMap)
	le.PutUint32(b[12:], e.Seq)
}

// IsZero reports an all-zero (padding) entry.
func (e LogEntry) IsZero() bool { return e == LogEntry{} }

// nextSeq is nd_inc_seq: 1 -> 2 -> 3 -> 1; 0 stays 0.
func nextSeq(s uint32) uint32 {
	return [4]uint32{0, 2, 3, 1}[s&3]
}

// olderSlot is btt_log_get_old: given the seqs of the two entry slots,
// which one (0 or 1) is older, or ok=false when the pair is corrupt.
func olderSlot(s0, s1 uint32) (older int, ok bool) {
	if s0 == 0 {
		return 0, true
	}
	if s0 == s1 || s0+s1 > 5 {
		return 0, false
	}
	if s0 < s1 {
		if s1-s0 == 1 {
			return 0, true
		}
		return 1, true
	}
	if s0-s1 == 1 {
		return 1, true
	}
	return 0, true
}

// MapState is the state encoded in a map entry's flag bits.
type MapState uint8

// Map entry states (bit 31 Z, bit 30 E).
const (
	MapIdentity MapState = iota // 00: never written; postmap = premap
	MapError                    // 01 (E only): reads fail
	MapZero                     // 10 (Z only): reads return zeros
	MapNormal                   // 11
)

func (s MapState) String() string {
	return [...]string{"identity", "error", "zero", "normal"}[s]
}

// decodeMap resolves a raw map entry for premap LBA premap.
func decodeMap(raw, premap uint32) (postmap uint32, st MapState) {
	switch raw & mapNormal {
	case 0:
		return premap, MapIdentity
	case mapE:
		return raw & mapLBAMask, MapError
	case mapZ:
		return raw & mapLBAMask, MapZero
	}
	return raw & mapLBAMask, MapNormal
}
