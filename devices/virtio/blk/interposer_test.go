package blk_test

import (
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/faults"
	"github.com/viovmm/vio/block/throttle"
	"github.com/viovmm/vio/devices/virtio/blk"
)

// TestResetDrainsThrottle: a request waiting in a throttle for an hour does
// not hold up a device reset; it is failed instead.
func TestResetDrainsThrottle(t *testing.T) {
	be, err := throttle.New(blocktest.NewMem(1<<20), throttle.Limits{Ops: throttle.Bucket{Size: 1, RefillTime: time.Hour}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	m := newMachine(t, be, blk.Config{})
	m.start(t, 0, false)
	if _, st := m.read(t, 0, 512); st != blk.StatusOK {
		t.Fatalf("first read: status %d", st)
	}
	m.submit(t, 0, [][]byte{header(blk.TypeIn, 0)}, []uint32{512, 1}, false)
	g := throttle.Of(be).Group()
	deadline := time.Now().Add(wait)
	for g.Stats().Queued != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the second read never reached the throttle")
		}
		runtime.Gosched()
	}
	reset := make(chan error, 1)
	go func() { reset <- m.guest.Reset() }()
	select {
	case err := <-reset:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("reset waits for the throttle")
	}
	if s := g.Stats(); s.Drained != 1 || s.Queued != 0 {
		t.Fatalf("throttle stats after reset %+v", s)
	}
}

// TestFaultStatuses: every injected fault reaches the driver as
// VIRTIO_BLK_S_IOERR (virtio-blk has no other failure status: ENOSPC too
// is an I/O error to the guest), and the sectors beside a failed range
// still read fine.
func TestFaultStatuses(t *testing.T) {
	be := faults.New(blocktest.NewMem(1<<20), 1)
	defer be.Close()
	n := faults.Of(be)
	m := newMachine(t, be, blk.Config{})
	m.start(t, blk.FeatureFlush, false)
	for _, c := range []struct {
		name string
		rule faults.Rule
		do   func() byte
	}{
		{"EIO on read", faults.Rule{Ops: faults.Read, Offset: 4096, Length: 4096}, func() byte { _, st := m.read(t, 8, 512); return st }},
		{"ENOSPC on write", faults.Rule{Ops: faults.Write, Errno: syscall.ENOSPC}, func() byte { return m.write(t, 0, make([]byte, 512)) }},
		{"torn write", faults.Rule{Torn: 512}, func() byte { return m.write(t, 0, make([]byte, 1024)) }},
		{"flush", faults.Rule{Ops: faults.Flush}, func() byte {
			return status(t, m.do(t, [][]byte{header(blk.TypeFlush, 0)}, []uint32{1}), 1)
		}},
	} {
		if err := n.SetRules([]faults.Rule{c.rule}); err != nil {
			t.Fatal(err)
		}
		if st := c.do(); st != blk.StatusIOErr {
			t.Errorf("%s: status %d, want IOERR", c.name, st)
		}
	}
	if err := n.SetRules([]faults.Rule{{Ops: faults.Read, Offset: 4096, Length: 4096}}); err != nil {
		t.Fatal(err)
	}
	for _, sector := range []uint64{0, 7, 16, 100} {
		if _, st := m.read(t, sector, 512); st != blk.StatusOK {
			t.Errorf("sector %d outside the faulty range: status %d", sector, st)
		}
	}
	n.FailStop()
	if _, st := m.read(t, 0, 512); st != blk.StatusIOErr {
		t.Errorf("after fail-stop: status %d, want IOERR", st)
	}
}
