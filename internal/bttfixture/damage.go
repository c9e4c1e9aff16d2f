package bttfixture

import (
	"bytes"
	"fmt"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// Log damage shared with the kernel interop test, the data fresh writes,
// and the reproduction of ndctl's pad-compat image.

// damageLog builds a v1.1 BTT with LBA i holding byte i+1 for i < 16
// (see fresh) and calls damage with the log offset of arena 0, the
// lanes the writes went through and some lanes never used.
func damageLog(d pmem.Device, damage func(logOff int64, written, idle []int) error) error {
	b, err := fresh(d, btt.V11, 4096, 0)
	if err != nil {
		return err
	}
	_, _, logOff, _, _ := arena(b, 0)
	written, idle, err := laneUse(d, logOff, btt.DefaultNFree)
	if err != nil {
		return err
	}
	return damage(logOff, written, idle)
}

// laneUse sorts the lanes of the (0,1) log at logOff into those that
// carried writes and those never used (slot 0 holds the creation entry).
func laneUse(d pmem.Device, logOff int64, nfree int) (written, idle []int, err error) {
	for lane := 0; lane < nfree; lane++ {
		slot, e, err := currentSlot(d, logOff, lane)
		if err != nil {
			return nil, nil, err
		}
		if slot == 0 && e.Seq == 1 {
			idle = append(idle, lane)
		} else {
			written = append(written, lane)
		}
	}
	if len(written) == 0 || len(idle) < 3 {
		return nil, nil, fmt.Errorf("bttfixture: %d written and %d idle lanes", len(written), len(idle))
	}
	return written, idle, nil
}

// DamageLanes damages the (0,1) log at logOff (nfree lanes) the way the
// log-* fixtures do, all at once: a non-zero byte in a padding slot of an
// idle lane, equal sequence numbers on a written lane, and an impossible
// sequence number on another idle lane. Linux and nvblk then refuse the
// arena; check --repair can rebuild it.
func DamageLanes(d pmem.Device, logOff int64, nfree int) error {
	written, idle, err := laneUse(d, logOff, nfree)
	if err != nil {
		return err
	}
	if _, err := d.WriteAtPersist([]byte{0x01}, logOff+int64(idle[0])*btt.LogGroupSize+3*btt.LogEntrySize+9); err != nil {
		return err
	}
	if err := equalSeq(d, logOff, written[0]); err != nil {
		return err
	}
	e0, off, err := logEntry(d, logOff, idle[1], 0)
	if err != nil {
		return err
	}
	e0.Seq = 6
	return putEntry(d, off, e0)
}

// WrittenData is what every sector of a fixture built by fresh holds:
// LBA i < 16 is byte i+1, the rest zeros.
func WrittenData(lba uint64, sectorSize int) []byte {
	if lba < 16 {
		return bytes.Repeat([]byte{byte(lba + 1)}, sectorSize)
	}
	return make([]byte, sectorSize)
}

// buildPadCompat reproduces ndctl's test/btt-pad-compat.xxd: a 64 MiB
// v2.0 BTT, 4096-byte sectors, written by a pre-4.15 kernel (log slots 0
// and 2), with LBA 0 written once through lane 6.
func buildPadCompat(d pmem.Device) error {
	b, err := btt.Create(d, btt.CreateOptions{Version: btt.V20, LBASize: 4096,
		UUID: [16]byte{0xf0, 0xd6, 0x4d, 0x51, 0x7a, 0xd4, 0x44, 0xe2, 0x87, 0x57, 0x6b, 0x8e, 0x8e, 0x4f, 0x75, 0x00}})
	if err != nil {
		return err
	}
	a, mapOff, logOff, _, dataOff := arena(b, 0)
	ext := a.Info.ExternalNLBA
	if ext != 16105 {
		return fmt.Errorf("pad-compat geometry: external_nlba %d", ext)
	}
	// The old layout: each lane's slot 0 = {k, ext+k, ext+k, 1}; the
	// creation-time zero entry in slot 2 is all zero; slots 1, 3 zero.
	free := ext + 6
	if _, err := d.WriteAtPersist(bytes.Repeat([]byte("pad-compat LBA 0"), 256), dataOff+int64(free)*4096); err != nil {
		return err
	}
	if err := putEntry(d, logOff+6*64+32, btt.LogEntry{LBA: 0, OldMap: 0, NewMap: free, Seq: 2}); err != nil {
		return err
	}
	return put32(d, mapOff, 0xC0000000|free)
}

// equalSeq gives the older entry of lane's group the current entry's
// sequence number: a pair Linux cannot order.
func equalSeq(d pmem.Device, logOff int64, lane int) error {
	slot, e, err := currentSlot(d, logOff, lane)
	if err != nil {
		return err
	}
	other, off, err := logEntry(d, logOff, lane, 1-slot)
	if err != nil {
		return err
	}
	other.Seq = e.Seq
	return putEntry(d, off, other)
}
