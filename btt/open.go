package btt

import (
	"bytes"
	"log/slog"
	"runtime"

	"github.com/nvblk/nvblk/pmem"
)

// Probe reports whether dev holds a BTT, and where: the version and
// namespace offset of the first valid primary info block. It reads at
// most three 4 KiB blocks and never writes.
func Probe(dev pmem.Device) (Version, int64, bool) {
	c, err := probe(dev, nil)
	if err != nil || c.backup {
		return Version{}, 0, false
	}
	return c.version, c.initOff, true
}

type probeResult struct {
	version Version
	initOff int64
	info    Info
	backup  bool // arena 0's primary is damaged; info is from its info2
}

// readInfo reads the 4 KiB info block at off. A block that would lie
// past the device is an error without a read: probing a small device is
// not a caller bug (which pmem reports with a warning).
func readInfo(dev pmem.Device, off int64, buf []byte) error {
	if err := pmem.CheckRange("read", off, InfoSize, dev.Size()); err != nil {
		return err
	}
	_, err := dev.ReadAt(buf[:InfoSize], off)
	return err
}

func probe(dev pmem.Device, parent *[16]byte) (probeResult, error) {
	buf := make([]byte, InfoSize)
	var found []probeResult
	for _, v := range []Version{V11, V20} {
		off := v.InitialOffset()
		if readInfo(dev, off, buf) != nil || Verify(buf, parent) != InfoOK {
			continue
		}
		ib := DecodeInfo(buf)
		if (v == V11 && ib.Major != 1) || (v == V20 && ib.Major != 2) {
			continue
		}
		found = append(found, probeResult{version: Version{ib.Major, ib.Minor}, initOff: off, info: ib})
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 2:
		// Both offsets hold a valid info block: one is stale, or is data.
		// The real BTT's arena 0 has an info2 equal to its primary.
		for _, c := range found {
			if info2Matches(dev, c, buf) {
				return c, nil
			}
		}
		return found[0], nil
	}
	// No valid primary: look for arena 0's backup (ndctl's first recovery
	// attempt; doc.go, Checking).
	for _, v := range []Version{V11, V20} {
		off := v.InitialOffset()
		b2 := backupOffset(dev.Size(), off, off)
		if b2 < 0 || readInfo(dev, b2, buf) != nil || Verify(buf, parent) != InfoOK {
			continue
		}
		ib := DecodeInfo(buf)
		if (v == V11 && ib.Major != 1) || (v == V20 && ib.Major != 2) {
			continue
		}
		return probeResult{version: Version{ib.Major, ib.Minor}, initOff: off, info: ib, backup: true}, nil
	}
	return probeResult{}, ErrNotFound
}

// probeAt looks for a BTT whose arena 0 starts at off (any version),
// falling back to that arena's backup info block.
func probeAt(dev pmem.Device, off int64, parent *[16]byte) (probeResult, error) {
	buf := make([]byte, InfoSize)
	if off >= 0 && readInfo(dev, off, buf) == nil && Verify(buf, parent) == InfoOK {
		ib := DecodeInfo(buf)
		if ib.Major != 0 {
			return probeResult{version: Version{ib.Major, ib.Minor}, initOff: off, info: ib}, nil
		}
	}
	b2 := backupOffset(dev.Size(), off, off)
	if off >= 0 && b2 >= 0 && readInfo(dev, b2, buf) == nil && Verify(buf, parent) == InfoOK {
		ib := DecodeInfo(buf)
		if ib.Major != 0 && ib.Info2Off != 0 && off+int64(ib.Info2Off) == b2 {
			return probeResult{version: Version{ib.Major, ib.Minor}, initOff: off, info: ib, backup: true}, nil
		}
	}
	return probeResult{}, ErrNotFound
}

func info2Matches(dev pmem.Device, c probeResult, buf []byte) bool {
	off := c.initOff + int64(c.info.Info2Off)
	if c.info.Info2Off == 0 || off < 0 || off > dev.Size()-InfoSize {
		return false
	}
	if readInfo(dev, off, buf) != nil {
		return false
	}
	var prim [InfoSize]byte
	ib := c.info
	ib.Encode(prim[:])
	return bytes.Equal(prim[:], buf)
}

// backupOffset estimates where the info2 of the arena starting at
// namespace offset arenaOff lies, from the device size alone, following
// Linux's arena split (create_arenas; doc.go, Arenas). initOff is the BTT's initial offset.
func backupOffset(devSize, initOff, arenaOff int64) int64 {
	remaining := devSize - arenaOff
	if remaining < ArenaMinSize {
		return -1
	}
	asz := min(int64(ArenaMaxSize), remaining)
	return arenaOff + (asz &^ (PageSize - 1)) - PageSize
}

// Open finds and opens the BTT on dev, probing versions 1.1 and 2.0.
// It never lays out a new BTT. If a primary info block is damaged but its
// backup is good, the BTT opens read-only and FromBackup reports it;
// `nvblk check --repair` restores the primary.
func Open(dev pmem.Device, opt Options) (*BTT, error) {
	var pr probeResult
	var err error
	if opt.At != nil {
		pr, err = probeAt(dev, *opt.At, opt.ParentUUID)
	} else {
		pr, err = probe(dev, opt.ParentUUID)
	}
	if err != nil {
		return nil, err
	}
	b := &BTT{
		dev:      dev,
		version:  pr.version,
		initOff:  pr.initOff,
		uuid:     pr.info.UUID,
		parent:   pr.info.ParentUUID,
		lbasize:  pr.info.ExternalLBASize,
		readOnly: opt.ReadOnly,
		log:      opt.Logger,
		pmdk:     opt.PMDK,
	}
	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}
	if err := b.discover(pr, opt.ParentUUID); err != nil {
		return nil, err
	}
	if b.backup {
		b.readOnly = true
		b.log.Warn("btt: a primary info block is damaged; opened read-only from its backup. Run `nvblk check --repair` to restore it")
	}
	if last := b.arenas[len(b.arenas)-1]; last.info2Cut {
		b.readOnly, b.truncated = true, true
		b.log.Warn("btt: the device ends before the backup info block: the image was truncated; opened read-only. Run `nvblk check --repair` to extend it and restore the backup",
			"info2", last.info2Off, "device_size", dev.Size(), "needed", last.off+last.size)
	}
	b.sectorSize = SectorSizeFor(b.lbasize)
	if b.pmdk {
		b.sectorSize = b.lbasize // a PMDK block is all data
	}
	b.zeros = make([]byte, b.sectorSize)
	nl := opt.Lanes
	if nl <= 0 {
		nl = max(8, 2*runtime.GOMAXPROCS(0))
	}
	for _, a := range b.arenas {
		nl = min(nl, int(a.nfree))
	}
	b.lanes = make([]lane, nl)
	for i := range b.lanes {
		b.lanes[i].idx = i
	}
	for _, a := range b.arenas {
		if err := b.loadLog(a, nl); err != nil {
			return nil, err
		}
	}
	return b, nil
}

func (b *BTT) discover(pr probeResult, parent *[16]byte) error {
	buf := make([]byte, InfoSize)
	dev := b.dev
	var rel int64 // arena offset relative to initOff
	for i := 0; ; i++ {
		if i >= maxArenas {
			return corruptf(i, b.initOff+rel, "more than %d arenas", maxArenas)
		}
		off := b.initOff + rel
		var ib Info
		if i == 0 && pr.backup {
			ib = pr.info
			b.backup = true
		} else {
			if err := readInfo(dev, off, buf); err != nil {
				return corruptf(i, off, "cannot read info block: %v", err)
			}
			if f := Verify(buf, parent); f != InfoOK {
				b2 := backupOffset(dev.Size(), b.initOff, off)
				if b2 < 0 || readInfo(dev, b2, buf) != nil || Verify(buf, parent) != InfoOK {
					return corruptf(i, off, "info block: %s, and no valid backup", f)
				}
				b.backup = true
			}
			ib = DecodeInfo(buf)
		}
		a, err := parseArena(i, off, ib, dev.Size(), b.lbasize)
		if err != nil {
			return err
		}
		if a.errFlag {
			b.log.Warn("btt: arena has its error flag set; it is read-only", "arena", i)
		}
		if len(b.arenas) > 0 {
			a.extStart = b.nlba
		}
		b.arenas = append(b.arenas, a)
		b.nlba += uint64(a.extNLBA)
		if ib.NextOff == 0 {
			return nil
		}
		rel += int64(ib.NextOff)
	}
}

// parseArena validates an info block's geometry against the device and
// builds the arena. Every bound here protects an allocation or a loop.
func parseArena(i int, off int64, ib Info, devSize int64, lbasize uint32) (*arena, error) {
	bad := func(format string, a ...any) error { return corruptf(i, off, format, a...) }
	if ib.ExternalLBASize != lbasize {
		return nil, bad("external_lbasize %d differs from arena 0's %d", ib.ExternalLBASize, lbasize)
	}
	if ib.ExternalLBASize == 0 || ib.ExternalLBASize > MaxLBASize || ib.InternalLBASize < ib.ExternalLBASize || ib.InternalLBASize < 512 {
		return nil, bad("bad sector sizes: external %d, internal %d", ib.ExternalLBASize, ib.InternalLBASize)
	}
	if ib.NFree == 0 || ib.NFree > MaxNFree {
		return nil, bad("nfree %d outside [1, %d]", ib.NFree, MaxNFree)
	}
	if ib.ExternalNLBA == 0 || ib.InternalNLBA < ib.ExternalNLBA || ib.InternalNLBA > mapLBAMask+1 {
		return nil, bad("bad block counts: external_nlba %d, internal_nlba %d", ib.ExternalNLBA, ib.InternalNLBA)
	}
	if ib.InternalNLBA-ib.ExternalNLBA != ib.NFree {
		return nil, bad("internal_nlba %d - external_nlba %d != nfree %d", ib.InternalNLBA, ib.ExternalNLBA, ib.NFree)
	}
	size := ib.NextOff
	if size == 0 {
		size = ib.Info2Off + InfoSize
	}
	if off < 0 || off >= devSize {
		return nil, bad("arena starts at %#x, outside the %d-byte device", off, devSize)
	}
	devLeft := uint64(devSize - off)
	// Only the last arena's backup info block past the end: an image file
	// cut short (its last page lost). Everything else is there, so the BTT
	// can be read; the caller keeps it read-only.
	info2Cut := ib.NextOff == 0 && ib.Info2Off <= devLeft && size > devLeft
	if !info2Cut && (size > devLeft || ib.Info2Off > devLeft) {
		return nil, bad("arena of %d bytes (info2off %#x) runs past the end of the device (%d bytes left)", size, ib.Info2Off, devLeft)
	}
	data := uint64(ib.InternalNLBA) * uint64(ib.InternalLBASize)
	switch {
	case ib.DataOff < InfoSize:
		return nil, bad("dataoff %#x overlaps the info block", ib.DataOff)
	case ib.MapOff < ib.DataOff || ib.MapOff-ib.DataOff < data:
		return nil, bad("data area [%#x, %#x) of %d blocks of %d bytes does not fit before mapoff %#x", ib.DataOff, ib.MapOff, ib.InternalNLBA, ib.InternalLBASize, ib.MapOff)
	case ib.LogOff < ib.MapOff || ib.LogOff-ib.MapOff < uint64(ib.ExternalNLBA)*MapEntrySize:
		return nil, bad("map at %#x of %d entries does not fit before logoff %#x", ib.MapOff, ib.ExternalNLBA, ib.LogOff)
	case ib.Info2Off < ib.LogOff || ib.Info2Off-ib.LogOff < uint64(ib.NFree)*LogGroupSize:
		return nil, bad("log at %#x of %d lanes does not fit before info2off %#x", ib.LogOff, ib.NFree, ib.Info2Off)
	case ib.Info2Off+InfoSize > size:
		return nil, bad("info2off %#x is outside the %d-byte arena", ib.Info2Off, size)
	}
	a := &arena{
		idx:      i,
		info:     ib,
		off:      off,
		size:     int64(size),
		dataOff:  off + int64(ib.DataOff),
		mapOff:   off + int64(ib.MapOff),
		logOff:   off + int64(ib.LogOff),
		info2Off: off + int64(ib.Info2Off),
		info2Cut: info2Cut,
		L:        int64(ib.InternalLBASize),
		intNLBA:  ib.InternalNLBA,
		extNLBA:  ib.ExternalNLBA,
		nfree:    ib.NFree,
		errFlag:  ib.Flags&infoFlagError != 0,
	}
	nlocks := min(ib.NFree, 256)
	a.mapLocks = make([]paddedMutex, nlocks)
	return a, nil
}

// readGroup reads the 64-byte log group of a lane.
func readGroup(dev pmem.Device, a *arena, lane uint32, g *[4]LogEntry, buf []byte) error {
	off := a.logOff + int64(lane)*LogGroupSize
	if _, err := dev.ReadAt(buf[:LogGroupSize], off); err != nil {
		return corruptf(a.idx, off, "cannot read log group of lane %d: %v", lane, err)
	}
	for j := range g {
		g[j] = DecodeLogEntry(buf[16*j:])
	}
	return nil
}

// detectPadding is the kernel's log_set_indices (doc.go, The log).
func detectPadding(dev pmem.Device, a *arena) ([2]int, error) {
	idx := [2]int{-1, -1}
	n := 0
	idxSet, initial := false, true
	var g [4]LogEntry
	buf := make([]byte, LogGroupSize)
	for lane := uint32(0); lane < a.nfree; lane++ {
		if err := readGroup(dev, a, lane, &g, buf); err != nil {
			return idx, err
		}
		pad := 0
		for j := 0; j < 4; j++ {
			e := g[j]
			if !idxSet {
				if e.IsZero() {
					pad++
					continue
				}
				if n == 1 && j == idx[0] {
					continue
				}
				idx[n] = j
				n++
				if n == 2 {
					idxSet = true
				}
			} else {
				if j == idx[0] && e.IsZero() ||
					j != idx[0] && j != idx[1] && !e.IsZero() {
					return idx, corruptf(a.idx, a.logOff+int64(lane)*LogGroupSize,
						"unable to deduce log/padding indices: lane %d slot %d breaks the (%d,%d) layout", lane, j, idx[0], idx[1])
				}
			}
		}
		if pad < 3 {
			initial = false
		}
	}
	if !initial && !idxSet {
		return idx, corruptf(a.idx, a.logOff, "unable to deduce log/padding indices")
	}
	if initial {
		idx[1] = 1
		if idx[0] < 0 {
			idx[0] = 0
		}
	}
	if idx != [2]int{0, 1} && idx != [2]int{0, 2} {
		return idx, corruptf(a.idx, a.logOff, "unknown log padding scheme (%d,%d)", idx[0], idx[1])
	}
	return idx, nil
}

// currentEntry picks the lane's current entry per btt_log_get_old.
// It returns the entry, the slot index (0/1) of the current entry.
func currentEntry(g *[4]LogEntry, idx [2]int) (LogEntry, int, bool) {
	e0, e1 := g[idx[0]], g[idx[1]]
	older, ok := olderSlot(e0.Seq, e1.Seq)
	if !ok {
		return LogEntry{}, 0, false
	}
	if older == 0 {
		return e1, 1, e1.Seq != 0
	}
	return e0, 0, e0.Seq != 0
}

// loadLog detects the padding, rebuilds the free list and rolls forward an
// interrupted write (btt_freelist_init; doc.go, Recovery at open).
func (b *BTT) loadLog(a *arena, nlanes int) error {
	idx, err := detectPadding(b.dev, a)
	if err != nil {
		return err
	}
	a.logIdx = idx
	a.free = make([]freeEntry, nlanes)
	a.rtt = make([]rttSlot, nlanes)
	var g [4]LogEntry
	buf := make([]byte, LogGroupSize)
	seen := make(map[uint32]uint32, a.nfree)
	for lane := uint32(0); lane < a.nfree; lane++ {
		if err := readGroup(b.dev, a, lane, &g, buf); err != nil {
			return err
		}
		goff := a.logOff + int64(lane)*LogGroupSize
		cur, slot, ok := currentEntry(&g, idx)
		if !ok {
			return corruptf(a.idx, goff, "log corruption in lane %d: sequence numbers (%d, %d)", lane, g[idx[0]].Seq, g[idx[1]].Seq)
		}
		old, nw := cur.OldMap&mapLBAMask, cur.NewMap&mapLBAMask
		if old >= a.intNLBA || nw >= a.intNLBA {
			return corruptf(a.idx, goff, "lane %d log entry maps outside internal_nlba %d (old %d, new %d)", lane, a.intNLBA, old, nw)
		}
		if prev, dup := seen[old]; dup {
			return corruptf(a.idx, goff, "block %d is free in both lane %d and lane %d", old, prev, lane)
		}
		seen[old] = lane
		hasErr := cur.OldMap&mapNormal == mapE
		if int(lane) < nlanes {
			a.free[lane] = freeEntry{block: old, sub: uint8(1 - slot), seq: nextSeq(cur.Seq), hasErr: hasErr}
		}
		if hasErr && !b.readOnly {
			if b.clearBlock(a, old) == nil && int(lane) < nlanes {
				a.free[lane].hasErr = false
			}
		}
		if old == nw {
			continue
		}
		if cur.LBA >= a.extNLBA {
			return corruptf(a.idx, goff, "lane %d log entry names LBA %d past external_nlba %d", lane, cur.LBA, a.extNLBA)
		}
		raw, err := a.readMapRaw(b.dev, cur.LBA, buf)
		if err != nil {
			return corruptf(a.idx, a.mapOff+4*int64(cur.LBA), "cannot read map entry %d: %v", cur.LBA, err)
		}
		m, _ := decodeMap(raw, cur.LBA)
		if nw != m && old == m {
			// The log committed the write but the map update was lost:
			// roll forward.
			if b.readOnly || b.backup {
				if a.override == nil {
					a.override = make(map[uint32]uint32)
				}
				a.override[cur.LBA] = mapNormal | nw
			} else if err := a.writeMapRaw(b.dev, cur.LBA, mapNormal|nw, buf); err != nil {
				return corruptf(a.idx, a.mapOff+4*int64(cur.LBA), "roll-forward of LBA %d failed: %v", cur.LBA, err)
			}
		}
	}
	return nil
}
