package vhostuser

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
)

// TestQEMUReconnectInflight restarts vio's back-end under QEMU's
// vhost-user-blk-pci with requests in flight. QEMU's chardev reconnects
// (reconnect=1) and QEMU keeps the inflight region vio's back-end gave it.
// Back-end A completes a read, takes three writes and completes only the
// second; then it is stopped (its listener and connection closed, its
// disk never finishing the other two). Back-end B listens on the same
// socket; QEMU connects, hands it the region (SET_INFLIGHT_FD) and
// restarts the rings; B completes the first and third writes, each once,
// their data lands, and the ring carries on.
func TestQEMUReconnectInflight(t *testing.T) {
	if _, err := os.Stat(qemuPath); err != nil {
		t.Fatalf("QEMU is not installed (%v): run scripts/setup-host (package qemu-system-x86)", err)
	}
	store := blocktest.NewMem(4 << 20)
	gate := &gatedDisk{Backend: store, hold: map[int64]bool{10 * sector: true, 12 * sector: true},
		arrived: make(chan int64, 16), release: make(chan struct{})}
	var refA, refB refusals
	cfg := blk.Config{Serial: "vio-inflight", NumQueues: 2, Workers: 4}
	a := blkBackend(gate, cfg, &refA)
	b := blkBackend(store, cfg, &refB)
	var blog bytes.Buffer
	lw := &syncWriter{w: &blog}
	a.Log = slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug})).With("backend", "A")
	b.Log = slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug})).With("backend", "B")
	defer func() {
		if t.Failed() || testing.Verbose() {
			t.Logf("back-end log:\n%s", blog.String())
		}
	}()

	dir := t.TempDir()
	sock := filepath.Join(dir, "vu.sock")
	listen := func() *net.UnixListener {
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	lA := listen()
	ctxA, cancelA := context.WithCancel(context.Background())
	servedA := make(chan error, 1)
	go func() { servedA <- a.Serve(ctxA, lA) }()
	// Runs after QEMU is gone (cleanups run last to first): A's session
	// ends once its disk lets the held writes fail.
	t.Cleanup(func() {
		cancelA()
		gate.open()
		if err := <-servedA; err != nil {
			t.Error(err)
		}
	})

	errs := func() []error { return append(refA.errs, refB.errs...) }
	g := startQEMUGuest(t, dir, "socket,id=vu,path="+sock+",reconnect=1", 2, errs)
	if u := g.do(0, [][]byte{blkHeader(blkTIn, 0)}, []uint32{sector, 1}); u.Data[sector] != blk.StatusOK {
		t.Fatalf("read through QEMU on A: status %d", u.Data[sector])
	}
	var heads []uint16
	var patterns [][]byte
	for i := range 3 {
		p := bytes.Repeat([]byte{byte(0xb0 + i)}, sector)
		heads = append(heads, g.submit(0, [][]byte{blkHeader(blkTOut, uint64(10+i)), p}, []uint32{1}))
		patterns = append(patterns, p)
	}
	for range 2 {
		select {
		case <-gate.arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("A did not take the writes within 10 s")
		}
	}
	if u := g.used(0); u.ID != heads[1] || u.Data[0] != blk.StatusOK {
		t.Fatalf("A completed head %d status %d, want head %d OK", u.ID, u.Data[0], heads[1])
	}

	// A stops: its listener is closed (and the socket file removed)
	// here; its connection closes as Serve winds down, which QEMU sees.
	cancelA()
	lA.Close()
	lB := listen()
	ctxB, cancelB := context.WithCancel(context.Background())
	servedB := make(chan error, 1)
	go func() { servedB <- b.Serve(ctxB, lB) }()
	t.Cleanup(func() {
		cancelB()
		if err := <-servedB; err != nil {
			t.Error(err)
		}
	})

	done := map[uint16]int{}
	for len(done) < 2 {
		u := g.used(0)
		if u.ID != heads[0] && u.ID != heads[2] {
			t.Fatalf("after the restart head %d completed, want %d and %d", u.ID, heads[0], heads[2])
		}
		if u.Data[0] != blk.StatusOK {
			t.Fatalf("resubmitted write %d: status %d", u.ID, u.Data[0])
		}
		done[u.ID]++
	}
	for i := range 3 {
		if got := store.Bytes()[(10+i)*sector : (11+i)*sector]; !bytes.Equal(got, patterns[i]) {
			t.Fatalf("sector %d does not hold write %d", 10+i, i)
		}
	}
	if u := g.do(0, [][]byte{blkHeader(blkTIn, 12)}, []uint32{sector, 1}); u.Data[sector] != blk.StatusOK ||
		!bytes.Equal(u.Data[:sector], patterns[2]) {
		t.Fatalf("read through QEMU on B: status %d", u.Data[sector])
	}
	if got := g.drvs[0].UsedIdx(); got != 5 {
		t.Fatalf("used.idx %d after five requests", got)
	}
	if len(refB.errs) != 0 {
		t.Fatalf("B refused QEMU's requests: %v %v", refB.reqs, refB.errs)
	}
}
