// Package cli implements the nvblk command line: one file per command,
// output through the command's writers so tests capture it.
package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/pmem"
)

// DefaultImage is the embedded default device: created when a command
// that accepts it is run without a PATH.
const (
	DefaultImage      = "nvblk.img"
	DefaultSize       = 1 << 30
	DefaultSectorSize = 4096
)

// ExitError carries a process exit status.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// NewRoot builds the nvblk command tree.
func NewRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "nvblk",
		Short:         "Atomic-sector block storage (BTT) on persistent memory",
		Long:          "nvblk turns byte-addressable persistent memory (or a file) into a block device with atomic sector updates, using the Linux kernel's BTT on-media format.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newCreateCommand(), newInfoCommand(), newReadCommand(), newWriteCommand(),
		newZeroCommand(), newBenchCommand(), newServeCommand(), newCheckCommand(),
		newPartitionCommand(), newListCommand(), newCertsCommand())
	// Usage errors (bad flags, wrong argument counts) exit 16: they are
	// marked where cobra reports them, not recognised by their text.
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError(err) })
	for _, c := range root.Commands() {
		if args := c.Args; args != nil {
			c.Args = func(cmd *cobra.Command, a []string) error { return usageError(args(cmd, a)) }
		}
	}
	return root
}

// usageError marks err as a usage error (exit 16) unless it carries its
// own status.
func usageError(err error) error {
	var ee *ExitError
	if err == nil || errors.As(err, &ee) {
		return err
	}
	return &ExitError{Code: 16, Err: err}
}

// Main runs the CLI with args and returns the process exit status.
func Main(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := NewRoot()
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	slog.SetDefault(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	cmd, err := root.ExecuteC()
	if err == nil {
		return 0
	}
	if repair, _ := cmd.Flags().GetBool("repair"); cmd.Flags().Lookup(forceShareFlag) != nil && !forceShareOf(cmd) && !repair &&
		(errors.Is(err, pmem.ErrLocked) || errors.Is(err, pmem.ErrNoLock)) {
		err = fmt.Errorf("%w (--force-share looks at it read-only without the lock)", err)
	}
	fmt.Fprintln(stderr, "nvblk:", err)
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	if strings.HasPrefix(err.Error(), "unknown command ") { // cobra's, for the root's arguments
		return 16
	}
	return 1
}

// ParseSize parses 64M, 1G, 1T, 512K or a byte count.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseInt(t, 10, 64)
	if err != nil || v <= 0 || v > (1<<62)/mult {
		return 0, fmt.Errorf("invalid size %q (want bytes or a number with K, M, G or T)", s)
	}
	return v * mult, nil
}

// sizeFlag parses a --size value; empty means DefaultSize. A bad value
// is a usage error.
func sizeFlag(v string) (int64, error) {
	if v == "" {
		return DefaultSize, nil
	}
	s, err := ParseSize(v)
	if err != nil {
		return 0, &ExitError{Code: 16, Err: err}
	}
	return s, nil
}

// pathArg returns the PATH argument or the default image.
func pathArg(args []string) (string, bool) {
	if len(args) == 0 {
		return DefaultImage, true
	}
	return args[0], false
}

// ensureDefault creates the default device (1 GiB, linux format, 4096-byte
// sectors) at path if it does not exist, reporting what it did on w.
func ensureDefault(path string, w io.Writer) error {
	return createIfMissing(path, DefaultSize, w)
}
