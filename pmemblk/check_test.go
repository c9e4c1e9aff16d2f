package pmemblk

import "testing"

// TestCheckDeviceReportsStatesAndUnreadable: the pool check passes on
// what the BTT check says beyond errors: blocks in the error and zero
// states as counts (exit 0), and metadata the media cannot deliver as an
// operational error (exit 8).
func TestCheckDeviceReportsStatesAndUnreadable(t *testing.T) {
	p, dev := newRAMPool(t, MinPoolSize, 4096)
	buf := make([]byte, 4096)
	if err := p.Write(buf, 0); err != nil { // lays the BTT out
		t.Fatal(err)
	}
	if err := p.SetError(3); err != nil {
		t.Fatal(err)
	}
	if err := p.SetZero(4); err != nil {
		t.Fatal(err)
	}
	rep, err := CheckDevice(dev, CheckOptions{})
	if err != nil || rep.ExitCode() != 0 || rep.ErrorSectors != 1 || rep.ZeroSectors != 1 {
		t.Fatalf("exit %d, error sectors %d, zero sectors %d: %v", rep.ExitCode(), rep.ErrorSectors, rep.ZeroSectors, err)
	}
	b := p.BTT().Arenas()[0]
	dev.BadBlocks().Add(BTTOffset+b.Offset+int64(b.Info.MapOff), 512)
	rep, err = CheckDevice(dev, CheckOptions{})
	if err != nil || rep.Unreadable == 0 || rep.ExitCode() != 8 {
		t.Fatalf("with a bad block under the map: unreadable %d, exit %d: %v", rep.Unreadable, rep.ExitCode(), err)
	}
}
