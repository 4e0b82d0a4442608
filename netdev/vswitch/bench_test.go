package vswitch_test

import (
	"net"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/socket"
	"github.com/viovmm/vio/netdev/vswitch"
)

// BenchmarkSwitchSockets moves 1514-byte frames from one socket port to
// another through the switch (the path two guests' traffic takes, minus
// the guests), reporting frames and bits a second that arrive.
func BenchmarkSwitchSockets(b *testing.B) {
	dir := b.TempDir()
	sw := vswitch.New(vswitch.Config{})
	defer sw.Close()
	l, err := net.Listen("unix", filepath.Join(dir, "sw"))
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	go sw.Serve(l, vswitch.PortConfig{AntiSpoof: true})
	tx, err := socket.Dial(filepath.Join(dir, "sw"), socket.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer tx.Close()
	rx, err := socket.Dial(filepath.Join(dir, "sw"), socket.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer rx.Close()
	hdr := make([]byte, netdev.HeaderSize)
	// rx announces itself so the switch learns where mac(2) is; tx's
	// frames to it are then unicast.
	for sw.Stats().Addresses < 1 || len(sw.Stats().Ports) < 2 {
		rx.WriteFrames([][][]byte{{hdr, eth(bcast, mac(2), "here")}})
		time.Sleep(time.Millisecond) // set-up, not measured
	}
	f := make([]byte, 1514)
	copy(f, eth(mac(2), mac(1), "data"))
	done := make(chan int)
	var last time.Time // written by the receiver before it sends on done
	go func() {
		bufs := make([][]byte, 32)
		for i := range bufs {
			bufs[i] = make([]byte, netdev.MaxPacketLen)
		}
		sizes := make([]int, 32)
		got := 0
		for got < b.N {
			// Frames the switch dropped never come: stop after a
			// silence (this machine is shared; give it seconds).
			rx.SetReadDeadline(time.Now().Add(3 * time.Second))
			n, err := rx.ReadFrames(bufs, sizes)
			if err != nil {
				break
			}
			for i := range n {
				if sizes[i] == netdev.HeaderSize+1514 {
					got++
				}
			}
			last = time.Now()
		}
		done <- got
	}()
	batch := make([][][]byte, 32)
	for i := range batch {
		batch[i] = [][]byte{hdr, f}
	}
	b.ResetTimer()
	start := time.Now()
	sent := 0
	for sent < b.N {
		k := min(32, b.N-sent)
		tx.WriteFrames(batch[:k])
		sent += k
		// Pace the sender to what the socket takes: a frame dropped in
		// the sender's own queue measures the sender, not the switch.
		for tx.Queued() > 128 {
			runtime.Gosched()
		}
	}
	got := <-done
	el := last.Sub(start)
	b.ReportMetric(float64(got)/el.Seconds(), "frames/s")
	b.ReportMetric(float64(got)*1514*8/el.Seconds()/1e6, "Mbit/s")
	b.ReportMetric(100*float64(got)/float64(b.N), "%delivered")
	b.Logf("tx %+v; switch %+v", tx.Stats(), sw.Stats())
}
