package virtio_test

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// recLog records the calls a queue makes to its InflightLog, and what
// used.idx in guest memory was at each.
type recLog struct {
	d     *queuetest.Driver
	calls []string
}

func (r *recLog) Taken(h uint16) { r.calls = append(r.calls, fmt.Sprintf("taken %d", h)) }
func (r *recLog) Completing(h uint16) {
	r.calls = append(r.calls, fmt.Sprintf("completing %d at used %d", h, r.d.UsedIdx()))
}
func (r *recLog) Completed(h, idx uint16) {
	r.calls = append(r.calls, fmt.Sprintf("completed %d used %d (memory %d)", h, idx, r.d.UsedIdx()))
}

// TestInflightLogOrder: a queue with an inflight log records each chain
// as taken before the device gets it, and each completion around the
// used-ring update (Completing before used.idx moves, Completed after);
// a malformed chain is recorded as taken and completed at once; Unget,
// which would have to undo the record, refuses.
func TestInflightLogOrder(t *testing.T) {
	d, q := setup(t, 8, 0)
	log := &recLog{d: d}
	if err := q.ResumeInflight(log, 0, 0, nil); err != nil {
		t.Fatal(err)
	}
	h1, err := d.Add([][]byte{{1}}, []uint32{1})
	if err != nil {
		t.Fatal(err)
	}
	// A malformed chain: its next index lies outside the table.
	if !d.Reserve(5) {
		t.Fatal("slot 5 not free")
	}
	d.WriteDesc(5, queuetest.Desc{Addr: 0x30000, Len: 1, Flags: 1, Next: 9})
	d.Publish(5)
	h2, err := d.Add([][]byte{{2}}, []uint32{1})
	if err != nil {
		t.Fatal(err)
	}
	c1 := next(t, q)
	if q.Unget(c1) {
		t.Fatal("Unget handed back a chain the inflight log recorded")
	}
	c2 := next(t, q) // returns the malformed chain on the way
	if c1.Head != h1 || c2.Head != h2 {
		t.Fatalf("heads %d %d, want %d %d", c1.Head, c2.Head, h1, h2)
	}
	if err := q.Push(c2.Head, 1); err != nil {
		t.Fatal(err)
	}
	if err := q.Push(c1.Head, 1); err != nil {
		t.Fatal(err)
	}
	want := []string{
		fmt.Sprintf("taken %d", h1),
		"taken 5", "completing 5 at used 0", "completed 5 used 1 (memory 1)",
		fmt.Sprintf("taken %d", h2),
		fmt.Sprintf("completing %d at used 1", h2), fmt.Sprintf("completed %d used 2 (memory 2)", h2),
		fmt.Sprintf("completing %d at used 2", h1), fmt.Sprintf("completed %d used 3 (memory 3)", h1),
	}
	if !slices.Equal(log.calls, want) {
		t.Fatalf("log calls:\n%q\nwant\n%q", log.calls, want)
	}
}

// TestResumeInflight: a queue resumed with chains to resubmit hands them
// out first, in the order given, without consuming avail entries and
// without recording them as taken again, then goes on from nextAvail; what
// ResumeInflight is given is checked against the ring.
func TestResumeInflight(t *testing.T) {
	d, q := setup(t, 16, 0)
	var heads []uint16
	for i := range 4 {
		h, err := d.Add([][]byte{{byte(i)}}, []uint32{1})
		if err != nil {
			t.Fatal(err)
		}
		heads = append(heads, h)
	}
	// The previous device took all four and completed the second.
	cfg := d.Config()
	if err := d.Memory().StoreUint16(cfg.UsedRing+2, 1); err != nil {
		t.Fatal(err)
	}
	log := &recLog{d: d}
	for _, bad := range []struct {
		avail, used uint16
		resubmit    []uint16
	}{
		{4, 1, []uint16{heads[0]}},               // count does not match
		{4, 0, heads[:4]},                        // used.idx in memory is 1
		{4, 1, []uint16{heads[0], 16, heads[3]}}, // head outside the ring
		{20, 1, make([]uint16, 19)},              // more than a ring in flight
	} {
		if err := q.ResumeInflight(log, bad.avail, bad.used, bad.resubmit); !errors.Is(err, virtio.ErrQueueConfig) {
			t.Fatalf("ResumeInflight(%d, %d, %v): %v", bad.avail, bad.used, bad.resubmit, err)
		}
	}
	if err := q.ResumeInflight(nil, 4, 1, heads[2:3]); !errors.Is(err, virtio.ErrQueueConfig) {
		t.Fatalf("resubmission without a log: %v", err)
	}
	resubmit := []uint16{heads[3], heads[0], heads[2]} // the order the previous device took them
	if err := q.ResumeInflight(log, 4, 1, resubmit); err != nil {
		t.Fatal(err)
	}
	for _, h := range resubmit {
		c := next(t, q)
		if c.Head != h {
			t.Fatalf("resubmitted head %d, want %d", c.Head, h)
		}
		if err := q.Push(c.Head, 1); err != nil {
			t.Fatal(err)
		}
	}
	if c, err := q.Next(); err != nil || c != nil {
		t.Fatalf("after the resubmitted chains: %v %v, want an empty ring", c, err)
	}
	h5, err := d.Add([][]byte{{5}}, []uint32{1})
	if err != nil {
		t.Fatal(err)
	}
	if c := next(t, q); c.Head != h5 {
		t.Fatalf("next chain %d, want the new one %d", c.Head, h5)
	}
	for _, call := range log.calls {
		for _, h := range resubmit {
			if call == fmt.Sprintf("taken %d", h) {
				t.Fatalf("resubmitted head %d recorded as taken again", h)
			}
		}
	}
	if got := q.NextAvail(); got != 5 {
		t.Fatalf("next avail %d, want 5", got)
	}
}
