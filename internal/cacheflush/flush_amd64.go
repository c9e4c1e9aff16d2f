//go:build amd64

package cacheflush

import "unsafe"

// Implemented in cpuid_amd64.s.

// cpuid executes CPUID with EAX=eaxArg and ECX=ecxArg.
func cpuid(eaxArg, ecxArg uint32) (eax, ebx, ecx, edx uint32)

// xgetbv0 reads XCR0. Only valid if CPUID reports OSXSAVE.
func xgetbv0() (eax, edx uint32)

// Implemented in flush_amd64.s. Each *Range function writes back every
// 64-byte line overlapping [base, base+n), n may be 0.

//go:noescape
func clwbRange(base, n uintptr)

//go:noescape
func clflushoptRange(base, n uintptr)

//go:noescape
func clflushRange(base, n uintptr)

// sfence executes SFENCE.
func sfence()

// copyNTSSE2 and copyNTAVX2 copy n bytes from src to dst with
// non-temporal stores, 64 bytes per iteration. dst must be 64-byte aligned
// and n a multiple of 64; src may have any alignment. The ranges must not
// overlap. No fence is executed.

//go:noescape
func copyNTSSE2(dst, src unsafe.Pointer, n uintptr)

//go:noescape
func copyNTAVX2(dst, src unsafe.Pointer, n uintptr)

func detectCPU() features {
	var f features
	maxLeaf, _, _, _ := cpuid(0, 0)
	if maxLeaf < 1 {
		return f
	}
	_, ebx1, ecx1, edx1 := cpuid(1, 0)
	f.clflush = edx1&(1<<19) != 0
	f.sse2 = edx1&(1<<26) != 0
	if f.clflush {
		f.clflushLine = uintptr(ebx1>>8&0xff) * 8
	}
	osYMM := false
	if ecx1&(1<<27) != 0 && ecx1&(1<<28) != 0 { // OSXSAVE and AVX
		xcr0, _ := xgetbv0()
		osYMM = xcr0&6 == 6 // XMM and YMM state enabled by the OS
	}
	if maxLeaf >= 7 {
		_, ebx7, _, _ := cpuid(7, 0)
		f.clflushopt = ebx7&(1<<23) != 0
		f.clwb = ebx7&(1<<24) != 0
		f.avx2 = osYMM && ebx7&(1<<5) != 0
	}
	return f
}

func flushRange(k Kind, base, n uintptr) {
	switch k {
	case KindCLWB:
		clwbRange(base, n)
	case KindCLFLUSHOPT:
		clflushoptRange(base, n)
	case KindCLFLUSH:
		clflushRange(base, n)
	}
}

func fence() { sfence() }

func copyNTLines(m ntMode, dst, src unsafe.Pointer, n uintptr) {
	switch m {
	case ntAVX2:
		copyNTAVX2(dst, src, n)
	case ntSSE2:
		copyNTSSE2(dst, src, n)
	default:
		panic("cacheflush: bad copy mode " + m.String())
	}
}
