package vufront_test

import (
	"bytes"
	"context"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"

	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
)

// loopNet is a vhost-user-net back-end's device for tests: every frame
// the guest transmits (queue 1) comes back on its receive queue (0),
// header and all.
type loopNet struct {
	frames chan []byte
}

func (*loopNet) Type() virtio.DeviceType { return virtio.TypeNet }
func (*loopNet) Features() uint64 {
	return virtio.FeatureVersion1 | virtionet.FeatureMrgRxbuf | virtionet.FeatureCsum
}
func (*loopNet) QueueMaxSizes() []uint16           { return []uint16{256, 256} }
func (*loopNet) ReadConfig(_ uint64, data []byte)  { clear(data) }
func (*loopNet) WriteConfig(uint64, []byte)        {}
func (*loopNet) Activate(*virtio.Activation) error { return errors.New("served queue by queue") }
func (*loopNet) Reset()                            {}

type servedLoop struct {
	stop chan struct{}
	once sync.Once
	done chan struct{}
}

func (s *servedLoop) Stop() {
	s.once.Do(func() { close(s.stop) })
	<-s.done
}
func (s *servedLoop) Abort() { s.Stop() }

func (l *loopNet) ServeQueue(index int, q *virtio.Queue, _ uint64) (virtio.ServedQueue, error) {
	s := &servedLoop{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		var pending []byte // a frame waiting for a receive buffer
		for {
			if index == 1 {
				for {
					c, err := q.Next()
					if err != nil || c == nil {
						break
					}
					f := make([]byte, c.Readable.Len())
					c.Readable.ReadAt(f, 0)
					q.Push(c.Head, 0)
					select {
					case l.frames <- f:
					case <-s.stop:
						return
					}
				}
				q.Signal()
			} else if pending != nil {
				c, err := q.Next()
				if err == nil && c != nil {
					n, _ := c.Writable.WriteAt(pending, 0)
					q.Push(c.Head, uint32(n))
					q.Signal()
					pending = nil
					continue
				}
			}
			var frames chan []byte
			if index == 0 && pending == nil {
				frames = l.frames
			}
			select {
			case <-s.stop:
				return
			case <-q.Kicks():
			case pending = <-frames:
			}
		}
	}()
	return s, nil
}

// TestNetLoopback: a vhost-user NIC's frames go through the back-end (a
// loopback here); the guest sees vio's MAC and link status in the
// configuration space, and the back-end's offloads.
func TestNetLoopback(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "net.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	loop := &loopNet{frames: make(chan []byte, 16)}
	b := &vhostuser.Backend{NewDevice: func() (virtio.QueueServer, error) { return loop, nil }}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	t.Cleanup(func() { cancel(); <-served })

	mac := net.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	m := newMachine(t, mem, vufront.Config{Type: virtio.TypeNet, Socket: sock, MAC: mac})
	if m.mc.Transport.NumQueues() != 2 {
		t.Fatalf("%d queues", m.mc.Transport.NumQueues())
	}
	f := m.mc.Guest.DeviceFeatures()
	// vio's back-end adds its ring features (EVENT_IDX, INDIRECT_DESC).
	want := virtio.TransportFeatures | virtionet.FeatureMrgRxbuf | virtionet.FeatureCsum | virtionet.FeatureMAC | virtionet.FeatureStatus
	if f != want {
		t.Fatalf("offered %#x, want %#x", f, want)
	}
	got := make([]byte, 8)
	for i := range got {
		got[i] = byte(m.mc.Guest.ReadDeviceConfig(uint64(i), 1))
	}
	if !bytes.Equal(got[:6], mac) || got[6] != 1 {
		t.Fatalf("config space % x", got)
	}
	m.start(t, false)
	rx := m.submit(t, 0, nil, []uint32{2048})
	frame := append(make([]byte, 12), []byte("a frame through the back-end")...)
	tx := m.submit(t, 1, [][]byte{frame}, nil)
	if u := m.next(t, 1); u.ID != tx {
		t.Fatalf("tx used %d, sent %d", u.ID, tx)
	}
	u := m.next(t, 0)
	if u.ID != rx || !bytes.Equal(u.Data[:u.Len], frame) {
		t.Fatalf("received %q (head %d), sent %q (head %d)", u.Data[:u.Len], u.ID, frame, rx)
	}
}
