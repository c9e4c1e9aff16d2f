package cacheflush

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

var allKinds = []Kind{KindNone, KindCLFLUSH, KindCLFLUSHOPT, KindCLWB}

// supportedKinds returns the kinds this CPU can execute, KindNone first.
func supportedKinds() []Kind {
	var ks []Kind
	for _, k := range allKinds {
		if Supported(k) {
			ks = append(ks, k)
		}
	}
	return ks
}

// ntModes returns the copy modes this CPU can execute, ntOff first.
func ntModes() []ntMode {
	ms := []ntMode{ntOff}
	if cpu.sse2 {
		ms = append(ms, ntSSE2)
	}
	if cpu.avx2 {
		ms = append(ms, ntAVX2)
	}
	return ms
}

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// fillCanary writes a position-dependent pattern unlikely to match copied
// data by accident over long stretches.
func fillCanary(b []byte) {
	for i := range b {
		b[i] = byte(i*7 + 0x5a)
	}
}

// noFault runs f and turns a memory fault inside it (such as an access to
// a guard page) into a test failure instead of a crash.
func noFault(t *testing.T, what string, f func()) {
	t.Helper()
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("%s: fault: %v", what, r)
		}
	}()
	f()
}

func ptr(b []byte) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(b)) }

func TestKindString(t *testing.T) {
	for k, want := range map[Kind]string{
		KindNone:       "none",
		KindCLFLUSH:    "clflush",
		KindCLFLUSHOPT: "clflushopt",
		KindCLWB:       "clwb",
		Kind(42):       "Kind(42)",
		Kind(-1):       "Kind(-1)",
	} {
		if got := k.String(); got != want {
			t.Errorf("Kind(%d).String() = %q, want %q", int(k), got, want)
		}
	}
}

// cpuinfo returns the flags of the first processor in /proc/cpuinfo and its
// "clflush size" (0 if absent).
func cpuinfo(t *testing.T) (flags map[string]bool, clflushSize int) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		t.Skipf("no /proc/cpuinfo: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			if flags != nil {
				break // end of the first processor's block
			}
			continue
		}
		switch strings.TrimSpace(key) {
		case "flags":
			flags = map[string]bool{}
			for _, fl := range strings.Fields(val) {
				flags[fl] = true
			}
		case "clflush size":
			clflushSize, _ = strconv.Atoi(strings.TrimSpace(val))
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if flags == nil {
		t.Skip("/proc/cpuinfo has no flags line")
	}
	return flags, clflushSize
}

func TestDetectMatchesCPUInfo(t *testing.T) {
	clflush, clflushopt, clwb := Detect()
	if runtime.GOARCH != "amd64" {
		// The portable fallback detects nothing.
		if clflush || clflushopt || clwb || Current() != KindNone {
			t.Fatalf("fallback on %s: Detect() = %v %v %v, Current() = %v", runtime.GOARCH, clflush, clflushopt, clwb, Current())
		}
		return
	}
	flags, _ := cpuinfo(t)
	for _, c := range []struct {
		name string
		got  bool
	}{{"clflush", clflush}, {"clflushopt", clflushopt}, {"clwb", clwb}} {
		if c.got != flags[c.name] {
			t.Errorf("Detect %s = %v, /proc/cpuinfo says %v", c.name, c.got, flags[c.name])
		}
	}
	if !clflush {
		t.Error("amd64 CPU without CLFLUSH")
	}
	if !cpu.sse2 {
		t.Error("amd64 CPU without SSE2")
	}
	if cpu.avx2 && !flags["avx2"] {
		t.Error("AVX2 detected but not in /proc/cpuinfo")
	}
	if flags["avx2"] && !cpu.avx2 {
		t.Error("/proc/cpuinfo has avx2 but detection says unusable")
	}
	t.Logf("clflush=%v clflushopt=%v clwb=%v sse2=%v avx2=%v", clflush, clflushopt, clwb, cpu.sse2, cpu.avx2)
}

func TestCLFLUSHLineSize(t *testing.T) {
	if !cpu.clflush {
		t.Skip("no CLFLUSH")
	}
	if cpu.clflushLine != LineSize {
		t.Errorf("CPUID CLFLUSH line size %d, the flush loops assume %d", cpu.clflushLine, LineSize)
	}
	if _, size := cpuinfo(t); size != 0 && uintptr(size) != cpu.clflushLine {
		t.Errorf("/proc/cpuinfo clflush size %d, CPUID says %d", size, cpu.clflushLine)
	}
}

var envNames = []string{"PMEM_NO_CLWB", "PMEM_NO_CLFLUSHOPT", "PMEM_NO_FLUSH", "PMEM_NO_MOVNT", "PMEM_IS_PMEM_FORCE"}

// setEnv clears all the package's variables, sets kv, and reloads; the
// original environment and selection are restored when t ends.
func setEnv(t *testing.T, kv map[string]string) {
	t.Helper()
	// Registered before t.Setenv so that it runs after the variables
	// have been restored.
	t.Cleanup(ReloadEnv)
	for _, name := range envNames {
		t.Setenv(name, "")
	}
	for k, v := range kv {
		t.Setenv(k, v)
	}
	ReloadEnv()
}

// best is the kind expected when kinds other than those allowed are
// excluded.
func best(allowCLWB, allowOpt bool) Kind {
	clflush, clflushopt, clwb := Detect()
	switch {
	case clwb && allowCLWB:
		return KindCLWB
	case clflushopt && allowOpt:
		return KindCLFLUSHOPT
	case clflush:
		return KindCLFLUSH
	}
	return KindNone
}

func TestEnvOverrides(t *testing.T) {
	ms := ntModes()
	defaultNT := ms[len(ms)-1] // the best mode, unless PMEM_NO_MOVNT=1
	cases := []struct {
		env       map[string]string
		kind      Kind
		noFlush   bool
		forced    bool
		nt        ntMode
		thisCPUis Kind // expected on a CPU with CLWB and CLFLUSHOPT
	}{
		{env: nil, kind: best(true, true), nt: defaultNT, thisCPUis: KindCLWB},
		{env: map[string]string{"PMEM_NO_CLWB": "1"}, kind: best(false, true), nt: defaultNT, thisCPUis: KindCLFLUSHOPT},
		{env: map[string]string{"PMEM_NO_CLFLUSHOPT": "1"}, kind: best(true, false), nt: defaultNT, thisCPUis: KindCLWB},
		{env: map[string]string{"PMEM_NO_CLWB": "1", "PMEM_NO_CLFLUSHOPT": "1"}, kind: best(false, false), nt: defaultNT, thisCPUis: KindCLFLUSH},
		{env: map[string]string{"PMEM_NO_CLWB": "0"}, kind: best(true, true), nt: defaultNT, thisCPUis: KindCLWB},
		{env: map[string]string{"PMEM_NO_FLUSH": "1"}, kind: KindNone, noFlush: true, nt: defaultNT, thisCPUis: KindNone},
		{env: map[string]string{"PMEM_NO_FLUSH": "1", "PMEM_NO_CLWB": "1"}, kind: KindNone, noFlush: true, nt: defaultNT, thisCPUis: KindNone},
		{env: map[string]string{"PMEM_NO_FLUSH": "0"}, kind: best(true, true), nt: defaultNT, thisCPUis: KindCLWB},
		{env: map[string]string{"PMEM_IS_PMEM_FORCE": "1"}, kind: best(true, true), forced: true, nt: defaultNT, thisCPUis: KindCLWB},
		{env: map[string]string{"PMEM_IS_PMEM_FORCE": "0"}, kind: best(true, true), nt: defaultNT, thisCPUis: KindCLWB},
		{env: map[string]string{"PMEM_NO_MOVNT": "1"}, kind: best(true, true), nt: ntOff, thisCPUis: KindCLWB},
	}
	_, hasOpt, hasCLWB := Detect()
	for _, c := range cases {
		t.Run(fmt.Sprint(c.env), func(t *testing.T) {
			setEnv(t, c.env)
			if got := Current(); got != c.kind {
				t.Errorf("Current() = %v, want %v", got, c.kind)
			}
			if hasOpt && hasCLWB && Current() != c.thisCPUis {
				t.Errorf("Current() = %v, want %v on a CPU with CLWB and CLFLUSHOPT", Current(), c.thisCPUis)
			}
			if got := NoFlush(); got != c.noFlush {
				t.Errorf("NoFlush() = %v, want %v", got, c.noFlush)
			}
			if got := PmemForced(); got != c.forced {
				t.Errorf("PmemForced() = %v, want %v", got, c.forced)
			}
			if got := cfg.Load().nt; got != c.nt {
				t.Errorf("copy mode %v, want %v", got, c.nt)
			}
			// Flush executes an instruction exactly when Current is not
			// KindNone: only then does flushing a guard page fault.
			if haveGuardPages {
				g := mapGuarded(t, 4096)
				guard := unsafe.Add(ptr(g), len(g))
				faulted := func() (faulted bool) {
					old := debug.SetPanicOnFault(true)
					defer debug.SetPanicOnFault(old)
					defer func() { faulted = recover() != nil }()
					Persist(guard, 1)
					return false
				}()
				if want := c.kind != KindNone; faulted != want {
					t.Errorf("Flush of a guard page faulted=%v, want %v", faulted, want)
				}
			}
			// Whatever the selection, the operations work.
			src := randomBytes(5000, 1)
			dst := mapGuarded(t, 5003)[:5003]
			for _, n := range []int{0, 1, 100, 255, 256, 4097, 5000} {
				clear(dst)
				if got := CopyPersist(dst[3:], src[:n]); got != n {
					t.Fatalf("CopyPersist returned %d, want %d", got, n)
				}
				if !bytes.Equal(dst[3:3+n], src[:n]) {
					t.Fatalf("CopyPersist of %d bytes: wrong data", n)
				}
				Persist(ptr(dst), uintptr(n))
			}
		})
	}
	// The cleanups restored the selection made from the real environment.
	if got, want := Current(), selectConfig(os.Getenv, cpu).kind; got != want {
		t.Errorf("after the subtests Current() = %v, want %v", got, want)
	}
}

func TestSelectConfig(t *testing.T) {
	all := features{clflush: true, clflushopt: true, clwb: true, sse2: true, avx2: true}
	noAVX := features{clflush: true, clflushopt: true, clwb: true, sse2: true}
	old := features{clflush: true, sse2: true}
	skylakeClient := features{clflush: true, clflushopt: true, sse2: true, avx2: true}
	cases := []struct {
		f    features
		env  map[string]string
		kind Kind
		nt   ntMode
	}{
		{all, nil, KindCLWB, ntAVX2},
		{noAVX, nil, KindCLWB, ntSSE2},
		{old, nil, KindCLFLUSH, ntSSE2},
		{skylakeClient, nil, KindCLFLUSHOPT, ntAVX2},
		{skylakeClient, map[string]string{"PMEM_NO_CLFLUSHOPT": "1"}, KindCLFLUSH, ntAVX2},
		{features{}, nil, KindNone, ntOff},
		{all, map[string]string{"PMEM_NO_CLWB": "1"}, KindCLFLUSHOPT, ntAVX2},
		{all, map[string]string{"PMEM_NO_CLWB": "yes"}, KindCLWB, ntAVX2}, // only "1" counts
		{all, map[string]string{"PMEM_NO_CLWB": "1", "PMEM_NO_CLFLUSHOPT": "1"}, KindCLFLUSH, ntAVX2},
		{old, map[string]string{"PMEM_NO_CLWB": "1", "PMEM_NO_CLFLUSHOPT": "1"}, KindCLFLUSH, ntSSE2},
		{all, map[string]string{"PMEM_NO_FLUSH": "1"}, KindNone, ntAVX2},
		{all, map[string]string{"PMEM_NO_FLUSH": "0"}, KindCLWB, ntAVX2},
		{all, map[string]string{"PMEM_NO_MOVNT": "1"}, KindCLWB, ntOff},
	}
	for _, c := range cases {
		got := selectConfig(func(k string) string { return c.env[k] }, c.f)
		if got.kind != c.kind || got.nt != c.nt {
			t.Errorf("%+v %v: kind %v nt %v, want %v %v", c.f, c.env, got.kind, got.nt, c.kind, c.nt)
		}
		if got.noFlush != (c.env["PMEM_NO_FLUSH"] == "1") {
			t.Errorf("%+v %v: noFlush %v", c.f, c.env, got.noFlush)
		}
	}
}

func TestSupported(t *testing.T) {
	clflush, clflushopt, clwb := Detect()
	for k, want := range map[Kind]bool{KindNone: true, KindCLFLUSH: clflush, KindCLFLUSHOPT: clflushopt, KindCLWB: clwb, Kind(7): false} {
		if got := Supported(k); got != want {
			t.Errorf("Supported(%v) = %v, want %v", k, got, want)
		}
	}
}

func TestFlushKindBadKindPanics(t *testing.T) {
	b := make([]byte, 64)
	for _, k := range []Kind{Kind(-1), Kind(4), Kind(100)} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("FlushKind(%v) did not panic", k)
				}
			}()
			FlushKind(k, ptr(b), 64)
		}()
	}
	for _, k := range allKinds {
		if Supported(k) {
			continue
		}
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("FlushKind(%v) did not panic on a CPU without it", k)
				}
			}()
			FlushKind(k, ptr(b), 64)
		}()
	}
}

func TestZeroLengthIsNoop(t *testing.T) {
	// A zero length must not touch memory at all, even at an invalid address.
	var bad unsafe.Pointer // nil
	noFault(t, "zero length", func() {
		for _, k := range supportedKinds() {
			FlushKind(k, bad, 0)
		}
		Flush(bad, 0)
		Persist(bad, 0)
		if n := CopyNT(nil, []byte{1}); n != 0 {
			t.Errorf("CopyNT(nil, 1 byte) = %d", n)
		}
		if n := CopyPersist([]byte{1}, nil); n != 0 {
			t.Errorf("CopyPersist(1 byte, nil) = %d", n)
		}
	})
	if haveGuardPages {
		m := mapGuarded(t, 4096)
		end := unsafe.Add(ptr(m), len(m)) // first byte of the guard page
		noFault(t, "zero length at guard page", func() {
			for _, k := range supportedKinds() {
				FlushKind(k, end, 0)
			}
		})
	}
}

// TestGuardPageFaults checks the harness: touching a guard page with a
// flush faults, so the no-overshoot tests below can detect overshoot.
func TestGuardPageFaults(t *testing.T) {
	if !haveGuardPages {
		t.Skip("no guard pages")
	}
	m := mapGuarded(t, 4096)
	for _, k := range supportedKinds()[1:] {
		if !flushFaults(k, unsafe.Add(ptr(m), len(m)), 1) {
			t.Errorf("%v of a guard page did not fault", k)
		}
	}
}

func TestFlushKindKeepsData(t *testing.T) {
	const size = 3 * 4096
	bufs := map[string][]byte{
		"heap": make([]byte, size),
		"mmap": mapGuarded(t, size),
	}
	// Also a Go stack array: flushes must work on any mapped address.
	var stack [512]byte
	lengths := []int{0, 1, 2, 3, 7, 63, 64, 65, 127, 128, 129, 191, 255, 256, 1000, 4095, 4096, 4097, 8191}
	for name, buf := range bufs {
		for _, k := range supportedKinds() {
			t.Run(name+"/"+k.String(), func(t *testing.T) {
				want := randomBytes(len(buf), uint64(k)+7)
				copy(buf, want)
				for off := 0; off <= 130; off += 3 {
					for _, n := range lengths {
						if off+n > len(buf) {
							continue
						}
						noFault(t, "flush", func() { FlushKind(k, unsafe.Add(ptr(buf), off), uintptr(n)) })
					}
				}
				Fence()
				if !bytes.Equal(buf, want) {
					t.Fatalf("%v changed the data", k)
				}
				copy(stack[:], want)
				FlushKind(k, unsafe.Pointer(&stack[5]), 500)
				Fence()
				if !bytes.Equal(stack[:], want[:len(stack)]) {
					t.Fatalf("%v changed stack data", k)
				}
			})
		}
	}
}

// flushFaults reports whether FlushKind(k, p, n) faulted.
func flushFaults(k Kind, p unsafe.Pointer, n uintptr) (faulted bool) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() { faulted = recover() != nil }()
	FlushKind(k, p, n)
	return false
}

// TestFlushReachesLastLine checks, using the guard page after a mapping,
// that the line holding the last byte of a range is flushed whatever the
// alignment: a range that ends a byte or more into the guard page must
// fault (its last line is there), one that ends just before must not. The
// same with the guard page before the mapping for the first line.
func TestFlushReachesLastLine(t *testing.T) {
	if !haveGuardPages {
		t.Skip("no guard pages")
	}
	m := mapGuarded(t, 4096)
	end := unsafe.Add(ptr(m), len(m)) // first byte of the guard page after m
	for _, k := range supportedKinds()[1:] {
		for a := 1; a <= 200; a++ { // range starts a bytes before the guard page
			start := unsafe.Add(end, -a)
			if flushFaults(k, start, uintptr(a)) {
				t.Fatalf("%v: [end-%d, end) faulted", k, a)
			}
			for _, extra := range []int{1, 2, 63, 64, 65} {
				if !flushFaults(k, start, uintptr(a+extra)) {
					t.Fatalf("%v: [end-%d, end+%d) did not reach the guard page", k, a, extra)
				}
			}
		}
		// A range starting in the last bytes of the guard page before m.
		for _, back := range []int{1, 2, 63, 64, 65} {
			if !flushFaults(k, unsafe.Add(ptr(m), -back), uintptr(back+100)) {
				t.Fatalf("%v: range starting %d bytes before m did not fault", k, back)
			}
		}
	}
}

// TestFlushAtMappingEdges flushes ranges that start at the first byte and
// end at the last byte of a mapping surrounded by guard pages: the loop must
// neither start before the aligned-down first line nor run past the end.
func TestFlushAtMappingEdges(t *testing.T) {
	m := mapGuarded(t, 2*4096)
	want := randomBytes(len(m), 99)
	copy(m, want)
	p := ptr(m)
	for _, k := range supportedKinds() {
		for _, n := range []int{1, 2, 63, 64, 65, 100, 4096, 4097, len(m) - 1, len(m)} {
			noFault(t, fmt.Sprintf("%v start n=%d", k, n), func() { FlushKind(k, p, uintptr(n)) })
			noFault(t, fmt.Sprintf("%v end n=%d", k, n), func() {
				FlushKind(k, unsafe.Add(p, len(m)-n), uintptr(n))
			})
			noFault(t, fmt.Sprintf("%v odd start n=%d", k, n), func() {
				if n < len(m)-1 {
					FlushKind(k, unsafe.Add(p, 1), uintptr(n))
					FlushKind(k, unsafe.Add(p, len(m)-n-1), uintptr(n))
				}
			})
		}
		// Through the public API too, with the current kind.
		noFault(t, "Persist", func() { Persist(p, uintptr(len(m))) })
	}
	if !bytes.Equal(m, want) {
		t.Fatal("flushes changed the data")
	}
}

// checkCopy copies src into dst = buf[pad+doff:][:n] (buf prefilled with a
// canary) using do, and checks the result, the returned count and that the
// bytes around dst are untouched.
func checkCopy(t *testing.T, what string, buf, canary, src []byte, pad, doff int, do func(dst, src []byte) int) {
	t.Helper()
	n := len(src)
	copy(buf, canary)
	dst := buf[pad+doff : pad+doff+n]
	if got := do(dst, src); got != n {
		t.Fatalf("%s: returned %d, want %d", what, got, n)
	}
	if !bytes.Equal(dst, src) {
		for i := range dst {
			if dst[i] != src[i] {
				t.Fatalf("%s: first wrong byte at %d: %#x, want %#x", what, i, dst[i], src[i])
			}
		}
	}
	if !bytes.Equal(buf[:pad+doff], canary[:pad+doff]) {
		t.Fatalf("%s: bytes before dst changed", what)
	}
	if !bytes.Equal(buf[pad+doff+n:], canary[pad+doff+n:]) {
		t.Fatalf("%s: bytes after dst changed", what)
	}
}

func modeCopy(m ntMode) func(dst, src []byte) int {
	return func(dst, src []byte) int {
		if len(dst) > 0 {
			copyNTWith(m, Current(), dst, src)
		}
		return len(dst)
	}
}

// TestCopyNTAllLengths copies every length 0..600 at every dst offset
// 0..70 (from a spread of src offsets), with each copy mode.
func TestCopyNTAllLengths(t *testing.T) {
	const maxLen, maxOff, pad = 600, 70, 128
	buf := mapGuarded(t, pad+maxOff+maxLen+pad)
	canary := make([]byte, len(buf))
	fillCanary(canary)
	srcBuf := randomBytes(maxOff+maxLen, 2)
	srcOffs := []int{0, 1, 3, 8, 15, 16, 17, 32, 33, 63, 64, 70}
	if testing.Short() {
		srcOffs = []int{0, 1, 17, 64}
	}
	for _, m := range ntModes() {
		t.Run(m.String(), func(t *testing.T) {
			do := modeCopy(m)
			for n := 0; n <= maxLen; n++ {
				for doff := 0; doff <= maxOff; doff++ {
					for _, soff := range srcOffs {
						src := srcBuf[soff : soff+n]
						checkCopy(t, fmt.Sprintf("n=%d doff=%d soff=%d", n, doff, soff), buf, canary, src, pad, doff, do)
					}
				}
			}
		})
	}
	t.Run("CopyNT", func(t *testing.T) {
		for n := 0; n <= maxLen; n++ {
			for doff := 0; doff <= maxOff; doff++ {
				src := srcBuf[doff/2 : doff/2+n]
				checkCopy(t, fmt.Sprintf("n=%d doff=%d", n, doff), buf, canary, src, pad, doff, CopyNT)
				checkCopy(t, fmt.Sprintf("persist n=%d doff=%d", n, doff), buf, canary, src, pad, doff, CopyPersist)
			}
		}
	})
}

// TestCopyNTAllOffsets copies a set of lengths around the threshold and the
// line size for every pair of dst and src offsets 0..70, with every copy
// mode and flush kind.
func TestCopyNTAllOffsets(t *testing.T) {
	const maxOff, pad = 70, 64
	lengths := []int{0, 1, 15, 16, 17, 63, 64, 65, 255, 256, 257, 300, 319, 320, 321, 511, 512, 513, 600}
	buf := mapGuarded(t, pad+maxOff+600+pad)
	canary := make([]byte, len(buf))
	fillCanary(canary)
	srcBuf := randomBytes(maxOff+600, 3)
	for _, m := range ntModes() {
		for _, k := range supportedKinds() {
			t.Run(m.String()+"/"+k.String(), func(t *testing.T) {
				do := func(dst, src []byte) int {
					if len(dst) > 0 {
						copyNTWith(m, k, dst, src)
					}
					return len(dst)
				}
				for _, n := range lengths {
					for doff := 0; doff <= maxOff; doff++ {
						for soff := 0; soff <= maxOff; soff++ {
							checkCopy(t, fmt.Sprintf("n=%d doff=%d soff=%d", n, doff, soff), buf, canary, srcBuf[soff:soff+n], pad, doff, do)
						}
					}
				}
			})
		}
	}
}

// TestCopyNTLarge copies large blocks into a guarded mapping, with dst
// starting at its first byte or ending at its last.
func TestCopyNTLarge(t *testing.T) {
	sizes := []int{4096, 4095, 4097, 4096 + 63, 1 << 20, 1<<20 + 37}
	for _, size := range sizes {
		src0 := randomBytes(size+64, uint64(size))
		buf := mapGuarded(t, size+64)
		canary := make([]byte, len(buf))
		fillCanary(canary)
		for _, m := range ntModes() {
			do := modeCopy(m)
			for _, soff := range []int{0, 1, 16, 33} {
				src := src0[soff : soff+size]
				for _, doff := range []int{0, 1, 17, 63, len(buf) - size} {
					what := fmt.Sprintf("%v size=%d doff=%d soff=%d", m, size, doff, soff)
					noFault(t, what, func() {
						checkCopy(t, what, buf, canary, src, 0, doff, do)
						checkCopy(t, "CopyPersist "+what, buf, canary, src, 0, doff, CopyPersist)
					})
				}
			}
		}
	}
}

func TestCopyNTShortSlices(t *testing.T) {
	src := randomBytes(1000, 4)
	dst := make([]byte, 700)
	if n := CopyNT(dst, src); n != 700 || !bytes.Equal(dst, src[:700]) {
		t.Fatalf("dst shorter: n=%d", n)
	}
	dst = make([]byte, 1000)
	if n := CopyNT(dst, src[:300]); n != 300 || !bytes.Equal(dst[:300], src[:300]) || bytes.ContainsFunc(dst[300:], func(r rune) bool { return r != 0 }) {
		t.Fatalf("src shorter: n=%d", n)
	}
	if n := CopyPersist(dst[:10], src); n != 10 {
		t.Fatalf("CopyPersist: n=%d", n)
	}
}

// TestCopyNTOverlap checks that overlapping slices behave like copy.
func TestCopyNTOverlap(t *testing.T) {
	orig := randomBytes(16384, 5)
	for _, m := range ntModes() {
		for _, shift := range []int{-4000, -65, -64, -1, 0, 1, 16, 64, 100, 4000} {
			for _, n := range []int{10, 300, 4000} {
				got := append([]byte(nil), orig...)
				want := append([]byte(nil), orig...)
				s, d := 8192, 8192+shift
				copy(want[d:d+n], want[s:s+n])
				copyNTWith(m, Current(), got[d:d+n], got[s:s+n])
				if !bytes.Equal(got, want) {
					t.Errorf("%v shift=%d n=%d: differs from copy", m, shift, n)
				}
			}
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	dst := mapGuarded(t, 8192)
	src := randomBytes(8192, 6)
	p := ptr(dst)
	for name, f := range map[string]func(){
		"Flush":       func() { Flush(unsafe.Add(p, 3), 4000) },
		"FlushKind":   func() { FlushKind(best(true, true), unsafe.Add(p, 3), 4000) },
		"Fence":       Fence,
		"Persist":     func() { Persist(p, 100) },
		"CopyNT":      func() { CopyNT(dst[5:], src[:5000]) },
		"CopyNTSmall": func() { CopyNT(dst[5:], src[:100]) },
		"CopyPersist": func() { CopyPersist(dst[1:], src[:3000]) },
		"Current":     func() { _ = Current() },
	} {
		if a := testing.AllocsPerRun(100, f); a != 0 {
			t.Errorf("%s: %v allocations per run, want 0", name, a)
		}
	}
}

const benchSize = 4096

func BenchmarkFlush4K(b *testing.B) {
	buf := mapGuarded(b, benchSize)
	p := ptr(buf)
	for _, k := range supportedKinds() {
		// Each iteration dirties every line (one store per line) and then
		// flushes and fences; "none" is that baseline without the flush.
		b.Run(k.String(), func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				for i := 0; i < benchSize; i += LineSize {
					buf[i]++
				}
				FlushKind(k, p, benchSize)
				Fence()
			}
		})
	}
}

func BenchmarkCopy4K(b *testing.B) {
	dst := mapGuarded(b, benchSize)
	src := randomBytes(benchSize, 7)
	b.SetBytes(benchSize)
	for b.Loop() {
		copy(dst, src)
	}
}

func BenchmarkCopyFlush4K(b *testing.B) {
	dst := mapGuarded(b, benchSize)
	src := randomBytes(benchSize, 7)
	b.SetBytes(benchSize)
	for b.Loop() {
		copy(dst, src)
		Flush(ptr(dst), benchSize)
		Fence()
	}
}

func BenchmarkCopyNT4K(b *testing.B) {
	dst := mapGuarded(b, benchSize)
	src := randomBytes(benchSize, 7)
	b.SetBytes(benchSize)
	for b.Loop() {
		CopyNT(dst, src)
		Fence()
	}
}

// BenchmarkCopyNTMode compares the copy modes (plus Fence) over sizes
// around NTThreshold and larger, with the current flush kind.
func BenchmarkCopyNTMode(b *testing.B) {
	const maxSize = 1 << 20
	dst := mapGuarded(b, maxSize)
	src := randomBytes(maxSize, 8)
	for _, size := range []int{128, 256, 512, 1024, 4096, maxSize} {
		for _, m := range ntModes() {
			b.Run(fmt.Sprintf("%d/%v", size, m), func(b *testing.B) {
				b.SetBytes(int64(size))
				for b.Loop() {
					copyNTWith(m, Current(), dst[:size], src[:size])
					Fence()
				}
			})
		}
	}
}
