package nbd

import (
	"sync/atomic"
	"time"
)

// This file keeps the server's counters: per export, requests by
// command with a latency histogram, bytes read, written and zeroed, and
// errors by errno. The request path only adds to atomic counters of its
// own connection (three or four per request, no lock, no allocation, no
// cache line shared with other connections); a connection's counters
// are added to its export's when it ends, and Server.Stats adds up the
// rest when asked (a metrics scrape).

// LatencyBounds are the upper bounds of the request latency histogram's
// buckets (a request of exactly a bound falls in its bucket); a last,
// unbounded bucket follows. A request's latency runs from the moment its
// header has been read to the moment its reply is handed to the
// connection's writer (queued or written), so it covers the device call
// and, for a WRITE, the arrival of the payload.
var LatencyBounds = [...]time.Duration{
	5 * time.Microsecond, 10 * time.Microsecond, 25 * time.Microsecond, 50 * time.Microsecond,
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond, 10 * time.Millisecond,
	25 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 250 * time.Millisecond,
	500 * time.Millisecond, time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

const numBuckets = len(LatencyBounds) + 1

// CommandNames names the commands counted, indexed like
// ExportStats.Commands: the protocol's commands 0-7 by their NBD_CMD_
// names in lower case, then "other" for unknown command numbers (which
// fail with EINVAL).
var CommandNames = [...]string{"read", "write", "disc", "flush", "trim", "cache", "write_zeroes", "block_status", "other"}

const numCommands = len(CommandNames)

// statErrnos are the errnos counted one by one; any other value is
// counted together as "other".
var statErrnos = [...]Errno{EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN}

// ErrnoName is the C name of an NBD error value ("EIO"), or "E<number>"
// for a value outside the protocol's set.
func ErrnoName(e Errno) string {
	switch e {
	case EPERM:
		return "EPERM"
	case EIO:
		return "EIO"
	case ENOMEM:
		return "ENOMEM"
	case EINVAL:
		return "EINVAL"
	case ENOSPC:
		return "ENOSPC"
	case EOVERFLOW:
		return "EOVERFLOW"
	case ENOTSUP:
		return "ENOTSUP"
	case ESHUTDOWN:
		return "ESHUTDOWN"
	}
	return "E" + itoa(uint32(e))
}

func itoa(v uint32) string {
	var b [10]byte
	i := len(b)
	for {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
		if v == 0 {
			return string(b[i:])
		}
	}
}

// statsEpoch is the origin of the request timestamps (monotonic time).
var statsEpoch = time.Now()

// nanotime is a monotonic timestamp for latencies.
func nanotime() int64 { return int64(time.Since(statsEpoch)) }

type cmdCounters struct {
	buckets [numBuckets]atomic.Uint64
	sum     atomic.Int64 // nanoseconds
}

// counters are the request counters of one connection, or of the ended
// connections of one export.
type counters struct {
	cmds                                 [numCommands]cmdCounters
	errs                                 [len(statErrnos) + 1]atomic.Uint64
	bytesRead, bytesWritten, bytesZeroed atomic.Uint64
}

// latencyBucket is the index of d's histogram bucket.
func latencyBucket(d time.Duration) int {
	for i, b := range LatencyBounds {
		if d <= b {
			return i
		}
	}
	return len(LatencyBounds)
}

// record counts one answered request: its command, latency since start
// (a nanotime value), and either its error or its bytes.
func (s *counters) record(typ uint16, errno Errno, length uint32, start int64) {
	d := time.Duration(nanotime() - start)
	cmd := &s.cmds[min(int(typ), numCommands-1)]
	cmd.buckets[latencyBucket(d)].Add(1)
	cmd.sum.Add(int64(d))
	if errno != 0 {
		i := len(statErrnos)
		for k, e := range statErrnos {
			if e == errno {
				i = k
				break
			}
		}
		s.errs[i].Add(1)
		return
	}
	switch typ {
	case cmdRead:
		s.bytesRead.Add(uint64(length))
	case cmdWrite:
		s.bytesWritten.Add(uint64(length))
	case cmdTrim, cmdWriteZeroes:
		s.bytesZeroed.Add(uint64(length))
	}
}

// addTo adds s to d.
func (s *counters) addTo(d *counters) {
	for i := range s.cmds {
		for b := range s.cmds[i].buckets {
			d.cmds[i].buckets[b].Add(s.cmds[i].buckets[b].Load())
		}
		d.cmds[i].sum.Add(s.cmds[i].sum.Load())
	}
	for i := range s.errs {
		d.errs[i].Add(s.errs[i].Load())
	}
	d.bytesRead.Add(s.bytesRead.Load())
	d.bytesWritten.Add(s.bytesWritten.Load())
	d.bytesZeroed.Add(s.bytesZeroed.Load())
}

// CommandStats counts the answered requests of one command.
type CommandStats struct {
	Command  string // a CommandNames entry
	Requests uint64 // answered requests, failed ones included (the sum of Buckets)
	// Buckets counts requests by latency: Buckets[i] for latencies up
	// to LatencyBounds[i] (and above the previous bound), the last for
	// longer ones. Not cumulative.
	Buckets [numBuckets]uint64
	Latency time.Duration // the sum of the requests' latencies
}

// ExportStats is a snapshot of one export's counters since the server
// started.
type ExportStats struct {
	ExportInfo
	Commands [numCommands]CommandStats
	// Bytes of the successful READs, WRITEs, and TRIMs and
	// WRITE_ZEROES (zeroed).
	BytesRead, BytesWritten, BytesZeroed uint64
	// Errors counts failed requests by the error sent (any command),
	// keyed by ErrnoName ("EIO"), or "other" for a value outside the
	// protocol's set; errors never sent are absent.
	Errors map[string]uint64
	// Connections is the number of connections in the transmission
	// phase on this export now.
	Connections int64
}

// ServerStats is a snapshot of the server's counters.
type ServerStats struct {
	// Exports are sorted by name.
	Exports []ExportStats
	// Connections counts the open connections, in any phase;
	// Established those in the transmission phase (on any export).
	Connections, Established int
	// Accepted counts the connections served since the start; Refused
	// those refused by Options.MaxConns or Options.MaxEstablished
	// (a subset of Accepted for the latter, not for the former).
	Accepted, Refused uint64
	// Evicted counts the handshaking connections closed to make room
	// for new ones (Options.MaxHandshakes).
	Evicted uint64
}

// Stats returns a snapshot of the counters. It allocates; it is meant
// for metrics scrapes, not for the request path.
func (s *Server) Stats() ServerStats {
	var st ServerStats
	exports := s.sortedExports()
	// Each export's ended connections plus its open ones, under mu, so
	// that a connection folding its counters into its export's (untrack)
	// is counted once.
	sum := make(map[*export]*counters, len(exports))
	for _, ex := range exports {
		sum[ex] = &counters{}
	}
	s.mu.Lock()
	for _, ex := range exports {
		ex.closed.addTo(sum[ex])
	}
	for c := range s.conns {
		if d := sum[c.admitted]; d != nil {
			c.stats.addTo(d)
		}
	}
	st.Connections, st.Established = len(s.conns), s.established
	s.mu.Unlock()
	for _, ex := range exports {
		c := sum[ex]
		es := ExportStats{ExportInfo: ex.ExportInfo, Errors: map[string]uint64{}}
		for i := range c.cmds {
			cs := &es.Commands[i]
			cs.Command = CommandNames[i]
			for b := range cs.Buckets {
				cs.Buckets[b] = c.cmds[i].buckets[b].Load()
				cs.Requests += cs.Buckets[b]
			}
			cs.Latency = time.Duration(c.cmds[i].sum.Load())
		}
		for i := range c.errs {
			if n := c.errs[i].Load(); n != 0 {
				name := "other"
				if i < len(statErrnos) {
					name = ErrnoName(statErrnos[i])
				}
				es.Errors[name] = n
			}
		}
		es.BytesRead, es.BytesWritten, es.BytesZeroed = c.bytesRead.Load(), c.bytesWritten.Load(), c.bytesZeroed.Load()
		es.Connections = ex.conns.Load()
		st.Exports = append(st.Exports, es)
	}
	st.Accepted, st.Refused, st.Evicted = s.accepted.Load(), s.refused.Load(), s.evicted.Load()
	return st
}
