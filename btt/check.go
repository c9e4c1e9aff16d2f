package btt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/nvblk/nvblk/pmem"
)

// Severity of a checker finding.
type Severity int

// Severities. Only SevError makes a BTT inconsistent.
const (
	SevInfo    Severity = iota // a fact worth knowing (old log padding, sectors in the error state)
	SevWarning                 // legal but not what Linux writes
	SevError                   // an inconsistency
)

func (s Severity) String() string { return [...]string{"info", "warning", "error"}[s] }

// MarshalText makes severities readable in JSON.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses "info", "warning" or "error".
func (s *Severity) UnmarshalText(b []byte) error {
	for v := SevInfo; v <= SevError; v++ {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("btt: unknown severity %q", b)
}

// Finding codes. The ndctl equivalents are noted; messages carry ndctl's
// fragments so scripts written for ndctl check-namespace keep working.
const (
	CodeInfoRestore   = "info-restore"     // "info block at offset ... needs to be restored"
	CodeInfoLost      = "info-lost"        // no valid info block or backup
	CodeGeometry      = "geometry"         // offsets or counts inconsistent with the device
	CodeErrorFlag     = "arena-error-flag" // IB_FLAG_ERROR set
	CodePadding       = "log-padding"      // padding scheme undetectable
	CodeOldPadding    = "log-old-padding"  // (0,2): pre-4.15 layout
	CodeLogEqlSeq     = "log-eql-seq"      // BTT_LOG_EQL_SEQ
	CodeLogOOBSeq     = "log-oob-seq"      // BTT_LOG_OOB_SEQ
	CodeLogOOBLBA     = "log-oob-lba"      // BTT_LOG_OOB_LBA
	CodeLogOOBOld     = "log-oob-old"      // BTT_LOG_OOB_OLD
	CodeLogOOBNew     = "log-oob-new"      // BTT_LOG_OOB_NEW
	CodeLogFlags      = "log-flags"        // flag bits in log map fields (legal)
	CodeMapOOB        = "map-oob"          // BTT_MAP_OOB
	CodeMapStates     = "map-states"       // sectors in the zero or error state (legal)
	CodeRollForward   = "log-map"          // interrupted write pending roll-forward
	CodeInfo2         = "info2-restore"    // "info2 needs to be restored"
	CodeTruncated     = "truncated"        // the device ends before the last info2
	CodeBitmap        = "bitmap"           // BTT_BITMAP_ERROR
	CodeLogRewritten  = "log-rewritten"    // --rewrite-log done
	CodeReadFailed    = "read-failed"      // media error reading metadata
	maxBitmapFindings = 64
)

// Finding is one thing the checker found.
type Finding struct {
	Severity Severity `json:"severity"`
	Code     string   `json:"code"`
	Arena    int      `json:"arena"`  // -1: not arena specific
	Offset   int64    `json:"offset"` // namespace byte offset of the structure
	Message  string   `json:"message"`
	Repair   string   `json:"repair,omitempty"` // what --repair does; empty: not repairable
	Repaired bool     `json:"repaired"`
}

func (f Finding) String() string {
	s := fmt.Sprintf("%s: ", f.Severity)
	if f.Arena >= 0 {
		s += fmt.Sprintf("arena %d: ", f.Arena)
	}
	s += f.Message
	switch {
	case f.Repaired:
		s += " [repaired: " + f.Repair + "]"
	case f.Repair != "":
		s += " (--repair: " + f.Repair + ")"
	}
	return s
}

// CheckOptions control Check.
type CheckOptions struct {
	// Repair performs the provably safe repairs (info blocks from a
	// verified copy, info2 from the primary, roll-forward of a pending map
	// update), each as a durable write. Without it nothing is written.
	Repair bool
	// RewriteLog (with Repair) rewrites every lane's log group in the
	// (0,1) format with only slot 0 valid, as ndctl --rewrite-log does.
	RewriteLog bool
	// ParentUUID, if set, is the namespace uuid parent_uuid must match.
	ParentUUID *[16]byte
	// OnFinding, if set, receives each finding as it is found.
	OnFinding func(Finding)
	// Progress, if set, is called with map entries checked and the total.
	Progress func(done, total uint64)
	// At, when set, checks the BTT whose arena 0 is at this offset (any
	// version), as in a PMDK pool, instead of probing 4096 and 0.
	At *int64
	// PMDK says the BTT is a libpmemblk one, whose log words carry map
	// flags by design: that is not reported.
	PMDK bool
}

// Report is the result of Check.
type Report struct {
	Version   string    `json:"version,omitempty"`
	Offset    int64     `json:"offset"`
	Arenas    int       `json:"arenas"`
	Findings  []Finding `json:"findings"`
	Errors    int       `json:"errors"`   // errors found
	Repaired  int       `json:"repaired"` // errors repaired
	Remaining int       `json:"remaining"`
	// Unreadable counts the metadata reads that failed (media errors, a
	// truncated file): the check could not see everything.
	Unreadable int `json:"unreadable"`
	// ErrorSectors and ZeroSectors count the sectors in the error state
	// (reads fail until rewritten) and the zero state: legal states,
	// reported as notices.
	ErrorSectors uint64 `json:"error_sectors"`
	ZeroSectors  uint64 `json:"zero_sectors"`
	// NeedSize, when > 0, is the device size the BTT describes, which the
	// device falls short of (a truncated image file): extending the file
	// to it is the repair (the command line does it for an image file).
	NeedSize int64 `json:"need_size,omitempty"`
}

// Clean reports whether no error was found.
func (r *Report) Clean() bool { return r.Errors == 0 }

// ExitCode is the fsck-style status: 0 clean, 1 errors corrected, 4
// errors left uncorrected, 8 when part of the metadata could not be read
// at all (an operational error: a repair cannot help).
func (r *Report) ExitCode() int {
	switch {
	case r.Unreadable > 0:
		return 8
	case r.Errors == 0:
		return 0
	case r.Remaining == 0:
		return 1
	}
	return 4
}

type checker struct {
	dev     pmem.Device
	opt     CheckOptions
	rep     *Report
	buf     []byte
	initOff int64
	version Version
}

func (c *checker) add(f Finding) {
	c.rep.Findings = append(c.rep.Findings, f)
	if f.Code == CodeReadFailed {
		c.rep.Unreadable++
	}
	if f.Severity == SevError {
		c.rep.Errors++
		if f.Repaired {
			c.rep.Repaired++
		} else {
			c.rep.Remaining++
		}
	}
	if c.opt.OnFinding != nil {
		c.opt.OnFinding(f)
	}
}

func (c *checker) errorf(arena int, off int64, code, repair string, format string, a ...any) {
	c.add(Finding{Severity: SevError, Code: code, Arena: arena, Offset: off, Message: fmt.Sprintf(format, a...), Repair: repair})
}

// repairWrite performs a repair as a durable write and records it on the
// finding; without Repair it only records what would be done.
func (c *checker) fix(f Finding, p []byte, off int64) {
	if c.opt.Repair {
		if _, err := c.dev.WriteAtPersist(p, off); err == nil {
			f.Repaired = true
		} else {
			f.Message += fmt.Sprintf("; repair failed: %v", err)
		}
	}
	c.add(f)
}

// Check checks the BTT on dev, offline, and with opt.Repair repairs what
// can be repaired safely, then checks again. It reports every finding
// rather than stopping at the first. The error is non-nil only when the
// check could not run (no BTT at all, or the device failed).
func Check(dev pmem.Device, opt CheckOptions) (*Report, error) {
	if opt.RewriteLog && !opt.Repair {
		return nil, errors.New("btt: --rewrite-log needs --repair")
	}
	rep, err := check(dev, opt)
	if err != nil || !opt.Repair || rep.Errors == 0 && !opt.RewriteLog {
		return rep, err
	}
	// Re-check after repairs: anything still wrong stays uncorrected.
	after, err := check(dev, CheckOptions{ParentUUID: opt.ParentUUID, At: opt.At, PMDK: opt.PMDK})
	if err != nil {
		return rep, err
	}
	rep.Remaining = after.Errors
	rep.Repaired = rep.Errors - min(rep.Errors, after.Errors)
	for _, f := range after.Findings {
		if f.Severity == SevError {
			f.Message = "after repair: " + f.Message
			rep.Findings = append(rep.Findings, f)
			if opt.OnFinding != nil {
				opt.OnFinding(f)
			}
		}
	}
	return rep, nil
}

func check(dev pmem.Device, opt CheckOptions) (*Report, error) {
	c := &checker{dev: dev, opt: opt, rep: &Report{Findings: []Finding{}}, buf: make([]byte, InfoSize)}
	first, ok := c.findFirst()
	if !ok {
		return c.rep, fmt.Errorf("%w: unable to recover any BTT info blocks (is this a sector-mode namespace?)", ErrNotFound)
	}
	c.rep.Version = c.version.String()
	c.rep.Offset = c.initOff
	c.walkArenas(first)
	return c.rep, nil
}

func (c *checker) read(off int64, p []byte) bool {
	_, err := c.dev.ReadAt(p, off)
	return err == nil
}

func (c *checker) verifyAt(off int64, buf []byte) bool {
	if off < 0 || off > c.dev.Size()-InfoSize {
		return false
	}
	return c.read(off, buf) && Verify(buf, c.opt.ParentUUID) == InfoOK
}

func versionFits(ib Info, off int64) bool {
	return (off == InitialOffset11 && ib.Major == 1) || (off == InitialOffset20 && ib.Major == 2)
}

// findFirst locates arena 0's info block (10.2), recovering it (10.3).
func (c *checker) findFirst() (Info, bool) {
	if c.opt.At != nil {
		off := *c.opt.At
		if c.verifyAt(off, c.buf) {
			ib := DecodeInfo(c.buf)
			if ib.Major != 0 {
				c.initOff, c.version = off, Version{ib.Major, ib.Minor}
				return ib, true
			}
		}
		at := backupOffset(c.dev.Size(), off, off)
		buf := make([]byte, InfoSize)
		if c.verifyAt(at, buf) {
			if ib := DecodeInfo(buf); ib.Major != 0 && ib.Info2Off != 0 && off+int64(ib.Info2Off) == at {
				c.initOff, c.version = off, Version{ib.Major, ib.Minor}
				c.restoreInfo(0, off, at, ib)
				return ib, true
			}
		}
		return Info{}, false
	}
	for _, off := range []int64{InitialOffset11, InitialOffset20} {
		if c.verifyAt(off, c.buf) {
			ib := DecodeInfo(c.buf)
			if versionFits(ib, off) {
				c.initOff, c.version = off, Version{ib.Major, ib.Minor}
				return ib, true
			}
		}
	}
	for _, off := range []int64{InitialOffset11, InitialOffset20} {
		if ib, at, ok := c.recoverFirst(off); ok {
			c.initOff, c.version = off, Version{ib.Major, ib.Minor}
			c.restoreInfo(0, off, at, ib)
			return ib, true
		}
	}
	return Info{}, false
}

// restoreInfo reports (and with Repair writes) a primary info block
// recovered from the copy at from.
func (c *checker) restoreInfo(arena int, off, from int64, ib Info) {
	b := make([]byte, InfoSize)
	ib.Encode(b)
	c.fix(Finding{Severity: SevError, Code: CodeInfoRestore, Arena: arena, Offset: off,
		Message: fmt.Sprintf("BTT info block at offset %#x needs to be restored (a valid copy is at %#x)", off, from),
		Repair:  fmt.Sprintf("copy the verified block at %#x to %#x", from, off)}, b, off)
}

// arenaEstimate splits the device like Linux: count of arenas from off and
// the unused remainder.
func arenaEstimate(size, off int64) (n int, remaining int64) {
	raw := size - off
	n = int(raw / ArenaMaxSize)
	rem := raw % ArenaMaxSize
	if rem >= ArenaMinSize {
		n++
		rem = 0
	}
	return n, rem
}

// recoverFirst tries ndctl's three recoveries of arena 0's primary for a
// candidate initial offset. A candidate must also describe itself: its
// info2off must point back at where it was found, so that another arena's
// backup is never restored in arena 0's place.
func (c *checker) recoverFirst(off int64) (Info, int64, bool) {
	size := c.dev.Size()
	n, remaining := arenaEstimate(size, off)
	if n == 0 {
		return Info{}, 0, false
	}
	selfLocated := func(ib Info, at int64) bool {
		return ib.Info2Off != 0 && off+int64(ib.Info2Off) == at
	}
	buf := make([]byte, InfoSize)
	// Attempt 1: the end of arena 0.
	at := off + ArenaMaxSize - InfoSize
	if n == 1 {
		at = ((size - remaining) &^ (PageSize - 1)) - InfoSize
	}
	if c.verifyAt(at, buf) {
		if ib := DecodeInfo(buf); versionFits(ib, off) && selfLocated(ib, at) {
			return ib, at, true
		}
	}
	primary := make([]byte, InfoSize)
	havePrimary := c.read(off, primary)
	// Attempt 2: the last arena's backup, with arena 0's own fields taken
	// from the damaged primary.
	if n > 1 && havePrimary {
		at := ((size - remaining) &^ (PageSize - 1)) - InfoSize
		if c.verifyAt(at, buf) {
			for _, r := range [][2]int{{48, 52}, {60, 64}, {68, 72}, {80, 120}, {4088, 4096}} {
				copy(buf[r[0]:r[1]], primary[r[0]:r[1]])
			}
			if Verify(buf, c.opt.ParentUUID) == InfoOK {
				if ib := DecodeInfo(buf); versionFits(ib, off) {
					return ib, at, true
				}
			}
		}
	}
	// Attempt 3: the damaged primary's own info2off.
	if havePrimary {
		i2 := int64(binary.LittleEndian.Uint64(primary[112:]))
		if i2 > 0 && i2 <= min(size-InfoSize, ArenaMaxSize-InfoSize+off) && c.verifyAt(off+i2, buf) {
			if ib := DecodeInfo(buf); versionFits(ib, off) && selfLocated(ib, off+i2) {
				return ib, off + i2, true
			}
		}
	}
	return Info{}, 0, false
}

// walkArenas discovers and checks every arena (10.4, 10.5).
func (c *checker) walkArenas(first Info) {
	off := c.initOff
	lbasize := first.ExternalLBASize
	var extStart uint64 // the device LBA of the arena's first sector
	for i := 0; i < maxArenas; i++ {
		var ib Info
		if i == 0 {
			ib = first
		} else {
			var ok bool
			if ib, ok = c.arenaInfo(i, off); !ok {
				return
			}
		}
		c.rep.Arenas++
		a, err := parseArena(i, off, ib, c.dev.Size(), lbasize)
		if err != nil {
			var ce *CorruptError
			msg := err.Error()
			if errors.As(err, &ce) {
				msg = ce.What
			}
			c.errorf(i, off, CodeGeometry, "", "problem parsing arena[%d] metadata: %s", i, msg)
			return // the walk cannot continue past an arena it cannot trust
		}
		a.extStart = extStart
		extStart += uint64(a.extNLBA)
		if a.errFlag {
			c.errorf(i, off, CodeErrorFlag, "", "info block error flag is set: the arena is read-only (Linux stops writing to it)")
		}
		c.checkArena(a)
		if ib.NextOff == 0 {
			return
		}
		off += int64(ib.NextOff)
	}
	c.errorf(-1, off, CodeGeometry, "", "more than %d arenas", maxArenas)
}

// arenaInfo reads arena i's primary at off, recovering it from its backup.
func (c *checker) arenaInfo(i int, off int64) (Info, bool) {
	if c.verifyAt(off, c.buf) {
		return DecodeInfo(c.buf), true
	}
	at := backupOffset(c.dev.Size(), c.initOff, off)
	buf := make([]byte, InfoSize)
	if c.verifyAt(at, buf) {
		if ib := DecodeInfo(buf); ib.Info2Off != 0 && off+int64(ib.Info2Off) == at {
			c.restoreInfo(i, off, at, ib)
			return ib, true
		}
	}
	c.errorf(i, off, CodeInfoLost, "", "BTT info block at offset %#x is damaged and no valid backup was found", off)
	return Info{}, false
}

// checkArena runs the per-arena checks of 10.5 in ndctl's order, with the
// improvements of 10.8.
func (c *checker) checkArena(a *arena) {
	dev := c.dev
	i := a.idx
	// 1. Log entries (and the log repair).
	lanes, logOK := c.checkLog(a)
	if lanes == nil {
		return
	}
	// 2-3. Log vs map: a committed write whose map update was lost. The
	// roll-forward is simulated for the map and bitmap checks (10.8.4).
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
			c.fix(Finding{Severity: SevError, Code: CodeRollForward, Arena: i, Offset: off,
				Message: fmt.Sprintf("lane %d: log entry does not match the map: LBA %d still maps to %d, the committed write put it in %d (interrupted write; the map entry needs updating, as Linux does at attach)", lane, ls.cur.LBA, old, nw),
				Repair:  fmt.Sprintf("roll forward: map[%d] = %d", ls.cur.LBA, nw)}, e[:], off)
			rollfwd[ls.cur.LBA] = nw
		}
	}
	// Map entries, streamed (holes of a sparse image skipped), and the
	// bitmap: every internal block referenced exactly once by the map and
	// the free list. Memory: one bit per internal block, whatever the
	// device size.
	bm := newBlockSet(a.intNLBA)
	var dups []uint32 // blocks found referenced twice (first few)
	dupCount := 0
	dup := func(p uint32) {
		if dupCount++; len(dups) < maxBitmapFindings {
			dups = append(dups, p)
		}
	}
	mark := func(p uint32) bool {
		if !bm.add(p) {
			dup(p)
			return false
		}
		return true
	}
	rollKeys := slices.Sorted(maps.Keys(rollfwd))
	var nZero, nErr, oob uint64
	var zLBAs, eLBAs []uint32 // the first few of each state
	chunk := make([]byte, 4*mapChunk)
	mapOK := true
	scanMap(dev, a, chunk, func(start, n uint32, raw []byte, err error) bool {
		if c.opt.Progress != nil {
			defer c.opt.Progress(uint64(start+n), uint64(a.extNLBA))
		}
		if err != nil {
			c.errorf(i, a.mapOff+4*int64(start), CodeReadFailed, "", "cannot read map entries %d..%d: %v", start, start+n-1, err)
			mapOK = false
			return true
		}
		if raw == nil {
			bm.addIdentity(start, n, rollfwd, rollKeys, dup)
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
				mapOK = false
				continue
			}
			mark(p)
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
	// 4. info2.
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
	// 5. Bitmap, completed with the free list.
	if logOK && mapOK {
		freeDup := map[uint32]int{}
		for lane, ls := range lanes {
			if b := ls.cur.OldMap & mapLBAMask; ls.valid && !mark(b) {
				freeDup[b] = lane
			}
		}
		c.reportBitmap(a, bm, dups, dupCount, freeDup, rollfwd)
	}
	// 6. --rewrite-log.
	if c.opt.RewriteLog && logOK {
		cur := make([]LogEntry, len(lanes))
		for k, ls := range lanes {
			cur[k] = ls.cur
		}
		c.rewriteLog(a, cur)
	}
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
