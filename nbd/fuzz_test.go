package nbd

import (
	"bytes"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// FuzzRequestDecode: any 28 bytes decode to a request or ErrProtocol,
// validation never panics and every accepted request lies inside the
// export and is aligned; encoding round-trips.
func FuzzRequestDecode(f *testing.F) {
	for _, r := range []request{
		{typ: cmdRead, handle: 1, offset: 4096, length: 4096},
		{typ: cmdWrite, flags: cmdFlagFUA, handle: 2, offset: 0, length: 512},
		{typ: cmdWriteZeroes, flags: cmdFlagNoHole, offset: 1 << 20, length: 1 << 20},
		{typ: cmdRead, offset: ^uint64(0), length: ^uint32(0)},
		{typ: cmdFlush},
		{typ: 0xffff, flags: 0xffff},
	} {
		b := make([]byte, requestLen)
		putRequest(b, r)
		f.Add(b)
	}
	f.Add([]byte("not a request at all, 28 by"))
	f.Add([]byte{})
	dev := newMemDev(512, 4096)
	srv := NewServer(Options{MaxBlockSize: 1 << 20})
	if err := srv.AddExport("", "", dev, false); err != nil {
		f.Fatal(err)
	}
	ex := srv.lookup("")
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeRequest(b)
		if err != nil {
			return
		}
		b2 := make([]byte, requestLen)
		putRequest(b2, r)
		if !bytes.Equal(b2, b[:requestLen]) {
			t.Fatalf("round trip: % x != % x", b2, b[:requestLen])
		}
		for _, structured := range []bool{false, true} {
			c := &conn{ex: ex, structured: structured}
			errno, msg := c.check(&r)
			if errno != 0 {
				if msg == "" {
					t.Fatalf("error %d without a message", errno)
				}
				continue
			}
			if r.typ == cmdFlush {
				continue
			}
			if r.offset%512 != 0 || r.length%512 != 0 || r.offset+uint64(r.length) > ex.Size || r.offset > ex.Size {
				t.Fatalf("accepted a bad request %+v", r)
			}
			if (r.typ == cmdRead || r.typ == cmdWrite) && r.length > ex.Maximum {
				t.Fatalf("accepted %d bytes over the maximum", r.length)
			}
		}
	})
}

// FuzzInfoRequest: the NBD_OPT_INFO/GO decoder never reads out of
// bounds and never returns more than it was given.
func FuzzInfoRequest(f *testing.F) {
	f.Add(infoData(""))
	f.Add(infoData("disk", infoName, infoBlockSize))
	f.Add(be.AppendUint32(nil, 0xffffffff))
	f.Add(append(infoData("x"), 1, 2, 3))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeInfoRequest(b)
		if err != nil {
			return
		}
		if len(r.name) > len(b) || 4+len(r.name)+2+2*len(r.infos) != len(b) {
			t.Fatalf("decoded %q + %d infos from %d bytes", r.name, len(r.infos), len(b))
		}
	})
}

// FuzzHandshake feeds arbitrary client bytes (after the greeting) to a
// server connection: option haggling and, if the input gets there,
// transmission. The server must end the connection without panicking
// (a panic is contained by serve and reported in its error).
func FuzzMetaRequest(f *testing.F) {
	f.Add(metaData(""))
	f.Add(metaData("disk", metaAllocation, "base:"))
	f.Add([]byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff})
	f.Add(append(metaData("x", "y"), 1))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := decodeMetaRequest(b)
		if err != nil {
			return
		}
		size := 8 + len(r.name)
		for _, q := range r.queries {
			size += 4 + len(q)
		}
		if size != len(b) || len(r.name) > MaxStringLen {
			t.Fatalf("decoded %q + %d queries (%d bytes) from %d bytes", r.name, len(r.queries), size, len(b))
		}
	})
}

func FuzzHandshake(f *testing.F) {
	flags := be.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)
	opt := func(o uint32, data []byte) []byte {
		b := be.AppendUint64(nil, magicOption)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	req := func(typ, fl uint16, off uint64, n uint32, payload []byte) []byte {
		b := make([]byte, requestLen)
		putRequest(b, request{typ: typ, flags: fl, handle: 5, offset: off, length: n})
		return append(b, payload...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(cat(flags, opt(optGo, infoData("", infoBlockSize)), req(cmdRead, 0, 0, 512, nil), req(cmdDisc, 0, 0, 0, nil)))
	f.Add(cat(flags, opt(optStructuredReply, nil), opt(optGo, infoData("")),
		req(cmdWrite, cmdFlagFUA, 512, 512, make([]byte, 512)), req(cmdRead, 0, 0, 1024, nil),
		req(cmdTrim, 0, 0, 512, nil), req(cmdWriteZeroes, cmdFlagNoHole, 0, 512, nil), req(cmdFlush, 0, 0, 0, nil),
		req(cmdRead, 0, 3, 512, nil), req(99, 0, 0, 0, nil)))
	f.Add(cat(flags, opt(optExportName, nil), req(cmdRead, 0, 0, 4096, nil)))
	f.Add(cat(flags, opt(optList, nil), opt(optInfo, infoData("nope")), opt(99, []byte("x")), opt(optAbort, nil)))
	f.Add(cat(flags, opt(optGo, be.AppendUint32(nil, 0xffffffff))))
	f.Add(cat(flags, opt(optExportName, nil), req(cmdWrite, 0, 0, 0xffffffff, nil)))
	f.Add(cat(flags, opt(optStructuredReply, nil), opt(optListMetaContext, metaData("", "base:")),
		opt(optSetMetaContext, metaData("", metaAllocation)), opt(optGo, infoData("")),
		req(cmdBlockStatus, 0, 0, 4096, nil), req(cmdBlockStatus, cmdFlagReqOne, 512, 512, nil),
		req(cmdBlockStatus, 0, 0, 1<<30, nil)))
	f.Add(cat(flags, opt(optSetMetaContext, metaData("", metaAllocation)), opt(optExportName, nil),
		req(cmdBlockStatus, 0, 0, 4096, nil)))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte("IHAVEOPT"))

	dev := newMemDev(512, 64)
	srv := NewServer(Options{Workers: 2, MaxInFlight: 4, MaxBlockSize: 64 << 10, HandshakeTimeout: 2 * time.Second})
	if err := srv.AddExport("", "", dev, false); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		cl, sv := net.Pipe()
		defer cl.Close()
		go io.Copy(io.Discard, cl) // drain the server's output
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(sv) }()
		cl.SetWriteDeadline(time.Now().Add(2 * time.Second))
		cl.Write(in)
		cl.Close()
		select {
		case err := <-done:
			if err != nil && strings.Contains(err.Error(), "panic") || containedPanics.Load() != 0 {
				t.Fatalf("server panicked: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("connection did not end")
		}
	})
}

// FuzzHandshakeTLS is FuzzHandshake on a server that requires TLS: the
// input is what a client sends in the clear. Whatever it is, the server
// answers nothing but NBD_REP_ERR_TLS_REQD, an error to a malformed
// STARTTLS, or the ACK of STARTTLS or ABORT (after a STARTTLS ACK only
// TLS follows, which these inputs cannot complete), and it never
// reaches the transmission phase.
func FuzzHandshakeTLS(f *testing.F) {
	flags := be.AppendUint32(nil, clientFixedNewstyle|clientNoZeroes)
	opt := func(o uint32, data []byte) []byte {
		b := be.AppendUint64(nil, magicOption)
		b = be.AppendUint32(b, o)
		b = be.AppendUint32(b, uint32(len(data)))
		return append(b, data...)
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	f.Add(cat(flags, opt(optGo, infoData("", infoBlockSize))))
	f.Add(cat(flags, opt(optStructuredReply, nil), opt(optList, nil), opt(optInfo, infoData("")), opt(optExportName, nil)))
	f.Add(cat(flags, opt(optStartTLS, nil), opt(optGo, infoData(""))))
	f.Add(cat(flags, opt(optStartTLS, []byte("x")), opt(optStartTLS, nil), []byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0}))
	f.Add(cat(flags, opt(optSetMetaContext, metaData("", metaAllocation)), opt(optAbort, nil)))
	f.Add(cat(flags, opt(99, []byte("x")), opt(optStartTLS, nil)))
	p := getPKI(f)
	dev := newMemDev(512, 64)
	srv := NewServer(Options{TLS: p.serverTLS(), Workers: 2, HandshakeTimeout: 2 * time.Second})
	if err := srv.AddExport("", "", dev, false); err != nil {
		f.Fatal(err)
	}
	// A unix socket, not a pipe: the client half-closes after its
	// bytes and still reads every reply.
	ln := listenUnix(f, filepath.Join(f.TempDir(), "fuzz.sock"))
	f.Fuzz(func(t *testing.T, in []byte) {
		cl, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		sv, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		out := make(chan []byte, 1)
		go func() {
			cl.SetReadDeadline(time.Now().Add(5 * time.Second))
			b, _ := io.ReadAll(cl)
			out <- b
		}()
		done := make(chan error, 1)
		go func() { done <- srv.ServeConn(sv) }()
		cl.SetWriteDeadline(time.Now().Add(2 * time.Second))
		cl.Write(in)
		cl.(*net.UnixConn).CloseWrite()
		select {
		case err = <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("connection did not end")
		}
		if err != nil && strings.Contains(err.Error(), "panic") || containedPanics.Load() != 0 {
			t.Fatalf("server panicked: %v", err)
		}
		b := <-out
		if len(b) < greetingLen {
			return
		}
		for b = b[greetingLen:]; len(b) >= optionReplyHdrLen; {
			o, typ, n := be.Uint32(b[8:]), be.Uint32(b[12:]), int(be.Uint32(b[16:]))
			ok := typ == repErrTLSReqd || o == optAbort && typ == repAck ||
				o == optStartTLS && (typ == repAck || typ == repErrInvalid)
			if !ok {
				t.Fatalf("before TLS the server answered option %d with %#x", o, typ)
			}
			if o == optStartTLS && typ == repAck {
				return // TLS from here
			}
			if len(b) < optionReplyHdrLen+n {
				t.Fatalf("truncated reply")
			}
			b = b[optionReplyHdrLen+n:]
		}
		if st := srv.Stats(); st.Established != 0 {
			t.Fatal("a connection got established without TLS")
		}
	})
}
