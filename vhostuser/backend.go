package vhostuser

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/viovmm/vio/virtio"
)

// BackendProtocolFeatures are the protocol features a Backend offers.
const BackendProtocolFeatures = ProtocolMQ | ProtocolLogShmfd | ProtocolReplyAck | ProtocolConfig | ProtocolConfigureMemSlots | ProtocolInflightShmfd

// Errors a Backend reports for requests it refuses (to OnError, and to the
// front-end as a non-zero REPLY_ACK status when it asked for one).
var (
	// ErrBadRing: a vring index beyond the device's queues, or a ring
	// set-up the device cannot serve (size, a ring not fully described).
	ErrBadRing = errors.New("vhostuser: bad vring")
	// ErrRingRunning: a ring's size, addresses or base, or the features,
	// changed while the ring is served; stop it first (GET_VRING_BASE).
	ErrRingRunning = errors.New("vhostuser: vring is running")
	// ErrNotNegotiated: a request or value that needs a feature the
	// front-end did not negotiate, or one the back-end did not offer.
	ErrNotNegotiated = errors.New("vhostuser: feature not negotiated")
)

// Backend serves a virtio device to vhost-user front-ends (QEMU's
// vhost-user-blk-pci, Cloud Hypervisor, vio's Frontend): it maps the guest
// RAM a front-end shares, and serves each ring the front-end starts with
// the device's own queue code, which reads and writes that RAM directly.
//
// Every connection gets a device of its own (NewDevice), so a front-end
// that reconnects starts afresh; when a connection ends, for whatever
// reason, every ring stops, every descriptor the front-end sent is closed
// and its memory unmapped before ServeConn returns.
//
// The front-end is hostile: every address and length it sends is checked
// (ring addresses must lie in the memory table, regions must fit their
// files, descriptors in rings are checked by package virtio), descriptors
// that come with a refused message are closed, and a request it gets wrong
// is refused with a defined error (REPLY_ACK status 1) without stopping
// the others. Messages that break the protocol's framing end the
// connection.
type Backend struct {
	// NewDevice returns the device one connection is served (it is called
	// once per connection). For virtio-blk, blk.New over any block back-end.
	// A device that is an io.Closer is closed when its connection ends,
	// after every ring stopped: the place to release what it holds for one
	// front-end (a per-VM QoS account, a per-connection back-end).
	NewDevice func() (virtio.QueueServer, error)
	// MaxConns bounds the connections Serve serves at once (default 1:
	// one front-end per device, as a vhost-user socket is meant); a
	// front-end beyond it waits to be accepted until one disconnects.
	MaxConns int
	// Timeout bounds the sending of each reply (default DefaultTimeout),
	// so that a front-end that stops reading cannot stall the back-end.
	Timeout time.Duration
	// OnError, if set, is told of each request the back-end refused or
	// failed, and why. It runs on the connection's goroutine and must not
	// block.
	OnError func(req Request, err error)
	// Log receives connection events; nil logs nothing.
	Log *slog.Logger
}

func (b *Backend) log() *slog.Logger {
	if b.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return b.Log
}

// Serve accepts front-ends on l and serves each (ServeConn) until ctx ends;
// then it closes l and every connection, and returns once they are all
// torn down. A front-end that disconnects can connect again.
func (b *Backend) Serve(ctx context.Context, l *net.UnixListener) error {
	maxConns := b.MaxConns
	if maxConns <= 0 {
		maxConns = 1
	}
	var (
		mu    sync.Mutex
		conns = map[*net.UnixConn]bool{}
		wg    sync.WaitGroup
	)
	// The watcher closes the listener and the connections when ctx ends
	// or Serve returns; Serve returns only after it and every session.
	stopped, watched := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(watched)
		select {
		case <-ctx.Done():
		case <-stopped:
		}
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
	}()
	defer func() {
		close(stopped)
		<-watched
		wg.Wait()
	}()
	// A slot is taken before Accept: a front-end beyond MaxConns waits in
	// the listen backlog until one disconnects (as qemu-storage-daemon's
	// export does), so a front-end that reconnects at once is served as
	// soon as the back-end has torn its old connection down.
	slots := make(chan struct{}, maxConns)
	for {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vhostuser: accepting a front-end: %w", err)
		}
		mu.Lock()
		if ctx.Err() != nil {
			mu.Unlock()
			c.Close()
			return nil
		}
		conns[c] = true
		mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.ServeConn(c); err != nil {
				b.log().Warn("vhost-user connection ended", "err", err)
			} else {
				b.log().Info("vhost-user front-end disconnected")
			}
			mu.Lock()
			delete(conns, c)
			mu.Unlock()
			<-slots
		}()
	}
}

// ServeConn serves one front-end on c until it disconnects (nil) or
// breaks the protocol's framing (an error), then stops every ring, unmaps
// the front-end's memory, closes its descriptors and c. Close c from
// another goroutine to end it early.
func (b *Backend) ServeConn(c *net.UnixConn) error {
	defer c.Close()
	if b.NewDevice == nil {
		return errors.New("vhostuser: Backend without NewDevice")
	}
	dev, err := b.NewDevice()
	if err != nil {
		return fmt.Errorf("vhostuser: creating the device: %w", err)
	}
	if cl, ok := dev.(io.Closer); ok {
		defer cl.Close()
	}
	s := newSession(b, dev)
	defer s.shutdown()
	conn := NewConn(c)
	timeout := b.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	for {
		m, err := conn.ReadMessage()
		if err != nil && (m == nil || !errors.Is(err, ErrUnsupported)) {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return err
		}
		reply, fds, send, err := s.respond(m, err)
		if err != nil {
			closeFDs(fds)
			return err
		}
		if send {
			err := c.SetWriteDeadline(time.Now().Add(timeout))
			if err == nil {
				err = conn.WriteMessage(Header{Request: m.Request, Flags: Version | FlagReply}, reply, fds)
			}
			closeFDs(fds) // the front-end got its own copies
			if err != nil {
				return err
			}
		}
	}
}

// respond serves one message: m as ReadMessage returned it, with readErr
// the ErrUnsupported of a request it skipped in step. It closes the
// descriptors the handler did not keep, and returns the reply payload to
// send (send) with the descriptors that go with it (the caller closes
// them once sent), or an error that must end the connection.
func (s *session) respond(m *Message, readErr error) (reply []byte, fds []int, send bool, fatal error) {
	defer m.Close() // descriptors the handler kept were taken out of m.FDs
	if l := s.b.Log; l != nil {
		l.Debug("vhost-user request", "request", m.Request, "flags", m.Flags, "payload", m.Payload, "fds", len(m.FDs))
	}
	// Decided before the request runs: RESET_OWNER forgets REPLY_ACK, but
	// the front-end that asked still waits for its answer.
	ack := m.NeedReply() && s.protocol&ProtocolReplyAck != 0
	var hasReply bool
	err := readErr
	if err == nil {
		reply, hasReply, err = s.handle(m)
	}
	if err != nil {
		s.refused(m.Request, err)
	}
	fds, s.replyFDs = s.replyFDs, nil
	switch {
	case hasReply && err != nil && m.Request == SetLogBase:
		// A log that cannot be used: the reply is its status.
		closeFDs(fds)
		return U64(1), nil, true, nil
	case hasReply && err != nil && m.Request != GetConfig && m.Request != GetInflightFD:
		// No way to answer this request with a failure: the front-end
		// would take whatever we sent as the answer.
		closeFDs(fds)
		return nil, nil, false, fmt.Errorf("vhostuser: %v: %w", m.Request, err)
	case hasReply:
		// A failed GET_CONFIG answers empty, a failed GET_INFLIGHT_FD
		// with a region of size 0 (the front-end goes on without).
		if err != nil && m.Request == GetInflightFD {
			closeFDs(fds)
			return Inflight{}.Marshal(), nil, true, nil
		}
		return reply, fds, true, nil
	case ack:
		var status uint64
		if err != nil {
			status = 1
		}
		return U64(status), nil, true, nil
	}
	return nil, nil, false, nil
}

// session is one connection's state.
type session struct {
	b        *Backend
	dev      virtio.QueueServer
	maxSizes []uint16
	offered  uint64 // GET_FEATURES
	features uint64 // SET_FEATURES
	protocol uint64 // SET_PROTOCOL_FEATURES
	mem      *sharedMemory
	rings    []*ring
	// inflight is the region of GET/SET_INFLIGHT_FD, if any; replyFDs the
	// descriptors the reply being built carries.
	inflight *inflightRegion
	replyFDs []int
	// dirty is the migration's dirty log (SET_LOG_BASE) and whether
	// LOG_ALL is acknowledged; every sharedMemory of the session marks
	// the guest memory the rings write in it.
	dirty dirtyState
}

func newSession(b *Backend, dev virtio.QueueServer) *session {
	s := &session{b: b, dev: dev, maxSizes: dev.QueueMaxSizes()}
	if len(s.maxSizes) > MaxVrings {
		s.maxSizes = s.maxSizes[:MaxVrings]
	}
	s.offered = dev.Features() | virtio.TransportFeatures | FProtocolFeatures | FLogAll
	for i := range s.maxSizes {
		s.rings = append(s.rings, newRing(i))
	}
	return s
}

func (s *session) refused(req Request, err error) {
	if s.b.OnError != nil {
		s.b.OnError(req, err)
	}
	s.b.log().Debug("vhost-user request refused", "request", req, "err", err)
}

// reset stops every ring at once (their front-end will not read the used
// rings again), closes what the front-end sent and forgets what it
// negotiated.
func (s *session) reset() {
	for _, r := range s.rings {
		r.stop(true)
		r.closeFDs()
	}
	for i := range s.rings {
		s.rings[i] = newRing(i)
	}
	if s.mem != nil {
		s.mem.close()
		s.mem = nil
	}
	if s.inflight != nil {
		s.inflight.close()
		s.inflight = nil
	}
	s.dirty.on.Store(false)
	if l := s.dirty.log.Swap(nil); l != nil {
		l.close()
	}
	s.features, s.protocol = 0, 0
}

func (s *session) shutdown() { s.reset() }

func (s *session) ring(i uint32) (*ring, error) {
	if uint64(i) >= uint64(len(s.rings)) {
		return nil, fmt.Errorf("%w: index %d, the device has %d queues", ErrBadRing, i, len(s.rings))
	}
	return s.rings[i], nil
}

func (s *session) anyRunning() bool {
	for _, r := range s.rings {
		if r.running() {
			return true
		}
	}
	return false
}

// takeFD removes the message's single descriptor from it, for keeping.
func takeFD(m *Message) int {
	if len(m.FDs) != 1 {
		return -1
	}
	fd := m.FDs[0]
	m.FDs = nil
	return fd
}

// handle serves one request. It returns the reply payload for requests
// that have one (hasReply), and the error that refuses the request.
// Descriptors it keeps it removes from m.FDs; the caller closes the rest.
func (s *session) handle(m *Message) (payload []byte, hasReply bool, err error) {
	switch m.Request {
	case GetFeatures, GetProtocolFeatures, GetQueueNum, GetVringBase, GetConfig, GetMaxMemSlots, GetStatus, GetInflightFD:
		hasReply = true
	case SetLogBase:
		// Answered, with a status, once LOG_SHMFD is negotiated.
		hasReply = s.protocol&ProtocolLogShmfd != 0
	}
	if m.Reply() {
		return nil, hasReply, fmt.Errorf("%w: a reply (%v) sent as a request", ErrMalformed, m.Request)
	}
	v, err := ParsePayload(m)
	if err != nil {
		switch {
		case hasReply && m.Request == GetConfig:
			return nil, true, err // answered with an empty payload
		case m.Request == GetInflightFD:
			return Inflight{}.Marshal(), true, err // no region
		}
		return nil, hasReply, err
	}
	switch m.Request {
	case GetFeatures:
		return U64(s.offered), true, nil
	case SetFeatures:
		f := v.(uint64)
		if f&^s.offered != 0 {
			return nil, false, fmt.Errorf("%w: features %#x were not offered (offered %#x)", ErrNotNegotiated, f&^s.offered, s.offered)
		}
		// LOG_ALL goes on and off while the rings run: a migration
		// starts and ends with the guest running.
		if s.anyRunning() && (f^s.features)&^uint64(FLogAll) != 0 {
			return nil, false, fmt.Errorf("%w: features change while rings run", ErrRingRunning)
		}
		s.features = f
		s.dirty.on.Store(f&FLogAll != 0)
		return nil, false, nil
	case GetProtocolFeatures:
		return U64(BackendProtocolFeatures), true, nil
	case SetProtocolFeatures:
		p := v.(uint64)
		if p&^uint64(BackendProtocolFeatures) != 0 {
			return nil, false, fmt.Errorf("%w: protocol features %#x were not offered (offered %#x)", ErrNotNegotiated, p&^uint64(BackendProtocolFeatures), BackendProtocolFeatures)
		}
		s.protocol = p
		return nil, false, nil
	case SetOwner:
		return nil, false, nil
	case ResetOwner, ResetDevice:
		s.reset()
		return nil, false, nil
	case GetQueueNum:
		return U64(uint64(len(s.rings))), true, nil
	case GetConfig:
		c := v.(Config)
		data := make([]byte, len(c.Data))
		s.dev.ReadConfig(uint64(c.Offset), data)
		return Config{Offset: c.Offset, Flags: c.Flags, Data: data}.Marshal(), true, nil
	case SetConfig:
		c := v.(Config)
		s.dev.WriteConfig(uint64(c.Offset), c.Data)
		return nil, false, nil
	case SetMemTable:
		return nil, false, s.setMemTable(v.(MemoryTable), m.FDs)
	case GetMaxMemSlots:
		return U64(MaxMemSlots), true, nil
	case AddMemReg:
		return nil, false, s.addMemReg(v.(MemoryRegion), m.FDs[0])
	case RemMemReg:
		return nil, false, s.remMemReg(v.(MemoryRegion))
	case SetVringNum, SetVringBase, SetVringEnable, GetVringBase:
		return s.vringState(m.Request, v.(VringState))
	case SetVringAddr:
		return nil, false, s.setVringAddr(v.(VringAddr))
	case SetLogBase:
		l, ok := v.(Log)
		switch {
		case !hasReply:
			return nil, false, fmt.Errorf("%w: SET_LOG_BASE without VHOST_USER_PROTOCOL_F_LOG_SHMFD", ErrNotNegotiated)
		case !ok:
			return nil, true, fmt.Errorf("%w: SET_LOG_BASE with a u64 rather than a log description and its memfd", ErrUnsupported)
		}
		return U64(0), true, s.setLogBase(l, m.FDs[0])
	case SetVringKick, SetVringCall, SetVringErr:
		return nil, false, s.vringFD(m, v.(uint32))
	case GetInflightFD:
		d, err := s.getInflight(v.(Inflight))
		if err != nil {
			return Inflight{}.Marshal(), true, err
		}
		return d.Marshal(), true, nil
	case SetInflightFD:
		return nil, false, s.setInflight(v.(Inflight), m.FDs[0])
	}
	// SET_LOG_FD (the log's "modified" eventfd, optional), SET_STATUS,
	// GET_STATUS: not implemented, their protocol features not offered.
	return nil, hasReply, fmt.Errorf("%w: %v", ErrUnsupported, m.Request)
}

// setMemTable maps the new table and puts it in the old one's place. The
// descriptors stay in m for the caller to close: each mapping keeps its
// own duplicate.
func (s *session) setMemTable(t MemoryTable, fds []int) error {
	mem, err := mapMemoryTable(t, fds)
	if err != nil {
		return err
	}
	var old []sharedRegion
	if s.mem != nil {
		old = s.mem.regions
	}
	return s.swapMemory(mem, old)
}

// addMemReg maps one more region (CONFIGURE_MEM_SLOTS).
func (s *session) addMemReg(r MemoryRegion, fd int) error {
	cur := s.mem
	if cur == nil {
		cur = &sharedMemory{}
	}
	if len(cur.regions) >= MaxMemSlots {
		return fmt.Errorf("%w: ADD_MEM_REG beyond %d regions", ErrMalformed, MaxMemSlots)
	}
	if err := cur.checkFree(r); err != nil {
		return err
	}
	sr, err := mapRegion(r, fd)
	if err != nil {
		return fmt.Errorf("vhostuser: ADD_MEM_REG: %w", err)
	}
	return s.swapMemory(cur.with(sr), nil)
}

// remMemReg unmaps the region r names (CONFIGURE_MEM_SLOTS). A ring that
// lay in it cannot start again: its restart fails, and it stays stopped.
func (s *session) remMemReg(r MemoryRegion) error {
	if s.mem == nil {
		return fmt.Errorf("%w: REM_MEM_REG of gpa %#x with no memory mapped", ErrBadAddress, r.GuestAddr)
	}
	rest, gone, ok := s.mem.without(r)
	if !ok {
		return fmt.Errorf("%w: REM_MEM_REG of gpa %#x size %#x user %#x, which is not mapped", ErrBadAddress, r.GuestAddr, r.Size, r.UserAddr)
	}
	return s.swapMemory(rest, []sharedRegion{gone})
}

// swapMemory stops the running rings (draining them), puts mem in place,
// unmaps the regions in unmap, which the new table no longer holds, and
// starts the rings again over mem (a memory hot-plug on a running device):
// no queue ever sees memory change under it.
func (s *session) swapMemory(mem *sharedMemory, unmap []sharedRegion) error {
	return s.whileStopped(func() {
		mem.dirty = &s.dirty
		s.mem = mem
		for _, r := range unmap {
			r.mem.Close()
		}
	})
}

// whileStopped stops the running rings (draining them), runs change, and
// starts them again: what the rings' goroutines use changes under none.
func (s *session) whileStopped(change func()) error {
	var restart []*ring
	for _, r := range s.rings {
		if r.running() {
			r.stop(false)
			restart = append(restart, r)
		}
	}
	change()
	var first error
	for _, r := range restart {
		if err := s.start(r); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// setLogBase maps the dirty log a front-end sends (SET_LOG_BASE) and puts
// it in the old one's place, with the rings stopped meanwhile, so that no
// ring marks a log being unmapped. fd stays the caller's.
func (s *session) setLogBase(l Log, fd int) error {
	bl, err := mapBackendLog(l, fd)
	if err != nil {
		return err
	}
	return s.whileStopped(func() {
		if old := s.dirty.log.Swap(bl); old != nil {
			old.close()
		}
	})
}

// setVringAddr records a ring's addresses. A running ring may only have
// its logging turned on or off (VHOST_VRING_F_LOG and its address), as
// a front-end does when a migration starts or ends.
func (s *session) setVringAddr(a VringAddr) error {
	r, err := s.ring(a.Index)
	if err != nil {
		return err
	}
	if a.Flags&VringFlagLog != 0 && s.protocol&ProtocolLogShmfd == 0 {
		return fmt.Errorf("%w: vring %d asks for used-ring logging without VHOST_USER_PROTOCOL_F_LOG_SHMFD", ErrNotNegotiated, a.Index)
	}
	if r.running() {
		if !r.hasAddr || a.Desc != r.addr.Desc || a.Avail != r.addr.Avail || a.Used != r.addr.Used {
			return fmt.Errorf("%w: vring %d addresses", ErrRingRunning, a.Index)
		}
		if err := checkLogAddr(a, r.q.Config().UsedRing); err != nil {
			return err
		}
	}
	r.addr, r.hasAddr = a, true
	return nil
}

// checkLogAddr refuses a used ring logged at another address than its
// own: this back-end marks every write at the guest address it writes,
// the used ring's included, which is what every front-end asks for
// (QEMU and Cloud Hypervisor give the used ring's guest address).
func checkLogAddr(a VringAddr, usedGPA uint64) error {
	if a.Flags&VringFlagLog != 0 && a.Log != usedGPA {
		return fmt.Errorf("%w: vring %d logs its used ring at %#x, not at its guest address %#x", ErrBadRing, a.Index, a.Log, usedGPA)
	}
	return nil
}

func (s *session) vringState(req Request, st VringState) ([]byte, bool, error) {
	hasReply := req == GetVringBase
	r, err := s.ring(st.Index)
	if err != nil {
		return nil, hasReply, err
	}
	switch req {
	case SetVringNum:
		max := s.maxSizes[r.index]
		if st.Num == 0 || st.Num&(st.Num-1) != 0 || st.Num > uint32(max) {
			return nil, false, fmt.Errorf("%w: vring %d size %d (a power of two up to %d)", ErrBadRing, st.Index, st.Num, max)
		}
		if r.running() {
			return nil, false, fmt.Errorf("%w: vring %d size", ErrRingRunning, st.Index)
		}
		r.num = uint16(st.Num)
	case SetVringBase:
		if st.Num > 0xffff {
			return nil, false, fmt.Errorf("%w: vring %d base %d (a split ring's index is 16 bits)", ErrBadRing, st.Index, st.Num)
		}
		if r.running() {
			return nil, false, fmt.Errorf("%w: vring %d base", ErrRingRunning, st.Index)
		}
		r.base = uint16(st.Num)
	case SetVringEnable:
		if s.features&FProtocolFeatures == 0 {
			return nil, false, fmt.Errorf("%w: SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES", ErrNotNegotiated)
		}
		if st.Num > 1 {
			return nil, false, fmt.Errorf("%w: vring %d enable value %d", ErrBadRing, st.Index, st.Num)
		}
		r.enabled = st.Num == 1
		if !r.enabled {
			r.stop(false)
			return nil, false, nil
		}
		return nil, false, s.start(r)
	case GetVringBase:
		// Stop the ring: drain it, so that every request taken is in
		// the used ring and base is where a successor resumes.
		r.stop(false)
		if r.kick != nil {
			r.kick.close()
			r.kick = nil
		}
		return VringState{Index: st.Index, Num: uint32(r.base)}.Marshal(), true, nil
	}
	return nil, false, nil
}

func (s *session) vringFD(m *Message, index uint32) error {
	r, err := s.ring(index)
	if err != nil {
		return err
	}
	if len(m.FDs) == 1 {
		if err := prepareEventFD(m.FDs[0]); err != nil {
			return fmt.Errorf("%v for vring %d: %w", m.Request, index, err) // the caller closes it
		}
	}
	fd := takeFD(m) // -1 with VringNoFD (ParsePayload checked the pairing)
	switch m.Request {
	case SetVringCall:
		r.call.set(fd)
		return nil
	case SetVringErr:
		r.err.set(fd)
		return nil
	}
	if fd < 0 {
		return fmt.Errorf("%w: vring %d without a kick descriptor (polling is not implemented)", ErrUnsupported, index)
	}
	// A new kick descriptor: the ring (re)starts on it.
	r.stop(false)
	if r.kick != nil {
		r.kick.close()
		r.kick = nil
	}
	r.kick = newKicker(fd)
	return s.start(r)
}

// start serves r if it is ready: size, addresses, memory and a kick
// descriptor known, and enabled (rings start enabled when protocol
// features were not negotiated). A ring not yet ready is not an error.
func (s *session) start(r *ring) error {
	if r.running() || r.kick == nil {
		return nil
	}
	if !r.enabled && s.features&FProtocolFeatures != 0 {
		return nil
	}
	switch {
	case r.num == 0:
		return fmt.Errorf("%w: vring %d kicked before SET_VRING_NUM", ErrBadRing, r.index)
	case !r.hasAddr:
		return fmt.Errorf("%w: vring %d kicked before SET_VRING_ADDR", ErrBadRing, r.index)
	case s.mem == nil:
		return fmt.Errorf("%w: vring %d kicked before SET_MEM_TABLE", ErrBadRing, r.index)
	}
	var err error
	st := virtio.QueueState{
		Size:      r.num,
		EventIdx:  s.features&virtio.FeatureEventIdx != 0,
		Indirect:  s.features&virtio.FeatureIndirectDesc != 0,
		NextAvail: r.base, NextUsed: r.base,
	}
	if st.DescTable, err = s.mem.userToGPA(r.addr.Desc, virtio.DescTableSize(r.num)); err != nil {
		return fmt.Errorf("vring %d descriptor table: %w", r.index, err)
	}
	if st.AvailRing, err = s.mem.userToGPA(r.addr.Avail, virtio.AvailRingSize(r.num)); err != nil {
		return fmt.Errorf("vring %d driver area: %w", r.index, err)
	}
	if st.UsedRing, err = s.mem.userToGPA(r.addr.Used, virtio.UsedRingSize(r.num)); err != nil {
		return fmt.Errorf("vring %d device area: %w", r.index, err)
	}
	if err := checkLogAddr(r.addr, st.UsedRing); err != nil {
		return err
	}
	q, err := s.resume(r, st)
	if err != nil {
		return fmt.Errorf("%w: vring %d: %w", ErrBadRing, r.index, err)
	}
	q.SetInterrupt(r.call)
	errFD := r.err
	q.OnBroken(func(error) { _ = errFD.Trigger() })
	// The kicker passes kicks to q before it is served: a kick that came
	// while ServeQueue was starting (after the device's first look at the
	// avail ring, before the kicker knew q) would otherwise be dropped,
	// and the request it announced left waiting for another kick.
	r.kick.q.Store(q)
	svc, err := s.dev.ServeQueue(r.index, q, s.features&^uint64(FProtocolFeatures|FLogAll))
	if err != nil {
		r.kick.q.Store(nil)
		return fmt.Errorf("%w: vring %d: %w", ErrBadRing, r.index, err)
	}
	r.q, r.svc = q, svc
	return nil
}

// resume makes the queue a ring (re)starts with. Without an inflight
// region, RestoreQueue checks the rings against memory and that used.idx
// there is base: the front-end must resume a ring where every request it
// made available before base was completed. With one, the region says
// which requests a previous back-end took and did not complete: they are
// served again first, and the ring resumes after them, whatever base
// says (the front-end could not know where its back-end stopped taking).
func (s *session) resume(r *ring, st virtio.QueueState) (*virtio.Queue, error) {
	var iq *inflightQueue
	if s.inflight != nil {
		var err error
		if iq, err = s.inflight.queue(r.index, r.num); err != nil {
			return nil, err
		}
	}
	if iq == nil {
		return virtio.RestoreQueue(s.mem, st, s.maxSizes[r.index])
	}
	used, err := s.mem.LoadUint16(st.UsedRing + 2)
	if err != nil {
		return nil, fmt.Errorf("used ring: %w", err)
	}
	resubmit, fresh, err := iq.recover(r.num, used)
	if err != nil {
		return nil, err
	}
	var q *virtio.Queue
	if fresh {
		q, err = virtio.RestoreQueue(s.mem, st, s.maxSizes[r.index])
	} else {
		q, err = virtio.NewQueue(s.mem, st.Config(), s.maxSizes[r.index], st.Features())
	}
	if err != nil {
		return nil, err
	}
	next := used + uint16(len(resubmit))
	if fresh {
		next = used
	}
	if err := q.ResumeInflight(iq, next, used, resubmit); err != nil {
		return nil, err
	}
	if len(resubmit) > 0 {
		s.b.log().Info("vhost-user ring resumes with requests a previous back-end left in flight",
			"vring", r.index, "resubmitted", len(resubmit), "used_idx", used)
	}
	return q, nil
}

// getInflight makes a fresh inflight region for the front-end to keep
// (GET_INFLIGHT_FD); it becomes the session's region until the front-end
// sets one.
func (s *session) getInflight(d Inflight) (Inflight, error) {
	if s.protocol&ProtocolInflightShmfd == 0 {
		return Inflight{}, fmt.Errorf("%w: GET_INFLIGHT_FD without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD", ErrNotNegotiated)
	}
	if s.anyRunning() {
		return Inflight{}, fmt.Errorf("%w: GET_INFLIGHT_FD", ErrRingRunning)
	}
	reg, desc, fd, err := newInflightRegion(d.NumQueues, d.QueueSize, len(s.rings))
	if err != nil {
		return Inflight{}, err
	}
	s.setRegion(reg)
	s.replyFDs = []int{fd}
	return desc, nil
}

// setInflight maps the region the front-end hands over (SET_INFLIGHT_FD):
// a fresh one from GET_INFLIGHT_FD, or one a previous back-end wrote.
// fd stays the caller's.
func (s *session) setInflight(d Inflight, fd int) error {
	if s.protocol&ProtocolInflightShmfd == 0 {
		return fmt.Errorf("%w: SET_INFLIGHT_FD without VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD", ErrNotNegotiated)
	}
	if s.anyRunning() {
		return fmt.Errorf("%w: SET_INFLIGHT_FD", ErrRingRunning)
	}
	reg, err := mapInflightRegion(d, fd, len(s.rings))
	if err != nil {
		return err
	}
	s.setRegion(reg)
	return nil
}

func (s *session) setRegion(reg *inflightRegion) {
	if s.inflight != nil {
		s.inflight.close()
	}
	s.inflight = reg
}
