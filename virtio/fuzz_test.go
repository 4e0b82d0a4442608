package virtio_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
)

// FuzzQueue fills guest RAM — descriptor table, rings, indirect tables and
// everything descriptors may point at — with fuzzer data and serves the
// queue. Whatever the bytes, the queue must not panic, must return at most
// one chain per available entry, must keep every buffer inside guest RAM,
// and must end up either drained or broken.
func FuzzQueue(f *testing.F) {
	seed := make([]byte, 0x400)
	le := binary.LittleEndian
	// desc 0: indirect table at 0x200 of 2 entries; desc 1: loop.
	le.PutUint64(seed[0:], 0x8200)
	le.PutUint32(seed[8:], 32)
	le.PutUint16(seed[12:], 4)
	le.PutUint64(seed[16:], 0x8300)
	le.PutUint32(seed[24:], 8)
	le.PutUint16(seed[28:], 1|2)
	le.PutUint16(seed[30:], 1)
	f.Add(seed, uint16(2), uint8(3), uint16(0))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 5, 0, 7, 0}, uint16(7), uint8(1), uint16(0xfffe))
	f.Add([]byte{}, uint16(0), uint8(0), uint16(1))
	f.Fuzz(func(t *testing.T, data []byte, availIdx uint16, feat uint8, start uint16) {
		const size = 16
		mem, err := memory.New([]memory.Layout{{GPA: 0x8000, Size: 0x4000}})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		ram, _ := mem.Slice(0x8000, 0x4000)
		// Fuzz bytes land on the descriptor table (0x8000), the buffers
		// area and the avail ring (0x9000).
		copy(ram, data)
		if len(data) > 0x400 {
			copy(ram[0x1000:], data[0x400:])
		}
		var features uint64
		if feat&1 != 0 {
			features |= virtio.FeatureIndirectDesc
		}
		if feat&2 != 0 {
			features |= virtio.FeatureEventIdx
		}
		cfg := virtio.QueueConfig{Size: size, DescTable: 0x8000, AvailRing: 0x9000, UsedRing: 0xa000}
		q, err := virtio.NewQueue(mem, cfg, size, features)
		if err != nil {
			t.Fatal(err)
		}
		// Start the device's view at an arbitrary index, as after many
		// wrap-arounds.
		for i := uint16(0); i < start%64; i++ {
			_ = q.Push(0, 0)
		}
		_ = mem.StoreUint16(0x9002, availIdx)
		_, _ = q.Next() // pulls nothing or breaks, with start pushes not consumed
		chains := 0
		for i := 0; i < 4*size; i++ {
			c, err := q.Next()
			if err != nil {
				if !errors.Is(err, virtio.ErrQueueBroken) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if c == nil {
				break
			}
			chains++
			if len(c.Readable)+len(c.Writable) > size {
				t.Fatalf("chain of %d buffers on a queue of %d", len(c.Readable)+len(c.Writable), size)
			}
			for _, b := range append(append(virtio.Buffers{}, c.Readable...), c.Writable...) {
				if len(b) == 0 {
					t.Fatal("empty buffer in chain")
				}
			}
			_, _ = c.Writable.WriteAt([]byte("xyz"), 1)
			_ = q.Push(c.Head, uint32(c.Writable.Len()))
			_ = q.Signal()
		}
		if chains > size {
			t.Fatalf("%d chains from a ring of %d", chains, size)
		}
		if c, err := q.Next(); c != nil && err == nil {
			t.Fatal("queue not drained after consuming every entry")
		}
		_, _ = q.EnableNotifications()
		q.DisableNotifications()
	})
}
