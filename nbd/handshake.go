package nbd

import (
	"bufio"
	"container/list"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// conn is one client connection. In the transmission phase its workers
// take turns reading requests (see transmit); replies are combined by
// out (see sendOwned).
type conn struct {
	srv *Server
	nc  net.Conn // raw, or tls once upgraded (written under srv.mu)
	log *slog.Logger
	br  *bufio.Reader

	raw  net.Conn          // the accepted socket
	tls  *tls.Conn         // after NBD_OPT_STARTTLS (see tls.go)
	wire *tlsWire          // the socket under tls
	peer *x509.Certificate // the client's TLS certificate, if any

	shutdown   atomic.Bool // Shutdown began: read no further requests
	structured bool        // NBD_OPT_STRUCTURED_REPLY was acknowledged
	noZeroes   bool        // client set NBD_FLAG_C_NO_ZEROES
	metaAlloc  bool        // base:allocation is selected (for metaExport)
	metaExport *export     // the export of the last NBD_OPT_SET_META_CONTEXT

	optBuf []byte // handshake option data, grown up to maxOptionLen
	hdr    [requestLen]byte

	// Transmission phase.
	ex        *export
	budget    budget
	rmu       sync.Mutex    // held by the worker that reads the next request
	readEnded bool          // no more requests will be read (under rmu)
	readErr   error         // why (under rmu; read by transmit after the workers)
	holding   atomic.Int32  // hold* state of the reader running a request itself
	inlineSeq atomic.Uint64 // requests started by the reading worker itself
	watching  atomic.Bool   // the watchdog is ticking
	watchdog  *time.Timer   // hands the reader role on when a request takes long
	watchSeen atomic.Uint64 // inlineSeq at the watchdog's previous tick
	out       replyQueue    // replies waiting for the connection's writer
	ahead     atomic.Int32  // requests buffered after the last one read (about)
	requests  int64         // requests read (under rmu), for the closing log
	// READ and WRITE bytes requested (under rmu), for the closing log.
	bytesRead, bytesWritten int64

	admitted *export       // the export this connection is established on (Server.admit)
	hsElem   *list.Element // its place in Server.handshaking while it haggles (under Server.mu)
	stats    counters
}

func newConn(s *Server, nc net.Conn) *conn {
	remote := "?"
	if a := nc.RemoteAddr(); a != nil {
		remote = a.Network() + ":" + a.String()
	}
	return &conn{
		srv: s,
		nc:  nc,
		raw: nc,
		log: s.log.With("remote", remote),
		br:  bufio.NewReaderSize(newPollReader(nc, s.opt.Poll, s.pollGate), 64<<10),
	}
}

// beginShutdown asks the reader to stop: it wakes a blocked read with an
// expired deadline; requests already read still complete.
func (c *conn) beginShutdown() {
	c.shutdown.Store(true)
	c.nc.SetReadDeadline(time.Now())
}

// handshake runs fixed-newstyle option haggling. It returns the export
// chosen by NBD_OPT_GO or NBD_OPT_EXPORT_NAME, or (nil, nil) after
// NBD_OPT_ABORT.
func (c *conn) handshake() (*export, error) {
	c.nc.SetDeadline(time.Now().Add(c.srv.opt.HandshakeTimeout))
	if c.shutdown.Load() {
		return nil, ErrServerClosed
	}
	bw := bufio.NewWriterSize(c.nc, 4096)
	var g [greetingLen]byte
	be.PutUint64(g[0:], magicInit)
	be.PutUint64(g[8:], magicOption)
	be.PutUint16(g[16:], flagFixedNewstyle|flagNoZeroes)
	bw.Write(g[:])
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(c.br, cf[:]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", err)
	}
	flags := be.Uint32(cf[:])
	if flags&^clientKnown != 0 {
		return nil, fmt.Errorf("%w: unknown client flags %#x", ErrProtocol, flags)
	}
	c.noZeroes = flags&clientNoZeroes != 0

	var oh [optionHeaderLen]byte
	for i := 0; ; i++ {
		if i >= maxOptions {
			return nil, fmt.Errorf("%w: more than %d options", ErrProtocol, maxOptions)
		}
		if _, err := io.ReadFull(c.br, oh[:]); err != nil {
			return nil, fmt.Errorf("reading option: %w", err)
		}
		h, err := decodeOptionHeader(oh[:])
		if err != nil {
			return nil, err
		}
		if h.length > maxOptionLen {
			return nil, fmt.Errorf("%w: option %d with %d bytes of data (limit %d)", ErrProtocol, h.option, h.length, maxOptionLen)
		}
		if cap(c.optBuf) < int(h.length) {
			c.optBuf = make([]byte, h.length)
		}
		data := c.optBuf[:h.length]
		if _, err := io.ReadFull(c.br, data); err != nil {
			return nil, fmt.Errorf("reading option %d data: %w", h.option, err)
		}
		ex, done, err := c.option(bw, h.option, data)
		if ferr := bw.Flush(); err == nil {
			err = ferr
		}
		if err != nil || done {
			return ex, err
		}
	}
}

// option answers one option. done reports the end of the handshake
// (transmission for a non-nil export, abort otherwise).
func (c *conn) option(bw *bufio.Writer, opt uint32, data []byte) (ex *export, done bool, err error) {
	if c.shutdown.Load() && opt != optAbort {
		if opt == optExportName {
			return nil, true, ErrServerClosed
		}
		writeOptReply(bw, opt, repErrShutdown, []byte("server is shutting down"))
		return nil, false, nil
	}
	if handled, done, err := c.beforeTLS(bw, opt, data); handled {
		return nil, done, err
	}
	switch opt {
	case optExportName:
		if len(data) > MaxStringLen {
			return nil, true, fmt.Errorf("%w: export name of %d bytes", ErrProtocol, len(data))
		}
		ex, denied := c.lookupFor(string(data))
		if ex == nil {
			// The option cannot carry an error: the protocol says close.
			if denied {
				return nil, true, fmt.Errorf("%s", c.deniedMsg(string(data)))
			}
			return nil, true, fmt.Errorf("client asked for unknown export %q", data)
		}
		if !c.srv.admit(c, ex) {
			// Neither can a refusal.
			return nil, true, c.refusal()
		}
		c.selectExport(ex)
		var b [8 + 2 + zeroPadLen]byte
		be.PutUint64(b[0:], ex.Size)
		be.PutUint16(b[8:], c.transmissionFlags(ex))
		n := len(b)
		if c.noZeroes {
			n = 10
		}
		bw.Write(b[:n])
		return ex, true, nil

	case optAbort:
		writeOptReply(bw, opt, repAck, nil)
		bw.Flush()
		return nil, true, nil

	case optList:
		if len(data) != 0 {
			writeOptReply(bw, opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
			return nil, false, nil
		}
		for _, ex := range c.srv.sortedExports() {
			if _, denied := c.lookupFor(ex.Name); denied {
				continue
			}
			p := make([]byte, 4, 4+len(ex.Name)+len(ex.Description))
			be.PutUint32(p, uint32(len(ex.Name)))
			p = append(append(p, ex.Name...), ex.Description...)
			writeOptReply(bw, opt, repServer, p)
		}
		writeOptReply(bw, opt, repAck, nil)
		return nil, false, nil

	case optInfo, optGo:
		req, err := decodeInfoRequest(data)
		if err != nil {
			writeOptReply(bw, opt, repErrInvalid, []byte(err.Error()))
			return nil, false, nil
		}
		ex, denied := c.lookupFor(req.name)
		if denied {
			writeOptReply(bw, opt, repErrPolicy, c.deniedMsg(req.name))
			return nil, false, nil
		}
		if ex == nil {
			writeOptReply(bw, opt, repErrUnknown, []byte(fmt.Sprintf("no export named %q", req.name)))
			return nil, false, nil
		}
		if opt == optGo && !c.srv.admit(c, ex) {
			err := c.refusal()
			c.log.Warn("nbd: refusing NBD_OPT_GO", "err", err)
			writeOptReply(bw, opt, repErrPolicy, []byte(err.Error()))
			return nil, false, nil
		}
		var p [2 + 8 + 2]byte
		be.PutUint16(p[0:], infoExport)
		be.PutUint64(p[2:], ex.Size)
		be.PutUint16(p[10:], c.transmissionFlags(ex))
		writeOptReply(bw, opt, repInfo, p[:])
		for _, t := range req.infos {
			switch t {
			case infoName:
				writeOptReply(bw, opt, repInfo, append(be.AppendUint16(nil, infoName), ex.Name...))
			case infoDescription:
				if ex.Description != "" {
					writeOptReply(bw, opt, repInfo, append(be.AppendUint16(nil, infoDescription), ex.Description...))
				}
			}
		}
		// Sent whether requested or not: the minimum is the sector size,
		// which the server enforces (misaligned requests get EINVAL).
		var bs [2 + 12]byte
		be.PutUint16(bs[0:], infoBlockSize)
		be.PutUint32(bs[2:], ex.SectorSize)
		be.PutUint32(bs[6:], ex.Preferred)
		be.PutUint32(bs[10:], ex.Maximum)
		writeOptReply(bw, opt, repInfo, bs[:])
		writeOptReply(bw, opt, repAck, nil)
		if opt == optGo {
			c.selectExport(ex)
			return ex, true, nil
		}
		return nil, false, nil

	case optStructuredReply:
		if len(data) != 0 {
			writeOptReply(bw, opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
			return nil, false, nil
		}
		if c.structured {
			writeOptReply(bw, opt, repErrInvalid, []byte("structured replies already negotiated"))
			return nil, false, nil
		}
		c.structured = true
		writeOptReply(bw, opt, repAck, nil)
		return nil, false, nil
	case optListMetaContext, optSetMetaContext:
		return nil, false, c.metaContext(bw, opt, data)
	}
	// NBD_OPT_STARTTLS, NBD_OPT_EXTENDED_HEADERS and anything unknown.
	writeOptReply(bw, opt, repErrUnsup, nil)
	return nil, false, nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT. The server knows one context,
// base:allocation; a query for it matches it, and so does the bare
// namespace "base:" in LIST (SET ignores that form, as the spec says);
// queries in other namespaces match nothing. SET replaces the selection,
// also when it fails, and the selection applies only if the client then
// goes to the export it named.
func (c *conn) metaContext(bw *bufio.Writer, opt uint32, data []byte) error {
	if opt == optSetMetaContext {
		// SET replaces the selection even when it fails.
		c.metaExport, c.metaAlloc = nil, false
	}
	if !c.structured {
		writeOptReply(bw, opt, repErrInvalid, []byte("metadata contexts need structured replies (NBD_OPT_STRUCTURED_REPLY) first"))
		return nil
	}
	req, err := decodeMetaRequest(data)
	if err != nil {
		writeOptReply(bw, opt, repErrInvalid, []byte(err.Error()))
		return nil
	}
	ex, denied := c.lookupFor(req.name)
	if denied {
		writeOptReply(bw, opt, repErrPolicy, c.deniedMsg(req.name))
		return nil
	}
	if ex == nil {
		writeOptReply(bw, opt, repErrUnknown, []byte(fmt.Sprintf("no export named %q", req.name)))
		return nil
	}
	match := opt == optListMetaContext && len(req.queries) == 0 // LIST with no query: everything
	for _, q := range req.queries {
		// The bare namespace is a wildcard for LIST only; SET must
		// ignore it.
		if q == metaAllocation || (q == "base:" && opt == optListMetaContext) {
			match = true
		}
	}
	if opt == optSetMetaContext {
		c.metaExport, c.metaAlloc = ex, match
	}
	if match {
		id := uint32(0) // LIST: the id is reserved
		if opt == optSetMetaContext {
			id = metaAllocationID
		}
		writeOptReply(bw, opt, repMetaContext, append(be.AppendUint32(nil, id), metaAllocation...))
	}
	writeOptReply(bw, opt, repAck, nil)
	return nil
}

// refusal is the error of a client refused by Options.MaxEstablished.
func (c *conn) refusal() error {
	return fmt.Errorf("too many connections: the server is limited to %d established connections", c.srv.opt.MaxEstablished)
}

// selectExport drops the metadata contexts selected for another export
// than ex, the one the client goes to.
func (c *conn) selectExport(ex *export) {
	if c.metaExport != ex {
		c.metaAlloc = false
	}
}

// writeOptReply queues one option reply; errors surface at Flush.
func writeOptReply(bw *bufio.Writer, opt, typ uint32, data []byte) {
	var h [optionReplyHdrLen]byte
	be.PutUint64(h[0:], magicOptionReply)
	be.PutUint32(h[8:], opt)
	be.PutUint32(h[12:], typ)
	be.PutUint32(h[16:], uint32(len(data)))
	bw.Write(h[:])
	bw.Write(data)
}

// transmissionFlags are the flags advertised for ex on this connection.
func (c *conn) transmissionFlags(ex *export) uint16 {
	f := FlagHasFlags | FlagSendFlush | FlagCanMultiConn | FlagSendCache
	if ex.ReadOnly {
		f |= FlagReadOnly
	} else {
		f |= FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero
	}
	if c.structured {
		f |= FlagSendDF // a read is always answered with one data chunk
	}
	return f
}
