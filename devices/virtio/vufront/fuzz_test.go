package vufront_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// fuzzReader hands out the fuzzer's bytes; past the end it gives zeros,
// which the fake back-end below takes as "answer sanely".
type fuzzReader struct {
	b    []byte
	logs bool // the back-end offers LOG_ALL and LOG_SHMFD
}

func (r *fuzzReader) byte() byte {
	if len(r.b) == 0 {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *fuzzReader) u64() uint64 {
	var b [8]byte
	for i := range b {
		b[i] = r.byte()
	}
	return binary.LittleEndian.Uint64(b[:])
}

// fuzzBackend answers a device's requests on up to three connections
// (the later ones after the device reconnects, or takes the back-end
// back after a release), perturbing each answer of a sane
// vhost-user-blk back-end with the fuzzer's bytes: features and protocol
// features XORed, configuration windows moved, cut or empty,
// GET_VRING_BASE for another ring or another base, inflight regions of
// every shape, SET_LOG_BASE answers of every shape, failed
// acknowledgements, reply headers with other flags or requests, and the
// connection closed at a chosen message. With no fuzz bytes it is a sane
// back-end without LOG_ALL and LOG_SHMFD (r.logs adds them).
func fuzzBackend(l *net.UnixListener, r *fuzzReader, ready, done chan struct{}) {
	defer close(done)
	defer l.Close()
	for range 3 {
		c, err := l.AcceptUnix()
		if err != nil {
			return
		}
		serveFuzz(vhostuser.NewConn(c), r, ready)
		c.Close()
	}
}

// serveFuzz serves one connection; ready is closed when a ring is
// enabled (the device's set-up went through).
func serveFuzz(c *vhostuser.Conn, r *fuzzReader, ready chan struct{}) {
	cut := int(r.byte())
	if cut == 0 {
		cut = 1 << 30
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	for n := 1; n < cut; n++ {
		m, err := c.ReadMessage()
		if err != nil {
			return
		}
		m.Close()
		if m.Request == vhostuser.SetVringEnable && len(m.Payload) >= 8 && m.Payload[4] == 1 {
			select {
			case <-ready:
			default:
				close(ready)
			}
		}
		var p []byte
		var fds []int
		switch m.Request {
		case vhostuser.GetFeatures:
			f := uint64(virtio.FeatureVersion1 | virtio.FeatureEventIdx | vhostuser.FProtocolFeatures |
				blk.FeatureFlush | blk.FeatureMQ)
			if r.logs {
				f |= vhostuser.FLogAll
			}
			p = vhostuser.U64(f ^ r.u64())
		case vhostuser.GetProtocolFeatures:
			f := uint64(vhostuser.ProtocolMQ | vhostuser.ProtocolReplyAck | vhostuser.ProtocolConfig |
				vhostuser.ProtocolInflightShmfd)
			if r.logs {
				f |= vhostuser.ProtocolLogShmfd
			}
			p = vhostuser.U64(f ^ r.u64())
		case vhostuser.SetLogBase:
			// The three shapes back-ends answer with, a failure, junk.
			var l vhostuser.Log
			if len(m.Payload) == 16 {
				l, _ = vhostuser.ParseLog(m.Payload)
			}
			switch r.byte() % 5 {
			case 0:
				p = vhostuser.U64(0)
			case 1:
				p = vhostuser.U64(l.MmapSize)
			case 2:
				p = l.Marshal()
			case 3:
				p = vhostuser.U64(uint64(r.byte()) + 1)
			default:
				p = make([]byte, int(r.byte())%24)
			}
		case vhostuser.GetQueueNum:
			p = vhostuser.U64(2 ^ r.u64())
		case vhostuser.GetConfig:
			var off, size uint32
			if len(m.Payload) >= 8 {
				off, size = binary.LittleEndian.Uint32(m.Payload), binary.LittleEndian.Uint32(m.Payload[4:])
			}
			data := make([]byte, min(size, 256))
			if len(data) >= 36 {
				binary.LittleEndian.PutUint64(data, 2048)
				binary.LittleEndian.PutUint16(data[34:], 2)
			}
			for i := range data {
				data[i] ^= r.byte()
			}
			switch r.byte() % 4 {
			case 0:
				p = vhostuser.Config{Offset: off, Data: data}.Marshal()
			case 1:
				p = vhostuser.Config{Offset: off + 1, Data: data}.Marshal()
			case 2:
				p = vhostuser.Config{Offset: off, Data: data}.Marshal()[:int(r.byte())%(12+len(data)+1)]
			}
		case vhostuser.GetVringBase:
			var idx uint32
			if len(m.Payload) >= 4 {
				idx = binary.LittleEndian.Uint32(m.Payload)
			}
			p = vhostuser.VringState{Index: idx ^ uint32(r.byte()), Num: uint32(r.byte()) << (r.byte() % 24)}.Marshal()
		case vhostuser.GetInflightFD:
			d := vhostuser.Inflight{MmapSize: 1 << 16, NumQueues: 2, QueueSize: 128}
			switch r.byte() % 4 {
			case 0:
				if fd, err := unix.MemfdCreate("fuzz-inflight", unix.MFD_CLOEXEC); err == nil {
					unix.Ftruncate(fd, 1<<16)
					defer unix.Close(fd)
					fds = []int{fd}
				}
			case 1:
				d.MmapSize = 0
			case 2:
				d.MmapSize = 0
				if fd, err := unix.MemfdCreate("fuzz-inflight", unix.MFD_CLOEXEC); err == nil {
					defer unix.Close(fd)
					fds = []int{fd}
				}
			}
			p = d.Marshal()
			if r.byte() == 0xff {
				p = p[:r.byte()%uint8(len(p))]
			}
		default:
			if m.Flags&vhostuser.FlagNeedReply == 0 {
				if m.Request == vhostuser.SetVringEnable && len(m.Payload) >= 8 && m.Payload[4] == 0 && r.byte() == 0xfd {
					// A back-end that goes away as its rings stop.
					return
				}
				continue
			}
			p = vhostuser.U64(uint64(r.byte() / 250)) // now and then a failure status
		}
		h := vhostuser.Header{Request: m.Request, Flags: vhostuser.Version | vhostuser.FlagReply}
		switch r.byte() {
		case 0xff:
			h.Flags = vhostuser.Version
		case 0xfe:
			h.Request++
		}
		if c.WriteMessage(h, p, fds) != nil {
			return
		}
	}
}

// FuzzFrontend runs a device's life against fuzzBackend: New, the guest
// starting one queue, the back-end lost and found again (or not), a
// migration's share (the dirty log started and taken, the device paused,
// saved, released and taken back, resumed, the log stopped), the guest's
// reset, Close. Whatever the back-end says, New fails with an error or
// the device offers what vio can present; nothing panics or hangs, and
// no goroutine outlives the device.
func FuzzFrontend(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{5})                         // cut during New
	f.Add([]byte{12})                        // cut during the rings' set-up: reconnect
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 1}) // features without VERSION_1
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff})
	f.Add([]byte{16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01})
	f.Add([]byte{0x80})                                                                                  // a back-end that logs
	f.Add([]byte{0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3}) // ...whose SET_LOG_BASE fails
	mem := sharedRAM(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		logs := len(data) > 0 && data[0]&0x80 != 0
		if logs {
			data = append([]byte{data[0] &^ 0x80}, data[1:]...)
		}
		base := runtime.NumGoroutine()
		sock := filepath.Join(t.TempDir(), "fz.sock")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		ready, done := make(chan struct{}), make(chan struct{})
		go fuzzBackend(l, &fuzzReader{b: data, logs: logs}, ready, done)
		dev, err := vufront.New(vufront.Config{Socket: sock, Memory: mem, Timeout: time.Second,
			ReconnectTimeout: 100 * time.Millisecond, Log: testLog(t)})
		if err == nil {
			if f := dev.Features(); f&virtio.FeatureVersion1 == 0 || f&vhostuser.FProtocolFeatures != 0 || f&blk.FeatureConfigWCE != 0 {
				t.Fatalf("offers %#x", f)
			}
			if n := len(dev.QueueMaxSizes()); n < 1 || n > vhostuser.MaxVrings {
				t.Fatalf("%d queues", n)
			}
			mc := virtiopcitest.NewMachineOn(t, dev, mem, 1024)
			g := mc.Guest
			if err := g.Negotiate(dev.Features() &^ virtio.FeatureEventIdx); err != nil {
				t.Fatal(err)
			}
			g.ProgramMSIX(0, msiAddr, 0x30)
			g.EnableMSIX(true)
			g.SetConfigVector(0)
			if _, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Vector: 0xffff, Base: queueBase, DataSize: 0x1000}); err != nil {
				t.Fatal(err)
			}
			g.SetStatus(virtio.StatusDriverOK)
			// Until the rings are up (perhaps after a reconnection), the
			// device needs a reset (the configuration interrupt), or
			// the fake is through.
			select {
			case <-ready:
			case <-done:
			case <-mc.Router.Messages():
			case <-time.After(20 * time.Second):
				t.Fatal("neither set up, nor a reset, nor the fake's end")
			}
			migrateFuzz(t, dev, mc)
			if err := g.Reset(); err != nil {
				t.Fatal(err)
			}
			closed := make(chan struct{})
			go func() { dev.Close(); close(closed) }()
			select {
			case <-closed:
			case <-time.After(20 * time.Second):
				t.Fatal("Close hangs")
			}
		} else if err.Error() == "" {
			t.Fatal("an empty error")
		}
		l.Close()
		<-done
		deadline := time.Now().Add(10 * time.Second)
		for runtime.NumGoroutine() > base {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
			}
			runtime.Gosched()
		}
	})
}

// migrateFuzz runs a migration's share of the device against whatever
// the fake back-end answers: each step may fail, none may hang or panic.
func migrateFuzz(t *testing.T, dev *vufront.Device, mc *virtiopcitest.Machine) {
	const ram = 16 << 20
	logging := dev.CanLog() == nil && dev.StartLog(ram) == nil
	if logging {
		dst := make([]uint64, ram/4096/64)
		if err := dev.TakeLog(0, ram/4096, dst); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if mc.Transport.Pause(ctx) == nil {
		if _, err := dev.SaveState(); err != nil && !errors.Is(err, state.ErrInFlight) {
			t.Fatalf("a paused device does not save: %v", err)
		}
		if dev.Release() == nil {
			_ = dev.Take()
		}
		mc.Transport.Resume()
	}
	if logging {
		dev.StopLog()
	}
}

// FuzzRestoreState restores arbitrary device state into a Deferred
// vhost-user disk behind a transport restored running (queue 0 at the
// driver's rings): it is refused with an error, or accepted only if it
// matches the transport and guest memory; nothing panics, and no
// connection is made.
func FuzzRestoreState(f *testing.F) {
	mem := sharedRAM(f)
	cfg := make([]byte, 60)
	binary.LittleEndian.PutUint64(cfg, 2048)
	binary.LittleEndian.PutUint16(cfg[34:], 2)
	good, err := json.Marshal(vufront.State{Type: uint32(virtio.TypeBlock),
		Offered:  virtio.FeatureVersion1 | vhostuser.FProtocolFeatures | vhostuser.FLogAll | blk.FeatureMQ,
		Protocol: vhostuser.ProtocolMQ | vhostuser.ProtocolConfig | vhostuser.ProtocolLogShmfd,
		Features: virtio.FeatureVersion1 | blk.FeatureMQ, Config: cfg,
		Queues: []vufront.QueueState{{Running: true}, {}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(good))
	f.Add([]byte(`{"Type":2,"Queues":[]}`))
	f.Add([]byte(`{"Type":1,"Config":"","Queues":[{"Running":true,"Base":65535}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dev, err := vufront.New(vufront.Config{Socket: "/nonexistent/vu.sock", Memory: mem, Deferred: true, NumQueues: 2,
			Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		mc := virtiopcitest.NewMachineOn(t, dev, mem, 64)
		g := mc.Guest
		if err := g.Negotiate(virtio.FeatureVersion1); err != nil {
			t.Fatal(err)
		}
		if _, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: 0, Vector: 0xffff, Base: queueBase, DataSize: 0x1000}); err != nil {
			t.Fatal(err)
		}
		st, err := mc.Transport.SaveState()
		if err != nil {
			t.Fatal(err)
		}
		st.Status |= virtio.StatusDriverOK
		st.Activated = true
		dev2, err := vufront.New(vufront.Config{Socket: "/nonexistent/vu.sock", Memory: mem, Deferred: true, NumQueues: 2,
			Log: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		defer dev2.Close()
		mc2 := virtiopcitest.NewMachineOn(t, dev2, mem, 64)
		if err := mc2.Transport.RestoreState(st); err != nil {
			t.Fatal(err)
		}
		if err := dev2.UnmarshalState(vufront.StateVersion, data); err != nil {
			if bytes.Equal(data, good) {
				t.Fatalf("the good state refused: %v", err)
			}
			return
		}
		s, err := dev2.SaveState()
		if err != nil {
			t.Fatalf("a restored device does not save: %v", err)
		}
		if f := dev2.Features(); f&virtio.FeatureVersion1 == 0 || f&vhostuser.FProtocolFeatures != 0 || f&vhostuser.FLogAll != 0 {
			t.Fatalf("restored to offer %#x", f)
		}
		if len(s.Queues) != 2 || !s.Queues[0].Running || s.Queues[1].Running {
			t.Fatalf("restored queues %+v, the transport runs queue 0 only", s.Queues)
		}
	})
}
