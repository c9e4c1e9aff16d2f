package pmemtest

import (
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync/atomic"

	"github.com/nvblk/nvblk/pmem"
)

// OpKind is the kind of a Device operation seen by a Faulty. The kinds are
// distinct bits, so a set of kinds is their bitwise or (see OnKind).
type OpKind uint8

// Operation kinds.
const (
	OpRead         OpKind = 1 << iota // ReadAt
	OpWrite                           // WriteAt
	OpWritePersist                    // WriteAtPersist
	OpFlush                           // Flush
	OpDrain                           // Drain
	OpPersist                         // Persist

	numOpKinds = iota
)

// Sets of operation kinds.
const (
	// WriteOps are the operations that store data.
	WriteOps = OpWrite | OpWritePersist
	// PersistOps are the operations that make data durable.
	PersistOps = OpWritePersist | OpFlush | OpDrain | OpPersist
	// AllOps is every operation kind.
	AllOps = OpRead | OpWrite | OpWritePersist | OpFlush | OpDrain | OpPersist
)

var opKindNames = [numOpKinds]string{"read", "write", "write-persist", "flush", "drain", "persist"}

// String returns the kind's name, or the names of a set joined by "|".
func (k OpKind) String() string {
	if k == 0 {
		return "none"
	}
	var parts []string
	for i, name := range opKindNames {
		if k&(1<<i) != 0 {
			parts = append(parts, name)
		}
	}
	if rest := k &^ AllOps; rest != 0 {
		parts = append(parts, fmt.Sprintf("OpKind(%#x)", uint8(rest)))
	}
	return strings.Join(parts, "|")
}

// Op describes one operation on a Faulty, as shown to an Injector.
type Op struct {
	Kind OpKind
	Off  int64 // byte offset; 0 for OpDrain
	Len  int64 // length in bytes (len(p) for reads and writes); 0 for OpDrain
	// Index is the number of operations of any kind the Faulty saw before
	// this one: the first operation has Index 0.
	Index int64
}

func (op Op) String() string {
	if op.Kind == OpDrain {
		return fmt.Sprintf("op #%d: drain", op.Index)
	}
	return fmt.Sprintf("op #%d: %s of %d bytes at offset %d", op.Index, op.Kind, op.Len, op.Off)
}

// Overlaps reports whether the op touches a byte of [off, off+n).
// Drains and zero-length operations overlap nothing.
func (op Op) Overlaps(off, n int64) bool {
	if op.Len <= 0 || n <= 0 {
		return false
	}
	return op.Off < off+n && off < op.Off+op.Len
}

// ErrInjected is the default error of the injectors in this package. It
// wraps pmem.ErrMedia, so errors.Is(err, pmem.ErrMedia) holds for it.
var ErrInjected = fmt.Errorf("pmemtest: injected fault: %w", pmem.ErrMedia)

// FaultError is the error a Faulty returns when its injector fails an
// operation. It wraps the injector's error.
type FaultError struct {
	Op  Op
	Err error
}

func (e *FaultError) Error() string { return fmt.Sprintf("%v (%v)", e.Err, e.Op) }

// Unwrap returns the injector's error.
func (e *FaultError) Unwrap() error { return e.Err }

// Injector decides whether an operation fails. MaybeError returns nil to
// let the operation run, or the error to fail it with. Injectors may be
// called from several goroutines at once.
type Injector interface {
	MaybeError(op Op) error
}

// InjectorFunc adapts a function to the Injector interface.
type InjectorFunc func(op Op) error

// MaybeError returns f(op).
func (f InjectorFunc) MaybeError(op Op) error { return f(op) }

func orInjected(err error) error {
	if err == nil {
		return ErrInjected
	}
	return err
}

// Always fails every operation with err (ErrInjected if err is nil).
func Always(err error) Injector {
	err = orInjected(err)
	return InjectorFunc(func(Op) error { return err })
}

// OnIndex fails the operation whose Index is n with err (ErrInjected if
// err is nil).
func OnIndex(n int64, err error) Injector {
	err = orInjected(err)
	return InjectorFunc(func(op Op) error {
		if op.Index == n {
			return err
		}
		return nil
	})
}

// OnKind consults inj only for operations whose kind is in kinds (one
// kind, or a set such as OpWrite|OpFlush or WriteOps).
func OnKind(kinds OpKind, inj Injector) Injector {
	return InjectorFunc(func(op Op) error {
		if op.Kind&kinds == 0 {
			return nil
		}
		return inj.MaybeError(op)
	})
}

// InRange consults inj only for operations touching a byte of
// [off, off+n). Drains never touch a range.
func InRange(off, n int64, inj Injector) Injector {
	return InjectorFunc(func(op Op) error {
		if !op.Overlaps(off, n) {
			return nil
		}
		return inj.MaybeError(op)
	})
}

// After lets the first n operations it is asked about pass and consults
// inj for every later one. It counts the operations that reach it, so
// OnKind(OpWrite, After(2, inj)) consults inj from the third write on.
func After(n int64, inj Injector) Injector {
	var seen atomic.Int64
	return InjectorFunc(func(op Op) error {
		if seen.Add(1) <= n {
			return nil
		}
		return inj.MaybeError(op)
	})
}

// Every consults inj for every k-th operation it is asked about (the k-th,
// 2k-th, ...) and lets the others pass. k must be positive.
func Every(k int64, inj Injector) Injector {
	if k <= 0 {
		panic(fmt.Sprintf("pmemtest: Every(%d): k must be positive", k))
	}
	var seen atomic.Int64
	return InjectorFunc(func(op Op) error {
		if seen.Add(1)%k != 0 {
			return nil
		}
		return inj.MaybeError(op)
	})
}

// Limit passes errors from inj until it has returned n of them, then lets
// every operation pass. Limit(1, inj) fails only the first matching one.
func Limit(n int64, inj Injector) Injector {
	var fired atomic.Int64
	return InjectorFunc(func(op Op) error {
		if fired.Load() >= n {
			return nil
		}
		err := inj.MaybeError(op)
		if err == nil {
			return nil
		}
		if fired.Add(1) > n {
			return nil // lost a race with another goroutine
		}
		return err
	})
}

// Any returns the first non-nil error of injs, consulted in order. Later
// injectors are not consulted once one fails the operation.
func Any(injs ...Injector) Injector {
	return InjectorFunc(func(op Op) error {
		for _, inj := range injs {
			if err := inj.MaybeError(op); err != nil {
				return err
			}
		}
		return nil
	})
}

// Toggle switches an injector on and off at run time. It starts off: use
// On. It is safe to flip from any goroutine.
type Toggle struct {
	inj Injector
	on  atomic.Bool
}

// NewToggle returns a Toggle, initially off, around inj.
func NewToggle(inj Injector) *Toggle { return &Toggle{inj: inj} }

// On enables the injector.
func (t *Toggle) On() { t.on.Store(true) }

// Off disables the injector: every operation passes.
func (t *Toggle) Off() { t.on.Store(false) }

// Enabled reports whether the toggle is on.
func (t *Toggle) Enabled() bool { return t.on.Load() }

// MaybeError consults the wrapped injector if the toggle is on.
func (t *Toggle) MaybeError(op Op) error {
	if !t.on.Load() {
		return nil
	}
	return t.inj.MaybeError(op)
}

// Faulty wraps a pmem.Device and fails operations chosen by an Injector.
//
// Before each ReadAt, WriteAt, WriteAtPersist, Flush, Drain and Persist it
// numbers the operation (Op.Index) and asks the injector. A failed
// operation returns a *FaultError wrapping the injector's error and, by
// default, does nothing at all: a failed read leaves p untouched, a failed
// write stores nothing, a failed Flush or Persist flushes nothing and a
// failed Drain waits for nothing (so the device's earlier flushes stay
// incomplete until a later Drain succeeds). SetStoreOnFail makes failed
// writes store their data first, as a write over a bad sector does.
//
// Size, Mode, BadBlocks and Close are passed through and never fail by
// injection. Without an injector a Faulty only counts operations. It is
// safe for concurrent use if the wrapped device and the injector are.
type Faulty struct {
	dev         pmem.Device
	inj         atomic.Pointer[injectorBox]
	storeOnFail atomic.Bool

	ops      atomic.Int64
	kinds    [numOpKinds]atomic.Int64
	injected atomic.Int64
}

type injectorBox struct{ inj Injector }

var _ pmem.Device = (*Faulty)(nil)

// NewFaulty wraps d with no injector.
func NewFaulty(d pmem.Device) *Faulty { return &Faulty{dev: d} }

// SetInjector makes inj decide which later operations fail; nil removes
// the injector.
func (f *Faulty) SetInjector(inj Injector) {
	if inj == nil {
		f.inj.Store(nil)
		return
	}
	f.inj.Store(&injectorBox{inj})
}

// SetStoreOnFail sets whether a write failed by injection stores its data
// anyway before returning the error (default false: it stores nothing).
// A failed WriteAtPersist that stores its data does not persist it.
func (f *Faulty) SetStoreOnFail(store bool) { f.storeOnFail.Store(store) }

// Device returns the wrapped device.
func (f *Faulty) Device() pmem.Device { return f.dev }

// Ops returns the number of operations seen so far, failed ones included.
func (f *Faulty) Ops() int64 { return f.ops.Load() }

// Count returns the number of operations seen so far whose kind is in
// kinds.
func (f *Faulty) Count(kinds OpKind) int64 {
	var n int64
	for k := kinds & AllOps; k != 0; k &= k - 1 {
		n += f.kinds[bits.TrailingZeros8(uint8(k))].Load()
	}
	return n
}

// Injected returns the number of operations failed by injection.
func (f *Faulty) Injected() int64 { return f.injected.Load() }

func (f *Faulty) maybeFail(kind OpKind, off, n int64) error {
	op := Op{Kind: kind, Off: off, Len: n, Index: f.ops.Add(1) - 1}
	f.kinds[bits.TrailingZeros8(uint8(kind))].Add(1)
	box := f.inj.Load()
	if box == nil {
		return nil
	}
	err := box.inj.MaybeError(op)
	if err == nil {
		return nil
	}
	f.injected.Add(1)
	return &FaultError{Op: op, Err: err}
}

// failWrite handles a write failed by injection.
func (f *Faulty) failWrite(p []byte, off int64, err error) (int, error) {
	if !f.storeOnFail.Load() {
		return 0, err
	}
	n, werr := f.dev.WriteAt(p, off)
	if werr != nil && !errors.Is(werr, pmem.ErrMedia) {
		return n, werr // closed or out of range: report the real cause
	}
	return n, err
}

// ReadAt reads from the wrapped device unless the injector fails it.
func (f *Faulty) ReadAt(p []byte, off int64) (int, error) {
	if err := f.maybeFail(OpRead, off, int64(len(p))); err != nil {
		return 0, err
	}
	return f.dev.ReadAt(p, off)
}

// WriteAt writes to the wrapped device unless the injector fails it.
func (f *Faulty) WriteAt(p []byte, off int64) (int, error) {
	if err := f.maybeFail(OpWrite, off, int64(len(p))); err != nil {
		return f.failWrite(p, off, err)
	}
	return f.dev.WriteAt(p, off)
}

// WriteAtPersist writes and persists unless the injector fails it.
func (f *Faulty) WriteAtPersist(p []byte, off int64) (int, error) {
	if err := f.maybeFail(OpWritePersist, off, int64(len(p))); err != nil {
		return f.failWrite(p, off, err)
	}
	return f.dev.WriteAtPersist(p, off)
}

// WriteAtFlush writes and flushes unless the injector fails it (as a
// WritePersist operation), in which case nothing is stored (or, with
// SetStoreOnFail, stored but not flushed).
func (f *Faulty) WriteAtFlush(p []byte, off int64) (int, error) {
	if err := f.maybeFail(OpWritePersist, off, int64(len(p))); err != nil {
		return f.failWrite(p, off, err)
	}
	return f.dev.WriteAtFlush(p, off)
}

// Flush flushes unless the injector fails it, in which case nothing is
// flushed.
func (f *Faulty) Flush(off, n int64) error {
	if err := f.maybeFail(OpFlush, off, n); err != nil {
		return err
	}
	return f.dev.Flush(off, n)
}

// Drain drains unless the injector fails it.
func (f *Faulty) Drain() error {
	if err := f.maybeFail(OpDrain, 0, 0); err != nil {
		return err
	}
	return f.dev.Drain()
}

// Persist persists unless the injector fails it, in which case nothing is
// flushed or drained.
func (f *Faulty) Persist(off, n int64) error {
	if err := f.maybeFail(OpPersist, off, n); err != nil {
		return err
	}
	return f.dev.Persist(off, n)
}

// Size returns the wrapped device's size.
func (f *Faulty) Size() int64 { return f.dev.Size() }

// Mode returns the wrapped device's mode.
func (f *Faulty) Mode() pmem.Mode { return f.dev.Mode() }

// BadBlocks returns the wrapped device's badblock list.
func (f *Faulty) BadBlocks() *pmem.BadBlocks { return f.dev.BadBlocks() }

// Close closes the wrapped device.
func (f *Faulty) Close() error { return f.dev.Close() }
