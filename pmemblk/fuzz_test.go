package pmemblk

import (
	"testing"
)

// FuzzPoolHeader feeds arbitrary bytes as the first 8 KiB of a pool (the
// pool header and struct pmemblk) in front of a real BTT: decoding,
// opening and checking must fail cleanly or work, never panic, and a
// header that verifies must survive Encode(Decode()).
func FuzzPoolHeader(f *testing.F) {
	f.Add(append([]byte(nil), pmempoolHeader(f)...))
	f.Add(make([]byte, 16))
	hdr := append([]byte(nil), pmempoolHeader(f)...)
	hdr[DescOffset] = 0 // bsize 0
	f.Add(hdr)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > BTTOffset {
			data = data[:BTTOffset]
		}
		page := make([]byte, HeaderSize)
		copy(page, data)
		if VerifyHeader(page) == HeaderOK {
			h := DecodeHeader(page)
			var again [HeaderSize]byte
			h.Encode(again[:])
			if VerifyHeader(again[:]) != HeaderOK || DecodeHeader(again[:]) != h {
				t.Fatal("a valid header does not survive Encode(Decode())")
			}
		}
		p, dev := newRAMPool(t, MinPoolSize, 512)
		if err := p.Write(make([]byte, 512), 1); err != nil {
			t.Fatal(err)
		}
		p.Close()
		if _, err := dev.WriteAt(data, 0); err != nil {
			t.Fatal(err)
		}
		Probe(dev)
		if q, err := NewPool(dev, 0, Options{ReadOnly: true}); err == nil {
			buf := make([]byte, q.BSize())
			q.Read(buf, 1)
			q.Close()
		}
		CheckDevice(dev, CheckOptions{})
	})
}
