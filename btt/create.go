package btt

import (
	"crypto/rand"
	"fmt"

	"github.com/nvblk/nvblk/pmem"
)

// Create lays out a new BTT on dev, exactly as Linux's nd_btt does
// (btt_arena_write_layout; doc.go, Arenas and The log), and opens it.
// Whatever was on dev is overwritten. Per arena it zeroes the map and
// the log, writes the initial log entries, then info2, and the primary
// info block last: the primary is the commit point of creation.
func Create(dev pmem.Device, opt CreateOptions) (*BTT, error) {
	if opt.Version == (Version{}) {
		opt.Version = V11
	}
	if opt.Version != V11 && opt.Version != V20 {
		return nil, fmt.Errorf("btt: cannot create version %s (only 1.1 and 2.0)", opt.Version)
	}
	if opt.LBASize == 0 {
		opt.LBASize = 4096
	}
	if !opt.PMDK && !LBASizeSupported(opt.LBASize) {
		return nil, fmt.Errorf("btt: sector size %d is not supported (want one of %v)", opt.LBASize, SupportedLBASizes)
	}
	internal := opt.InternalLBASize
	if internal == 0 {
		internal = uint32(roundUp(uint64(opt.LBASize), InternalAlign))
		if opt.PMDK {
			internal = PMDKInternalLBASize(opt.LBASize)
		}
	}
	init := opt.Version.InitialOffset()
	if opt.At != nil {
		init = *opt.At
	}
	if opt.NFree == 0 {
		opt.NFree = DefaultNFree
	}
	if opt.UUID == ([16]byte{}) {
		opt.UUID = randomUUID()
	}
	if dev.Mode() == "" {
		return nil, fmt.Errorf("btt: device has no persistence mode")
	}
	maxArena := opt.MaxArenaSize
	if maxArena <= 0 || maxArena > ArenaMaxSize {
		maxArena = ArenaMaxSize
	}
	if maxArena < ArenaMinSize {
		return nil, fmt.Errorf("btt: arena size %d is below the %d-byte minimum", maxArena, ArenaMinSize)
	}
	layout, err := computeLayout(dev.Size(), init, opt.LBASize, internal, opt.NFree, maxArena)
	if err != nil {
		return nil, err
	}
	// Wipe the other version's info block position (ndctl zeroes the
	// first 8 KiB when it sets up a personality), so a stale BTT of the
	// other version cannot be probed.
	if opt.At == nil {
		if err := pmem.Zero(dev, 0, 2*PageSize); err != nil {
			return nil, fmt.Errorf("btt: create: %w", err)
		}
	}
	buf := make([]byte, InfoSize)
	for i, a := range layout {
		if err := writeArena(dev, a, opt, buf); err != nil {
			return nil, fmt.Errorf("btt: create arena %d: %w", i, err)
		}
	}
	o := opt.Options
	if opt.At != nil {
		o.At = opt.At
	}
	o.PMDK = o.PMDK || opt.PMDK
	return Open(dev, o)
}

func writeArena(dev pmem.Device, a ArenaLayout, opt CreateOptions, buf []byte) error {
	mapOff := a.Off + int64(a.MapOff)
	logOff := a.Off + int64(a.LogOff)
	if err := pmem.Zero(dev, mapOff, int64(a.LogOff-a.MapOff)); err != nil {
		return err
	}
	if err := pmem.Zero(dev, logOff, int64(a.Info2Off-a.LogOff)); err != nil {
		return err
	}
	var e [LogEntrySize]byte
	for lane := uint32(0); lane < a.NFree; lane++ {
		blk := a.ExternalNLBA + lane
		if opt.PMDK {
			blk |= mapZ // libpmemblk's initial entries carry the zero flag
		}
		LogEntry{LBA: lane, OldMap: blk, NewMap: blk, Seq: 1}.Encode(e[:])
		if _, err := dev.WriteAt(e[:], logOff+int64(lane)*LogGroupSize); err != nil {
			return err
		}
	}
	if err := dev.Persist(logOff, int64(a.NFree)*LogGroupSize); err != nil {
		return err
	}
	ib := Info{
		Signature:       Signature,
		UUID:            opt.UUID,
		ParentUUID:      opt.ParentUUID,
		Major:           opt.Version.Major,
		Minor:           opt.Version.Minor,
		ExternalLBASize: a.ExternalLBASize,
		ExternalNLBA:    a.ExternalNLBA,
		InternalLBASize: a.InternalLBASize,
		InternalNLBA:    a.InternalNLBA,
		NFree:           a.NFree,
		InfoSize:        InfoSize,
		NextOff:         a.NextOff,
		DataOff:         a.DataOff,
		MapOff:          a.MapOff,
		LogOff:          a.LogOff,
		Info2Off:        a.Info2Off,
	}
	ib.Encode(buf)
	if _, err := dev.WriteAtPersist(buf, a.Off+int64(a.Info2Off)); err != nil {
		return err
	}
	_, err := dev.WriteAtPersist(buf, a.Off)
	return err
}

// randomUUID is a version 4 (random) uuid.
func randomUUID() [16]byte {
	var u [16]byte
	_, _ = rand.Read(u[:])
	u[6] = u[6]&0x0f | 0x40
	u[8] = u[8]&0x3f | 0x80
	return u
}
