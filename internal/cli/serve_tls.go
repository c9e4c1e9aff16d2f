package cli

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/internal/tlscreds"
)

// serveTLSFlags are serve's TLS flags.
type serveTLSFlags struct {
	creds    string // --tls-creds DIR
	verify   bool   // --tls-verify-clients
	authz    string // --tls-authz FILE
	insecure bool   // --insecure
	maxVer   string // --tls-max-version

	dir      string          // creds, absolute
	verified bool            // client certificates are required
	list     *tlscreds.Authz // the --tls-authz list
}

func addTLSFlags(cmd *cobra.Command, t *serveTLSFlags) {
	f := cmd.Flags()
	f.StringVar(&t.creds, "tls-creds", "", "require TLS (NBD_OPT_STARTTLS) with the credentials in DIR: ca-cert.pem, server-cert.pem, server-key.pem (the layout of qemu and libnbd; `nvblk certs DIR` makes one)")
	f.BoolVar(&t.verify, "tls-verify-clients", true, "require a client certificate signed by DIR/ca-cert.pem (on by default when DIR has one)")
	f.StringVar(&t.authz, "tls-authz", "", "only let in clients whose certificate subject is listed in FILE (one per line, like CN=client,O=nvblk; \"[export NAME]\" starts a list for one export)")
	f.StringVar(&t.maxVer, "tls-max-version", "1.3", "newest TLS version offered: 1.3 or 1.2 (GnuTLS 3.7 clients such as Debian 12's libnbd and qemu only present an RSA client certificate over TLS 1.2)")
	f.BoolVar(&t.insecure, "insecure", false, "allow --listen on a non-loopback address without --tls-creds (anyone who can reach it can read and write the device)")
}

// load checks the TLS flags and reads the credentials; nil without
// --tls-creds.
func (t *serveTLSFlags) load(cmd *cobra.Command) (*tls.Config, func(string, *x509.Certificate) bool, error) {
	if t.creds == "" {
		for _, name := range []string{"tls-verify-clients", "tls-authz", "tls-max-version"} {
			if cmd.Flags().Changed(name) {
				return nil, nil, &ExitError{Code: 16, Err: fmt.Errorf("--%s needs --tls-creds", name)}
			}
		}
		return nil, nil, nil
	}
	dir, err := filepath.Abs(t.creds)
	if err != nil {
		return nil, nil, err
	}
	t.dir = dir
	_, hasCA, err := tlscreds.LoadCA(dir)
	if err != nil {
		return nil, nil, err
	}
	t.verified = t.verify && hasCA
	if cmd.Flags().Changed("tls-verify-clients") && t.verify && !hasCA {
		return nil, nil, &ExitError{Code: 16, Err: fmt.Errorf("--tls-verify-clients: %s has no %s to verify client certificates with", dir, tlscreds.CACert)}
	}
	cfg, err := tlscreds.ServerConfig(dir, t.verified)
	if err != nil {
		return nil, nil, err
	}
	switch t.maxVer {
	case "1.3":
	case "1.2":
		cfg.MaxVersion = tls.VersionTLS12
	default:
		return nil, nil, &ExitError{Code: 16, Err: fmt.Errorf("--tls-max-version %q: want 1.3 or 1.2", t.maxVer)}
	}
	if t.authz == "" {
		return cfg, nil, nil
	}
	if !t.verified {
		return nil, nil, &ExitError{Code: 16, Err: errors.New("--tls-authz needs verified client certificates (a ca-cert.pem in --tls-creds, and --tls-verify-clients)")}
	}
	if t.list, err = tlscreds.LoadAuthz(t.authz); err != nil {
		return nil, nil, fmt.Errorf("--tls-authz: %w", err)
	}
	// Unknown subjects are refused in the TLS handshake; the per-export
	// sections are applied when the client picks an export.
	cfg.VerifyConnection = t.list.VerifyConnection
	return cfg, t.list.Allowed, nil
}

// checkExposure refuses to serve a plaintext NBD on an address other
// hosts can reach, unless --insecure: NBD itself has no
// authentication. It runs before anything is bound (for --listen) and
// for the sockets systemd passed.
func checkExposure(o *serveOptions, activated []net.Listener) error {
	if o.tls.creds != "" || o.tls.insecure {
		return nil
	}
	refuse := func(what string) error {
		return &ExitError{Code: 16, Err: fmt.Errorf("%s is reachable from other hosts and NBD has no authentication: "+
			"serve with TLS (--tls-creds DIR; `nvblk certs DIR` makes the credentials), or pass --insecure on a trusted network", what)}
	}
	for _, ln := range activated {
		if a, ok := ln.Addr().(*net.TCPAddr); ok && !a.IP.IsLoopback() {
			return refuse(a.String())
		}
	}
	if activated != nil || o.socket != "" {
		return nil
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return nil // serveListen reports it
	}
	if !loopbackHost(host) {
		return refuse("--listen " + o.listen)
	}
	return nil
}

// loopbackHost reports whether host names loopback addresses only (an
// empty host is every address).
func loopbackHost(host string) bool {
	if host == "" {
		return false
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	ips, err := net.LookupIP(host)
	if err != nil || len(ips) == 0 {
		return false
	}
	for _, ip := range ips {
		if !ip.IsLoopback() {
			return false
		}
	}
	return true
}

// tlsURI turns an nbd:// or nbd+unix:// URI into its nbds form with the
// credentials directory, as libnbd reads it.
func tlsURI(uri, dir string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return uri
	}
	switch u.Scheme {
	case "nbd":
		u.Scheme = "nbds"
	case "nbd+unix":
		u.Scheme = "nbds+unix"
	default:
		return uri
	}
	// Slashes stay readable; only what would end the value is escaped.
	v := strings.NewReplacer("%", "%25", "&", "%26", "#", "%23", "+", "%2B", " ", "%20").Replace(dir)
	if u.RawQuery != "" {
		u.RawQuery += "&"
	}
	u.RawQuery += "tls-certificates=" + v
	if u.Path == "" {
		u.Path = "/"
	}
	return u.String()
}

// printTLSHelp adds the TLS client commands to serve's connect help.
func printTLSHelp(w io.Writer, t *serveTLSFlags, lns []net.Listener, exportName string) {
	if t.dir == "" {
		return
	}
	who := "any client (no client certificate is checked)"
	if t.verified {
		who = "clients with a certificate signed by " + filepath.Join(t.dir, tlscreds.CACert)
		if t.list != nil {
			who += " and a subject listed in " + t.authz
		}
	}
	fmt.Fprintf(w, "TLS required (credentials %s); admits %s\n", t.dir, who)
	obj := "tls-creds-x509,id=tls0,dir=" + t.dir + ",endpoint=client"
	exp := ""
	if exportName != "" {
		exp = ",export=" + exportName
	}
	switch a := lns[0].Addr().(type) {
	case *net.TCPAddr:
		host := a.IP.String()
		if a.IP == nil || a.IP.IsUnspecified() {
			host = "127.0.0.1"
		}
		fmt.Fprintf(w, "  qemu-img info --object %s --image-opts driver=nbd,host=%s,port=%s,tls-creds=tls0%s\n", obj, host, strconv.Itoa(a.Port), exp)
		nc := fmt.Sprintf("nbd-client %s %d /dev/nbd0 -cacertfile %s -certfile %s -keyfile %s", host, a.Port,
			filepath.Join(t.dir, tlscreds.CACert), filepath.Join(t.dir, tlscreds.ClientCert), filepath.Join(t.dir, tlscreds.ClientKey))
		if exportName != "" {
			nc += " -N " + exportName
		}
		fmt.Fprintf(w, "  %s   # kernel client: modprobe nbd first\n", nc)
	case *net.UnixAddr:
		// qemu checks the certificate against a host name, which a unix
		// socket does not have: localhost is in `nvblk certs` ones.
		fmt.Fprintf(w, "  qemu-img info --object %s --image-opts driver=nbd,server.type=unix,server.path=%s,tls-creds=tls0,tls-hostname=localhost%s\n", obj, a.Name, exp)
	}
	if !t.verified {
		fmt.Fprintf(w, "WARNING: no client certificates are checked (no %s in %s): TLS only encrypts\n", tlscreds.CACert, t.dir)
	}
}
