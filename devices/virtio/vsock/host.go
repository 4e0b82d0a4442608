package vsock

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/viovmm/vio/virtio"
)

// unixHost is the host side on UNIX sockets: guest-initiated connections
// to port P go to the listener at PATH_P. Each open connection has a
// reading and a writing goroutine, so that no socket operation ever runs
// on the device's goroutine (or a vCPU). They hand results to the device
// goroutine as functions on events and end when the connection is closed.
type unixHost struct {
	m      *mux
	path   string
	chunk  int
	events chan func()
	ctx    context.Context // ends when the activation stops
	wg     *sync.WaitGroup
}

var _ host = (*unixHost)(nil)

// sock is one connection's host socket and the state its goroutines share.
type sock struct {
	uc      *net.UnixConn // owned by the device goroutine once delivered
	done    chan struct{} // closed when the connection is closed
	closed  bool          // device goroutine only
	readReq chan int      // capacity 1: one read at a time
	wkick   chan struct{}
	events  chan func()

	wmu    sync.Mutex
	wbuf   []byte // guest data not yet taken by the writer
	wspare []byte // the writer's last buffer, for reuse
	hello  []byte
}

func newSock(uc *net.UnixConn, events chan func()) *sock {
	return &sock{uc: uc, done: make(chan struct{}), readReq: make(chan int, 1), wkick: make(chan struct{}, 1), events: events}
}

// deliver runs f on the device goroutine; it reports false if the
// connection was closed first.
func (s *sock) deliver(f func()) bool {
	select {
	case s.events <- f:
		return true
	case <-s.done:
		return false
	}
}

func sockOf(c *conn) *sock {
	s, _ := c.h.(*sock)
	return s
}

// dialTimeout bounds a connection to a host listener; the guest's own
// connect times out after 2 seconds by default anyway.
const dialTimeout = 5 * time.Second

func (h *unixHost) dial(c *conn) {
	s := newSock(nil, h.events)
	c.h = s
	path := fmt.Sprintf("%s_%d", h.path, c.key.host)
	h.wg.Add(1)
	go func() {
		defer h.wg.Done()
		d := net.Dialer{Timeout: dialTimeout}
		nc, err := d.DialContext(h.ctx, "unix", path)
		var uc *net.UnixConn
		if err == nil {
			uc = nc.(*net.UnixConn)
		}
		ok := s.deliver(func() {
			if s.closed {
				if uc != nil {
					uc.Close()
				}
				return
			}
			s.uc = uc
			h.m.dialed(c, err)
		})
		if !ok && uc != nil {
			uc.Close()
		}
	}()
}

func (h *unixHost) open(c *conn, hello []byte) {
	s := sockOf(c)
	if s == nil || s.uc == nil || s.closed {
		return
	}
	s.hello = hello
	h.wg.Add(2)
	go func() { defer h.wg.Done(); h.reader(c, s) }()
	go func() { defer h.wg.Done(); h.writer(c, s) }()
}

func (h *unixHost) reader(c *conn, s *sock) {
	buf := make([]byte, h.chunk)
	for {
		var n int
		select {
		case n = <-s.readReq:
		case <-s.done:
			return
		}
		n = min(n, len(buf))
		k, err := s.uc.Read(buf[:n])
		data := buf[:k]
		if !s.deliver(func() { h.m.readDone(c, data, err) }) {
			return
		}
	}
}

func (h *unixHost) writer(c *conn, s *sock) {
	if len(s.hello) > 0 {
		if _, err := s.uc.Write(s.hello); err != nil {
			s.deliver(func() { h.m.written(c, 0, err) })
			return
		}
	}
	for {
		select {
		case <-s.wkick:
		case <-s.done:
			return
		}
		for {
			s.wmu.Lock()
			out := s.wbuf
			s.wbuf, s.wspare = s.wspare[:0], nil
			s.wmu.Unlock()
			if len(out) == 0 {
				s.wmu.Lock()
				s.wspare = out
				s.wmu.Unlock()
				break
			}
			n, err := s.uc.Write(out)
			s.wmu.Lock()
			s.wspare = out[:0]
			s.wmu.Unlock()
			if !s.deliver(func() { h.m.written(c, n, err) }) || err != nil {
				return
			}
		}
	}
}

func (h *unixHost) read(c *conn, n int) {
	s := sockOf(c)
	if s == nil || s.closed {
		return
	}
	select {
	case s.readReq <- n:
	default: // cannot happen: the mux keeps one read outstanding at most
	}
}

func (h *unixHost) write(c *conn, p virtio.Buffers, off int64, n int) error {
	s := sockOf(c)
	if s == nil || s.closed {
		return fmt.Errorf("vsock: connection %d:%d has no host socket", c.key.guest, c.key.host)
	}
	s.wmu.Lock()
	l := len(s.wbuf)
	s.wbuf = slices.Grow(s.wbuf, n)[:l+n]
	_, err := p.ReadAt(s.wbuf[l:], off)
	if err != nil {
		s.wbuf = s.wbuf[:l]
	}
	s.wmu.Unlock()
	if err != nil {
		return fmt.Errorf("vsock: guest data: %w", err)
	}
	select {
	case s.wkick <- struct{}{}:
	default:
	}
	return nil
}

func (h *unixHost) closeWrite(c *conn) {
	if s := sockOf(c); s != nil && !s.closed && s.uc != nil {
		s.uc.CloseWrite()
	}
}

func (h *unixHost) close(c *conn) {
	s := sockOf(c)
	if s == nil || s.closed {
		return
	}
	s.closed = true
	close(s.done)
	if s.uc != nil {
		s.uc.Close()
	}
}
