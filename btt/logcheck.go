package btt

import (
	"encoding/binary"
	"fmt"
	"maps"
	"slices"
)

// The checker's log pass, and the log repair that goes beyond ndctl.
//
// Linux refuses an arena whose log it cannot read exactly as it wrote it
// (log_set_indices, btt_log_get_old): one non-zero byte in a padding
// slot, two entries with one sequence number, an out-of-range sequence
// number or mapping, and the whole device no longer attaches. ndctl's
// check-namespace reports the same and repairs none of it. But a lane's
// log group holds only one fact the rest of the BTT does not: which
// internal block is the lane's free block. Every other block is
// referenced by exactly one map entry or by another lane's log, so when
// the map and the intact lanes leave exactly as many blocks unreferenced
// as there are damaged lanes, the damaged lanes' free blocks are known,
// and check --repair rewrites each damaged lane as one valid entry:
//
//   - the lane's own entry, when one of its two slots is consistent with
//     the map: an applied write (the map names its new block, its old
//     block is unreferenced: that is the free block), an idle entry
//     (old == new, unreferenced), or, only when neither exists, a
//     committed write whose map update was lost (the map still names its
//     old block, its new block is unreferenced), which the roll-forward
//     then applies as Linux does at attach;
//   - otherwise a fresh idle entry naming one of the unreferenced blocks,
//     as btt_log_init writes them.
//
// No map entry is written by the log repair, so every sector reads what
// it read before; an unreferenced block holds no sector's data, so making
// it a free block loses nothing. A lane whose group is valid but whose
// padding slots are not zero keeps its current entry; its padding is
// cleared. Each repaired group is written as the (0,1) format's
// single-entry group (slot 0 = the entry with sequence number 1, the
// other slots zero), which old and new kernels read alike.

// laneState is a lane's current log entry, when it could be decided.
type laneState struct {
	cur   LogEntry
	valid bool
}

// laneProblem is a lane whose log group cannot be used as it is.
type laneProblem struct {
	lane uint32
	code string
	msg  string
	// dirty: the pair is valid (cur is the current entry), only a
	// padding slot is not zero.
	dirty bool
	cur   LogEntry
}

// checkLog reads and checks every lane's log group (ndctl's
// btt_check_log_entries; doc.go, Checking) and, where lanes are damaged, decides (and with Repair
// writes) their repair. It returns each lane's current entry, the log
// layout, and whether the log as repaired (or as it would be repaired)
// can be trusted by the map and bitmap checks.
func (c *checker) checkLog(a *arena) ([]laneState, bool) {
	i := a.idx
	groups := make([][4]LogEntry, a.nfree)
	unread := make([]bool, a.nfree)
	gb := make([]byte, LogGroupSize)
	logOK := true
	for lane := range groups {
		if err := readGroup(c.dev, a, uint32(lane), &groups[lane], gb); err != nil {
			c.errorf(i, a.logOff+int64(lane)*LogGroupSize, CodeReadFailed, "", "cannot read the log group of lane %d: %v", lane, err)
			unread[lane], logOK = true, false
		}
	}
	idx, err := detectPadding(c.dev, a)
	breakers := map[uint32]bool{}
	if err != nil {
		var ok bool
		if idx, breakers, ok = voteLayout(groups, unread); !ok {
			c.errorf(i, a.logOff, CodePadding, "", "unable to deduce log/padding indices: %v", err)
			return nil, false
		}
	}
	a.logIdx = idx
	if idx == [2]int{0, 2} {
		c.add(Finding{Severity: SevInfo, Code: CodeOldPadding, Arena: i, Offset: a.logOff,
			Message: "the log uses the pre-4.15 (0,2) padding; Linux before 4.15 and after read it, --rewrite-log converts it to (0,1)"})
	}
	lanes := make([]laneState, a.nfree)
	var probs []laneProblem
	flagged := 0
	for l := range groups {
		lane := uint32(l)
		if unread[lane] {
			continue
		}
		g := &groups[lane]
		cur, code, msg := c.laneEntry(a, lane, g, idx)
		if code != "" {
			probs = append(probs, laneProblem{lane: lane, code: code, msg: msg})
			continue
		}
		if (cur.OldMap|cur.NewMap)&^mapLBAMask != 0 {
			flagged++
		}
		lanes[lane] = laneState{cur: cur, valid: true}
		if breakers[lane] {
			probs = append(probs, laneProblem{lane: lane, code: CodePadding, dirty: true, cur: cur,
				msg: fmt.Sprintf("lane %d: a padding slot of its log group is not zero (the other lanes use the (%d,%d) layout); Linux cannot deduce the log layout", lane, idx[0], idx[1])})
		}
	}
	if flagged > 0 && !c.opt.PMDK {
		c.add(Finding{Severity: SevInfo, Code: CodeLogFlags, Arena: i, Offset: a.logOff,
			Message: fmt.Sprintf("%d lane(s) carry flag bits in log map fields (E: a remembered media error, Z|E: another implementation's style); masked, as Linux does", flagged)})
	}
	if len(probs) > 0 && !c.repairLanes(a, idx, groups, lanes, probs, logOK) {
		logOK = false
	}
	return lanes, logOK
}

// laneEntry returns the current entry of a lane's group, or the finding
// code and message that make it unusable.
func (c *checker) laneEntry(a *arena, lane uint32, g *[4]LogEntry, idx [2]int) (LogEntry, string, string) {
	s0, s1 := g[idx[0]].Seq, g[idx[1]].Seq
	if s0 == s1 {
		return LogEntry{}, CodeLogEqlSeq, fmt.Sprintf("lane %d: pair of log entries with the same sequence number %d", lane, s0)
	}
	if s0 > 3 || s1 > 3 {
		return LogEntry{}, CodeLogOOBSeq, fmt.Sprintf("lane %d: log entry with an out of bounds sequence number (%d, %d)", lane, s0, s1)
	}
	cur, _, ok := currentEntry(g, idx)
	if !ok {
		return LogEntry{}, CodeLogOOBSeq, fmt.Sprintf("lane %d: sequence numbers (%d, %d) name no current entry", lane, s0, s1)
	}
	old, nw := cur.OldMap&mapLBAMask, cur.NewMap&mapLBAMask
	switch {
	case cur.LBA >= a.extNLBA:
		return cur, CodeLogOOBLBA, fmt.Sprintf("lane %d: log entry with an out-of-bounds LBA %d (external_nlba %d)", lane, cur.LBA, a.extNLBA)
	case old >= a.intNLBA:
		return cur, CodeLogOOBOld, fmt.Sprintf("lane %d: log entry with an out-of-bounds 'old' mapping %d (internal_nlba %d)", lane, old, a.intNLBA)
	case nw >= a.intNLBA:
		return cur, CodeLogOOBNew, fmt.Sprintf("lane %d: log entry with an out-of-bounds 'new' mapping %d (internal_nlba %d)", lane, nw, a.intNLBA)
	}
	return cur, "", ""
}

// voteLayout decides the log layout when Linux's deduction fails: the
// layout, (0,1) or (0,2), that the lanes with two entries use, when they
// agree on one (none: the initial (0,1)). breakers are the lanes whose
// non-zero slots do not fit it.
func voteLayout(groups [][4]LogEntry, unread []bool) ([2]int, map[uint32]bool, bool) {
	var n01, n02 int
	for l, g := range groups {
		if unread[l] {
			continue
		}
		switch slotMask(&g) {
		case 0b0011:
			n01++
		case 0b0101:
			n02++
		}
	}
	var idx [2]int
	switch {
	case n01 > 0 && n02 > 0 && n01 == n02:
		return idx, nil, false
	case n02 > n01:
		idx = [2]int{0, 2}
	default:
		idx = [2]int{0, 1}
	}
	fits := uint8(1<<idx[0] | 1<<idx[1])
	breakers := map[uint32]bool{}
	for l, g := range groups {
		m := slotMask(&g)
		if !unread[l] && (m&^fits != 0 || (m != 0 && m&(1<<idx[0]) == 0)) {
			breakers[uint32(l)] = true
		}
	}
	return idx, breakers, true
}

// slotMask has bit j set when slot j of the group is not all zero.
func slotMask(g *[4]LogEntry) uint8 {
	var m uint8
	for j := range g {
		if !g[j].IsZero() {
			m |= 1 << j
		}
	}
	return m
}

// repairLanes decides the repair of every problem lane and reports it
// (writing it with Repair). Lanes with only dirty padding keep their
// entry. Damaged lanes get a free block only when the map and the intact
// lanes determine it; then lanes is updated with the entries written (or
// that would be written), and it returns true.
func (c *checker) repairLanes(a *arena, idx [2]int, groups [][4]LogEntry, lanes []laneState, probs []laneProblem, logOK bool) bool {
	i := a.idx
	report := func(p laneProblem, repair string, e LogEntry) {
		f := Finding{Severity: SevError, Code: p.code, Arena: i, Offset: a.logOff + int64(p.lane)*LogGroupSize, Message: p.msg}
		if repair == "" {
			c.add(f)
			return
		}
		f.Repair = repair
		g := make([]byte, LogGroupSize)
		e.Seq = 1
		e.Encode(g)
		c.fix(f, g, f.Offset)
	}
	var damaged []laneProblem
	for _, p := range probs {
		if p.dirty {
			report(p, fmt.Sprintf("keep the lane's current entry, clear the other slots (free block %d)", p.cur.OldMap&mapLBAMask), p.cur)
			continue
		}
		damaged = append(damaged, p)
	}
	if len(damaged) == 0 {
		return true
	}
	refs, why := c.referencedBlocks(a, lanes)
	if why == "" && !logOK {
		why = "part of the log could not be read"
	}
	// A lane whose free block the map or another lane also claims has a
	// wrong free block: it joins the damaged lanes.
	for lane, ls := range lanes {
		if why != "" || !ls.valid {
			continue
		}
		b := ls.cur.OldMap & mapLBAMask
		if refs.has(b) {
			lanes[lane].valid = false
			damaged = append(damaged, laneProblem{lane: uint32(lane), code: CodeBitmap,
				msg: fmt.Sprintf("lane %d: its free block %d is also referenced by the map or another lane", lane, b)})
			continue
		}
		refs.set(b)
	}
	var unref []uint32
	if why == "" {
		for b := uint32(0); b < a.intNLBA && len(unref) <= len(damaged); b++ {
			if !refs.has(b) {
				unref = append(unref, b)
			}
		}
		if len(unref) != len(damaged) {
			why = fmt.Sprintf("%d block(s) are referenced by neither the map nor an intact lane, for %d damaged lane(s)", len(unref), len(damaged))
			if len(unref) > len(damaged) {
				why = fmt.Sprintf("more blocks than the %d damaged lane(s) are referenced by neither the map nor an intact lane", len(damaged))
			}
		}
	}
	if why != "" {
		for k, p := range damaged {
			if k == 0 {
				p.msg += "; its free block cannot be determined: " + why
			}
			report(p, "", LogEntry{})
		}
		return false
	}
	free := map[uint32]bool{}
	for _, b := range unref {
		free[b] = true
	}
	for _, p := range damaged {
		e, kind := c.laneCandidate(a, &groups[p.lane], idx, free)
		var repair string
		switch kind {
		case "":
			for _, b := range unref {
				if free[b] {
					e = LogEntry{LBA: p.lane % a.extNLBA, OldMap: b, NewMap: b}
					break
				}
			}
			delete(free, e.OldMap)
			repair = fmt.Sprintf("rewrite the lane as idle with free block %d (the one block nothing references)", e.OldMap)
		case "pending":
			delete(free, e.NewMap&mapLBAMask)
			repair = fmt.Sprintf("keep the lane's committed write of LBA %d (block %d, rolled forward; free block %d)", e.LBA, e.NewMap&mapLBAMask, e.OldMap&mapLBAMask)
		default:
			delete(free, e.OldMap&mapLBAMask)
			repair = fmt.Sprintf("keep the lane's %s entry (LBA %d, free block %d), clear the other slots", kind, e.LBA, e.OldMap&mapLBAMask)
		}
		report(p, repair, e)
		e.Seq = 1
		lanes[p.lane] = laneState{cur: e, valid: true}
	}
	return true
}

// laneCandidate picks the entry of a damaged lane's pair worth keeping
// (see the comment at the top of this file): kind "idle" or "applied"
// first, "pending" only when neither exists, "" when none fits. free is
// the set of unreferenced blocks not yet given to a lane.
func (c *checker) laneCandidate(a *arena, g *[4]LogEntry, idx [2]int, free map[uint32]bool) (LogEntry, string) {
	var pending LogEntry
	found := false
	for _, slot := range idx {
		e := g[slot]
		o, n := e.OldMap&mapLBAMask, e.NewMap&mapLBAMask
		if e.IsZero() || e.LBA >= a.extNLBA || o >= a.intNLBA || n >= a.intNLBA {
			continue
		}
		if o == n {
			if free[o] {
				return e, "idle"
			}
			continue
		}
		m, ok := c.mapAt(a, e.LBA)
		switch {
		case !ok:
		case m == n && free[o]:
			return e, "applied"
		case m == o && free[n] && !found:
			pending, found = e, true
		}
	}
	if found {
		return pending, "pending"
	}
	return LogEntry{}, ""
}

// mapAt reads the postmap block of LBA lba.
func (c *checker) mapAt(a *arena, lba uint32) (uint32, bool) {
	var e [4]byte
	if !c.read(a.mapOff+4*int64(lba), e[:]) {
		return 0, false
	}
	p, _ := decodeMap(binary.LittleEndian.Uint32(e[:]), lba)
	return p, true
}

// referencedBlocks marks the blocks the map references, with the intact
// lanes' pending roll-forwards applied. why is non-empty when the map
// cannot support a log repair (unreadable, out of range, a block mapped
// twice: damage the log repair must not build on).
func (c *checker) referencedBlocks(a *arena, lanes []laneState) (blockSet, string) {
	rollfwd := map[uint32]uint32{}
	for _, ls := range lanes {
		o, n := ls.cur.OldMap&mapLBAMask, ls.cur.NewMap&mapLBAMask
		if !ls.valid || o == n || ls.cur.LBA >= a.extNLBA {
			continue
		}
		if m, ok := c.mapAt(a, ls.cur.LBA); ok && m == o {
			rollfwd[ls.cur.LBA] = n
		}
	}
	refs := newBlockSet(a.intNLBA)
	keys := slices.Sorted(maps.Keys(rollfwd))
	why := ""
	twice := func(p uint32) { why = fmt.Sprintf("block %d is mapped twice", p) }
	scanMap(c.dev, a, make([]byte, 4*mapChunk), func(start, n uint32, raw []byte, err error) bool {
		switch {
		case err != nil:
			why = fmt.Sprintf("map entries %d..%d cannot be read", start, start+n-1)
		case raw == nil:
			refs.addIdentity(start, n, rollfwd, keys, twice)
		default:
			for k := uint32(0); k < n && why == ""; k++ {
				p, _ := decodeMap(rawEntry(raw, k), start+k)
				if nw, ok := rollfwd[start+k]; ok {
					p = nw
				}
				if p >= a.intNLBA {
					why = fmt.Sprintf("map entry %d is out of range", start+k)
				} else if !refs.add(p) {
					twice(p)
				}
			}
		}
		return why == ""
	})
	if why != "" {
		return nil, why
	}
	return refs, ""
}
