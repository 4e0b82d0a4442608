package vufront_test

import (
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/devices/virtio/vufront"
	"github.com/viovmm/vio/irq"
	"github.com/viovmm/vio/kvm"
)

// fdRouter routes each MSI-X vector to an eventfd of its own, as vmm's
// router routes them to KVM irqfds: a back-end given one signals the
// "guest" with no vio code on the way.
type fdRouter struct {
	mu  sync.Mutex
	fds map[int]*kvm.EventFD
}

func (r *fdRouter) Route(vector int, _ uint64, _ uint32) (irq.Trigger, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.fds[vector]; e != nil {
		return e, nil
	}
	e, err := kvm.NewEventFD()
	if err != nil {
		return nil, err
	}
	r.fds[vector] = e
	return e, nil
}

func (r *fdRouter) fd(vector int) *kvm.EventFD {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fds[vector]
}

// signalled reads the vector's eventfd without blocking.
func (r *fdRouter) signalled(vector int) bool {
	var b [8]byte
	n, _ := unix.Read(r.fd(vector).FD(), b[:])
	return n == 8
}

// waitSignal waits for the vector's eventfd (a bound, not a wait).
func (r *fdRouter) waitSignal(t *testing.T, vector int) {
	t.Helper()
	got := make(chan error, 1)
	go func() { _, err := r.fd(vector).Wait(); got <- err }()
	select {
	case err := <-got:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		r.fd(vector).Add(1) // ends the waiting goroutine
		<-got
		t.Fatalf("vector %d never signalled", vector)
	}
}

// until spins (yielding, bounded) until cond holds: for state another
// goroutine changes with nothing to wait on.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		runtime.Gosched()
	}
}

// TestDirectInterrupts: with the queue's vector deliverable and routed to
// an eventfd, the back-end signals that eventfd itself; masking the
// vector moves it to vio's eventfd, so the interrupt waits in the pending
// bit and comes on unmask; then the back-end is moved back.
func TestDirectInterrupts(t *testing.T) {
	mem := sharedRAM(t)
	sock := filepath.Join(t.TempDir(), "vu.sock")
	startVio(t, sock, blocktest.NewMem(1<<20))
	m := newMachine(t, mem, vufront.Config{Socket: sock})
	r := &fdRouter{fds: map[int]*kvm.EventFD{}}
	defer func() {
		for _, e := range r.fds {
			e.Close()
		}
	}()
	m.mc.Transport.MSIX().SetRouter(r)
	m.start(t, false)
	until(t, "queue 0 signals its irqfd", func() bool { return m.dev.DirectCall(0) })

	write := func(sec uint64) uint16 {
		return m.submit(t, 0, [][]byte{header(blk.TypeOut, sec), pattern(int(sec))}, []uint32{1})
	}
	used := func(h uint16) {
		t.Helper()
		u, ok, err := m.queues[0].GetUsed()
		if err != nil || !ok || u.ID != h || u.Data[0] != blk.StatusOK {
			t.Fatalf("used %+v %v %v, want head %d OK", u, ok, err, h)
		}
	}

	h := write(1)
	r.waitSignal(t, 1)
	used(h)

	m.mc.Guest.MaskMSIX(1, true)
	until(t, "queue 0 moved off its irqfd", func() bool { return !m.dev.DirectCall(0) })
	// The back-end acknowledged the move: nothing reaches the irqfd from
	// here on, but a second signal it sent for write 1 may be there.
	r.signalled(1)
	h = write(2)
	until(t, "the masked vector pending", func() bool { return m.mc.Transport.MSIX().Pending(1) })
	if r.signalled(1) {
		t.Fatal("a masked vector's irqfd was signalled")
	}
	used(h)
	m.mc.Guest.MaskMSIX(1, false)
	r.waitSignal(t, 1) // the pending interrupt, delivered by vio on unmask
	until(t, "queue 0 back on its irqfd", func() bool { return m.dev.DirectCall(0) })
	h = write(3)
	r.waitSignal(t, 1)
	used(h)
}
