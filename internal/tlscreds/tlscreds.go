// Package tlscreds makes and loads the x509 credentials of NBD over TLS
// in the directory layout qemu (tls-creds-x509,dir=DIR), libnbd
// (tls-certificates=DIR) and nbdkit (--tls-certificates DIR) share:
//
//	ca-cert.pem      the certificate authority both sides trust
//	server-cert.pem  the server's certificate, signed by the CA
//	server-key.pem   its private key (mode 0600)
//	client-cert.pem  a client's certificate, signed by the CA
//	client-key.pem   its private key (mode 0600)
//
// Keys are ECDSA P-256, which GnuTLS (libnbd, qemu) and crypto/tls
// both handle.
package tlscreds

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// File names of the layout.
const (
	CACert     = "ca-cert.pem"
	ServerCert = "server-cert.pem"
	ServerKey  = "server-key.pem"
	ClientCert = "client-cert.pem"
	ClientKey  = "client-key.pem"
)

// Cert is a certificate with its private key.
type Cert struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// Validity is the lifetime of a new certificate.
type Validity struct {
	NotBefore, NotAfter time.Time
}

// DefaultValidity: from an hour ago (clock skew) for ten years.
func DefaultValidity() Validity {
	now := time.Now()
	return Validity{NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(10, 0, 0)}
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

// NewCA makes a self-signed certificate authority.
func NewCA(name string, v Validity) (*Cert, error) {
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name, Organization: []string{"nvblk"}},
		NotBefore:             v.NotBefore,
		NotAfter:              v.NotAfter,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	return issue(tmpl, nil)
}

// Issue signs a server certificate (for the DNS names and IP addresses
// in hosts) or a client certificate (hosts ignored) named name.
func (ca *Cert) Issue(name string, server bool, hosts []string, v Validity) (*Cert, error) {
	tmpl := &x509.Certificate{
		Subject:   pkix.Name{CommonName: name, Organization: []string{"nvblk"}},
		NotBefore: v.NotBefore,
		NotAfter:  v.NotAfter,
		// qemu warns about (and with a critical extension, which Go
		// always writes, refuses) a certificate without key
		// encipherment, whatever the key type.
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		BasicConstraintsValid: true,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else if h != "" {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	return issue(tmpl, ca)
}

func issue(tmpl *x509.Certificate, ca *Cert) (*Cert, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if tmpl.SerialNumber, err = serial(); err != nil {
		return nil, err
	}
	parent, signer := tmpl, crypto.Signer(key)
	if ca != nil {
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("tlscreds: sign %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &Cert{Cert: cert, Key: key}, nil
}

// CertPEM is the certificate in PEM.
func (c *Cert) CertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Cert.Raw})
}

// KeyPEM is the private key in PEM (PKCS #8).
func (c *Cert) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// WriteFile writes the certificate to dir/certName and its key to
// dir/keyName (mode 0600, created exclusively unless overwrite).
func (c *Cert) WriteFile(dir, certName, keyName string, overwrite bool) error {
	key, err := c.KeyPEM()
	if err != nil {
		return err
	}
	if keyName != "" {
		if err := WriteFile(filepath.Join(dir, keyName), key, 0o600, overwrite); err != nil {
			return err
		}
	}
	return WriteFile(filepath.Join(dir, certName), c.CertPEM(), 0o644, overwrite)
}

// WriteFile writes b to path with exactly mode (an existing file's mode
// is set too), refusing an existing file unless overwrite.
func WriteFile(path string, b []byte, mode os.FileMode, overwrite bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
	if overwrite {
		flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	}
	f, err := os.OpenFile(path, flags, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil { // an existing file keeps its mode otherwise
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// LoadCA reads the CA certificates of dir (ca-cert.pem); found is
// false when the file does not exist.
func LoadCA(dir string) (pool *x509.CertPool, found bool, err error) {
	path := filepath.Join(dir, CACert)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	pool = x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, true, fmt.Errorf("%s: no PEM certificate in it", path)
	}
	return pool, true, nil
}

// ServerConfig loads dir's server certificate and key and, when
// verifyClients, requires every client to present a certificate signed
// by dir's CA (an error if dir has no ca-cert.pem).
func ServerConfig(dir string, verifyClients bool) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey))
	if err != nil {
		return nil, fmt.Errorf("TLS credentials in %s: %w", dir, err)
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if verifyClients {
		pool, found, err := LoadCA(dir)
		if err != nil {
			return nil, err
		}
		if !found {
			return nil, fmt.Errorf("TLS credentials in %s: no %s to verify client certificates with", dir, CACert)
		}
		cfg.ClientCAs = pool
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return cfg, nil
}

// ClientConfig loads dir's CA (to verify the server as serverName) and,
// if present, its client certificate and key.
func ClientConfig(dir, serverName string) (*tls.Config, error) {
	pool, found, err := LoadCA(dir)
	if err != nil {
		return nil, err
	}
	if !found {
		return nil, fmt.Errorf("TLS credentials in %s: no %s", dir, CACert)
	}
	cfg := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, ClientCert), filepath.Join(dir, ClientKey))
	switch {
	case err == nil:
		cfg.Certificates = []tls.Certificate{pair}
	case !errors.Is(err, os.ErrNotExist):
		return nil, err
	}
	return cfg, nil
}

// Authz is an access list of client certificate subjects, read by
// ParseAuthz. Subjects are compared in the RFC 4514 form crypto/x509
// prints (pkix.Name.String, most specific attribute first, as
// `openssl x509 -noout -subject -nameopt RFC2253` prints them), after
// removing spaces around the separators.
type Authz struct {
	all     map[string]bool            // subjects allowed every export
	exports map[string]map[string]bool // export -> subjects allowed it
}

// ParseAuthz reads an access list: one subject per line; blank lines
// and lines starting with # are ignored. A line "[export NAME]" starts
// a section whose subjects may use only the export NAME ("[export ]"
// is the default export); subjects before any section may use every
// export. Name is the file name, for errors.
func ParseAuthz(r io.Reader, name string) (*Authz, error) {
	a := &Authz{all: map[string]bool{}, exports: map[string]map[string]bool{}}
	sc := bufio.NewScanner(r)
	section := (map[string]bool)(nil)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "[export ") && strings.HasSuffix(line, "]"):
			exp := line[len("[export ") : len(line)-1]
			if a.exports[exp] == nil {
				a.exports[exp] = map[string]bool{}
			}
			section = a.exports[exp]
			continue
		case strings.HasPrefix(line, "["):
			return nil, fmt.Errorf("%s:%d: %q: want a subject or [export NAME]", name, n, line)
		case !strings.Contains(line, "="):
			return nil, fmt.Errorf("%s:%d: %q is not a certificate subject (like CN=client,O=nvblk)", name, n, line)
		}
		if section != nil {
			section[normSubject(line)] = true
		} else {
			a.all[normSubject(line)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(a.all) == 0 && len(a.exports) == 0 {
		return nil, fmt.Errorf("%s: no subjects: it would refuse every client", name)
	}
	return a, nil
}

// LoadAuthz reads the access list at path.
func LoadAuthz(path string) (*Authz, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return ParseAuthz(f, path)
}

func normSubject(s string) string {
	parts := strings.Split(s, ",")
	for i, p := range parts {
		k, v, _ := strings.Cut(p, "=")
		parts[i] = strings.TrimSpace(k) + "=" + strings.TrimSpace(v)
	}
	return strings.Join(parts, ",")
}

// Subject is cert's subject as the access list compares it.
func Subject(cert *x509.Certificate) string {
	return normSubject(cert.Subject.String())
}

// Known reports whether cert's subject is in the list at all (for any
// export): a client that is not is refused during the TLS handshake.
func (a *Authz) Known(cert *x509.Certificate) bool {
	if cert == nil {
		return false
	}
	s := Subject(cert)
	if a.all[s] {
		return true
	}
	for _, m := range a.exports {
		if m[s] {
			return true
		}
	}
	return false
}

// Allowed reports whether cert may use export.
func (a *Authz) Allowed(export string, cert *x509.Certificate) bool {
	if cert == nil {
		return false
	}
	s := Subject(cert)
	return a.all[s] || a.exports[export][s]
}

// VerifyConnection is a tls.Config.VerifyConnection refusing, during the
// handshake, a client whose certificate subject is not in the list.
func (a *Authz) VerifyConnection(cs tls.ConnectionState) error {
	if len(cs.PeerCertificates) == 0 || !a.Known(cs.PeerCertificates[0]) {
		subj := "(no certificate)"
		if len(cs.PeerCertificates) > 0 {
			subj = Subject(cs.PeerCertificates[0])
		}
		return fmt.Errorf("client certificate subject %q is not in the access list", subj)
	}
	return nil
}
