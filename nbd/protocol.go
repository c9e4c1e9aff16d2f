package nbd

import (
	"encoding/binary"
	"fmt"
)

// Wire constants, named as in doc/proto.md of NetworkBlockDevice/nbd.
// Every integer on the wire is big-endian (network byte order).

// Magic numbers.
const (
	magicInit         uint64 = 0x4e42444d41474943 // "NBDMAGIC" (INIT_PASSWD)
	magicOption       uint64 = 0x49484156454f5054 // "IHAVEOPT", server greeting and every option request
	magicOptionReply  uint64 = 0x0003e889045565a9 // option reply header
	magicRequest      uint32 = 0x25609513         // NBD_REQUEST_MAGIC
	magicSimpleReply  uint32 = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	magicStructured   uint32 = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC
	zeroPadLen               = 124                // zeroes after the NBD_OPT_EXPORT_NAME reply
	greetingLen              = 8 + 8 + 2          // NBDMAGIC, IHAVEOPT, handshake flags
	optionHeaderLen          = 8 + 4 + 4          // IHAVEOPT, option, length
	optionReplyHdrLen        = 8 + 4 + 4 + 4      // magic, option, reply type, length
	requestLen               = 4 + 2 + 2 + 8 + 8 + 4
	simpleReplyLen           = 4 + 4 + 8
	structuredHdrLen         = 4 + 2 + 2 + 8 + 4
	offsetDataPrefix         = structuredHdrLen + 8 // chunk header + offset of NBD_REPLY_TYPE_OFFSET_DATA
)

// Handshake flags (server, 16 bits).
const (
	flagFixedNewstyle uint16 = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      uint16 = 1 << 1 // NBD_FLAG_NO_ZEROES
)

// Client flags (32 bits).
const (
	clientFixedNewstyle uint32 = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	clientNoZeroes      uint32 = 1 << 1 // NBD_FLAG_C_NO_ZEROES
	clientKnown                = clientFixedNewstyle | clientNoZeroes
)

// Transmission flags (16 bits).
const (
	FlagHasFlags        uint16 = 1 << 0  // NBD_FLAG_HAS_FLAGS
	FlagReadOnly        uint16 = 1 << 1  // NBD_FLAG_READ_ONLY
	FlagSendFlush       uint16 = 1 << 2  // NBD_FLAG_SEND_FLUSH
	FlagSendFUA         uint16 = 1 << 3  // NBD_FLAG_SEND_FUA
	FlagRotational      uint16 = 1 << 4  // NBD_FLAG_ROTATIONAL
	FlagSendTrim        uint16 = 1 << 5  // NBD_FLAG_SEND_TRIM
	FlagSendWriteZeroes uint16 = 1 << 6  // NBD_FLAG_SEND_WRITE_ZEROES
	FlagSendDF          uint16 = 1 << 7  // NBD_FLAG_SEND_DF (structured replies only)
	FlagCanMultiConn    uint16 = 1 << 8  // NBD_FLAG_CAN_MULTI_CONN
	FlagSendCache       uint16 = 1 << 10 // NBD_FLAG_SEND_CACHE
	FlagSendFastZero    uint16 = 1 << 11 // NBD_FLAG_SEND_FAST_ZERO
)

// Option types.
const (
	optExportName      uint32 = 1  // NBD_OPT_EXPORT_NAME
	optAbort           uint32 = 2  // NBD_OPT_ABORT
	optList            uint32 = 3  // NBD_OPT_LIST
	optStartTLS        uint32 = 5  // NBD_OPT_STARTTLS
	optInfo            uint32 = 6  // NBD_OPT_INFO
	optGo              uint32 = 7  // NBD_OPT_GO
	optStructuredReply uint32 = 8  // NBD_OPT_STRUCTURED_REPLY
	optListMetaContext uint32 = 9  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaContext  uint32 = 10 // NBD_OPT_SET_META_CONTEXT
)

// Option reply types.
const (
	repAck            uint32 = 1         // NBD_REP_ACK
	repServer         uint32 = 2         // NBD_REP_SERVER
	repInfo           uint32 = 3         // NBD_REP_INFO
	repMetaContext    uint32 = 4         // NBD_REP_META_CONTEXT
	repErrUnsup       uint32 = 1<<31 + 1 // NBD_REP_ERR_UNSUP
	repErrPolicy      uint32 = 1<<31 + 2 // NBD_REP_ERR_POLICY
	repErrInvalid     uint32 = 1<<31 + 3 // NBD_REP_ERR_INVALID
	repErrUnknown     uint32 = 1<<31 + 6 // NBD_REP_ERR_UNKNOWN
	repErrShutdown    uint32 = 1<<31 + 7 // NBD_REP_ERR_SHUTDOWN
	repErrBlockSizeRq uint32 = 1<<31 + 8 // NBD_REP_ERR_BLOCK_SIZE_REQD (never sent: see doc.go)
)

// Information types of NBD_OPT_INFO / NBD_OPT_GO.
const (
	infoExport      uint16 = 0 // NBD_INFO_EXPORT: size (64) + transmission flags (16)
	infoName        uint16 = 1 // NBD_INFO_NAME
	infoDescription uint16 = 2 // NBD_INFO_DESCRIPTION
	infoBlockSize   uint16 = 3 // NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum (32 each)
)

// Command types.
const (
	cmdRead        uint16 = 0 // NBD_CMD_READ
	cmdWrite       uint16 = 1 // NBD_CMD_WRITE
	cmdDisc        uint16 = 2 // NBD_CMD_DISC
	cmdFlush       uint16 = 3 // NBD_CMD_FLUSH
	cmdTrim        uint16 = 4 // NBD_CMD_TRIM
	cmdCache       uint16 = 5 // NBD_CMD_CACHE (a hint; nothing to do on memory)
	cmdWriteZeroes uint16 = 6 // NBD_CMD_WRITE_ZEROES
	cmdBlockStatus uint16 = 7 // NBD_CMD_BLOCK_STATUS (base:allocation)
)

// The one metadata context: base:allocation, with its state flags.
const (
	metaAllocation   = "base:allocation"
	metaAllocationID = 1      // its context id on every connection
	stateHole        = 1 << 0 // NBD_STATE_HOLE
	stateZero        = 1 << 1 // NBD_STATE_ZERO
)

// Command flags.
const (
	cmdFlagFUA      uint16 = 1 << 0 // NBD_CMD_FLAG_FUA
	cmdFlagNoHole   uint16 = 1 << 1 // NBD_CMD_FLAG_NO_HOLE
	cmdFlagDF       uint16 = 1 << 2 // NBD_CMD_FLAG_DF
	cmdFlagReqOne   uint16 = 1 << 3 // NBD_CMD_FLAG_REQ_ONE
	cmdFlagFastZero uint16 = 1 << 4 // NBD_CMD_FLAG_FAST_ZERO
)

// Structured reply flags and types.
const (
	replyFlagDone        uint16 = 1 << 0    // NBD_REPLY_FLAG_DONE
	replyTypeNone        uint16 = 0         // NBD_REPLY_TYPE_NONE
	replyTypeOffsetData  uint16 = 1         // NBD_REPLY_TYPE_OFFSET_DATA
	replyTypeBlockStatus uint16 = 5         // NBD_REPLY_TYPE_BLOCK_STATUS
	replyTypeError       uint16 = 1<<15 + 1 // NBD_REPLY_TYPE_ERROR
)

// Errno is an NBD error value as carried in a reply. The protocol
// restricts it to a small set, mapped from Go errors in one place
// (ErrnoOf in errors.go).
type Errno uint32

// Error values of the protocol.
const (
	EPERM     Errno = 1   // Operation not permitted (write to a read-only export)
	EIO       Errno = 5   // Input/output error
	ENOMEM    Errno = 12  // Cannot allocate memory
	EINVAL    Errno = 22  // Invalid argument (alignment, range, unknown command or flag)
	ENOSPC    Errno = 28  // No space left on device
	EOVERFLOW Errno = 75  // Value too large
	ENOTSUP   Errno = 95  // Operation not supported (a FAST_ZERO that would be slow)
	ESHUTDOWN Errno = 108 // Server is shutting down
)

func (e Errno) Error() string {
	switch e {
	case 0:
		return "nbd: success"
	case EPERM:
		return "nbd: operation not permitted"
	case EIO:
		return "nbd: input/output error"
	case ENOMEM:
		return "nbd: cannot allocate memory"
	case EINVAL:
		return "nbd: invalid argument"
	case ENOSPC:
		return "nbd: no space left on device"
	case EOVERFLOW:
		return "nbd: value too large"
	case ENOTSUP:
		return "nbd: operation not supported"
	case ESHUTDOWN:
		return "nbd: server is shutting down"
	}
	return fmt.Sprintf("nbd: error %d", uint32(e))
}

var be = binary.BigEndian

// request is one decoded transmission-phase request header. It is
// passed by value from the reader to the workers.
type request struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// decodeRequest decodes a 28-byte request header. It checks only the
// magic: everything else is validated against the export by the caller,
// so that a bad request gets an error reply instead of a disconnect.
func decodeRequest(b []byte) (request, error) {
	if len(b) < requestLen {
		return request{}, fmt.Errorf("%w: request header of %d bytes", ErrProtocol, len(b))
	}
	if m := be.Uint32(b[0:]); m != magicRequest {
		return request{}, fmt.Errorf("%w: request magic %#08x", ErrProtocol, m)
	}
	return request{
		flags:  be.Uint16(b[4:]),
		typ:    be.Uint16(b[6:]),
		handle: be.Uint64(b[8:]),
		offset: be.Uint64(b[16:]),
		length: be.Uint32(b[24:]),
	}, nil
}

// putRequest encodes r into b (requestLen bytes); used by tests and by
// the in-package client helpers.
func putRequest(b []byte, r request) {
	be.PutUint32(b[0:], magicRequest)
	be.PutUint16(b[4:], r.flags)
	be.PutUint16(b[6:], r.typ)
	be.PutUint64(b[8:], r.handle)
	be.PutUint64(b[16:], r.offset)
	be.PutUint32(b[24:], r.length)
}

// optionHeader is a decoded option request header.
type optionHeader struct {
	option uint32
	length uint32
}

func decodeOptionHeader(b []byte) (optionHeader, error) {
	if len(b) < optionHeaderLen {
		return optionHeader{}, fmt.Errorf("%w: option header of %d bytes", ErrProtocol, len(b))
	}
	if m := be.Uint64(b[0:]); m != magicOption {
		return optionHeader{}, fmt.Errorf("%w: option magic %#016x", ErrProtocol, m)
	}
	return optionHeader{option: be.Uint32(b[8:]), length: be.Uint32(b[12:])}, nil
}

// infoRequest is the decoded payload of NBD_OPT_INFO / NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16 // requested NBD_INFO_* types, in order
}

// decodeInfoRequest parses the data of NBD_OPT_INFO / NBD_OPT_GO:
// 32-bit name length, name, 16-bit count, count 16-bit info types.
// Every length is checked against len(b) before use.
func decodeInfoRequest(b []byte) (infoRequest, error) {
	name, rest, err := takeString(b, "export name")
	if err != nil {
		return infoRequest{}, err
	}
	if len(rest) < 2 {
		return infoRequest{}, fmt.Errorf("%w: option data ends before the number of information requests", ErrProtocol)
	}
	n := int(be.Uint16(rest))
	rest = rest[2:]
	if len(rest) != 2*n {
		return infoRequest{}, fmt.Errorf("%w: %d information requests but %d bytes left", ErrProtocol, n, len(rest))
	}
	r := infoRequest{name: name}
	if n > 0 {
		r.infos = make([]uint16, n)
		for i := range r.infos {
			r.infos[i] = be.Uint16(rest[2*i:])
		}
	}
	return r, nil
}

// takeString reads a 32-bit length and that many bytes (at most
// MaxStringLen) from the front of b, checking the length against b
// before use, and returns the string and what follows it.
func takeString(b []byte, what string) (string, []byte, error) {
	if len(b) < 4 {
		return "", nil, fmt.Errorf("%w: option data ends before the length of the %s", ErrProtocol, what)
	}
	n := uint64(be.Uint32(b))
	if n > uint64(len(b))-4 {
		return "", nil, fmt.Errorf("%w: %s length %d exceeds option data", ErrProtocol, what, n)
	}
	if n > MaxStringLen {
		return "", nil, fmt.Errorf("%w: %s of %d bytes (limit %d)", ErrProtocol, what, n, MaxStringLen)
	}
	return string(b[4 : 4+n]), b[4+n:], nil
}

// metaRequest is the data of NBD_OPT_LIST_META_CONTEXT and
// NBD_OPT_SET_META_CONTEXT: an export name and a list of queries.
type metaRequest struct {
	name    string
	queries []string
}

// decodeMetaRequest parses b (at most maxOptionLen bytes); every length
// is checked against the data before use, so a hostile count allocates
// nothing beyond the queries actually present.
func decodeMetaRequest(b []byte) (metaRequest, error) {
	var r metaRequest
	var err error
	if r.name, b, err = takeString(b, "export name"); err != nil {
		return r, err
	}
	if len(b) < 4 {
		return r, fmt.Errorf("%w: option data ends before the number of queries", ErrProtocol)
	}
	n := be.Uint32(b)
	b = b[4:]
	for i := uint32(0); i < n; i++ {
		var q string
		if q, b, err = takeString(b, "query"); err != nil {
			return r, err
		}
		r.queries = append(r.queries, q)
	}
	if len(b) != 0 {
		return r, fmt.Errorf("%w: %d bytes after %d queries", ErrProtocol, len(b), n)
	}
	return r, nil
}
