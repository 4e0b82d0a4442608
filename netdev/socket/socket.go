// Package socket is a network back-end that carries Ethernet frames over a
// stream socket (UNIX or TCP) in QEMU's "-netdev stream" framing: each
// frame preceded by its length, 32 bits big-endian (see PrefixSize). A vio
// NIC on it can talk to a QEMU guest, to passt (its qemu socket speaks
// the same framing) and to `vio switch`.
//
// The wire has no virtio-net header, so the back-end offers no offloads
// (it does not implement netdev.Offloader): the front-end gives the guest
// none, and every frame is complete and checksummed when it crosses.
//
// Neither direction ever blocks a NIC on the peer: frames to send go
// through a bounded queue that a writer goroutine drains, and a full queue
// (a peer not reading) drops and counts, as a congested cable does. Frames
// received wait in a bounded queue too; while it is full the reader stops
// reading and the stream's own flow control holds the peer back.
package socket

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/netdev"
)

// Queue depths, in frames.
const (
	inQueue  = 256
	outQueue = 256
)

// ErrLinkDown is what WriteFrames returns while the connection is lost
// (the peer closed it or broke the framing) and not yet re-established,
// and what ReadFrames returns once it is lost for good. A bond fails over
// on it; a switch frees the port.
var ErrLinkDown = errors.New("socket: link down")

// Options tune a dialled back-end.
type Options struct {
	// Reconnect, when above zero, redials the address this long after
	// the connection is lost (and after each failed attempt). Zero means
	// a lost connection stays lost.
	Reconnect time.Duration
	// StartDown, with Reconnect, lets Dial succeed when the first
	// connection fails: the back-end starts with its link down and
	// dials every Reconnect until it connects (a bond member whose
	// switch is away when the VM starts or reboots). Up says which.
	StartDown bool
	// Blocking makes WriteFrames wait for room in the send queue instead
	// of dropping: for a caller with a goroutine of its own per
	// back-end (a switch port's writer), which then sees the peer's
	// pace and drops, if it must, where it counts.
	Blocking bool
}

// Stats are a back-end's counters.
type Stats struct {
	FramesIn    uint64 `json:"frames_in"` // received from the peer, delivered to ReadFrames
	BytesIn     uint64 `json:"bytes_in"`
	FramesOut   uint64 `json:"frames_out"` // queued for the peer
	BytesOut    uint64 `json:"bytes_out"`
	OutDropped  uint64 `json:"out_dropped"`  // dropped because the send queue was full
	DownDropped uint64 `json:"down_dropped"` // refused while the link was down
	BadFrames   uint64 `json:"bad_frames"`   // refused: bad header or size, either direction
	Disconnects uint64 `json:"disconnects"`  // connections lost
}

// Conn is a netdev.Backend over a stream connection.
type Conn struct {
	network, addr string
	opts          Options

	in   chan []byte // header + frame, for ReadFrames
	out  chan []byte // prefixed frames, for the writer
	done chan struct{}
	dead chan struct{} // closed when the link is lost for good
	wg   sync.WaitGroup

	closeOnce sync.Once

	rd netdev.ReadDeadline // SetReadDeadline's, which ReadFrames honours

	mu   sync.Mutex // guards conn
	conn net.Conn   // nil while down
	up   atomic.Bool

	framesIn, bytesIn, framesOut, bytesOut    atomic.Uint64
	outDropped, downDropped, bad, disconnects atomic.Uint64
}

var _ netdev.Backend = (*Conn)(nil)

// ParseAddr splits the address a user gives: "tcp:HOST:PORT" is TCP,
// anything else ("unix:PATH" or a bare PATH) a UNIX socket.
func ParseAddr(s string) (network, addr string, err error) {
	switch {
	case s == "":
		return "", "", errors.New("socket address is empty: give the path of a UNIX socket or tcp:HOST:PORT")
	case strings.HasPrefix(s, "tcp:"):
		a := strings.TrimPrefix(s, "tcp:")
		if _, _, err := net.SplitHostPort(a); err != nil {
			return "", "", fmt.Errorf("socket address %q: want tcp:HOST:PORT (%v)", s, err)
		}
		return "tcp", a, nil
	case strings.HasPrefix(s, "unix:"):
		return "unix", strings.TrimPrefix(s, "unix:"), nil
	}
	return "unix", s, nil
}

// Dial connects to a stream socket (see ParseAddr for addr) and returns
// the back-end over it. The first connection must succeed, unless
// opts.StartDown and opts.Reconnect say to keep trying; later ones are
// retried as opts says.
func Dial(addr string, opts Options) (*Conn, error) {
	network, a, err := ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	nc, err := net.DialTimeout(network, a, 10*time.Second)
	if err != nil {
		if opts.StartDown && opts.Reconnect > 0 {
			c := newConn(network, a, opts)
			c.wg.Add(1)
			go c.supervise(nil)
			return c, nil
		}
		return nil, fmt.Errorf("socket back-end: connect to %s: %w", addr, err)
	}
	c := newConn(network, a, opts)
	c.start(nc)
	return c, nil
}

// New returns a back-end over an established connection (one a listener
// accepted); it never reconnects (opts.Reconnect is ignored). The
// back-end owns nc.
func New(nc net.Conn, opts Options) *Conn {
	opts.Reconnect = 0
	c := newConn("", "", opts)
	c.start(nc)
	return c
}

func newConn(network, addr string, opts Options) *Conn {
	return &Conn{
		network: network, addr: addr, opts: opts,
		in:   make(chan []byte, inQueue),
		out:  make(chan []byte, outQueue),
		done: make(chan struct{}),
		dead: make(chan struct{}),
	}
}

func (c *Conn) start(nc net.Conn) {
	c.mu.Lock()
	c.conn = nc
	c.mu.Unlock()
	c.up.Store(true)
	c.wg.Add(1)
	go c.supervise(nc)
}

// supervise runs one connection after another: it serves nc (if not
// nil: a back-end that starts down has none yet) until it fails, then
// (if asked to) redials until Close.
func (c *Conn) supervise(nc net.Conn) {
	defer c.wg.Done()
	for {
		if nc != nil {
			c.serve(nc)
			c.up.Store(false)
			c.mu.Lock()
			c.conn = nil
			c.mu.Unlock()
			nc.Close()
			select {
			case <-c.done:
				return
			default:
			}
			c.disconnects.Add(1)
			c.drainOut()
			if c.opts.Reconnect <= 0 || c.network == "" {
				close(c.dead)
				return
			}
		}
		for nc = nil; nc == nil; {
			t := time.NewTimer(c.opts.Reconnect)
			select {
			case <-c.done:
				t.Stop()
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), c.opts.Reconnect+time.Second)
			var err error
			nc, err = (&net.Dialer{}).DialContext(ctx, c.network, c.addr)
			cancel()
			if err != nil {
				nc = nil
			}
		}
		c.mu.Lock()
		c.conn = nc
		c.mu.Unlock()
		select {
		case <-c.done: // Close ran while we dialled and saw no conn
			nc.Close()
			return
		default:
		}
		c.up.Store(true)
	}
}

// drainOut drops what was queued for a connection that is gone.
func (c *Conn) drainOut() {
	for {
		select {
		case <-c.out:
			c.downDropped.Add(1)
		default:
			return
		}
	}
}

// serve moves frames over nc until either direction fails or the
// back-end closes.
func (c *Conn) serve(nc net.Conn) {
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		c.readLoop(nc)
	}()
	defer func() {
		nc.Close() // ends the reader
		<-readerDone
	}()
	for {
		select {
		case <-c.done:
			return
		case <-readerDone:
			return
		case b := <-c.out:
			// One write per batch of what is queued: fewer syscalls
			// when the guest sends in bursts.
			for more := true; more && len(b) < 64<<10; {
				select {
				case b2 := <-c.out:
					b = append(b, b2...)
				default:
					more = false
				}
			}
			if _, err := nc.Write(b); err != nil {
				return
			}
		}
	}
}

func (c *Conn) readLoop(nc net.Conn) {
	r := bufio.NewReaderSize(nc, 128<<10)
	// One buffer for the largest frame, reused: each frame leaves in a
	// copy of its own size.
	buf := make([]byte, netdev.HeaderSize+netdev.MaxFrameLen)
	for {
		n, err := ReadFrame(r, buf, netdev.HeaderSize)
		if err != nil {
			if errors.Is(err, ErrFrameSize) {
				c.bad.Add(1)
			}
			return
		}
		// A zero header (the buffer's first bytes are never written):
		// no offloads, nothing to checksum.
		pkt := append([]byte(nil), buf[:netdev.HeaderSize+n]...)
		select {
		case c.in <- pkt:
		case <-c.done:
			return
		}
	}
}

// ReadFrames implements netdev.Backend.
func (c *Conn) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	if len(bufs) == 0 || len(sizes) < len(bufs) {
		return 0, fmt.Errorf("socket: %d buffers, %d sizes", len(bufs), len(sizes))
	}
	first, err := c.rd.ReceiveUnless(c.done, c.dead, ErrLinkDown, c.in) // what came before a loss is still delivered
	if err != nil {
		return 0, err
	}
	cnt := 0
	put := func(p []byte) {
		sizes[cnt] = copy(bufs[cnt], p)
		c.framesIn.Add(1)
		c.bytesIn.Add(uint64(len(p) - netdev.HeaderSize))
		cnt++
	}
	put(first)
	for cnt < len(bufs) {
		select {
		case p := <-c.in:
			put(p)
		default:
			return cnt, nil
		}
	}
	return cnt, nil
}

// WriteFrames implements netdev.Backend. A frame is refused (with an
// error for it alone) when its header asks for an offload, since none was
// offered, or its size is out of range; all are refused with ErrLinkDown
// while the connection is lost.
func (c *Conn) WriteFrames(frames [][][]byte) (int, error) {
	select {
	case <-c.done:
		return 0, netdev.ErrClosed
	default:
	}
	for i, f := range frames {
		if !c.up.Load() {
			c.downDropped.Add(1)
			return i, ErrLinkDown
		}
		total := 0
		for _, b := range f {
			total += len(b)
		}
		if total < netdev.HeaderSize+netdev.MinFrameLen || total > netdev.MaxPacketLen {
			c.bad.Add(1)
			return i, fmt.Errorf("socket: %w: packet of %d bytes", netdev.ErrHeader, total)
		}
		pkt := make([]byte, PrefixSize, PrefixSize+total)
		for _, b := range f {
			pkt = append(pkt, b...)
		}
		if err := netdev.DecodeHeader(pkt[PrefixSize:]).Check(total-netdev.HeaderSize, 0); err != nil {
			c.bad.Add(1)
			return i, err
		}
		// Drop the header: the prefix moves to right before the frame,
		// over the header's last four bytes.
		flen := total - netdev.HeaderSize
		pkt = pkt[netdev.HeaderSize:]
		putPrefix(pkt, flen)
		if c.opts.Blocking {
			select {
			case c.out <- pkt:
				c.framesOut.Add(1)
				c.bytesOut.Add(uint64(flen))
			case <-c.done:
				return i, netdev.ErrClosed
			case <-c.dead:
				return i, ErrLinkDown
			}
			continue
		}
		select {
		case c.out <- pkt:
			c.framesOut.Add(1)
			c.bytesOut.Add(uint64(flen))
		default:
			c.outDropped.Add(1)
		}
	}
	return len(frames), nil
}

func putPrefix(b []byte, n int) {
	b[0], b[1], b[2], b[3] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
}

// SetReadDeadline implements netdev.Backend.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.rd.Set(t)
	return nil
}

// Close implements netdev.Backend: it closes the connection and waits for
// the back-end's goroutines.
func (c *Conn) Close() error {
	err := netdev.ErrClosed
	c.closeOnce.Do(func() {
		err = nil
		close(c.done)
		c.mu.Lock()
		if c.conn != nil {
			c.conn.Close()
		}
		c.mu.Unlock()
		c.wg.Wait()
	})
	return err
}

// Queued returns how many frames wait to be sent.
func (c *Conn) Queued() int { return len(c.out) }

// Up reports whether the connection is established.
func (c *Conn) Up() bool { return c.up.Load() }

// Dead is closed when the connection is lost and will not come back (no
// Reconnect, or an accepted connection). ReadFrames then returns
// ErrLinkDown once it has delivered what arrived before the loss.
func (c *Conn) Dead() <-chan struct{} { return c.dead }

// Stats returns the back-end's counters.
func (c *Conn) Stats() Stats {
	return Stats{
		FramesIn: c.framesIn.Load(), BytesIn: c.bytesIn.Load(),
		FramesOut: c.framesOut.Load(), BytesOut: c.bytesOut.Load(),
		OutDropped: c.outDropped.Load(), DownDropped: c.downDropped.Load(),
		BadFrames: c.bad.Load(), Disconnects: c.disconnects.Load(),
	}
}
