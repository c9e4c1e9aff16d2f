package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// This file holds what makes `nvblk serve` a well-behaved service:
// systemd socket activation, the pid file, captive mode (--run) and the
// logger.

// listenFDsStart is the first file descriptor systemd passes (SD_LISTEN_FDS_START).
const listenFDsStart = 3

// maxListenFDs bounds LISTEN_FDS, an untrusted number.
const maxListenFDs = 64

// activationListeners returns the listening sockets passed by systemd
// socket activation (sd_listen_fds(3)): LISTEN_PID names this process
// and LISTEN_FDS counts the descriptors from 3 on, LISTEN_FDNAMES names
// them (colon-separated, optional). Without LISTEN_PID, or when it names
// another process, there are none (nil, nil). The variables are removed
// from the environment either way they apply, so a --run command does
// not inherit them.
func activationListeners() ([]net.Listener, error) {
	pidStr, ok := os.LookupEnv("LISTEN_PID")
	if !ok {
		return nil, nil
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid != os.Getpid() {
		return nil, nil // not for this process
	}
	fdsStr := os.Getenv("LISTEN_FDS")
	names := strings.Split(os.Getenv("LISTEN_FDNAMES"), ":")
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	n, err := strconv.Atoi(fdsStr)
	if err != nil || n < 1 || n > maxListenFDs {
		return nil, fmt.Errorf("socket activation: LISTEN_FDS=%q: want a count of 1 to %d descriptors", fdsStr, maxListenFDs)
	}
	var lns []net.Listener
	for i := range n {
		fd := listenFDsStart + i
		name := fmt.Sprintf("LISTEN_FD_%d", fd)
		if i < len(names) && names[i] != "" {
			name = names[i]
		}
		syscall.CloseOnExec(fd)
		// A connected socket (a socket unit with Accept=yes, or inetd
		// style) would pass for a listener and fail every accept.
		if acc, err := syscall.GetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_ACCEPTCONN); err != nil || acc == 0 {
			for _, l := range lns {
				l.Close()
			}
			why := "it is not a listening socket (use Accept=no in the socket unit)"
			if err != nil {
				why = err.Error()
			}
			return nil, fmt.Errorf("socket activation: descriptor %d (%s): %s", fd, name, why)
		}
		f := os.NewFile(uintptr(fd), name)
		ln, err := net.FileListener(f) // a duplicate: f is closed either way
		f.Close()
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return nil, fmt.Errorf("socket activation: descriptor %d (%s) is not a listening stream socket: %w", fd, name, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

// listenerURI is the NBD URI of exportName served on ln.
func listenerURI(ln net.Listener, exportName string) string {
	switch a := ln.Addr().(type) {
	case *net.UnixAddr:
		u := url.URL{Scheme: "nbd+unix", Path: "/" + exportName, RawQuery: "socket=" + a.Name}
		return u.String()
	case *net.TCPAddr:
		host := a.IP.String()
		if a.IP == nil || a.IP.IsUnspecified() {
			host = "127.0.0.1" // listening on every address; loopback reaches it
		}
		u := url.URL{Scheme: "nbd", Host: net.JoinHostPort(host, strconv.Itoa(a.Port))}
		if exportName != "" {
			u.Path = "/" + exportName
		}
		return u.String()
	}
	return ln.Addr().String()
}

// writePIDFile writes this process's id to path (atomically, by a
// rename, so a script polling for it never reads it half written).
func writePIDFile(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("--pid-file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--pid-file: %w", err)
	}
	return nil
}

// runCaptive starts the --run command with sh -c, with $uri and $nbd set
// to the URI and $unixsocket (unix socket) or $port (TCP) to where the
// server listens, as nbdkit's captive mode does. Its standard streams
// are the command's.
func runCaptive(command string, ln net.Listener, uri string, stdin io.Reader, stdout, stderr io.Writer) (*exec.Cmd, error) {
	cmd := exec.Command("/bin/sh", "-c", command)
	cmd.Env = append(os.Environ(), "uri="+uri, "nbd="+uri)
	switch a := ln.Addr().(type) {
	case *net.UnixAddr:
		cmd.Env = append(cmd.Env, "unixsocket="+a.Name)
	case *net.TCPAddr:
		cmd.Env = append(cmd.Env, "port="+strconv.Itoa(a.Port))
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("--run: %w", err)
	}
	return cmd, nil
}

// captiveStatus turns the --run command's end into serve's result: its
// exit status (128+N for a command killed by signal N, as shells
// report it).
func captiveStatus(err error) error {
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return fmt.Errorf("--run: %w", err)
	}
	code := ee.ExitCode()
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		code = 128 + int(ws.Signal())
		return &ExitError{Code: code, Err: fmt.Errorf("--run command killed by signal %v", ws.Signal())}
	}
	return &ExitError{Code: code, Err: fmt.Errorf("--run command exited with status %d", code)}
}

// stopCaptive asks the --run command to stop (SIGTERM, then SIGKILL
// after grace) and waits for it.
func stopCaptive(cmd *exec.Cmd, done <-chan error, grace time.Duration) error {
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		return err
	case <-time.After(grace):
		cmd.Process.Kill()
		return <-done
	}
}

// privateSocketDir makes the directory of --run's private unix socket.
func privateSocketDir() (dir, sock string, err error) {
	dir, err = os.MkdirTemp("", "nvblk-run-")
	if err != nil {
		return "", "", fmt.Errorf("--run: %w", err)
	}
	return dir, filepath.Join(dir, "nbd.sock"), nil
}

// serveLogger builds the logger of --log-level, -v and --log-format:
// slog to stderr. The default level is warn; -v means info, -vv debug.
func serveLogger(w io.Writer, level string, verbose int, format string) (*slog.Logger, error) {
	var lv slog.Level
	switch strings.ToLower(level) {
	case "":
		lv = slog.LevelWarn
		switch {
		case verbose == 1:
			lv = slog.LevelInfo
		case verbose >= 2:
			lv = slog.LevelDebug
		}
	case "debug":
		lv = slog.LevelDebug
	case "info":
		lv = slog.LevelInfo
	case "warn", "warning":
		lv = slog.LevelWarn
	case "error":
		lv = slog.LevelError
	default:
		return nil, &ExitError{Code: 16, Err: fmt.Errorf("--log-level %q: want debug, info, warn or error", level)}
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "", "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, &ExitError{Code: 16, Err: fmt.Errorf("--log-format %q: want text or json", format)}
}
