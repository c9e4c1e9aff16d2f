package pmdk

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmemblk"
)

const poolSize = 32 << 20

var bsizes = []int{512, 4096}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// expect is what a pool must read as: block -> data; ErrIO for blocks in
// the error state; zeros elsewhere.
type expect struct {
	bsize  int
	nblock int64
	data   map[int64][]byte
	errs   map[int64]bool
}

func newExpect(bsize int, nblock int64) *expect {
	return &expect{bsize: bsize, nblock: nblock, data: map[int64][]byte{}, errs: map[int64]bool{}}
}

func (e *expect) set(seed uint64, blocks ...int64) {
	for _, b := range blocks {
		e.data[b] = pattern(e.bsize, seed, uint64(b))
		delete(e.errs, b)
	}
}

func (e *expect) zero(blocks ...int64) {
	for _, b := range blocks {
		delete(e.data, b)
		delete(e.errs, b)
	}
}

func (e *expect) fail(blocks ...int64) {
	for _, b := range blocks {
		delete(e.data, b)
		e.errs[b] = true
	}
}

func (e *expect) block(b int64) []byte {
	if d, ok := e.data[b]; ok {
		return d
	}
	return make([]byte, e.bsize)
}

// verifyNvblk reads every block of the pool with nvblk.
func (e *expect) verifyNvblk(t *testing.T, p *pmemblk.Pool) {
	t.Helper()
	if p.BSize() != e.bsize || p.NBlock() != e.nblock {
		t.Fatalf("nvblk sees %d blocks of %d bytes, libpmemblk %d of %d", p.NBlock(), p.BSize(), e.nblock, e.bsize)
	}
	buf := make([]byte, e.bsize)
	bad := 0
	for b := int64(0); b < e.nblock && bad < 10; b++ {
		err := p.Read(buf, b)
		switch {
		case e.errs[b]:
			if !errors.Is(err, pmemblk.ErrIO) {
				t.Errorf("block %d: %v, want the error state", b, err)
				bad++
			}
		case err != nil:
			t.Errorf("block %d: %v", b, err)
			bad++
		case !bytes.Equal(buf, e.block(b)):
			t.Errorf("block %d differs", b)
			bad++
		}
	}
}

// verifyLibpmemblk reads the interesting blocks (the written ones, their
// neighbours, the ends) with libpmemblk.
func (e *expect) verifyLibpmemblk(t *testing.T, x tools, path string) {
	t.Helper()
	if bs, n := x.info(t, path); bs != e.bsize || n != e.nblock {
		t.Fatalf("libpmemblk sees %d blocks of %d bytes, want %d of %d", n, bs, e.nblock, e.bsize)
	}
	check := map[int64]bool{0: true, e.nblock - 1: true}
	for b := range e.data {
		check[b], check[max(b-1, 0)], check[min(b+1, e.nblock-1)] = true, true, true
	}
	for b := range e.errs {
		check[b] = true
	}
	for b := range check {
		got := x.readSums(t, path, b, 1)[b]
		want := sum(e.block(b))
		if e.errs[b] {
			want = "error EIO"
		}
		if got != want {
			t.Errorf("libpmemblk block %d: %s, want %s", b, got, want)
		}
	}
	// And a raw range, byte for byte.
	if !e.errsIn(0, 16) {
		raw := x.readRaw(t, path, 0, 16)
		for b := int64(0); b < 16; b++ {
			if !bytes.Equal(raw[b*int64(e.bsize):(b+1)*int64(e.bsize)], e.block(b)) {
				t.Errorf("libpmemblk raw block %d differs", b)
			}
		}
	}
}

func (e *expect) errsIn(first, n int64) bool {
	for b := range e.errs {
		if b >= first && b < first+n {
			return true
		}
	}
	return false
}

// Pools created and written by libpmemblk read byte-identical in nvblk.
func TestLibpmemblkPoolInNvblk(t *testing.T) {
	x := needTools(t)
	for _, bs := range bsizes {
		t.Run(itoa(bs), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pool")
			n := x.create(t, path, bs, poolSize)
			e := newExpect(bs, n)

			// Before libpmemblk lays out the BTT.
			p, err := pmemblk.Open(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			if p.LaidOut() {
				t.Error("a fresh libpmemblk pool looks laid out")
			}
			e.verifyNvblk(t, p)
			p.Close()

			x.write(t, path, 1, 0, 1, 2, 3, 100, n/2, n-1)
			x.write(t, path, 2, 1, 100) // overwrites
			e.set(1, 0, 1, 2, 3, 100, n/2, n-1)
			e.set(2, 1, 100)
			x.setState(t, path, "zero", 2, n/2)
			e.zero(2, n/2)
			x.setState(t, path, "error", 3, 50)
			e.fail(3, 50)
			before, _ := os.ReadFile(path)

			p, err = pmemblk.OpenWith(path, bs, pmemblk.Options{ReadOnly: true})
			if err != nil {
				t.Fatal(err)
			}
			e.verifyNvblk(t, p)
			p.Close()
			if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
				t.Error("a read-only open changed the pool")
			}
			if ok, err := pmemblk.Check(path, bs); !ok || err != nil {
				t.Errorf("nvblk check of a libpmemblk pool: %v %v", ok, err)
			}
			if out, code := nvblk(t, "check", path); code != 0 {
				t.Errorf("nvblk check: exit %d\n%s", code, out)
			}

			// nvblk writes into the libpmemblk pool; libpmemblk reads them.
			p, err = pmemblk.Open(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, b := range []int64{3, 4, n - 2} {
				if err := p.Write(pattern(bs, 7, uint64(b)), b); err != nil {
					t.Fatal(err)
				}
			}
			e.set(7, 3, 4, n-2)
			p.Close()
			e.verifyLibpmemblk(t, x, path)
			x.pmempoolCheck(t, path)
		})
	}
}

// Pools nvblk created and wrote read byte-identical through libpmemblk,
// pass `pmempool check`, and `pmempool info` parses them.
func TestNvblkPoolInLibpmemblk(t *testing.T) {
	x := needTools(t)
	for _, bs := range bsizes {
		t.Run(itoa(bs), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "pool")
			p, err := pmemblk.Create(path, bs, poolSize)
			if err != nil {
				t.Fatal(err)
			}
			n := p.NBlock()
			p.Close()
			e := newExpect(bs, n)

			// The lazy state, as libpmemblk leaves a new pool.
			if info := x.pmempoolInfo(t, path); !strings.Contains(info, "No BTT layout") {
				t.Errorf("pmempool info of a new nvblk pool:\n%s", info)
			}
			x.pmempoolCheck(t, path)
			e.verifyLibpmemblk(t, x, path)
			sameHeaderAsPMDK(t, x, path, bs, dir)

			p, err = pmemblk.Open(path, bs)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range []struct {
				seed   uint64
				blocks []int64
			}{{3, []int64{0, 5, 6, 200, n - 1}}, {4, []int64{5, 200}}} {
				for _, b := range w.blocks {
					if err := p.Write(pattern(bs, w.seed, uint64(b)), b); err != nil {
						t.Fatal(err)
					}
				}
			}
			e.set(3, 0, 5, 6, 200, n-1)
			e.set(4, 5, 200)
			for _, b := range []int64{6, 300} { // written, never written
				if err := p.SetZero(b); err != nil {
					t.Fatal(err)
				}
			}
			e.zero(6, 300)
			for _, b := range []int64{7, 200} {
				if err := p.SetError(b); err != nil {
					t.Fatal(err)
				}
			}
			e.fail(7, 200)
			p.Close()

			x.pmempoolCheck(t, path)
			info := x.pmempoolInfo(t, path)
			for _, want := range []string{"Block size               : " + itoa(bs), "External LBA count       : " + itoa(int(n)), "Checksum                 : 0x"} {
				if !strings.Contains(info, want) {
					t.Errorf("pmempool info lacks %q:\n%s", want, info)
				}
			}
			if strings.Contains(info, "[wrong]") {
				t.Errorf("pmempool info reports a wrong checksum:\n%s", info)
			}
			if got := strings.TrimSpace(x.helperRun(t, "check", path, itoa(bs))); got != "1" {
				t.Errorf("pmemblk_check: %s", got)
			}
			e.verifyLibpmemblk(t, x, path)

			// libpmemblk writes on top (into nvblk's flog lanes), nvblk reads.
			x.write(t, path, 5, 5, 7, 8)
			e.set(5, 5, 7, 8)
			x.pmempoolCheck(t, path)
			p, err = pmemblk.Open(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			e.verifyNvblk(t, p)
			p.Close()
		})
	}
}

// sameHeaderAsPMDK compares nvblk's pool header with one pmempool makes:
// equal except for the uuids, the creation time and the checksum.
func sameHeaderAsPMDK(t *testing.T, x tools, path string, bs int, dir string) {
	t.Helper()
	ref := filepath.Join(dir, "ref")
	if _, err := runTool(t, x.pmempool, "create", "blk", itoa(bs), ref, "--size=32M"); err != nil {
		t.Fatal(err)
	}
	a, _ := os.ReadFile(path)
	b, _ := os.ReadFile(ref)
	os.Remove(ref)
	ha, hb := pmemblk.DecodeHeader(a), pmemblk.DecodeHeader(b)
	for _, h := range []*pmemblk.Header{&ha, &hb} {
		h.PoolsetUUID, h.UUID, h.PrevPartUUID, h.NextPartUUID, h.PrevReplUUID, h.NextReplUUID = [16]byte{}, [16]byte{}, [16]byte{}, [16]byte{}, [16]byte{}, [16]byte{}
		h.CrTime, h.Checksum = 0, 0
	}
	if ha != hb {
		t.Errorf("pool header differs from pmempool's:\nnvblk    %+v\npmempool %+v", ha, hb)
	}
	if !bytes.Equal(a[pmemblk.DescOffset:pmemblk.DescOffset+8], b[pmemblk.DescOffset:pmemblk.DescOffset+8]) {
		t.Errorf("bsize/is_zeroed %x, pmempool's %x", a[pmemblk.DescOffset:pmemblk.DescOffset+8], b[pmemblk.DescOffset:pmemblk.DescOffset+8])
	}
	if !bytes.Equal(a[pmemblk.BTTOffset:], b[pmemblk.BTTOffset:]) {
		t.Error("the BTT area of a new pool differs from pmempool's (both should be zeros)")
	}
}

// undoMap puts a pool in the state of a write interrupted after its flog
// entry and before its map update: the map entry of blk goes back to the
// old_map of the flog entry that committed the last write to blk. This is
// exactly libpmemblk's state after a crash at that point. When initial is
// set the interrupted write was the block's first, and the map entry goes
// back to 0 (the initial entry, which the flog records promoted to
// 0xC0000000|blk). It returns the current (new) map entry. The write to
// undo must be the last one made through its flog lane.
func undoMap(t *testing.T, path string, blk uint32, initial bool) uint32 {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	raw := make([]byte, btt.InfoSize)
	if _, err := f.ReadAt(raw, pmemblk.BTTOffset); err != nil {
		t.Fatal(err)
	}
	info := btt.DecodeInfo(raw)
	mapOff := pmemblk.BTTOffset + int64(info.MapOff) + 4*int64(blk)
	var e4 [4]byte
	f.ReadAt(e4[:], mapOff)
	cur := binary.LittleEndian.Uint32(e4[:])
	logs := make([]byte, info.NFree*btt.LogGroupSize)
	f.ReadAt(logs, pmemblk.BTTOffset+int64(info.LogOff))
	var found *btt.LogEntry
	for lane := uint32(0); lane < info.NFree; lane++ {
		g := logs[lane*btt.LogGroupSize:]
		e0, e1 := btt.DecodeLogEntry(g), btt.DecodeLogEntry(g[16:])
		c := e0
		if e1.Seq != 0 && (e0.Seq == 0 || [4]uint32{0, 2, 3, 1}[e0.Seq&3] == e1.Seq) {
			c = e1
		}
		if c.LBA == blk && c.NewMap == cur && c.OldMap != c.NewMap {
			if found != nil {
				t.Fatalf("two lanes name the write of block %d", blk)
			}
			found = &c
		}
	}
	if found == nil {
		t.Fatalf("no flog entry committed the last write of block %d (map %#x)", blk, cur)
	}
	old := found.OldMap
	if initial {
		if old != 0xC0000000|blk {
			t.Fatalf("the flog's old entry of a first write is %#x, not the promoted initial entry", old)
		}
		old = 0
	}
	binary.LittleEndian.PutUint32(e4[:], old)
	if _, err := f.WriteAt(e4[:], mapOff); err != nil {
		t.Fatal(err)
	}
	t.Logf("block %d: map %#x -> %#x (flog old %#x new %#x)", blk, cur, old, found.OldMap, found.NewMap)
	return cur
}

func mapEntry(t *testing.T, path string, blk uint32) uint32 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	info := btt.DecodeInfo(b[pmemblk.BTTOffset:])
	return binary.LittleEndian.Uint32(b[pmemblk.BTTOffset+int64(info.MapOff)+4*int64(blk):])
}

// An interrupted write (flog entry durable, map not updated) reads as the
// new data in nvblk and in libpmemblk, whichever library wrote it: an
// overwrite, and a block's first write (map entry still initial).
func TestInterruptedWrite(t *testing.T) {
	x := needTools(t)
	for _, writer := range []string{"libpmemblk", "nvblk"} {
		for _, first := range []bool{false, true} {
			// The interrupted write is the last one, so that it is the
			// current entry of its flog lane whatever lane it used.
			name, writes := "overwrite", []seedWrite{{1, 9}, {1, 10}, {2, 9}}
			if first {
				name, writes = "first-write", []seedWrite{{1, 10}, {2, 10}, {1, 9}}
			}
			t.Run(writer+"/"+name, func(t *testing.T) {
				interruptedWrite(t, x, writer, writes, first)
			})
		}
	}
}

type seedWrite struct {
	seed uint64
	b    int64
}

// interruptedWrite makes the writes with the writer library, undoes the
// last one's map update (block 9), and checks both libraries complete it.
func interruptedWrite(t *testing.T, x tools, writer string, writes []seedWrite, first bool) {
	const bs, blk = 4096, 9
	dir := t.TempDir()
	path := filepath.Join(dir, "pool")
	n := x.create(t, path, bs, poolSize)
	e := newExpect(bs, n)
	var p *pmemblk.Pool
	var err error
	if writer == "nvblk" {
		if p, err = pmemblk.Open(path, 0); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range writes {
		if writer == "libpmemblk" {
			x.write(t, path, w.seed, w.b)
		} else if err := p.Write(pattern(bs, w.seed, uint64(w.b)), w.b); err != nil {
			t.Fatal(err)
		}
		e.set(w.seed, w.b)
	}
	if p != nil {
		p.Close()
	}
	newEntry := undoMap(t, path, blk, first)
	for _, name := range []string{"ro", "lib"} {
		copyFile(t, path, filepath.Join(dir, name))
	}

	// nvblk read-only: the new data, nothing written.
	ro := filepath.Join(dir, "ro")
	before, _ := os.ReadFile(ro)
	p, err = pmemblk.OpenWith(ro, 0, pmemblk.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	e.verifyNvblk(t, p)
	p.Close()
	if after, _ := os.ReadFile(ro); !bytes.Equal(before, after) {
		t.Error("a read-only open wrote the roll-forward")
	}
	if out, code := nvblk(t, "check", ro); code != 4 || !strings.Contains(out, "interrupted write") {
		t.Errorf("nvblk check of the interrupted write: exit %d\n%s", code, out)
	}

	// libpmemblk completes the write too.
	e.verifyLibpmemblk(t, x, filepath.Join(dir, "lib"))
	x.pmempoolCheck(t, filepath.Join(dir, "lib"))

	// nvblk read-write completes it on media, as libpmemblk does.
	p, err = pmemblk.Open(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.verifyNvblk(t, p)
	p.Close()
	if got := mapEntry(t, path, blk); got != newEntry {
		t.Errorf("map entry after nvblk's open: %#x, want %#x", got, newEntry)
	}
	x.pmempoolCheck(t, path)
	e.verifyLibpmemblk(t, x, path)
}

// A damaged primary info block with a good backup: nvblk reads through
// the backup and never lays out a new BTT; `nvblk check --repair`
// restores the primary; libpmemblk then reads the pool correctly.
// (libpmemblk must not touch the damaged pool: it would take it for a
// pool without a layout, and its next write would lay a new BTT over the
// data.)
func TestDamagedPrimaryInfo(t *testing.T) {
	x := needTools(t)
	for _, bs := range bsizes {
		t.Run(itoa(bs), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "pool")
			n := x.create(t, path, bs, poolSize)
			e := newExpect(bs, n)
			x.write(t, path, 1, 0, 1, 64, n-1)
			x.write(t, path, 2, 1)
			x.setState(t, path, "error", 65)
			e.set(1, 0, 1, 64, n-1)
			e.set(2, 1)
			e.fail(65)

			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteAt(bytes.Repeat([]byte{0xEE}, 64), pmemblk.BTTOffset+56) // geometry fields
			f.Close()
			damaged, _ := os.ReadFile(path)

			p, err := pmemblk.Open(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			if !p.FromBackup() || !p.ReadOnly() {
				t.Errorf("from backup %v, read-only %v", p.FromBackup(), p.ReadOnly())
			}
			e.verifyNvblk(t, p)
			if err := p.Write(pattern(bs, 9, 2), 2); !errors.Is(err, pmemblk.ErrReadOnly) {
				t.Errorf("write: %v", err)
			}
			if err := p.SetError(2); !errors.Is(err, pmemblk.ErrReadOnly) {
				t.Errorf("set-error: %v", err)
			}
			p.Close()
			if out, code := nvblk(t, "read", "--lba", "1", "--count", "1", path); code != 0 || !strings.HasPrefix(out, string(e.block(1))) {
				t.Errorf("nvblk read: exit %d", code)
			}
			if out, code := nvblk(t, "check", path); code != 4 || !strings.Contains(out, "needs to be restored") {
				t.Errorf("nvblk check: exit %d\n%s", code, out)
			}
			if now, _ := os.ReadFile(path); !bytes.Equal(now, damaged) {
				t.Fatal("nvblk wrote to the damaged pool without --repair")
			}

			if out, code := nvblk(t, "check", "--repair", path); code != 1 {
				t.Fatalf("nvblk check --repair: exit %d\n%s", code, out)
			}
			if out, code := nvblk(t, "check", path); code != 0 {
				t.Errorf("nvblk check after repair: exit %d\n%s", code, out)
			}
			x.pmempoolCheck(t, path)
			e.verifyLibpmemblk(t, x, path)
			x.write(t, path, 3, 2)
			e.set(3, 2)
			p, err = pmemblk.Open(path, 0)
			if err != nil {
				t.Fatal(err)
			}
			e.verifyNvblk(t, p)
			p.Close()
		})
	}
}

// The CLI's pools: `nvblk create --format pmemblk`, `nvblk write`, then
// libpmemblk and pmempool.
func TestCLIPool(t *testing.T) {
	x := needTools(t)
	for _, bs := range bsizes {
		t.Run(itoa(bs), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "pool")
			if out, code := nvblk(t, "create", "--format", "pmemblk", "--sector-size", itoa(bs), "--size", "32M", path); code != 0 {
				t.Fatalf("create: %s", out)
			}
			x.pmempoolCheck(t, path)
			_, n := x.info(t, path)
			e := newExpect(bs, n)
			data := append(pattern(bs, 6, 11), pattern(bs, 6, 12)...)
			var out, errb bytes.Buffer
			if code := mainWithStdin(data, &out, &errb, "write", "--lba", "11", path); code != 0 {
				t.Fatalf("write: %s", errb.String())
			}
			e.set(6, 11, 12)
			x.pmempoolCheck(t, path)
			e.verifyLibpmemblk(t, x, path)
			if out, code := nvblk(t, "check", path); code != 0 {
				t.Errorf("nvblk check: %d\n%s", code, out)
			}
		})
	}
}
