// Package nbd is nvblk's Network Block Device server: it serves any
// block.Device (a BTT, a raw device, later a GPT partition) to NBD
// clients such as qemu, libnbd (nbdinfo, nbdcopy, nbdfuse, nbdsh), fio's
// nbd engine and the Linux kernel's nbd-client.
//
// The authority for every wire format and rule is doc/proto.md of
// NetworkBlockDevice/nbd; constants in protocol.go carry its names.
//
//	srv := nbd.NewServer(nbd.Options{})
//	srv.AddExport("", "my disk", dev, false)   // "" is the default export
//	ln, _ := net.Listen("tcp", "127.0.0.1:10809")
//	go srv.Serve(ln)
//	...
//	srv.Shutdown(ctx) // stop, drain in-flight requests, Flush every export
//
// # Handshake
//
// Fixed newstyle only (oldstyle is obsolete). The server sets
// NBD_FLAG_FIXED_NEWSTYLE and NBD_FLAG_NO_ZEROES and understands these
// options:
//
//	NBD_OPT_EXPORT_NAME       enter transmission (unknown name: close, as the spec says)
//	NBD_OPT_INFO, NBD_OPT_GO  NBD_INFO_EXPORT, NAME, DESCRIPTION and, always,
//	                          NBD_INFO_BLOCK_SIZE; unknown name: NBD_REP_ERR_UNKNOWN
//	NBD_OPT_LIST              one NBD_REP_SERVER (name + description) per export
//	NBD_OPT_STRUCTURED_REPLY  structured replies for the rest of the session
//	NBD_OPT_LIST_META_CONTEXT,
//	NBD_OPT_SET_META_CONTEXT  one context, base:allocation (matched by its name
//	                          or by "base:"; LIST without queries lists it);
//	                          needs structured replies (else NBD_REP_ERR_INVALID);
//	                          a selection applies to the export it names only
//	NBD_OPT_ABORT             NBD_REP_ACK, then close
//	NBD_OPT_STARTTLS          with Options.TLS: NBD_REP_ACK, then the TLS
//	                          handshake (see Security); without: NBD_REP_ERR_UNSUP
//
// Everything else (EXTENDED_HEADERS, unknown numbers) gets
// NBD_REP_ERR_UNSUP, so clients fall back. NBD_REP_ERR_BLOCK_SIZE_REQD
// is never sent: clients that use NBD_OPT_EXPORT_NAME are served, and
// their misaligned requests fail with EINVAL.
//
// # Block sizes
//
// NBD_INFO_BLOCK_SIZE advertises minimum = the device's sector size (the
// BTT's atomic unit), preferred = max(4096, sector size) and maximum =
// Options.MaxBlockSize (32 MiB by default) rounded down to a whole
// number of sectors. The export size is sectors × sector size.
//
// # Transmission
//
// Flags: HAS_FLAGS, SEND_FLUSH, SEND_CACHE, CAN_MULTI_CONN, and either READ_ONLY or
// SEND_FUA + SEND_TRIM + SEND_WRITE_ZEROES + SEND_FAST_ZERO; SEND_DF once structured
// replies are on (a read is always answered with a single chunk).
//
//	READ           device ReadSectors; with structured replies one
//	               NBD_REPLY_TYPE_OFFSET_DATA chunk with NBD_REPLY_FLAG_DONE
//	WRITE          device WriteSectors
//	TRIM,          device ZeroSectors: the BTT zero state, a map flag. No
//	WRITE_ZEROES   block is freed, so NBD_CMD_FLAG_NO_HOLE is honoured as is.
//	FLUSH, FUA     device Flush (see Durability)
//	BLOCK_STATUS   base:allocation: runs of sectors the device knows read
//	               as zeros (block.ZeroMapper: the BTT's zero state, blocks
//	               of a PMDK pool never written, never-written sectors of
//	               a Linux BTT whose data blocks are holes of a sparse
//	               image file) are HOLE|ZERO, the rest 0;
//	               at most 256 extents and 2^20 sectors per reply; REQ_ONE
//	               honoured. Without a selected context: EINVAL.
//	DISC           finish the requests in flight, then close
//
// WRITE_ZEROES with FAST_ZERO fails at once with ENOTSUP unless the
// device zeroes by metadata (block.FastZeroer: the BTT with sectors of a
// page or more, PMDK pools); it is advertised on every writable export.
// CACHE is advertised and answered at once (after the range checks): the
// device is memory, there is nothing to prefetch.
//
// # How a connection runs
//
// Each connection has Options.Workers worker goroutines in a
// leader/follower arrangement: one at a time holds the reader role. The
// reader runs small requests (payload up to 64 KiB) itself, keeping the
// role, so no goroutine is woken per request; a watchdog hands the role to
// another worker when a request takes longer than 200-400 µs, so a slow
// request holds back nothing. Larger requests and FLUSH are handed over
// at once: the reader lets go of the role and runs them while another
// worker reads on. At most Options.MaxInFlight requests and
// Options.MaxInFlightBytes payload bytes are in flight per connection.
//
// Replies may leave out of order and are combined: the reader holds back
// the replies of the requests it ran while it keeps reading requests
// already received, and a worker that finds a write in progress queues
// its reply for that writer, so a burst of requests is answered with one
// writev. Held replies are written as soon as the reader stops reading
// for any reason: before it waits for the client or for the in-flight
// budget, when it hands itself a FLUSH or large request, and when the
// watchdog hands its role on. Replies without data (writes, trims) are
// written two at a time instead while the client keeps few requests in
// flight and the server has few connections, so that a shallow client
// can send its next requests while the reader finishes the burst.
// While the client keeps a connection busy, its reader polls the socket
// for up to Options.Poll (20 µs) before its goroutine sleeps (only when
// the server has few connections), which saves a sleep and a wake-up
// per request. (ZeroSectors on a BTT with
// sectors smaller than a page writes zero sectors instead of setting the
// zero state: see btt.BTT.ZeroSectors.) Read and write buffers come from
// size-class pools with room for the reply header in front, so the
// steady-state data path does not allocate.
//
// # Durability
//
// A block.Device write is durable when WriteSectors returns (the BTT's
// contract: data block, log and map entry are each persisted before it
// returns; ZeroSectors likewise). A reply is sent only after the device
// call returns, so every acknowledged WRITE, TRIM and WRITE_ZEROES is
// already on stable media. NBD_CMD_FLUSH and NBD_CMD_FLAG_FUA therefore
// only call Device.Flush, which for the BTT drains the device. Because
// the state is device-global, a flush on one connection covers writes
// acknowledged on every other one: this is what NBD_FLAG_CAN_MULTI_CONN
// promises. Shutdown flushes every writable export after the last
// connection ends.
//
// # Errors
//
// Request errors are mapped in one place, ErrnoOf: out of range or
// misaligned → EINVAL, read-only → EPERM, anything else → EIO; unknown
// commands and flags → EINVAL. A failed request is answered with its
// error (with a message in a structured error chunk when negotiated) and
// the connection carries on. Only violations that make the byte stream
// impossible to follow end a connection: a wrong magic, a truncated
// message, unknown client flags, an option longer than 64 KiB, more than
// 1024 options, a handshake longer than Options.HandshakeTimeout, or a
// WRITE whose payload exceeds the advertised maximum (the protocol
// allows a hard disconnect for those). Every allocation is bounded by a
// value validated first. A connection's failure, or a panic while
// serving it, never stops the server or other connections.
//
// # Connections and counters
//
// Options.MaxConns bounds the open connections in any phase (more are
// closed before the greeting); Options.MaxEstablished bounds the
// established ones, those in the transmission phase: NBD_OPT_GO past it
// is answered NBD_REP_ERR_POLICY with a message ("too many
// connections..."), NBD_OPT_EXPORT_NAME past it is disconnected, and the
// established connections carry on. Options.OnIdle reports the end of
// the last connection.
//
// Server.Stats returns per-export counters: answered requests by
// command with a latency histogram (LatencyBounds), bytes read, written
// and zeroed, failed requests by errno, and established connections.
// The request path only adds to atomic counters (no lock, no
// allocation); the snapshot is taken when asked.
//
// # Security
//
// Without Options.TLS there is no encryption and no authentication:
// listen on 127.0.0.1 or a unix socket (the nvblk CLI does so by
// default). With it the server requires TLS (the "forced" mode of the
// protocol's TLS support): before NBD_OPT_STARTTLS every option but
// NBD_OPT_ABORT is answered NBD_REP_ERR_TLS_REQD (NBD_OPT_EXPORT_NAME,
// which cannot carry an error, is disconnected); a client that sends
// anything after NBD_OPT_STARTTLS before the TLS handshake is
// disconnected, and the plaintext reader and the options negotiated
// before the upgrade are dropped (nbdkit's CVE-2021-3716). The TLS
// handshake runs under HandshakeTimeout, and a connection is
// established (MaxEstablished) only by an NBD_OPT_GO after it. Client
// certificates are checked as the tls.Config says; Options.Authorize
// can further limit each export to some clients.
package nbd
