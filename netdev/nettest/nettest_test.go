package nettest_test

import (
	"errors"
	"os"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
)

func TestPair(t *testing.T) {
	a, b := nettest.Pair(2)
	h := netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 6}
	for _, s := range []string{"first frame....", "second frame...", "third: dropped."} {
		if err := a.Send(h, []byte(s)); err != nil {
			t.Fatal(err)
		}
	}
	if b.Queued() != 2 || b.Dropped() != 1 {
		t.Fatalf("queued %d dropped %d", b.Queued(), b.Dropped())
	}
	bufs := [][]byte{make([]byte, netdev.MaxPacketLen), make([]byte, netdev.MaxPacketLen), make([]byte, netdev.MaxPacketLen)}
	sizes := make([]int, 3)
	n, err := b.ReadFrames(bufs, sizes)
	if err != nil || n != 2 {
		t.Fatalf("%d %v", n, err)
	}
	if got := netdev.DecodeHeader(bufs[1]); got != h || string(bufs[1][netdev.HeaderSize:sizes[1]]) != "second frame..." {
		t.Fatalf("%+v %q", got, bufs[1][:sizes[1]])
	}
	// Deadlines: one in the past fails at once; a blocked reader wakes
	// when the deadline is moved into the past.
	b.SetReadDeadline(time.Now().Add(-time.Second))
	if _, err := b.ReadFrames(bufs, sizes); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("past deadline: %v", err)
	}
	b.SetReadDeadline(time.Time{})
	done := make(chan error, 1)
	go func() { _, err := b.ReadFrames(bufs, sizes); done <- err }()
	b.SetReadDeadline(time.Unix(1, 0))
	if err := <-done; !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("moved deadline: %v", err)
	}
	// A blocked reader gets a frame sent later.
	b.SetReadDeadline(time.Time{})
	go func() { _, err := b.ReadFrames(bufs, sizes); done <- err }()
	a.Send(netdev.Header{}, []byte("late frame...."))
	if err := <-done; err != nil || string(bufs[0][netdev.HeaderSize:sizes[0]]) != "late frame...." {
		t.Fatalf("late: %v", err)
	}
	// Close unblocks and fails later calls.
	go func() { _, err := b.ReadFrames(bufs, sizes); done <- err }()
	b.Close()
	if err := <-done; !errors.Is(err, netdev.ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
	if _, err := b.WriteFrames([][][]byte{{make([]byte, 30)}}); !errors.Is(err, netdev.ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if _, err := a.WriteFrames([][][]byte{{make([]byte, 5)}}); !errors.Is(err, netdev.ErrHeader) {
		t.Fatalf("short packet: %v", err)
	}
	if err := a.SetRecvOffloads(netdev.OffloadCsum); err != nil {
		t.Fatal(err)
	}
	if o, ok := a.RecvOffloads(); !ok || o != netdev.OffloadCsum {
		t.Fatalf("recv offloads %#x %v", o, ok)
	}
}
