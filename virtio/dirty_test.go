package virtio_test

import (
	"bytes"
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/memory/dmatest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// takeDirty returns the set of pages marked since the last call.
func takeDirty(t *testing.T, m *memory.Memory) []uint64 {
	t.Helper()
	b, err := m.TakeDirty(0)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Collect(memory.DirtyPages(b))
}

// TestPushMarksWhatTheDeviceWrote checks what a request marks dirty: the
// writable buffers when the chain is taken (SliceForWrite), and at Push
// exactly the used element, used.idx and the bytes the used length covers,
// never the device-readable buffers.
func TestPushMarksWhatTheDeviceWrote(t *testing.T) {
	mem := newMem(t)
	// Base 0x1f60 with 8 entries puts the used ring at 0x1ff8: flags and
	// idx on page 1, element 0 across pages 1 and 2, element 1 on page 2.
	d, err := queuetest.New(mem, 0x1f60, 8, 0x20000, false)
	if err != nil {
		t.Fatal(err)
	}
	if u := d.Config().UsedRing; u != 0x1ff8 {
		t.Fatalf("queuetest put the used ring at %#x; the test needs 0x1ff8", u)
	}
	q, err := virtio.NewQueue(mem, d.Config(), 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	place := func(gpa, n uint64) {
		t.Helper()
		a, err := d.Alloc(8)
		if err == nil && gpa > a+8 {
			_, err = d.Alloc(gpa - a - 8)
		}
		if err != nil {
			t.Fatal(err)
		}
		if b, err := d.Alloc(n); err != nil || b != gpa {
			t.Fatalf("buffer at %#x, %v; want %#x", b, err, gpa)
		}
	}
	// Readable on page 5; writable A across pages 6-7, B on page 8, C on
	// page 10.
	const r, a, b, c = 0x5000, 0x6f00, 0x8000, 0xa000
	place(r, 100)
	place(a, 0x200)
	place(b, 0x1000)
	place(c, 16)
	for i := range uint16(4) {
		d.Reserve(i)
	}
	d.WriteDesc(0, queuetest.Desc{Addr: r, Len: 100, Flags: queuetest.FlagNext, Next: 1})
	d.WriteDesc(1, queuetest.Desc{Addr: a, Len: 0x200, Flags: queuetest.FlagWrite | queuetest.FlagNext, Next: 2})
	d.WriteDesc(2, queuetest.Desc{Addr: b, Len: 0x1000, Flags: queuetest.FlagWrite | queuetest.FlagNext, Next: 3})
	d.WriteDesc(3, queuetest.Desc{Addr: c, Len: 16, Flags: queuetest.FlagWrite})
	mem.EnableDirtyTracking()

	for _, tc := range []struct {
		written uint32
		want    []uint64 // pages marked by Push
	}{
		// Element 0 (pages 1-2), used.idx (page 1), all of A (6-7) and
		// the first 16 bytes of B (8); nothing of C.
		{0x210, []uint64{1, 2, 6, 7, 8}},
		// Element 1 (page 2), used.idx (page 1), the first half of A
		// (page 6 only).
		{0x80, []uint64{1, 2, 6}},
	} {
		d.Publish(0)
		takeDirty(t, mem) // the driver's writes: a vCPU's, KVM logs them
		ch := next(t, q)
		if got, want := takeDirty(t, mem), []uint64{6, 7, 8, 10}; !slices.Equal(got, want) {
			t.Errorf("taking the chain marked pages %v, want the writable buffers' %v", got, want)
		}
		fill := bytes.Repeat([]byte{0xa5}, int(tc.written))
		if _, err := ch.Writable.WriteAt(fill, 0); err != nil {
			t.Fatal(err)
		}
		if err := q.Push(ch.Head, tc.written); err != nil {
			t.Fatal(err)
		}
		if got := takeDirty(t, mem); !slices.Equal(got, tc.want) {
			t.Errorf("Push of %#x bytes marked pages %v, want %v", tc.written, got, tc.want)
		}
	}
}

// TestDirtyTrackingUnderLoad is a pre-copy migration in miniature: a device
// completes requests from two goroutines while the test, as migrator,
// takes the dirty bitmap and copies the pages it names as fast as it can.
// After each batch of requests a final pass runs with the device idle, and
// the copy must then equal guest RAM: a write the device made that no
// bitmap reported shows as a difference.
func TestDirtyTrackingUnderLoad(t *testing.T) {
	requests := 4000
	if testing.Short() {
		requests = 400
	}
	mem := newMem(t)
	d, err := queuetest.New(mem, 0x1000, 64, 0x40000, true)
	if err != nil {
		t.Fatal(err)
	}
	q, err := virtio.NewQueue(mem, d.Config(), 64, virtio.FeatureEventIdx)
	if err != nil {
		t.Fatal(err)
	}
	src := mem.Regions()[0].Data
	dst := make([]byte, len(src))
	mem.EnableDirtyTracking()
	copy(dst, src) // the first full pass
	send := func() {
		b, err := mem.TakeDirty(0)
		if err != nil {
			t.Fatal(err)
		}
		for p := range memory.DirtyPages(b) {
			mem.ReadAt(dst[p*memory.DirtyPageSize:(p+1)*memory.DirtyPageSize], int64(p*memory.DirtyPageSize))
		}
	}
	// The request names a byte; the device fills the writable buffers
	// with it, up to a length that depends on it.
	length := func(seq byte) int { return 1 + int(seq)*37%8000 }

	stop := make(chan struct{})
	chains := make(chan *virtio.Chain)
	var devices sync.WaitGroup
	defer func() {
		close(stop)
		devices.Wait()
	}()
	devices.Go(func() { // takes chains, hands them to the workers
		defer close(chains)
		for {
			select {
			case <-stop:
				return
			case <-q.Kicks():
			}
			for {
				c, err := q.Next()
				if err != nil {
					t.Error(err)
					return
				}
				if c == nil {
					break
				}
				select {
				case chains <- c:
				case <-stop:
					return
				}
			}
		}
	})
	for range 2 {
		devices.Go(func() {
			for c := range chains {
				var seq [1]byte
				c.Readable.ReadAt(seq[:], 0)
				n := length(seq[0])
				c.Writable.WriteAt(bytes.Repeat(seq[:], n), 0)
				if err := q.Push(c.Head, uint32(n)); err != nil {
					t.Error(err) // and go on draining, so that the taker never blocks
				}
			}
		})
	}

	for sent, batch := 0, 0; sent < requests; batch++ {
		// A batch: as many requests as the data area holds.
		inBatch := 0
		for ; sent < requests; sent++ {
			_, err := d.Add([][]byte{{byte(sent)}}, []uint32{3000, 5000})
			if errors.Is(err, queuetest.ErrNoDescriptors) || errors.Is(err, queuetest.ErrNoBufferSpace) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			inBatch++
		}
		q.Kick()
		for inBatch > 0 {
			send() // racing with the device
			u, ok, err := d.GetUsed()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				continue
			}
			if int(u.Len) != length(u.Data[0]) {
				t.Fatalf("request %d came back with %d bytes, want %d", u.Data[0], u.Len, length(u.Data[0]))
			}
			inBatch--
		}
		send() // the final pass, with the device idle
		for p := range len(src) / memory.DirtyPageSize {
			if !bytes.Equal(dst[p*memory.DirtyPageSize:(p+1)*memory.DirtyPageSize], src[p*memory.DirtyPageSize:(p+1)*memory.DirtyPageSize]) {
				t.Fatalf("batch %d: page %d differs from guest RAM: a write was not marked", batch, p)
			}
		}
	}
}

// TestQueueFollowsRemap moves a live queue's rings behind a translating
// DMA: after the remap (a generation change) the queue must serve from the
// new place. A queue that kept its old ring slices would read the old
// copies, which MoveRings fills with 0xff, and break.
func TestQueueFollowsRemap(t *testing.T) {
	mem := newMem(t)
	d, err := queuetest.New(mem, 0x1000, 8, 0x10000, false)
	if err != nil {
		t.Fatal(err)
	}
	const iova = 1 << 40 // the rings' device address, far from any GPA
	dma := dmatest.New(mem)
	cfg := d.Config()
	// Rings at 0x1000 (one page); data identity-mapped from 0x2000.
	if err := dma.Map(dmatest.Window{IOVA: iova, GPA: 0x1000, Size: 0x1000}); err != nil {
		t.Fatal(err)
	}
	if err := dma.Map(dmatest.Window{IOVA: 0x2000, GPA: 0x2000, Size: 0x10000}); err != nil {
		t.Fatal(err)
	}
	devCfg := func(c virtio.QueueConfig, base uint64) virtio.QueueConfig {
		return virtio.QueueConfig{Size: c.Size, DescTable: iova + c.DescTable - base, AvailRing: iova + c.AvailRing - base, UsedRing: iova + c.UsedRing - base}
	}
	q, err := virtio.NewQueue(dma, devCfg(cfg, 0x1000), 8, 0)
	if err != nil {
		t.Fatal(err)
	}
	round := func(seq byte) {
		t.Helper()
		if _, err := d.Add([][]byte{{seq}}, []uint32{4}); err != nil {
			t.Fatal(err)
		}
		c := next(t, q)
		c.Writable.WriteAt([]byte{seq, seq, seq, seq}, 0)
		if err := q.Push(c.Head, 4); err != nil {
			t.Fatal(err)
		}
		u, ok, err := d.GetUsed()
		if err != nil || !ok || !bytes.Equal(u.Data, []byte{seq, seq, seq, seq}) {
			t.Fatalf("request %d: used %+v, %v, %v", seq, u, ok, err)
		}
	}
	round(1)
	if err := d.MoveRings(0x20000); err != nil {
		t.Fatal(err)
	}
	if err := dma.Move(iova, 0x20000); err != nil {
		t.Fatal(err)
	}
	for seq := byte(2); seq < 20; seq++ { // wraps the 8-entry rings twice
		round(seq)
	}
	if s := q.Stats(); s.LastError != nil || s.BadChains != 0 {
		t.Fatalf("queue stats after the remap: %+v", s)
	}

	// Rings unmapped under the queue: it breaks with a defined error.
	if err := dma.Unmap(iova); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Next(); !errors.Is(err, virtio.ErrQueueBroken) || !errors.Is(err, memory.ErrNotMapped) {
		t.Fatalf("Next with the rings unmapped: %v; want ErrQueueBroken wrapping ErrNotMapped", err)
	}
}
