package block

import (
	"errors"
	"fmt"
	"sync"

	"github.com/nvblk/nvblk/pmem"
)

// A device that no driver claims is exposed as raw sectors, and the first
// write through it destroys whatever format it had. So the raw fallback
// refuses a device that carries the marks of a format whose metadata is
// damaged: a namespace label naming a claim class that no driver
// accepted, or what a driver's guard recognises (the BTT registers one
// that finds an info block signature or a backup info block where they
// belong). Such a device is left alone unless the caller asks for raw
// access explicitly (OpenOptions.ForceRaw, nvblk's --force-raw).

// ErrNotRaw is returned by Open (and the Unclaimed driver) for a device
// that RawRefusal refuses as raw.
var ErrNotRaw = errors.New("not opened as raw")

// Claimed is implemented by devices whose own metadata names the
// personality that owns them: a namespace, through its label's claim
// class (btt, btt2, pfn, dax, none).
type Claimed interface {
	ClaimClass() string
}

// Unclaimed is what Probe returns for a device no driver claims and
// RawRefusal refuses as raw: its Open fails with ErrNotRaw and the reason.
var Unclaimed = Driver{
	Name:     "unclaimed",
	Priority: -2000,
	Open: func(dev pmem.Device, opt OpenOptions) (Device, error) {
		return nil, fmt.Errorf("%w: %s (use --force-raw to access the bytes anyway)", ErrNotRaw, RawRefusal(dev))
	},
}

var (
	guardMu sync.RWMutex
	guards  []func(pmem.Device) string
)

// RegisterRawGuard adds a check run by RawRefusal: fn returns why dev must
// not be exposed as raw sectors, or "". It must not write.
func RegisterRawGuard(fn func(pmem.Device) string) {
	guardMu.Lock()
	defer guardMu.Unlock()
	guards = append(guards, fn)
}

// RawRefusal says why dev, which no driver claimed, must not be used as
// raw sectors, or returns "" if it may.
func RawRefusal(dev pmem.Device) string {
	if c, ok := dev.(Claimed); ok {
		switch cc := c.ClaimClass(); cc {
		case "btt", "btt2":
			v := map[string]string{"btt": "1.1 at byte 4096", "btt2": "2.0 at byte 0"}[cc]
			return fmt.Sprintf("the namespace label names the BTT claim class (%s: a BTT %s), but no valid BTT info block or backup was found: a damaged BTT", cc, v)
		}
	}
	guardMu.RLock()
	defer guardMu.RUnlock()
	for _, g := range guards {
		if why := g(dev); why != "" {
			return why
		}
	}
	return ""
}
