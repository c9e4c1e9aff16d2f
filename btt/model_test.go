package btt_test

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"pgregory.net/rapid"

	"github.com/nvblk/nvblk/btt"
	"github.com/nvblk/nvblk/pmem/pmemtest"
)

// btModel is a rapid state machine: random sequences of write, read,
// zero, set-error, close/reopen and crash+recover against a model of what
// each sector holds. Every operation is durable when it returns, so a
// crash between operations must preserve the model exactly.
type btModel struct {
	dev   *pmemtest.CrashMem
	b     *btt.BTT
	ss    int
	n     uint64
	model map[uint64]secState // absent = initial zeros
	rng   *rand.Rand
}

func (m *btModel) lba(t *rapid.T) uint64 {
	// Mostly a small hot set (overwrites), sometimes anywhere.
	if rapid.Bool().Draw(t, "hot") {
		return rapid.Uint64Range(0, 7).Draw(t, "lba")
	}
	return rapid.Uint64Range(0, m.n-1).Draw(t, "lba")
}

func (m *btModel) Write(t *rapid.T) {
	lba := m.lba(t)
	gen := rapid.Uint32Range(1, 1<<30).Draw(t, "gen")
	if err := m.b.WriteSectors(sectorData(m.ss, lba, gen), lba); err != nil {
		t.Fatal(err)
	}
	m.model[lba] = secState{kind: opWrite, gen: gen}
}

func (m *btModel) Zero(t *rapid.T) {
	lba := m.lba(t)
	if err := m.b.ZeroSectors(lba, 1); err != nil {
		t.Fatal(err)
	}
	m.model[lba] = secState{kind: opZero}
}

func (m *btModel) SetError(t *rapid.T) {
	lba := m.lba(t)
	if err := m.b.SetError(lba, 1); err != nil {
		t.Fatal(err)
	}
	m.model[lba] = secState{kind: opSetError}
}

func (m *btModel) Read(t *rapid.T) {
	m.checkSector(t, m.lba(t))
}

func (m *btModel) Reopen(t *rapid.T) {
	m.b.Close()
	b, err := btt.Open(m.dev, btt.Options{Lanes: rapid.IntRange(1, 8).Draw(t, "lanes")})
	if err != nil {
		t.Fatal(err)
	}
	m.b = b
}

func (m *btModel) CrashRecover(t *rapid.T) {
	m.b.Close()
	m.dev = m.dev.Crash(m.rng)
	b, err := btt.Open(m.dev, btt.Options{Lanes: 4})
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	m.b = b
}

func (m *btModel) checkSector(t *rapid.T, lba uint64) {
	p := make([]byte, m.ss)
	err := m.b.ReadSectors(p, lba)
	want, ok := m.model[lba]
	if !ok {
		want = secState{kind: opWrite}
	}
	switch want.kind {
	case opSetError:
		if !errors.Is(err, btt.ErrIO) {
			t.Fatalf("LBA %d: want an I/O error, got %v", lba, err)
		}
	case opZero:
		if err != nil || !bytes.Equal(p, make([]byte, m.ss)) {
			t.Fatalf("LBA %d: want zeros, got err %v", lba, err)
		}
	default:
		if err != nil || !bytes.Equal(p, sectorData(m.ss, lba, want.gen)) {
			t.Fatalf("LBA %d: want gen %d, got err %v", lba, want.gen, err)
		}
	}
}

// Check is the invariant run after every action.
func (m *btModel) Check(t *rapid.T) {
	if err := btt.VerifyPermutation(m.dev); err != nil {
		t.Fatal(err)
	}
	for lba := range m.model {
		m.checkSector(t, lba)
	}
}

func TestModelStateMachine(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		lbs := rapid.SampledFrom([]uint32{512, 4096, 520}).Draw(t, "lbasize")
		dev := pmemtest.NewCrashMem(17 << 20)
		b, err := btt.Create(dev, btt.CreateOptions{LBASize: lbs, NFree: rapid.SampledFrom([]uint32{1, 3, 256}).Draw(t, "nfree")})
		if err != nil {
			t.Fatal(err)
		}
		m := &btModel{dev: dev, b: b, ss: b.SectorSize(), n: b.Sectors(), model: map[uint64]secState{},
			rng: rand.New(rand.NewPCG(rapid.Uint64().Draw(t, "seed"), 1))}
		t.Repeat(rapid.StateMachineActions(m))
	})
}
