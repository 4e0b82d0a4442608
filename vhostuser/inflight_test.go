package vhostuser

import (
	"bytes"
	"encoding/binary"
	"errors"
	"runtime"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio/queuetest"
)

// gatedDisk holds the writes at the offsets in hold until release is
// closed, and reports each on arrived; other writes go through. A
// released write fails without writing: it stands for the write of a
// back-end that crashed, which never lands.
type gatedDisk struct {
	block.Backend
	hold    map[int64]bool
	arrived chan int64
	release chan struct{}
	once    sync.Once
}

func (g *gatedDisk) WriteAt(p []byte, off int64) (int, error) {
	if !g.hold[off] {
		return g.Backend.WriteAt(p, off)
	}
	g.arrived <- off
	<-g.release
	return 0, errors.New("gatedDisk: the back-end crashed")
}

func (g *gatedDisk) open() { g.once.Do(func() { close(g.release) }) }

// regionView reads a queue's inflight record the way a front-end that
// keeps the region sees it.
type regionView struct{ b []byte }

func (r regionView) version() uint16 { return binary.LittleEndian.Uint16(r.b[ihVersion:]) }
func (r regionView) usedIdx() uint16 { return binary.LittleEndian.Uint16(r.b[ihUsedIdx:]) }
func (r regionView) inflight(h uint16) bool {
	return r.b[inflightHeaderSize+inflightEntrySize*int(h)+ieInflight] != 0
}
func (r regionView) counter(h uint16) uint64 {
	return binary.LittleEndian.Uint64(r.b[inflightHeaderSize+inflightEntrySize*int(h)+ieCounter:])
}

// TestBackendInflightResubmit is a back-end restart without loss: a
// front-end gets an inflight region from back-end A, which completes a
// read, takes three writes and completes only the middle one (out of
// order: the avail ring alone cannot tell what is left); the connection
// is cut (A "crashes"). Back-end B gets the region with SET_INFLIGHT_FD
// and a stale base, completes the first and third writes (their data
// lands), each exactly once, and not the second again, and serves new
// requests. A's writes,
// released afterwards, complete nothing more. Goroutines and descriptors
// of both back-ends are gone at the end.
func TestBackendInflightResubmit(t *testing.T) {
	store := blocktest.NewMem(1 << 20)
	gate := &gatedDisk{Backend: store, hold: map[int64]bool{10 * sector: true, 12 * sector: true},
		arrived: make(chan int64, 16), release: make(chan struct{})}
	var refA, refB refusals
	a := blkBackend(gate, blk.Config{Workers: 4}, &refA)
	b := blkBackend(store, blk.Config{}, &refB)
	mem := guestRAM(t)
	baseGoroutines, baseFDs := runtime.NumGoroutine(), countFDs(t)
	const proto = ProtocolMQ | ProtocolReplyAck | ProtocolConfig | ProtocolInflightShmfd

	fa, doneA := serveOnPair(t, a)
	t.Cleanup(gate.open) // before A's cleanup waits for it
	if _, p, err := fa.Negotiate(virtioFVersion1, proto); err != nil || p != proto {
		t.Fatalf("negotiated protocol %#x (%v), want %#x", p, err, proto)
	}
	desc, regionFD, err := fa.GetInflightFD(1, 64)
	if err != nil {
		t.Fatal(err)
	}
	if regionFD < 0 || desc.MmapSize < inflightQueueSize(64) || desc.NumQueues != 1 || desc.QueueSize != 64 {
		t.Fatalf("GET_INFLIGHT_FD answered %+v, fd %d", desc, regionFD)
	}
	// The front-end's own view of the region, as QEMU maps it.
	view, err := memory.NewFromFile(regionFD, []memory.FileRegion{{Size: desc.MmapSize}}, memory.Shared)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := view.Slice(0, desc.MmapSize)
	if err != nil {
		t.Fatal(err)
	}
	region := regionView{rb}
	if err := fa.SetInflightFD(desc, regionFD); err != nil {
		t.Fatal(err)
	}
	if err := fa.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	q := setupQueue(t, fa, mem, 0, 0x1000, false)
	if u := q.do(t, [][]byte{blkHeader(blkTIn, 0)}, []uint32{sector, 1}); u.Data[sector] != blk.StatusOK {
		t.Fatalf("read on A: status %d", u.Data[sector])
	}
	if region.version() != inflightVersion || region.usedIdx() != 1 {
		t.Fatalf("region after one request: version %d used_idx %d", region.version(), region.usedIdx())
	}

	// Three writes A takes; it completes only the second.
	patterns := map[uint16][]byte{}
	var heads []uint16
	for i := range 3 {
		p := bytes.Repeat([]byte{byte(0xa0 + i)}, sector)
		h, err := q.drv.Add([][]byte{blkHeader(blkTOut, uint64(10+i)), p}, []uint32{1})
		if err != nil {
			t.Fatal(err)
		}
		patterns[h] = p
		heads = append(heads, h)
	}
	kick(t, q.kickFD)
	for range 2 {
		select {
		case <-gate.arrived:
		case <-time.After(10 * time.Second):
			t.Fatal("A did not take the writes within 10 s")
		}
	}
	waitEvent(t, q.callFD)
	if u, ok, err := q.drv.GetUsed(); err != nil || !ok || u.ID != heads[1] || u.Data[0] != blk.StatusOK {
		t.Fatalf("A's completion: %+v %v %v, want head %d OK", u, ok, err, heads[1])
	}
	if region.inflight(heads[1]) || !region.inflight(heads[0]) || !region.inflight(heads[2]) {
		t.Fatal("the region does not record the first and third writes, and only them, in flight")
	}
	if region.counter(heads[0]) >= region.counter(heads[2]) {
		t.Fatalf("counters %d then %d: not in the order taken", region.counter(heads[0]), region.counter(heads[2]))
	}
	if region.usedIdx() != 2 {
		t.Fatalf("region used_idx %d, want 2", region.usedIdx())
	}
	fa.Close() // A crashes: its disk never finishes, nothing more is pushed
	closeQueueFDs(q)

	// B takes over with the region; base is stale (QEMU sends what it
	// last knew), the region decides.
	fb, doneB := serveOnPair(t, b)
	if _, p, err := fb.Negotiate(virtioFVersion1, proto); err != nil || p != proto {
		t.Fatalf("negotiated protocol %#x (%v) with B", p, err)
	}
	if err := fb.SetInflightFD(desc, regionFD); err != nil {
		t.Fatal(err)
	}
	if err := fb.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	q2 := &qsdBlk{f: fb, drv: q.drv, kickFD: rawEventfd(t), callFD: rawEventfd(t)}
	t.Cleanup(func() { closeQueueFDs(q2) })
	for _, step := range []func() error{
		func() error { return fb.SetVringNum(0, 64) },
		func() error { return fb.SetVringBase(0, 0) },
		func() error { return fb.SetVringAddrGPA(0, q.drv.Config()) },
		func() error { return fb.SetVringKick(0, q2.kickFD) },
		func() error { return fb.SetVringCall(0, q2.callFD) },
		func() error { return fb.SetVringEnable(0, true) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	done := map[uint16]int{heads[1]: 1}
	for len(done) < 3 {
		waitEvent(t, q2.callFD)
		for {
			u, ok, err := q.drv.GetUsed()
			if err != nil {
				t.Fatal(err)
			}
			if !ok {
				break
			}
			if u.ID != heads[0] && u.ID != heads[2] {
				t.Fatalf("B completed head %d, not one of A's unfinished writes %d and %d", u.ID, heads[0], heads[2])
			}
			if u.Data[0] != blk.StatusOK {
				t.Fatalf("resubmitted write %d: status %d", u.ID, u.Data[0])
			}
			done[u.ID]++
		}
	}
	for i, h := range heads {
		if done[h] != 1 {
			t.Fatalf("head %d completed %d times", h, done[h])
		}
		if got := store.Bytes()[(10+i)*sector : (11+i)*sector]; !bytes.Equal(got, patterns[h]) {
			t.Fatalf("sector %d does not hold resubmitted write %d", 10+i, i)
		}
	}
	if got := q.drv.UsedIdx(); got != 4 {
		t.Fatalf("used.idx %d after 4 completions", got)
	}
	// The ring carries on after the resubmitted requests.
	if u := q2.do(t, [][]byte{blkHeader(blkTIn, 11)}, []uint32{sector, 1}); u.Data[sector] != blk.StatusOK ||
		!bytes.Equal(u.Data[:sector], patterns[heads[1]]) {
		t.Fatalf("read on B after the restart: status %d", u.Data[sector])
	}
	for h := range uint16(64) {
		if region.inflight(h) {
			t.Fatalf("head %d still recorded in flight", h)
		}
	}
	if base, err := fb.GetVringBase(0); err != nil || base != 5 {
		t.Fatalf("GET_VRING_BASE %d (%v), want 5", base, err)
	}
	if region.usedIdx() != 5 {
		t.Fatalf("region used_idx %d, want 5", region.usedIdx())
	}

	// A's writes finish now, failing: A pushes nothing (its front-end is
	// gone) and writes nothing.
	fb.Close()
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
	gate.open()
	if err := <-doneA; err != nil {
		t.Fatal(err)
	}
	if got := q.drv.UsedIdx(); got != 5 {
		t.Fatalf("used.idx %d after A finished, want 5", got)
	}
	if refB.errs != nil {
		t.Fatalf("B refused: %v %v", refB.reqs, refB.errs)
	}
	view.Close()
	unix.Close(regionFD)
	closeQueueFDs(q2)
	if n := settle(baseGoroutines); n > baseGoroutines {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after both back-ends ended, %d before:\n%s", n, baseGoroutines, buf[:runtime.Stack(buf, true)])
	}
	if n := countFDs(t); n != baseFDs {
		t.Fatalf("%d descriptors open after both back-ends ended, %d before", n, baseFDs)
	}
}

// TestBackendRefusesBadInflight: the inflight messages without the
// protocol feature, descriptions of regions that cannot hold the queues
// or lie past the file, and regions whose contents contradict themselves
// or the ring are refused with a defined error; the connection serves on.
func TestBackendRefusesBadInflight(t *testing.T) {
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(blocktest.NewMem(1<<20), blk.Config{}, &ref))
	mem := guestRAM(t)

	// Not negotiated yet: GET answers "no region", SET is refused.
	if p, fds, err := f.callFDs(GetInflightFD, Inflight{NumQueues: 1, QueueSize: 64}.Marshal(), nil, true); err != nil || len(fds) != 0 {
		t.Fatalf("GET_INFLIGHT_FD before negotiation: %v, %d descriptors", err, len(fds))
	} else if d, _ := ParseInflight(p); d.MmapSize != 0 {
		t.Fatalf("GET_INFLIGHT_FD before negotiation answered %+v", d)
	}
	if !ref.has(GetInflightFD, ErrNotNegotiated) {
		t.Fatalf("refusals: %v", ref.errs)
	}
	const proto = ProtocolMQ | ProtocolReplyAck | ProtocolConfig | ProtocolInflightShmfd
	if _, p, err := f.Negotiate(virtioFVersion1, proto); err != nil || p != proto {
		t.Fatalf("protocol %#x (%v)", p, err)
	}
	if err := f.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	for _, d := range []Inflight{{NumQueues: 0, QueueSize: 64}, {NumQueues: 2, QueueSize: 64}, {NumQueues: 1, QueueSize: 48}, {NumQueues: 1, QueueSize: 0}} {
		got, fd, err := f.GetInflightFD(d.NumQueues, d.QueueSize)
		if err != nil || fd != -1 || got.MmapSize != 0 {
			t.Fatalf("GET_INFLIGHT_FD for %+v: %+v fd %d (%v), want no region", d, got, fd, err)
		}
	}
	desc, fd, err := f.GetInflightFD(1, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	short := desc
	short.MmapSize = inflightQueueSize(64) - 1
	pastEnd := desc
	pastEnd.MmapOffset = desc.MmapSize
	unaligned := desc
	unaligned.MmapOffset = 8
	tooSmallQueues := desc
	tooSmallQueues.QueueSize = 512
	for name, d := range map[string]Inflight{"short": short, "past the file": pastEnd, "unaligned": unaligned, "too small for its queues": tooSmallQueues} {
		if err := f.SetInflightFD(d, fd); !errors.Is(err, ErrFailed) {
			t.Fatalf("SET_INFLIGHT_FD %s (%+v): %v", name, d, err)
		}
	}
	if !ref.has(SetInflightFD, ErrBadInflight) {
		t.Fatalf("refusals: %v", ref.errs)
	}

	// Contents: each corruption refuses the ring's start, and a repaired
	// region serves.
	view, err := memory.NewFromFile(fd, []memory.FileRegion{{Size: desc.MmapSize}}, memory.Shared)
	if err != nil {
		t.Fatal(err)
	}
	defer view.Close()
	rb, err := view.Slice(0, desc.MmapSize)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	good := func() {
		clear(rb)
		le.PutUint16(rb[ihVersion:], inflightVersion)
		le.PutUint16(rb[ihDescNum:], 64)
	}
	if _, err := queueForInflight(t, f, mem); err != nil {
		t.Fatal(err)
	}
	for name, corrupt := range map[string]func(){
		"version 2":           func() { le.PutUint16(rb[ihVersion:], 2) },
		"unknown features":    func() { rb[0] = 1 },
		"desc_num":            func() { le.PutUint16(rb[ihDescNum:], 32) },
		"inflight flag 2":     func() { rb[inflightHeaderSize+ieInflight] = 2 },
		"used_idx far behind": func() { le.PutUint16(rb[ihUsedIdx:], 0x8000) },
		"last batch head":     func() { le.PutUint16(rb[ihUsedIdx:], 0xffff); le.PutUint16(rb[ihLastBatchHead:], 64) },
	} {
		good()
		corrupt()
		if err := f.SetInflightFD(desc, fd); err != nil {
			t.Fatalf("%s: SET_INFLIGHT_FD: %v", name, err)
		}
		if err := f.SetVringEnable(0, true); !errors.Is(err, ErrFailed) {
			t.Fatalf("%s: the ring started on a corrupt region: %v", name, err)
		}
		if err := f.SetVringEnable(0, false); err != nil {
			t.Fatal(err)
		}
	}
	if !ref.has(SetVringEnable, ErrBadInflight) {
		t.Fatalf("refusals: %v", ref.errs)
	}
	good()
	if err := f.SetInflightFD(desc, fd); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringEnable(0, true); err != nil {
		t.Fatalf("the ring did not start on a good region: %v", err)
	}
	// The region cannot change under a running ring.
	if err := f.SetInflightFD(desc, fd); !errors.Is(err, ErrFailed) || !ref.has(SetInflightFD, ErrRingRunning) {
		t.Fatalf("SET_INFLIGHT_FD while the ring runs: %v", err)
	}
	if _, err := f.GetVringBase(0); err != nil {
		t.Fatal(err)
	}
	// A region for rings of 16 cannot track a ring of 64.
	small, sfd, err := f.GetInflightFD(1, 16)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sfd)
	if err := f.SetInflightFD(small, sfd); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringKick(0, eventfd(t)); !errors.Is(err, ErrFailed) {
		t.Fatalf("a ring of 64 started on a region for 16: %v", err)
	}
}

// queueForInflight describes ring 0 (64 entries, not yet enabled) to f.
func queueForInflight(t *testing.T, f *Frontend, mem *memory.Memory) (*qsdBlk, error) {
	drv, err := queuetest.New(mem, 0x1000, 64, 4096, false)
	if err != nil {
		return nil, err
	}
	q := &qsdBlk{f: f, drv: drv, kickFD: rawEventfd(t), callFD: rawEventfd(t)}
	t.Cleanup(func() { closeQueueFDs(q) })
	for _, step := range []func() error{
		func() error { return f.SetVringNum(0, 64) },
		func() error { return f.SetVringBase(0, 0) },
		func() error { return f.SetVringAddrGPA(0, drv.Config()) },
		func() error { return f.SetVringKick(0, q.kickFD) },
		func() error { return f.SetVringCall(0, q.callFD) },
	} {
		if err := step(); err != nil {
			return nil, err
		}
	}
	return q, nil
}
