package blk_test

import (
	"testing"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
)

// BenchmarkRead4K runs 4 KiB reads through the whole transport, 64 in
// flight on one queue (the guest side is queuetest, so its cost is
// included), and reports interrupts and notifications per request: with
// EVENT_IDX and batched completions both stay well below one.
func BenchmarkRead4K(b *testing.B) {
	be := blocktest.NewMem(64 << 20)
	m := newMachine(b, be, blk.Config{})
	m.start(b, 0, true)
	d := m.queues[0]
	hdrs := make([][]byte, 64)
	for i := range hdrs {
		hdrs[i] = header(blk.TypeIn, uint64(i*8))
	}
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(64, b.N-done)
		for i := range n {
			if _, err := d.AddIndirect([][]byte{hdrs[i]}, []uint32{4096, 1}); err != nil {
				b.Fatal(err)
			}
		}
		if d.NeedsKick() {
			m.guest.Kick(0)
		}
		m.collect(b, 0, n)
		done += n
	}
	b.StopTimer()
	s := m.dev.Stats()
	b.ReportMetric(float64(s.Interrupts)/float64(b.N), "irqs/op")
	b.ReportMetric(float64(s.Notifications)/float64(b.N), "kicks/op")
}
