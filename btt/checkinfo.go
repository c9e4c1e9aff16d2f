package btt

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Info-block discovery and recovery for Check: arena 0's primary, found
// at the version's initial offset or recovered from a copy, then the walk
// from arena to arena, each primary recovered from its backup when
// damaged.

func versionFits(ib Info, off int64) bool {
	return (off == InitialOffset11 && ib.Major == 1) || (off == InitialOffset20 && ib.Major == 2)
}

// findFirst locates arena 0's info block, recovering it if need be
// (doc.go, Checking).
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
			// The fields that differ between arenas: flags, external
			// and internal nlba, nfree, the offsets, the checksum.
			for _, r := range [][2]int{{ibFlags, ibMajor}, {ibExtNLBA, ibIntLBASize}, {ibIntNLBA, ibNFree}, {ibNextOff, ibPadding}, {ibChecksum, InfoSize}} {
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
		i2 := int64(binary.LittleEndian.Uint64(primary[ibInfo2Off:]))
		if i2 > 0 && i2 <= min(size-InfoSize, ArenaMaxSize-InfoSize+off) && c.verifyAt(off+i2, buf) {
			if ib := DecodeInfo(buf); versionFits(ib, off) && selfLocated(ib, off+i2) {
				return ib, off + i2, true
			}
		}
	}
	return Info{}, 0, false
}

// walkArenas discovers and checks every arena (ndctl's
// btt_discover_arenas, then the per-arena steps).
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
