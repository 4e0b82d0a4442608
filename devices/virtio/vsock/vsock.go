// Package vsock is virtio-vsock (virtio 1.2 section 5.10): stream sockets
// between the guest and the host, with the host side in the "hybrid
// vsock" form of Firecracker and Cloud Hypervisor. The device listens on a
// UNIX socket PATH:
//
//   - a host program connects to PATH and writes "CONNECT <port>\n"; the
//     device opens a connection to the guest's listener on <port> and, once
//     the guest accepts, answers "OK <hostport>\n" and relays the stream;
//   - a guest program connects to CID 2 (the host) port P; the device
//     connects to the UNIX socket "PATH_P" and relays the stream.
//
// The guest is hostile: every packet is checked, a connection that breaks
// the protocol or its credit is reset (RST), a packet for no connection
// gets an RST, and the number of connections and the bytes held for each
// are bounded. No socket operation runs on the device's goroutine or a
// vCPU thread: each connection has a reading and a writing goroutine.
package vsock

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio"
)

// Queue indexes (spec 5.10.2).
const (
	RxQueue    = 0 // host to guest
	TxQueue    = 1 // guest to host
	EventQueue = 2
)

// FeatureStream is VIRTIO_VSOCK_F_STREAM. Stream sockets are what the
// device serves; a driver that predates the bit assumes them.
const FeatureStream uint64 = 1 << 0

const (
	cfgLength = 8 // guest_cid

	defaultQueueSize = 256
	defaultBufAlloc  = 256 << 10
	defaultMaxConns  = 256
	defaultChunk     = 16 << 10

	// The handshake ("CONNECT <port>\n") must arrive within this time and
	// this many bytes; at most maxHandshakes run at once.
	handshakeTimeout = 10 * time.Second
	maxHandshakeLine = 32
	maxHandshakes    = 16
	// connectTimeout bounds how long the guest may leave a host-initiated
	// connection unanswered.
	connectTimeout = 5 * time.Second
	// txBudget bounds the transmit packets handled before the device
	// looks at host events again.
	txBudget = 256
)

// Config describes a vsock device.
type Config struct {
	// CID is the guest's context id, at least 3.
	CID uint64
	// Socket is the UNIX socket path host programs connect to; guest
	// connections to host port P go to Socket_P.
	Socket string
	// QueueSize is each queue's maximum size (default 256).
	QueueSize uint16
	// BufAlloc is the receive buffer each connection advertises to the
	// guest: the most guest data held for a slow host reader (default
	// 256 KiB).
	BufAlloc uint32
	// MaxConns bounds open connections, both directions together
	// (default 256).
	MaxConns int
	// ReadChunk is the most host data read at a time per connection
	// (default 16 KiB).
	ReadChunk int
}

// Errors.
var (
	ErrConfig  = errors.New("vsock: bad configuration")
	ErrNoQueue = errors.New("vsock: receive or transmit queue not enabled")
	ErrActive  = errors.New("vsock: already active")
)

// Device is a virtio-vsock device.
type Device struct {
	cfg Config
	ln  *net.UnixListener

	stats counters

	mu         sync.Mutex // guards run, handshakes and closing
	run        *activation
	handshakes map[net.Conn]bool
	closing    chan struct{}
	closed     bool
	wg         sync.WaitGroup // the accept and handshake goroutines
}

var _ virtio.Device = (*Device)(nil)

// New validates cfg, listens on cfg.Socket and returns the device. A
// socket file left at the path by a process that is gone is replaced; one
// that a live process listens on is an error. Close releases it.
func New(cfg Config) (*Device, error) {
	if cfg.CID < 3 || cfg.CID >= 0xffffffff {
		return nil, fmt.Errorf("%w: guest cid %d: give 3 or more (0-2 are reserved, and Linux takes 32 bits)", ErrConfig, cfg.CID)
	}
	if cfg.Socket == "" {
		return nil, fmt.Errorf("%w: no socket path: give socket=PATH", ErrConfig)
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = defaultQueueSize
	}
	if s := cfg.QueueSize; s&(s-1) != 0 || s > virtio.MaxQueueSize {
		return nil, fmt.Errorf("%w: queue size %d", ErrConfig, s)
	}
	if cfg.BufAlloc == 0 {
		cfg.BufAlloc = defaultBufAlloc
	}
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = defaultMaxConns
	}
	if cfg.ReadChunk <= 0 {
		cfg.ReadChunk = defaultChunk
	}
	ln, err := listen(cfg.Socket)
	if err != nil {
		return nil, err
	}
	d := &Device{cfg: cfg, ln: ln, handshakes: map[net.Conn]bool{}, closing: make(chan struct{})}
	d.wg.Add(1)
	go func() { defer d.wg.Done(); d.accept() }()
	return d, nil
}

// listen creates the listening socket, replacing a stale one.
func listen(path string) (*net.UnixListener, error) {
	addr := &net.UnixAddr{Name: path, Net: "unix"}
	ln, err := net.ListenUnix("unix", addr)
	if err != nil && errors.Is(err, syscall.EADDRINUSE) {
		st, serr := os.Lstat(path)
		if serr != nil || st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("vsock socket %s: the path exists and is not a socket: remove it or choose another path", path)
		}
		if c, derr := net.DialTimeout("unix", path, time.Second); derr == nil {
			c.Close()
			return nil, fmt.Errorf("vsock socket %s is in use by another process: choose another path", path)
		}
		os.Remove(path) // stale: its listener is gone
		ln, err = net.ListenUnix("unix", addr)
	}
	if err != nil {
		return nil, fmt.Errorf("vsock socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(true)
	return ln, nil
}

// Close stops listening, removes the socket file and waits for pending
// handshakes to end. Call it after the last Reset.
func (d *Device) Close() error {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil
	}
	d.closed = true
	close(d.closing)
	for c := range d.handshakes {
		c.Close()
	}
	d.mu.Unlock()
	err := d.ln.Close()
	d.wg.Wait()
	return err
}

// Path returns the socket path host programs connect to.
func (d *Device) Path() string { return d.cfg.Socket }

func (d *Device) accept() {
	for {
		nc, err := d.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors, say: wait a little rather than spin.
			select {
			case <-d.closing:
				return
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		d.mu.Lock()
		if d.closed || len(d.handshakes) >= maxHandshakes {
			d.mu.Unlock()
			d.stats.refused.Add(1)
			nc.Close()
			continue
		}
		d.handshakes[nc] = true
		d.wg.Add(1)
		d.mu.Unlock()
		go func() { defer d.wg.Done(); d.handshake(nc) }()
	}
}

// ParseConnect parses the host side's request line, "CONNECT <port>"
// (without the newline).
func ParseConnect(line string) (uint32, error) {
	rest, ok := strings.CutPrefix(line, "CONNECT ")
	if !ok {
		return 0, fmt.Errorf("vsock: %q is not CONNECT <port>", line)
	}
	port, err := strconv.ParseUint(rest, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("vsock: %q: the port is not a number below 2^32", line)
	}
	return uint32(port), nil
}

// handshake reads "CONNECT <port>\n" and hands the socket to the running
// device, which connects to the guest. The line is read a byte at a time:
// what follows it is the stream.
func (d *Device) handshake(nc *net.UnixConn) {
	handed := false
	defer func() {
		d.mu.Lock()
		delete(d.handshakes, nc)
		d.mu.Unlock()
		if !handed {
			nc.Close()
		}
	}()
	nc.SetReadDeadline(time.Now().Add(handshakeTimeout))
	r := bufio.NewReaderSize(oneByte{nc}, 16)
	var line []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			return
		}
		if b == '\n' {
			break
		}
		if len(line) >= maxHandshakeLine {
			return
		}
		line = append(line, b)
	}
	port, err := ParseConnect(strings.TrimSuffix(string(line), "\r"))
	if err != nil {
		d.stats.badHandshakes.Add(1)
		return
	}
	nc.SetReadDeadline(time.Time{})
	d.mu.Lock()
	run := d.run
	d.mu.Unlock()
	if run == nil {
		return // no driver: nobody to connect to
	}
	s := newSock(nc, run.events)
	f := func() { run.hostConnect(s, port) }
	select {
	case run.events <- f:
		handed = true
	case <-run.stop:
	case <-d.closing:
	}
}

// oneByte reads at most one byte per Read, so that bufio never takes
// bytes beyond the handshake line off the socket.
type oneByte struct{ c net.Conn }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) > 1 {
		p = p[:1]
	}
	return o.c.Read(p)
}

// Type implements virtio.Device.
func (*Device) Type() virtio.DeviceType { return virtio.TypeVsock }

// Features implements virtio.Device.
func (*Device) Features() uint64 { return FeatureStream }

// QueueMaxSizes implements virtio.Device: rx, tx and event queues.
func (d *Device) QueueMaxSizes() []uint16 {
	return []uint16{d.cfg.QueueSize, d.cfg.QueueSize, d.cfg.QueueSize}
}

// ReadConfig implements virtio.Device: guest_cid, 64 bits.
func (d *Device) ReadConfig(offset uint64, data []byte) {
	clear(data)
	if offset >= cfgLength {
		return
	}
	var b [cfgLength]byte
	for i := range b {
		b[i] = byte(d.cfg.CID >> (8 * i))
	}
	copy(data, b[offset:])
}

// WriteConfig implements virtio.Device: the configuration is read-only.
func (*Device) WriteConfig(uint64, []byte) {}

// CID returns the guest's context id.
func (d *Device) CID() uint64 { return d.cfg.CID }

type activation struct {
	d      *Device
	stop   chan struct{}
	gate   *state.Gate
	paused atomic.Bool
	events chan func()
	done   chan struct{}
	hostWG sync.WaitGroup // the connections' goroutines
	rx, tx *virtio.Queue
	m      *mux
	nconns atomic.Int32 // len(m.conns), for SaveState
}

// Activate implements virtio.Device.
func (d *Device) Activate(a *virtio.Activation) error {
	if len(a.Queues) != 3 || a.Queues[RxQueue] == nil || a.Queues[TxQueue] == nil {
		return ErrNoQueue
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.run != nil {
		return ErrActive
	}
	run := &activation{d: d, stop: make(chan struct{}), gate: state.NewGate(), events: make(chan func()),
		done: make(chan struct{}), rx: a.Queues[RxQueue], tx: a.Queues[TxQueue]}
	ctx, cancel := context.WithCancel(context.Background())
	h := &unixHost{path: d.cfg.Socket, chunk: d.cfg.ReadChunk, events: run.events, ctx: ctx, wg: &run.hostWG}
	run.m = newMux(d.cfg.CID, h, d.cfg, &d.stats)
	h.m = run.m
	run.gate.Join()
	go func() {
		defer close(run.done)
		defer cancel()
		defer run.gate.Leave()
		run.serve()
	}()
	d.run = run
	return nil
}

// Reset implements virtio.Device: every connection is closed (host
// programs see their sockets close) and the device's goroutines end.
func (d *Device) Reset() {
	d.mu.Lock()
	run := d.run
	d.run = nil
	d.mu.Unlock()
	if run == nil {
		return
	}
	close(run.stop)
	<-run.done
	run.hostWG.Wait()
}

// hostConnect starts a host-initiated connection (device goroutine).
func (a *activation) hostConnect(s *sock, port uint32) {
	var t *time.Timer
	c, ok := a.m.hostConnect(port, s, func() {
		if t != nil {
			t.Stop()
		}
	})
	if !ok {
		a.m.host.close(&conn{h: s})
		return
	}
	t = time.AfterFunc(connectTimeout, func() { s.deliver(func() { a.m.timedOut(c) }) })
}

// serve is the device goroutine. It polls at start: a device restored
// from a snapshot may find packets the driver queued before the save.
func (a *activation) serve() {
	defer func() {
		a.m.closeAll()
		a.nconns.Store(0)
	}()
	for {
		txMore, ok := a.drainTx()
		if !ok || !a.fillRx() {
			return
		}
		a.nconns.Store(int32(len(a.m.conns)))
		if txMore {
			select {
			case <-a.stop:
				return
			case <-a.gate.Requested():
				if !a.gate.Park(a.stop) {
					return
				}
			case f := <-a.events:
				f()
			default:
			}
			continue
		}
		select {
		case <-a.stop:
			return
		case <-a.gate.Requested():
			if !a.gate.Park(a.stop) {
				return
			}
		case <-a.tx.Kicks():
			a.d.stats.notifications.Add(1)
		case <-a.rx.Kicks():
			a.d.stats.notifications.Add(1)
		case f := <-a.events:
			f()
		}
	}
}

// drainTx handles the guest's packets, at most txBudget of them. It
// reports whether more may be waiting, and false in ok when the queue
// broke (the transport has set DEVICE_NEEDS_RESET).
func (a *activation) drainTx() (more, ok bool) {
	pushed := false
	defer func() {
		if pushed {
			_ = a.tx.Signal()
		}
	}()
	for range txBudget {
		c, err := a.tx.Next()
		if err != nil {
			return false, false
		}
		if c == nil {
			again, err := a.tx.EnableNotifications()
			if err != nil {
				return false, false
			}
			if !again {
				return false, true
			}
			continue
		}
		a.d.stats.txPackets.Add(1)
		a.m.guest(c.Readable)
		if a.tx.Push(c.Head, 0) != nil {
			return false, false
		}
		pushed = true
	}
	return true, true
}

// fillRx gives the guest what it is owed while it has receive buffers.
func (a *activation) fillRx() bool {
	pushed := false
	defer func() {
		if pushed {
			_ = a.rx.Signal()
		}
	}()
	for a.m.owed() {
		c, err := a.rx.Next()
		if err != nil {
			return false
		}
		if c == nil {
			more, err := a.rx.EnableNotifications()
			if err != nil {
				return false
			}
			if more {
				continue
			}
			return true // the driver kicks when it posts buffers
		}
		n := a.m.fill(c.Writable)
		if n == 0 {
			// Too small to carry data: returned empty.
			a.d.stats.badPackets.Add(1)
		}
		if a.rx.Push(c.Head, n) != nil {
			return false
		}
		a.d.stats.rxPackets.Add(1)
		pushed = true
	}
	return true
}

// Stats are the device's counters.
type Stats struct {
	// TxPackets came from the guest, RxPackets went to it (each a
	// used buffer).
	TxPackets, RxPackets uint64
	// FromGuest and ToGuest count stream payload bytes.
	FromGuest, ToGuest uint64
	// Opened counts connections established, Refused those refused
	// (too many, or no host listener), Resets those reset for a
	// protocol error or a host socket error.
	Opened, Refused, Resets uint64
	// BadPackets counts malformed packets and buffers; Dropped counts
	// RSTs not sent because the guest posted no receive buffers.
	BadPackets, Dropped uint64
	// BadHandshakes counts host connections with a malformed CONNECT.
	BadHandshakes uint64
	Notifications uint64
}

type counters struct {
	txPackets, rxPackets, fromGuest, toGuest, opened, refused, resets,
	badPackets, dropped, badHandshakes, notifications atomic.Uint64
}

// Stats returns the device's counters.
func (d *Device) Stats() Stats {
	c := &d.stats
	return Stats{TxPackets: c.txPackets.Load(), RxPackets: c.rxPackets.Load(), FromGuest: c.fromGuest.Load(),
		ToGuest: c.toGuest.Load(), Opened: c.opened.Load(), Refused: c.refused.Load(), Resets: c.resets.Load(),
		BadPackets: c.badPackets.Load(), Dropped: c.dropped.Load(), BadHandshakes: c.badHandshakes.Load(),
		Notifications: c.notifications.Load()}
}
