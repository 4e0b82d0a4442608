package vhostuser

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// FuzzInflightRestart restarts a ring on an inflight region whose
// contents are the fuzzer's (a front-end's or a crashed back-end's
// writing), over a guest ring with chains available and a used.idx of the
// fuzzer's choosing. A region the back-end cannot trust is refused with
// ErrBadInflight; one it accepts yields heads in the ring, each once, and
// a queue that serves them and the avail ring to the end in bounded steps,
// after which the region records nothing in flight.
func FuzzInflightRestart(f *testing.F) {
	const qsize = 8
	seed := func(build func(b []byte)) []byte {
		b := make([]byte, inflightQueueSize(qsize))
		build(b)
		return b
	}
	le := binary.LittleEndian
	f.Add(seed(func([]byte) {}), uint16(0), uint16(3))
	valid := func(b []byte) {
		le.PutUint16(b[ihVersion:], inflightVersion)
		le.PutUint16(b[ihDescNum:], qsize)
		le.PutUint16(b[ihUsedIdx:], 1)
		for i, h := range []int{2, 0} {
			e := b[inflightHeaderSize+inflightEntrySize*h:]
			e[ieInflight] = 1
			le.PutUint64(e[ieCounter:], uint64(7+i))
		}
	}
	f.Add(seed(valid), uint16(1), uint16(3))
	// A push in progress: used.idx is one ahead of the record.
	f.Add(seed(func(b []byte) { valid(b); le.PutUint16(b[ihLastBatchHead:], 2) }), uint16(2), uint16(3))
	f.Add(seed(func(b []byte) { valid(b); le.PutUint16(b[ihDescNum:], 9) }), uint16(1), uint16(3))
	f.Add(seed(func(b []byte) { valid(b); b[inflightHeaderSize+ieInflight] = 7 }), uint16(1), uint16(3))
	f.Fuzz(func(t *testing.T, contents []byte, usedIdx, availIdx uint16) {
		mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 1 << 20}}, memory.Options{Backing: memory.Anonymous})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		drv, err := queuetest.New(mem, 0x1000, qsize, 64<<10, false)
		if err != nil {
			t.Fatal(err)
		}
		for range 4 {
			if _, err := drv.Add([][]byte{make([]byte, 16)}, []uint32{8}); err != nil {
				t.Fatal(err)
			}
		}
		cfg := drv.Config()
		drv.SetAvailIdx(availIdx)
		if err := mem.StoreUint16(cfg.UsedRing+2, usedIdx); err != nil {
			t.Fatal(err)
		}

		reg, _, fd, err := newInflightRegion(1, qsize, 1)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
		defer reg.close()
		rb, err := reg.mem.Slice(0, inflightQueueSize(qsize))
		if err != nil {
			t.Fatal(err)
		}
		copy(rb, contents)
		iq, err := reg.queue(0, qsize)
		if err != nil {
			t.Fatal(err)
		}
		resubmit, fresh, err := iq.recover(qsize, usedIdx)
		if err != nil {
			if !errors.Is(err, ErrBadInflight) {
				t.Fatalf("refused with %v, not ErrBadInflight", err)
			}
			return
		}
		seen := map[uint16]bool{}
		for _, h := range resubmit {
			if h >= qsize || seen[h] {
				t.Fatalf("resubmit list %v: head out of the ring or twice", resubmit)
			}
			seen[h] = true
		}
		if fresh && len(resubmit) != 0 {
			t.Fatalf("a fresh region resubmits %v", resubmit)
		}
		q, err := virtio.NewQueue(mem, cfg, qsize, 0)
		if err != nil {
			t.Fatal(err)
		}
		next := usedIdx + uint16(len(resubmit))
		if err := q.ResumeInflight(iq, next, usedIdx, resubmit); err != nil {
			t.Fatalf("the queue refuses what recover accepted: %v", err)
		}
		for i, got := 0, 0; ; i++ {
			if i > 3*qsize {
				t.Fatal("the queue hands out chains without end")
			}
			c, err := q.Next()
			if err != nil {
				return // broken by the avail ring: the driver must reset
			}
			if c == nil {
				break
			}
			if got < len(resubmit) && c.Head != resubmit[got] {
				t.Fatalf("chain %d is head %d, want resubmitted %d", got, c.Head, resubmit[got])
			}
			got++
			if err := q.Push(c.Head, 0); err != nil {
				return
			}
		}
		// Every chain was completed: a restart now finds none in flight.
		used, err := mem.LoadUint16(cfg.UsedRing + 2)
		if err != nil {
			t.Fatal(err)
		}
		again, _, err := iq.recover(qsize, used)
		if err != nil || len(again) != 0 {
			t.Fatalf("after completing everything the region says %v (%v)", again, err)
		}
	})
}
