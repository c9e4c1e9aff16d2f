//go:build !amd64

package cacheflush

import "unsafe"

// Cache flushing is only implemented on amd64. Elsewhere nothing is
// detected, so Current is KindNone and CopyNT never selects non-temporal
// stores; flushRange and fence do nothing.

func detectCPU() features { return features{} }

func flushRange(k Kind, base, n uintptr) {}

func fence() {}

func copyNTLines(m ntMode, dst, src unsafe.Pointer, n uintptr) {
	copy(unsafe.Slice((*byte)(dst), n), unsafe.Slice((*byte)(src), n))
}
