package socket_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/socket"
)

const wait = 10 * time.Second // bounds a hang; never a synchronization

func listen(t *testing.T) (net.Listener, string) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "s")
	l, err := net.Listen("unix", p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, p
}

func accept(t *testing.T, l net.Listener) net.Conn {
	t.Helper()
	l.(*net.UnixListener).SetDeadline(time.Now().Add(wait))
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(wait))
	return c
}

func frame(n int, fill byte) []byte {
	f := bytes.Repeat([]byte{fill}, n)
	copy(f, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x88, 0xb5})
	return f
}

func send(t *testing.T, b netdev.Backend, f []byte) error {
	t.Helper()
	_, err := b.WriteFrames([][][]byte{{make([]byte, netdev.HeaderSize), f}})
	return err
}

func recv(t *testing.T, b netdev.Backend) (netdev.Header, []byte) {
	t.Helper()
	b.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, netdev.MaxPacketLen)
	sizes := []int{0}
	if _, err := b.ReadFrames([][]byte{buf}, sizes); err != nil {
		t.Fatalf("ReadFrames: %v", err)
	}
	return netdev.DecodeHeader(buf), buf[netdev.HeaderSize:sizes[0]]
}

// The wire format is exactly a 4-byte big-endian length and the frame,
// both ways, with no virtio-net header.
func TestWireFormat(t *testing.T) {
	l, path := listen(t)
	c, err := socket.Dial(path, socket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer := accept(t, l)

	out := [][]byte{frame(60, 0xaa), frame(1514, 0xbb), frame(netdev.MaxFrameLen, 0xcc)}
	for _, f := range out {
		if err := send(t, c, f); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range out {
		var p [4]byte
		if _, err := io.ReadFull(peer, p[:]); err != nil {
			t.Fatal(err)
		}
		if n := binary.BigEndian.Uint32(p[:]); n != uint32(len(f)) {
			t.Fatalf("prefix %d, want %d", n, len(f))
		}
		got := make([]byte, len(f))
		if _, err := io.ReadFull(peer, got); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, f) {
			t.Fatalf("frame of %d bytes changed on the wire", len(f))
		}
	}

	// Two frames in one write, split across writes at odd places.
	in := [][]byte{frame(64, 1), frame(3000, 2)}
	var wire []byte
	for _, f := range in {
		wire = socket.AppendFrame(wire, f)
	}
	for _, part := range [][]byte{wire[:2], wire[2:70], wire[70:]} {
		if _, err := peer.Write(part); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range in {
		h, got := recv(t, c)
		if h != (netdev.Header{}) {
			t.Fatalf("header %+v, want zero", h)
		}
		if !bytes.Equal(got, f) {
			t.Fatalf("received %d bytes, want the %d-byte frame", len(got), len(f))
		}
	}
	s := c.Stats()
	if s.FramesOut != 3 || s.FramesIn != 2 {
		t.Fatalf("stats %+v", s)
	}
}

// A header asking for an offload is refused (none was offered), as is a
// runt; neither takes the link down.
func TestRefusesBadFrames(t *testing.T) {
	l, path := listen(t)
	c, err := socket.Dial(path, socket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	accept(t, l)
	h := make([]byte, netdev.HeaderSize)
	netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 16}.Encode(h)
	if _, err := c.WriteFrames([][][]byte{{h, frame(100, 0)}}); !errors.Is(err, netdev.ErrHeader) {
		t.Fatalf("offload header: %v, want ErrHeader", err)
	}
	if err := send(t, c, frame(13, 0)[:13]); !errors.Is(err, netdev.ErrHeader) {
		t.Fatalf("runt: %v, want ErrHeader", err)
	}
	if err := send(t, c, frame(60, 0)); err != nil {
		t.Fatalf("good frame after bad ones: %v", err)
	}
	if s := c.Stats(); s.BadFrames != 2 {
		t.Fatalf("BadFrames %d, want 2", s.BadFrames)
	}
}

// A peer that breaks the framing loses its connection; without
// Reconnect the link stays down and writes say so.
func TestBadPrefixTakesLinkDown(t *testing.T) {
	for _, n := range []uint32{0, 13, netdev.MaxFrameLen + 1, 0xffffffff} {
		l, path := listen(t)
		c, err := socket.Dial(path, socket.Options{})
		if err != nil {
			t.Fatal(err)
		}
		peer := accept(t, l)
		peer.Write(binary.BigEndian.AppendUint32(nil, n))
		// The back-end closes its end: the peer's read sees EOF.
		if _, err := peer.Read(make([]byte, 1)); err != io.EOF {
			t.Fatalf("prefix %d: peer read %v, want EOF", n, err)
		}
		select {
		case <-c.Dead():
		case <-time.After(wait):
			t.Fatalf("prefix %d: Dead not closed", n)
		}
		if err := send(t, c, frame(60, 0)); !errors.Is(err, socket.ErrLinkDown) {
			t.Fatalf("prefix %d: write after the loss: %v, want ErrLinkDown", n, err)
		}
		if _, err := c.ReadFrames([][]byte{make([]byte, netdev.MaxPacketLen)}, []int{0}); !errors.Is(err, socket.ErrLinkDown) {
			t.Fatalf("prefix %d: read after the loss: %v, want ErrLinkDown", n, err)
		}
		if s := c.Stats(); s.BadFrames != 1 || s.Disconnects != 1 {
			t.Fatalf("prefix %d: stats %+v", n, s)
		}
		c.Close()
	}
}

// With Reconnect the back-end redials and frames flow again.
func TestReconnect(t *testing.T) {
	l, path := listen(t)
	c, err := socket.Dial(path, socket.Options{Reconnect: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	first := accept(t, l)
	first.Close()
	second := accept(t, l)
	second.Write(socket.AppendFrame(nil, frame(80, 7)))
	if _, got := recv(t, c); !bytes.Equal(got, frame(80, 7)) {
		t.Fatal("frame over the second connection differs")
	}
	// Sending works again once the link is up (it is: a frame came in).
	if err := send(t, c, frame(90, 9)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4+90)
	if _, err := io.ReadFull(second, buf); err != nil || !bytes.Equal(buf[4:], frame(90, 9)) {
		t.Fatalf("second connection got %x, %v", buf[:8], err)
	}
	if s := c.Stats(); s.Disconnects != 1 {
		t.Fatalf("Disconnects %d, want 1", s.Disconnects)
	}
}

// A peer that never reads cannot stall the sender: the queue fills, the
// rest is dropped and counted, and WriteFrames keeps returning.
func TestStalledPeerDrops(t *testing.T) {
	l, path := listen(t)
	c, err := socket.Dial(path, socket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	accept(t, l) // never read
	f := frame(60000, 3)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2000 { // 120 MB: far beyond socket buffers and the queue
			send(t, c, f)
		}
	}()
	select {
	case <-done:
	case <-time.After(wait):
		t.Fatal("WriteFrames blocked on a peer that does not read")
	}
	if s := c.Stats(); s.OutDropped == 0 {
		t.Fatalf("nothing dropped: %+v", s)
	}
}

func TestDeadlineAndClose(t *testing.T) {
	l, path := listen(t)
	c, err := socket.Dial(path, socket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	accept(t, l)
	buf := [][]byte{make([]byte, netdev.MaxPacketLen)}
	c.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := c.ReadFrames(buf, []int{0}); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	c.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.ReadFrames(buf, []int{0})
		errc <- err
	}()
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, netdev.ErrClosed) {
			t.Fatalf("read after Close: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Close did not unblock ReadFrames")
	}
	if err := send(t, c, frame(60, 0)); !errors.Is(err, netdev.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct{ in, net, addr string }{
		{"/run/x.sock", "unix", "/run/x.sock"},
		{"unix:/a", "unix", "/a"},
		{"tcp:127.0.0.1:5555", "tcp", "127.0.0.1:5555"},
	} {
		n, a, err := socket.ParseAddr(tc.in)
		if err != nil || n != tc.net || a != tc.addr {
			t.Errorf("%q: %q %q %v", tc.in, n, a, err)
		}
	}
	for _, bad := range []string{"", "tcp:nohost"} {
		if _, _, err := socket.ParseAddr(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

// TCP works as well as UNIX.
func TestTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c, err := socket.Dial("tcp:"+l.Addr().String(), socket.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	peer, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	peer.Write(socket.AppendFrame(nil, frame(70, 5)))
	if _, got := recv(t, c); !bytes.Equal(got, frame(70, 5)) {
		t.Fatal("frame over TCP differs")
	}
}

// In blocking mode a peer that does not read holds the writer back
// instead of losing frames; Close releases it.
func TestBlockingWrites(t *testing.T) {
	l, path := listen(t)
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	accept(t, l) // never read
	c := socket.New(nc, socket.Options{Blocking: true})
	f := frame(60000, 3)
	errc := make(chan error, 1)
	go func() {
		for {
			if err := send(t, c, f); err != nil {
				errc <- err
				return
			}
		}
	}()
	// The writer fills the socket buffers and the queue, then waits.
	deadline := time.Now().Add(wait)
	for c.Queued() < 256 {
		if time.Now().After(deadline) {
			t.Fatalf("queue at %d, never full", c.Queued())
		}
		time.Sleep(time.Millisecond) // polling a state, bounded
	}
	select {
	case err := <-errc:
		t.Fatalf("a blocking write returned %v", err)
	default:
	}
	c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, netdev.ErrClosed) {
			t.Fatalf("after Close: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Close did not release the blocked writer")
	}
	if s := c.Stats(); s.OutDropped != 0 {
		t.Fatalf("blocking mode dropped %d", s.OutDropped)
	}
}

// With StartDown and Reconnect, a peer that is not there yet is no error:
// the back-end starts with its link down (writes refused as while any
// link is down) and connects once the peer listens. Without StartDown the
// first connection must succeed, as before.
func TestStartDown(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	if _, err := socket.Dial(path, socket.Options{Reconnect: 20 * time.Millisecond}); err == nil {
		t.Fatal("Dial without StartDown succeeded with no peer listening")
	}
	c, err := socket.Dial(path, socket.Options{Reconnect: 20 * time.Millisecond, StartDown: true})
	if err != nil {
		t.Fatalf("Dial with StartDown and no peer yet: %v", err)
	}
	defer c.Close()
	if c.Up() {
		t.Fatal("a back-end with no peer says its link is up")
	}
	if err := send(t, c, frame(60, 1)); !errors.Is(err, socket.ErrLinkDown) {
		t.Fatalf("a write before the peer came: %v, want ErrLinkDown", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	peer := accept(t, l)
	defer peer.Close()
	peer.Write(socket.AppendFrame(nil, frame(70, 3)))
	if _, got := recv(t, c); !bytes.Equal(got, frame(70, 3)) {
		t.Fatal("the frame over the late connection differs")
	}
	// The link is up (a frame came in over it): writes go through.
	if err := send(t, c, frame(80, 4)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4+80)
	peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(peer, buf); err != nil || !bytes.Equal(buf[4:], frame(80, 4)) {
		t.Fatalf("the peer got %x, %v", buf[:8], err)
	}
	if s := c.Stats(); s.Disconnects != 0 {
		t.Fatalf("Disconnects %d, want 0: the link was never lost", s.Disconnects)
	}
}
