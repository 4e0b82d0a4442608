package vufront_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const (
	sector    = 512
	msiAddr   = 0xfee00000
	queueBase = 0x100000
	queueSpan = 0x100000
	dataSize  = 0x80000
	// wait bounds one completion: a loaded CI machine, or a back-end
	// being restarted, may take seconds (a bound, not a wait).
	wait = 30 * time.Second
)

// sharedRAM is guest RAM a back-end can map (memfd).
func sharedRAM(t testing.TB) *memory.Memory {
	t.Helper()
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 16 << 20}}, memory.Options{Backing: memory.Memfd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

// vioBackend serves disk as vhost-user-blk on sock until stop.
type vioBackend struct {
	cancel context.CancelFunc
	l      *net.UnixListener
	served chan error
}

func startVio(t testing.TB, sock string, disk block.Backend) *vioBackend {
	t.Helper()
	return startVioCfg(t, sock, disk, blk.Config{Serial: "vufront", NumQueues: 2})
}

func startVioCfg(t testing.TB, sock string, disk block.Backend, cfg blk.Config) *vioBackend {
	t.Helper()
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	b := &vhostuser.Backend{NewDevice: func() (virtio.QueueServer, error) {
		return blk.New(disk, cfg)
	}}
	ctx, cancel := context.WithCancel(context.Background())
	v := &vioBackend{cancel: cancel, l: l, served: make(chan error, 1)}
	go func() { v.served <- b.Serve(ctx, l) }()
	t.Cleanup(func() { v.stop(t) })
	return v
}

func (v *vioBackend) stop(t testing.TB) {
	if v.cancel == nil {
		return
	}
	v.cancel()
	v.cancel = nil
	if err := <-v.served; err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("back-end: %v", err)
	}
}

// logBuffer collects the device's log for failure reports.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func testLog(t testing.TB) *slog.Logger {
	lb := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("device log:\n%s", lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// machine is a vufront device behind vio's virtio-pci transport with a
// test driver.
type machine struct {
	dev    *vufront.Device
	mc     *virtiopcitest.Machine
	queues []*queuetest.Driver
}

func newMachine(t testing.TB, mem *memory.Memory, cfg vufront.Config) *machine {
	t.Helper()
	cfg.Memory = mem
	if cfg.Log == nil {
		cfg.Log = testLog(t)
	}
	dev, err := vufront.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() }) // after the guest's reset (cleanups run last to first)
	mc := virtiopcitest.NewMachineOn(t, dev, mem, 4096)
	return &machine{dev: dev, mc: mc}
}

// start negotiates what the device offers (minus EVENT_IDX unless asked)
// and sets every queue up with its own MSI-X vector.
func (m *machine) start(t testing.TB, eventIdx bool) {
	t.Helper()
	g := m.mc.Guest
	feat := g.DeviceFeatures()
	if !eventIdx {
		feat &^= virtio.FeatureEventIdx
	}
	if err := g.Negotiate(feat); err != nil {
		t.Fatal(err)
	}
	n := m.mc.Transport.NumQueues()
	for v := 0; v <= n; v++ {
		g.ProgramMSIX(v, msiAddr, uint32(0x30+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	m.queues = m.queues[:0]
	for i := range n {
		d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: i, Vector: uint16(i + 1),
			Base: queueBase + uint64(i)*queueSpan, DataSize: dataSize, EventIdx: eventIdx})
		if err != nil {
			t.Fatal(err)
		}
		m.queues = append(m.queues, d)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x", s)
	}
}

func (m *machine) submit(t testing.TB, q int, out [][]byte, in []uint32) uint16 {
	t.Helper()
	h, err := m.queues[q].Add(out, in)
	if err != nil {
		t.Fatal(err)
	}
	if m.queues[q].NeedsKick() {
		m.mc.Guest.Kick(q)
	}
	return h
}

// next waits for queue q's next used entry.
func (m *machine) next(t testing.TB, q int) queuetest.Used {
	t.Helper()
	for {
		u, ok, err := m.queues[q].GetUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			return u
		}
		if s := m.mc.Guest.Status(); s&virtio.StatusDeviceNeedsReset != 0 {
			t.Fatalf("device needs reset while a request is outstanding (status %#x): %v", s, m.mc.Transport.Stats().LastError)
		}
		if _, err := m.mc.Router.Wait(wait); err != nil {
			t.Fatalf("queue %d: no completion: %v", q, err)
		}
	}
}

func (m *machine) do(t testing.TB, q int, out [][]byte, in []uint32) queuetest.Used {
	t.Helper()
	h := m.submit(t, q, out, in)
	u := m.next(t, q)
	if u.ID != h {
		t.Fatalf("used id %d, submitted %d", u.ID, h)
	}
	return u
}

func header(typ uint32, sec uint64) []byte {
	b := make([]byte, blk.HeaderSize)
	binary.LittleEndian.PutUint32(b[0:], typ)
	binary.LittleEndian.PutUint64(b[8:], sec)
	return b
}

func pattern(i int) []byte {
	return bytes.Repeat([]byte{byte(i), byte(i >> 8), 0x5a, byte(i * 7)}, sector/4)
}

func (m *machine) write(t testing.TB, q int, sec uint64, data []byte) {
	t.Helper()
	u := m.do(t, q, [][]byte{header(blk.TypeOut, sec), data}, []uint32{1})
	if u.Data[0] != blk.StatusOK {
		t.Fatalf("write of sector %d: status %d", sec, u.Data[0])
	}
}

func (m *machine) read(t testing.TB, q int, sec uint64) []byte {
	t.Helper()
	u := m.do(t, q, [][]byte{header(blk.TypeIn, sec)}, []uint32{sector, 1})
	if u.Data[sector] != blk.StatusOK {
		t.Fatalf("read of sector %d: status %d", sec, u.Data[sector])
	}
	return u.Data[:sector]
}

// checkGoroutines fails if goroutines outlive the test's devices (the
// count settles once closed goroutines have returned: bounded retries on
// runtime.Gosched, no sleep).
func checkGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:runtime.Stack(buf, true)])
		}
		runtime.Gosched()
	}
}

func TestVioBackendWriteRead(t *testing.T) {
	mem := sharedRAM(t)
	disk := blocktest.NewMem(1 << 20)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	startVio(t, sock, disk)
	m := newMachine(t, mem, vufront.Config{Socket: sock})
	if n := m.mc.Transport.NumQueues(); n != 2 {
		t.Fatalf("%d queues, the back-end has 2", n)
	}
	if c := m.mc.Guest.ReadDeviceConfig(0, 8); c != (1<<20)/sector {
		t.Fatalf("capacity %d sectors, want %d", c, (1<<20)/sector)
	}
	f := m.mc.Guest.DeviceFeatures()
	if f&virtio.FeatureVersion1 == 0 || f&vhostuser.FProtocolFeatures != 0 || f&blk.FeatureConfigWCE != 0 {
		t.Fatalf("offered features %#x", f)
	}
	for _, eventIdx := range []bool{false, true} {
		m.start(t, eventIdx)
		for q := range 2 {
			p := pattern(q + 10)
			m.write(t, q, uint64(3+q), p)
			if got := m.read(t, 1-q, uint64(3+q)); !bytes.Equal(got, p) {
				t.Fatalf("queue %d: read back differs", 1-q)
			}
			got := make([]byte, sector)
			disk.ReadAt(got, int64(3+q)*sector)
			if !bytes.Equal(got, p) {
				t.Fatalf("the back-end's disk does not hold the write")
			}
		}
		if err := m.mc.Guest.Reset(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVioBackendRestart stops the back-end with the guest's rings set
// up, starts another on the same socket, and expects the guest's next
// requests to complete without a reset.
func TestVioBackendRestart(t *testing.T) {
	base := runtime.NumGoroutine()
	func() {
		mem := sharedRAM(t)
		disk := blocktest.NewMem(1 << 20)
		sock := filepath.Join(t.TempDir(), "vu.sock")
		a := startVio(t, sock, disk)
		m := newMachine(t, mem, vufront.Config{Socket: sock})
		m.start(t, true)
		m.write(t, 0, 1, pattern(1))
		a.stop(t)
		b := startVio(t, sock, disk)
		m.write(t, 0, 2, pattern(2))
		if got := m.read(t, 1, 1); !bytes.Equal(got, pattern(1)) {
			t.Fatal("sector 1 differs after the restart")
		}
		if n := m.dev.Reconnects(); n != 1 {
			t.Fatalf("%d reconnections, want 1", n)
		}
		if err := m.mc.Guest.Reset(); err != nil {
			t.Fatal(err)
		}
		m.dev.Close()
		b.stop(t)
	}()
	checkGoroutines(t, base)
}

// TestBackendGone: a back-end that does not come back within the
// reconnection window gives DEVICE_NEEDS_RESET and a sentence saying so.
func TestBackendGone(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	a := startVio(t, sock, blocktest.NewMem(1<<20))
	m := newMachine(t, mem, vufront.Config{Socket: sock, ReconnectTimeout: 300 * time.Millisecond})
	m.start(t, false)
	m.write(t, 0, 1, pattern(1))
	a.stop(t)
	m.submit(t, 0, [][]byte{header(blk.TypeOut, 2), pattern(2)}, []uint32{1})
	// The configuration interrupt on vector 0 says the device broke.
	for m.mc.Guest.Status()&virtio.StatusDeviceNeedsReset == 0 {
		if _, err := m.mc.Router.Wait(wait); err != nil {
			t.Fatalf("no needs-reset: %v", err)
		}
	}
	if err := m.dev.Err(); err == nil || !strings.Contains(err.Error(), "did not come back") {
		t.Fatalf("last error %v", err)
	}
}

func TestNeedsSharedMemory(t *testing.T) {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 1 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	_, err = vufront.New(vufront.Config{Socket: "/nonexistent", Memory: mem})
	if err == nil || !strings.Contains(err.Error(), "shared=on") {
		t.Fatalf("New on private RAM: %v", err)
	}
}

func TestNoBackend(t *testing.T) {
	_, err := vufront.New(vufront.Config{Socket: filepath.Join(t.TempDir(), "none.sock"), Memory: sharedRAM(t),
		ReconnectTimeout: 200 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "start it before vio") {
		t.Fatalf("New without a back-end: %v", err)
	}
}

// signalHandler closes seen when a record with msg is logged.
type signalHandler struct {
	slog.Handler
	msg  string
	once sync.Once
	seen chan struct{}
}

func (h *signalHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.once.Do(func() { close(h.seen) })
	}
	return h.Handler.Handle(ctx, r)
}

func (h *signalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &signalHandler{Handler: h.Handler.WithAttrs(as), msg: h.msg, seen: h.seen}
}

// TestBackendStartsLater: New waits for a back-end that is not listening
// yet (started with vio), and the disk then works.
func TestBackendStartsLater(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vu.sock")
	h := &signalHandler{Handler: testLog(t).Handler(), msg: "waiting for the vhost-user back-end to listen", seen: make(chan struct{})}
	mem := sharedRAM(t)
	type result struct {
		dev *vufront.Device
		err error
	}
	got := make(chan result, 1)
	go func() {
		d, err := vufront.New(vufront.Config{Socket: sock, Memory: mem, Log: slog.New(h)})
		got <- result{d, err}
	}()
	select {
	case <-h.seen:
	case r := <-got:
		t.Fatalf("New returned before any back-end listened: %v", r.err)
	}
	startVio(t, sock, blocktest.NewMem(1<<20))
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	t.Cleanup(func() { r.dev.Close() })
	m := &machine{dev: r.dev, mc: virtiopcitest.NewMachineOn(t, r.dev, mem, 4096)}
	m.start(t, false)
	m.write(t, 0, 5, pattern(5))
	if got := m.read(t, 1, 5); !bytes.Equal(got, pattern(5)) {
		t.Fatal("read back differs")
	}
}

// TestBackendChanged: a back-end that comes back offering other features
// (here read-only) than the guest negotiated against gives the device
// DEVICE_NEEDS_RESET with a sentence saying what differs.
func TestBackendChanged(t *testing.T) {
	mem := sharedRAM(t)
	disk := blocktest.NewMem(1 << 20)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	a := startVio(t, sock, disk)
	m := newMachine(t, mem, vufront.Config{Socket: sock})
	m.start(t, false)
	m.write(t, 0, 1, pattern(1))
	a.stop(t)
	startVioCfg(t, sock, disk, blk.Config{Serial: "vufront", NumQueues: 2, ReadOnly: true})
	m.submit(t, 0, [][]byte{header(blk.TypeOut, 2), pattern(2)}, []uint32{1})
	for m.mc.Guest.Status()&virtio.StatusDeviceNeedsReset == 0 {
		if _, err := m.mc.Router.Wait(wait); err != nil {
			t.Fatalf("no needs-reset: %v", err)
		}
	}
	if err := m.dev.Err(); err == nil || !strings.Contains(err.Error(), "came back with virtio features") {
		t.Fatalf("last error %v", err)
	}
}
