// Package pmemtest helps test code written against pmem.Device.
//
// # Crashes
//
// CrashMem is an in-memory device with the weakest persistence real
// hardware gives: 8-byte atomic stores, cache lines written back at any
// moment in any order, nothing durable before Flush and Drain. Its Crash
// methods return what the media may hold after a power failure, cheaply
// enough to take a crash image at every persistence point of a long test.
// A hook reports every write, flush and drain, so an explorer can crash the
// device between any two of them:
//
//	m := pmemtest.NewCrashMem(64 << 20)
//	rng := rand.New(rand.NewPCG(1, 2))
//	m.SetHook(func(ev pmemtest.Event) {
//		img := m.Crash(rng)
//		checkRecovers(t, img) // open the image, check its invariants
//	})
//	runWorkload(m)
//
// # Faults
//
// Faulty wraps any device and fails the operations an Injector picks (by
// index, kind, byte range, ...), by default with ErrInjected, which wraps
// pmem.ErrMedia:
//
//	f := pmemtest.NewFaulty(dev)
//	f.SetInjector(pmemtest.OnKind(pmemtest.OpFlush, pmemtest.After(3, pmemtest.Always(nil))))
//
// # Conformance
//
// RunConformance runs the behaviours every Device implementation must
// have, as subtests.
package pmemtest
