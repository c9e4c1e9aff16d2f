package cli

import (
	"crypto"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/nvblk/nvblk/internal/tlscreds"
)

type certsOptions struct {
	hosts      []string
	clientName string
	from       string
	days       int
	force      bool
}

func newCertsCommand() *cobra.Command {
	o := &certsOptions{}
	cmd := &cobra.Command{
		Use:   "certs DIR",
		Short: "Create TLS credentials for `serve --tls-creds DIR` and its clients (qemu/libnbd layout)",
		Long: "Create a certificate authority, a server certificate and a client certificate in DIR,\n" +
			"in the layout qemu (tls-creds-x509,dir=DIR), libnbd (tls-certificates=DIR) and nbdkit\n" +
			"(--tls-certificates=DIR) use: ca-cert.pem, server-cert.pem, server-key.pem,\n" +
			"client-cert.pem, client-key.pem, plus ca-key.pem to sign more client certificates.\n" +
			"Keys are ECDSA P-256, written with mode 0600.\n" +
			"With --from CADIR it makes a client directory instead: CADIR's ca-cert.pem and a new\n" +
			"client certificate (named --client-name) signed by CADIR's ca-key.pem.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error { return certsFunc(cmd.OutOrStdout(), args[0], o) },
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.hosts, "host", nil, "DNS name or IP address the server certificate is valid for (repeatable; default: this machine's host name, localhost, 127.0.0.1, ::1)")
	f.StringVar(&o.clientName, "client-name", "client", "common name (CN) of the client certificate")
	f.StringVar(&o.from, "from", "", "make only a client certificate, signed by the CA in this directory")
	f.IntVar(&o.days, "days", 3650, "validity of the certificates in days")
	f.BoolVar(&o.force, "force", false, "overwrite existing files")
	return cmd
}

func certsFunc(w io.Writer, dir string, o *certsOptions) error {
	if o.days <= 0 {
		return &ExitError{Code: 16, Err: fmt.Errorf("--days %d: want 1 or more", o.days)}
	}
	if o.clientName == "" {
		return &ExitError{Code: 16, Err: errors.New("--client-name is empty")}
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	names := []string{tlscreds.CACert, tlscreds.ClientCert, tlscreds.ClientKey}
	if o.from == "" {
		names = append(names, "ca-key.pem", tlscreds.ServerCert, tlscreds.ServerKey)
	}
	for _, n := range names {
		if _, err := os.Lstat(filepath.Join(abs, n)); err == nil && !o.force {
			return &ExitError{Code: 16, Err: fmt.Errorf("%s already exists (--force overwrites)", filepath.Join(abs, n))}
		}
	}
	now := time.Now()
	v := tlscreds.Validity{NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(0, 0, o.days)}
	subject := "CN=" + o.clientName + ",O=nvblk"

	if o.from != "" {
		ca, err := loadCA(o.from)
		if err != nil {
			return err
		}
		client, err := ca.Issue(o.clientName, false, nil, v)
		if err != nil {
			return err
		}
		if err := tlscreds.WriteFile(filepath.Join(abs, tlscreds.CACert), ca.CertPEM(), 0o644, o.force); err != nil {
			return err
		}
		if err := client.WriteFile(abs, tlscreds.ClientCert, tlscreds.ClientKey, o.force); err != nil {
			return err
		}
		fmt.Fprintf(w, "created client credentials in %s (subject %s, valid until %s)\n", abs, subject, v.NotAfter.UTC().Format(time.DateOnly))
		fmt.Fprintf(w, "add this line to the server's --tls-authz file to let it in:\n  %s\n", subject)
		return nil
	}

	hosts := o.hosts
	if len(hosts) == 0 {
		if h, err := os.Hostname(); err == nil && h != "" && h != "localhost" {
			hosts = append(hosts, h)
		}
		hosts = append(hosts, "localhost", "127.0.0.1", "::1")
	}
	ca, err := tlscreds.NewCA("nvblk CA", v)
	if err != nil {
		return err
	}
	server, err := ca.Issue(hosts[0], true, hosts, v)
	if err != nil {
		return err
	}
	client, err := ca.Issue(o.clientName, false, nil, v)
	if err != nil {
		return err
	}
	if err := ca.WriteFile(abs, tlscreds.CACert, "ca-key.pem", o.force); err != nil {
		return err
	}
	if err := server.WriteFile(abs, tlscreds.ServerCert, tlscreds.ServerKey, o.force); err != nil {
		return err
	}
	if err := client.WriteFile(abs, tlscreds.ClientCert, tlscreds.ClientKey, o.force); err != nil {
		return err
	}
	host := hosts[0]
	fmt.Fprintf(w, "created TLS credentials in %s, valid until %s:\n", abs, v.NotAfter.UTC().Format(time.DateOnly))
	fmt.Fprintf(w, "  ca-cert.pem ca-key.pem     certificate authority (keep ca-key.pem off the server once done)\n")
	fmt.Fprintf(w, "  server-cert.pem server-key.pem  server, for %v\n", hosts)
	fmt.Fprintf(w, "  client-cert.pem client-key.pem  client, subject %s\n", subject)
	fmt.Fprintln(w, "serve with:")
	fmt.Fprintf(w, "  nvblk serve --listen %s:10809 --tls-creds %s IMAGE\n", hostForListen(host), abs)
	fmt.Fprintln(w, "connect with (copy ca-cert.pem and client-*.pem to the client machine):")
	fmt.Fprintf(w, "  nbdinfo 'nbds://%s/?tls-certificates=%s'\n", urlHost(host), abs)
	fmt.Fprintf(w, "  qemu-img info --object tls-creds-x509,id=tls0,dir=%s,endpoint=client --image-opts driver=nbd,host=%s,port=10809,tls-creds=tls0\n", abs, host)
	fmt.Fprintf(w, "more clients: nvblk certs --from %s --client-name NAME CLIENTDIR\n", abs)
	return nil
}

// hostForListen is host as the HOST of --listen HOST:PORT.
func hostForListen(host string) string {
	if ip := net.ParseIP(host); ip != nil && ip.To4() == nil {
		return "[" + host + "]"
	}
	return host
}

func urlHost(host string) string { return hostForListen(host) }

// loadCA reads dir's ca-cert.pem and ca-key.pem.
func loadCA(dir string) (*tlscreds.Cert, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, tlscreds.CACert), filepath.Join(dir, "ca-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("--from %s: %w", dir, err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok || pair.Leaf == nil || !pair.Leaf.IsCA {
		return nil, fmt.Errorf("--from %s: ca-cert.pem is not a certificate authority with a usable key", dir)
	}
	return &tlscreds.Cert{Cert: pair.Leaf, Key: signer}, nil
}
