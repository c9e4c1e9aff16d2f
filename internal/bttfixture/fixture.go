// Package bttfixture generates BTT images with known damage, for the
// checker's tests, the CLI's golden tests and the fuzzers' seeds. Every
// fixture is built from scratch by nvblk's own code (a fresh BTT, some
// writes, then raw byte edits that reproduce one kind of damage), so no
// binary blob is committed.
package bttfixture

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// Case is one fixture: how to build it and what the checker must say.
type Case struct {
	Name string
	// Size of the device in bytes.
	Size int64
	// Build lays out and damages the BTT on dev (of Size bytes).
	Build func(dev pmem.Device) error
	// Codes are the finding codes of severity error the check must report
	// (each at least once, and no other error codes).
	Codes []string
	// Infos are codes of informational findings that must be present.
	Infos []string
	// Exit and RepairExit are the exit codes of check and check --repair.
	Exit, RepairExit int
	// CLIRepairExit, when not 0, is the exit code of `nvblk check
	// --repair` on an image file, where it differs from btt.Check's (the
	// command line can extend a truncated file).
	CLIRepairExit int
	// RewriteLog asks the repair run to use --rewrite-log too.
	RewriteLog bool
	// Truncate, when > 0, cuts the device to this many bytes after Build
	// (a truncated image file).
	Truncate int64
}

const mib = 1 << 20

// fresh creates a BTT and writes a few sectors (LBA i holds byte i+1).
func fresh(dev pmem.Device, v btt.Version, lbs uint32, maxArena int64) (*btt.BTT, error) {
	b, err := btt.Create(dev, btt.CreateOptions{Version: v, LBASize: lbs, MaxArenaSize: maxArena,
		UUID: [16]byte{0xf0, 0xd6, 0x4d, 0x51, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12}})
	if err != nil {
		return nil, err
	}
	// The first 16 sectors are written as the BTT writes them, LBA k
	// through lane k, but by hand: the BTT picks its lanes at random, and
	// a fixture must be the same bytes every time (the golden files of
	// nvblk check pin what the checker says about them).
	ss := b.SectorSize()
	a, mapOff, logOff, _, dataOff := arena(b, 0)
	if err := b.Close(); err != nil {
		return nil, err
	}
	for k := 0; k < 16; k++ {
		e0, _, err := logEntry(dev, logOff, k, 0) // the lane's initial entry
		if err != nil {
			return nil, err
		}
		free := e0.OldMap & (1<<30 - 1)
		// P1: the data into the lane's free block; P2: the log entry in
		// the lane's other slot; P3: the map.
		if _, err := dev.WriteAtPersist(bytes.Repeat([]byte{byte(k + 1)}, ss), dataOff+int64(free)*int64(a.Info.InternalLBASize)); err != nil {
			return nil, err
		}
		off := logOff + int64(k)*btt.LogGroupSize + int64(a.LogIndex[1])*btt.LogEntrySize
		if err := putEntry(dev, off, btt.LogEntry{LBA: uint32(k), OldMap: uint32(k), NewMap: free, Seq: 2}); err != nil {
			return nil, err
		}
		if err := put32(dev, mapOff+4*int64(k), 0xC0000000|free); err != nil {
			return nil, err
		}
	}
	// One lane: the fixtures' further writes go through lane 0.
	return btt.Open(dev, btt.Options{Lanes: 1})
}

func arena(b *btt.BTT, i int) (btt.ArenaInfo, int64, int64, int64, int64) {
	a := b.Arenas()[i]
	return a, a.Offset + int64(a.Info.MapOff), a.Offset + int64(a.Info.LogOff), a.Offset + int64(a.Info.Info2Off), a.Offset + int64(a.Info.DataOff)
}

func put32(dev pmem.Device, off int64, v uint32) error {
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], v)
	_, err := dev.WriteAtPersist(b[:], off)
	return err
}

func zero(dev pmem.Device, off, n int64) error {
	_, err := dev.WriteAtPersist(make([]byte, n), off)
	return err
}

// rewriteInfo changes an arena's primary info block with edit and writes
// it back with a valid checksum (damage that the checksum cannot see).
func rewriteInfo(dev pmem.Device, off int64, edit func(*btt.Info)) error {
	buf := make([]byte, btt.InfoSize)
	if _, err := dev.ReadAt(buf, off); err != nil {
		return err
	}
	ib := btt.DecodeInfo(buf)
	edit(&ib)
	ib.Encode(buf)
	_, err := dev.WriteAtPersist(buf, off)
	return err
}

func logEntry(dev pmem.Device, logOff int64, lane, slot int) (btt.LogEntry, int64, error) {
	off := logOff + int64(lane)*btt.LogGroupSize + int64(slot)*btt.LogEntrySize
	var b [16]byte
	_, err := dev.ReadAt(b[:], off)
	return btt.DecodeLogEntry(b[:]), off, err
}

func putEntry(dev pmem.Device, off int64, e btt.LogEntry) error {
	var b [16]byte
	e.Encode(b[:])
	_, err := dev.WriteAtPersist(b[:], off)
	return err
}

// currentSlot returns the slot (0 or 1, new padding) holding lane's
// current entry.
func currentSlot(dev pmem.Device, logOff int64, lane int) (int, btt.LogEntry, error) {
	e0, _, err := logEntry(dev, logOff, lane, 0)
	if err != nil {
		return 0, e0, err
	}
	e1, _, err := logEntry(dev, logOff, lane, 1)
	if err != nil {
		return 0, e1, err
	}
	next := map[uint32]uint32{1: 2, 2: 3, 3: 1}
	if e1.Seq != 0 && next[e0.Seq] == e1.Seq {
		return 1, e1, nil
	}
	return 0, e0, nil
}

// Cases returns every fixture.
func Cases() []Case {
	v11 := func(dev pmem.Device) (*btt.BTT, error) { return fresh(dev, btt.V11, 4096, 0) }
	v20 := func(dev pmem.Device) (*btt.BTT, error) { return fresh(dev, btt.V20, 4096, 0) }
	return []Case{
		{Name: "clean", Size: 20 * mib, Build: func(d pmem.Device) error { _, err := v11(d); return err }},
		{Name: "clean-512-v2.0", Size: 20 * mib, Build: func(d pmem.Device) error { _, err := fresh(d, btt.V20, 512, 0); return err }},
		{Name: "clean-520", Size: 20 * mib, Build: func(d pmem.Device) error { _, err := fresh(d, btt.V11, 520, 0); return err }},
		{
			// ndctl btt-check.sh bad_info2: zero the last 4 KiB.
			Name: "bad-info2", Size: 20 * mib, Codes: []string{btt.CodeInfo2}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				if _, err := v11(d); err != nil {
					return err
				}
				return zero(d, d.Size()-4096, 4096)
			},
		},
		{
			// ndctl btt-check.sh bad_info: zero the first 8 KiB.
			Name: "bad-info-v1.1", Size: 20 * mib, Codes: []string{btt.CodeInfoRestore}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				if _, err := v11(d); err != nil {
					return err
				}
				return zero(d, 0, 8192)
			},
		},
		{
			Name: "bad-info-v2.0", Size: 20 * mib, Codes: []string{btt.CodeInfoRestore}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				if _, err := v20(d); err != nil {
					return err
				}
				return zero(d, 0, 4096)
			},
		},
		{
			// ndctl btt-check.sh bitmap: the last 4 KiB page of the map
			// becomes 1024 entries 0xC0001E1E. Not repairable.
			Name: "bitmap", Size: 64 * mib, Codes: []string{btt.CodeBitmap}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, _, logOff, _, _ := arena(b, 0)
				page := bytes.Repeat([]byte{0x1e, 0x1e, 0x00, 0xc0}, 1024)
				_, err = d.WriteAtPersist(page, logOff-4096)
				return err
			},
		},
		{
			// ndctl btt-pad-compat: a v2.0 image written by a pre-4.15
			// kernel, with the (0,2) log padding. Clean; --rewrite-log
			// converts it.
			Name: "pad-compat", Size: 64 * mib, Infos: []string{btt.CodeOldPadding}, RewriteLog: true,
			Build: buildPadCompat,
		},
		{
			// A torn log entry: the older slot's first half landed, its
			// second half (with seq) did not. Not an error: recovery ignores it.
			Name: "torn-log-entry", Size: 20 * mib,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, _, logOff, _, _ := arena(b, 0)
				for lane := 0; lane < 256; lane++ {
					cur, e, err := currentSlot(d, logOff, lane)
					if err != nil {
						return err
					}
					if e.Seq == 1 && cur == 0 {
						continue
					}
					_, off, _ := logEntry(d, logOff, lane, 1-cur)
					var half [8]byte
					binary.LittleEndian.PutUint32(half[0:], 7)
					binary.LittleEndian.PutUint32(half[4:], 12345)
					_, err = d.WriteAtPersist(half[:], off)
					return err
				}
				return fmt.Errorf("no written lane")
			},
		},
		{
			Name: "equal-seq", Size: 20 * mib, Codes: []string{btt.CodeLogEqlSeq}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, _, logOff, _, _ := arena(b, 0)
				e0, off0, _ := logEntry(d, logOff, 3, 0)
				e1 := e0
				e1.Seq = 2
				e0.Seq = 2
				if err := putEntry(d, off0, e0); err != nil {
					return err
				}
				return putEntry(d, off0+16, e1)
			},
		},
		{
			Name: "oob-seq", Size: 20 * mib, Codes: []string{btt.CodeLogOOBSeq}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, _, logOff, _, _ := arena(b, 0)
				e0, off0, _ := logEntry(d, logOff, 200, 0)
				e0.Seq = 7
				return putEntry(d, off0, e0)
			},
		},
		{
			Name: "map-oob", Size: 20 * mib, Codes: []string{btt.CodeMapOOB}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				a, mapOff, _, _, _ := arena(b, 0)
				return put32(d, mapOff+4*100, 0xC0000000|(a.Info.InternalNLBA+5))
			},
		},
		{
			// Two LBAs map to one block: a duplicate and a leaked block.
			Name: "map-duplicate", Size: 20 * mib, Codes: []string{btt.CodeBitmap}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, mapOff, _, _, _ := arena(b, 0)
				return put32(d, mapOff+4*100, 0xC0000000|101)
			},
		},
		{
			// A lane's free block is also mapped: a duplicate, and the
			// block it should have named leaks.
			Name: "leaked-block", Size: 20 * mib, Codes: []string{btt.CodeBitmap}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, _, logOff, _, _ := arena(b, 0)
				e, off, _ := logEntry(d, logOff, 250, 0)
				e.OldMap, e.NewMap = 500, 500
				return putEntry(d, off, e)
			},
		},
		{
			// Flag bits in log map fields: PMDK sets Z|E on both, Linux
			// sets E on old_map after a media error. Legal: info only.
			Name: "log-flags", Size: 20 * mib, Infos: []string{btt.CodeLogFlags},
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, _, logOff, _, _ := arena(b, 0)
				e, off, _ := logEntry(d, logOff, 255, 0)
				e.OldMap |= 0xC0000000
				e.NewMap |= 0xC0000000
				if err := putEntry(d, off, e); err != nil {
					return err
				}
				for lane := 0; lane < 256; lane++ {
					cur, e, err := currentSlot(d, logOff, lane)
					if err != nil {
						return err
					}
					if e.OldMap != e.NewMap {
						_, off, _ := logEntry(d, logOff, lane, cur)
						e.OldMap |= 0x40000000
						return putEntry(d, off, e)
					}
				}
				return fmt.Errorf("no written lane")
			},
		},
		{
			// Sectors in the error and zero states: legal.
			Name: "map-states", Size: 20 * mib, Infos: []string{btt.CodeMapStates},
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				if err := b.SetError(3, 2); err != nil {
					return err
				}
				return b.ZeroSectors(7, 1)
			},
		},
		{
			// An interrupted write: log committed, map update lost.
			Name: "pending-roll-forward", Size: 20 * mib, Codes: []string{btt.CodeRollForward}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				b, err := v11(d)
				if err != nil {
					return err
				}
				_, mapOff, _, _, _ := arena(b, 0)
				var old [4]byte
				if _, err := d.ReadAt(old[:], mapOff+4*40); err != nil {
					return err
				}
				if err := b.WriteSectors(bytes.Repeat([]byte{0x77}, 4096), 40); err != nil {
					return err
				}
				_, err = d.WriteAtPersist(old[:], mapOff+4*40)
				return err
			},
		},
		{
			// Two arenas (16 MiB each); arena 1's primary is zeroed.
			Name: "arena1-bad-info", Size: 32*mib + 4096, Codes: []string{btt.CodeInfoRestore}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				b, err := fresh(d, btt.V11, 4096, 16*mib)
				if err != nil {
					return err
				}
				if len(b.Arenas()) != 2 {
					return fmt.Errorf("want 2 arenas, got %d", len(b.Arenas()))
				}
				a1 := b.Arenas()[1]
				if err := b.WriteSectors(bytes.Repeat([]byte{0x42}, 4096), a1.ExternalStart+3); err != nil {
					return err
				}
				return zero(d, a1.Offset, 4096)
			},
		},
		{
			// Two arenas; damage inside arena 1 (a duplicated map entry).
			Name: "arena1-bitmap", Size: 32*mib + 4096, Codes: []string{btt.CodeBitmap}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error {
				b, err := fresh(d, btt.V11, 4096, 16*mib)
				if err != nil {
					return err
				}
				_, mapOff, _, _, _ := arena(b, 1)
				return put32(d, mapOff+4*7, 0xC0000000|8)
			},
		},
		{
			Name: "error-flag", Size: 20 * mib, Codes: []string{btt.CodeErrorFlag}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error {
				if _, err := v11(d); err != nil {
					return err
				}
				// Both copies carry the flag, as an implementation that set it would write.
				if err := rewriteInfo(d, 4096, func(ib *btt.Info) { ib.Flags |= 1 }); err != nil {
					return err
				}
				return rewriteInfo(d, d.Size()-4096, func(ib *btt.Info) { ib.Flags |= 1 })
			},
		},
		{
			// A checksummed info block with impossible geometry.
			Name: "bad-geometry", Size: 20 * mib, Codes: []string{btt.CodeGeometry}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error {
				if _, err := v11(d); err != nil {
					return err
				}
				return rewriteInfo(d, 4096, func(ib *btt.Info) { ib.NFree = 0 })
			},
		},
		{
			// The last page (the backup info block) cut off: readable,
			// read-only; the command line's repair extends the file.
			Name: "truncated-info2", Size: 20 * mib, Truncate: 20*mib - 4096, Codes: []string{btt.CodeTruncated}, Exit: 4, RepairExit: 4, CLIRepairExit: 1,
			Build: func(d pmem.Device) error { _, err := v11(d); return err },
		},
		{
			// The image file was truncated: the arena runs past its end.
			Name: "truncated", Size: 20 * mib, Truncate: 12 * mib, Codes: []string{btt.CodeGeometry}, Exit: 4, RepairExit: 4,
			Build: func(d pmem.Device) error { _, err := v11(d); return err },
		},
		{
			// One non-zero byte in a padding slot of an idle lane: Linux
			// cannot deduce the log layout and refuses the whole device.
			Name: "log-padding-byte", Size: 20 * mib, Codes: []string{btt.CodePadding}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				return damageLog(d, func(logOff int64, written, idle []int) error {
					_, err := d.WriteAtPersist([]byte{0x01}, logOff+int64(idle[0])*btt.LogGroupSize+3*btt.LogEntrySize+9)
					return err
				})
			},
		},
		{
			// The current entry of a written lane is garbage (a torn or
			// scribbled entry whose sequence number survived).
			Name: "log-torn-current", Size: 20 * mib, Codes: []string{btt.CodeLogOOBLBA}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				return damageLog(d, func(logOff int64, written, idle []int) error {
					slot, e, err := currentSlot(d, logOff, written[0])
					if err != nil {
						return err
					}
					e.LBA, e.OldMap, e.NewMap = 0xdeadbeef, 0x0badf00d, 0x3ffffff0
					return putEntry(d, logOff+int64(written[0])*btt.LogGroupSize+int64(slot)*btt.LogEntrySize, e)
				})
			},
		},
		{
			// Both entries of a written lane carry one sequence number.
			Name: "log-dup-seq", Size: 20 * mib, Codes: []string{btt.CodeLogEqlSeq}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				return damageLog(d, func(logOff int64, written, idle []int) error {
					return equalSeq(d, logOff, written[0])
				})
			},
		},
		{
			// An impossible sequence pair on a written lane.
			Name: "log-invalid-pair", Size: 20 * mib, Codes: []string{btt.CodeLogOOBSeq}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				return damageLog(d, func(logOff int64, written, idle []int) error {
					slot, _, err := currentSlot(d, logOff, written[0])
					if err != nil {
						return err
					}
					other, off, err := logEntry(d, logOff, written[0], 1-slot)
					if err != nil {
						return err
					}
					other.Seq = 5
					return putEntry(d, off, other)
				})
			},
		},
		{
			// Several lanes at once: a padding byte, a scribbled written
			// lane, an idle lane with equal sequence numbers.
			Name: "log-several-lanes", Size: 20 * mib, Codes: []string{btt.CodeLogEqlSeq, btt.CodeLogOOBNew, btt.CodePadding}, Exit: 4, RepairExit: 1,
			Build: func(d pmem.Device) error {
				return damageLog(d, func(logOff int64, written, idle []int) error {
					if _, err := d.WriteAtPersist([]byte{0x80}, logOff+int64(idle[1])*btt.LogGroupSize+2*btt.LogEntrySize); err != nil {
						return err
					}
					slot, e, err := currentSlot(d, logOff, written[0])
					if err != nil {
						return err
					}
					e.NewMap = 0x3fffff00
					if err := putEntry(d, logOff+int64(written[0])*btt.LogGroupSize+int64(slot)*btt.LogEntrySize, e); err != nil {
						return err
					}
					e0, off, err := logEntry(d, logOff, idle[2], 0)
					if err != nil {
						return err
					}
					e0.Seq = 2
					if err := putEntry(d, off, e0); err != nil {
						return err
					}
					return putEntry(d, off+btt.LogEntrySize, e0)
				})
			},
		},
	}
}
