package vsock_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"github.com/viovmm/vio/state"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/virtio/vsock"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const (
	msiAddr  = 0xfee00000
	wait     = 10 * time.Second // bounds a hang; never a synchronization
	guestCID = 3
	rxBuf    = 4096 // Linux's receive buffer, after a separate header
)

// machine is a vsock device driven over virtio-pci by a guest double
// that speaks the packet protocol by hand.
type machine struct {
	t          *testing.T
	dev        *vsock.Device
	mc         *virtiopcitest.Machine
	rx, tx, ev *queuetest.Driver
	got        []packet // received, not yet expected
}

type packet struct {
	vsock.Header
	data []byte
}

func newDevice(t *testing.T, cfg vsock.Config) *vsock.Device {
	t.Helper()
	if cfg.CID == 0 {
		cfg.CID = guestCID
	}
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(t.TempDir(), "v.sock")
	}
	dev, err := vsock.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	return dev
}

func newMachine(t *testing.T, cfg vsock.Config) *machine {
	t.Helper()
	dev := newDevice(t, cfg)
	mc := virtiopcitest.NewMachine(t, dev, 32<<20, 1<<14)
	m := &machine{t: t, dev: dev, mc: mc}
	g := mc.Guest
	if err := g.Negotiate(virtio.FeatureVersion1 | virtio.FeatureEventIdx); err != nil {
		t.Fatal(err)
	}
	for v := range 4 {
		g.ProgramMSIX(v, msiAddr, uint32(0x50+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	var err error
	for _, q := range []struct {
		d    **queuetest.Driver
		i    int
		base uint64
	}{{&m.rx, vsock.RxQueue, 0x100000}, {&m.tx, vsock.TxQueue, 0x800000}, {&m.ev, vsock.EventQueue, 0x1000000}} {
		if *q.d, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: q.i, Vector: uint16(q.i + 1), Base: q.base, DataSize: 0x600000, EventIdx: true}); err != nil {
			t.Fatal(err)
		}
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDeviceNeedsReset != 0 || s&virtio.StatusDriverOK == 0 {
		t.Fatalf("status %#x", s)
	}
	return m
}

// send puts one packet on the transmit queue: the header and the payload
// in separate buffers, as Linux does.
func (m *machine) send(h vsock.Header, data []byte) {
	m.t.Helper()
	if h.SrcCID == 0 {
		h.SrcCID = guestCID
	}
	if h.DstCID == 0 {
		h.DstCID = vsock.HostCID
	}
	if h.Type == 0 {
		h.Type = vsock.TypeStream
	}
	h.Len = uint32(len(data))
	hb := make([]byte, vsock.HeaderSize)
	h.Encode(hb)
	bufs := [][]byte{hb}
	if len(data) > 0 {
		bufs = append(bufs, data)
	}
	m.sendRaw(bufs...)
}

func (m *machine) sendRaw(bufs ...[]byte) {
	m.t.Helper()
	deadline := time.Now().Add(wait)
	for {
		for {
			if _, ok, err := m.tx.GetUsed(); err != nil {
				m.t.Fatal(err)
			} else if !ok {
				break
			}
		}
		_, err := m.tx.Add(bufs, nil)
		if err == nil {
			break
		}
		if !errors.Is(err, queuetest.ErrNoBufferSpace) && !errors.Is(err, queuetest.ErrNoDescriptors) {
			m.t.Fatal(err)
		}
		m.waitIRQ(deadline, "transmit buffers back")
	}
	if m.tx.NeedsKick() {
		m.mc.Guest.Kick(vsock.TxQueue)
	}
}

func (m *machine) waitIRQ(deadline time.Time, what string) {
	m.t.Helper()
	if _, err := m.mc.Router.Wait(time.Until(deadline)); err != nil {
		m.t.Fatalf("waiting for %s: %v", what, err)
	}
}

// recv returns the next packet from the device, posting receive
// buffers (a 44-byte header and a 4 KiB buffer each, as Linux 6.1 does)
// whenever the guest has none left.
func (m *machine) recv() packet {
	m.t.Helper()
	if len(m.got) > 0 {
		p := m.got[0]
		m.got = m.got[1:]
		return p
	}
	deadline := time.Now().Add(wait)
	for {
		if m.rx.InFlight() == 0 {
			for range 16 {
				if _, err := m.rx.Add(nil, []uint32{vsock.HeaderSize, rxBuf}); err != nil {
					m.t.Fatal(err)
				}
			}
			if m.rx.NeedsKick() {
				m.mc.Guest.Kick(vsock.RxQueue)
			}
		}
		u, ok, err := m.rx.GetUsed()
		if err != nil {
			m.t.Fatal(err)
		}
		if ok {
			if len(u.Data) < vsock.HeaderSize {
				m.t.Fatalf("used receive buffer of %d bytes", len(u.Data))
			}
			h := vsock.DecodeHeader(u.Data)
			if h.SrcCID != vsock.HostCID || h.DstCID != guestCID || h.Len != uint32(len(u.Data)-vsock.HeaderSize) {
				m.t.Fatalf("bad packet from the device: %v (%d bytes)", h, len(u.Data))
			}
			return packet{h, u.Data[vsock.HeaderSize:]}
		}
		m.waitIRQ(deadline, "a packet from the device")
	}
}

// expect receives the next packet and checks its op.
func (m *machine) expect(op uint16) packet {
	m.t.Helper()
	p := m.recv()
	if p.Op != op {
		m.t.Fatalf("got %v, want op %d", p.Header, op)
	}
	return p
}

// hostConnect connects a host program to the device's socket and asks for
// guest port port.
func hostConnect(t *testing.T, dev *vsock.Device, port uint32) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", dev.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	if _, err := fmt.Fprintf(c, "CONNECT %d\n", port); err != nil {
		t.Fatal(err)
	}
	return c
}

// readLine reads one line a byte at a time (what follows is the stream).
func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			t.Fatalf("reading a line after %q: %v", b, err)
		}
		if one[0] == '\n' {
			return string(b)
		}
		b = append(b, one[0])
	}
}

// open makes a host-initiated connection to guest port 1234 that the
// guest accepts with buffer space bufAlloc, and returns the host's socket
// and the connection's host port.
func (m *machine) open(bufAlloc uint32) (net.Conn, uint32) {
	m.t.Helper()
	c := hostConnect(m.t, m.dev, 1234)
	req := m.expect(vsock.OpRequest)
	if req.DstPort != 1234 || req.SrcPort < 1<<30 || req.BufAlloc == 0 {
		m.t.Fatalf("request %v", req.Header)
	}
	m.send(vsock.Header{SrcPort: 1234, DstPort: req.SrcPort, Op: vsock.OpResponse, BufAlloc: bufAlloc}, nil)
	if line := readLine(m.t, c); line != fmt.Sprintf("OK %d", req.SrcPort) {
		m.t.Fatalf("host got %q", line)
	}
	return c, req.SrcPort
}

func TestConfigSpace(t *testing.T) {
	m := newMachine(t, vsock.Config{CID: 0x1_0000_0007 & 0xffffffff})
	if got := m.mc.Guest.ReadDeviceConfig(0, 4); got != 7 {
		t.Errorf("guest_cid low %#x", got)
	}
	if got := m.mc.Guest.ReadDeviceConfig(4, 4); got != 0 {
		t.Errorf("guest_cid high %#x", got)
	}
	if m.dev.Type() != virtio.TypeVsock || len(m.dev.QueueMaxSizes()) != 3 {
		t.Errorf("type %d queues %d", m.dev.Type(), len(m.dev.QueueMaxSizes()))
	}
}

func TestNewRefuses(t *testing.T) {
	dir := t.TempDir()
	for _, cfg := range []vsock.Config{
		{CID: 2, Socket: filepath.Join(dir, "a")},
		{CID: 3},
		{CID: 1 << 32, Socket: filepath.Join(dir, "b")},
		{CID: 3, Socket: filepath.Join(dir, "c"), QueueSize: 100},
	} {
		if _, err := vsock.New(cfg); !errors.Is(err, vsock.ErrConfig) {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
	// A regular file at the path is not replaced; a live listener is not
	// stolen; a stale socket is.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	if _, err := vsock.New(vsock.Config{CID: 3, Socket: file}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("over a file: %v", err)
	}
	live := newDevice(t, vsock.Config{})
	if _, err := vsock.New(vsock.Config{CID: 3, Socket: live.Path()}); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("over a live socket: %v", err)
	}
	stale := filepath.Join(dir, "stale")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	d, err := vsock.New(vsock.Config{CID: 3, Socket: stale})
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	d.Close()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file left after Close: %v", err)
	}
}

// TestHostInitiated: a host program connects, the guest accepts, data
// flows both ways, and the closes in both directions are relayed.
func TestHostInitiated(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	c, hp := m.open(1 << 20)
	// Host to guest, more than one receive buffer's worth.
	msg := bytes.Repeat([]byte("host->guest "), 1000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	var got []byte
	for len(got) < len(msg) {
		p := m.expect(vsock.OpRW)
		if p.SrcPort != hp || p.DstPort != 1234 || len(p.data) > rxBuf {
			t.Fatalf("data packet %v", p.Header)
		}
		got = append(got, p.data...)
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("host data corrupted")
	}
	// Guest to host.
	m.send(vsock.Header{SrcPort: 1234, DstPort: hp, Op: vsock.OpRW, BufAlloc: 1 << 20, FwdCnt: uint32(len(got))}, []byte("guest->host"))
	buf := make([]byte, 11)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "guest->host" {
		t.Fatalf("host read %q, %v", buf, err)
	}
	// The host closes its writing half: the guest gets SHUTDOWN(SEND)
	// and can still send.
	c.(*net.UnixConn).CloseWrite()
	if p := m.expect(vsock.OpShutdown); p.Flags != vsock.ShutdownSend {
		t.Fatalf("shutdown flags %#x", p.Flags)
	}
	m.send(vsock.Header{SrcPort: 1234, DstPort: hp, Op: vsock.OpRW, BufAlloc: 1 << 20}, []byte("bye"))
	// The guest closes: the host reads the rest, then EOF; the guest gets
	// its RST.
	m.send(vsock.Header{SrcPort: 1234, DstPort: hp, Op: vsock.OpShutdown, Flags: vsock.ShutdownRecv | vsock.ShutdownSend, BufAlloc: 1 << 20}, nil)
	rest, err := io.ReadAll(c)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("host read %q, %v", rest, err)
	}
	m.expect(vsock.OpRST)
	if s := m.dev.Stats(); s.Opened != 1 || s.FromGuest != 14 || s.ToGuest != uint64(len(msg)) || s.Resets != 0 {
		t.Errorf("stats %+v", s)
	}
}

// TestHostInitiatedRefused: the guest has no listener and answers RST;
// the host program sees its socket close without OK.
func TestHostInitiatedRefused(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	c := hostConnect(t, m.dev, 99)
	req := m.expect(vsock.OpRequest)
	m.send(vsock.Header{SrcPort: 99, DstPort: req.SrcPort, Op: vsock.OpRST}, nil)
	if b, err := io.ReadAll(c); err != nil || len(b) != 0 {
		t.Fatalf("host read %q, %v", b, err)
	}
}

func TestBadHandshake(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	for _, line := range []string{"HELLO 5\n", "CONNECT x\n", "CONNECT 99999999999\n", strings.Repeat("C", 100)} {
		c, err := net.Dial("unix", m.dev.Path())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(wait))
		c.Write([]byte(line))
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil && !errors.Is(err, io.EOF) && !strings.Contains(err.Error(), "reset") {
			t.Errorf("%q: host read %q, %v", line, b, err)
		}
		c.Close()
	}
	// The device is not disturbed: a good connection still works.
	m.open(4096)
	if s := m.dev.Stats(); s.BadHandshakes != 3 {
		t.Errorf("bad handshakes %d", s.BadHandshakes)
	}
}

func TestParseConnect(t *testing.T) {
	if p, err := vsock.ParseConnect("CONNECT 52"); err != nil || p != 52 {
		t.Errorf("%d, %v", p, err)
	}
	for _, s := range []string{"", "CONNECT", "CONNECT -1", "CONNECT 4294967296", "connect 5", "CONNECT 5 6"} {
		if _, err := vsock.ParseConnect(s); err == nil {
			t.Errorf("%q accepted", s)
		}
	}
}

// TestGuestInitiated: the guest connects to host port 5000; the device
// connects to PATH_5000.
func TestGuestInitiated(t *testing.T) {
	dev := newDevice(t, vsock.Config{})
	ln, err := net.Listen("unix", dev.Path()+"_5000")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	mc := newMachineFor(t, dev)
	mc.send(vsock.Header{SrcPort: 40000, DstPort: 5000, Op: vsock.OpRequest, BufAlloc: 1 << 16}, nil)
	hc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer hc.Close()
	hc.SetDeadline(time.Now().Add(wait))
	resp := mc.expect(vsock.OpResponse)
	if resp.SrcPort != 5000 || resp.DstPort != 40000 || resp.BufAlloc == 0 {
		t.Fatalf("response %v", resp.Header)
	}
	mc.send(vsock.Header{SrcPort: 40000, DstPort: 5000, Op: vsock.OpRW, BufAlloc: 1 << 16}, []byte("ping"))
	buf := make([]byte, 4)
	if _, err := io.ReadFull(hc, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("host read %q, %v", buf, err)
	}
	hc.Write([]byte("pong"))
	if p := mc.expect(vsock.OpRW); string(p.data) != "pong" {
		t.Fatalf("got %v %q", p.Header, p.data)
	}
	// The host program closes: SHUTDOWN(SEND) to the guest, which closes
	// too and gets an RST.
	hc.Close()
	mc.expect(vsock.OpShutdown)
	mc.send(vsock.Header{SrcPort: 40000, DstPort: 5000, Op: vsock.OpShutdown, Flags: 3, BufAlloc: 1 << 16}, nil)
	mc.expect(vsock.OpRST)
}

func newMachineFor(t *testing.T, dev *vsock.Device) *machine {
	// newMachine with an existing device: build a machine and swap.
	t.Helper()
	m := &machine{t: t, dev: dev}
	mc := virtiopcitest.NewMachine(t, dev, 32<<20, 1<<14)
	m.mc = mc
	g := mc.Guest
	if err := g.Negotiate(virtio.FeatureVersion1 | virtio.FeatureEventIdx); err != nil {
		t.Fatal(err)
	}
	for v := range 4 {
		g.ProgramMSIX(v, msiAddr, uint32(0x50+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	var err error
	if m.rx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: vsock.RxQueue, Vector: 1, Base: 0x100000, DataSize: 0x600000, EventIdx: true}); err != nil {
		t.Fatal(err)
	}
	if m.tx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: vsock.TxQueue, Vector: 2, Base: 0x800000, DataSize: 0x600000, EventIdx: true}); err != nil {
		t.Fatal(err)
	}
	if m.ev, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: vsock.EventQueue, Vector: 3, Base: 0x1000000, DataSize: 0x10000, EventIdx: true}); err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	return m
}

func TestGuestInitiatedNoListener(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	m.send(vsock.Header{SrcPort: 40000, DstPort: 7, Op: vsock.OpRequest, BufAlloc: 1 << 16}, nil)
	if p := m.expect(vsock.OpRST); p.SrcPort != 7 || p.DstPort != 40000 {
		t.Fatalf("rst %v", p.Header)
	}
}

// TestUnknownAndHostile: packets for no connection get an RST (an RST
// gets nothing), malformed ones are dropped, and the device keeps
// working.
func TestUnknownAndHostile(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	m.send(vsock.Header{SrcPort: 1, DstPort: 2, Op: vsock.OpRST}, nil)                                // nothing
	m.sendRaw([]byte{1, 2, 3})                                                                        // too short: dropped
	m.send(vsock.Header{SrcCID: 9, SrcPort: 1, DstPort: 2, Op: vsock.OpRW}, []byte("spoofed"))        // dropped
	m.send(vsock.Header{SrcPort: 1, DstPort: 2, Op: vsock.OpRequest, Type: vsock.TypeSeqpacket}, nil) // RST
	m.send(vsock.Header{SrcPort: 3, DstPort: 4, DstCID: 7, Op: vsock.OpRequest}, nil)                 // another VM: RST
	m.send(vsock.Header{SrcPort: 5, DstPort: 6, Op: vsock.OpRW}, []byte("x"))                         // RST
	m.send(vsock.Header{SrcPort: 8, DstPort: 9, Op: 77}, nil)                                         // RST
	for _, want := range [][2]uint32{{2, 1}, {4, 3}, {6, 5}, {9, 8}} {
		if p := m.expect(vsock.OpRST); p.SrcPort != want[0] || p.DstPort != want[1] {
			t.Fatalf("rst %v, want %d->%d", p.Header, want[0], want[1])
		}
	}
	if s := m.mc.Guest.Status(); s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x", s)
	}
	m.open(4096)
	if s := m.dev.Stats(); s.BadPackets != 4 {
		t.Errorf("bad packets %d", s.BadPackets)
	}
}

// TestCreditToGuest: the device sends no more than the guest's credit and
// goes on when the guest reports progress.
func TestCreditToGuest(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	c, hp := m.open(1000)
	msg := make([]byte, 5000)
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	go c.Write(msg) // may block: the device must not read ahead unboundedly
	var got []byte
	var fwd uint32
	for len(got) < len(msg) {
		// Ask for credit: everything before the answer is within it.
		m.send(vsock.Header{SrcPort: 1234, DstPort: hp, Op: vsock.OpCreditRequest, BufAlloc: 1000, FwdCnt: fwd}, nil)
		for {
			p := m.recv()
			if p.Op == vsock.OpCreditUpdate {
				break
			}
			if p.Op != vsock.OpRW {
				t.Fatalf("got %v", p.Header)
			}
			got = append(got, p.data...)
			if uint32(len(got))-fwd > 1000 {
				t.Fatalf("%d bytes unacknowledged, the guest's buffer is 1000", uint32(len(got))-fwd)
			}
		}
		fwd = uint32(len(got)) // the guest application read it all
	}
	if !bytes.Equal(got, msg) {
		t.Fatal("data corrupted")
	}
}

// TestCreditFromGuest: the device gives credit back as the host reads,
// and resets a guest that sends beyond it.
func TestCreditFromGuest(t *testing.T) {
	m := newMachine(t, vsock.Config{BufAlloc: 8192})
	c, hp := m.open(1 << 16)
	m.send(vsock.Header{SrcPort: 1234, DstPort: hp, Op: vsock.OpRW, BufAlloc: 1 << 16}, bytes.Repeat([]byte{0xab}, 4196))
	buf := make([]byte, 4196)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	// More than half the buffer was in use: the device says it is free.
	if p := m.expect(vsock.OpCreditUpdate); p.FwdCnt != 4196 || p.BufAlloc != 8192 {
		t.Fatalf("credit update %v", p.Header)
	}
	// Now 8192 more may be in flight; 8193 is too many.
	m.send(vsock.Header{SrcPort: 1234, DstPort: hp, Op: vsock.OpRW, BufAlloc: 1 << 16}, make([]byte, 8193))
	m.expect(vsock.OpRST)
	if _, err := io.ReadAll(c); err != nil && !strings.Contains(err.Error(), "reset") {
		t.Fatal(err)
	}
	if s := m.dev.Stats(); s.Resets != 1 {
		t.Errorf("resets %d", s.Resets)
	}
}

// TestMaxConns: connections beyond the bound are refused with an RST.
func TestMaxConns(t *testing.T) {
	dev := newDevice(t, vsock.Config{MaxConns: 2})
	ln, err := net.Listen("unix", dev.Path()+"_80")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	m := newMachineFor(t, dev)
	for port := uint32(1); port <= 2; port++ {
		m.send(vsock.Header{SrcPort: port, DstPort: 80, Op: vsock.OpRequest, BufAlloc: 4096}, nil)
		if p := m.expect(vsock.OpResponse); p.DstPort != port {
			t.Fatalf("response %v", p.Header)
		}
	}
	m.send(vsock.Header{SrcPort: 3, DstPort: 80, Op: vsock.OpRequest, BufAlloc: 4096}, nil)
	if p := m.expect(vsock.OpRST); p.DstPort != 3 {
		t.Fatalf("rst %v", p.Header)
	}
	// Host connections are refused too: the socket closes.
	c := hostConnect(t, dev, 1)
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
		t.Fatalf("host read %q, %v", b, err)
	}
	// Closing one makes room.
	m.send(vsock.Header{SrcPort: 1, DstPort: 80, Op: vsock.OpRST}, nil)
	m.send(vsock.Header{SrcPort: 4, DstPort: 80, Op: vsock.OpRequest, BufAlloc: 4096}, nil)
	if p := m.expect(vsock.OpResponse); p.DstPort != 4 {
		t.Fatalf("response %v", p.Header)
	}
}

// TestResetClosesConnections: a device reset closes host sockets.
func TestResetClosesConnections(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	c, _ := m.open(4096)
	if err := m.mc.Guest.Reset(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
		t.Fatalf("host read %q, %v", b, err)
	}
	// With no driver, host connections are closed at once.
	c2 := hostConnect(t, m.dev, 1234)
	if b, err := io.ReadAll(c2); len(b) != 0 || err != nil {
		t.Fatalf("host read %q, %v", b, err)
	}
}

// TestSaveState: a paused device with no connections saves its cid; one
// with an open connection refuses, saying why; a restore checks the cid.
func TestSaveState(t *testing.T) {
	m := newMachine(t, vsock.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if _, err := m.dev.MarshalState(); !errors.Is(err, state.ErrInFlight) {
		t.Fatalf("running device saved: %v", err)
	}
	if err := m.dev.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := m.dev.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	m.dev.Resume()
	c, _ := m.open(4096)
	if err := m.dev.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.dev.MarshalState(); !errors.Is(err, state.ErrInFlight) || !strings.Contains(err.Error(), "1 open connections") {
		t.Fatalf("saved with a connection: %v", err)
	}
	m.dev.Resume()
	c.Write([]byte("still works"))
	if p := m.expect(vsock.OpRW); string(p.data) != "still works" {
		t.Fatalf("after resume: %q", p.data)
	}
	if err := m.dev.UnmarshalState(vsock.StateVersion, b); err != nil {
		t.Fatal(err)
	}
	other := newDevice(t, vsock.Config{CID: 4})
	if err := other.UnmarshalState(vsock.StateVersion, b); !errors.Is(err, state.ErrMismatch) {
		t.Fatalf("cid 3 restored into cid 4: %v", err)
	}
	if err := other.UnmarshalState(vsock.StateVersion+1, b); !errors.Is(err, state.ErrNewer) {
		t.Fatal(err)
	}
}
