package btt

import (
	"fmt"

	"github.com/nvblk/nvblk/pmem"
)

// VerifyPermutation checks the core invariant (doc.go) on every arena of the BTT on
// dev: each internal block is referenced exactly once by the union of the
// map entries (identity rule applied, a pending roll-forward simulated)
// and the lanes' free blocks. It never writes.
func VerifyPermutation(dev pmem.Device, opts ...Options) error {
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	o.ReadOnly, o.Lanes = true, 1
	b, err := Open(dev, o)
	if err != nil {
		return err
	}
	for _, a := range b.arenas {
		if err := b.verifyArena(a); err != nil {
			return err
		}
	}
	return nil
}

func (b *BTT) verifyArena(a *arena) error {
	owner := make([]int64, a.intNLBA) // 0 = unreferenced, >0 = LBA+1, <0 = -(lane+1)
	var err error
	scanMap(b.dev, a, make([]byte, 4*mapChunk), func(start, n uint32, raw []byte, rerr error) bool {
		if rerr != nil {
			err = rerr
			return false
		}
		for i := uint32(0); i < n; i++ {
			premap := start + i
			var e uint32 // raw 0 in a hole: the identity
			if raw != nil {
				e = rawEntry(raw, i)
			}
			if v, ok := a.override[premap]; ok {
				e = v
			}
			post, _ := decodeMap(e, premap)
			if post >= a.intNLBA {
				err = fmt.Errorf("btt: arena %d: LBA %d maps to block %d past internal_nlba %d", a.idx, premap, post, a.intNLBA)
				return false
			}
			if o := owner[post]; o != 0 {
				err = fmt.Errorf("btt: arena %d: block %d referenced by LBA %d and %s", a.idx, post, premap, ownerName(o))
				return false
			}
			owner[post] = int64(premap) + 1
		}
		return true
	})
	if err != nil {
		return err
	}
	var g [4]LogEntry
	gb := make([]byte, LogGroupSize)
	for lane := uint32(0); lane < a.nfree; lane++ {
		if err := readGroup(b.dev, a, lane, &g, gb); err != nil {
			return err
		}
		cur, _, ok := currentEntry(&g, a.logIdx)
		if !ok {
			return fmt.Errorf("btt: arena %d: lane %d: bad sequence numbers", a.idx, lane)
		}
		f := cur.OldMap & mapLBAMask
		if o := owner[f]; o != 0 {
			return fmt.Errorf("btt: arena %d: free block %d of lane %d also referenced by %s", a.idx, f, lane, ownerName(o))
		}
		owner[f] = -int64(lane) - 1
	}
	for blk, o := range owner {
		if o == 0 {
			return fmt.Errorf("btt: arena %d: block %d is referenced by nothing (leaked)", a.idx, blk)
		}
	}
	return nil
}

func ownerName(o int64) string {
	if o > 0 {
		return fmt.Sprintf("LBA %d", o-1)
	}
	return fmt.Sprintf("lane %d", -o-1)
}
