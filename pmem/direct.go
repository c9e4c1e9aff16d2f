package pmem

import (
	"fmt"
	"unsafe"
)

// Mapped is implemented by the devices whose contents are a memory
// mapping: the file, /dev/dax and RAM devices of this package, and a
// Window over one of them. A stacked driver may load from the mapping
// directly, instead of calling ReadAt for every piece of a request, which
// saves the per-call checks and fault guard on its hot read path. The rules:
//
//   - DirectMapping returns nil whenever direct loads are not allowed: the
//     device is closed, its badblock list is not empty (ReadAt must refuse
//     those sectors), or the mapping is not 8-byte aligned. Call it once
//     per request and use ReadAt when it returns nil.
//   - The caller bounds-checks its offsets against len of the slice.
//   - A load may fault (a file truncated underneath, poisoned memory): run
//     the loads with runtime/debug.SetPanicOnFault(true), recover, locate
//     the fault with FaultOffset and report it with DirectFault.
//   - Loads only: stores go through the Device methods, which persist,
//     clear badblocks and refuse read-only devices.
//   - The slice must not be used after Close (the memory is unmapped).
type Mapped interface {
	Device
	DirectMapping() []byte
}

// FaultOffset reports where in m (a slice returned by DirectMapping) the
// memory fault r happened, r being a value recovered while loading from m
// with faults turned into panics. ok is false when r is anything else,
// which the caller should re-panic: a bounds error or a nil dereference is
// a bug, not a media error.
func FaultOffset(r any, m []byte) (off int64, ok bool) {
	e, isFault := r.(interface{ Addr() uintptr })
	if !isFault || len(m) == 0 {
		return 0, false
	}
	base := uintptr(unsafe.Pointer(unsafe.SliceData(m)))
	if a := e.Addr(); a >= base && a < base+uintptr(len(m)) {
		return int64(a - base), true
	}
	return 0, false
}

// faultErr converts r, a value recovered while accessing [off, off+n) of
// m, into the *MediaError for a fault. If r is not a memory fault inside m,
// faultErr panics with r again.
func faultErr(r any, m []byte, op string, off, n int64) error {
	at, ok := FaultOffset(r, m)
	if !ok {
		panic(r)
	}
	return faultError(op, off, n, at)
}

func faultError(op string, off, n, at int64) *MediaError {
	return &MediaError{Op: op, Off: off, Len: n, Why: fmt.Sprintf("fault at device offset %d", at)}
}

// DirectFault is the *MediaError for a fault at offset at of a device's
// mapping, during a load of [off, off+n): what ReadAt would have returned.
func DirectFault(off, n, at int64) error { return faultError("read", off, n, at) }

var (
	_ Mapped = (*mapDev)(nil)
	_ Mapped = (*Window)(nil)
)

// DirectMapping implements Mapped.
func (d *mapDev) DirectMapping() []byte {
	if d.closed.Load() || d.bb.set.n.Load() != 0 || d.base%8 != 0 {
		return nil
	}
	return d.data
}

// DirectMapping implements Mapped: the window's part of its parent's
// mapping, if the parent is Mapped and the window starts 8-byte aligned.
func (w *Window) DirectMapping() []byte {
	p, ok := w.d.(Mapped)
	if !ok || w.closed.Load() || w.off%8 != 0 {
		return nil
	}
	m := p.DirectMapping()
	if m == nil {
		return nil
	}
	return m[w.off : w.off+w.size : w.off+w.size]
}
