package filter_test

import (
	"errors"
	"testing"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/filter"
	"github.com/viovmm/vio/netdev/nettest"
)

func pkt(tag byte) [][]byte {
	f := make([]byte, netdev.HeaderSize+60)
	f[netdev.HeaderSize+14] = tag
	return [][]byte{f[:5], f[5:]}
}

func TestWriteKept(t *testing.T) {
	a, peer := nettest.Pair(16)
	frames := [][][]byte{pkt(0), pkt(1), pkt(2), pkt(3)}
	n, _, err := filter.WriteKept(a, frames, func(i int) bool { return i%2 == 1 }, nil)
	if n != 4 || err != nil || peer.Queued() != 2 {
		t.Fatalf("n %d err %v queued %d", n, err, peer.Queued())
	}
	for _, want := range []byte{1, 3} {
		if _, f, _ := peer.Recv(0); f[14] != want {
			t.Fatalf("got %d, want %d", f[14], want)
		}
	}
	// An error on a kept frame reports that frame's index among all.
	a.FailNextWrite(errors.New("boom"))
	n, _, err = filter.WriteKept(a, frames, func(i int) bool { return i >= 2 }, nil)
	if n != 2 || err == nil {
		t.Fatalf("n %d err %v, want 2 and an error", n, err)
	}
}

func TestCompact(t *testing.T) {
	bufs := [][]byte{{1, 0}, {2, 0}, {3, 0}, {4, 0}}
	sizes := []int{1, 2, 1, 2}
	m := filter.Compact(bufs, sizes, 4, func(i int) bool { return i == 1 || i == 3 })
	if m != 2 || bufs[0][0] != 2 || sizes[0] != 2 || bufs[1][0] != 4 || sizes[1] != 2 {
		t.Fatalf("m %d bufs %v sizes %v", m, bufs, sizes)
	}
}

func TestBaseCapabilities(t *testing.T) {
	a, _ := nettest.Pair(1)
	b := &filter.Base{Inner: a}
	if b.Offloads() != nettest.AllOffloads || b.SetRecvOffloads(netdev.OffloadCsum) != nil {
		t.Fatal("offloads not forwarded")
	}
	if b.SetQueueEnabled(false) != nil || a.QueueEnabled() {
		t.Fatal("queue switch not forwarded")
	}
	// Over a back-end without offloads: none, and only none accepted.
	plain := &filter.Base{Inner: struct{ netdev.Backend }{a}}
	if plain.Offloads() != 0 || plain.SetRecvOffloads(0) != nil || plain.SetRecvOffloads(netdev.OffloadCsum) == nil {
		t.Fatal("a back-end without offloads")
	}
}
