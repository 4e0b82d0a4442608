package vhostuser

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
)

// DefaultTimeout bounds each request/reply exchange when Dial is given 0.
const DefaultTimeout = 5 * time.Second

// Frontend is the VMM side of one vhost-user connection. Its methods are
// safe for concurrent use; exchanges are serialized, as the protocol
// requires (a reply answers the last request).
type Frontend struct {
	mu       sync.Mutex
	conn     *Conn
	timeout  time.Duration
	offered  uint64 // GET_FEATURES
	acked    uint64 // SET_FEATURES
	offeredP uint64 // GET_PROTOCOL_FEATURES
	protocol uint64 // negotiated protocol features
	table    []MemoryRegion
	broken   error // set once the stream is out of step
}

// Dial connects to a back-end listening on the UNIX socket at path. Every
// exchange must finish within timeout (0 means DefaultTimeout).
func Dial(path string, timeout time.Duration) (*Frontend, error) {
	c, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhostuser: connecting to back-end socket %s: %w", path, err)
	}
	return NewFrontend(c, timeout), nil
}

// NewFrontend drives a back-end over an already connected socket (one end
// of a socketpair, or a connection a back-end made to our listener).
func NewFrontend(c *net.UnixConn, timeout time.Duration) *Frontend {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Frontend{conn: NewConn(c), timeout: timeout}
}

// Close closes the connection; the back-end then stops all rings.
func (f *Frontend) Close() error { return f.conn.Close() }

// ProtocolFeatures returns the negotiated protocol features.
func (f *Frontend) ProtocolFeatures() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.protocol
}

// call sends req and, when the request has a reply or REPLY_ACK is on,
// reads and checks the reply. It returns the reply's payload (nil for an
// acknowledged request without one).
func (f *Frontend) call(req Request, payload []byte, fds []int, hasReply bool) ([]byte, error) {
	p, replyFDs, err := f.callFDs(req, payload, fds, hasReply)
	closeFDs(replyFDs) // ReadMessage allows them only where expected; belt and braces
	return p, err
}

// callFDs is call that also returns the descriptors the reply carried
// (only GET_INFLIGHT_FD's may carry one), for the caller to close.
func (f *Frontend) callFDs(req Request, payload []byte, fds []int, hasReply bool) ([]byte, []int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.broken != nil {
		return nil, nil, f.broken
	}
	h := Header{Request: req, Flags: Version}
	ack := !hasReply && f.protocol&ProtocolReplyAck != 0
	if ack {
		h.Flags |= FlagNeedReply
	}
	if err := f.conn.SetDeadline(time.Now().Add(f.timeout)); err != nil {
		return nil, nil, err
	}
	if err := f.conn.WriteMessage(h, payload, fds); err != nil {
		f.broken = err
		return nil, nil, err
	}
	if !hasReply && !ack {
		return nil, nil, nil
	}
	m, err := f.conn.ReadMessage()
	if err != nil {
		f.broken = fmt.Errorf("vhostuser: waiting for the %v reply: %w", req, err)
		return nil, nil, f.broken
	}
	if m.Flags != Version|FlagReply || m.Request != req {
		m.Close()
		f.broken = fmt.Errorf("%w: sent %v, got %v with flags %#x", ErrMalformed, req, m.Request, m.Flags)
		return nil, nil, f.broken
	}
	if ack {
		m.Close()
		v, err := ParseU64(m.Payload)
		if err != nil {
			f.broken = err
			return nil, nil, err
		}
		if v != 0 {
			return nil, nil, fmt.Errorf("%w: %v status %#x", ErrFailed, req, v)
		}
		return nil, nil, nil
	}
	return m.Payload, m.FDs, nil
}

func (f *Frontend) getU64(req Request) (uint64, error) {
	p, err := f.call(req, nil, nil, true)
	if err != nil {
		return 0, err
	}
	return ParseU64(p)
}

// SetOwner claims the back-end for this connection; it comes first.
func (f *Frontend) SetOwner() error {
	_, err := f.call(SetOwner, nil, nil, false)
	return err
}

// GetFeatures returns the virtio features the back-end offers, with
// FProtocolFeatures when it speaks protocol features.
func (f *Frontend) GetFeatures() (uint64, error) {
	v, err := f.getU64(GetFeatures)
	if err == nil {
		f.mu.Lock()
		f.offered = v
		f.mu.Unlock()
	}
	return v, err
}

// SetFeatures acknowledges features, which must be a subset of what
// GetFeatures offered. Include FProtocolFeatures to keep protocol features
// on: rings then start disabled until SetVringEnable.
func (f *Frontend) SetFeatures(features uint64) error {
	f.mu.Lock()
	offered := f.offered
	f.mu.Unlock()
	if features&^offered != 0 {
		return fmt.Errorf("vhostuser: features %#x were not offered by the back-end (it offers %#x)", features&^offered, offered)
	}
	if _, err := f.call(SetFeatures, U64(features), nil, false); err != nil {
		return err
	}
	f.mu.Lock()
	f.acked = features
	f.mu.Unlock()
	return nil
}

// GetProtocolFeatures returns the protocol features the back-end offers.
// It needs FProtocolFeatures in GetFeatures' answer.
func (f *Frontend) GetProtocolFeatures() (uint64, error) {
	f.mu.Lock()
	offered := f.offered
	f.mu.Unlock()
	if offered&FProtocolFeatures == 0 {
		return 0, fmt.Errorf("%w: back-end does not offer protocol features", ErrUnsupported)
	}
	v, err := f.getU64(GetProtocolFeatures)
	if err == nil {
		f.mu.Lock()
		f.offeredP = v
		f.mu.Unlock()
	}
	return v, err
}

// SetProtocolFeatures enables protocol features, which must be a subset of
// what GetProtocolFeatures offered. Only MQ, LOG_SHMFD, REPLY_ACK, CONFIG
// and INFLIGHT_SHMFD are implemented here; asking for others is an
// error. REPLY_ACK applies from the next request on.
func (f *Frontend) SetProtocolFeatures(features uint64) error {
	if features&^uint64(protocolFeaturesImplemented) != 0 {
		return fmt.Errorf("%w: protocol features %#x", ErrUnsupported, features&^uint64(protocolFeaturesImplemented))
	}
	f.mu.Lock()
	offered := f.offeredP
	f.mu.Unlock()
	if features&^offered != 0 {
		return fmt.Errorf("vhostuser: protocol features %#x were not offered by the back-end (it offers %#x)", features&^offered, offered)
	}
	if _, err := f.call(SetProtocolFeatures, U64(features), nil, false); err != nil {
		return err
	}
	f.mu.Lock()
	f.protocol = features
	f.mu.Unlock()
	return nil
}

// Negotiate runs the usual opening: SET_OWNER, GET_FEATURES, then, when
// offered, GET/SET_PROTOCOL_FEATURES with wantProto limited to what both
// sides implement, then SET_FEATURES with want limited to the offer (plus
// FProtocolFeatures when offered). It returns what was agreed.
func (f *Frontend) Negotiate(want, wantProto uint64) (features, protocol uint64, err error) {
	if err := f.SetOwner(); err != nil {
		return 0, 0, err
	}
	offered, err := f.GetFeatures()
	if err != nil {
		return 0, 0, err
	}
	features = want & offered
	if offered&FProtocolFeatures != 0 {
		features |= FProtocolFeatures
		po, err := f.GetProtocolFeatures()
		if err != nil {
			return 0, 0, err
		}
		protocol = wantProto & po & protocolFeaturesImplemented
		if err := f.SetProtocolFeatures(protocol); err != nil {
			return 0, 0, err
		}
	}
	if err := f.SetFeatures(features); err != nil {
		return 0, 0, err
	}
	return features, protocol, nil
}

func (f *Frontend) need(p uint64, what string) error {
	if f.ProtocolFeatures()&p == 0 {
		return fmt.Errorf("%w: %s needs a protocol feature that was not negotiated", ErrUnsupported, what)
	}
	return nil
}

// GetQueueNum returns the most queues the back-end supports (needs MQ).
func (f *Frontend) GetQueueNum() (uint64, error) {
	if err := f.need(ProtocolMQ, "GET_QUEUE_NUM"); err != nil {
		return 0, err
	}
	n, err := f.getU64(GetQueueNum)
	if err == nil && (n == 0 || n > MaxVrings) {
		return 0, fmt.Errorf("%w: back-end reports %d queues", ErrMalformed, n)
	}
	return n, err
}

// GetConfig reads size bytes of the device's configuration space from
// offset (needs CONFIG). The reply must describe the same window.
func (f *Frontend) GetConfig(offset, size uint32) ([]byte, error) {
	if err := f.need(ProtocolConfig, "GET_CONFIG"); err != nil {
		return nil, err
	}
	if size == 0 || uint64(offset)+uint64(size) > MaxConfigSize {
		return nil, fmt.Errorf("vhostuser: config window %d+%d is outside 1..%d bytes", offset, size, MaxConfigSize)
	}
	p, err := f.call(GetConfig, Config{Offset: offset, Data: make([]byte, size)}.Marshal(), nil, true)
	if err != nil {
		return nil, err
	}
	if len(p) == 0 {
		return nil, fmt.Errorf("%w: GET_CONFIG %d+%d", ErrFailed, offset, size)
	}
	c, err := ParseConfig(p)
	if err != nil {
		return nil, err
	}
	if c.Offset != offset || uint32(len(c.Data)) != size {
		return nil, fmt.Errorf("%w: asked config %d+%d, got %d+%d", ErrMalformed, offset, size, c.Offset, len(c.Data))
	}
	return c.Data, nil
}

// SetMemTable shares mem's RAM with the back-end. mem must be file-backed
// and shared (memory.Options{Backing: memory.Memfd}), with at most
// MaxRegions regions. The table is kept to translate ring addresses for
// SetVringAddrGPA.
func (f *Frontend) SetMemTable(mem *memory.Memory) error {
	regs := mem.Regions()
	if len(regs) == 0 || len(regs) > MaxRegions {
		return fmt.Errorf("vhostuser: guest RAM has %d regions; vhost-user takes 1 to %d", len(regs), MaxRegions)
	}
	var t MemoryTable
	var fds []int
	for i := range regs {
		r := &regs[i]
		fd, off, ok := r.File()
		if !ok {
			return fmt.Errorf("vhostuser: guest RAM at %#x is not shareable; allocate it with the memfd backing (shared=on)", r.GPA)
		}
		t.Regions = append(t.Regions, MemoryRegion{
			GuestAddr: r.GPA, Size: r.Size(), UserAddr: uint64(r.HostAddr()), MmapOffset: off,
		})
		fds = append(fds, fd)
	}
	if _, err := f.call(SetMemTable, t.Marshal(), fds, false); err != nil {
		return err
	}
	f.mu.Lock()
	f.table = t.Regions
	f.mu.Unlock()
	return nil
}

// userAddr translates [gpa, gpa+n) to the front-end address the memory
// table gave for it.
func (f *Frontend) userAddr(gpa, n uint64) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.table {
		if gpa >= r.GuestAddr && gpa-r.GuestAddr <= r.Size && n <= r.Size-(gpa-r.GuestAddr) {
			return r.UserAddr + (gpa - r.GuestAddr), nil
		}
	}
	return 0, fmt.Errorf("vhostuser: ring at gpa %#x (+%d) is not in the memory table", gpa, n)
}

func checkIndex(i uint32) error {
	if i >= MaxVrings {
		return fmt.Errorf("vhostuser: vring index %d out of range (0..%d)", i, MaxVrings-1)
	}
	return nil
}

func (f *Frontend) vringState(req Request, i, num uint32) error {
	if err := checkIndex(i); err != nil {
		return err
	}
	_, err := f.call(req, VringState{Index: i, Num: num}.Marshal(), nil, false)
	return err
}

// SetVringNum sets queue i's size.
func (f *Frontend) SetVringNum(i uint32, size uint16) error {
	if size == 0 || size&(size-1) != 0 || size > virtio.MaxQueueSize {
		return fmt.Errorf("vhostuser: queue size %d is not a power of two up to %d", size, virtio.MaxQueueSize)
	}
	return f.vringState(SetVringNum, i, uint32(size))
}

// SetVringBase sets the avail index queue i resumes from.
func (f *Frontend) SetVringBase(i uint32, base uint16) error {
	return f.vringState(SetVringBase, i, uint32(base))
}

// SetVringEnable enables or disables queue i (with FProtocolFeatures,
// rings start disabled).
func (f *Frontend) SetVringEnable(i uint32, on bool) error {
	f.mu.Lock()
	acked := f.acked
	f.mu.Unlock()
	if acked&FProtocolFeatures == 0 {
		return fmt.Errorf("%w: SET_VRING_ENABLE needs FProtocolFeatures acknowledged with SET_FEATURES", ErrUnsupported)
	}
	var v uint32
	if on {
		v = 1
	}
	return f.vringState(SetVringEnable, i, v)
}

// SetVringAddr sends ring addresses already in front-end address space.
func (f *Frontend) SetVringAddr(a VringAddr) error {
	if err := checkIndex(a.Index); err != nil {
		return err
	}
	_, err := f.call(SetVringAddr, a.Marshal(), nil, false)
	return err
}

// SetVringAddrGPA sends queue i's ring addresses, given as guest physical
// addresses, translated through the memory table SetMemTable sent.
func (f *Frontend) SetVringAddrGPA(i uint32, q virtio.QueueConfig) error {
	return f.SetVringAddrLog(i, q, false)
}

// SetVringAddrLog is SetVringAddrGPA with used-ring logging on or off
// (VHOST_VRING_F_LOG, the log address being the used ring's guest
// address): with LOG_ALL acknowledged, the back-end then marks its writes
// of the used ring in the dirty log too. A running ring takes it (QEMU
// turns logging on and off so while the guest runs).
func (f *Frontend) SetVringAddrLog(i uint32, q virtio.QueueConfig, log bool) error {
	desc, err := f.userAddr(q.DescTable, virtio.DescTableSize(q.Size))
	if err != nil {
		return err
	}
	avail, err := f.userAddr(q.AvailRing, virtio.AvailRingSize(q.Size))
	if err != nil {
		return err
	}
	used, err := f.userAddr(q.UsedRing, virtio.UsedRingSize(q.Size))
	if err != nil {
		return err
	}
	a := VringAddr{Index: i, Desc: desc, Avail: avail, Used: used}
	if log {
		if err := f.need(ProtocolLogShmfd, "used-ring logging"); err != nil {
			return err
		}
		a.Flags, a.Log = VringFlagLog, q.UsedRing
	}
	return f.SetVringAddr(a)
}

func (f *Frontend) vringFD(req Request, i uint32, fd int) error {
	if err := checkIndex(i); err != nil {
		return err
	}
	v := uint64(i)
	var fds []int
	if fd < 0 {
		v |= VringNoFD
	} else {
		fds = []int{fd}
	}
	_, err := f.call(req, U64(v), fds, false)
	return err
}

// SetVringKick passes the eventfd the driver signals when queue i has new
// buffers; fd < 0 asks the back-end to poll instead. With
// FProtocolFeatures off, this also starts the ring.
func (f *Frontend) SetVringKick(i uint32, fd int) error { return f.vringFD(SetVringKick, i, fd) }

// SetVringCall passes the eventfd the back-end signals when queue i has
// used buffers (in a VM, an irqfd).
func (f *Frontend) SetVringCall(i uint32, fd int) error { return f.vringFD(SetVringCall, i, fd) }

// SetVringErr passes the eventfd the back-end signals on a queue error.
func (f *Frontend) SetVringErr(i uint32, fd int) error { return f.vringFD(SetVringErr, i, fd) }

// GetVringBase stops queue i and returns the avail index it would resume
// from (what SetVringBase takes after migration or reconnection).
func (f *Frontend) GetVringBase(i uint32) (uint16, error) {
	if err := checkIndex(i); err != nil {
		return 0, err
	}
	p, err := f.call(GetVringBase, VringState{Index: i}.Marshal(), nil, true)
	if err != nil {
		return 0, err
	}
	s, err := ParseVringState(p)
	if err != nil {
		return 0, err
	}
	if s.Index != i || s.Num > 0xffff {
		return 0, fmt.Errorf("%w: GET_VRING_BASE for %d answered with index %d base %d", ErrMalformed, i, s.Index, s.Num)
	}
	return uint16(s.Num), nil
}

// GetInflightFD asks the back-end for a region to track the requests it
// has in flight on numQueues queues of queueSize descriptors
// (INFLIGHT_SHMFD). The front-end keeps it, hands it over with
// SetInflightFD at every start, and again to the back-end that follows
// one that crashed. It returns the region's description and its
// descriptor, which the caller owns; a back-end that cannot track answers
// with size 0, and fd is -1.
func (f *Frontend) GetInflightFD(numQueues, queueSize uint16) (Inflight, int, error) {
	if err := f.need(ProtocolInflightShmfd, "GET_INFLIGHT_FD"); err != nil {
		return Inflight{}, -1, err
	}
	p, fds, err := f.callFDs(GetInflightFD, Inflight{NumQueues: numQueues, QueueSize: queueSize}.Marshal(), nil, true)
	if err != nil {
		return Inflight{}, -1, err
	}
	d, err := ParseInflight(p)
	switch {
	case err != nil:
	case d.MmapSize == 0:
		if len(fds) == 0 {
			return d, -1, nil
		}
		err = fmt.Errorf("%w: GET_INFLIGHT_FD reply of size 0 with a descriptor", ErrMalformed)
	case len(fds) != 1:
		err = fmt.Errorf("%w: GET_INFLIGHT_FD reply with %d descriptors", ErrMalformed, len(fds))
	default:
		return d, fds[0], nil
	}
	closeFDs(fds)
	return Inflight{}, -1, err
}

// SetInflightFD hands the back-end the region of GetInflightFD (fd stays
// the caller's), before the rings start.
func (f *Frontend) SetInflightFD(d Inflight, fd int) error {
	if err := f.need(ProtocolInflightShmfd, "SET_INFLIGHT_FD"); err != nil {
		return err
	}
	_, err := f.call(SetInflightFD, d.Marshal(), []int{fd}, false)
	return err
}

// SetLogBase hands the back-end the dirty log it marks the pages it
// writes in while LOG_ALL is acknowledged (needs LOG_SHMFD). The log's
// descriptor stays the caller's. The request has a reply of its own with
// LOG_SHMFD, whatever REPLY_ACK says, and NEED_REPLY is not set (as
// QEMU does): one answer, checked with CheckLogBaseReply. Until the
// front-end sends another log, the back-end keeps this one mapped.
func (f *Frontend) SetLogBase(l Log, fd int) error {
	if err := f.need(ProtocolLogShmfd, "SET_LOG_BASE"); err != nil {
		return err
	}
	if fd < 0 {
		return fmt.Errorf("vhostuser: SET_LOG_BASE without a log descriptor")
	}
	p, err := f.call(SetLogBase, l.Marshal(), []int{fd}, true)
	if err != nil {
		return err
	}
	if err := CheckLogBaseReply(p, l); err != nil {
		if errors.Is(err, ErrMalformed) {
			f.mu.Lock()
			f.broken = err
			f.mu.Unlock()
		}
		return err
	}
	return nil
}

// Sync returns once the back-end has processed every request sent
// before it: a GET_FEATURES round trip, whose answer must be what the
// back-end offered before (a back-end that changes its offer on a live
// connection is out of step). Requests without REPLY_ACK are otherwise
// only known to be sent; a migration needs LOG_ALL in effect before it
// copies guest RAM.
func (f *Frontend) Sync() error {
	f.mu.Lock()
	offered := f.offered
	f.mu.Unlock()
	p, err := f.call(GetFeatures, nil, nil, true)
	if err != nil {
		return err
	}
	v, err := ParseU64(p)
	if err == nil && v != offered {
		err = fmt.Errorf("%w: GET_FEATURES answered %#x on a connection where it answered %#x", ErrMalformed, v, offered)
	}
	if err != nil {
		f.mu.Lock()
		f.broken = err
		f.mu.Unlock()
	}
	return err
}
