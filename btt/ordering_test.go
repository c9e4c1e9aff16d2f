package btt

// brokenOrdering is the deliberately wrong write protocol selected by
// SetBrokenOrdering (export_test.go), so that the crash explorer can
// prove it catches broken orderings.
var brokenOrdering int

const (
	orderCorrect          = iota
	orderMapBeforeLog     // P3 before P2: the map points at the new block before the log commits
	orderSeqFirst         // P2b (new_map, seq) before P2a (lba, old_map)
	orderLogOneWrite      // the 16-byte log entry as one write and one persistence point
	orderNoDataPersist    // P1 stored but never flushed
	orderDataAfterLog     // P2 and P3 before P1
	orderNoFenceBeforeSeq // P1 and P2a flushed but not fenced before P2b
	// The rules of the deferred map write-back (see commit); these two
	// run in writeSector itself, with one write-back left out.
	orderNoRule1 // the replaced entry's map line not written back before P2b
	orderNoRule2 // the lane's previous map line not written back before its next P2b
)

// writeSectorBroken is writeSector with the ordering brokenOrdering
// selects. It keeps the in-memory bookkeeping of the real path, so that
// only the media ordering differs.
func (b *BTT) writeSectorBroken(l *lane, a *arena, premap uint32, src []byte) error {
	fe := &a.free[l.idx]
	nb := fe.block
	a.waitRTT(nb)
	data := func() error {
		switch brokenOrdering {
		case orderNoDataPersist:
			_, err := b.dev.WriteAt(src, a.blockOff(nb))
			return err
		case orderNoFenceBeforeSeq:
			_, err := b.dev.WriteAtFlush(src, a.blockOff(nb))
			return err
		}
		_, err := b.dev.WriteAtPersist(src, a.blockOff(nb))
		return err
	}
	if brokenOrdering != orderDataAfterLog {
		if err := data(); err != nil {
			return err
		}
	}
	mu := a.mapLock(premap)
	mu.Lock()
	raw, err := a.readMapRaw(b.dev, premap, l.buf[:])
	if err != nil {
		mu.Unlock()
		return err
	}
	old, st := decodeMap(raw, premap)
	oldField := old
	if st == MapError {
		oldField |= mapE
	}
	e := LogEntry{LBA: premap, OldMap: oldField, NewMap: nb, Seq: fe.seq}
	var ent [16]byte
	e.Encode(ent[:])
	off := a.slotOff(l.idx, a.logIdx[fe.sub])
	writeLog := func() error {
		var err error
		switch brokenOrdering {
		case orderSeqFirst:
			if _, err = b.dev.WriteAtPersist(ent[8:16], off+8); err == nil {
				_, err = b.dev.WriteAtPersist(ent[0:8], off)
			}
		case orderNoFenceBeforeSeq:
			if _, err = b.dev.WriteAtFlush(ent[0:8], off); err == nil {
				_, err = b.dev.WriteAtFlush(ent[8:16], off+8)
			}
		case orderLogOneWrite:
			if _, err = b.dev.WriteAt(ent[:], off); err == nil {
				err = b.dev.Persist(off, 16)
			}
		default:
			if _, err = b.dev.WriteAtPersist(ent[0:8], off); err == nil {
				_, err = b.dev.WriteAtPersist(ent[8:16], off+8)
			}
		}
		return err
	}
	writeMap := func() error { return a.writeMapRaw(b.dev, premap, mapNormal|nb, l.buf[:]) }
	if brokenOrdering == orderMapBeforeLog {
		err = writeMap()
		if err == nil {
			err = writeLog()
		}
	} else {
		err = writeLog()
		if err == nil {
			err = writeMap()
		}
	}
	mu.Unlock()
	if err != nil {
		return err
	}
	fe.sub ^= 1
	fe.seq = nextSeq(fe.seq)
	fe.block = old
	fe.hasErr = false
	if brokenOrdering == orderDataAfterLog {
		return data()
	}
	return nil
}
