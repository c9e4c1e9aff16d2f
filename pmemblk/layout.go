package pmemblk

import (
	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// zeroChunk bounds the buffers of the metadata scans below.
const zeroChunk = 64 << 10

// detectLayout decides whether the BTT area of a pool holds a BTT
// layout. libpmemblk writes the layout lazily (on the first write or
// set_error) and treats any arena 0 without a valid primary info block
// as "no layout", re-laying out over whatever is there. nvblk does not
// make that mistake: with no valid primary, the area counts as unlaid
// only when no write can ever have been committed to it, that is when
//
//   - every flog pair is zero or exactly the initial entry a layout
//     writes (so no write was logged), and
//   - if a valid backup info block exists or the primary is not all
//     zeros (a torn or damaged one), the map is all zeros too (no block
//     was ever mapped, zeroed or put in the error state). A never-used
//     pool has neither, so opening it reads only the flog, not the map.
//
// A layout interrupted by a crash is in that state: nvblk's creation
// (btt.Create) writes the map, the flog, the backup info block and the
// primary last, and libpmemblk's writes the flog then the primary then
// the backup. Anything else is reported as laid out, and btt.Open then
// uses the backup info block (read-only) or fails: the data is never
// silently replaced by a new layout.
func detectLayout(win pmem.Device, geo []arenaGeom, parent *[16]byte) (bool, error) {
	buf := make([]byte, infoSize)
	if _, err := win.ReadAt(buf, 0); err != nil {
		return false, err
	}
	if validInfo(buf, parent) {
		return true, nil
	}
	a0 := geo[0]
	scanMap := !isZero(buf)
	if _, err := win.ReadAt(buf, a0.info2Off); err != nil {
		return false, err
	}
	if validInfo(buf, parent) {
		ib := btt.DecodeInfo(buf)
		if int64(ib.Info2Off) != a0.info2Off || int64(ib.MapOff) != a0.mapOff || int64(ib.LogOff) != a0.flogOff ||
			ib.ExternalNLBA != a0.extNLBA || ib.NFree != DefaultNFree {
			return true, nil // a layout, but not the one we would write: let btt.Open judge
		}
		scanMap = true
	}
	for _, a := range geo {
		ok, err := flogPristine(win, a)
		if err != nil || !ok {
			return true, err
		}
		if scanMap {
			ok, err := mapZero(win, a)
			if err != nil || !ok {
				return true, err
			}
		}
	}
	return false, nil
}

func validInfo(b []byte, parent *[16]byte) bool {
	return btt.Verify(b, parent) == btt.InfoOK && btt.DecodeInfo(b).Major != 0
}

// flogPristine reports whether every flog pair of the arena is either
// zero or the initial entry {lane, ext+lane, ext+lane, seq 1} (with or
// without the zero flag libpmemblk puts on it), its second entry zero.
func flogPristine(win pmem.Device, a arenaGeom) (bool, error) {
	buf := make([]byte, DefaultNFree*flogGroup)
	if _, err := win.ReadAt(buf, a.flogOff); err != nil {
		return false, err
	}
	for lane := uint32(0); lane < DefaultNFree; lane++ {
		g := buf[lane*flogGroup:]
		if !isZero(g[16:32]) {
			return false, nil
		}
		if isZero(g[:16]) {
			continue
		}
		e := btt.DecodeLogEntry(g)
		blk := a.extNLBA + lane
		if e.LBA != lane || e.Seq != 1 || e.OldMap != e.NewMap || (e.OldMap != blk && e.OldMap != blk|1<<31) {
			return false, nil
		}
	}
	return true, nil
}

// mapZero reports whether the arena's map is all zeros (every block in
// its initial, never-written state).
func mapZero(win pmem.Device, a arenaGeom) (bool, error) {
	n := int64(a.extNLBA) * btt.MapEntrySize
	buf := make([]byte, min(n, zeroChunk))
	for done := int64(0); done < n; {
		c := min(n-done, zeroChunk)
		if _, err := win.ReadAt(buf[:c], a.mapOff+done); err != nil {
			return false, err
		}
		if !isZero(buf[:c]) {
			return false, nil
		}
		done += c
	}
	return true, nil
}
