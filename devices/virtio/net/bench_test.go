package net_test

import (
	"testing"

	vnet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/netdev"
)

// BenchmarkTx sends 1514-byte frames through the transport into a nettest
// endpoint, 64 per kick, and reports interrupts per frame.
func BenchmarkTx(b *testing.B) {
	m := newMachine(b, vnet.Config{})
	m.start(b, 0, true)
	pkt := append(make([]byte, netdev.HeaderSize), frame(1, 1514)...)
	bufs := make([][]byte, 64)
	for i := range bufs {
		bufs[i] = make([]byte, netdev.MaxPacketLen)
	}
	sizes := make([]int, 64)
	b.SetBytes(1514)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(64, b.N-done)
		for range n {
			if _, err := m.tx.Add([][]byte{pkt}, nil); err != nil {
				b.Fatal(err)
			}
		}
		if m.tx.NeedsKick() {
			m.guest.Kick(vnet.TxQueue)
		}
		for got := 0; got < n; {
			k, err := m.peer.ReadFrames(bufs, sizes)
			if err != nil {
				b.Fatal(err)
			}
			got += k
		}
		m.used(b, m.tx, n)
		done += n
	}
	b.StopTimer()
	b.ReportMetric(float64(m.dev.Stats().Interrupts)/float64(b.N), "irqs/op")
}

// BenchmarkRx delivers 1514-byte frames from a nettest endpoint into
// mergeable 4 KiB guest buffers.
func BenchmarkRx(b *testing.B) {
	m := newMachine(b, vnet.Config{})
	m.start(b, vnet.FeatureMrgRxbuf, true)
	f := frame(1, 1514)
	hdr := make([]byte, netdev.HeaderSize)
	frames := make([][][]byte, 64)
	for i := range frames {
		frames[i] = [][]byte{hdr, f}
	}
	b.SetBytes(1514)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(64, b.N-done)
		m.post(b, n, 4096)
		if _, err := m.peer.WriteFrames(frames[:n]); err != nil {
			b.Fatal(err)
		}
		m.used(b, m.rx, n)
		done += n
	}
	b.StopTimer()
	b.ReportMetric(float64(m.dev.Stats().Interrupts)/float64(b.N), "irqs/op")
}
