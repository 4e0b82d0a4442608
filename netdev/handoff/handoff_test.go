package handoff_test

import (
	"bytes"
	"errors"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/handoff"
	"github.com/viovmm/vio/netdev/nettest"
)

const wait = 10 * time.Second // bounds a hang; never a synchronization

// host plays the host side: each open hands out new links, one per
// queue, and keeps the far ends (the network) for the test.
type host struct {
	mu       sync.Mutex
	queues   int
	offloads netdev.Offloads
	err      error
	opens    int
	near     [][]*nettest.Endpoint // per open: what the NIC got
	far      [][]*nettest.Endpoint // per open: the network's ends
}

func newHost(queues int) *host { return &host{queues: queues, offloads: nettest.AllOffloads} }

func (h *host) open() ([]netdev.Backend, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.err != nil {
		return nil, h.err
	}
	h.opens++
	var bes []netdev.Backend
	var near, far []*nettest.Endpoint
	for range h.queues {
		a, b := nettest.Pair(64)
		a.SetOffloads(h.offloads)
		near, far = append(near, a), append(far, b)
		bes = append(bes, a)
	}
	h.near, h.far = append(h.near, near), append(h.far, far)
	return bes, nil
}

// last returns the ends of the last open.
func (h *host) last() (near, far []*nettest.Endpoint) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.near[len(h.near)-1], h.far[len(h.far)-1]
}

func packet(s string) []byte {
	p := make([]byte, netdev.HeaderSize, netdev.HeaderSize+64)
	return append(p, []byte(s+" padded to an ethernet header")...)
}

func read(be netdev.Backend) ([]byte, error) {
	bufs := [][]byte{make([]byte, netdev.MaxPacketLen)}
	sizes := []int{0}
	if _, err := be.ReadFrames(bufs, sizes); err != nil {
		return nil, err
	}
	return bufs[0][:sizes[0]], nil
}

func write(be netdev.Backend, p []byte) error {
	_, err := be.WriteFrames([][][]byte{{p[:netdev.HeaderSize], p[netdev.HeaderSize:]}})
	return err
}

func wantFrame(t *testing.T, got []byte, err error, want []byte, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s: got %q, want %q", what, got, want)
	}
}

// async runs f on a goroutine and returns its result on a channel.
func async(f func() ([]byte, error)) <-chan result {
	c := make(chan result, 1)
	go func() {
		p, err := f()
		c <- result{p, err}
	}()
	return c
}

type result struct {
	p   []byte
	err error
}

func waitResult(t *testing.T, c <-chan result, what string) result {
	t.Helper()
	select {
	case r := <-c:
		return r
	case <-time.After(wait):
		t.Fatalf("%s never returned", what)
	}
	return result{}
}

func notYet(t *testing.T, c <-chan result, what string) {
	t.Helper()
	select {
	case r := <-c:
		t.Fatalf("%s returned while nothing is attached: %q, %v", what, r.p, r.err)
	case <-time.After(50 * time.Millisecond):
	}
}

// A NIC attached at build moves frames both ways; detached, a read blocked
// on the host side comes out of it and waits, as a write does; attached
// again (new links), both go through on the new host side, which got
// what the front-end asked while nothing was attached.
func TestDetachAttach(t *testing.T) {
	h := newHost(2)
	bes, err := h.open()
	if err != nil {
		t.Fatal(err)
	}
	n, err := handoff.New(bes, h.open)
	if err != nil {
		t.Fatal(err)
	}
	qs := n.Queues()
	if len(qs) != 2 || !n.Active() || n.Facts() != (handoff.Facts{Queues: 2, Offloads: nettest.AllOffloads}) {
		t.Fatalf("queues %d, active %v, facts %+v", len(qs), n.Active(), n.Facts())
	}
	_, far := h.last()
	if err := write(qs[1], packet("out on queue 1")); err != nil {
		t.Fatal(err)
	}
	p, err := read(far[1])
	wantFrame(t, p, err, packet("out on queue 1"), "the network")
	far[0].Send(netdev.Header{}, packet("in on queue 0")[netdev.HeaderSize:])
	p, err = read(qs[0])
	wantFrame(t, p, err, packet("in on queue 0"), "queue 0")

	blocked := async(func() ([]byte, error) { return read(qs[0]) })
	notYet(t, blocked, "a read with nothing sent")
	oldNear, _ := h.last()
	if err := n.Detach(); err != nil {
		t.Fatal(err)
	}
	if n.Active() || n.Inner() != nil {
		t.Fatal("a detached NIC says it is attached")
	}
	for i, e := range oldNear {
		if _, err := read(e); !errors.Is(err, netdev.ErrClosed) {
			t.Errorf("Detach left host side %d open: %v", i, err)
		}
	}
	notYet(t, blocked, "the read interrupted by Detach")
	writing := async(func() ([]byte, error) { return nil, write(qs[1], packet("sent while detached")) })
	notYet(t, writing, "a write")
	// What the front-end asks meanwhile is kept for the next host side.
	if err := qs[0].(netdev.Offloader).SetRecvOffloads(netdev.OffloadCsum | netdev.OffloadTSO4); err != nil {
		t.Fatal(err)
	}
	if err := qs[1].(netdev.QueueSwitch).SetQueueEnabled(false); err != nil {
		t.Fatal(err)
	}
	if err := qs[0].(netdev.Offloader).SetRecvOffloads(netdev.OffloadUFO << 8); err == nil {
		t.Error("offloads outside the facts accepted")
	}
	if err := n.Detach(); err != nil {
		t.Fatalf("detaching twice: %v", err)
	}

	if err := n.Attach(); err != nil {
		t.Fatal(err)
	}
	near, far := h.last()
	if o, ok := near[0].RecvOffloads(); !ok || o != netdev.OffloadCsum|netdev.OffloadTSO4 {
		t.Errorf("the new queue 0 got receive offloads %#x (set: %v)", o, ok)
	}
	if near[1].QueueEnabled() || !near[0].QueueEnabled() {
		t.Errorf("the new queues are enabled: %v, %v; want true, false", near[0].QueueEnabled(), near[1].QueueEnabled())
	}
	if r := waitResult(t, writing, "the waiting write"); r.err != nil {
		t.Fatal(r.err)
	}
	p, err = read(far[1])
	wantFrame(t, p, err, packet("sent while detached"), "the new host side")
	far[0].Send(netdev.Header{}, packet("after the attach")[netdev.HeaderSize:])
	r := waitResult(t, blocked, "the waiting read")
	wantFrame(t, r.p, r.err, packet("after the attach"), "the read that waited")
	if got := n.Inner(); len(got) != 2 || got[0] != netdev.Backend(near[0]) {
		t.Errorf("Inner: %v", got)
	}
	if err := n.Attach(); err != nil || h.opens != 2 {
		t.Fatalf("attaching twice: %v, %d opens", err, h.opens)
	}
	for _, q := range qs {
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.Detach(); !errors.Is(err, netdev.ErrClosed) {
		t.Errorf("Detach of a closed NIC: %v", err)
	}
	if err := n.Attach(); !errors.Is(err, netdev.ErrClosed) {
		t.Errorf("Attach of a closed NIC: %v", err)
	}
	if _, err := read(near[0]); !errors.Is(err, netdev.ErrClosed) {
		t.Errorf("closing the queue left its host side open: %v", err)
	}
}

// A NIC built detached (a migration's destination) offers its facts'
// offloads; its reads and writes wait until a deadline, Close or Attach.
func TestDetached(t *testing.T) {
	h := newHost(1)
	n, err := handoff.NewDetached(handoff.Facts{Queues: 1, Offloads: netdev.OffloadCsum}, h.open)
	if err != nil {
		t.Fatal(err)
	}
	q := n.Queues()[0]
	if n.Active() || h.opens != 0 || q.(netdev.Offloader).Offloads() != netdev.OffloadCsum {
		t.Fatalf("active %v, opens %d, offloads %#x", n.Active(), h.opens, q.(netdev.Offloader).Offloads())
	}
	q.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
	if _, err := read(q); !errors.Is(err, os.ErrDeadlineExceeded) || !errors.Is(err, handoff.ErrDetached) {
		t.Fatalf("a read past its deadline: %v", err)
	}
	// A deadline in the past (a front-end stopping its goroutines) ends
	// a waiting write: that frame fails, alone.
	q.SetReadDeadline(time.Time{})
	writing := async(func() ([]byte, error) { return nil, write(q, packet("interrupted")) })
	notYet(t, writing, "a write")
	q.SetReadDeadline(time.Unix(1, 0))
	if r := waitResult(t, writing, "the write"); !errors.Is(r.err, os.ErrDeadlineExceeded) || errors.Is(r.err, netdev.ErrClosed) {
		t.Fatalf("the interrupted write: %v", r.err)
	}
	q.SetReadDeadline(time.Time{})
	// The host side must offer the facts: fewer offloads are refused.
	h.offloads = 0
	if err := n.Attach(); err == nil || n.Active() {
		t.Fatalf("a host side without the offloads attached: %v", err)
	}
	if near, _ := h.last(); !errors.Is(func() error { _, err := read(near[0]); return err }(), netdev.ErrClosed) {
		t.Error("the refused host side was left open")
	}
	h.offloads = nettest.AllOffloads
	h.err = errors.New("no such TAP")
	if err := n.Attach(); err == nil || err.Error() != "no such TAP" || n.Active() {
		t.Fatalf("a failed open: %v", err)
	}
	h.err = nil
	waiting := async(func() ([]byte, error) { return read(q) })
	notYet(t, waiting, "a read")
	if err := n.Attach(); err != nil {
		t.Fatal(err)
	}
	_, far := h.last()
	far[0].Send(netdev.Header{}, packet("to the destination")[netdev.HeaderSize:])
	r := waitResult(t, waiting, "the read")
	wantFrame(t, r.p, r.err, packet("to the destination"), "the destination's queue")
	// Close fails the waits with ErrClosed.
	if err := n.Detach(); err != nil {
		t.Fatal(err)
	}
	waiting = async(func() ([]byte, error) { return read(q) })
	notYet(t, waiting, "a read")
	q.Close()
	if r := waitResult(t, waiting, "the read"); !errors.Is(r.err, netdev.ErrClosed) {
		t.Fatalf("a read waiting at Close: %v", r.err)
	}
	if err := write(q, packet("after close")); !errors.Is(err, netdev.ErrClosed) {
		t.Fatalf("a write after Close: %v", err)
	}
	if err := q.Close(); !errors.Is(err, netdev.ErrClosed) {
		t.Errorf("a second Close: %v", err)
	}
}

// The number of queues is a fact too.
func TestAttachQueueCount(t *testing.T) {
	h := newHost(1)
	n, err := handoff.NewDetached(handoff.Facts{Queues: 2}, h.open)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Attach(); err == nil || n.Active() {
		t.Fatalf("one queue attached under two: %v", err)
	}
	if _, err := handoff.NewDetached(handoff.Facts{}, h.open); err == nil {
		t.Error("a NIC of no queues built")
	}
	if _, err := handoff.New(nil, h.open); err == nil {
		t.Error("a NIC of no back-ends built")
	}
	// A back-end without offloads: none in the facts, none asked.
	n, err = handoff.New([]netdev.Backend{plain{}}, h.open)
	if err != nil {
		t.Fatal(err)
	}
	if f := n.Facts(); f.Offloads != 0 {
		t.Fatalf("facts %+v", f)
	}
	if err := n.Queues()[0].(netdev.Offloader).SetRecvOffloads(netdev.OffloadCsum); err == nil {
		t.Error("offloads asked of a back-end without them")
	}
}

// plain is a back-end without optional interfaces.
type plain struct{}

func (plain) ReadFrames([][]byte, []int) (int, error) { return 0, netdev.ErrClosed }
func (plain) WriteFrames(f [][][]byte) (int, error)   { return len(f), nil }
func (plain) SetReadDeadline(time.Time) error         { return nil }
func (plain) Close() error                            { return nil }

// Detach waits for a write in progress on the host side and interrupts a
// read, under a race detector's eye: readers and writers hammer a queue
// while it is detached and attached again and again.
func TestDetachUnderTraffic(t *testing.T) {
	h := newHost(1)
	bes, _ := h.open()
	n, err := handoff.New(bes, h.open)
	if err != nil {
		t.Fatal(err)
	}
	q := n.Queues()[0]
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := write(q, packet("traffic")); err != nil && !errors.Is(err, netdev.ErrClosed) {
				t.Errorf("write: %v", err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			_, err := read(q)
			if errors.Is(err, netdev.ErrClosed) {
				return
			}
			if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("read: %v", err)
				return
			}
		}
	}()
	for range 50 {
		_, far := h.last()
		far[0].Send(netdev.Header{}, packet("in")[netdev.HeaderSize:])
		if err := n.Detach(); err != nil {
			t.Fatal(err)
		}
		if err := n.Attach(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	q.Close()
	wg.Wait()
}
