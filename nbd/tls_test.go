package nbd

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nvblk/nvblk/internal/tlscreds"
)

// testPKI is a CA with a server certificate and client certificates:
// one good, one expired, one with a subject the access lists leave out,
// and one signed by another CA.
type testPKI struct {
	ca                                 *tlscreds.Cert
	server                             *tlscreds.Cert
	client, expired, stranger, foreign *tlscreds.Cert
}

var (
	pkiOnce sync.Once
	pki     testPKI
	pkiErr  error
)

func getPKI(t testing.TB) *testPKI {
	t.Helper()
	pkiOnce.Do(func() {
		v := tlscreds.DefaultValidity()
		must := func(c *tlscreds.Cert, err error) *tlscreds.Cert {
			if err != nil && pkiErr == nil {
				pkiErr = err
			}
			return c
		}
		pki.ca = must(tlscreds.NewCA("test CA", v))
		if pkiErr != nil {
			return
		}
		pki.server = must(pki.ca.Issue("server", true, []string{"localhost", "127.0.0.1"}, v))
		pki.client = must(pki.ca.Issue("client", false, nil, v))
		pki.stranger = must(pki.ca.Issue("stranger", false, nil, v))
		old := tlscreds.Validity{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}
		pki.expired = must(pki.ca.Issue("client", false, nil, old))
		other := must(tlscreds.NewCA("other CA", v))
		if other != nil {
			pki.foreign = must(other.Issue("client", false, nil, v))
		}
	})
	if pkiErr != nil {
		t.Fatal(pkiErr)
	}
	return &pki
}

func tlsPair(c *tlscreds.Cert) tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.Cert.Raw}, PrivateKey: c.Key, Leaf: c.Cert}
}

// serverTLS is the server configuration: client certificates required
// and verified against the test CA.
func (p *testPKI) serverTLS() *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	return &tls.Config{Certificates: []tls.Certificate{tlsPair(p.server)}, ClientCAs: pool,
		ClientAuth: tls.RequireAndVerifyClientCert}
}

// clientTLS is a client configuration presenting cert (none if nil).
func (p *testPKI) clientTLS(cert *tlscreds.Cert) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if cert != nil {
		// Sent whatever CAs the server names (crypto/tls would
		// otherwise keep a certificate of another CA to itself).
		pair := tlsPair(cert)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil }
	}
	return cfg
}

// startTLS sends NBD_OPT_STARTTLS, expects the ACK and runs the TLS
// handshake; from then on the client speaks over TLS.
func (c *client) startTLS(cfg *tls.Config) error {
	c.t.Helper()
	c.sendOption(optStartTLS, nil)
	if r := c.readOptReply(); r.opt != optStartTLS || r.typ != repAck {
		c.t.Fatalf("NBD_OPT_STARTTLS: reply %#x %q", r.typ, r.data)
	}
	if c.br.Buffered() != 0 {
		c.t.Fatalf("%d bytes after the STARTTLS ACK", c.br.Buffered())
	}
	tc := tls.Client(c.nc, cfg)
	c.deadline()
	if err := tc.Handshake(); err != nil {
		return err
	}
	c.nc, c.br = tc, bufio.NewReader(tc)
	return nil
}

// connectTLS is connect over TLS with cert.
func connectTLS(t testing.TB, ts *testServer, p *testPKI, cert *tlscreds.Cert, name string) *client {
	t.Helper()
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	if err := c.startTLS(p.clientTLS(cert)); err != nil {
		t.Fatalf("TLS handshake: %v", err)
	}
	c.sendOption(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("structured reply: type %#x", r.typ)
	}
	c.structured = true
	if g := c.info(optGo, name, infoBlockSize); g.final != repAck {
		t.Fatalf("NBD_OPT_GO %q: reply %#x %q", name, g.final, g.finalData)
	}
	return c
}

// TestTLSForcedMode: before the upgrade every option but STARTTLS and
// ABORT is refused with NBD_REP_ERR_TLS_REQD; after it the client works,
// bytes checked.
func TestTLSForcedMode(t *testing.T) {
	p := getPKI(t)
	dev := newMemDev(512, 256)
	ts := startServer(t, Options{TLS: p.serverTLS()}, withExport("disk", "the disk", dev, false))

	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	for _, o := range []struct {
		opt  uint32
		data []byte
	}{
		{optList, nil},
		{optInfo, infoData("disk")},
		{optGo, infoData("disk")},
		{optStructuredReply, nil},
		{optListMetaContext, metaData("disk", metaAllocation)},
		{optSetMetaContext, metaData("disk", metaAllocation)},
		{99, []byte("unknown")},
	} {
		c.sendOption(o.opt, o.data)
		r := c.readOptReply()
		if r.opt != o.opt || r.typ != repErrTLSReqd {
			t.Errorf("option %d before TLS: reply %#x %q, want NBD_REP_ERR_TLS_REQD", o.opt, r.typ, r.data)
		}
	}
	if st := ts.Stats(); st.Established != 0 {
		t.Errorf("%d connections established before TLS", st.Established)
	}
	c.sendOption(optStartTLS, []byte("x"))
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("STARTTLS with data: reply %#x", r.typ)
	}
	if err := c.startTLS(p.clientTLS(p.client)); err != nil {
		t.Fatal(err)
	}
	c.sendOption(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("second STARTTLS: reply %#x", r.typ)
	}
	c.sendOption(optList, nil)
	if r := c.readOptReply(); r.typ != repServer || !bytes.Contains(r.data, []byte("disk")) {
		t.Errorf("LIST over TLS: %#x %q", r.typ, r.data)
	}
	if r := c.readOptReply(); r.typ != repAck {
		t.Errorf("LIST end: %#x", r.typ)
	}
	if g := c.info(optGo, "disk", infoBlockSize); g.final != repAck {
		t.Fatalf("GO over TLS: %#x %q", g.final, g.finalData)
	}
	want := pattern(64<<10, 3)
	if r := c.do(cmdWrite, cmdFlagFUA, 4096, uint32(len(want)), want); r.errno != 0 {
		t.Fatal(r.errno)
	}
	if r := c.do(cmdRead, 0, 4096, uint32(len(want)), nil); r.errno != 0 || !bytes.Equal(r.data, want) {
		t.Fatalf("read back over TLS: errno %v, equal %v", r.errno, bytes.Equal(r.data, want))
	}
	if !bytes.Equal(dev.snapshot()[4096:4096+len(want)], want) {
		t.Fatal("the device does not hold the bytes written over TLS")
	}
	c.disconnect()
	c.expectClosed()
}

// TestTLSStateReset: what a client negotiated before the upgrade does
// not carry over (a plaintext server would have acknowledged structured
// replies; here it is refused, and after STARTTLS a GO without asking
// again gets simple replies).
func TestTLSStateReset(t *testing.T) {
	p := getPKI(t)
	ts := startServer(t, Options{TLS: p.serverTLS()}, withExport("", "", newMemDev(512, 64), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	c.sendOption(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repErrTLSReqd {
		t.Fatalf("structured reply before TLS: %#x", r.typ)
	}
	if err := c.startTLS(p.clientTLS(p.client)); err != nil {
		t.Fatal(err)
	}
	g := c.info(optGo, "", infoBlockSize)
	if g.final != repAck || g.flags&FlagSendDF != 0 {
		t.Fatalf("GO: %#x flags %#x (DF means structured replies)", g.final, g.flags)
	}
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 || len(r.data) != 512 {
		t.Fatalf("read: %v, %d bytes", r.errno, len(r.data))
	}
}

// TestTLSExportNameBeforeTLS: NBD_OPT_EXPORT_NAME cannot be refused, so
// the connection is closed.
func TestTLSExportNameBeforeTLS(t *testing.T) {
	p := getPKI(t)
	ts := startServer(t, Options{TLS: p.serverTLS()}, withExport("", "", newMemDev(512, 64), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	c.sendOption(optExportName, nil)
	c.expectClosed()
	// ABORT is answered before TLS.
	c = dial(t, ts)
	c.greet(clientFixedNewstyle)
	c.sendOption(optAbort, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("ABORT: %#x", r.typ)
	}
}

// TestTLSPlaintextServer: without Options.TLS, STARTTLS is unsupported.
func TestTLSPlaintextServer(t *testing.T) {
	ts := startServer(t, Options{}, withExport("", "", newMemDev(512, 64), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle)
	c.sendOption(optStartTLS, nil)
	if r := c.readOptReply(); r.typ != repErrUnsup {
		t.Fatalf("STARTTLS on a plaintext server: %#x", r.typ)
	}
}

// TestTLSRefusals: clients whose certificate the server must refuse
// never get to an export.
func TestTLSRefusals(t *testing.T) {
	p := getPKI(t)
	cfg := p.serverTLS()
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 && cs.PeerCertificates[0].Subject.CommonName == "stranger" {
			return errors.New("not in the access list")
		}
		return nil
	}
	ts := startServer(t, Options{TLS: cfg, HandshakeTimeout: 5 * time.Second},
		withExport("", "", newMemDev(512, 64), false))
	for _, tc := range []struct {
		name string
		cert *tlscreds.Cert
		want string // the TLS alert the client gets
	}{
		{"no client certificate", nil, "certificate required"},
		{"certificate from another CA", p.foreign, "unknown certificate authority"},
		{"expired certificate", p.expired, "expired certificate"},
		{"subject not authorized", p.stranger, "bad certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			c.greet(clientFixedNewstyle | clientNoZeroes)
			err := c.startTLS(p.clientTLS(tc.cert))
			if err == nil {
				// TLS 1.3: the client learns of the refusal on its
				// first read.
				b := be.AppendUint64(nil, magicOption)
				b = be.AppendUint32(be.AppendUint32(b, optGo), 0)
				c.write(b) // may fail: the server may have closed already
				c.deadline()
				_, err = c.br.ReadByte()
			}
			if err == nil {
				t.Fatal("the server accepted the client")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("refused with %v, want %q", err, tc.want)
			}
			c.expectClosed()
		})
	}
	// A good client still works.
	c := connectTLS(t, ts, p, p.client, "")
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
}

// TestTLSPipelinedPlaintext is CVE-2021-3716: bytes sent after
// NBD_OPT_STARTTLS but before the TLS handshake must never be taken as
// options, neither before nor after the upgrade.
func TestTLSPipelinedPlaintext(t *testing.T) {
	p := getPKI(t)
	ts := startServer(t, Options{TLS: p.serverTLS(), HandshakeTimeout: 5 * time.Second},
		withExport("", "", newMemDev(512, 64), false))
	opt := func(o uint32, data []byte) []byte {
		b := be.AppendUint64(nil, magicOption)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	for _, tc := range []struct {
		name  string
		after []byte
	}{
		{"GO", opt(optGo, infoData(""))},
		{"LIST and EXPORT_NAME", append(opt(optList, nil), opt(optExportName, nil)...)},
		{"STARTTLS again", opt(optStartTLS, nil)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, ts)
			c.greet(clientFixedNewstyle | clientNoZeroes)
			c.mustWrite(append(opt(optStartTLS, nil), tc.after...))
			// The server may answer the STARTTLS (if the extra bytes
			// had not arrived yet, they then break the TLS handshake)
			// or not; it must send nothing else, and close.
			c.nc.SetReadDeadline(time.Now().Add(ioTimeout))
			out, err := io.ReadAll(c.br)
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("connection still open")
			}
			for len(out) >= optionReplyHdrLen {
				r := optReply{opt: be.Uint32(out[8:]), typ: be.Uint32(out[12:])}
				if r.opt != optStartTLS || r.typ != repAck {
					t.Fatalf("the server answered option %d (%#x) sent in the clear after STARTTLS", r.opt, r.typ)
				}
				out = out[optionReplyHdrLen+int(be.Uint32(out[16:])):]
				if len(out) > 0 && out[0] == 0x16 {
					t.Fatal("the server started a TLS handshake on the pipelined bytes")
				}
			}
			if st := ts.Stats(); st.Established != 0 {
				t.Fatal("a connection got established")
			}
		})
	}
}

// TestTLSAuthorize: Options.Authorize limits exports per client; a
// refused export is left out of LIST and answered NBD_REP_ERR_POLICY.
func TestTLSAuthorize(t *testing.T) {
	p := getPKI(t)
	authz := func(name string, cert *x509.Certificate) bool {
		return name == "public" || cert != nil && cert.Subject.CommonName == "client" && name == "private"
	}
	ts := startServer(t, Options{TLS: p.serverTLS(), Authorize: authz},
		withExport("public", "", newMemDev(512, 64), false), withExport("private", "", newMemDev(512, 64), false))
	list := func(c *client) string {
		c.sendOption(optList, nil)
		var names []string
		for {
			r := c.readOptReply()
			if r.typ != repServer {
				return strings.Join(names, ",")
			}
			names = append(names, string(r.data[4:4+be.Uint32(r.data)]))
		}
	}
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)
	if err := c.startTLS(p.clientTLS(p.stranger)); err != nil {
		t.Fatal(err)
	}
	if got := list(c); got != "public" {
		t.Errorf("stranger lists %q, want public", got)
	}
	if g := c.info(optGo, "private", infoBlockSize); g.final != repErrPolicy || !strings.Contains(string(g.finalData), "stranger") {
		t.Errorf("stranger GO private: %#x %q", g.final, g.finalData)
	}
	c.sendOption(optExportName, []byte("private"))
	c.expectClosed()

	c = connectTLS(t, ts, p, p.client, "private")
	if r := c.do(cmdRead, 0, 0, 512, nil); r.errno != 0 {
		t.Fatal(r.errno)
	}
	c2 := dial(t, ts)
	c2.greet(clientFixedNewstyle | clientNoZeroes)
	if err := c2.startTLS(p.clientTLS(p.client)); err != nil {
		t.Fatal(err)
	}
	if got := list(c2); got != "private,public" {
		t.Errorf("client lists %q", got)
	}
}
