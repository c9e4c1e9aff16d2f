package nbd

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"sync"
)

// NBD_REP_ERR_TLS_REQD: the option is refused until the client has
// upgraded the connection with NBD_OPT_STARTTLS.
const repErrTLSReqd uint32 = 1<<31 + 5

// TLS (doc/proto.md, "TLS support"). The server implements the forced
// mode only: with Options.TLS set, the sole options answered before the
// upgrade are NBD_OPT_STARTTLS and NBD_OPT_ABORT; every other one gets
// NBD_REP_ERR_TLS_REQD, and NBD_OPT_EXPORT_NAME, which cannot carry an
// error, ends the connection. The upgrade follows the lesson of nbdkit's
// CVE-2021-3716: a client that sent anything after NBD_OPT_STARTTLS
// before the TLS handshake is disconnected, the buffered plaintext reader
// is replaced by one on the TLS stream, and the option state negotiated
// in plaintext is forgotten, so nothing said in the clear survives the
// upgrade. The TLS handshake runs inside the handshake phase, under
// Options.HandshakeTimeout, and a connection can only be admitted to an
// export (the "established" of Options.MaxEstablished) after it.

// tlsDefaults completes Options.TLS (called by setDefaults): the server
// keeps its own copy, accepts TLS 1.2 and newer (TLS 1.3 is preferred by
// crypto/tls), and never resumes sessions, so every connection presents
// and verifies its client certificate afresh.
func (o *Options) tlsDefaults() {
	if o.TLS == nil {
		return
	}
	o.TLS = o.TLS.Clone()
	if o.TLS.MinVersion < tls.VersionTLS12 {
		o.TLS.MinVersion = tls.VersionTLS12
	}
	o.TLS.SessionTicketsDisabled = true
	// Full-size records from the start: NBD moves blocks, and the
	// first bytes of a connection are the handshake's anyway.
	o.TLS.DynamicRecordSizingDisabled = true
}

// beforeTLS answers the options of a connection that has not upgraded
// yet on a server with TLS configured; handled reports whether it did
// (the others are answered as usual: NBD_OPT_ABORT, and every option
// after the upgrade). On a plaintext server it handles nothing, and
// NBD_OPT_STARTTLS is answered NBD_REP_ERR_UNSUP by option.
func (c *conn) beforeTLS(bw *bufio.Writer, opt uint32, data []byte) (handled, done bool, err error) {
	if c.srv.opt.TLS == nil {
		return false, false, nil
	}
	if c.tls != nil {
		if opt == optStartTLS {
			writeOptReply(bw, opt, repErrInvalid, []byte("TLS is already negotiated"))
			return true, false, nil
		}
		return false, false, nil
	}
	switch opt {
	case optAbort:
		return false, false, nil
	case optExportName:
		// It cannot carry an error: the protocol says close.
		return true, true, fmt.Errorf("client asked for export %q without TLS; this server requires NBD_OPT_STARTTLS first", truncate(data))
	case optStartTLS:
		if len(data) != 0 {
			writeOptReply(bw, opt, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
			return true, false, nil
		}
		if n := c.br.Buffered(); n > 0 {
			// Bytes pipelined behind STARTTLS: they are plaintext a
			// man in the middle may have injected (CVE-2021-3716).
			return true, true, fmt.Errorf("%w: %d bytes sent after NBD_OPT_STARTTLS before the TLS handshake", ErrProtocol, n)
		}
		writeOptReply(bw, opt, repAck, nil)
		if err := bw.Flush(); err != nil {
			return true, true, err
		}
		if err := c.upgradeTLS(bw); err != nil {
			return true, true, err
		}
		return true, false, nil
	}
	c.log.Debug("nbd: refusing an option before TLS", "option", opt)
	writeOptReply(bw, opt, repErrTLSReqd, []byte("this server requires TLS: send NBD_OPT_STARTTLS first"))
	return true, false, nil
}

// truncate shortens an untrusted name for an error message.
func truncate(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "..."
	}
	return string(b)
}

// upgradeTLS runs the server side of the TLS handshake on the raw
// connection (under the handshake deadline already set on it) and
// switches the connection's reader and writers to the TLS stream.
func (c *conn) upgradeTLS(bw *bufio.Writer) error {
	c.wire = &tlsWire{Conn: c.raw, r: newPollReader(c.raw, c.srv.opt.Poll, c.srv.pollGate)}
	tc := tls.Server(c.wire, c.srv.opt.TLS)
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	st := tc.ConnectionState()
	if len(st.PeerCertificates) > 0 {
		c.peer = st.PeerCertificates[0]
	}
	// Shutdown reads c.nc under the server's lock.
	c.srv.mu.Lock()
	c.nc = tc
	c.srv.mu.Unlock()
	c.tls = tc
	// The plaintext reader is empty (checked before the ACK) and is
	// dropped; so is everything negotiated before the upgrade.
	c.br = bufio.NewReaderSize(tc, 64<<10)
	bw.Reset(tc)
	c.structured, c.metaAlloc, c.metaExport = false, false, nil
	subject := ""
	if c.peer != nil {
		subject = c.peer.Subject.String()
	}
	c.log.Info("nbd: TLS established", "version", tls.VersionName(st.Version),
		"cipher", tls.CipherSuiteName(st.CipherSuite), "client", subject)
	return nil
}

// lookupFor resolves an export name for this connection: nil when there
// is no such export, or when Options.Authorize refuses it to the
// client (denied is then true).
func (c *conn) lookupFor(name string) (ex *export, denied bool) {
	ex = c.srv.lookup(name)
	if ex == nil || c.srv.opt.Authorize == nil {
		return ex, false
	}
	if !c.srv.opt.Authorize(ex.Name, c.peer) {
		return nil, true
	}
	return ex, false
}

// deniedMsg is the reply to an export refused by Options.Authorize.
func (c *conn) deniedMsg(name string) []byte {
	who := "an unauthenticated client"
	if c.peer != nil {
		who = fmt.Sprintf("client %q", c.peer.Subject.String())
	}
	return fmt.Appendf(nil, "export %q is not authorized for %s", name, who)
}

// closeConn ends the connection: over TLS with a close_notify alert
// (crypto/tls bounds it to 5 s), otherwise by closing the socket.
func (c *conn) closeConn() {
	if c.tls != nil {
		c.tls.Close()
		return
	}
	c.raw.Close()
}

// writeBatch writes one batch of replies (transmission's writer). Over
// TLS the records of the whole batch are collected and written with as
// few system calls as the socket takes them: crypto/tls writes each
// buffer it is given as records of its own, one system call each,
// where a plaintext batch is one writev.
func (c *conn) writeBatch(b *net.Buffers) (int64, error) {
	if c.tls == nil {
		return b.WriteTo(c.nc)
	}
	c.wire.batch(true)
	n, err := b.WriteTo(c.tls)
	if ferr := c.wire.batch(false); err == nil {
		err = ferr
	}
	return n, err
}

// tlsWire is the socket under a TLS connection: it reads through a
// pollReader, so a TLS connection polls for its next request like a
// plaintext one, and during a batch (writeBatch) it collects the TLS
// records written instead of writing each at once.
type tlsWire struct {
	net.Conn
	r io.Reader

	mu       sync.Mutex // crypto/tls may write an alert from the reader
	batching bool
	buf      []byte
}

func (w *tlsWire) Read(b []byte) (int, error) { return w.r.Read(b) }

// tlsBatchMax bounds the records collected before they are written.
const tlsBatchMax = 256 << 10

func (w *tlsWire) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.batching {
		return w.Conn.Write(b)
	}
	if len(w.buf)+len(b) > tlsBatchMax {
		if err := w.flushLocked(); err != nil {
			return 0, err
		}
		if len(b) > tlsBatchMax {
			return w.Conn.Write(b)
		}
	}
	w.buf = append(w.buf, b...)
	return len(b), nil
}

// batch starts (on) or ends a batch; ending it writes what was
// collected.
func (w *tlsWire) batch(on bool) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.batching = on
	if on {
		return nil
	}
	return w.flushLocked()
}

func (w *tlsWire) flushLocked() error {
	if len(w.buf) == 0 {
		return nil
	}
	_, err := w.Conn.Write(w.buf)
	w.buf = w.buf[:0]
	return err
}
