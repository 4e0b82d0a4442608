package console_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/virtio/console"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const (
	msiAddr = 0xfee00000
	wait    = 10 * time.Second // bounds a hang; never a synchronization
)

// output is an io.Writer that lets a test wait for what was written.
type output struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	more chan struct{}
	fail error
}

func newOutput() *output { return &output{more: make(chan struct{}, 1)} }

func (o *output) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.fail != nil {
		err := o.fail
		o.fail = nil
		return 0, err
	}
	o.buf.Write(p)
	select {
	case o.more <- struct{}{}:
	default:
	}
	return len(p), nil
}

// waitFor waits until the output holds want.
func (o *output) waitFor(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(wait)
	for {
		o.mu.Lock()
		got := o.buf.String()
		o.mu.Unlock()
		if got == want {
			return
		}
		if len(got) > len(want) || !strings.HasPrefix(want, got) {
			t.Fatalf("output %q, want %q", got, want)
		}
		select {
		case <-o.more:
		case <-deadline:
			t.Fatalf("output %q, want %q", got, want)
		}
	}
}

type machine struct {
	mem    *memory.Memory
	router *pcitest.Router
	dev    *console.Device
	guest  *virtiopcitest.Guest
	rx, tx *queuetest.Driver
}

func newMachine(t *testing.T, in io.Reader, out io.Writer, cfg console.Config) *machine {
	t.Helper()
	dev, err := console.New(in, out, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mc := virtiopcitest.NewMachine(t, dev, 8<<20, 1024)
	return &machine{mem: mc.Mem, router: mc.Router, dev: dev, guest: mc.Guest}
}

func (m *machine) start(t *testing.T, feat uint64) {
	t.Helper()
	g := m.guest
	if err := g.Negotiate(feat | virtio.FeatureVersion1 | virtio.FeatureEventIdx); err != nil {
		t.Fatal(err)
	}
	for v := range 3 {
		g.ProgramMSIX(v, msiAddr, uint32(0x50+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	var err error
	if m.rx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: console.RxQueue, Vector: 1, Base: 0x100000, DataSize: 0x100000, EventIdx: true}); err != nil {
		t.Fatal(err)
	}
	if m.tx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: console.TxQueue, Vector: 2, Base: 0x300000, DataSize: 0x100000, EventIdx: true}); err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDeviceNeedsReset != 0 || s&virtio.StatusDriverOK == 0 {
		t.Fatalf("status %#x", s)
	}
}

func (m *machine) write(t *testing.T, s ...string) {
	t.Helper()
	var out [][]byte
	for _, x := range s {
		out = append(out, []byte(x))
	}
	if _, err := m.tx.Add(out, nil); err != nil {
		t.Fatal(err)
	}
	if m.tx.NeedsKick() {
		m.guest.Kick(console.TxQueue)
	}
}

func (m *machine) post(t *testing.T, sizes ...uint32) {
	t.Helper()
	for _, n := range sizes {
		if _, err := m.rx.Add(nil, []uint32{n}); err != nil {
			t.Fatal(err)
		}
	}
	if m.rx.NeedsKick() {
		m.guest.Kick(console.RxQueue)
	}
}

// read collects received bytes until it has n.
func (m *machine) read(t *testing.T, n int) string {
	t.Helper()
	var got []byte
	deadline := time.Now().Add(wait)
	for len(got) < n {
		u, ok, err := m.rx.GetUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			got = append(got, u.Data...)
			continue
		}
		// Wait for the receive queue's interrupt (vector 1); a device
		// that does not interrupt fails here.
		for {
			msg, err := m.router.Wait(time.Until(deadline))
			if err != nil {
				t.Fatalf("received %q, want %d bytes: %v", got, n, err)
			}
			if msg.Vector == 1 {
				break
			}
		}
	}
	return string(got)
}

func TestOutput(t *testing.T) {
	out := newOutput()
	m := newMachine(t, nil, out, console.Config{})
	if f := m.guest.DeviceFeatures(); f&(console.FeatureSize|console.FeatureMultiport|console.FeatureEmergWrite) != 0 {
		t.Errorf("features %#x", f)
	}
	m.start(t, 0)
	m.write(t, "Linux version ", "6.1\n")
	m.write(t, "login: ")
	out.waitFor(t, "Linux version 6.1\nlogin: ")
	// A failed write ends the output (the first error latches, as the
	// serial port's does): the guest goes on, its bytes are discarded, and
	// Close reports the error.
	out.mu.Lock()
	out.fail = errors.New("disk full")
	out.mu.Unlock()
	m.write(t, "lost")
	m.write(t, "also lost")
	// The used ring says when the device is done with all four chains.
	deadline := time.Now().Add(wait)
	for m.tx.UsedIdx() != 4 {
		if time.Now().After(deadline) {
			t.Fatal("transmit chains not returned")
		}
		time.Sleep(time.Millisecond) // polling an observable, bounded by the deadline
	}
	if s := m.dev.Stats(); s.OutBytes != 38 || s.OutErrors != 0 || s.OutDropped != 0 {
		t.Errorf("stats %+v", s)
	}
	if err := m.guest.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := m.dev.Close(); err == nil || err.Error() != "disk full" {
		t.Errorf("Close: %v, want the output's error", err)
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if got := out.buf.String(); got != "Linux version 6.1\nlogin: " {
		t.Errorf("output %q after the failure", got)
	}
}

// stalled is an output that blocks every Write until released, as a
// terminal paused with ^S or a socket client that stopped reading does.
type stalled struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (s *stalled) Write(p []byte) (int, error) {
	s.once.Do(func() { close(s.entered) })
	<-s.release
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// TestStalledOutput: with the output blocked, the guest's output keeps
// flowing (chains are returned, what exceeds the buffer is dropped and
// counted) and a device reset completes; once the output drains, it holds
// what was buffered, in order.
func TestStalledOutput(t *testing.T) {
	out := &stalled{entered: make(chan struct{}), release: make(chan struct{})}
	released := false
	defer func() {
		if !released {
			close(out.release)
		}
	}()
	m := newMachine(t, nil, out, console.Config{OutBuffer: 64})
	m.start(t, 0)
	m.write(t, "first")
	select {
	case <-out.entered:
	case <-time.After(wait):
		t.Fatal("the output was never written")
	}
	// The output goroutine is now stuck in Write with "first".
	const n = 20
	for i := range n {
		m.write(t, fmt.Sprintf("line %02d\n", i)) // 8 bytes each
	}
	deadline := time.Now().Add(wait)
	for m.tx.UsedIdx() != n+1 {
		if time.Now().After(deadline) {
			t.Fatalf("the guest's output is held by a stalled sink: %d of %d chains returned", m.tx.UsedIdx(), n+1)
		}
		time.Sleep(time.Millisecond) // polling an observable, bounded by the deadline
	}
	reset := make(chan error, 1)
	go func() { reset <- m.guest.Reset() }()
	select {
	case err := <-reset:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("a device reset waits for a stalled sink")
	}
	s := m.dev.Stats()
	if s.OutBytes != 5+8*n || s.OutDropped != 8*n-64 {
		t.Errorf("stats %+v, want %d bytes taken and %d dropped", s, 5+8*n, 8*n-64)
	}
	close(out.release)
	released = true
	if err := m.dev.Close(); err != nil {
		t.Fatal(err)
	}
	want := "first"
	for i := range 8 {
		want += fmt.Sprintf("line %02d\n", i)
	}
	if got := out.buf.String(); got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

func TestInput(t *testing.T) {
	pr, pw := io.Pipe()
	defer pw.Close()
	m := newMachine(t, pr, nil, console.Config{})
	m.start(t, 0)
	// Typed before the guest posted any buffer: held, not lost. The pipe
	// write returns once the device has taken the bytes.
	if _, err := io.WriteString(pw, "root\n"); err != nil {
		t.Fatal(err)
	}
	m.post(t, 3, 3, 16)
	if got := m.read(t, 5); got != "root\n" {
		t.Fatalf("got %q", got)
	}
	// Input larger than the posted buffers (the 16-byte one left over and
	// two more) waits for more of them.
	long := strings.Repeat("0123456789", 30)
	go io.WriteString(pw, long)
	m.post(t, 64, 64)
	first := m.read(t, 16+128)
	m.post(t, 256)
	if got := first + m.read(t, len(long)-16-128); got != long {
		t.Fatalf("got %q", got)
	}
	// A reset keeps input not yet delivered.
	go io.WriteString(pw, "after reset")
	// Wait until the device holds the input (the pump has read it).
	deadline := time.Now().Add(wait)
	for m.dev.Stats().InRead < uint64(5+len(long)+11) {
		if time.Now().After(deadline) {
			t.Fatal("input not read")
		}
		time.Sleep(time.Millisecond) // polling an observable, bounded by the deadline
	}
	if err := m.guest.Reset(); err != nil {
		t.Fatal(err)
	}
	m.start(t, 0)
	m.post(t, 32)
	if got := m.read(t, 11); got != "after reset" {
		t.Fatalf("after reset: %q", got)
	}
	if s := m.dev.Stats(); s.InBytes != uint64(5+len(long)+11) {
		t.Errorf("stats %+v", s)
	}
	// The end of input is harmless.
	pw.Close()
	m.write(t, "still alive")
}

func TestSize(t *testing.T) {
	m := newMachine(t, nil, nil, console.Config{Cols: 80, Rows: 25})
	g := m.guest
	if f := g.DeviceFeatures(); f&console.FeatureSize == 0 {
		t.Fatalf("features %#x", f)
	}
	if c, r := g.ReadDeviceConfig(0, 2), g.ReadDeviceConfig(2, 2); c != 80 || r != 25 {
		t.Errorf("size %dx%d", c, r)
	}
	m.start(t, console.FeatureSize)
	m.dev.Resize(132, 43)
	if msg, err := m.router.Wait(wait); err != nil || msg.Vector != 0 {
		t.Fatalf("config interrupt %+v %v", msg, err)
	}
	if c, r := g.ReadDeviceConfig(0, 2), g.ReadDeviceConfig(2, 2); c != 132 || r != 43 {
		t.Errorf("size %dx%d", c, r)
	}
	if v := g.ReadDeviceConfig(4, 4); v != 0 {
		t.Errorf("max_nr_ports %d without MULTIPORT", v)
	}
}
