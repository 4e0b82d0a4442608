package virtio_test

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

const ramSize = 1 << 20

func newMem(t testing.TB) *memory.Memory {
	t.Helper()
	m, err := memory.New([]memory.Layout{{GPA: 0, Size: ramSize}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

type counter struct{ ch chan struct{} }

func (c *counter) Trigger() error {
	select {
	case c.ch <- struct{}{}:
	default:
	}
	return nil
}

func setup(t testing.TB, size uint16, features uint64) (*queuetest.Driver, *virtio.Queue) {
	t.Helper()
	mem := newMem(t)
	d, err := queuetest.New(mem, 0x1000, size, 0x40000, features&virtio.FeatureEventIdx != 0)
	if err != nil {
		t.Fatal(err)
	}
	q, err := virtio.NewQueue(mem, d.Config(), size, features)
	if err != nil {
		t.Fatal(err)
	}
	return d, q
}

func next(t *testing.T, q *virtio.Queue) *virtio.Chain {
	t.Helper()
	c, err := q.Next()
	if err != nil {
		t.Fatal(err)
	}
	if c == nil {
		t.Fatal("no chain")
	}
	return c
}

func TestRoundTrip(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		t.Run(fmt.Sprint("indirect=", indirect), func(t *testing.T) {
			d, q := setup(t, 8, virtio.FeatureIndirectDesc)
			add := d.Add
			if indirect {
				add = d.AddIndirect
			}
			head, err := add([][]byte{[]byte("hello, "), []byte("device")}, []uint32{5, 11})
			if err != nil {
				t.Fatal(err)
			}
			c := next(t, q)
			if c.Head != head {
				t.Errorf("head %d, want %d", c.Head, head)
			}
			got := make([]byte, c.Readable.Len())
			if _, err := c.Readable.ReadAt(got, 0); err != nil || string(got) != "hello, device" {
				t.Errorf("readable %q %v", got, err)
			}
			if len(c.Writable) != 2 || c.Writable.Len() != 16 {
				t.Fatalf("writable %d buffers, %d bytes", len(c.Writable), c.Writable.Len())
			}
			msg := []byte("0123456789abcdef")
			if _, err := c.Writable.WriteAt(msg[:9], 0); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Writable.WriteAt(msg, 1); !errors.Is(err, virtio.ErrShort) {
				t.Errorf("overlong WriteAt: %v", err)
			}
			if err := q.Push(c.Head, 9); err != nil {
				t.Fatal(err)
			}
			if c, err := q.Next(); c != nil || err != nil {
				t.Fatalf("second Next: %v %v", c, err)
			}
			u, ok, err := d.GetUsed()
			if err != nil || !ok {
				t.Fatal(ok, err)
			}
			if u.ID != head || u.Len != 9 || !bytes.Equal(u.Data, []byte("001234567")) {
				t.Errorf("used %+v", u)
			}
			if d.InFlight() != 0 {
				t.Error("chain still in flight")
			}
		})
	}
}

// TestBadChains presents malformed chains: each must come back with length
// 0, count as bad, and leave the queue working.
func TestBadChains(t *testing.T) {
	type build func(d *queuetest.Driver) uint16
	buf := func(d *queuetest.Driver) uint64 {
		a, err := d.Alloc(64)
		if err != nil {
			panic(err)
		}
		return a
	}
	cases := map[string]build{
		"self loop": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 8, Flags: queuetest.FlagNext, Next: 0})
			return 0
		},
		"two-step loop": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 8, Flags: queuetest.FlagNext, Next: 1})
			d.WriteDesc(1, queuetest.Desc{Addr: buf(d), Len: 8, Flags: queuetest.FlagNext, Next: 0})
			return 0
		},
		"next out of range": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 8, Flags: queuetest.FlagNext, Next: 9})
			return 0
		},
		"buffer outside RAM": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: ramSize - 4, Len: 8})
			return 0
		},
		"buffer wraps": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: ^uint64(0) - 2, Len: 8})
			return 0
		},
		"readable after writable": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 8, Flags: queuetest.FlagWrite | queuetest.FlagNext, Next: 1})
			d.WriteDesc(1, queuetest.Desc{Addr: buf(d), Len: 8})
			return 0
		},
		"empty readable after writable": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 0, Flags: queuetest.FlagWrite | queuetest.FlagNext, Next: 1})
			d.WriteDesc(1, queuetest.Desc{Addr: buf(d), Len: 8})
			return 0
		},
		"indirect with NEXT": func(d *queuetest.Driver) uint16 {
			t := buf(d)
			d.WriteIndirectTable(t, []queuetest.Desc{{Addr: buf(d), Len: 8}})
			d.WriteDesc(0, queuetest.Desc{Addr: t, Len: 16, Flags: queuetest.FlagIndirect | queuetest.FlagNext, Next: 1})
			d.WriteDesc(1, queuetest.Desc{Addr: buf(d), Len: 8})
			return 0
		},
		"nested indirect": func(d *queuetest.Driver) uint16 {
			inner, outer := buf(d), buf(d)
			d.WriteIndirectTable(inner, []queuetest.Desc{{Addr: buf(d), Len: 8}})
			d.WriteIndirectTable(outer, []queuetest.Desc{{Addr: inner, Len: 16, Flags: queuetest.FlagIndirect}})
			d.WriteDesc(0, queuetest.Desc{Addr: outer, Len: 16, Flags: queuetest.FlagIndirect})
			return 0
		},
		"indirect length not multiple of 16": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 24, Flags: queuetest.FlagIndirect})
			return 0
		},
		"indirect length 0": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 0, Flags: queuetest.FlagIndirect})
			return 0
		},
		"indirect table outside RAM": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: ramSize - 16, Len: 32, Flags: queuetest.FlagIndirect})
			return 0
		},
		"indirect table too long": func(d *queuetest.Driver) uint16 {
			d.WriteDesc(0, queuetest.Desc{Addr: buf(d), Len: 16 * 9, Flags: queuetest.FlagIndirect})
			return 0
		},
		"indirect loop": func(d *queuetest.Driver) uint16 {
			t := buf(d)
			d.WriteIndirectTable(t, []queuetest.Desc{{Addr: buf(d), Len: 8, Flags: queuetest.FlagNext, Next: 1}, {Addr: buf(d), Len: 8, Flags: queuetest.FlagNext, Next: 0}})
			d.WriteDesc(0, queuetest.Desc{Addr: t, Len: 32, Flags: queuetest.FlagIndirect})
			return 0
		},
		"indirect next out of table": func(d *queuetest.Driver) uint16 {
			t := buf(d)
			d.WriteIndirectTable(t, []queuetest.Desc{{Addr: buf(d), Len: 8, Flags: queuetest.FlagNext, Next: 1}})
			d.WriteDesc(0, queuetest.Desc{Addr: t, Len: 16, Flags: queuetest.FlagIndirect})
			return 0
		},
	}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			d, q := setup(t, 8, virtio.FeatureIndirectDesc)
			d.Reserve(0)
			d.Reserve(1)
			head := b(d)
			d.Publish(head)
			good, err := d.Add([][]byte{[]byte("ok")}, nil)
			if err != nil {
				t.Fatal(err)
			}
			c := next(t, q)
			if c.Head != good {
				t.Fatalf("got head %d, want the good chain %d", c.Head, good)
			}
			st := q.Stats()
			if st.BadChains != 1 || !errors.Is(st.LastError, virtio.ErrBadChain) {
				t.Errorf("stats %+v", st)
			}
			if idx := d.UsedIdx(); idx != 1 {
				t.Fatalf("used idx %d after bad chain", idx)
			}
			// The bad chain is in the used ring with length 0.
			b := make([]byte, 8)
			if _, err := d.Memory().ReadAt(b, int64(d.Config().UsedRing+4)); err != nil {
				t.Fatal(err)
			}
			if b[0] != byte(head) || b[4] != 0 || b[5] != 0 {
				t.Errorf("used element % x", b)
			}
		})
	}
}

// TestBadChainInterrupts: a bad chain goes back to the driver without the
// device seeing it, so the queue itself interrupts for it when Next finds
// the ring empty (devices signal only for what they pushed), and once
// only; a good chain behind it leaves the interrupt to the device.
func TestBadChainInterrupts(t *testing.T) {
	d, q := setup(t, 8, 0)
	irq := &counter{ch: make(chan struct{}, 8)}
	q.SetInterrupt(irq)
	d.Reserve(0)
	d.WriteDesc(0, queuetest.Desc{Addr: ramSize - 4, Len: 8}) // outside RAM
	d.Publish(0)
	if c, err := q.Next(); c != nil || err != nil {
		t.Fatalf("Next = %v, %v", c, err)
	}
	if len(irq.ch) != 1 || q.Stats().Interrupts != 1 {
		t.Fatalf("%d interrupts (stats %+v) for a bad chain returned", len(irq.ch), q.Stats())
	}
	<-irq.ch
	if err := q.Signal(); err != nil || len(irq.ch) != 0 {
		t.Fatalf("Signal after the queue's own interrupt: %v, %d interrupts", err, len(irq.ch))
	}
	// A bad chain followed by a good one: Next returns the good one and
	// does not interrupt; the device's Signal covers both.
	d.Publish(0)
	if _, err := d.Add([][]byte{[]byte("ok")}, nil); err != nil {
		t.Fatal(err)
	}
	c := next(t, q)
	if len(irq.ch) != 0 {
		t.Fatal("interrupt before the device completed its chain")
	}
	if err := q.Push(c.Head, 0); err != nil {
		t.Fatal(err)
	}
	if err := q.Signal(); err != nil || len(irq.ch) != 1 {
		t.Fatalf("Signal: %v, %d interrupts", err, len(irq.ch))
	}
}

func TestIndirectNeedsFeature(t *testing.T) {
	d, q := setup(t, 8, 0)
	if _, err := d.AddIndirect([][]byte{[]byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	if c, err := q.Next(); c != nil || err != nil {
		t.Fatalf("Next = %v, %v", c, err)
	}
	if q.Stats().BadChains != 1 {
		t.Error("indirect chain accepted without the feature")
	}
}

func TestBrokenRing(t *testing.T) {
	for name, corrupt := range map[string]func(d *queuetest.Driver){
		"avail idx too far ahead": func(d *queuetest.Driver) { d.SetAvailIdx(9) },
		"head out of range":       func(d *queuetest.Driver) { d.Publish(8) },
	} {
		t.Run(name, func(t *testing.T) {
			d, q := setup(t, 8, 0)
			var reason error
			q.OnBroken(func(err error) { reason = err })
			corrupt(d)
			if _, err := q.Next(); !errors.Is(err, virtio.ErrQueueBroken) {
				t.Fatalf("Next: %v", err)
			}
			if !errors.Is(reason, virtio.ErrQueueBroken) {
				t.Errorf("OnBroken got %v", reason)
			}
			if _, err := q.Next(); !errors.Is(err, virtio.ErrQueueBroken) {
				t.Error("queue recovered by itself")
			}
			if err := q.Push(0, 0); !errors.Is(err, virtio.ErrQueueBroken) {
				t.Errorf("Push on broken queue: %v", err)
			}
		})
	}
}

func TestQueueConfigValidation(t *testing.T) {
	mem := newMem(t)
	good := virtio.QueueConfig{Size: 256, DescTable: 0x1000, AvailRing: 0x2000, UsedRing: 0x3000}
	if _, err := virtio.NewQueue(mem, good, 256, 0); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*virtio.QueueConfig){
		"size 0":            func(c *virtio.QueueConfig) { c.Size = 0 },
		"size not pow2":     func(c *virtio.QueueConfig) { c.Size = 100 },
		"size above max":    func(c *virtio.QueueConfig) { c.Size = 512 },
		"desc misaligned":   func(c *virtio.QueueConfig) { c.DescTable += 8 },
		"avail misaligned":  func(c *virtio.QueueConfig) { c.AvailRing++ },
		"used misaligned":   func(c *virtio.QueueConfig) { c.UsedRing += 2 },
		"desc outside RAM":  func(c *virtio.QueueConfig) { c.DescTable = ramSize - 0x800 },
		"avail outside RAM": func(c *virtio.QueueConfig) { c.AvailRing = ramSize - 0x100 },
		"used outside RAM":  func(c *virtio.QueueConfig) { c.UsedRing = ramSize - 0x400 },
		"used far away":     func(c *virtio.QueueConfig) { c.UsedRing = 1 << 62 },
	} {
		c := good
		mod(&c)
		if _, err := virtio.NewQueue(mem, c, 256, 0); !errors.Is(err, virtio.ErrQueueConfig) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func pushOne(t *testing.T, d *queuetest.Driver, q *virtio.Queue) {
	t.Helper()
	if _, err := d.Add(nil, []uint32{4}); err != nil {
		t.Fatal(err)
	}
	c := next(t, q)
	if err := q.Push(c.Head, 0); err != nil {
		t.Fatal(err)
	}
}

func TestInterruptSuppressionEventIdx(t *testing.T) {
	d, q := setup(t, 8, virtio.FeatureEventIdx)
	d.SetUsedEvent(0)
	pushOne(t, d, q)
	if !q.NeedsInterrupt() {
		t.Error("first used entry, used_event 0: want interrupt")
	}
	pushOne(t, d, q) // used idx 2; driver still asks for an interrupt at 0 → passed already
	if q.NeedsInterrupt() {
		t.Error("used_event 0 already signalled: want none")
	}
	d.SetUsedEvent(3) // interrupt when the entry at index 3 is used
	pushOne(t, d, q)  // idx 3
	if q.NeedsInterrupt() {
		t.Error("idx 3 with used_event 3: want none yet")
	}
	pushOne(t, d, q) // idx 4: entry 3 now used
	if !q.NeedsInterrupt() {
		t.Error("passed used_event: want interrupt")
	}
	if q.NeedsInterrupt() {
		t.Error("nothing new: want none")
	}
	// A batch that jumps over used_event still interrupts once.
	d.SetUsedEvent(5)
	for i := 0; i < 3; i++ {
		for {
			if _, ok, _ := d.GetUsed(); !ok {
				break
			}
		}
		d.SetUsedEvent(5)
		pushOne(t, d, q)
	}
	if !q.NeedsInterrupt() {
		t.Error("batch over used_event: want interrupt")
	}
}

func TestInterruptSuppressionFlags(t *testing.T) {
	d, q := setup(t, 8, 0)
	d.SetNoInterrupt(true)
	pushOne(t, d, q)
	if q.NeedsInterrupt() {
		t.Error("NO_INTERRUPT set: want none")
	}
	d.SetNoInterrupt(false)
	pushOne(t, d, q)
	if !q.NeedsInterrupt() {
		t.Error("NO_INTERRUPT clear: want interrupt")
	}
}

func TestNotificationSuppression(t *testing.T) {
	t.Run("flags", func(t *testing.T) {
		d, q := setup(t, 8, 0)
		q.DisableNotifications()
		d.Add(nil, []uint32{1})
		if d.NeedsKick() {
			t.Error("kick despite NO_NOTIFY")
		}
		more, err := q.EnableNotifications()
		if err != nil || !more {
			t.Errorf("EnableNotifications = %v, %v; a chain is pending", more, err)
		}
		next(t, q)
		if more, _ := q.EnableNotifications(); more {
			t.Error("more with nothing pending")
		}
		d.Add(nil, []uint32{1})
		if !d.NeedsKick() {
			t.Error("no kick with notifications enabled")
		}
	})
	t.Run("event idx", func(t *testing.T) {
		d, q := setup(t, 8, virtio.FeatureEventIdx)
		d.Add(nil, []uint32{1})
		if !d.NeedsKick() {
			t.Error("first chain: want kick")
		}
		q.DisableNotifications()
		d.Add(nil, []uint32{1})
		if d.NeedsKick() {
			t.Error("device has not consumed: want no kick")
		}
		next(t, q)
		next(t, q)
		if more, _ := q.EnableNotifications(); more {
			t.Error("more with nothing pending")
		}
		d.Add(nil, []uint32{1})
		if !d.NeedsKick() {
			t.Error("after EnableNotifications: want kick")
		}
	})
}

// TestDeviceLoop runs the loop from the package documentation against a
// driver that only kicks when NeedsKick says so and only waits for
// interrupts the device decides to send: a lost wakeup on either side
// hangs, and the timeout turns that into a failure.
func TestDeviceLoop(t *testing.T) {
	for _, feat := range []uint64{0, virtio.FeatureEventIdx} {
		t.Run(fmt.Sprint("features=", feat), func(t *testing.T) {
			d, q := setup(t, 32, feat)
			irq := &counter{ch: make(chan struct{}, 1)}
			q.SetInterrupt(irq)
			stop := make(chan struct{})
			done := make(chan error, 1)
			go func() { done <- serve(q, stop) }()
			const total = 2000
			sent, got := 0, 0
			deadline := time.After(20 * time.Second)
			for got < total {
				for sent < total && d.InFlight() < 12 {
					if _, err := d.Add([][]byte{{byte(sent)}}, []uint32{4}); err != nil {
						t.Fatal(err)
					}
					sent++
				}
				if d.NeedsKick() {
					q.Kick()
				}
				for {
					u, ok, err := d.GetUsed()
					if err != nil {
						t.Fatal(err)
					}
					if !ok {
						break
					}
					if u.Len != 4 {
						t.Fatalf("len %d", u.Len)
					}
					got++
				}
				if d.InFlight() == 0 && sent == total {
					break
				}
				if d.InFlight() < 12 && sent < total {
					continue
				}
				select {
				case <-irq.ch:
				case <-deadline:
					t.Fatalf("stalled: sent %d got %d", sent, got)
				}
			}
			close(stop)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			st := q.Stats()
			if st.Chains != total {
				t.Errorf("chains %d", st.Chains)
			}
			t.Logf("%+v", st)
		})
	}
}

func serve(q *virtio.Queue, stop chan struct{}) error {
	for {
		select {
		case <-stop:
			return nil
		case <-q.Kicks():
		}
		for {
			q.DisableNotifications()
			for {
				c, err := q.Next()
				if err != nil {
					return err
				}
				if c == nil {
					break
				}
				n, _ := c.Writable.WriteAt([]byte{1, 2, 3, 4}, 0)
				if err := q.Push(c.Head, uint32(n)); err != nil {
					return err
				}
			}
			if err := q.Signal(); err != nil {
				return err
			}
			more, err := q.EnableNotifications()
			if err != nil {
				return err
			}
			if !more {
				break
			}
		}
	}
}

// HasAvailable says whether Next has a chain (or an error) to return, and
// takes nothing itself.
func TestHasAvailable(t *testing.T) {
	d, q := setup(t, 8, 0)
	if q.HasAvailable() {
		t.Fatal("an empty ring has chains available")
	}
	if _, err := d.Add([][]byte{[]byte("x")}, nil); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if !q.HasAvailable() {
			t.Fatal("a published chain is not available")
		}
	}
	next(t, q)
	if q.HasAvailable() {
		t.Fatal("a taken chain is still available")
	}
	d.SetAvailIdx(100) // far ahead: Next breaks the queue, so there is news
	if !q.HasAvailable() {
		t.Fatal("a ring Next would report broken has nothing available")
	}
	if _, err := q.Next(); !errors.Is(err, virtio.ErrQueueBroken) {
		t.Fatalf("Next: %v", err)
	}
	if !q.HasAvailable() {
		t.Fatal("a broken queue has nothing to say")
	}
}
