package cacheflush

import (
	"os"
	"strconv"
	"sync/atomic"
	"unsafe"
)

// LineSize is the cache-line size the flush loops step by. Every x86-64
// CPU uses 64-byte lines (see the CLFLUSH line size in CPUID leaf 1).
const LineSize = 64

// NTThreshold is the length from which CopyNT uses non-temporal stores;
// shorter copies are an ordinary copy followed by Flush (at most five
// lines). At and above it, the 64-byte-aligned middle of the copy (at least
// 192 bytes) is written with non-temporal stores. Measured with a fence
// after each copy (BenchmarkCopyNTMode), both ways cost the same at 256 and
// 512 bytes, where the fence waiting for the write-backs dominates, and
// non-temporal stores win from 1 KiB on (about 1.5x at 1 KiB, 2.5x at 4 KiB).
const NTThreshold = 256

// Kind is a cache-flush instruction.
type Kind int

// The flush kinds, weakest first. The zero value KindNone means no flush.
const (
	KindNone       Kind = iota // no cache flush
	KindCLFLUSH                // CLFLUSH: write back and invalidate, ordered
	KindCLFLUSHOPT             // CLFLUSHOPT: write back and invalidate, weakly ordered
	KindCLWB                   // CLWB: write back, line may stay cached, weakly ordered
)

// String returns the instruction name in lower case ("clwb", "clflushopt",
// "clflush") or "none".
func (k Kind) String() string {
	switch k {
	case KindNone:
		return "none"
	case KindCLFLUSH:
		return "clflush"
	case KindCLFLUSHOPT:
		return "clflushopt"
	case KindCLWB:
		return "clwb"
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// features is what the CPU (and OS) support, detected once.
type features struct {
	clflush    bool // CPUID.1:EDX[19]
	clflushopt bool // CPUID.(7,0):EBX[23]
	clwb       bool // CPUID.(7,0):EBX[24]
	sse2       bool // CPUID.1:EDX[26]
	avx2       bool // CPUID.(7,0):EBX[5], and the OS saves YMM state (OSXSAVE, XCR0[2:1])

	// clflushLine is the CLFLUSH line size from CPUID.1:EBX[15:8]*8,
	// 0 if unknown.
	clflushLine uintptr
}

// ntMode is how CopyNT writes the aligned middle of a long copy.
type ntMode uint8

const (
	ntOff  ntMode = iota // ordinary copy + Flush
	ntSSE2               // MOVOU loads, MOVNTDQ stores
	ntAVX2               // VMOVDQU loads, VMOVNTDQ stores
)

func (m ntMode) String() string {
	switch m {
	case ntOff:
		return "off"
	case ntSSE2:
		return "sse2"
	case ntAVX2:
		return "avx2"
	}
	return "ntMode(" + strconv.Itoa(int(m)) + ")"
}

// config is the immutable selection made from the CPU features and the
// environment; ReloadEnv replaces it atomically.
type config struct {
	kind       Kind
	noFlush    bool
	pmemForced bool
	nt         ntMode
}

// cpu is set during package variable initialisation, before init runs.
var cpu = detectCPU()

var cfg atomic.Pointer[config]

func init() { ReloadEnv() }

// selectConfig chooses the flush kind and the copy mode for CPU f under the
// environment getenv.
func selectConfig(getenv func(string) string, f features) *config {
	c := &config{
		noFlush:    getenv("PMEM_NO_FLUSH") == "1",
		pmemForced: getenv("PMEM_IS_PMEM_FORCE") == "1",
	}
	if !c.noFlush {
		switch {
		case f.clwb && getenv("PMEM_NO_CLWB") != "1":
			c.kind = KindCLWB
		case f.clflushopt && getenv("PMEM_NO_CLFLUSHOPT") != "1":
			c.kind = KindCLFLUSHOPT
		case f.clflush:
			c.kind = KindCLFLUSH
		}
	}
	if getenv("PMEM_NO_MOVNT") != "1" {
		switch {
		case f.avx2:
			c.nt = ntAVX2
		case f.sse2:
			c.nt = ntSSE2
		}
	}
	return c
}

// ReloadEnv re-reads the environment variables (see the package
// documentation) and re-selects Current. It is meant for tests; calls to the
// other functions running concurrently see either the old or the new
// selection.
func ReloadEnv() {
	cfg.Store(selectConfig(os.Getenv, cpu))
}

// Detect reports what CPUID says about the flush instructions:
// CLFLUSH (leaf 1, EDX bit 19), CLFLUSHOPT (leaf 7 subleaf 0, EBX bit 23)
// and CLWB (leaf 7 subleaf 0, EBX bit 24). The environment is not taken
// into account. CPUID is executed once, at initialisation.
func Detect() (clflush, clflushopt, clwb bool) {
	return cpu.clflush, cpu.clflushopt, cpu.clwb
}

// Supported reports whether FlushKind can use k on this CPU. KindNone is
// always supported.
func Supported(k Kind) bool {
	switch k {
	case KindNone:
		return true
	case KindCLFLUSH:
		return cpu.clflush
	case KindCLFLUSHOPT:
		return cpu.clflushopt
	case KindCLWB:
		return cpu.clwb
	}
	return false
}

// Current returns the flush kind Flush uses: the best the CPU has
// (CLWB, then CLFLUSHOPT, then CLFLUSH) unless excluded by PMEM_NO_CLWB or
// PMEM_NO_CLFLUSHOPT, or KindNone with PMEM_NO_FLUSH=1.
func Current() Kind { return cfg.Load().kind }

// NoFlush reports whether cache flushing is disabled (PMEM_NO_FLUSH=1).
func NoFlush() bool { return cfg.Load().noFlush }

// PmemForced reports whether PMEM_IS_PMEM_FORCE=1: the caller should treat
// its mappings as persistent memory and use CPU cache flushes.
func PmemForced() bool { return cfg.Load().pmemForced }

// Flush writes back every cache line overlapping [addr, addr+n) with
// Current's instruction. It does nothing if n is 0 or flushing is
// disabled. With CLWB and CLFLUSHOPT the write-backs are complete only after
// Fence.
func Flush(addr unsafe.Pointer, n uintptr) {
	if n == 0 {
		return
	}
	flushRange(cfg.Load().kind, uintptr(addr), n)
}

// FlushKind is Flush with an explicit instruction, regardless of the
// environment; it is meant for tests and benchmarks. KindNone does nothing.
// It panics if the CPU does not support k (see Supported).
func FlushKind(k Kind, addr unsafe.Pointer, n uintptr) {
	if k == KindNone || n == 0 {
		return
	}
	if !Supported(k) {
		unsupported(k)
	}
	flushRange(k, uintptr(addr), n)
}

//go:noinline
func unsupported(k Kind) {
	panic("cacheflush: flush kind " + k.String() + " is not supported by this CPU")
}

// Fence is a store fence (SFENCE). It orders and completes earlier CLWB and
// CLFLUSHOPT write-backs and non-temporal stores; it runs even when
// flushing is disabled.
func Fence() { fence() }

// Persist makes [addr, addr+n) durable: Flush followed by Fence.
func Persist(addr unsafe.Pointer, n uintptr) {
	Flush(addr, n)
	fence()
}

// CopyNT copies min(len(dst), len(src)) bytes from src into dst, which
// should be persistent memory, and returns that count. From NTThreshold
// bytes on, the 64-byte-aligned middle of dst is written with
// non-temporal stores and the unaligned head and tail with an ordinary copy
// followed by Flush; shorter copies, overlapping slices and PMEM_NO_MOVNT=1
// use an ordinary copy followed by Flush. The data is durable once the
// caller has called Fence.
func CopyNT(dst, src []byte) int {
	n := min(len(dst), len(src))
	if n == 0 {
		return 0
	}
	c := cfg.Load()
	copyNTWith(c.nt, c.kind, dst[:n], src[:n])
	return n
}

// CopyPersist is CopyNT followed by Fence: when it returns, the copied
// bytes are durable.
func CopyPersist(dst, src []byte) int {
	n := CopyNT(dst, src)
	fence()
	return n
}

// copyNTWith copies src into dst (len(dst) == len(src) > 0) using copy mode
// m for the aligned middle and flush kind k for the rest.
func copyNTWith(m ntMode, k Kind, dst, src []byte) {
	n := uintptr(len(dst))
	d := uintptr(unsafe.Pointer(&dst[0]))
	s := uintptr(unsafe.Pointer(&src[0]))
	if m == ntOff || n < NTThreshold || (d < s+n && s < d+n) {
		copy(dst, src)
		flushRange(k, d, n)
		return
	}
	head := -d & (LineSize - 1)          // bytes up to dst's first line boundary
	body := (n - head) &^ (LineSize - 1) // whole lines, >= 192 bytes
	if head > 0 {
		copy(dst[:head], src[:head])
		flushRange(k, d, head)
	}
	copyNTLines(m, unsafe.Pointer(&dst[head]), unsafe.Pointer(&src[head]), body)
	if end := head + body; end < n {
		copy(dst[end:], src[end:])
		flushRange(k, d+end, n-end)
	}
}
