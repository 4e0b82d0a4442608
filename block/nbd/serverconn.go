package nbd

import (
	"bufio"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"syscall"
	"time"

	"github.com/viovmm/vio/block"
)

// serverConn is one client connection: the handshake, then a reader loop
// that decodes requests and hands each to its own goroutine.
type serverConn struct {
	s *Server
	// raw is the accepted connection: deadlines and Close go to it from
	// any goroutine. c carries the protocol: raw itself, or after
	// NBD_OPT_STARTTLS a TLS connection over raw (changed only by the
	// handshake, before transmission starts).
	raw net.Conn
	c   net.Conn
	br  *bufio.Reader
	tls bool // c is a TLS connection

	w batchWriter // replies

	// Negotiated in the handshake.
	export     *Export
	structured bool
	tflags     uint16

	budget   budget
	inflight sync.WaitGroup

	stopMu   sync.Mutex
	stopping bool
}

func newServerConn(s *Server, c net.Conn) *serverConn {
	sc := &serverConn{s: s, raw: c, c: c, br: bufio.NewReaderSize(c, 64<<10)}
	sc.w = batchWriter{c: c, onError: func(err error) {
		// The reply stream would be corrupt: drop the connection.
		if !isClosedConn(err) {
			s.logf("nbd: %v: writing reply: %v", c.RemoteAddr(), err)
		}
		c.Close()
	}}
	sc.budget.init(sc.s.maxBuffered(), sc.s.maxInFlight())
	return sc
}

// stopReading makes the reader loop end at its next read (or abort the one
// it is blocked in); requests already read still complete and are answered.
func (sc *serverConn) stopReading() {
	sc.stopMu.Lock()
	sc.stopping = true
	sc.stopMu.Unlock()
	sc.raw.SetReadDeadline(time.Unix(1, 0))
}

// setReadDeadline applies t unless the connection is being stopped, whose
// deadline in the past must stick.
func (sc *serverConn) setReadDeadline(t time.Time) {
	sc.stopMu.Lock()
	defer sc.stopMu.Unlock()
	if !sc.stopping {
		sc.raw.SetReadDeadline(t)
	}
}

func (sc *serverConn) serve() {
	defer func() { sc.c.Close() }() // the TLS connection, once there is one
	deadline := time.Now().Add(sc.s.handshakeTimeout())
	sc.raw.SetWriteDeadline(deadline)
	sc.setReadDeadline(deadline)
	ok, err := sc.handshake()
	if err != nil {
		if !errors.Is(err, io.EOF) && !isClosedConn(err) {
			sc.s.logf("nbd: %v: handshake: %v", sc.c.RemoteAddr(), err)
		}
		return
	}
	if !ok {
		return
	}
	sc.raw.SetWriteDeadline(time.Time{})
	sc.setReadDeadline(time.Time{})
	if err := sc.transmit(); err != nil && !errors.Is(err, io.EOF) && !isClosedConn(err) {
		sc.s.logf("nbd: %v: %v", sc.c.RemoteAddr(), err)
	}
	// NBD_CMD_DISC and a dropped connection alike: finish what was read
	// (the spec asks a server to handle outstanding requests), then close.
	sc.inflight.Wait()
}

func isClosedConn(err error) bool {
	var ne net.Error
	return errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || (errors.As(err, &ne) && ne.Timeout())
}

// ---- handshake ----

// maxOptionData bounds the payload of one option: the largest legitimate
// one is NBD_OPT_GO with a 4096-byte name and a handful of info requests.
const (
	maxOptionData = 16 << 10
	maxOptions    = 1024
)

// handshake runs the fixed-newstyle negotiation. It returns true when the
// client entered the transmission phase, false when it went away politely.
func (sc *serverConn) handshake() (bool, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicInit)
	binary.BigEndian.PutUint64(hello[8:], magicOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := sc.c.Write(hello[:]); err != nil {
		return false, err
	}
	var cf [4]byte
	if _, err := io.ReadFull(sc.br, cf[:]); err != nil {
		return false, err
	}
	cflags := binary.BigEndian.Uint32(cf[:])
	if cflags&^(flagCFixedNewstyle|flagCNoZeroes) != 0 {
		return false, protoErrorf("unknown client flags %#x", cflags)
	}
	fixed := cflags&flagCFixedNewstyle != 0
	noZeroes := cflags&flagCNoZeroes != 0

	data := make([]byte, 0, 512)
	for i := 0; i < maxOptions; i++ {
		var hdr [optHeaderSize]byte
		if _, err := io.ReadFull(sc.br, hdr[:]); err != nil {
			return false, err
		}
		if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOpt {
			return false, protoErrorf("option magic %#x", m)
		}
		opt := binary.BigEndian.Uint32(hdr[8:])
		n := binary.BigEndian.Uint32(hdr[12:])
		if n > maxOptionData {
			// Never buffer what a client asks blindly: skip a
			// moderately oversized option, drop an absurd one.
			if n > 1<<20 || !fixed {
				return false, protoErrorf("option %d with %d bytes of data", opt, n)
			}
			if _, err := io.CopyN(io.Discard, sc.br, int64(n)); err != nil {
				return false, err
			}
			if err := sc.optReply(opt, repErrTooBig, []byte("option data too large")); err != nil {
				return false, err
			}
			continue
		}
		if uint32(cap(data)) < n {
			data = make([]byte, n) // n <= maxOptionData
		}
		data = data[:n]
		if _, err := io.ReadFull(sc.br, data); err != nil {
			return false, err
		}
		if !fixed && opt != optExportName {
			return false, protoErrorf("option %d from a client without fixed newstyle", opt)
		}
		sc.stopMu.Lock()
		stopping := sc.stopping
		sc.stopMu.Unlock()
		if stopping {
			if opt == optAbort {
				sc.optReply(opt, repAck, nil)
				return false, nil
			}
			if opt == optExportName {
				return false, nil // cannot send an error: hard disconnect
			}
			if err := sc.optReply(opt, repErrShutdown, []byte("server shutting down")); err != nil {
				return false, err
			}
			continue
		}
		if f := sc.s.optFilter; f != nil && !f(opt) {
			if err := sc.optReply(opt, repErrUnsup, nil); err != nil {
				return false, err
			}
			continue
		}
		if sc.s.TLSConfig != nil && !sc.tls && opt != optStartTLS && opt != optAbort {
			if opt == optExportName {
				// This option cannot be refused: hang up.
				return false, errors.New("client asked for an export without starting TLS, which this server requires")
			}
			if err := sc.optReply(opt, repErrTLSReqd, []byte("this server requires TLS: send NBD_OPT_STARTTLS first")); err != nil {
				return false, err
			}
			continue
		}
		done, err := sc.option(opt, data, noZeroes)
		if err != nil || done {
			return done, err
		}
	}
	return false, protoErrorf("more than %d options", maxOptions)
}

// option handles one option; done reports entry into transmission.
func (sc *serverConn) option(opt uint32, data []byte, noZeroes bool) (done bool, err error) {
	switch opt {
	case optExportName:
		e := sc.s.lookup(string(data))
		if e == nil {
			return false, fmt.Errorf("client asked for unknown export %q", data)
		}
		sc.choose(e)
		reply := make([]byte, 10, 10+124)
		binary.BigEndian.PutUint64(reply[0:], uint64(e.Backend.Size()))
		binary.BigEndian.PutUint16(reply[8:], sc.tflags)
		if !noZeroes {
			reply = reply[:10+124]
		}
		_, err := sc.c.Write(reply)
		return err == nil, err
	case optAbort:
		// The client may not wait for the ack; an error sending it does
		// not matter.
		sc.optReply(opt, repAck, nil)
		return false, io.EOF
	case optList:
		if len(data) != 0 {
			return false, sc.optReply(opt, repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
		}
		for _, e := range sc.s.exports {
			p := make([]byte, 4, 4+len(e.Name)+len(e.Description))
			binary.BigEndian.PutUint32(p, uint32(len(e.Name)))
			p = append(append(p, e.Name...), e.Description...)
			if err := sc.optReply(opt, repServer, p); err != nil {
				return false, err
			}
		}
		return false, sc.optReply(opt, repAck, nil)
	case optStructuredReply:
		if len(data) != 0 {
			return false, sc.optReply(opt, repErrInvalid, []byte("NBD_OPT_STRUCTURED_REPLY takes no data"))
		}
		sc.structured = true
		return false, sc.optReply(opt, repAck, nil)
	case optInfo, optGo:
		return sc.infoOrGo(opt, data)
	case optListMetaContext, optSetMetaContext:
		if !sc.structured {
			return false, sc.optReply(opt, repErrInvalid, []byte("structured replies not negotiated"))
		}
		if !validMetaContextQuery(data) {
			return false, sc.optReply(opt, repErrInvalid, []byte("malformed meta context request"))
		}
		// No metadata context is offered: selecting none is allowed,
		// and clients then read everything as data.
		return false, sc.optReply(opt, repAck, nil)
	case optStartTLS:
		return false, sc.startTLS(data)
	}
	return false, sc.optReply(opt, repErrUnsup, nil)
}

// startTLS answers NBD_OPT_STARTTLS: refused without a TLS config or a
// second time, else acknowledged and followed by the TLS handshake, after
// which every byte of the connection goes through TLS.
func (sc *serverConn) startTLS(data []byte) error {
	switch {
	case sc.s.TLSConfig == nil:
		return sc.optReply(optStartTLS, repErrPolicy, []byte("TLS is not configured on this server"))
	case sc.tls:
		return sc.optReply(optStartTLS, repErrInvalid, []byte("TLS is already on"))
	case len(data) != 0:
		return sc.optReply(optStartTLS, repErrInvalid, []byte("NBD_OPT_STARTTLS takes no data"))
	}
	if err := sc.optReply(optStartTLS, repAck, nil); err != nil {
		return err
	}
	// A client waits for our ack before its TLS hello. Bytes already
	// buffered were sent in the clear after STARTTLS: honouring them as if
	// they came through TLS would let anyone on the path inject options.
	if sc.br.Buffered() != 0 {
		return protoErrorf("%d bytes sent after NBD_OPT_STARTTLS before the TLS handshake", sc.br.Buffered())
	}
	tc := tls.Server(sc.raw, sc.s.TLSConfig)
	// The handshake deadline set on raw bounds the TLS handshake too.
	if err := tc.Handshake(); err != nil {
		return fmt.Errorf("TLS handshake: %w", err)
	}
	sc.c, sc.tls = tc, true
	sc.br.Reset(tc)
	sc.w.c = tc
	// Nothing negotiated in the clear carries over (a man in the middle
	// could have chosen it).
	sc.structured = false
	return nil
}

// validMetaContextQuery checks the layout of NBD_OPT_{LIST,SET}_META_CONTEXT
// data: name length, name, query count, then length-prefixed queries, with
// nothing left over.
func validMetaContextQuery(d []byte) bool {
	if len(d) < 8 {
		return false
	}
	nl := binary.BigEndian.Uint32(d)
	if uint64(nl) > uint64(len(d)-8) {
		return false
	}
	d = d[4+nl:]
	nq := binary.BigEndian.Uint32(d)
	d = d[4:]
	for ; nq > 0; nq-- {
		if len(d) < 4 {
			return false
		}
		ql := binary.BigEndian.Uint32(d)
		if uint64(ql) > uint64(len(d)-4) {
			return false
		}
		d = d[4+ql:]
	}
	return len(d) == 0
}

func (sc *serverConn) infoOrGo(opt uint32, data []byte) (bool, error) {
	if len(data) < 6 {
		return false, sc.optReply(opt, repErrInvalid, []byte("short request"))
	}
	nl := binary.BigEndian.Uint32(data)
	if uint64(nl) > uint64(len(data)-6) {
		return false, sc.optReply(opt, repErrInvalid, []byte("name length beyond option data"))
	}
	name := string(data[4 : 4+nl])
	rest := data[4+nl:]
	nreq := int(binary.BigEndian.Uint16(rest))
	if len(rest) != 2+2*nreq {
		return false, sc.optReply(opt, repErrInvalid, []byte("information request count does not match option length"))
	}
	var wantName, wantDesc bool
	for i := 0; i < nreq; i++ {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoDescription:
			wantDesc = true
		}
	}
	e := sc.s.lookup(name)
	if e == nil {
		return false, sc.optReply(opt, repErrUnknown, []byte("no such export"))
	}
	tflags := sc.flagsFor(e)
	info := make([]byte, 12)
	binary.BigEndian.PutUint16(info[0:], infoExport)
	binary.BigEndian.PutUint64(info[2:], uint64(e.Backend.Size()))
	binary.BigEndian.PutUint16(info[10:], tflags)
	if err := sc.optReply(opt, repInfo, info); err != nil {
		return false, err
	}
	// Our constraints are the protocol's defaults, sent whether or not
	// they were asked for (allowed: the client may ignore them).
	minBS, prefBS, maxBS := sc.s.sizes()
	bs := make([]byte, 14)
	binary.BigEndian.PutUint16(bs[0:], infoBlockSize)
	binary.BigEndian.PutUint32(bs[2:], minBS)
	binary.BigEndian.PutUint32(bs[6:], prefBS)
	binary.BigEndian.PutUint32(bs[10:], maxBS)
	if err := sc.optReply(opt, repInfo, bs); err != nil {
		return false, err
	}
	if wantName {
		p := binary.BigEndian.AppendUint16(nil, infoName)
		if err := sc.optReply(opt, repInfo, append(p, e.Name...)); err != nil {
			return false, err
		}
	}
	if wantDesc && e.Description != "" {
		p := binary.BigEndian.AppendUint16(nil, infoDescription)
		if err := sc.optReply(opt, repInfo, append(p, e.Description...)); err != nil {
			return false, err
		}
	}
	if err := sc.optReply(opt, repAck, nil); err != nil {
		return false, err
	}
	if opt == optGo {
		sc.choose(e)
		return true, nil
	}
	return false, nil
}

func (sc *serverConn) flagsFor(e *Export) uint16 {
	f := uint16(flagHasFlags | flagSendFlush | flagCanMultiConn)
	// One back-end object is shared by every connection, so a flush on one
	// connection covers writes completed on any: that is CAN_MULTI_CONN.
	if e.readOnly() {
		f |= flagReadOnly
	} else {
		f |= flagSendFUA | flagSendWriteZeroes
		if _, ok := e.Backend.(block.Discarder); ok {
			f |= flagSendTrim
		}
	}
	if sc.structured {
		f |= flagSendDF // we never fragment a read reply
	}
	return f
}

func (sc *serverConn) choose(e *Export) {
	sc.export = e
	sc.tflags = sc.flagsFor(e)
}

func (sc *serverConn) optReply(opt, typ uint32, data []byte) error {
	b := make([]byte, optReplyHeaderSize, optReplyHeaderSize+len(data))
	binary.BigEndian.PutUint64(b[0:], magicOptReply)
	binary.BigEndian.PutUint32(b[8:], opt)
	binary.BigEndian.PutUint32(b[12:], typ)
	binary.BigEndian.PutUint32(b[16:], uint32(len(data)))
	_, err := sc.c.Write(append(b, data...))
	return err
}

// ---- transmission ----

func (sc *serverConn) transmit() error {
	var hdr [requestSize]byte
	for {
		if _, err := io.ReadFull(sc.br, hdr[:]); err != nil {
			return err
		}
		req, err := decodeRequest(hdr[:])
		if err != nil {
			return err
		}
		if req.typ == cmdDisc {
			return nil
		}
		var payload []byte
		if req.typ == cmdWrite {
			if _, _, maxBS := sc.s.sizes(); req.length > maxBS {
				// Skip the payload without buffering it, then refuse.
				if _, err := io.CopyN(io.Discard, sc.br, int64(req.length)); err != nil {
					return err
				}
				sc.replyError(req, errInval, "request larger than the maximum payload")
				continue
			}
			sc.budget.acquire(int64(req.length))
			payload = getBuf(int(req.length))
			if _, err := io.ReadFull(sc.br, payload); err != nil {
				putBuf(payload)
				sc.budget.release(int64(req.length))
				return err
			}
		} else {
			sc.budget.acquire(sc.cost(req))
		}
		if errno, msg := sc.check(req); errno != 0 {
			if payload != nil {
				putBuf(payload)
			}
			sc.budget.release(sc.cost(req))
			sc.replyError(req, errno, msg)
			continue
		}
		sc.inflight.Add(1)
		go func() {
			defer sc.inflight.Done()
			defer sc.budget.release(sc.cost(req))
			sc.handle(req, payload)
		}()
	}
}

// cost is what a request counts against the connection's buffer budget.
func (sc *serverConn) cost(req request) int64 {
	if _, _, maxBS := sc.s.sizes(); (req.typ == cmdRead || req.typ == cmdWrite) && req.length <= maxBS {
		return int64(req.length)
	}
	return 0
}

// check validates a request before any work is done for it. It returns the
// protocol error value to answer with, or 0.
func (sc *serverConn) check(req request) (uint32, string) {
	allowed := uint16(cmdFlagFUA) // valid on every command once SEND_FUA is out
	switch req.typ {
	case cmdRead:
		if sc.structured {
			allowed |= cmdFlagDF
		}
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole
	case cmdWrite, cmdFlush, cmdTrim:
	default:
		return errInval, "unsupported command"
	}
	if req.flags&^allowed != 0 {
		return errInval, "unsupported command flags"
	}
	writing := req.typ == cmdWrite || req.typ == cmdTrim || req.typ == cmdWriteZeroes
	if writing && sc.tflags&flagReadOnly != 0 {
		return errPerm, "export is read-only"
	}
	if req.typ == cmdFlush {
		return 0, ""
	}
	minBS, _, maxBS := sc.s.sizes()
	if (req.typ == cmdRead || req.typ == cmdWrite) && req.length > maxBS {
		if req.typ == cmdRead && sc.structured {
			return errOverflow, "read larger than the maximum payload"
		}
		return errInval, "request larger than the maximum payload"
	}
	if req.offset%uint64(minBS) != 0 || req.length%minBS != 0 {
		return errInval, "request not aligned to the minimum block size"
	}
	size := uint64(sc.export.Backend.Size())
	if req.offset > size || uint64(req.length) > size-req.offset {
		if req.typ == cmdWrite || req.typ == cmdWriteZeroes {
			return errNoSpc, "request beyond the end of the export"
		}
		return errInval, "request beyond the end of the export"
	}
	return 0, ""
}

// handle performs one validated request and sends its reply.
func (sc *serverConn) handle(req request, payload []byte) {
	b := sc.export.Backend
	off, n := int64(req.offset), int64(req.length)
	var err error
	switch req.typ {
	case cmdRead:
		sc.read(req)
		return
	case cmdWrite:
		_, err = b.WriteAt(payload, off)
		putBuf(payload)
	case cmdFlush:
		err = b.Flush()
	case cmdTrim:
		if d, ok := b.(block.Discarder); ok && n > 0 {
			err = d.Discard(off, n)
		}
	case cmdWriteZeroes:
		err = writeZeroes(b, off, n, req.flags&cmdFlagNoHole == 0)
	}
	if err == nil && req.flags&cmdFlagFUA != 0 && req.typ != cmdFlush {
		err = b.Flush()
	}
	if err != nil {
		sc.replyError(req, errnoFor(err), cmdName(req.typ)+" failed")
		return
	}
	var r [simpleReplySize]byte
	putSimpleReply(r[:], 0, req.cookie)
	sc.send(r[:])
}

// zeroes is a shared source of zero bytes for back-ends without ZeroWriter.
var zeroes = make([]byte, 1<<20)

func writeZeroes(b block.Backend, off, n int64, unmap bool) error {
	if n == 0 {
		return nil
	}
	if z, ok := b.(block.ZeroWriter); ok {
		return z.WriteZeroes(off, n, unmap)
	}
	for n > 0 {
		k := min(n, int64(len(zeroes)))
		if _, err := b.WriteAt(zeroes[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

func (sc *serverConn) read(req request) {
	buf := getBuf(int(req.length))
	defer putBuf(buf)
	n, err := sc.export.Backend.ReadAt(buf, int64(req.offset))
	if err == io.EOF && n == len(buf) {
		err = nil
	}
	if err == nil && n != len(buf) {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		sc.replyError(req, errnoFor(err), "read failed")
		return
	}
	if !sc.structured {
		var r [simpleReplySize]byte
		putSimpleReply(r[:], 0, req.cookie)
		sc.send(r[:], buf)
		return
	}
	if req.length > 0 && allZero(buf) {
		// A hole costs 32 bytes on the wire instead of the data.
		var r [structuredHeaderSize + 12]byte
		putStructuredHeader(r[:], replyFlagDone, replyTypeOffsetHole, req.cookie, 12)
		binary.BigEndian.PutUint64(r[structuredHeaderSize:], req.offset)
		binary.BigEndian.PutUint32(r[structuredHeaderSize+8:], req.length)
		sc.send(r[:])
		return
	}
	if req.length == 0 {
		// A chunk must describe at least one byte: answer an empty read
		// with NONE.
		var r [structuredHeaderSize]byte
		putStructuredHeader(r[:], replyFlagDone, replyTypeNone, req.cookie, 0)
		sc.send(r[:])
		return
	}
	var r [structuredHeaderSize + 8]byte
	putStructuredHeader(r[:], replyFlagDone, replyTypeOffsetData, req.cookie, 8+req.length)
	binary.BigEndian.PutUint64(r[structuredHeaderSize:], req.offset)
	sc.send(r[:], buf)
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.NativeEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func (sc *serverConn) replyError(req request, errno uint32, msg string) {
	if !sc.structured {
		var r [simpleReplySize]byte
		putSimpleReply(r[:], errno, req.cookie)
		sc.send(r[:])
		return
	}
	p := make([]byte, structuredHeaderSize+6+len(msg))
	putStructuredHeader(p, replyFlagDone, replyTypeError, req.cookie, uint32(6+len(msg)))
	binary.BigEndian.PutUint32(p[structuredHeaderSize:], errno)
	binary.BigEndian.PutUint16(p[structuredHeaderSize+4:], uint16(len(msg)))
	copy(p[structuredHeaderSize+6:], msg)
	sc.send(p)
}

// send writes one reply atomically; its buffers may be reused on return.
func (sc *serverConn) send(bufs ...[]byte) { sc.w.write(bufs...) }

// budget is a counting semaphore over bytes and requests: the reader waits
// for room before it buffers a request, so a client cannot make us hold
// more than max bytes however many requests it pipelines.
type budget struct {
	mu    sync.Mutex
	cond  sync.Cond
	avail int64
	max   int64
	slots int
}

func (b *budget) init(bytes int64, slots int) {
	b.cond.L = &b.mu
	b.avail, b.max, b.slots = bytes, bytes, slots
}

func (b *budget) acquire(n int64) {
	n = min(n, b.max)
	b.mu.Lock()
	for b.avail < n || b.slots == 0 {
		b.cond.Wait()
	}
	b.avail -= n
	b.slots--
	b.mu.Unlock()
}

func (b *budget) release(n int64) {
	n = min(n, b.max)
	b.mu.Lock()
	b.avail += n
	b.slots++
	b.mu.Unlock()
	b.cond.Broadcast()
}
