//go:build linux

package vhostnet_test

import (
	"encoding/json"
	"testing"

	"github.com/viovmm/vio/devices/virtio/vhostnet"
)

// FuzzRestoreState feeds a restored device's state section (a snapshot
// file's, a migration source's: hostile) to a Deferred device whose
// guest runs two queue pairs and the control queue. Whatever it holds,
// RestoreState must not panic, and a state it accepts must leave the
// kernel's rings where the guest's used indexes are once the device takes
// its TAP.
func FuzzRestoreState(f *testing.F) {
	good, _ := json.Marshal(vhostnet.State{Features: 1 << 32, Queues: make([]vhostnet.QueueState, 4)})
	f.Add(good)
	f.Add([]byte(`{"Features":4294967296,"Net":{"MAC":"52:54:00:00:00:01","LinkUp":true,"Pairs":2},"Queues":[{"Running":true},{"Running":true},{"Running":true},{"Running":true}],"Ctrl":{"Size":256}}`))
	f.Add([]byte(`{"Queues":[{"Running":true,"Base":65535}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := newMem(t)
		r := newRig(t, mem, kernelOffer, true)
		r.start(t)
		if err := r.dev.UnmarshalState(vhostnet.StateVersion, data); err != nil {
			return
		}
		if err := r.dev.Take(); err != nil {
			return
		}
		for p, k := range r.kernels {
			for ring := range 2 {
				q := 2*p + ring
				used, _ := mem.LoadUint16(r.qs[q].Config().UsedRing + 2)
				if got := k.Ring(ring); got.Backend >= 0 && got.Base != used {
					t.Fatalf("queue %d started at %d, its used index is %d", q, got.Base, used)
				}
			}
		}
	})
}
