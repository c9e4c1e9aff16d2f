package btt

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
	"strings"
)

// The per-arena steps of Check, in ndctl's order (btt/doc.go, "Checking
// an arena"): the log, the log against the map (roll-forward), the map,
// info2, the bitmap, and the optional log rewrite.

// checkArena runs the per-arena steps on a.
func (c *checker) checkArena(a *arena) {
	lanes, logOK := c.checkLog(a)
	if lanes == nil {
		return
	}
	rollfwd := c.checkRollForward(a, lanes)
	ms := c.checkMap(a, rollfwd)
	c.checkInfo2(a)
	if logOK && ms.ok {
		c.checkBitmap(a, lanes, ms, rollfwd)
	}
	if c.opt.RewriteLog && logOK {
		cur := make([]LogEntry, len(lanes))
		for k, ls := range lanes {
			cur[k] = ls.cur
		}
		c.rewriteLog(a, cur)
	}
}

// checkRollForward compares each lane's current log entry with the map:
// a committed write whose map update was lost is reported (and with
// Repair rolled forward). The returned premap -> postmap updates are
// simulated by the map and bitmap steps, so they see the arena as Linux
// will after attaching it.
func (c *checker) checkRollForward(a *arena, lanes []laneState) map[uint32]uint32 {
	rollfwd := map[uint32]uint32{}
	e4 := make([]byte, 4)
	for lane, ls := range lanes {
		if !ls.valid {
			continue
		}
		old, nw := ls.cur.OldMap&mapLBAMask, ls.cur.NewMap&mapLBAMask
		if old == nw || ls.cur.LBA >= a.extNLBA {
			continue
		}
		off := a.mapOff + 4*int64(ls.cur.LBA)
		if !c.read(off, e4) {
			continue // reported by the map pass
		}
		m, _ := decodeMap(binary.LittleEndian.Uint32(e4), ls.cur.LBA)
		if nw != m && old == m {
			var e [4]byte
			binary.LittleEndian.PutUint32(e[:], mapNormal|nw)
			c.fix(Finding{Severity: SevError, Code: CodeRollForward, Arena: a.idx, Offset: off,
				Message: fmt.Sprintf("lane %d: log entry does not match the map: LBA %d still maps to %d, the committed write put it in %d (interrupted write; the map entry needs updating, as Linux does at attach)", lane, ls.cur.LBA, old, nw),
				Repair:  fmt.Sprintf("roll forward: map[%d] = %d", ls.cur.LBA, nw)}, e[:], off)
			rollfwd[ls.cur.LBA] = nw
		}
	}
	return rollfwd
}

// mapResult is what the map step leaves for the bitmap step: the
// internal blocks the map references, and the first few referenced twice.
type mapResult struct {
	bm       blockSet
	dups     []uint32 // distinct blocks found referenced twice (first few)
	dupCount int
	ok       bool // every entry read and in bounds
}

func (r *mapResult) mark(p uint32) bool {
	if !r.bm.add(p) {
		r.dup(p)
		return false
	}
	return true
}

// dup records a reference to an already referenced block: every one is
// counted, the first few distinct blocks are listed (a block referenced
// many times is named once).
func (r *mapResult) dup(p uint32) {
	if r.dupCount++; len(r.dups) < maxBitmapFindings && !slices.Contains(r.dups, p) {
		r.dups = append(r.dups, p)
	}
}

// checkMap streams the map entries (holes of a sparse image skipped),
// checks their bounds, counts the zero and error states, and marks the
// internal blocks they reference. Memory: one bit per internal block,
// whatever the device size.
func (c *checker) checkMap(a *arena, rollfwd map[uint32]uint32) *mapResult {
	i := a.idx
	r := &mapResult{bm: newBlockSet(a.intNLBA), ok: true}
	rollKeys := slices.Sorted(maps.Keys(rollfwd))
	var nZero, nErr, oob uint64
	var zLBAs, eLBAs []uint32 // the first few of each state
	chunk := make([]byte, 4*mapChunk)
	scanMap(c.dev, a, chunk, func(start, n uint32, raw []byte, err error) bool {
		if c.opt.Progress != nil {
			defer c.opt.Progress(uint64(start+n), uint64(a.extNLBA))
		}
		if err != nil {
			c.errorf(i, a.mapOff+4*int64(start), CodeReadFailed, "", "cannot read map entries %d..%d: %v", start, start+n-1, err)
			r.ok = false
			return true
		}
		if raw == nil {
			r.bm.addIdentity(start, n, rollfwd, rollKeys, r.dup)
			return true
		}
		for k := uint32(0); k < n; k++ {
			premap := start + k
			p, st := decodeMap(rawEntry(raw, k), premap)
			switch st {
			case MapZero:
				if nZero++; len(zLBAs) < maxStateLBAs {
					zLBAs = append(zLBAs, premap)
				}
			case MapError:
				if nErr++; len(eLBAs) < maxStateLBAs {
					eLBAs = append(eLBAs, premap)
				}
			}
			if nw, ok := rollfwd[premap]; ok {
				p = nw
			}
			if p >= a.intNLBA {
				if oob++; oob <= maxBitmapFindings {
					c.errorf(i, a.mapOff+4*int64(premap), CodeMapOOB, "", "LBA %d: out-of-bounds map entry %d (internal_nlba %d)", premap, p, a.intNLBA)
				}
				r.ok = false
				continue
			}
			r.mark(p)
		}
		return true
	})
	if oob > maxBitmapFindings {
		c.errorf(i, a.mapOff, CodeMapOOB, "", "%d more out-of-bounds map entries not listed", oob-maxBitmapFindings)
	}
	if nErr > 0 {
		c.add(Finding{Severity: SevInfo, Code: CodeMapStates, Arena: i, Offset: a.mapOff,
			Message: fmt.Sprintf("%d sector(s) in the error state: reads of them fail until they are rewritten (%s)", nErr, lbaList(a, eLBAs, nErr))})
	}
	if nZero > 0 {
		c.add(Finding{Severity: SevInfo, Code: CodeMapStates, Arena: i, Offset: a.mapOff,
			Message: fmt.Sprintf("%d sector(s) in the zero state: they read as zeros (%s)", nZero, lbaList(a, zLBAs, nZero))})
	}
	c.rep.ErrorSectors += nErr
	c.rep.ZeroSectors += nZero
	return r
}

// checkInfo2 compares the backup info block with the primary (as it is,
// or as recovered in memory) and reports a truncated device.
func (c *checker) checkInfo2(a *arena) {
	i := a.idx
	prim := make([]byte, InfoSize)
	sec := make([]byte, InfoSize)
	if c.read(a.off, prim) && Verify(prim, c.opt.ParentUUID) != InfoOK {
		// The primary was recovered in memory (no --repair): compare with
		// what it should be.
		a.info.Encode(prim)
	}
	if a.info2Cut {
		c.rep.NeedSize = a.off + a.size
		c.errorf(i, a.info2Off, CodeTruncated, fmt.Sprintf("extend the image to %d bytes, then copy the primary info block to info2", c.rep.NeedSize),
			"the device ends at %d bytes, before the backup info block at %#x: the image was truncated (it must be %d bytes)", c.dev.Size(), a.info2Off, c.rep.NeedSize)
	} else if !c.read(a.info2Off, sec) {
		c.errorf(i, a.info2Off, CodeReadFailed, "", "cannot read info2 at %#x", a.info2Off)
	} else if !bytes.Equal(prim, sec) {
		c.fix(Finding{Severity: SevError, Code: CodeInfo2, Arena: i, Offset: a.info2Off,
			Message: fmt.Sprintf("info2 at %#x differs from the primary info block: info2 needs to be restored", a.info2Off),
			Repair:  "copy the primary info block to info2"}, prim, a.info2Off)
	}
}

// checkBitmap completes the map's references with the lanes' free blocks:
// every internal block must be referenced exactly once.
func (c *checker) checkBitmap(a *arena, lanes []laneState, ms *mapResult, rollfwd map[uint32]uint32) {
	freeDup := map[uint32]int{}
	for lane, ls := range lanes {
		if b := ls.cur.OldMap & mapLBAMask; ls.valid && !ms.mark(b) {
			freeDup[b] = lane
		}
	}
	c.reportBitmap(a, ms.bm, ms.dups, ms.dupCount, freeDup, rollfwd)
}

// maxStateLBAs bounds the LBAs listed per state in a map-states notice.
const maxStateLBAs = 8

// lbaList names the device LBAs of arena premaps: "LBA 5, 17" or
// "first LBAs 5, 17, ..." when there are more than listed.
func lbaList(a *arena, premaps []uint32, n uint64) string {
	var b strings.Builder
	if uint64(len(premaps)) < n {
		b.WriteString("first ")
	}
	b.WriteString("LBA")
	if len(premaps) > 1 {
		b.WriteString("s")
	}
	for k, p := range premaps {
		if k > 0 {
			b.WriteString(",")
		}
		fmt.Fprintf(&b, " %d", a.extStart+uint64(p))
	}
	return b.String()
}

// reportBitmap names the blocks referenced twice (finding who references
// them with a second pass over the map) and the leaked ones.
func (c *checker) reportBitmap(a *arena, bm blockSet, dups []uint32, dupCount int, freeDup map[uint32]int, rollfwd map[uint32]uint32) {
	i := a.idx
	reported := 0
	report := func(format string, args ...any) {
		if reported++; reported <= maxBitmapFindings {
			c.errorf(i, a.dataOff, CodeBitmap, "", "bitmap error: internal blocks are incorrectly referenced: "+format, args...)
		}
	}
	if len(dups) > 0 {
		refs := map[uint32][]uint32{}
		for _, d := range dups {
			refs[d] = nil
		}
		ref := func(p, premap uint32) {
			if nw, ok := rollfwd[premap]; ok {
				p = nw
			}
			if r, ok := refs[p]; ok && len(r) < 2 {
				refs[p] = append(r, premap)
			}
		}
		scanMap(c.dev, a, make([]byte, 4*mapChunk), func(start, n uint32, raw []byte, err error) bool {
			switch {
			case err != nil:
			case raw == nil: // identity entries: block d is LBA d's
				for _, d := range dups {
					if _, rf := rollfwd[d]; !rf && d >= start && d < start+n {
						ref(d, d)
					}
				}
				for premap := range rollfwd {
					if premap >= start && premap < start+n {
						ref(premap, premap)
					}
				}
			default:
				for k := uint32(0); k < n; k++ {
					p, _ := decodeMap(rawEntry(raw, k), start+k)
					ref(p, start+k)
				}
			}
			return true
		})
		for _, d := range dups {
			r := refs[d]
			if lane, ok := freeDup[d]; ok {
				who := "no map entry"
				if len(r) > 0 {
					who = fmt.Sprintf("LBA %d", r[0])
				}
				report("block %d referenced by two map/log entries (free in lane %d, and %s)", d, lane, who)
			} else if len(r) >= 2 {
				report("block %d referenced by two map entries (LBA %d and LBA %d)", d, r[0], r[1])
			} else {
				report("block %d referenced twice", d)
			}
		}
		if dupCount > len(dups) {
			reported += dupCount - len(dups)
		}
	}
	for w, word := range bm {
		if word == ^uint64(0) {
			continue
		}
		for bit := 0; bit < 64; bit++ {
			b := uint64(w)*64 + uint64(bit)
			if b >= uint64(a.intNLBA) {
				break
			}
			if word&(1<<bit) == 0 {
				report("block %d is referenced by neither the map nor the free list (leaked)", b)
			}
		}
	}
	if reported > maxBitmapFindings {
		c.errorf(i, a.dataOff, CodeBitmap, "", "bitmap error: %d more block reference errors not listed", reported-maxBitmapFindings)
	}
}

// rewriteLog writes every lane's group as slot 0 = the current entry with
// seq 1, slots 1-3 zero: a log both old and new kernels read identically.
func (c *checker) rewriteLog(a *arena, cur []LogEntry) {
	g := make([]byte, LogGroupSize)
	failed := 0
	for lane, e := range cur {
		clear(g)
		e.Seq = 1
		e.Encode(g)
		if c.opt.Repair {
			if _, err := c.dev.WriteAtPersist(g, a.logOff+int64(lane)*LogGroupSize); err != nil {
				failed++
			}
		}
	}
	msg := fmt.Sprintf("log rewritten in the (0,1) format with only slot 0 valid (%d lanes)", len(cur))
	if failed > 0 {
		c.errorf(a.idx, a.logOff, CodeLogRewritten, "", "log rewrite failed on %d lanes: the log may be in an unknown state", failed)
		return
	}
	c.add(Finding{Severity: SevInfo, Code: CodeLogRewritten, Arena: a.idx, Offset: a.logOff, Message: msg, Repaired: true, Repair: "rewrite the log"})
}
