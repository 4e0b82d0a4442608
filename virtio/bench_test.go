package virtio_test

import (
	"testing"

	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// BenchmarkDeviceSide measures the device's per-request cost: Next (ring
// read, chain walk, bounds checks) and Push (used ring update), for a
// two-descriptor chain, with the driver side reduced to republishing the
// same head. "tracking" runs it with guest memory's dirty tracking on (a
// migration in progress): then Push also marks the used element and the
// written bytes dirty.
func BenchmarkDeviceSide(b *testing.B) {
	for _, tracking := range []bool{false, true} {
		for _, indirect := range []bool{false, true} {
			name := "direct"
			if indirect {
				name = "indirect"
			}
			if tracking {
				name += "/tracking"
			}
			b.Run(name, func(b *testing.B) {
				d, q := setup(b, 256, virtio.FeatureEventIdx|virtio.FeatureIndirectDesc)
				buf, _ := d.Alloc(4096)
				d.Reserve(0)
				d.Reserve(1)
				if indirect {
					tbl, _ := d.Alloc(32)
					d.WriteIndirectTable(tbl, []queuetest.Desc{{Addr: buf, Len: 16, Flags: queuetest.FlagNext, Next: 1}, {Addr: buf + 16, Len: 512, Flags: queuetest.FlagWrite}})
					d.WriteDesc(0, queuetest.Desc{Addr: tbl, Len: 32, Flags: queuetest.FlagIndirect})
				} else {
					d.WriteDesc(0, queuetest.Desc{Addr: buf, Len: 16, Flags: queuetest.FlagNext, Next: 1})
					d.WriteDesc(1, queuetest.Desc{Addr: buf + 16, Len: 512, Flags: queuetest.FlagWrite})
				}
				if tracking {
					d.Memory().EnableDirtyTracking()
				}
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					d.Publish(0)
					c, err := q.Next()
					if err != nil || c == nil {
						b.Fatal(c, err)
					}
					if err := q.Push(c.Head, 512); err != nil {
						b.Fatal(err)
					}
					q.NeedsInterrupt()
				}
			})
		}
	}
}
