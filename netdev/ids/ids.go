// Package ids is an interposer that streams every frame crossing a
// back-end to an external inspector (an intrusion-detection process on a
// UNIX socket, protocol in proto.go).
//
// In IDS mode (Monitor) frames pass at once and the inspector gets
// copies: a slow inspector loses copies (counted as Uninspected), never
// traffic. In IPS mode (Prevent) each frame is held until the inspector's
// verdict, and only frames it passes go on. The guest's vCPU never waits
// for the inspector either way: WriteFrames queues and returns, and held
// frames live in a bounded table. IPS fails closed: a frame that finds
// the table or the send queue full (Overflow), gets no verdict within the
// timeout (Timeouts), or meets a disconnected inspector (Down) is
// dropped, and counted. Verdicts for unknown ids (late ones) are ignored;
// a malformed verdict disconnects the inspector.
package ids

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/filter"
)

// Mode selects what the inspector may do.
type Mode int

// Modes.
const (
	Monitor Mode = iota // IDS: copies, no verdicts
	Prevent             // IPS: frames wait for the inspector's verdict
)

// Options tune a hook. Zero fields take the defaults.
type Options struct {
	Mode Mode
	// Queue bounds the frames held for a verdict, and the messages
	// waiting to be sent to the inspector (default 1024).
	Queue int
	// Timeout is how long a held frame waits for its verdict (default
	// 500 ms).
	Timeout time.Duration
}

// Stats are a hook's counters.
type Stats struct {
	Inspected   uint64 `json:"inspected"`   // messages sent to the inspector
	Passed      uint64 `json:"passed"`      // IPS: frames the inspector passed
	Dropped     uint64 `json:"dropped"`     // IPS: frames the inspector dropped
	Overflow    uint64 `json:"overflow"`    // IPS: frames dropped because the queue was full
	Timeouts    uint64 `json:"timeouts"`    // IPS: frames dropped for want of a verdict
	Down        uint64 `json:"down"`        // IPS: frames dropped because the inspector is gone
	Uninspected uint64 `json:"uninspected"` // IDS: copies not sent (queue full or inspector gone)
	Connected   bool   `json:"connected"`
}

type held struct {
	pkt      []byte // header + frame
	toGuest  bool
	deadline time.Time
}

// Hook is the interposer.
type Hook struct {
	filter.Base
	opts Options
	conn net.Conn

	sendq chan []byte // encoded messages for the inspector
	done  chan struct{}
	wg    sync.WaitGroup
	once  sync.Once
	down  atomic.Bool

	mu      sync.Mutex // guards pending and nextID
	pending map[uint64]held
	nextID  uint64

	// IPS only: frames passed toward the guest and toward the network.
	inq  chan []byte
	outq chan []byte

	rd netdev.ReadDeadline // SetReadDeadline's, which ReadFrames honours

	inspected, passed, dropped, overflow, timeouts, downDrops, uninspected atomic.Uint64
}

var _ netdev.Backend = (*Hook)(nil)

// Dial connects to the inspector's UNIX socket and wraps inner. Closing
// the hook closes the connection and inner.
func Dial(inner netdev.Backend, path string, opts Options) (*Hook, error) {
	c, err := net.DialTimeout("unix", path, 10*time.Second)
	if err != nil {
		return nil, fmt.Errorf("ids: connect to the inspector at %s: %w", path, err)
	}
	return New(inner, c, opts), nil
}

// New wraps inner with a hook over an established connection to the
// inspector, which the hook owns.
func New(inner netdev.Backend, conn net.Conn, opts Options) *Hook {
	if opts.Queue <= 0 {
		opts.Queue = 1024
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 500 * time.Millisecond
	}
	h := &Hook{
		Base: filter.Base{Inner: inner}, opts: opts, conn: conn,
		sendq:   make(chan []byte, opts.Queue),
		done:    make(chan struct{}),
		pending: map[uint64]held{},
	}
	h.wg.Add(2)
	go h.sender()
	go h.receiver()
	if opts.Mode == Prevent {
		h.inq = make(chan []byte, opts.Queue)
		h.outq = make(chan []byte, opts.Queue)
		h.wg.Add(3)
		go h.pump()
		go h.forwarder()
		go h.expirer()
	}
	return h
}

// sender writes queued messages to the inspector.
func (h *Hook) sender() {
	defer h.wg.Done()
	w := bufio.NewWriterSize(h.conn, 256<<10)
	for {
		select {
		case <-h.done:
			return
		case m := <-h.sendq:
			if h.down.Load() {
				continue
			}
			if _, err := w.Write(m); err != nil {
				h.lose()
				continue
			}
			h.inspected.Add(1)
			if len(h.sendq) == 0 {
				if err := w.Flush(); err != nil {
					h.lose()
				}
			}
		}
	}
}

// receiver reads verdicts (IPS) or waits for the inspector to go (IDS).
func (h *Hook) receiver() {
	defer h.wg.Done()
	r := bufio.NewReader(h.conn)
	for {
		var b [VerdictSize]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			h.lose()
			return
		}
		if h.opts.Mode != Prevent {
			continue // an IDS inspector has nothing to say; ignore it
		}
		id, drop, err := parseVerdict(b)
		if err != nil {
			h.lose()
			return
		}
		h.mu.Lock()
		f, ok := h.pending[id]
		delete(h.pending, id)
		h.mu.Unlock()
		if !ok {
			continue // late: it timed out already
		}
		if drop {
			h.dropped.Add(1)
			continue
		}
		h.passed.Add(1)
		q := h.outq
		if f.toGuest {
			q = h.inq
		}
		select {
		case q <- f.pkt:
		default:
			h.overflow.Add(1)
		}
	}
}

// lose marks the inspector gone: IPS drops what it holds and all that
// comes; IDS lets traffic pass uninspected.
func (h *Hook) lose() {
	if h.down.Swap(true) {
		return
	}
	h.conn.Close()
	h.mu.Lock()
	n := len(h.pending)
	clear(h.pending)
	h.mu.Unlock()
	h.downDrops.Add(uint64(n))
}

// submit hands a frame (header and frame, a copy the hook owns) to the
// inspector, holding it for a verdict in IPS mode.
func (h *Hook) submit(pkt []byte, toGuest bool) {
	dir := uint8(DirFromGuest)
	if toGuest {
		dir = DirToGuest
	}
	if h.opts.Mode == Monitor {
		if h.down.Load() {
			h.uninspected.Add(1)
			return
		}
		h.mu.Lock()
		id := h.nextID
		h.nextID++
		h.mu.Unlock()
		select {
		case h.sendq <- appendMessage(nil, id, dir, 0, pkt[netdev.HeaderSize:]):
		default:
			h.uninspected.Add(1)
		}
		return
	}
	if h.down.Load() {
		h.downDrops.Add(1)
		return
	}
	h.mu.Lock()
	if len(h.pending) >= h.opts.Queue {
		h.mu.Unlock()
		h.overflow.Add(1)
		return
	}
	id := h.nextID
	h.nextID++
	h.pending[id] = held{pkt: pkt, toGuest: toGuest, deadline: time.Now().Add(h.opts.Timeout)}
	h.mu.Unlock()
	select {
	case h.sendq <- appendMessage(nil, id, dir, FlagVerdict, pkt[netdev.HeaderSize:]):
	default:
		h.mu.Lock()
		_, still := h.pending[id]
		delete(h.pending, id)
		h.mu.Unlock()
		if still {
			h.overflow.Add(1)
		}
	}
}

// pump reads frames toward the guest from inner (IPS).
func (h *Hook) pump() {
	defer h.wg.Done()
	bufs := make([][]byte, 16)
	for i := range bufs {
		bufs[i] = make([]byte, netdev.MaxPacketLen)
	}
	sizes := make([]int, len(bufs))
	for {
		n, err := h.Inner.ReadFrames(bufs, sizes)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			select {
			case <-h.done:
				return
			default:
			}
			if errors.Is(err, netdev.ErrClosed) {
				return
			}
			// A back-end error (a lost link): try again shortly.
			t := time.NewTimer(50 * time.Millisecond)
			select {
			case <-h.done:
				t.Stop()
				return
			case <-t.C:
			}
			continue
		}
		for i := range n {
			h.submit(append([]byte(nil), bufs[i][:sizes[i]]...), true)
		}
	}
}

// forwarder sends passed frames from the guest to inner (IPS): it is the
// only caller of inner's WriteFrames.
func (h *Hook) forwarder() {
	defer h.wg.Done()
	for {
		select {
		case <-h.done:
			return
		case pkt := <-h.outq:
			h.Inner.WriteFrames([][][]byte{{pkt}})
		}
	}
}

// expirer drops held frames whose verdict is overdue.
func (h *Hook) expirer() {
	defer h.wg.Done()
	t := time.NewTicker(h.opts.Timeout / 4)
	defer t.Stop()
	for {
		select {
		case <-h.done:
			return
		case now := <-t.C:
			h.mu.Lock()
			for id, f := range h.pending {
				if now.After(f.deadline) {
					delete(h.pending, id)
					h.timeouts.Add(1)
				}
			}
			h.mu.Unlock()
		}
	}
}

// WriteFrames takes frames from the guest: in IDS mode it forwards them
// and queues copies; in IPS mode it holds them for their verdicts and
// returns at once.
func (h *Hook) WriteFrames(frames [][][]byte) (int, error) {
	select {
	case <-h.done:
		return 0, netdev.ErrClosed
	default:
	}
	if h.opts.Mode == Monitor {
		n, err := h.Inner.WriteFrames(frames)
		for _, f := range frames[:n] {
			var pkt []byte
			for _, p := range f {
				pkt = append(pkt, p...)
			}
			if len(pkt) >= netdev.HeaderSize+netdev.MinFrameLen {
				h.submit(pkt, false)
			}
		}
		return n, err
	}
	for i, f := range frames {
		total := 0
		for _, p := range f {
			total += len(p)
		}
		if total < netdev.HeaderSize+netdev.MinFrameLen || total > netdev.MaxPacketLen {
			return i, fmt.Errorf("ids: %w: packet of %d bytes", netdev.ErrHeader, total)
		}
		pkt := make([]byte, 0, total)
		for _, p := range f {
			pkt = append(pkt, p...)
		}
		h.submit(pkt, false)
	}
	return len(frames), nil
}

// ReadFrames delivers frames to the guest: in IDS mode straight from
// inner (with copies to the inspector), in IPS mode those the inspector
// passed.
func (h *Hook) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	if h.opts.Mode == Monitor {
		n, err := h.Inner.ReadFrames(bufs, sizes)
		for i := range n {
			if sizes[i] >= netdev.HeaderSize+netdev.MinFrameLen {
				h.submit(append([]byte(nil), bufs[i][:sizes[i]]...), true)
			}
		}
		return n, err
	}
	if len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("ids: %d buffers, %d sizes", len(bufs), len(sizes))
	}
	first, err := h.rd.Receive(h.done, h.inq)
	if err != nil {
		return 0, err
	}
	n := 0
	sizes[n] = copy(bufs[n], first)
	n++
	for n < len(bufs) {
		select {
		case p := <-h.inq:
			sizes[n] = copy(bufs[n], p)
			n++
		default:
			return n, nil
		}
	}
	return n, nil
}

// SetReadDeadline bounds ReadFrames: inner's in IDS mode, the hook's own
// in IPS mode (inner is read by the hook's pump, without a deadline).
func (h *Hook) SetReadDeadline(t time.Time) error {
	h.rd.Set(t)
	return nil
}

// Close disconnects the inspector, closes inner and waits for the hook's
// goroutines. Frames still held are dropped.
func (h *Hook) Close() error {
	err := netdev.ErrClosed
	h.once.Do(func() {
		close(h.done)
		h.conn.Close()
		err = h.Inner.Close()
		h.wg.Wait()
	})
	return err
}

// Stats returns the counters.
func (h *Hook) Stats() Stats {
	return Stats{
		Inspected: h.inspected.Load(), Passed: h.passed.Load(), Dropped: h.dropped.Load(),
		Overflow: h.overflow.Load(), Timeouts: h.timeouts.Load(), Down: h.downDrops.Load(),
		Uninspected: h.uninspected.Load(), Connected: !h.down.Load(),
	}
}
