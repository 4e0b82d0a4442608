package vsock

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/viovmm/vio/virtio"
)

// mux is the stream protocol's state machine: the connections, their
// credit in both directions, and what is owed to the guest. It runs on
// one goroutine (the device's serving goroutine) and never blocks: what
// touches a host socket goes through host, whose results come back as
// calls of dialed, readDone and written from that same goroutine.
//
// Credit. Each side advertises buf_alloc (its receive buffer) and fwd_cnt
// (bytes it has consumed); a sender may have at most buf_alloc bytes
// unconsumed: tx_cnt - fwd_cnt <= buf_alloc. Guest to host, the device
// advertises Config.BufAlloc and counts as consumed what was written to
// the host socket; a guest that sends beyond that is reset. Host to guest,
// the device reads from the host socket only what the guest's credit
// allows (at most Config.ReadChunk at a time), so it neither overruns the
// guest nor buffers host data the guest cannot take.
type mux struct {
	cid      uint64
	host     host
	bufAlloc uint32
	maxConns int
	chunk    int

	conns    map[connKey]*conn
	ready    []*conn  // connections owing the guest a packet, each once
	ctrl     []Header // RSTs for packets that match no connection
	nextPort uint32
	stats    *counters
}

// maxCtrl bounds the RSTs to unknown addresses waiting for a receive
// buffer; beyond it they are dropped (a guest that posts no buffers
// cannot make the device hold more).
const maxCtrl = 64

// firstLocalPort is where host ports for host-initiated connections
// start: far above the ports a guest's services listen on.
const firstLocalPort = 1 << 30

// host is the host side of the connections: sockets and goroutines.
// Every method returns at once; results come back through the mux.
type host interface {
	// dial connects to the host listener for c.key.host; the result
	// comes back as mux.dialed.
	dial(c *conn)
	// open starts I/O on c's socket. hello, if any, is written to the
	// socket before any guest data.
	open(c *conn, hello []byte)
	// read reads at most n bytes from c's socket; the result comes back
	// as mux.readDone. At most one read is outstanding per connection.
	read(c *conn, n int)
	// write queues guest data for c's socket (copying p); progress comes
	// back as mux.written.
	write(c *conn, p virtio.Buffers, off int64, n int) error
	// closeWrite shuts down the writing half of c's socket.
	closeWrite(c *conn)
	// close closes c's socket and ends its goroutines; nothing of c comes
	// back afterwards.
	close(c *conn)
}

type connKey struct{ host, guest uint32 }

type connState uint8

const (
	stDialing    connState = iota // the guest asked; connecting to PATH_<port>
	stRequesting                  // the host asked; REQUEST owed or sent
	stOpen                        // established
	stReset                       // RST owed to the guest; then forgotten
)

// conn is one stream.
type conn struct {
	key   connKey
	state connState
	h     any // the host side's own state

	// Guest to host.
	rxCnt   uint32 // payload bytes received from the guest
	fwdCnt  uint32 // of those, written to the host socket
	toldFwd uint32 // fwd_cnt in the last header sent to the guest

	// Host to guest.
	txCnt        uint32 // payload bytes sent to the guest
	peerBufAlloc uint32
	peerFwdCnt   uint32
	pending      []byte // read from the host, not yet sent
	reading      bool   // a read is outstanding

	peerShutdown uint32 // SHUTDOWN flags the guest sent
	hostEOF      bool   // the host socket's reading half ended
	sentShutdown bool   // SHUTDOWN(SEND) sent to the guest
	wroteShut    bool   // the host socket's writing half was shut

	sendRequest, sendResponse, sendCredit bool
	queued, gone                          bool
	cancel                                func() // stops a connect timer
}

// Errors a guest's packet can earn (counted, never returned to anyone).
var errProtocol = errors.New("vsock: protocol error")

func newMux(cid uint64, h host, cfg Config, stats *counters) *mux {
	return &mux{cid: cid, host: h, bufAlloc: cfg.BufAlloc, maxConns: cfg.MaxConns, chunk: cfg.ReadChunk, stats: stats,
		conns: map[connKey]*conn{}, nextPort: firstLocalPort}
}

// credit is how many bytes the guest can take on c now.
func (c *conn) credit() uint32 {
	inFlight := c.txCnt - c.peerFwdCnt
	if inFlight >= c.peerBufAlloc {
		return 0 // full, or the guest's numbers went backwards
	}
	return c.peerBufAlloc - inFlight
}

func (m *mux) markReady(c *conn) {
	if !c.queued && !c.gone {
		c.queued = true
		m.ready = append(m.ready, c)
	}
}

// reset ends c: its host socket closes now and an RST goes to the guest.
func (m *mux) reset(c *conn, why error) {
	if c.state == stReset || c.gone {
		return
	}
	if why != nil {
		m.stats.resets.Add(1)
	}
	c.state = stReset
	m.closeHost(c)
	m.markReady(c)
}

// drop forgets c without telling the guest.
func (m *mux) drop(c *conn) {
	m.closeHost(c)
	delete(m.conns, c.key)
	c.gone = true
	if c.queued {
		// Out of the ready list now, so that a guest opening and
		// resetting connections without posting receive buffers cannot
		// grow it.
		m.ready = slices.DeleteFunc(m.ready, func(x *conn) bool { return x == c })
		c.queued = false
	}
}

func (m *mux) closeHost(c *conn) {
	if c.cancel != nil {
		c.cancel()
		c.cancel = nil
	}
	c.pending = nil
	m.host.close(c)
}

// rstTo answers a packet that matches no connection with an RST.
func (m *mux) rstTo(h Header) {
	if h.Op == OpRST {
		return // never answer an RST
	}
	if len(m.ctrl) >= maxCtrl {
		m.stats.dropped.Add(1)
		return
	}
	typ := h.Type
	if typ != TypeSeqpacket {
		typ = TypeStream
	}
	m.ctrl = append(m.ctrl, Header{SrcCID: HostCID, DstCID: m.cid, SrcPort: h.DstPort, DstPort: h.SrcPort,
		Type: typ, Op: OpRST})
}

// guest handles one packet from the transmit queue: the header and the
// chain's readable buffers, header included.
func (m *mux) guest(p virtio.Buffers) {
	var hb [HeaderSize]byte
	if _, err := p.ReadAt(hb[:], 0); err != nil {
		m.stats.badPackets.Add(1)
		return // too short to answer
	}
	h := DecodeHeader(hb[:])
	if h.SrcCID != m.cid {
		// Not from this guest's address: there is nobody to answer.
		m.stats.badPackets.Add(1)
		return
	}
	if h.Type != TypeStream || h.DstCID != HostCID {
		m.stats.badPackets.Add(1)
		m.rstTo(h)
		return
	}
	key := connKey{host: h.DstPort, guest: h.SrcPort}
	c := m.conns[key]
	if c == nil {
		if h.Op == OpRequest {
			m.guestConnect(key, h)
			return
		}
		m.rstTo(h)
		return
	}
	if c.state == stReset {
		return // an RST is on its way
	}
	c.peerBufAlloc, c.peerFwdCnt = h.BufAlloc, h.FwdCnt
	switch h.Op {
	case OpResponse:
		if c.state != stRequesting || c.sendRequest {
			m.reset(c, fmt.Errorf("%w: RESPONSE without a REQUEST", errProtocol))
			return
		}
		if c.cancel != nil {
			c.cancel()
			c.cancel = nil
		}
		c.state = stOpen
		m.host.open(c, []byte(fmt.Sprintf("OK %d\n", c.key.host)))
		m.stats.opened.Add(1)
	case OpRST:
		m.drop(c)
		return
	case OpShutdown:
		if c.state != stOpen {
			m.reset(c, fmt.Errorf("%w: SHUTDOWN before the connection is open", errProtocol))
			return
		}
		c.peerShutdown |= h.Flags & shutdownBoth
		m.shutdownProgress(c)
	case OpRW:
		if err := m.guestData(c, h, p); err != nil {
			m.reset(c, err)
			return
		}
	case OpCreditUpdate:
	case OpCreditRequest:
		c.sendCredit = true
		m.markReady(c)
	default: // a second REQUEST, INVALID or an unknown op
		m.reset(c, fmt.Errorf("%w: op %d on an existing connection", errProtocol, h.Op))
		return
	}
	// Every packet carries the guest's credit: it may let data flow.
	if len(c.pending) > 0 && c.credit() > 0 {
		m.markReady(c)
	}
	m.maybeRead(c)
}

func (m *mux) guestConnect(key connKey, h Header) {
	if len(m.conns) >= m.maxConns {
		m.stats.refused.Add(1)
		m.rstTo(h)
		return
	}
	c := &conn{key: key, state: stDialing, peerBufAlloc: h.BufAlloc, peerFwdCnt: h.FwdCnt}
	m.conns[key] = c
	m.host.dial(c)
}

// guestData takes an RW packet's payload for the host socket.
func (m *mux) guestData(c *conn, h Header, p virtio.Buffers) error {
	switch {
	case c.state != stOpen:
		return fmt.Errorf("%w: data before the connection is open", errProtocol)
	case c.peerShutdown&ShutdownSend != 0:
		return fmt.Errorf("%w: data after SHUTDOWN(SEND)", errProtocol)
	case h.Len > MaxPayload:
		return fmt.Errorf("%w: %d-byte packet, at most %d", errProtocol, h.Len, MaxPayload)
	case int64(h.Len) > p.Len()-HeaderSize:
		return fmt.Errorf("%w: len %d but %d bytes of payload", errProtocol, h.Len, p.Len()-HeaderSize)
	case c.rxCnt-c.fwdCnt+h.Len > m.bufAlloc:
		return fmt.Errorf("%w: %d bytes beyond the credit given", errProtocol, c.rxCnt-c.fwdCnt+h.Len-m.bufAlloc)
	}
	if h.Len == 0 {
		return nil
	}
	if err := m.host.write(c, p, HeaderSize, int(h.Len)); err != nil {
		return err
	}
	c.rxCnt += h.Len
	m.stats.fromGuest.Add(uint64(h.Len))
	return nil
}

// shutdownProgress applies the guest's SHUTDOWN flags as far as the data
// written to the host allows.
func (m *mux) shutdownProgress(c *conn) {
	if c.peerShutdown&ShutdownRecv != 0 {
		c.pending = nil // the guest takes no more: stop reading
	}
	drained := c.rxCnt == c.fwdCnt
	if !drained {
		return
	}
	if c.peerShutdown == shutdownBoth {
		// The guest closed: everything it sent is on the host socket,
		// and the RST completes the close for it.
		m.reset(c, nil)
		return
	}
	if c.peerShutdown&ShutdownSend != 0 && !c.wroteShut {
		c.wroteShut = true
		m.host.closeWrite(c)
	}
}

// maybeRead asks the host side for data when the guest can take some.
func (m *mux) maybeRead(c *conn) {
	if c.state != stOpen || c.reading || len(c.pending) > 0 || c.hostEOF || c.peerShutdown&ShutdownRecv != 0 {
		return
	}
	cr := c.credit()
	if cr == 0 {
		return
	}
	c.reading = true
	m.host.read(c, int(min(cr, uint32(m.chunk))))
}

// hostConnect starts a host-initiated connection to guest port port on
// behalf of an accepted socket the host side already holds in h.
// It reports false if the connection is refused (too many).
func (m *mux) hostConnect(port uint32, h any, cancel func()) (*conn, bool) {
	if len(m.conns) >= m.maxConns {
		m.stats.refused.Add(1)
		return nil, false
	}
	key := connKey{host: m.nextPort, guest: port}
	for m.conns[key] != nil {
		key.host++
		if key.host < firstLocalPort {
			key.host = firstLocalPort
		}
	}
	m.nextPort = key.host + 1
	if m.nextPort < firstLocalPort {
		m.nextPort = firstLocalPort
	}
	c := &conn{key: key, state: stRequesting, h: h, sendRequest: true, cancel: cancel}
	m.conns[key] = c
	m.markReady(c)
	return c, true
}

// timedOut ends a host-initiated connection the guest never answered.
func (m *mux) timedOut(c *conn) {
	if !c.gone && c.state == stRequesting {
		m.reset(c, errors.New("vsock: the guest did not answer the connection request"))
	}
}

// dialed completes a guest-initiated connection.
func (m *mux) dialed(c *conn, err error) {
	if c.gone || c.state != stDialing {
		return
	}
	if err != nil {
		m.stats.refused.Add(1)
		m.reset(c, nil)
		return
	}
	c.state = stOpen
	c.sendResponse = true
	m.markReady(c)
	m.host.open(c, nil)
	m.stats.opened.Add(1)
	m.maybeRead(c)
}

// readDone delivers what a read of c's socket returned.
func (m *mux) readDone(c *conn, data []byte, err error) {
	c.reading = false
	if c.gone || c.state != stOpen {
		return
	}
	if len(data) > 0 && c.peerShutdown&ShutdownRecv == 0 {
		c.pending = data
		m.markReady(c)
	}
	switch {
	case errors.Is(err, io.EOF):
		c.hostEOF = true
		m.markReady(c)
	case err != nil:
		m.reset(c, err)
	default:
		m.maybeRead(c)
	}
}

// written accounts for n bytes of guest data written to c's socket.
func (m *mux) written(c *conn, n int, err error) {
	if c.gone || c.state != stOpen {
		return
	}
	c.fwdCnt += uint32(n)
	if err != nil {
		m.reset(c, err)
		return
	}
	// Tell the guest of freed space before it runs out: once it believes
	// more than half of the buffer is in use.
	if c.rxCnt-c.toldFwd > m.bufAlloc/2 && c.fwdCnt != c.toldFwd {
		c.sendCredit = true
		m.markReady(c)
	}
	m.shutdownProgress(c)
}

// hasWork reports whether c owes the guest a packet.
func (c *conn) hasWork() bool {
	switch c.state {
	case stReset:
		return true
	case stDialing:
		return false
	case stRequesting:
		return c.sendRequest
	}
	return c.sendResponse || c.sendCredit || len(c.pending) > 0 && c.credit() > 0 ||
		c.hostEOF && len(c.pending) == 0 && !c.sentShutdown
}

// owed reports whether the guest is owed a packet, dropping connections
// from the ready list that no longer owe one (their guest's credit
// shrank, say): then fill has a packet to write.
func (m *mux) owed() bool {
	for len(m.ready) > 0 && !m.ready[0].hasWork() {
		m.ready[0].queued = false
		m.ready = m.ready[1:]
	}
	return len(m.ctrl) > 0 || len(m.ready) > 0
}

// fill writes the next packet owed to the guest into w (a receive
// chain's writable buffers) and returns its length, or 0 if nothing is
// owed or w has no room for a header and a byte of data (a buffer no
// driver posts: one that could carry only headers would let data owed
// never move).
func (m *mux) fill(w virtio.Buffers) uint32 {
	if w.Len() <= HeaderSize {
		return 0
	}
	var hb [HeaderSize]byte
	if len(m.ctrl) > 0 {
		h := m.ctrl[0]
		m.ctrl = m.ctrl[1:]
		if len(m.ctrl) == 0 {
			m.ctrl = nil
		}
		h.BufAlloc = m.bufAlloc
		h.Encode(hb[:])
		w.WriteAt(hb[:], 0)
		return HeaderSize
	}
	for len(m.ready) > 0 {
		c := m.ready[0]
		m.ready = m.ready[1:]
		c.queued = false
		if c.gone || !c.hasWork() {
			continue
		}
		n := m.packet(c, w)
		if !c.gone && c.hasWork() {
			m.markReady(c) // round robin: one packet per turn
		}
		return n
	}
	m.ready = nil
	return 0
}

// packet writes c's next packet into w.
func (m *mux) packet(c *conn, w virtio.Buffers) uint32 {
	h := Header{SrcCID: HostCID, DstCID: m.cid, SrcPort: c.key.host, DstPort: c.key.guest, Type: TypeStream,
		BufAlloc: m.bufAlloc, FwdCnt: c.fwdCnt}
	var payload []byte
	room := w.Len() - HeaderSize
	switch {
	case c.state == stReset:
		h.Op = OpRST
		delete(m.conns, c.key)
		c.gone = true
	case c.state == stRequesting:
		h.Op = OpRequest
		c.sendRequest = false
	case c.sendResponse:
		h.Op = OpResponse
		c.sendResponse = false
	case len(c.pending) > 0 && c.credit() > 0:
		n := min(len(c.pending), int(c.credit()), int(min(room, MaxPayload)))
		payload = c.pending[:n]
		h.Op, h.Len = OpRW, uint32(n)
		c.pending = c.pending[n:]
		c.txCnt += uint32(n)
		m.stats.toGuest.Add(uint64(n))
	case c.hostEOF && len(c.pending) == 0 && !c.sentShutdown:
		h.Op, h.Flags = OpShutdown, ShutdownSend
		c.sentShutdown = true
	default:
		h.Op = OpCreditUpdate
		c.sendCredit = false
	}
	c.toldFwd = c.fwdCnt
	var hb [HeaderSize]byte
	h.Encode(hb[:])
	w.WriteAt(hb[:], 0)
	if len(payload) > 0 {
		w.WriteAt(payload, HeaderSize)
	}
	if h.Op == OpRW && len(c.pending) == 0 {
		c.pending = nil
		m.maybeRead(c)
	}
	return HeaderSize + uint32(len(payload))
}

// closeAll ends every connection without telling the guest (the device is
// being reset).
func (m *mux) closeAll() {
	for _, c := range m.conns {
		m.drop(c)
	}
	m.ready, m.ctrl = nil, nil
}

// check verifies the mux's invariants; tests call it.
func (m *mux) check() error {
	if len(m.conns) > m.maxConns {
		return fmt.Errorf("%d connections, at most %d", len(m.conns), m.maxConns)
	}
	if len(m.ctrl) > maxCtrl {
		return fmt.Errorf("%d control packets queued", len(m.ctrl))
	}
	if len(m.ready) > len(m.conns) {
		return fmt.Errorf("ready list of %d for %d connections", len(m.ready), len(m.conns))
	}
	seen := map[*conn]bool{}
	for _, c := range m.ready {
		if seen[c] {
			return fmt.Errorf("connection %v queued twice", c.key)
		}
		seen[c] = true
	}
	for k, c := range m.conns {
		if c.key != k || c.gone {
			return fmt.Errorf("connection %v mislaid", k)
		}
		if c.rxCnt-c.fwdCnt > m.bufAlloc {
			return fmt.Errorf("connection %v holds %d bytes of guest data, credit %d", k, c.rxCnt-c.fwdCnt, m.bufAlloc)
		}
		if len(c.pending) > m.chunk {
			return fmt.Errorf("connection %v holds %d bytes of host data", k, len(c.pending))
		}
		if c.hasWork() && !c.queued {
			return fmt.Errorf("connection %v owes a packet but is not queued", k)
		}
	}
	return nil
}
