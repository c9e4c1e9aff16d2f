package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
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

	pidFile      string
	run          string
	maxConns     int
	maxHandshake int
	handshakeTO  time.Duration
	maxMemory    string
	exitWhenIdle bool
	verbose      int
	logLevel     string
	logFormat    string
	metrics      string

	tls serveTLSFlags // see serve_tls.go
}

func newServeCommand() *cobra.Command {
	o := &serveOptions{}
	cmd := &cobra.Command{
		Use:   "serve [--listen HOST:PORT | --socket PATH] [--read-only] [--size SIZE] [--export-name NAME] [PATH]",
		Short: "Serve the device over NBD (PATH defaults to ./nvblk.img, created if missing)",
		Long: "Serve the device over the Network Block Device protocol until SIGINT or SIGTERM.\n" +
			"It listens on " + DefaultListen + " (loopback only) unless told otherwise. NBD itself has no\n" +
			"authentication: --listen on another address needs --tls-creds DIR (TLS with client\n" +
			"certificates; `nvblk certs DIR` makes them) or --insecure (a trusted network only).\n" +
			"A missing PATH is created: a BTT (linux format, 4096-byte sectors) of --size bytes (default 1G).\n" +
			"Started by systemd socket activation (LISTEN_PID/LISTEN_FDS set), it serves on the sockets passed.",
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
	f.StringVar(&o.pidFile, "pid-file", "", "write the process id to this file once clients can connect; removed at exit")
	f.StringVar(&o.run, "run", "", "captive mode: serve on a private unix socket, run this shell command with $uri, $nbd and $unixsocket set, stop when it exits and exit with its status")
	f.IntVar(&o.maxConns, "max-connections", 0, "serve at most N established clients at once; more are refused during the handshake (0: the default, 1024)")
	f.IntVar(&o.maxHandshake, "max-handshakes", 0, "connections allowed in the handshake at once; a new one closes the oldest (0: the default, 64)")
	f.DurationVar(&o.handshakeTO, "handshake-timeout", 10*time.Second, "how long a connection may take to finish its handshake")
	f.StringVar(&o.maxMemory, "max-memory", "512M", "bound on the request and reply buffers of all connections together (requests wait beyond it)")
	f.BoolVar(&o.exitWhenIdle, "exit-when-idle", false, "exit (status 0) when the last client disconnects")
	f.CountVarP(&o.verbose, "verbose", "v", "log connections (-v) and protocol details (-vv) to stderr")
	f.StringVar(&o.logLevel, "log-level", "", "log level: debug, info, warn (default) or error; overrides -v")
	f.StringVar(&o.logFormat, "log-format", "text", "log format on stderr: text or json")
	f.StringVar(&o.metrics, "metrics", "", "serve Prometheus metrics at http://ADDR/metrics (PORT or HOST:PORT; a bare port or empty host means 127.0.0.1)")
	addTLSFlags(cmd, &o.tls)
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
	if o.run != "" && o.exitWhenIdle {
		return &ExitError{Code: 16, Err: errors.New("--run and --exit-when-idle are mutually exclusive (--run stops when its command exits)")}
	}
	if o.maxConns < 0 || o.maxHandshake < 0 {
		return &ExitError{Code: 16, Err: fmt.Errorf("--max-connections %d, --max-handshakes %d: want 0 (the default) or more", o.maxConns, o.maxHandshake)}
	}
	if o.handshakeTO <= 0 {
		return &ExitError{Code: 16, Err: fmt.Errorf("--handshake-timeout %s: want more than 0", o.handshakeTO)}
	}
	maxMemory, err := ParseSize(o.maxMemory)
	if err != nil {
		return &ExitError{Code: 16, Err: fmt.Errorf("--max-memory: %v", err)}
	}
	logger, err := serveLogger(stderr, o.logLevel, o.verbose, o.logFormat)
	if err != nil {
		return err
	}
	tlsConfig, authorize, err := o.tls.load(cmd)
	if err != nil {
		return err
	}
	metricsAt := ""
	if o.metrics != "" {
		if metricsAt, err = metricsAddr(o.metrics); err != nil {
			return err
		}
	}
	activated, err := activationListeners()
	if err != nil {
		return err
	}
	for _, ln := range activated {
		defer ln.Close()
	}
	if activated != nil && (cmd.Flags().Changed("listen") || o.socket != "") {
		return &ExitError{Code: 16, Err: errors.New("--listen and --socket cannot be used with systemd socket activation (LISTEN_FDS)")}
	}
	if err := checkExposure(o, activated); err != nil {
		return err
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

	// --run serves on a private unix socket unless told where to listen.
	if o.run != "" && activated == nil && !cmd.Flags().Changed("listen") && o.socket == "" {
		dir, sock, err := privateSocketDir()
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.socket = sock
	}
	lns := activated
	var uri string
	if lns == nil {
		ln, u, err := serveListen(o)
		if err != nil {
			return err
		}
		defer ln.Close()
		lns, uri = []net.Listener{ln}, u
	} else {
		uri = listenerURI(lns[0], o.exportName)
	}
	if tlsConfig != nil {
		uri = tlsURI(uri, o.tls.dir)
	}

	idle := make(chan struct{}, 1)
	srv := nbd.NewServer(nbd.Options{DefaultExport: o.exportName, Logger: logger, Poll: pollOption(o.poll),
		MaxEstablished: o.maxConns, MaxHandshakes: o.maxHandshake, HandshakeTimeout: o.handshakeTO, MaxMemory: maxMemory,
		TLS: tlsConfig, Authorize: authorize, OnIdle: func() {
			select {
			case idle <- struct{}{}:
			default:
			}
		}})
	exports := &exportDevices{srv: srv}
	desc := fmt.Sprintf("nvblk %s: %s", filepath.Base(path), formatDesc(info))
	if err := exports.AddExport(o.exportName, desc, bd, readOnly); err != nil {
		return err
	}
	help := stdout
	if o.run != "" {
		help = io.Discard // the command's output is the output
	}
	printConnectHelp(help, path, info, readOnly, o, lns, uri)
	closeParts, err := addPartitionExports(exports, dev, partitionOf(cmd), o.readOnly, uri, help)
	if err != nil {
		return err
	}
	defer closeParts()
	if metricsAt != "" {
		m, err := startMetrics(metricsAt, srv, exports)
		if err != nil {
			return err
		}
		defer m.Close()
		if o.run != "" {
			fmt.Fprintf(stderr, "metrics at %s\n", m.URL())
		} else {
			fmt.Fprintf(stdout, "metrics at %s\n", m.URL())
		}
		if !m.loopback() {
			fmt.Fprintf(stderr, "WARNING: the metrics at %s are reachable from other hosts\n", m.URL())
		}
	}

	ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	serveErr := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { serveErr <- srv.Serve(ln) }()
	}
	// Every listener accepts from here on (connections already queued
	// included): the pid file tells scripts so.
	if o.pidFile != "" {
		if err := writePIDFile(o.pidFile); err != nil {
			srv.Close()
			return err
		}
		defer os.Remove(o.pidFile)
	}
	var captive *exec.Cmd
	captiveDone := make(chan error, 1)
	if o.run != "" {
		if captive, err = runCaptive(o.run, lns[0], uri, cmd.InOrStdin(), stdout, stderr); err != nil {
			srv.Close()
			return err
		}
		go func() { captiveDone <- captive.Wait() }()
	}
	var idleC <-chan struct{}
	if o.exitWhenIdle {
		idleC = idle
	}

	var runErr error
	select {
	case <-ctx.Done():
		fmt.Fprintln(stderr, "nvblk serve: shutting down")
		if captive != nil {
			runErr = captiveStatus(stopCaptive(captive, captiveDone, serveShutdownGrace))
		}
	case err := <-serveErr:
		runErr = fmt.Errorf("serve %s: %w", uri, err)
		if captive != nil {
			stopCaptive(captive, captiveDone, serveShutdownGrace)
		}
	case err := <-captiveDone:
		runErr = captiveStatus(err)
	case <-idleC:
		fmt.Fprintln(stderr, "nvblk serve: the last client disconnected; exiting (--exit-when-idle)")
	}
	sctx, cancel := context.WithTimeout(context.Background(), serveShutdownGrace)
	defer cancel()
	shutErr := srv.Shutdown(sctx)
	switch failed := ioErrors(srv.Stats()); {
	case failed > 0:
		fmt.Fprintf(stderr, "nvblk serve: stopped; %d request(s) failed with I/O errors: the device may be damaged or gone, check it (nvblk check %s)\n", failed, path)
	case shutErr == nil:
		fmt.Fprintln(stderr, "nvblk serve: stopped; every acknowledged write is durable")
	}
	return errors.Join(runErr, shutErr)
}

// ioErrors counts the requests that failed with EIO, on every export:
// the device failed them (a media error, a file truncated under the
// server), as opposed to the client's mistakes (EINVAL, EPERM, ...).
func ioErrors(st nbd.ServerStats) uint64 {
	var n uint64
	for _, ex := range st.Exports {
		n += ex.Errors["EIO"]
	}
	return n
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

func printConnectHelp(w io.Writer, path string, info InfoJSON, readOnly bool, o *serveOptions, lns []net.Listener, uri string) {
	mode := "read-write"
	if readOnly {
		mode = "read-only"
	}
	fmt.Fprintf(w, "serving %s (%s, %d bytes, %s) as NBD export %q\n",
		path, formatDesc(info), info.Sectors*uint64(info.SectorSize), mode, o.exportName)
	fmt.Fprintf(w, "listening on %s\n", uri)
	for _, ln := range lns[1:] {
		u := listenerURI(ln, o.exportName)
		if o.tls.dir != "" {
			u = tlsURI(u, o.tls.dir)
		}
		fmt.Fprintf(w, "listening on %s\n", u)
	}
	for _, ln := range lns {
		if tcp, ok := ln.Addr().(*net.TCPAddr); ok && !tcp.IP.IsLoopback() && o.tls.dir == "" {
			fmt.Fprintf(w, "WARNING: %s is reachable from other hosts and NBD has no authentication\n", tcp)
		}
	}
	fmt.Fprintln(w, "connect with:")
	fmt.Fprintf(w, "  nbdinfo '%s'\n", uri)
	if o.tls.dir != "" {
		printTLSHelp(w, &o.tls, lns, o.exportName)
		fmt.Fprintln(w, "stop with Ctrl-C (SIGINT) or SIGTERM")
		return
	}
	fmt.Fprintf(w, "  qemu-img info '%s'\n", uri)
	var nc string
	switch a := lns[0].Addr().(type) {
	case *net.UnixAddr:
		nc = fmt.Sprintf("nbd-client -unix %s /dev/nbd0 -b %d", a.Name, info.SectorSize)
	case *net.TCPAddr:
		host := "127.0.0.1"
		if u, err := url.Parse(uri); err == nil && u.Hostname() != "" {
			host = u.Hostname()
		}
		nc = fmt.Sprintf("nbd-client %s %d /dev/nbd0 -b %d", host, a.Port, info.SectorSize)
	}
	if o.exportName != "" {
		nc += " -N " + o.exportName
	}
	if nc != "" {
		fmt.Fprintf(w, "  %s   # kernel client: modprobe nbd first; nbd-client -d /dev/nbd0 to detach\n", nc)
	}
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
