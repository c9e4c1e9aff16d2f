package nbd

import (
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestHandshakeGoInfo(t *testing.T) {
	dev := newMemDev(4096, 256)
	ts := startServer(t, Options{}, withExport("disk", "a test disk", dev, false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)

	g := c.info(optInfo, "disk", infoName, infoDescription, infoBlockSize)
	if g.final != repAck || !g.haveExport {
		t.Fatalf("NBD_OPT_INFO: final %#x, export info %v", g.final, g.haveExport)
	}
	if g.size != 256*4096 {
		t.Errorf("size %d", g.size)
	}
	want := FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagSendFastZero | FlagCanMultiConn | FlagSendCache
	if g.flags != want {
		t.Errorf("flags %#x, want %#x", g.flags, want)
	}
	if !g.haveName || g.name != "disk" || !g.haveDesc || g.desc != "a test disk" {
		t.Errorf("name %q (%v) desc %q (%v)", g.name, g.haveName, g.desc, g.haveDesc)
	}
	if !g.haveBS || g.minBS != 4096 || g.prefBS != 4096 || g.maxBS != 32<<20 {
		t.Errorf("block sizes %d/%d/%d", g.minBS, g.prefBS, g.maxBS)
	}

	// Structured replies add SEND_DF; NBD_OPT_GO then enters transmission.
	c.sendOption(optStructuredReply, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Fatalf("structured: %#x", r.typ)
	}
	c.structured = true
	g = c.info(optGo, "disk")
	if g.final != repAck || g.flags != want|FlagSendDF || !g.haveBS {
		t.Fatalf("NBD_OPT_GO: final %#x flags %#x block size sent %v", g.final, g.flags, g.haveBS)
	}
	if r := c.do(cmdRead, 0, 0, 4096, nil); r.errno != 0 || len(r.data) != 4096 {
		t.Fatalf("read after GO: %v, %d bytes", r.errno, len(r.data))
	}
	c.disconnect()
	c.expectClosed()
}

func TestBlockSizes512(t *testing.T) {
	ts := startServer(t, Options{MaxBlockSize: 1<<20 + 100}, withExport("", "", newMemDev(512, 100), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle)
	g := c.info(optInfo, "", infoBlockSize)
	if g.minBS != 512 || g.prefBS != 4096 || g.maxBS != 1<<20 {
		t.Errorf("block sizes %d/%d/%d, want 512/4096/1048576", g.minBS, g.prefBS, g.maxBS)
	}
}

func TestExportNameOption(t *testing.T) {
	dev := newMemDev(512, 64)
	ts := startServer(t, Options{}, withExport("x", "", dev, true))
	for _, noZeroes := range []bool{false, true} {
		c := dial(t, ts)
		cf := clientFixedNewstyle
		if noZeroes {
			cf |= clientNoZeroes
		}
		c.greet(cf)
		c.sendOption(optExportName, []byte("x"))
		n := 10
		if !noZeroes {
			n += zeroPadLen
		}
		b := c.mustRead(n)
		if be.Uint64(b) != 64*512 {
			t.Errorf("size %d", be.Uint64(b))
		}
		if f := be.Uint16(b[8:]); f != FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn|FlagSendCache {
			t.Errorf("flags %#x", f)
		}
		if !noZeroes && !bytes.Equal(b[10:], make([]byte, zeroPadLen)) {
			t.Errorf("padding not zero")
		}
		// Transmission works right away (simple replies).
		if r := c.do(cmdRead, 0, 512, 1024, nil); r.errno != 0 || len(r.data) != 1024 {
			t.Fatalf("read: %v", r.errno)
		}
		c.disconnect()
		c.expectClosed()
	}
	// An unknown name cannot be refused with an error: the server closes.
	c := dial(t, ts)
	c.greet(clientFixedNewstyle)
	c.sendOption(optExportName, []byte("nope"))
	c.expectClosed()
}

func TestListAndDefaultExport(t *testing.T) {
	a, b := newMemDev(512, 8), newMemDev(4096, 8)
	ts := startServer(t, Options{DefaultExport: "b"},
		withExport("a", "first", a, false), withExport("b", "second", b, false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle | clientNoZeroes)

	c.sendOption(optList, nil)
	var got []string
	for {
		r := c.readOptReply()
		if r.typ == repAck {
			break
		}
		if r.typ != repServer {
			t.Fatalf("reply type %#x", r.typ)
		}
		n := be.Uint32(r.data)
		got = append(got, string(r.data[4:4+n])+"="+string(r.data[4+n:]))
	}
	if strings.Join(got, ",") != "a=first,b=second" {
		t.Errorf("list: %v", got)
	}
	if ex := ts.Exports(); len(ex) != 2 || ex[0].Name != "a" || ex[1].SectorSize != 4096 {
		t.Errorf("Exports() = %+v", ex)
	}

	c.sendOption(optList, []byte{1})
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("LIST with data: %#x", r.typ)
	}
	// The empty name resolves to the default export "b"; its canonical
	// name is reported.
	g := c.info(optInfo, "", infoName)
	if g.final != repAck || g.name != "b" || g.minBS != 4096 {
		t.Errorf("default export: final %#x name %q min %d", g.final, g.name, g.minBS)
	}
	g = c.info(optInfo, "zzz")
	if g.final != repErrUnknown || g.haveExport {
		t.Errorf("unknown export: %#x", g.final)
	}
	if err := ts.AddExport("a", "", a, false); !errors.Is(err, ErrExportExists) {
		t.Errorf("duplicate AddExport: %v", err)
	}
}

func TestUnsupportedOptionsAndAbort(t *testing.T) {
	ts := startServer(t, Options{}, withExport("", "", newMemDev(512, 8), false))
	c := dial(t, ts)
	c.greet(clientFixedNewstyle)
	for _, opt := range []uint32{optStartTLS, 11, 4, 99, 0xffffffff} { // 11: NBD_OPT_EXTENDED_HEADERS
		c.sendOption(opt, []byte("some data"))
		if r := c.readOptReply(); r.typ != repErrUnsup || r.opt != opt {
			t.Errorf("option %d: reply %#x for %d", opt, r.typ, r.opt)
		}
	}
	c.sendOption(optStructuredReply, []byte{0})
	if r := c.readOptReply(); r.typ != repErrInvalid {
		t.Errorf("STRUCTURED_REPLY with data: %#x", r.typ)
	}
	// Malformed NBD_OPT_GO data gets NBD_REP_ERR_INVALID, not a disconnect.
	for _, data := range [][]byte{nil, {0, 0, 0}, {0, 0, 0, 9, 'a', 0, 0}, {0, 0, 0, 0, 0, 2, 0, 1}} {
		c.sendOption(optGo, data)
		if r := c.readOptReply(); r.typ != repErrInvalid {
			t.Errorf("GO %x: %#x", data, r.typ)
		}
	}
	c.sendOption(optAbort, nil)
	if r := c.readOptReply(); r.typ != repAck {
		t.Errorf("abort: %#x", r.typ)
	}
	c.expectClosed()
}
