package nbd

import (
	"encoding/binary"
	"io"
	"sort"
	"syscall"
)

// call is one request of the client, from submission to its final reply.
// A call survives reconnects: it is re-sent, with a new cookie, on the next
// connection until it gets an answer or runs out of retries.
type call struct {
	req   request  // cookie is set at each send
	wbufs [][]byte // payload of a write
	rbufs [][]byte // destination of a read; total length req.length
	logc  []byte   // copy of a write's payload for the replay log, if kept
	done  chan struct{}
	err   error // valid once done is closed

	retries int
	sentAt  int64 // unix nanoseconds of the last send, for the watchdog

	// State of a structured reply being received; reset at each send.
	cov  coverage
	rerr error
}

func newCall(typ, flags uint16, off uint64, length uint32) *call {
	return &call{req: request{typ: typ, flags: flags, offset: off, length: length}, done: make(chan struct{})}
}

func (c *call) resetReply() {
	c.cov.reset()
	c.rerr = nil
}

// coverage records which bytes of a read the content chunks described so
// far, to reject overlaps and to notice a reply that claims success without
// covering the whole request. A hostile server could fragment it; past
// maxCoverageRanges disjoint pieces we treat the reply as a protocol error
// rather than grow without bound.
type coverage struct {
	r     [][2]uint64 // sorted, disjoint, non-adjacent [start, end)
	total uint64
}

const maxCoverageRanges = 4096

func (cv *coverage) reset() { cv.r, cv.total = cv.r[:0], 0 }

// add inserts [s, e); it fails on overlap or fragmentation.
func (cv *coverage) add(s, e uint64) error {
	// cv.r[i] is the first range that ends at or after s; it and the one
	// after it are the only candidates for touching [s, e).
	i := sort.Search(len(cv.r), func(i int) bool { return cv.r[i][1] >= s })
	j := i
	mergeLeft := i < len(cv.r) && cv.r[i][1] == s
	if mergeLeft {
		j = i + 1
	}
	if j < len(cv.r) && cv.r[j][0] < e {
		return protoErrorf("read reply chunks overlap")
	}
	mergeRight := j < len(cv.r) && cv.r[j][0] == e
	cv.total += e - s
	switch {
	case mergeLeft && mergeRight:
		cv.r[i][1] = cv.r[j][1]
		cv.r = append(cv.r[:j], cv.r[j+1:]...)
	case mergeLeft:
		cv.r[i][1] = e
	case mergeRight:
		cv.r[j][0] = s
	default:
		if len(cv.r) >= maxCoverageRanges {
			return protoErrorf("read reply fragmented into more than %d pieces", maxCoverageRanges)
		}
		cv.r = append(cv.r, [2]uint64{})
		copy(cv.r[j+1:], cv.r[j:])
		cv.r[j] = [2]uint64{s, e}
	}
	return nil
}

// replyReader decodes the server's reply stream: simple replies and
// structured chunks, interleaved in any order. Every length and offset the
// server sends is checked against the request it answers before a byte is
// stored; payload goes straight into the caller's buffers.
type replyReader struct {
	r          io.Reader
	structured bool
	// lookup finds the call a cookie belongs to (nil if none).
	lookup func(cookie uint64) *call
	// finish is called once per call, with its final result.
	finish func(cookie uint64, c *call, err error)

	scratch [structuredHeaderSize + 8]byte
	msg     []byte
}

// maxErrorChunk bounds an error chunk: the fixed fields, a 4096-byte
// message, an offset, and some slack for fields a future extension adds.
const maxErrorChunk = 4096 + 64

// next reads one reply message (a simple reply or one structured chunk).
// Any error it returns means the stream can no longer be trusted.
func (rr *replyReader) next() error {
	h := rr.scratch[:4]
	if _, err := io.ReadFull(rr.r, h); err != nil {
		return err
	}
	switch m := binary.BigEndian.Uint32(h); m {
	case magicSimple:
		return rr.simple()
	case magicStructured:
		if !rr.structured {
			return protoErrorf("structured reply without negotiation")
		}
		return rr.chunk()
	default:
		return protoErrorf("reply magic %#x", m)
	}
}

func (rr *replyReader) simple() error {
	h := rr.scratch[:12]
	if _, err := io.ReadFull(rr.r, h); err != nil {
		return err
	}
	errno := binary.BigEndian.Uint32(h)
	cookie := binary.BigEndian.Uint64(h[4:])
	c := rr.lookup(cookie)
	if c == nil {
		return protoErrorf("reply for unknown cookie %#x", cookie)
	}
	if errno != 0 {
		rr.finish(cookie, c, &RemoteError{Op: cmdName(c.req.typ), Errno: remoteErrno(errno)})
		return nil
	}
	if c.req.typ == cmdRead {
		// (A simple reply to a read after structured replies were
		// negotiated breaks the protocol, but its length is ours, so it
		// is safe to accept.)
		if err := readInto(rr.r, c.rbufs, 0, uint64(c.req.length)); err != nil {
			return err
		}
	}
	rr.finish(cookie, c, nil)
	return nil
}

func (rr *replyReader) chunk() error {
	h := rr.scratch[:16]
	if _, err := io.ReadFull(rr.r, h); err != nil {
		return err
	}
	flags := binary.BigEndian.Uint16(h)
	typ := binary.BigEndian.Uint16(h[2:])
	cookie := binary.BigEndian.Uint64(h[4:])
	length := binary.BigEndian.Uint32(h[12:])
	c := rr.lookup(cookie)
	if c == nil {
		return protoErrorf("chunk for unknown cookie %#x", cookie)
	}
	reqOff, reqLen := c.req.offset, uint64(c.req.length)
	// inRequest checks [off, off+n) against the request, without overflow.
	inRequest := func(off, n uint64) bool {
		return off >= reqOff && n <= reqLen && off-reqOff <= reqLen-n
	}
	switch {
	case typ == replyTypeNone:
		if length != 0 || flags&replyFlagDone == 0 {
			return protoErrorf("NONE chunk with length %d, flags %#x", length, flags)
		}
	case typ == replyTypeOffsetData:
		if c.req.typ != cmdRead || length < 9 {
			return protoErrorf("OFFSET_DATA chunk of %d bytes for a %s", length, cmdName(c.req.typ))
		}
		o := rr.scratch[:8]
		if _, err := io.ReadFull(rr.r, o); err != nil {
			return err
		}
		off, n := binary.BigEndian.Uint64(o), uint64(length-8)
		if !inRequest(off, n) {
			return protoErrorf("data chunk [%d,+%d) outside request [%d,+%d)", off, n, reqOff, reqLen)
		}
		if err := c.cov.add(off, off+n); err != nil {
			return err
		}
		if err := readInto(rr.r, c.rbufs, off-reqOff, n); err != nil {
			return err
		}
	case typ == replyTypeOffsetHole:
		if c.req.typ != cmdRead || length != 12 {
			return protoErrorf("OFFSET_HOLE chunk of %d bytes for a %s", length, cmdName(c.req.typ))
		}
		o := rr.scratch[:12]
		if _, err := io.ReadFull(rr.r, o); err != nil {
			return err
		}
		off, n := binary.BigEndian.Uint64(o), uint64(binary.BigEndian.Uint32(o[8:]))
		if n == 0 || !inRequest(off, n) {
			return protoErrorf("hole chunk [%d,+%d) outside request [%d,+%d)", off, n, reqOff, reqLen)
		}
		if err := c.cov.add(off, off+n); err != nil {
			return err
		}
		zeroInto(c.rbufs, off-reqOff, n)
	case typ&replyTypeErrorBit != 0:
		if length < 6 || length > maxErrorChunk {
			return protoErrorf("error chunk of %d bytes", length)
		}
		if cap(rr.msg) < int(length) {
			rr.msg = make([]byte, maxErrorChunk)
		}
		p := rr.msg[:length]
		if _, err := io.ReadFull(rr.r, p); err != nil {
			return err
		}
		errno := binary.BigEndian.Uint32(p)
		ml := uint32(binary.BigEndian.Uint16(p[4:]))
		if ml > length-6 {
			return protoErrorf("error message of %d bytes in a %d-byte chunk", ml, length)
		}
		if typ == replyTypeErrorOffset {
			if length-6-ml != 8 {
				return protoErrorf("ERROR_OFFSET chunk of %d bytes with a %d-byte message", length, ml)
			}
			if off := binary.BigEndian.Uint64(p[6+ml:]); !inRequest(off, 1) && reqLen > 0 {
				return protoErrorf("error offset %d outside request [%d,+%d)", off, reqOff, reqLen)
			}
		}
		if errno == 0 {
			errno = errInval // "MUST be nonzero"; treat it as the unknown-error value
		}
		if c.rerr == nil {
			c.rerr = &RemoteError{Op: cmdName(c.req.typ), Errno: remoteErrno(errno), Message: sanitize(p[6 : 6+ml])}
		}
	default:
		return protoErrorf("chunk type %d for a %s", typ, cmdName(c.req.typ))
	}
	if flags&replyFlagDone == 0 {
		return nil
	}
	err := c.rerr
	if err == nil && c.req.typ == cmdRead && c.cov.total != reqLen {
		return protoErrorf("read reply done after %d of %d bytes", c.cov.total, reqLen)
	}
	rr.finish(cookie, c, err)
	return nil
}

// readInto reads n bytes from r into the concatenation of bufs, starting
// at byte off of it. The caller has checked off+n against the total.
func readInto(r io.Reader, bufs [][]byte, off, n uint64) error {
	for _, b := range bufs {
		if n == 0 {
			break
		}
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			continue
		}
		k := min(uint64(len(b))-off, n)
		if _, err := io.ReadFull(r, b[off:off+k]); err != nil {
			return err
		}
		off, n = 0, n-k
	}
	if n != 0 {
		return protoErrorf("payload beyond the read buffer") // unreachable after the checks
	}
	return nil
}

func zeroInto(bufs [][]byte, off, n uint64) {
	for _, b := range bufs {
		if n == 0 {
			return
		}
		if off >= uint64(len(b)) {
			off -= uint64(len(b))
			continue
		}
		k := min(uint64(len(b))-off, n)
		clear(b[off : off+k])
		off, n = 0, n-k
	}
}

// isRemoteShutdown reports whether err is the server saying it is going away.
func isRemoteShutdown(err error) bool {
	re, ok := err.(*RemoteError)
	return ok && re.Errno == syscall.Errno(errShutdown)
}
