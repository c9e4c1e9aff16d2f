// Package block is nvblk's sector layer: the Device interface that the
// NBD server, the CLI and Go users read and write, and the registry of
// drivers that turn a pmem.Device into one.
//
// A driver is one package that calls Register from its init function
// (the BTT does, in btt/driver.go); adding one touches neither pmem nor
// partition. Open probes the registered drivers in priority order and
// falls back to the raw driver, which exposes the bytes as sectors with
// no atomicity (like the kernel's /dev/pmem0), unless RawRefusal finds
// the marks of a damaged format on the device (refuse.go).
package block

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"

	"github.com/nvblk/nvblk/pmem"
)

// Device is a block device of fixed-size sectors. Implementations are
// safe for concurrent use.
type Device interface {
	// SectorSize is the bytes per sector of ReadSectors/WriteSectors.
	SectorSize() int
	// Sectors is the device size in sectors.
	Sectors() uint64
	// ReadSectors reads len(p)/SectorSize() sectors from lba.
	ReadSectors(p []byte, lba uint64) error
	// WriteSectors writes len(p)/SectorSize() sectors at lba. When it
	// returns nil the data is durable.
	WriteSectors(p []byte, lba uint64) error
	// ZeroSectors makes count sectors from lba read as zeros.
	ZeroSectors(lba, count uint64) error
	// Flush makes every completed write durable.
	Flush() error
	// Close releases the device (not the pmem.Device under it).
	Close() error
}

// Atomic is implemented by devices whose single-sector writes are atomic
// (after a crash a sector reads entirely old or entirely new).
type Atomic interface {
	AtomicSectors() bool
}

// ZeroMapper is implemented by devices that know, without reading the
// data, which sectors read as zeros: the BTT's zero state (trimmed or
// zeroed sectors) and, in a PMDK pool, blocks never written. The NBD
// server reports them to clients as holes (NBD_CMD_BLOCK_STATUS), so that
// copying tools can skip them.
type ZeroMapper interface {
	// ZeroRun returns the length n (1 <= n <= count) of the run of
	// sectors from lba that all read as zeros (zero true), or of which
	// none is known to (zero false). It needs count >= 1 and
	// lba+count <= Sectors().
	ZeroRun(lba, count uint64) (n uint64, zero bool, err error)
}

// FastZeroer is implemented by devices that can tell whether ZeroSectors
// is cheaper than writing zeros (a metadata update per sector, no data
// written). The NBD server fails NBD_CMD_FLAG_FAST_ZERO requests with
// ENOTSUP otherwise, so clients write zeros themselves or skip
// pre-zeroing.
type FastZeroer interface {
	ZeroIsFast() bool
}

// OpenOptions are passed to a driver's Open.
type OpenOptions struct {
	ReadOnly bool
	// ForceRaw opens the device with the raw driver, whatever probing
	// finds: the explicit way past RawRefusal.
	ForceRaw bool
	// SectorSize is used by drivers without on-media geometry (raw).
	SectorSize int
	// Logger receives the driver's notices (a BTT opened read-only from
	// a backup info block or cut short, an arena in the error state).
	// Nil discards them.
	Logger *slog.Logger
}

// Driver claims pmem devices that hold its format.
type Driver struct {
	// Name identifies the driver ("btt", "pmemblk", "raw").
	Name string
	// Priority orders probing: higher first.
	Priority int
	// Probe reports whether dev holds this driver's format, and a short
	// description ("BTT 1.1 at 0x1000"). It must not write.
	Probe func(dev pmem.Device) (ok bool, desc string)
	// Open opens dev.
	Open func(dev pmem.Device, opt OpenOptions) (Device, error)
}

var (
	mu      sync.RWMutex
	drivers []Driver
)

// Register adds a driver. It panics on a duplicate name (a programming
// error at init time).
func Register(d Driver) {
	mu.Lock()
	defer mu.Unlock()
	for _, x := range drivers {
		if x.Name == d.Name {
			panic("assertion failed: block: driver " + d.Name + " registered twice")
		}
	}
	drivers = append(drivers, d)
	sort.SliceStable(drivers, func(i, j int) bool { return drivers[i].Priority > drivers[j].Priority })
}

// Drivers lists the registered drivers in probe order.
func Drivers() []Driver {
	mu.RLock()
	defer mu.RUnlock()
	return append([]Driver(nil), drivers...)
}

// ErrNoDriver is returned by Lookup for an unknown driver name.
var ErrNoDriver = errors.New("block: no such driver")

// Lookup returns the driver named name.
func Lookup(name string) (Driver, error) {
	for _, d := range Drivers() {
		if d.Name == name {
			return d, nil
		}
	}
	return Driver{}, fmt.Errorf("%w: %q", ErrNoDriver, name)
}

// Probe returns the first driver that claims dev, or the raw driver, or,
// when RawRefusal refuses dev as raw, the Unclaimed driver (whose Open
// fails with ErrNotRaw) and the reason.
func Probe(dev pmem.Device) (Driver, string) {
	for _, d := range Drivers() {
		if d.Probe == nil {
			continue
		}
		if ok, desc := d.Probe(dev); ok {
			return d, desc
		}
	}
	if why := RawRefusal(dev); why != "" {
		return Unclaimed, why
	}
	return rawDriver, "raw"
}

// Open probes dev and opens it with the driver that claims it (with
// opt.ForceRaw, with the raw driver).
func Open(dev pmem.Device, opt OpenOptions) (Device, Driver, error) {
	d, _ := Probe(dev)
	if opt.ForceRaw {
		d = rawDriver
	}
	bd, err := d.Open(dev, opt)
	if err != nil {
		return nil, d, fmt.Errorf("%s: %w", d.Name, err)
	}
	return bd, d, nil
}
