package bond_test

import (
	"testing"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/bond"
	"github.com/viovmm/vio/netdev/nettest"
)

// FuzzBalance: any frame, cut anywhere in its gather list, is hashed and
// sent by exactly one member.
func FuzzBalance(f *testing.F) {
	f.Add(udp(1, 2, 3), 20)
	f.Add([]byte{1, 2}, 0)
	f.Fuzz(func(t *testing.T, fr []byte, cut int) {
		if len(fr) > netdev.MaxFrameLen {
			return
		}
		a, pa := nettest.Pair(4)
		c, pc := nettest.Pair(4)
		b, err := bond.New([]netdev.Backend{a, c}, bond.Options{Mode: bond.Balance})
		if err != nil {
			t.Fatal(err)
		}
		defer b.Close()
		pkt := append(append([]byte(nil), hdr...), fr...)
		if cut < 0 || cut > len(pkt) {
			cut = len(pkt) / 2
		}
		n, err := b.WriteFrames([][][]byte{{pkt[:cut], pkt[cut:]}})
		if err == nil && (n != 1 || pa.Queued()+pc.Queued() != 1) {
			t.Fatalf("sent %d, queued %d+%d", n, pa.Queued(), pc.Queued())
		}
	})
}
