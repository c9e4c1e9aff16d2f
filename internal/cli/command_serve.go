package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/nbd"
	"github.com/nvblk/nvblk/pmem"
)

// DefaultListen is where `nvblk serve` listens without --listen or
// --socket: loopback only, the IANA NBD port.
const DefaultListen = "127.0.0.1:10809"

// serveShutdownGrace bounds how long a signal-triggered shutdown waits
// for the requests in flight before closing the connections.
const serveShutdownGrace = 30 * time.Second

type serveOptions struct {
	listen     string
	socket     string
	readOnly   bool
	size       string
	exportName string
	poll       time.Duration
}

func newServeCommand() *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve [--listen HOST:PORT | --socket PATH] [--read-only] [--size SIZE] [--export-name NAME] [PATH]",
		Short: "Serve the device over NBD (PATH defaults to ./nvblk.img, created if missing)",
		Long: "Serve the device over the Network Block Device protocol until SIGINT or SIGTERM.\n" +
			"It listens on " + DefaultListen + " (loopback only) unless told otherwise; NBD has no\n" +
			"authentication, so only use --listen with another address on a trusted network.\n" +
			"A missing PATH is created: a BTT (linux format, 4096-byte sectors) of --size bytes (default 1G).",
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return serveFunc(cmd, args, o) },
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", DefaultListen, "TCP address to listen on (HOST:PORT; port 0 picks a free one)")
	f.StringVar(&o.socket, "socket", "", "listen on this unix socket instead of TCP")
	f.BoolVar(&o.readOnly, "read-only", false, "refuse writes (clients get EPERM)")
	f.StringVar(&o.size, "size", "", "size of PATH if it has to be created (64M, 1G, 1T or bytes); default 1G")
	f.StringVar(&o.exportName, "export-name", "", "NBD export name (the empty default name selects it too)")
	f.DurationVar(&o.poll, "poll", nbd.DefaultPoll, "how long a busy connection polls for its next request before sleeping (0: never; saves a wake-up per request, costs CPU)")
	addPartitionFlag(cmd)
	addForceRawFlag(cmd)
	return cmd
}

func serveFunc(cmd *cobra.Command, args []string, o *serveOptions) error {
	stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
	if cmd.Flags().Changed("listen") && o.socket != "" {
		return &ExitError{Code: 16, Err: errors.New("--listen and --socket are mutually exclusive")}
	}
	if len(o.exportName) > nbd.MaxStringLen {
		return &ExitError{Code: 16, Err: fmt.Errorf("--export-name is longer than %d bytes", nbd.MaxStringLen)}
	}
	size, err := sizeFlag(o.size)
	if err != nil {
		return err
	}
	path, _ := pathArg(args)
	if err := createIfMissing(path, size, stderr); err != nil {
		return err
	}

	bd, drv, dev, err := openBlockTarget(path, partitionOf(cmd), pmem.Options{ReadOnly: o.readOnly})
	if err != nil {
		return err
	}
	defer dev.Close()
	defer bd.Close()
	info := describe(path, dev, bd, drv)
	readOnly := o.readOnly || info.ReadOnly

	ln, uri, err := serveListen(o)
	if err != nil {
		return err
	}
	defer ln.Close()

	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	srv := nbd.NewServer(nbd.Options{DefaultExport: o.exportName, Logger: logger, Poll: pollOption(o.poll)})
	desc := fmt.Sprintf("nvblk %s: %s", filepath.Base(path), formatDesc(info))
	if err := srv.AddExport(o.exportName, desc, bd, readOnly); err != nil {
		return err
	}
	printConnectHelp(stdout, path, info, readOnly, o, ln, uri)
	closeParts, err := addPartitionExports(srv, dev, partitionOf(cmd), o.readOnly, uri, stdout)
	if err != nil {
		return err
	}
	defer closeParts()

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	var runErr error
	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "nvblk serve: shutting down")
	case err := <-serveErr:
		runErr = fmt.Errorf("serve %s: %w", uri, err)
	}
	sctx, cancel := context.WithTimeout(context.Background(), serveShutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		runErr = errors.Join(runErr, err)
	}
	if runErr == nil {
		fmt.Fprintln(stderr, "nvblk serve: stopped; every acknowledged write is durable")
	}
	return runErr
}

// createIfMissing lays out the default device (linux-format BTT,
// 4096-byte sectors) at path when it does not exist.
func createIfMissing(path string, size int64, w io.Writer) error {
	if _, err := os.Stat(path); err == nil || !errors.Is(err, os.ErrNotExist) {
		return err
	}
	dev, err := pmem.Open(path, pmem.Options{CreateSize: size})
	if err != nil {
		return err
	}
	defer dev.Close()
	b, err := btt.Create(dev, btt.CreateOptions{Version: btt.V11, LBASize: DefaultSectorSize})
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(w, "created %s: %d bytes, BTT %s, %d sectors of %d bytes\n", path, dev.Size(), b.Version(), b.Sectors(), b.SectorSize())
	return nil
}

// serveListen opens the listener and returns the NBD URI clients use.
func serveListen(o *serveOptions) (net.Listener, string, error) {
	if o.socket != "" {
		abs, err := filepath.Abs(o.socket)
		if err != nil {
			return nil, "", err
		}
		if err := removeStaleSocket(abs); err != nil {
			return nil, "", err
		}
		ln, err := net.Listen("unix", abs)
		if err != nil {
			return nil, "", err
		}
		u := url.URL{Scheme: "nbd+unix", Path: "/" + o.exportName, RawQuery: "socket=" + abs}
		return ln, u.String(), nil
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return nil, "", &ExitError{Code: 16, Err: fmt.Errorf("--listen %q: %v", o.listen, err)}
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return nil, "", err
	}
	port := ln.Addr().(*net.TCPAddr).Port
	if host == "" {
		host = "127.0.0.1" // listening on every address; loopback reaches it
	}
	u := url.URL{Scheme: "nbd", Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: "/" + o.exportName}
	if o.exportName == "" {
		u.Path = ""
	}
	return ln, u.String(), nil
}

// removeStaleSocket deletes a unix socket left by a previous server that
// no longer accepts connections; a live one is an error.
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("--socket %s exists and is not a socket", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("--socket %s: another server is listening there", path)
	}
	return os.Remove(path)
}

func formatDesc(i InfoJSON) string {
	if i.Format == "raw" {
		return fmt.Sprintf("raw, %d sectors of %d bytes", i.Sectors, i.SectorSize)
	}
	return fmt.Sprintf("BTT %s (%s), %d sectors of %d bytes", i.Version, i.Format, i.Sectors, i.SectorSize)
}

func printConnectHelp(w io.Writer, path string, info InfoJSON, readOnly bool, o *serveOptions, ln net.Listener, uri string) {
	mode := "read-write"
	if readOnly {
		mode = "read-only"
	}
	fmt.Fprintf(w, "serving %s (%s, %d bytes, %s) as NBD export %q\n",
		path, formatDesc(info), info.Sectors*uint64(info.SectorSize), mode, o.exportName)
	fmt.Fprintf(w, "listening on %s\n", uri)
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() {
		fmt.Fprintf(w, "WARNING: %s is reachable from other hosts and NBD has no authentication\n", tcp)
	}
	fmt.Fprintln(w, "connect with:")
	fmt.Fprintf(w, "  nbdinfo '%s'\n", uri)
	fmt.Fprintf(w, "  qemu-img info '%s'\n", uri)
	var nc string
	if o.socket != "" {
		nc = fmt.Sprintf("nbd-client -unix %s /dev/nbd0 -b %d", ln.Addr().String(), info.SectorSize)
	} else {
		tcp := ln.Addr().(*net.TCPAddr)
		host, _, _ := net.SplitHostPort(o.listen)
		if host == "" {
			host = "127.0.0.1"
		}
		nc = fmt.Sprintf("nbd-client %s %d /dev/nbd0 -b %d", host, tcp.Port, info.SectorSize)
	}
	if o.exportName != "" {
		nc += " -N " + o.exportName
	}
	fmt.Fprintf(w, "  %s   # kernel client: modprobe nbd first; nbd-client -d /dev/nbd0 to detach\n", nc)
	fmt.Fprintln(w, "stop with Ctrl-C (SIGINT) or SIGTERM")
}

// pollOption maps --poll to nbd.Options.Poll, where zero means the
// default and a negative value disables polling.
func pollOption(d time.Duration) time.Duration {
	if d <= 0 {
		return -1
	}
	return d
}
