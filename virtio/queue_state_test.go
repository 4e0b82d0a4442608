package virtio_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// request submits a request whose readable byte is its sequence number
// and whose writable buffer takes the device's answer.
func request(t *testing.T, d *queuetest.Driver, seq byte) {
	t.Helper()
	if _, err := d.Add([][]byte{{seq}}, []uint32{1}); err != nil {
		t.Fatal(err)
	}
}

// serveN takes n chains and answers each with its sequence number + 100.
func serveN(t *testing.T, q *virtio.Queue, n int) []byte {
	t.Helper()
	var seen []byte
	for range n {
		c := next(t, q)
		var b [1]byte
		if _, err := c.Readable.ReadAt(b[:], 0); err != nil {
			t.Fatal(err)
		}
		seen = append(seen, b[0])
		if _, err := c.Writable.WriteAt([]byte{b[0] + 100}, 0); err != nil {
			t.Fatal(err)
		}
		if err := q.Push(c.Head, 1); err != nil {
			t.Fatal(err)
		}
	}
	return seen
}

// TestQueueStateContinues saves a queue part-way through a stream of
// requests (some served, some made available and not yet taken), restores
// it into a fresh Queue over the same guest memory and goes on: every
// request is served exactly once, in order, across several wrap-arounds
// of the 16-bit indexes' ring positions.
func TestQueueStateContinues(t *testing.T) {
	for _, feat := range []uint64{0, virtio.FeatureEventIdx, virtio.FeatureEventIdx | virtio.FeatureIndirectDesc} {
		t.Run(fmt.Sprintf("features=%#x", feat), func(t *testing.T) {
			d, q := setup(t, 8, feat)
			var served []byte
			answered := map[byte]bool{}
			collect := func() {
				for {
					u, ok, err := d.GetUsed()
					if err != nil {
						t.Fatal(err)
					}
					if !ok {
						return
					}
					if len(u.Data) != 1 || answered[u.Data[0]] {
						t.Fatalf("used entry %+v: duplicate or malformed", u)
					}
					answered[u.Data[0]] = true
				}
			}
			seq := byte(0)
			// 21 requests served before the save: the ring wraps twice.
			for range 7 {
				for range 3 {
					request(t, d, seq)
					seq++
				}
				served = append(served, serveN(t, q, 3)...)
				_ = q.Signal()
				collect()
			}
			// Two more made available, not taken.
			request(t, d, seq)
			request(t, d, seq+1)
			seq += 2
			st, err := q.SaveState()
			if err != nil {
				t.Fatal(err)
			}
			if st.NextAvail != 21 || st.NextUsed != 21 || st.EventIdx != (feat&virtio.FeatureEventIdx != 0) {
				t.Fatalf("saved %+v", st)
			}
			q2, err := virtio.RestoreQueue(d.Memory(), st, 8)
			if err != nil {
				t.Fatal(err)
			}
			if st2, err := q2.SaveState(); err != nil || st2 != st {
				t.Fatalf("restored queue saves %+v, %v; want %+v", st2, err, st)
			}
			served = append(served, serveN(t, q2, 2)...)
			if err := q2.Signal(); err != nil {
				t.Fatal(err)
			}
			collect()
			for range 3 {
				request(t, d, seq)
				seq++
			}
			served = append(served, serveN(t, q2, 3)...)
			if c, err := q2.Next(); c != nil || err != nil {
				t.Fatalf("extra chain %v, %v", c, err)
			}
			if err := q2.Signal(); err != nil {
				t.Fatal(err)
			}
			collect()
			for i, s := range served {
				if s != byte(i) {
					t.Fatalf("served %v: request %d out of order or duplicated", served, i)
				}
			}
			if len(served) != int(seq) || len(answered) != int(seq) || d.InFlight() != 0 {
				t.Fatalf("served %d, answered %d, in flight %d of %d", len(served), len(answered), d.InFlight(), seq)
			}
		})
	}
}

// TestQueueStateEventIdxSignal: the restored queue makes the interrupt
// decision the original would have made (suppressed when the driver's
// used_event says so, raised when it asks).
func TestQueueStateEventIdxSignal(t *testing.T) {
	d, q := setup(t, 8, virtio.FeatureEventIdx)
	request(t, d, 0)
	serveN(t, q, 1)
	if !q.NeedsInterrupt() {
		t.Fatal("first interrupt suppressed")
	}
	// The driver does not consume: used_event stays 0, so the next
	// completion needs no interrupt.
	st, err := q.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	q2, err := virtio.RestoreQueue(d.Memory(), st, 8)
	if err != nil {
		t.Fatal(err)
	}
	request(t, d, 1)
	serveN(t, q2, 1)
	if q2.NeedsInterrupt() {
		t.Error("restored queue interrupts although used_event says no")
	}
	// used_event 2: interrupt once used.idx passes 2, as it now will.
	d.SetUsedEvent(2)
	request(t, d, 2)
	serveN(t, q2, 1)
	if !q2.NeedsInterrupt() {
		t.Error("restored queue suppressed a wanted interrupt")
	}
}

func TestQueueSaveRefusesInFlight(t *testing.T) {
	d, q := setup(t, 8, 0)
	request(t, d, 0)
	c := next(t, q)
	if _, err := q.SaveState(); !errors.Is(err, virtio.ErrInFlight) {
		t.Fatalf("save with a request in flight: %v", err)
	}
	if err := q.Push(c.Head, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := q.SaveState(); err != nil {
		t.Fatal(err)
	}
}

func TestQueueRestoreHostile(t *testing.T) {
	d, q := setup(t, 8, 0)
	request(t, d, 0)
	serveN(t, q, 1)
	good, err := q.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]func(s *virtio.QueueState){
		"size 6":             func(s *virtio.QueueState) { s.Size = 6 },
		"size 0":             func(s *virtio.QueueState) { s.Size = 0 },
		"size above max":     func(s *virtio.QueueState) { s.Size = 16 },
		"misaligned desc":    func(s *virtio.QueueState) { s.DescTable += 8 },
		"desc outside RAM":   func(s *virtio.QueueState) { s.DescTable = ramSize - 16 },
		"used outside RAM":   func(s *virtio.QueueState) { s.UsedRing = 1 << 40 },
		"avail wraps":        func(s *virtio.QueueState) { s.AvailRing = 1<<64 - 2 },
		"in flight":          func(s *virtio.QueueState) { s.NextAvail++ },
		"used.idx mismatch":  func(s *virtio.QueueState) { s.NextAvail, s.NextUsed = 5, 5 },
		"used.idx behind by": func(s *virtio.QueueState) { s.NextAvail, s.NextUsed = 0, 0 },
	}
	for name, f := range cases {
		t.Run(name, func(t *testing.T) {
			s := good
			f(&s)
			if _, err := virtio.RestoreQueue(d.Memory(), s, 8); err == nil {
				t.Fatalf("restored %+v", s)
			}
		})
	}
	s := good
	s.Broken = true
	q2, err := virtio.RestoreQueue(d.Memory(), s, 8)
	if err != nil {
		t.Fatal(err)
	}
	request(t, d, 1)
	if _, err := q2.Next(); !errors.Is(err, virtio.ErrQueueBroken) {
		t.Fatalf("restored broken queue: %v", err)
	}
}

// FuzzRestoreQueue restores arbitrary queue states over guest memory
// holding arbitrary rings: RestoreQueue refuses or the queue serves (or
// breaks) within bounds, never panics.
func FuzzRestoreQueue(f *testing.F) {
	f.Add(uint16(16), uint64(0x8000), uint64(0x9000), uint64(0xa000), uint16(3), uint16(3), uint8(3), []byte{1, 0, 0, 0})
	f.Add(uint16(7), uint64(1<<63), uint64(2), uint64(4), uint16(0), uint16(1), uint8(0), []byte{})
	f.Fuzz(func(t *testing.T, size uint16, desc, avail, used uint64, nextAvail, nextUsed uint16, flags uint8, ram []byte) {
		mem, err := memory.New([]memory.Layout{{GPA: 0x8000, Size: 0x4000}})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		b, _ := mem.Slice(0x8000, 0x4000)
		copy(b, ram)
		_ = mem.StoreUint16(used+2, nextUsed)
		s := virtio.QueueState{Size: size, DescTable: desc, AvailRing: avail, UsedRing: used,
			EventIdx: flags&1 != 0, Indirect: flags&2 != 0, Broken: flags&4 != 0,
			NextAvail: nextAvail, NextUsed: nextUsed, SignalledUsed: nextUsed - 1, SignalValid: flags&8 != 0}
		q, err := virtio.RestoreQueue(mem, s, 16)
		if err != nil {
			return
		}
		for range 2 * 16 {
			c, err := q.Next()
			if err != nil || c == nil {
				break
			}
			if err := q.Push(c.Head, 0); err != nil {
				break
			}
		}
		_ = q.Signal()
	})
}

func TestUnget(t *testing.T) {
	d, q := setup(t, 8, 0)
	request(t, d, 0)
	request(t, d, 1)
	a, b := next(t, q), next(t, q)
	if q.Unget(a) {
		t.Fatal("Unget of an older chain succeeded")
	}
	if !q.Unget(b) || !q.Unget(a) {
		t.Fatal("Unget newest first failed")
	}
	if q.Unget(a) {
		t.Fatal("second Unget of the same chain succeeded")
	}
	if _, err := q.SaveState(); err != nil {
		t.Fatalf("save after handing every chain back: %v", err)
	}
	if got := serveN(t, q, 2); got[0] != 0 || got[1] != 1 {
		t.Fatalf("served %v after Unget", got)
	}
	// After a push, an earlier chain cannot go back.
	request(t, d, 2)
	request(t, d, 3)
	c := next(t, q)
	serveN(t, q, 1)
	if q.Unget(c) {
		t.Fatal("Unget after a later push succeeded")
	}
}
