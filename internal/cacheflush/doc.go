// Package cacheflush writes CPU cache lines back to memory so that stores to
// persistent memory (a DAX mapping of a pmem namespace or a device-DAX
// character device) become durable, and copies data into persistent memory
// with non-temporal stores.
//
// # Flushing
//
// Flush(addr, n) writes back every 64-byte cache line that overlaps
// [addr, addr+n): the start address is aligned down to a multiple of 64 and
// one flush instruction is issued per line until the end of the range. The
// whole loop runs in assembly, so a range costs one call, not one per line.
// The instruction is chosen once, when the package is initialised, as the
// best one the CPU has:
//
//  1. CLWB: writes the line back and may keep it (clean) in the cache. It
//     is weakly ordered, so an SFENCE (Fence) must follow before the data
//     can be considered durable.
//  2. CLFLUSHOPT: writes back and invalidates the line. Also weakly ordered:
//     it needs the SFENCE too.
//  3. CLFLUSH: writes back and invalidates the line; serialised with other
//     CLFLUSHes and with stores, so it is slow but needs no fence (Fence is
//     still harmless and cheap).
//
// Persist is Flush followed by Fence. A pmem write therefore looks like
//
//	copy(dst, data)                      // ordinary stores
//	cacheflush.Persist(unsafe.Pointer(&dst[0]), uintptr(len(data)))
//
// or, for several ranges, one Flush per range and a single Fence at the end.
//
// Fence is SFENCE. It is always executed, even when flushing is disabled,
// because it is also what makes non-temporal stores durable: on x86,
// non-temporal (MOVNT*) stores are weakly ordered and go through
// write-combining buffers, so they are only guaranteed to have reached the
// persistence domain after an SFENCE.
//
// # Non-temporal copies
//
// CopyNT copies into persistent memory without going through the cache.
// Copies shorter than NTThreshold (256 bytes) are an ordinary copy followed
// by Flush. Longer ones copy the head, up to the first 64-byte boundary of
// dst, and the tail, after the last one, with an ordinary copy plus Flush,
// and the 64-byte-aligned middle with non-temporal stores (MOVNTDQ, or
// VMOVNTDQ when the CPU has AVX2 and the OS has enabled the YMM state), 64
// bytes per loop iteration in assembly. The head and the tail therefore
// never share a cache line with the non-temporally written lines. As with
// CLWB, the data is durable only after the caller's Fence; CopyPersist does
// both. Overlapping dst and src are handled like copy (ordinary copy plus
// Flush).
//
// # Environment
//
// The variables below have the names and meaning of PMDK's libpmem, and are
// read at initialisation (and again by ReloadEnv). Only the value "1" (or
// "0" where stated) has an effect; anything else is as if unset.
//
//   - PMEM_NO_CLWB=1: do not use CLWB even if the CPU has it.
//   - PMEM_NO_CLFLUSHOPT=1: do not use CLFLUSHOPT even if the CPU has it.
//   - PMEM_NO_FLUSH=1: do not flush CPU caches at all (Flush is a no-op and
//     Current reports KindNone), as is correct on a platform with eADR,
//     where the caches are part of the persistence domain. Fences still
//     run. PMEM_NO_FLUSH=0 forces flushing; since this package does not
//     detect eADR itself, that is also the default.
//   - PMEM_NO_MOVNT=1: CopyNT uses an ordinary copy plus Flush instead of
//     non-temporal stores.
//   - PMEM_IS_PMEM_FORCE=1: reported by PmemForced; the device layer uses it
//     to treat a mapping as persistent memory (CPU flushes instead of msync).
//
// # Other architectures
//
// Only amd64 is implemented. Elsewhere Detect reports nothing, Current is
// KindNone, Flush and Fence do nothing and CopyNT is copy: the package
// compiles and behaves like ordinary memory, without durability guarantees.
package cacheflush
