package pmemblk

import (
	"bytes"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// Finding codes of the pool-level checks (the BTT's own are btt.Code*).
const (
	CodeHeader       = "pool-header"         // signature, major, features, checksum (pmempool: "incorrect pool header")
	CodeHeaderUnused = "pool-header-unused"  // non-zero unused area
	CodeHeaderArch   = "pool-header-arch"    // arch_flags of another architecture
	CodeHeaderUUID   = "pool-header-uuid"    // null uuids, part or replica links
	CodeHeaderCrtime = "pool-header-crtime"  // crtime after the file's modification time
	CodeShutdown     = "pool-shutdown-state" // the shutdown state says the pool was not closed cleanly
	CodeBSize        = "pool-bsize"          // pmemblk header bsize
	CodeNoLayout     = "pool-no-layout"      // the BTT is not laid out yet (legal)
	CodeBTTLost      = "pool-btt-info-lost"  // written BTT without any valid info block
	CodeSize         = "pool-size"           // pool too small
)

// CheckOptions control CheckDevice.
type CheckOptions struct {
	// Repair performs the safe repairs: those of btt.Check (an info
	// block from its verified copy, info2 from the primary, the
	// completion of an interrupted write) and the pool header's block
	// size from the BTT info block (as pmempool check does). The pool
	// header itself is never rewritten.
	Repair bool
	// BSize, when non-zero, must equal the pool's block size.
	BSize int
	// ModTime is the pool file's modification time for the crtime
	// sanity check; zero skips it.
	ModTime time.Time
	// OnFinding, if set, receives each finding as it is found.
	OnFinding func(btt.Finding)
	// Progress, if set, is called with map entries checked and the total.
	Progress func(done, total uint64)
}

type poolChecker struct {
	opt CheckOptions
	rep *btt.Report
}

func (c *poolChecker) add(f btt.Finding) {
	c.rep.Add(f)
	if c.opt.OnFinding != nil {
		c.opt.OnFinding(f)
	}
}

func (c *poolChecker) find(sev btt.Severity, code string, off int64, format string, a ...any) {
	c.add(btt.Finding{Severity: sev, Code: code, Arena: -1, Offset: off, Message: fmt.Sprintf(format, a...)})
}

// Check reports whether the pool at path is consistent, like
// pmemblk_check: the pool header, and the BTT's info blocks, flog and map
// (no block referenced twice, none lost). It never writes. bsize 0 takes
// the block size from the pool; another value that differs from it is an
// error (ErrBadBSize). Unlike libpmemblk 1.12, a pool whose primary info
// block is damaged is reported inconsistent (pmem/pmdk#4115).
func Check(path string, bsize int) (bool, error) {
	dev, err := pmem.Open(path, pmem.Options{ReadOnly: true})
	if err != nil {
		return false, fmt.Errorf("pmemblk: check: %w", err)
	}
	defer dev.Close()
	rep, err := CheckDevice(dev, CheckOptions{BSize: bsize})
	if err != nil {
		return false, fmt.Errorf("pmemblk: check %s: %w", path, err)
	}
	return rep.Errors == 0, nil
}

// CheckDevice checks (and with opt.Repair repairs) the pool on dev, the
// whole pool file, offline. It reports every finding in a btt.Report
// whose Offset is BTTOffset; finding offsets are file offsets. The error
// is non-nil only when the check could not run: dev is not a pmemblk
// pool (ErrFormat), or the block size does not match (ErrBadBSize).
func CheckDevice(dev pmem.Device, opt CheckOptions) (*btt.Report, error) {
	c := &poolChecker{opt: opt, rep: &btt.Report{Offset: BTTOffset, Findings: []btt.Finding{}}}
	if dev.Size() < BTTOffset {
		return nil, fmt.Errorf("%w: %d bytes is too small for a pool", ErrFormat, dev.Size())
	}
	buf := make([]byte, HeaderSize)
	if _, err := dev.ReadAt(buf, 0); err != nil {
		return nil, err
	}
	if isZero(buf) {
		c.find(btt.SevError, CodeHeader, 0, "empty pool header")
		return c.rep, nil
	}
	if !bytes.Equal(buf[:8], Signature[:]) {
		return nil, fmt.Errorf("%w: %s", ErrFormat, HeaderBadSig)
	}
	h := DecodeHeader(buf)
	if !c.checkHeader(buf, h) {
		return c.rep, nil
	}
	desc := make([]byte, 8)
	if _, err := dev.ReadAt(desc, DescOffset); err != nil {
		return nil, err
	}
	bsize := le.Uint32(desc)
	if opt.BSize != 0 && uint32(opt.BSize) != bsize {
		return nil, fmt.Errorf("%w: %d, the pool header says %d", ErrBadBSize, opt.BSize, bsize)
	}
	size := dev.Size() &^ (PageSize - 1)
	if size < MinPoolSize {
		c.find(btt.SevError, CodeSize, 0, "the pool is %d bytes, below the %d-byte minimum", size, MinPoolSize)
		return c.rep, nil
	}
	win, err := pmem.NewWindow(dev, BTTOffset, size-BTTOffset)
	if err != nil {
		return nil, err
	}
	defer win.Close()
	if bsize == 0 || bsize > MaxBSize {
		if !c.fixBSize(dev, win, &h.PoolsetUUID, bsize) {
			c.find(btt.SevError, CodeBSize, DescOffset, "pmemblk header: block size %d is not valid and no BTT info block gives it", bsize)
		}
		return c.rep, nil
	}
	geo, _, err := pmdkGeometry(size-BTTOffset, bsize)
	if err != nil {
		c.find(btt.SevError, CodeSize, 0, "%v", err)
		return c.rep, nil
	}
	laidOut, err := detectLayout(win, geo, &h.PoolsetUUID)
	if err != nil {
		return nil, err
	}
	if !laidOut {
		c.find(btt.SevInfo, CodeNoLayout, BTTOffset, "no BTT layout yet: every block reads as zeros until the first write lays it out")
		return c.rep, nil
	}
	zero := int64(0)
	bopt := btt.CheckOptions{Repair: opt.Repair, At: &zero, ParentUUID: &h.PoolsetUUID, Progress: opt.Progress, PMDK: true,
		OnFinding: func(f btt.Finding) {
			if opt.OnFinding != nil {
				f.Offset += BTTOffset
				opt.OnFinding(f)
			}
		}}
	r, err := btt.Check(win, bopt)
	if err != nil {
		c.find(btt.SevError, CodeBTTLost, BTTOffset,
			"the BTT was written (its flog or map is in use) but neither arena 0's info block nor its backup is valid for this pool (parent uuid %s): not repairable",
			uuid.UUID(h.PoolsetUUID))
		return c.rep, nil
	}
	c.rep.Version = r.Version
	c.rep.Arenas = r.Arenas
	for _, f := range r.Findings {
		f.Offset += BTTOffset
		c.rep.Findings = append(c.rep.Findings, f)
	}
	c.rep.Errors += r.Errors
	c.rep.Repaired += r.Repaired
	c.rep.Remaining += r.Remaining
	// What the BTT check says beyond errors: unreadable metadata (exit
	// 8), sectors in the error and zero states (notices), a cut-short
	// device (the pool's own size is the file's: nothing to extend here).
	c.rep.Unreadable += r.Unreadable
	c.rep.ErrorSectors += r.ErrorSectors
	c.rep.ZeroSectors += r.ZeroSectors
	c.fixBSize(dev, win, &h.PoolsetUUID, bsize)
	return c.rep, nil
}

// checkHeader runs pmempool's pool header checks. It returns false when
// nothing after the header can be located.
func (c *poolChecker) checkHeader(buf []byte, h Header) bool {
	if h.Major != FormatMajor {
		c.find(btt.SevError, CodeHeader, offMajor, "pool_hdr.major is %d, not %d", h.Major, FormatMajor)
	}
	if u := h.Incompat &^ knownIncompat; u != 0 {
		c.find(btt.SevError, CodeHeader, offIncompat, "pool_hdr.features.incompat has unknown features %#x", u)
	}
	if u := h.Compat &^ knownCompat; u != 0 {
		c.find(btt.SevWarning, CodeHeader, offCompat, "pool_hdr.features.compat has unknown features %#x (ignored)", u)
	}
	if h.ROCompat != 0 {
		c.find(btt.SevWarning, CodeHeader, offROCompat, "pool_hdr.features.ro_compat has unknown features %#x: the pool opens read-only", h.ROCompat)
	}
	if sum := HeaderChecksum(buf); sum != h.Checksum {
		c.find(btt.SevError, CodeHeader, offChecksum, "incorrect pool header: checksum %#x, computed %#x", h.Checksum, sum)
	}
	if !isZero(buf[offUnused:offUnused2]) {
		c.find(btt.SevWarning, CodeHeaderUnused, offUnused, "pool header unused area is not filled with zeros")
	}
	if !btt4KPage(h.Arch.Machine) {
		c.find(btt.SevError, CodeHeaderArch, offArch, "pool made on %s: its BTT offset is unknown to nvblk (only 4 KiB-page pools are supported)", Machine(h.Arch.Machine))
		return false
	}
	if h.Arch.MachineClass != MachineClass64 || h.Arch.Data != DataLE || h.Arch.Reserved != [4]byte{} {
		c.find(btt.SevError, CodeHeaderArch, offArch, "pool_hdr.arch_flags are not valid (class %d, data %d, reserved %x)", h.Arch.MachineClass, h.Arch.Data, h.Arch.Reserved)
	}
	var null [16]byte
	if h.UUID == null {
		c.find(btt.SevError, CodeHeaderUUID, offUUID, "invalid pool_hdr.uuid (null)")
	}
	if h.PoolsetUUID == null {
		c.find(btt.SevError, CodeHeaderUUID, offPoolsetUUID, "invalid pool_hdr.poolset_uuid (null)")
	}
	if h.PrevPartUUID != h.UUID || h.NextPartUUID != h.UUID || h.PrevReplUUID != h.UUID || h.NextReplUUID != h.UUID {
		c.find(btt.SevError, CodeHeaderUUID, offPrevPart, "pool_hdr part/replica links do not point at the file itself (a pool set or replicas: not supported)")
	}
	if !c.opt.ModTime.IsZero() && h.CrTime > uint64(max(c.opt.ModTime.Unix(), 0)) {
		c.find(btt.SevWarning, CodeHeaderCrtime, offCrtime, "pool_hdr.crtime %s is after the file's modification time %s",
			time.Unix(int64(h.CrTime), 0).UTC().Format(time.RFC3339), c.opt.ModTime.UTC().Format(time.RFC3339))
	}
	if h.Incompat&FeatSDS != 0 && h.SDS[16] != 0 {
		c.find(btt.SevInfo, CodeShutdown, offSDS, "the shutdown state is dirty: the pool was not closed cleanly by libpmemblk on pmem")
	}
	return true
}

// fixBSize compares the pmemblk header's block size with arena 0's info
// block and, with Repair, copies the info block's (pmempool check's
// "pmemblk header" step). It reports whether a valid info block was found.
func (c *poolChecker) fixBSize(dev, win pmem.Device, parent *[16]byte, bsize uint32) bool {
	info := make([]byte, infoSize)
	if _, err := win.ReadAt(info, 0); err != nil || !validInfo(info, parent) {
		return false
	}
	ext := btt.DecodeInfo(info).ExternalLBASize
	if ext == bsize {
		return true
	}
	f := btt.Finding{Severity: btt.SevError, Code: CodeBSize, Arena: -1, Offset: DescOffset,
		Message: fmt.Sprintf("pmemblk header: block size %d differs from the BTT's external_lbasize %d", bsize, ext),
		Repair:  fmt.Sprintf("set the block size to %d from the BTT info block", ext)}
	if c.opt.Repair {
		var b [4]byte
		le.PutUint32(b[:], ext)
		if _, err := dev.WriteAtPersist(b[:], DescOffset); err == nil {
			f.Repaired = true
		} else {
			f.Message += fmt.Sprintf("; repair failed: %v", err)
		}
	}
	c.add(f)
	return true
}
