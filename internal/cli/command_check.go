package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem"
)

// CheckJSON is the output of `nvblk check --json`.
// The report's fields (version, offset, arenas, findings, errors,
// repaired, remaining) are inlined.
type CheckJSON struct {
	Path     string `json:"path"`
	Repair   bool   `json:"repair"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error,omitempty"`
	*btt.Report
}

func newCheckCommand() *cobra.Command {
	var repair, rewriteLog, asJSON bool
	cmd := &cobra.Command{
		Use:   "check [--repair] [--rewrite-log] [--json] PATH",
		Short: "Check (and repair) the BTT metadata on a device or image, offline",
		Long: `check reads the raw media: info blocks and their backups, the log (flog), the map
and the bitmap invariant, and reports every finding. Without --repair it never writes.
With --repair it performs only provably safe repairs (an info block from a verified copy,
info2 from the primary, the roll-forward of an interrupted write), each a durable write,
then checks again. --rewrite-log (with --repair) rewrites the log in the (0,1) format.

Exit status (as fsck): 0 clean, 1 errors corrected, 4 errors left uncorrected,
8 operational error, 16 usage error.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if rewriteLog && !repair {
				return &ExitError{Code: 16, Err: errors.New("--rewrite-log needs --repair")}
			}
			if repair && forceShareOf(cmd) {
				return &ExitError{Code: 16, Err: errors.New("--force-share is for a read-only look: it cannot be combined with --repair")}
			}
			return checkFunc(cmd, args[0], repair, rewriteLog, asJSON)
		},
	}
	f := cmd.Flags()
	f.BoolVar(&repair, "repair", false, "perform safe repairs")
	f.BoolVar(&rewriteLog, "rewrite-log", false, "rewrite the log in the (0,1) format (with --repair; do not interrupt)")
	f.BoolVar(&asJSON, "json", false, "print JSON")
	addPartitionFlag(cmd)
	addForceShareFlag(cmd)
	return cmd
}

func checkFunc(cmd *cobra.Command, path string, repair, rewriteLog, asJSON bool) error {
	out := cmd.OutOrStdout()
	res := CheckJSON{Path: path, Repair: repair, Report: &btt.Report{Findings: []btt.Finding{}}}
	finish := func(code int, err error) error {
		res.ExitCode = code
		if asJSON {
			if err != nil {
				res.Error = err.Error()
			}
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			if jerr := enc.Encode(res); jerr != nil {
				return jerr
			}
		}
		if code == 0 {
			return nil
		}
		if err == nil {
			return &ExitError{Code: code}
		}
		return &ExitError{Code: code, Err: err}
	}
	labelFindings, labelsBroken, err := checkLabels(path, partitionOf(cmd))
	if err != nil {
		return finish(exitCodeOf(err, 8), err)
	}
	if !asJSON {
		for _, f := range labelFindings {
			fmt.Fprintln(out, f.String())
		}
	}
	addLabelFindings := func(rep *btt.Report) {
		rep.Findings = append(labelFindings, rep.Findings...)
		for _, f := range labelFindings {
			if f.Severity == btt.SevError {
				rep.Errors++
				rep.Remaining++
			}
		}
	}
	if labelsBroken {
		addLabelFindings(res.Report)
		if !asJSON {
			fmt.Fprintf(out, "%s: namespace labels: %d error(s) found, none repairable by nvblk\n", path, res.Errors)
		}
		return finish(4, nil)
	}
	dev, err := openTarget(path, partitionOf(cmd), pmem.Options{ReadOnly: !repair, NoLock: forceShareOf(cmd)})
	if err != nil {
		return finish(exitCodeOf(err, 8), err)
	}
	defer dev.Close()
	opt := btt.CheckOptions{Repair: repair, RewriteLog: rewriteLog}
	if !asJSON {
		opt.OnFinding = func(f btt.Finding) { fmt.Fprintln(out, f.String()) }
	}
	if prog := newProgress(cmd.ErrOrStderr(), dev.Size()); prog != nil {
		opt.Progress = prog.update
		defer prog.done()
	}
	rep, what, err := checkTarget(dev, path, opt)
	if err != nil {
		return finish(exitCodeOf(err, 8), fmt.Errorf("%s: %w", path, err))
	}
	if repair && rep.NeedSize > dev.Size() && partitionOf(cmd).whole() {
		if rep, err = extendAndRecheck(path, dev.Size(), rep, opt, out, asJSON); err != nil {
			return finish(8, fmt.Errorf("%s: %w", path, err))
		}
	}
	addLabelFindings(rep)
	res.Report = rep
	if !asJSON {
		fmt.Fprintf(out, "%s: %s, %d arena(s): %d error(s) found, %d repaired, %d remaining%s\n",
			path, what, rep.Arenas, rep.Errors, rep.Repaired, rep.Remaining, checkNotices(rep))
		if rep.Remaining > 0 && !repair && rep.Unreadable == 0 {
			fmt.Fprintln(out, "run with --repair to fix what can be fixed safely")
		}
	}
	code := rep.ExitCode()
	if code == 0 {
		return finish(0, nil)
	}
	return finish(code, nil)
}

// extendAndRecheck repairs a truncated image file: it extends the file
// to the size its BTT describes (rep.NeedSize; the new tail reads as
// zeros) and checks again with the same options, which restores the
// backup info block from the primary. The caller's open device keeps the
// exclusive lock meanwhile. It returns the two reports merged, the
// truncation counted as repaired.
func extendAndRecheck(path string, devSize int64, rep *btt.Report, opt btt.CheckOptions, out io.Writer, asJSON bool) (*btt.Report, error) {
	st, err := os.Stat(path)
	if err != nil || !st.Mode().IsRegular() || st.Size() != devSize || st.Size() >= rep.NeedSize {
		return rep, nil // not a whole image file (a namespace has its labels after it): the finding stays
	}
	if err := os.Truncate(path, rep.NeedSize); err != nil {
		return nil, fmt.Errorf("extend to %d bytes: %w", rep.NeedSize, err)
	}
	if !asJSON {
		fmt.Fprintf(out, "extended %s from %d to %d bytes, the size its BTT describes\n", path, st.Size(), rep.NeedSize)
	}
	dev, err := pmem.Open(path, pmem.Options{Logger: slog.Default(), NoLock: true}) // the caller holds the lock
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	rep2, _, err := checkTarget(dev, path, opt)
	if err != nil {
		return nil, err
	}
	for k, f := range rep.Findings {
		if f.Code == btt.CodeTruncated {
			rep.Findings[k].Repaired = true // and its "after repair" repeat
		}
	}
	rep.Repaired++
	rep2.Findings = append(rep.Findings, rep2.Findings...)
	rep2.Errors += rep.Errors
	rep2.Repaired += rep.Repaired
	return rep2, nil
}

// checkNotices is what the summary line adds beyond errors: sectors in
// the error and zero states (legal, but a whole-device read fails on the
// former) and metadata that could not be read at all.
func checkNotices(rep *btt.Report) string {
	var b strings.Builder
	if rep.Unreadable > 0 {
		fmt.Fprintf(&b, "; %d metadata read(s) failed: the media cannot be read, --repair cannot help", rep.Unreadable)
	}
	if rep.ErrorSectors > 0 {
		fmt.Fprintf(&b, "; %d sector(s) in the error state (reads fail until rewritten)", rep.ErrorSectors)
	}
	if rep.ZeroSectors > 0 {
		fmt.Fprintf(&b, "; %d sector(s) in the zero state", rep.ZeroSectors)
	}
	return b.String()
}

// progress draws a one-line bar on a terminal for devices of 1 GiB and
// more; it stays silent when stderr is not a TTY.
type progress struct {
	w     io.Writer
	last  time.Time
	shown bool
}

func newProgress(w io.Writer, size int64) *progress {
	f, ok := w.(*os.File)
	if !ok || size < 1<<30 {
		return nil
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return nil
	}
	return &progress{w: w}
}

func (p *progress) update(done, total uint64) {
	if time.Since(p.last) < 100*time.Millisecond && done < total {
		return
	}
	p.last = time.Now()
	p.shown = true
	const width = 40
	n := int(done * width / max(total, 1))
	bar := make([]byte, width)
	for i := range bar {
		bar[i] = ' '
		if i < n {
			bar[i] = '#'
		}
	}
	fmt.Fprintf(p.w, "\rchecking map [%s] %3d%%", bar, done*100/max(total, 1))
}

func (p *progress) done() {
	if p.shown {
		fmt.Fprint(p.w, "\r\033[K")
	}
}

// checkLabels reports the problems of PATH's namespace label area (none
// when it has none) as findings: an invalid index block, a label skipped
// as invalid or interleaved (warnings); no valid index block, a label
// outside the device, overlapping labels (errors). broken says the area
// has no valid index, so no namespace can be addressed.
func checkLabels(path string, t target) (findings []btt.Finding, broken bool, err error) {
	// A look at the label area only, like the partition table read of a
	// narrowed target: the lock is openTarget's.
	dev, err := pmem.Open(path, pmem.Options{Logger: slog.Default(), ReadOnly: true, NoLock: true})
	if err != nil {
		return nil, false, err
	}
	defer dev.Close()
	l, err := locateLabels(dev, t)
	if l == nil {
		return nil, false, err
	}
	for _, p := range l.Problems {
		sev := btt.SevWarning
		if p.Error {
			sev = btt.SevError
		}
		findings = append(findings, btt.Finding{Severity: sev, Code: p.Code, Arena: -1, Offset: p.Offset, Message: p.Message})
	}
	return findings, err != nil, nil
}
