package btt

import (
	"errors"
	"fmt"

	"github.com/nvblk/nvblk/pmem"
)

// Severity of a checker finding.
type Severity int

// Severities. Only SevError makes a BTT inconsistent.
const (
	SevInfo    Severity = iota // a fact worth knowing (old log padding, sectors in the error state)
	SevWarning                 // legal but not what Linux writes
	SevError                   // an inconsistency
)

func (s Severity) String() string { return [...]string{"info", "warning", "error"}[s] }

// MarshalText makes severities readable in JSON.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses "info", "warning" or "error".
func (s *Severity) UnmarshalText(b []byte) error {
	for v := SevInfo; v <= SevError; v++ {
		if v.String() == string(b) {
			*s = v
			return nil
		}
	}
	return fmt.Errorf("btt: unknown severity %q", b)
}

// Finding codes. The ndctl equivalents are noted; messages carry ndctl's
// fragments so scripts written for ndctl check-namespace keep working.
const (
	CodeInfoRestore   = "info-restore"     // "info block at offset ... needs to be restored"
	CodeInfoLost      = "info-lost"        // no valid info block or backup
	CodeGeometry      = "geometry"         // offsets or counts inconsistent with the device
	CodeErrorFlag     = "arena-error-flag" // IB_FLAG_ERROR set
	CodePadding       = "log-padding"      // padding scheme undetectable
	CodeOldPadding    = "log-old-padding"  // (0,2): pre-4.15 layout
	CodeLogEqlSeq     = "log-eql-seq"      // BTT_LOG_EQL_SEQ
	CodeLogOOBSeq     = "log-oob-seq"      // BTT_LOG_OOB_SEQ
	CodeLogOOBLBA     = "log-oob-lba"      // BTT_LOG_OOB_LBA
	CodeLogOOBOld     = "log-oob-old"      // BTT_LOG_OOB_OLD
	CodeLogOOBNew     = "log-oob-new"      // BTT_LOG_OOB_NEW
	CodeLogFlags      = "log-flags"        // flag bits in log map fields (legal)
	CodeMapOOB        = "map-oob"          // BTT_MAP_OOB
	CodeMapStates     = "map-states"       // sectors in the zero or error state (legal)
	CodeRollForward   = "log-map"          // interrupted write pending roll-forward
	CodeInfo2         = "info2-restore"    // "info2 needs to be restored"
	CodeTruncated     = "truncated"        // the device ends before the last info2
	CodeBitmap        = "bitmap"           // BTT_BITMAP_ERROR
	CodeLogRewritten  = "log-rewritten"    // --rewrite-log done
	CodeReadFailed    = "read-failed"      // media error reading metadata
	CodeInternal      = "internal-error"   // the checker itself failed (a bug): the check is incomplete
	maxBitmapFindings = 64
)

// Finding is one thing the checker found.
type Finding struct {
	Severity Severity `json:"severity"`
	Code     string   `json:"code"`
	Arena    int      `json:"arena"`  // -1: not arena specific
	Offset   int64    `json:"offset"` // namespace byte offset of the structure
	Message  string   `json:"message"`
	Repair   string   `json:"repair,omitempty"` // what --repair does; empty: not repairable
	Repaired bool     `json:"repaired"`
}

func (f Finding) String() string {
	s := fmt.Sprintf("%s: ", f.Severity)
	if f.Arena >= 0 {
		s += fmt.Sprintf("arena %d: ", f.Arena)
	}
	s += f.Message
	switch {
	case f.Repaired:
		s += " [repaired: " + f.Repair + "]"
	case f.Repair != "":
		s += " (--repair: " + f.Repair + ")"
	}
	return s
}

// CheckOptions control Check.
type CheckOptions struct {
	// Repair performs the provably safe repairs (info blocks from a
	// verified copy, info2 from the primary, roll-forward of a pending map
	// update), each as a durable write. Without it nothing is written.
	Repair bool
	// RewriteLog (with Repair) rewrites every lane's log group in the
	// (0,1) format with only slot 0 valid, as ndctl --rewrite-log does.
	RewriteLog bool
	// ParentUUID, if set, is the namespace uuid parent_uuid must match.
	ParentUUID *[16]byte
	// OnFinding, if set, receives each finding as it is found.
	OnFinding func(Finding)
	// Progress, if set, is called with map entries checked and the total.
	Progress func(done, total uint64)
	// At, when set, checks the BTT whose arena 0 is at this offset (any
	// version), as in a PMDK pool, instead of probing 4096 and 0.
	At *int64
	// PMDK says the BTT is a libpmemblk one, whose log words carry map
	// flags by design: that is not reported.
	PMDK bool
}

// Report is the result of Check.
type Report struct {
	Version   string    `json:"version,omitempty"`
	Offset    int64     `json:"offset"`
	Arenas    int       `json:"arenas"`
	Findings  []Finding `json:"findings"`
	Errors    int       `json:"errors"`   // errors found
	Repaired  int       `json:"repaired"` // errors repaired
	Remaining int       `json:"remaining"`
	// Unreadable counts the metadata reads that failed (media errors, a
	// truncated file) and the checker's own failures (CodeInternal): the
	// check could not see everything.
	Unreadable int `json:"unreadable"`
	// ErrorSectors and ZeroSectors count the sectors in the error state
	// (reads fail until rewritten) and the zero state: legal states,
	// reported as notices.
	ErrorSectors uint64 `json:"error_sectors"`
	ZeroSectors  uint64 `json:"zero_sectors"`
	// NeedSize, when > 0, is the device size the BTT describes, which the
	// device falls short of (a truncated image file): extending the file
	// to it is the repair (the command line does it for an image file).
	NeedSize int64 `json:"need_size,omitempty"`
}

// Add records f: it appends it to the findings and counts it (errors,
// repaired or remaining; unreadable metadata). Check and the pool-level
// checks built on it (pmemblk) report through it.
func (r *Report) Add(f Finding) {
	r.Findings = append(r.Findings, f)
	if f.Code == CodeReadFailed || f.Code == CodeInternal {
		r.Unreadable++
	}
	if f.Severity == SevError {
		r.Errors++
		if f.Repaired {
			r.Repaired++
		} else {
			r.Remaining++
		}
	}
}

// Clean reports whether no error was found.
func (r *Report) Clean() bool { return r.Errors == 0 }

// ExitCode is the fsck-style status: 0 clean, 1 errors corrected, 4
// errors left uncorrected, 8 when part of the metadata could not be read
// at all (an operational error: a repair cannot help).
func (r *Report) ExitCode() int {
	switch {
	case r.Unreadable > 0:
		return 8
	case r.Errors == 0:
		return 0
	case r.Remaining == 0:
		return 1
	}
	return 4
}

type checker struct {
	dev     pmem.Device
	opt     CheckOptions
	rep     *Report
	buf     []byte
	initOff int64
	version Version
}

func (c *checker) add(f Finding) {
	c.rep.Add(f)
	if c.opt.OnFinding != nil {
		c.opt.OnFinding(f)
	}
}

func (c *checker) errorf(arena int, off int64, code, repair string, format string, a ...any) {
	c.add(Finding{Severity: SevError, Code: code, Arena: arena, Offset: off, Message: fmt.Sprintf(format, a...), Repair: repair})
}

// fix performs a repair as a durable write and records it on the
// finding; without Repair it only records what would be done.
func (c *checker) fix(f Finding, p []byte, off int64) {
	if c.opt.Repair {
		if _, err := c.dev.WriteAtPersist(p, off); err == nil {
			f.Repaired = true
		} else {
			f.Message += fmt.Sprintf("; repair failed: %v", err)
		}
	}
	c.add(f)
}

// Check checks the BTT on dev, offline, and with opt.Repair repairs what
// can be repaired safely, then checks again. It reports every finding
// rather than stopping at the first. The error is non-nil only when the
// check could not run (no BTT at all, or the device failed).
func Check(dev pmem.Device, opt CheckOptions) (*Report, error) {
	if opt.RewriteLog && !opt.Repair {
		return nil, errors.New("btt: --rewrite-log needs --repair")
	}
	rep, err := check(dev, opt)
	if err != nil || !opt.Repair || rep.Errors == 0 && !opt.RewriteLog {
		return rep, err
	}
	// Re-check after repairs: anything still wrong stays uncorrected.
	after, err := check(dev, CheckOptions{ParentUUID: opt.ParentUUID, At: opt.At, PMDK: opt.PMDK})
	if err != nil {
		return rep, err
	}
	rep.Remaining = after.Errors
	rep.Repaired = rep.Errors - min(rep.Errors, after.Errors)
	for _, f := range after.Findings {
		if f.Severity == SevError {
			f.Message = "after repair: " + f.Message
			rep.Findings = append(rep.Findings, f)
			if opt.OnFinding != nil {
				opt.OnFinding(f)
			}
		}
	}
	return rep, nil
}

// check runs one pass. A panic in it (a checker bug that damaged
// metadata provokes) does not take the caller down: it becomes a
// CodeInternal finding, and the report says the check is incomplete.
func check(dev pmem.Device, opt CheckOptions) (rep *Report, err error) {
	c := &checker{dev: dev, opt: opt, rep: &Report{Findings: []Finding{}}, buf: make([]byte, InfoSize)}
	defer func() {
		if p := recover(); p != nil {
			c.add(Finding{Severity: SevError, Code: CodeInternal, Arena: -1, Offset: c.initOff,
				Message: fmt.Sprintf("the checker failed (a bug in nvblk; please report it): %v: the check is incomplete", p)})
			rep, err = c.rep, nil
		}
	}()
	first, ok := c.findFirst()
	if !ok {
		return c.rep, fmt.Errorf("%w: unable to recover any BTT info blocks (is this a sector-mode namespace?)", ErrNotFound)
	}
	c.rep.Version = c.version.String()
	c.rep.Offset = c.initOff
	c.walkArenas(first)
	return c.rep, nil
}

func (c *checker) read(off int64, p []byte) bool {
	_, err := c.dev.ReadAt(p, off)
	return err == nil
}

func (c *checker) verifyAt(off int64, buf []byte) bool {
	if off < 0 || off > c.dev.Size()-InfoSize {
		return false
	}
	return c.read(off, buf) && Verify(buf, c.opt.ParentUUID) == InfoOK
}
