package rng_test

import (
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/virtio/rng"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// patternSource is an entropy source whose stream is known: byte i of the
// stream is byte(i*13+7). It counts what was read from it.
type patternSource struct {
	mu sync.Mutex
	n  int
}

func (s *patternSource) Read(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range p {
		p[i] = byte((s.n+i)*13 + 7)
	}
	s.n += len(p)
	return len(p), nil
}

func (s *patternSource) read() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

// fuzzMem is the guest RAM of FuzzRequests, reused across inputs (a fuzz
// worker runs one at a time, and a first touch of a page costs more here
// than the whole input): queuetest.New clears the queue and data area.
var fuzzMem *memory.Memory

// FuzzRequests serves request chains a hostile driver built (see
// queuetest.Hostile: read-only and writable buffers mixed, lengths up to
// about a megabyte, buffers outside RAM or straddling its end, loops,
// indirect tables). The device must not panic or hang, and:
//   - it returns every chain; a chain the queue must refuse with length
//     0, any other with min(its writable bytes, rng.MaxPerRequest): the
//     device bounds what it fills per request;
//   - it writes guest memory only inside the writable buffers, up to the
//     used length;
//   - the bytes the guest receives, in used order, are the source's
//     stream from its start (nothing lost, repeated or made up);
//   - it reads at most one request's worth from the source beyond what it
//     gave out, and after Reset no goroutine of it writes guest memory.
func FuzzRequests(f *testing.F) {
	// One small writable buffer; a read-only one; one of 128 KiB in four
	// buffers (beyond MaxPerRequest); an indirect chain.
	f.Add([]byte{0, 0x01, 0x02, 0, 0x00, 0x10, 3, 0x09, 0x08, 0x09, 0x08, 0x09, 0x08, 0x09, 0x08, 5, 0x01, 0x04, 0x01, 0x04}, uint8(1))
	// Writable then read-only, out of RAM, straddling RAM's end, a loop,
	// an empty writable buffer.
	f.Add([]byte{1, 0x01, 0x40, 0x00, 0x40, 0, 0x05, 0x40, 0, 0x07, 0x40, 8, 0x01, 0x40, 0, 0x01, 0}, uint8(0))
	f.Fuzz(func(t *testing.T, script []byte, feat uint8) {
		const size = 16
		if fuzzMem == nil {
			m, err := memory.New([]memory.Layout{{GPA: 0x10000, Size: 0x40000}})
			if err != nil {
				t.Fatal(err)
			}
			fuzzMem = m
		}
		mem := fuzzMem
		drv, err := queuetest.New(mem, 0x10000, size, 0x3f000, false)
		if err != nil {
			t.Fatal(err)
		}
		var features uint64 = virtio.FeatureVersion1
		if feat&1 != 0 {
			features |= virtio.FeatureIndirectDesc
		}
		h, err := queuetest.NewHostile(drv, feat&1 != 0)
		if err != nil {
			t.Fatal(err)
		}
		posted := h.Post(script)
		if err := h.Freeze(); err != nil {
			t.Fatal(err)
		}
		q, err := virtio.NewQueue(mem, drv.Config(), size, features)
		if err != nil {
			t.Fatal(err)
		}
		irq := queuetest.NewInterrupt()
		q.SetInterrupt(irq)
		src := &patternSource{}
		d := rng.New(src)
		if err := d.Activate(&virtio.Activation{Memory: mem, Features: features, Queues: []*virtio.Queue{q}}); err != nil {
			t.Fatal(err)
		}
		// The device polls at activation: it serves every posted chain
		// without a kick.
		werr := irq.WaitFor(func() bool { return drv.UsedIdx() == uint16(len(posted)) }, 10*time.Second)
		d.Reset()
		if werr != nil {
			t.Fatalf("%d of %d chains returned: %v", drv.UsedIdx(), len(posted), werr)
		}
		used, err := h.Collect()
		if err != nil {
			t.Fatal(err)
		}
		if err := h.CheckWrites(); err != nil {
			t.Fatal(err)
		}
		var given int
		for _, u := range used {
			want := uint32(0)
			if _, w := u.Chain.Writable(); u.Chain.Valid {
				want = uint32(min(w, rng.MaxPerRequest))
			}
			if u.Len != want {
				t.Fatalf("chain %d (valid %v) filled with %d bytes, want %d", u.Chain.Head, u.Chain.Valid, u.Len, want)
			}
			for i, b := range u.Data {
				if b != byte((given+i)*13+7) {
					t.Fatalf("byte %d of the stream (chain %d) is %#x, not the source's", given+i, u.Chain.Head, b)
				}
			}
			given += len(u.Data)
		}
		if r := src.read(); r < given || r > given+rng.MaxPerRequest {
			t.Fatalf("read %d bytes from the source to give out %d", r, given)
		}
	})
}
