package pmemblk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"runtime"
)

// On-media layout of a pool file (PMDK 1.12, 4 KiB pages: x86-64,
// aarch64, riscv64, loongarch64).
const (
	HeaderSize   = 4096 // struct pool_hdr
	DescOffset   = 4096 // struct pmemblk: bsize (u32) then is_zeroed (u32)
	BTTOffset    = 8192 // roundup(sizeof(struct pmemblk), 4096): arena 0's info block
	PageSize     = 4096 // pool sizes are rounded down to this (Mmap_align)
	FormatMajor  = 1    // BLK_FORMAT_MAJOR
	MinBSize     = 512  // internal block minimum (BTT_MIN_LBA_SIZE); smaller bsizes are padded
	DefaultNFree = 256  // BTT_DEFAULT_NFREE: free blocks (and flog lanes) per arena
	// MinPoolSize is PMEMBLK_MIN_POOL: the BTT needs 16 MiB after the
	// 8 KiB of headers.
	MinPoolSize = 16<<20 + BTTOffset
	// MaxBSize is the largest block size nvblk opens or creates
	// (btt.MaxLBASize); libpmemblk accepts up to 2^32-1.
	MaxBSize = 1 << 20
)

// Signature is the 8-byte pool header signature of a pmemblk pool.
var Signature = [8]byte{'P', 'M', 'E', 'M', 'B', 'L', 'K', 0}

// Feature bits of the pool header (pool_hdr.h).
const (
	FeatCheckBadBlocks uint32 = 0x1 // compat: check bad blocks at open

	FeatSingleHdr uint32 = 0x1 // incompat: pool header only in the first part
	FeatCksum2K   uint32 = 0x2 // incompat: only the first 2 KiB are checksummed
	FeatSDS       uint32 = 0x4 // incompat: shutdown state is tracked

	knownCompat   = FeatCheckBadBlocks
	knownIncompat = FeatSingleHdr | FeatCksum2K | FeatSDS
)

// The features PMDK 1.12.1 as built by Debian (with ndctl) writes: what
// `pmempool create blk` and pmemblk_create put in a new pool.
const (
	DefaultCompat   = FeatCheckBadBlocks
	DefaultIncompat = FeatCksum2K | FeatSDS
	DefaultROCompat = 0
)

// struct pmemblk after the pool header (blk.h). Only bsize and is_zeroed
// are on-media format; the rest is run-time state libpmemblk keeps in its
// mapping of the file (so it lands in the file) and rewrites at every
// open. `pmempool info` nevertheless computes the BTT offset as data -
// addr from it, and refuses a pool where that is not positive, so a new
// pool gets addr 0, data BTTOffset, and their sizes.
//
//	off   size  field
//	4096     4  bsize
//	4100     4  is_zeroed
//	4104     8  addr      (run time: the mapping)
//	4112     8  size      (run time: the pool size)
//	4120     4  is_pmem   (run time)
//	4124     4  rdonly    (run time)
//	4128     8  data      (run time: addr + BTTOffset)
//	4136     8  datasize  (run time: size - BTTOffset)
//	4144...     nlba, btt handle, lanes, locks, ctl, set (run time)
const descSize = 48

// encodeDesc returns the bytes written at DescOffset by a new pool.
func encodeDesc(bsize uint32, zeroed bool, poolSize int64) []byte {
	b := make([]byte, descSize)
	le.PutUint32(b[0:], bsize)
	if zeroed {
		le.PutUint32(b[4:], 1)
	}
	le.PutUint64(b[16:], uint64(poolSize))
	le.PutUint64(b[32:], BTTOffset)
	le.PutUint64(b[40:], uint64(poolSize-BTTOffset))
	return b
}

// Architecture flags values (pool_hdr.h).
const (
	MachineClass64 = 2  // PMDK_MACHINE_CLASS_64
	DataLE         = 1  // PMDK_DATA_LE
	MachineX86_64  = 62 // PMDK_MACHINE_X86_64 (ELF EM_X86_64)
	MachineAArch64 = 183
	MachinePPC64   = 21
	MachineRISCV64 = 243
	MachineLoong64 = 258

	// AlignmentDescX86_64 is the alignment descriptor PMDK computes on
	// x86-64 (and on aarch64, riscv64 and loongarch64: LP64 with a
	// 16-byte aligned long double): 4 bits per C type (char, short, int,
	// long, long long, size_t, off_t, float, double, long double, void *
	// from the low end), each the type's alignment minus one.
	AlignmentDescX86_64 = 0x000007f737777310
)

// Header field offsets (struct pool_hdr, little-endian).
//
//	off   size  field
//	   0     8  signature "PMEMBLK\0"
//	   8     4  major (1)
//	  12     4  features.compat
//	  16     4  features.incompat
//	  20     4  features.ro_compat
//	  24    16  poolset_uuid (the BTT's parent_uuid)
//	  40    16  uuid (this file)
//	  56    16  prev_part_uuid  \
//	  72    16  next_part_uuid   | a single-file pool links to itself:
//	  88    16  prev_repl_uuid   | all four equal uuid
//	 104    16  next_repl_uuid  /
//	 120     8  crtime (seconds since the epoch)
//	 128     8  arch_flags.alignment_desc
//	 136     1  arch_flags.machine_class (2: 64-bit)
//	 137     1  arch_flags.data (1: little endian)
//	 138     4  arch_flags.reserved (zero)
//	 142     2  arch_flags.machine (62: x86-64)
//	 144  1904  unused (zero)
//	2048  1976  unused2 (zero; not checksummed with CKSUM_2K)
//	4024    64  sds: shutdown state (usc, uuid, dirty, checksum)
//	4088     8  checksum (Fletcher-64 of [0, 2048) with CKSUM_2K, else of
//	            the whole 4 KiB; the checksum field counts as zero)
const (
	offMajor       = 8
	offCompat      = 12
	offIncompat    = 16
	offROCompat    = 20
	offPoolsetUUID = 24
	offUUID        = 40
	offPrevPart    = 56
	offNextPart    = 72
	offPrevRepl    = 88
	offNextRepl    = 104
	offCrtime      = 120
	offArch        = 128
	offUnused      = 144
	offUnused2     = 2048
	offSDS         = 4024
	offChecksum    = 4088
	sdsSize        = 64
)

// ArchFlags identifies the architecture a pool was created on.
type ArchFlags struct {
	AlignmentDesc uint64
	MachineClass  uint8
	Data          uint8
	Reserved      [4]byte
	Machine       uint16
}

// HostArchFlags returns the flags PMDK writes on the architecture nvblk
// runs on (libpmemblk refuses a pool with another architecture's flags).
// Every supported architecture is LP64, little-endian, with 4 KiB pages
// and 16-byte aligned long double, so only the machine differs; others
// (ppc64's 64 KiB pages move the BTT; 32-bit and big-endian targets) are
// refused.
func HostArchFlags() (ArchFlags, error) {
	m, ok := map[string]uint16{"amd64": MachineX86_64, "arm64": MachineAArch64, "riscv64": MachineRISCV64, "loong64": MachineLoong64}[runtime.GOARCH]
	if !ok {
		return ArchFlags{}, fmt.Errorf("%w: nvblk cannot create pools on %s (PMDK's layout for it differs)", ErrFormat, runtime.GOARCH)
	}
	return ArchFlags{AlignmentDesc: AlignmentDescX86_64, MachineClass: MachineClass64, Data: DataLE, Machine: m}, nil
}

// Header is a decoded pool header (struct pool_hdr).
type Header struct {
	Signature    [8]byte
	Major        uint32
	Compat       uint32
	Incompat     uint32
	ROCompat     uint32
	PoolsetUUID  [16]byte
	UUID         [16]byte
	PrevPartUUID [16]byte
	NextPartUUID [16]byte
	PrevReplUUID [16]byte
	NextReplUUID [16]byte
	CrTime       uint64 // seconds since the epoch
	Arch         ArchFlags
	SDS          [sdsSize]byte // shutdown state, kept as raw bytes
	Checksum     uint64
}

var le = binary.LittleEndian

// DecodeHeader decodes the first HeaderSize bytes of b without
// validating them.
func DecodeHeader(b []byte) Header {
	b = b[:HeaderSize]
	var h Header
	copy(h.Signature[:], b[0:8])
	h.Major = le.Uint32(b[offMajor:])
	h.Compat = le.Uint32(b[offCompat:])
	h.Incompat = le.Uint32(b[offIncompat:])
	h.ROCompat = le.Uint32(b[offROCompat:])
	copy(h.PoolsetUUID[:], b[offPoolsetUUID:])
	copy(h.UUID[:], b[offUUID:])
	copy(h.PrevPartUUID[:], b[offPrevPart:])
	copy(h.NextPartUUID[:], b[offNextPart:])
	copy(h.PrevReplUUID[:], b[offPrevRepl:])
	copy(h.NextReplUUID[:], b[offNextRepl:])
	h.CrTime = le.Uint64(b[offCrtime:])
	h.Arch.AlignmentDesc = le.Uint64(b[offArch:])
	h.Arch.MachineClass = b[offArch+8]
	h.Arch.Data = b[offArch+9]
	copy(h.Arch.Reserved[:], b[offArch+10:offArch+14])
	h.Arch.Machine = le.Uint16(b[offArch+14:])
	copy(h.SDS[:], b[offSDS:])
	h.Checksum = le.Uint64(b[offChecksum:])
	return h
}

// Encode writes the header into b[:HeaderSize] with zero unused areas
// and a freshly computed checksum (h.Checksum is updated).
func (h *Header) Encode(b []byte) {
	b = b[:HeaderSize]
	clear(b)
	copy(b[0:8], h.Signature[:])
	le.PutUint32(b[offMajor:], h.Major)
	le.PutUint32(b[offCompat:], h.Compat)
	le.PutUint32(b[offIncompat:], h.Incompat)
	le.PutUint32(b[offROCompat:], h.ROCompat)
	copy(b[offPoolsetUUID:], h.PoolsetUUID[:])
	copy(b[offUUID:], h.UUID[:])
	copy(b[offPrevPart:], h.PrevPartUUID[:])
	copy(b[offNextPart:], h.NextPartUUID[:])
	copy(b[offPrevRepl:], h.PrevReplUUID[:])
	copy(b[offNextRepl:], h.NextReplUUID[:])
	le.PutUint64(b[offCrtime:], h.CrTime)
	le.PutUint64(b[offArch:], h.Arch.AlignmentDesc)
	b[offArch+8] = h.Arch.MachineClass
	b[offArch+9] = h.Arch.Data
	copy(b[offArch+10:offArch+14], h.Arch.Reserved[:])
	le.PutUint16(b[offArch+14:], h.Arch.Machine)
	copy(b[offSDS:], h.SDS[:])
	h.Checksum = HeaderChecksum(b)
	le.PutUint64(b[offChecksum:], h.Checksum)
}

// HeaderChecksum computes the checksum of a raw header (HeaderSize
// bytes) as util_checksum does: Fletcher-64 over little-endian 32-bit
// words, lo and hi both wrapping at 32 bits, with the checksum field and,
// when the header's own incompat word has CKSUM_2K, everything from byte
// 2048 on counted as zero words (they still advance hi).
func HeaderChecksum(b []byte) uint64 {
	b = b[:HeaderSize]
	end := HeaderSize
	if le.Uint32(b[offIncompat:])&FeatCksum2K != 0 {
		end = offUnused2
	}
	var lo, hi uint32
	for i := 0; i < HeaderSize; i += 4 {
		if i < end && (i < offChecksum || i >= offChecksum+8) {
			lo += le.Uint32(b[i:])
		}
		hi += lo
	}
	return uint64(hi)<<32 | uint64(lo)
}

// HeaderFault says why a raw header is not a valid pmemblk pool header.
type HeaderFault string

// Reasons VerifyHeader rejects a header.
const (
	HeaderOK          HeaderFault = ""
	HeaderZero        HeaderFault = "empty pool header"
	HeaderBadSig      HeaderFault = "not a pmemblk pool (bad signature)"
	HeaderBadMajor    HeaderFault = "unsupported pool format major version"
	HeaderBadChecksum HeaderFault = "pool header checksum is incorrect"
	HeaderBadFeature  HeaderFault = "pool header has unknown incompatible features"
)

// VerifyHeader validates a raw header the way util_header_check does
// before anything else is trusted: signature, major, incompat features,
// then the checksum.
func VerifyHeader(b []byte) HeaderFault {
	b = b[:HeaderSize]
	if isZero(b) {
		return HeaderZero
	}
	if !bytes.Equal(b[0:8], Signature[:]) {
		return HeaderBadSig
	}
	if le.Uint32(b[offMajor:]) != FormatMajor {
		return HeaderBadMajor
	}
	if le.Uint32(b[offIncompat:])&^knownIncompat != 0 {
		return HeaderBadFeature
	}
	if le.Uint64(b[offChecksum:]) != HeaderChecksum(b) {
		return HeaderBadChecksum
	}
	return HeaderOK
}

// Machine names an arch_flags.machine value.
func Machine(m uint16) string {
	switch m {
	case MachineX86_64:
		return "x86-64"
	case MachineAArch64:
		return "aarch64"
	case MachinePPC64:
		return "ppc64"
	case MachineRISCV64:
		return "riscv64"
	case MachineLoong64:
		return "loongarch64"
	}
	return fmt.Sprintf("machine %d", m)
}

// btt4KPage reports whether pools of this machine have 4 KiB pages, so
// the BTT starts at BTTOffset (ppc64 pools have 64 KiB headers).
func btt4KPage(m uint16) bool {
	switch m {
	case MachineX86_64, MachineAArch64, MachineRISCV64, MachineLoong64:
		return true
	}
	return false
}

// FeatureNames renders feature words as pmempool info does.
func FeatureNames(compat, incompat, roCompat uint32) []string {
	var out []string
	add := func(w, bit uint32, name string) {
		if w&bit != 0 {
			out = append(out, name)
		}
	}
	add(compat, FeatCheckBadBlocks, "CHECK_BAD_BLOCKS")
	add(incompat, FeatSingleHdr, "SINGLEHDR")
	add(incompat, FeatCksum2K, "CKSUM_2K")
	add(incompat, FeatSDS, "SHUTDOWN_STATE")
	if u := compat &^ knownCompat; u != 0 {
		out = append(out, fmt.Sprintf("compat:%#x", u))
	}
	if u := incompat &^ knownIncompat; u != 0 {
		out = append(out, fmt.Sprintf("incompat:%#x", u))
	}
	if roCompat != 0 {
		out = append(out, fmt.Sprintf("ro_compat:%#x", roCompat))
	}
	return out
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
