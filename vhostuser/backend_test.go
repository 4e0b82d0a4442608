package vhostuser

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
)

// refusals collects what a Backend's OnError reports.
type refusals struct {
	mu   sync.Mutex
	errs []error
	reqs []Request
}

func (r *refusals) note(req Request, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, err)
	r.reqs = append(r.reqs, req)
}

// has reports whether a refusal of req matching target was noted.
func (r *refusals) has(req Request, target error) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, e := range r.errs {
		if r.reqs[i] == req && errors.Is(e, target) {
			return true
		}
	}
	return false
}

// blkBackend is a Backend serving virtio-blk over disk.
func blkBackend(disk block.Backend, cfg blk.Config, ref *refusals) *Backend {
	return &Backend{
		NewDevice: func() (virtio.QueueServer, error) { return blk.New(disk, cfg) },
		OnError:   ref.note,
		Timeout:   5 * time.Second,
	}
}

// serveOnPair runs b on one end of a socketpair and returns a Frontend on
// the other, and a channel with ServeConn's result.
func serveOnPair(t *testing.T, b *Backend) (*Frontend, <-chan error) {
	t.Helper()
	a, c := socketPair(t)
	done := make(chan error, 1)
	go func() {
		done <- b.ServeConn(c)
		close(done) // the test may take the result; Cleanup then finds it closed
	}()
	t.Cleanup(func() { a.Close(); <-done })
	return NewFrontend(a, 5*time.Second), done
}

// guestRAM is 2 MiB of shareable guest memory at GPA 0.
func guestRAM(t testing.TB) *memory.Memory {
	t.Helper()
	mem, err := memory.NewWithOptions([]memory.Layout{{GPA: 0, Size: 2 << 20}}, memory.Options{Backing: memory.Memfd})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

// rawImage writes an image of size bytes (a pattern that differs per
// sector) and opens it as a raw back-end.
func rawImage(t testing.TB, size int) (string, []byte, *raw.File) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "disk.raw")
	content := make([]byte, size)
	for i := range content {
		content[i] = byte(i*7 + i/sector)
	}
	if err := os.WriteFile(img, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := raw.Open(img, raw.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return img, content, f
}

// setupQueue programs queue i of a negotiated front-end over a driver at
// base in mem, with fresh kick and call eventfds, and enables it.
func setupQueue(t testing.TB, f *Frontend, mem *memory.Memory, i uint32, base uint64, eventIdx bool) *qsdBlk {
	t.Helper()
	const qsize = 64
	drv, err := queuetest.New(mem, base, qsize, 128<<10, eventIdx)
	if err != nil {
		t.Fatal(err)
	}
	kickFD, callFD := rawEventfd(t), rawEventfd(t)
	q := &qsdBlk{f: f, drv: drv, kickFD: kickFD, callFD: callFD}
	t.Cleanup(func() { closeQueueFDs(q) })
	for _, step := range []func() error{
		func() error { return f.SetVringNum(i, qsize) },
		func() error { return f.SetVringBase(i, 0) },
		func() error { return f.SetVringAddrGPA(i, drv.Config()) },
		func() error { return f.SetVringKick(i, kickFD) },
		func() error { return f.SetVringCall(i, callFD) },
		func() error { return f.SetVringEnable(i, true) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	return q
}

// rawEventfd is an eventfd the caller closes.
func rawEventfd(t testing.TB) int {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		t.Fatal(err)
	}
	return fd
}

// closeQueueFDs closes the test's copies of q's eventfds, once.
func closeQueueFDs(q *qsdBlk) {
	for _, fd := range []*int{&q.kickFD, &q.callFD} {
		if *fd >= 0 {
			unix.Close(*fd)
			*fd = -1
		}
	}
}

// negotiate runs the opening and shares mem.
func negotiate(t testing.TB, f *Frontend, mem *memory.Memory, want uint64) uint64 {
	t.Helper()
	features, proto, err := f.Negotiate(want, ProtocolMQ|ProtocolReplyAck|ProtocolConfig)
	if err != nil {
		t.Fatal(err)
	}
	if proto != ProtocolMQ|ProtocolReplyAck|ProtocolConfig {
		t.Fatalf("protocol features %#x", proto)
	}
	if err := f.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	return features
}

// TestBackendBlkIO drives vio's back-end with vio's front-end over a
// raw image: config space, read, write (checked in the image file), flush,
// GET_ID, an unsupported request type, and GET_VRING_BASE.
func TestBackendBlkIO(t *testing.T) {
	img, content, disk := rawImage(t, 1<<20)
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(disk, blk.Config{Serial: "vio-vu-test"}, &ref))
	mem := guestRAM(t)
	features := negotiate(t, f, mem, virtioFVersion1|blk.FeatureFlush|blk.FeatureBlkSize|blk.FeatureSegMax)
	if features&blk.FeatureFlush == 0 {
		t.Fatalf("FLUSH not offered (features %#x)", features)
	}
	if n, err := f.GetQueueNum(); err != nil || n != 1 {
		t.Fatalf("GET_QUEUE_NUM %d %v", n, err)
	}
	cfg, err := f.GetConfig(0, 60)
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	if c := le.Uint64(cfg[0:]); c != (1<<20)/sector {
		t.Fatalf("capacity %d sectors", c)
	}
	if bs := le.Uint32(cfg[20:]); bs != 512 {
		t.Fatalf("blk_size %d", bs)
	}
	if nq := le.Uint16(cfg[34:]); nq != 1 {
		t.Fatalf("num_queues %d", nq)
	}
	q := setupQueue(t, f, mem, 0, 0x1000, false)

	u := q.do(t, [][]byte{blkHeader(blkTIn, 3)}, []uint32{sector, 1})
	if len(u.Data) != sector+1 || u.Data[sector] != blk.StatusOK || !bytes.Equal(u.Data[:sector], content[3*sector:4*sector]) {
		t.Fatalf("read of sector 3: len %d status %v", len(u.Data), u.Data[len(u.Data)-1:])
	}
	pattern := bytes.Repeat([]byte("vhost-user back!"), 2*sector/16)
	u = q.do(t, [][]byte{blkHeader(blkTOut, 9), pattern[:sector], pattern[sector:]}, []uint32{1})
	if len(u.Data) != 1 || u.Data[0] != blk.StatusOK {
		t.Fatalf("write: %v", u.Data)
	}
	u = q.do(t, [][]byte{blkHeader(blk.TypeFlush, 0)}, []uint32{1})
	if len(u.Data) != 1 || u.Data[0] != blk.StatusOK {
		t.Fatalf("flush: %v", u.Data)
	}
	onDisk, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[9*sector:11*sector], pattern) {
		t.Fatal("sectors 9-10 of the image do not hold what the guest wrote")
	}
	if !bytes.Equal(onDisk[8*sector:9*sector], content[8*sector:9*sector]) || !bytes.Equal(onDisk[11*sector:12*sector], content[11*sector:12*sector]) {
		t.Fatal("the write spilled into a neighbouring sector")
	}
	u = q.do(t, [][]byte{blkHeader(blk.TypeGetID, 0)}, []uint32{blk.IDBytes, 1})
	if len(u.Data) != blk.IDBytes+1 || u.Data[blk.IDBytes] != blk.StatusOK || !bytes.HasPrefix(u.Data, []byte("vio-vu-test")) {
		t.Fatalf("GET_ID: %q", u.Data)
	}
	u = q.do(t, [][]byte{blkHeader(99, 0)}, []uint32{1})
	if len(u.Data) != 1 || u.Data[0] != blk.StatusUnsupp {
		t.Fatalf("unknown request type: %v", u.Data)
	}
	// A read beyond the capacity gets IOERR, not the bytes of anything.
	u = q.do(t, [][]byte{blkHeader(blkTIn, (1<<20)/sector)}, []uint32{sector, 1})
	if u.Data[len(u.Data)-1] != blk.StatusIOErr {
		t.Fatalf("read past the end: status %d", u.Data[len(u.Data)-1])
	}
	base, err := f.GetVringBase(0)
	if err != nil {
		t.Fatal(err)
	}
	if base != 6 {
		t.Fatalf("vring base %d after six requests", base)
	}
	if len(ref.errs) != 0 {
		t.Fatalf("refusals: %v", ref.errs)
	}
}

// TestBackendFlushIsHonest: a write the guest flushed survives a power
// cut of the back-end's disk, whatever the cut keeps of unflushed writes.
func TestBackendFlushIsHonest(t *testing.T) {
	disk := blocktest.NewCrashDisk(1 << 20)
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(disk, blk.Config{}, &ref))
	mem := guestRAM(t)
	negotiate(t, f, mem, virtioFVersion1|blk.FeatureFlush)
	q := setupQueue(t, f, mem, 0, 0x1000, false)
	data := bytes.Repeat([]byte{0xa5}, sector)
	if u := q.do(t, [][]byte{blkHeader(blkTOut, 1), data}, []uint32{1}); u.Data[0] != blk.StatusOK {
		t.Fatalf("write status %d", u.Data[0])
	}
	if u := q.do(t, [][]byte{blkHeader(blk.TypeFlush, 0)}, []uint32{1}); u.Data[0] != blk.StatusOK {
		t.Fatalf("flush status %d", u.Data[0])
	}
	for seed := range uint64(8) {
		if img := disk.Crash(rand.New(rand.NewPCG(seed, 1))); !bytes.Equal(img[sector:2*sector], data) {
			t.Fatalf("a flushed write is lost in crash %d", seed)
		}
	}
}

// TestBackendMultiQueueEventIdx serves two queues with EVENT_IDX and
// indirect descriptors, a request on each, then discard and write-zeroes
// on the raw image.
func TestBackendMultiQueueEventIdx(t *testing.T) {
	img, _, disk := rawImage(t, 1<<20)
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(disk, blk.Config{NumQueues: 2}, &ref))
	mem := guestRAM(t)
	want := virtioFVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | blk.FeatureMQ | blk.FeatureWriteZeroes | blk.FeatureDiscard
	features := negotiate(t, f, mem, want)
	if features&want != want {
		t.Fatalf("features %#x lack %#x", features, want&^features)
	}
	if n, err := f.GetQueueNum(); err != nil || n != 2 {
		t.Fatalf("GET_QUEUE_NUM %d %v", n, err)
	}
	q0 := setupQueue(t, f, mem, 0, 0x1000, true)
	q1 := setupQueue(t, f, mem, 1, 0x40000, true)
	for i, q := range []*qsdBlk{q0, q1} {
		for k := range 3 {
			d := bytes.Repeat([]byte{byte(0x10*i + k + 1)}, sector)
			if u := q.do(t, [][]byte{blkHeader(blkTOut, uint64(8*i+k)), d}, []uint32{1}); u.Data[0] != blk.StatusOK {
				t.Fatalf("queue %d write status %d", i, u.Data[0])
			}
		}
	}
	// Write-zeroes sectors 0-1 and discard 8-9 through queue 1, with
	// the segment in an indirect table.
	seg := func(sec uint64, n uint32) []byte {
		b := make([]byte, blk.SegmentSize)
		le := binary.LittleEndian
		le.PutUint64(b[0:], sec)
		le.PutUint32(b[8:], n)
		return b
	}
	for _, r := range []struct {
		typ uint32
		sec uint64
	}{{blk.TypeWriteZeroes, 0}, {blk.TypeDiscard, 8}} {
		head, err := q1.drv.AddIndirect([][]byte{blkHeader(r.typ, 0), seg(r.sec, 2)}, []uint32{1})
		if err != nil {
			t.Fatal(err)
		}
		if q1.drv.NeedsKick() {
			kick(t, q1.kickFD)
		}
		waitEvent(t, q1.callFD)
		u, ok, err := q1.drv.GetUsed()
		if err != nil || !ok || u.ID != head || u.Data[0] != blk.StatusOK {
			t.Fatalf("type %d: used %+v ok %v err %v", r.typ, u, ok, err)
		}
	}
	onDisk, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[:2*sector], make([]byte, 2*sector)) {
		t.Fatal("write-zeroes left data in sectors 0-1")
	}
	if onDisk[2*sector] != 3 {
		t.Fatalf("sector 2 holds %#x, want queue 0's third write", onDisk[2*sector])
	}
	// Discarded sectors read as zeroes on a raw file (punched hole).
	if !bytes.Equal(onDisk[8*sector:10*sector], make([]byte, 2*sector)) {
		t.Fatal("discard left data in sectors 8-9")
	}
	if onDisk[10*sector] != 0x13 {
		t.Fatalf("sector 10 holds %#x, want queue 1's third write", onDisk[10*sector])
	}
	for i := range uint32(2) {
		if base, err := f.GetVringBase(i); err != nil || base != uint16(3+2*i) {
			t.Fatalf("queue %d base %d %v", i, base, err)
		}
	}
}

// TestBackendRingRestarts: a ring disabled and enabled again, and a memory
// table replaced while the ring runs (memory hot-plug), carry on from
// where they stopped; a ring stopped by GET_VRING_BASE restarts at the
// base the front-end gives back.
func TestBackendRingRestarts(t *testing.T) {
	_, content, disk := rawImage(t, 1<<20)
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(disk, blk.Config{}, &ref))
	mem := guestRAM(t)
	negotiate(t, f, mem, virtioFVersion1)
	q := setupQueue(t, f, mem, 0, 0x1000, false)
	read := func(sec uint64) {
		t.Helper()
		u := q.do(t, [][]byte{blkHeader(blkTIn, sec)}, []uint32{sector, 1})
		if u.Data[sector] != 0 || !bytes.Equal(u.Data[:sector], content[sec*sector:(sec+1)*sector]) {
			t.Fatalf("read of sector %d wrong after a restart", sec)
		}
	}
	read(1)
	if err := f.SetVringEnable(0, false); err != nil {
		t.Fatal(err)
	}
	if err := f.SetVringEnable(0, true); err != nil {
		t.Fatal(err)
	}
	read(2)
	if err := f.SetMemTable(mem); err != nil {
		t.Fatal(err)
	}
	read(3)
	base, err := f.GetVringBase(0)
	if err != nil || base != 3 {
		t.Fatalf("base %d %v", base, err)
	}
	// Restart as a front-end does after a stop: base, then a new kick.
	if err := f.SetVringBase(0, base); err != nil {
		t.Fatal(err)
	}
	unix.Close(q.kickFD)
	q.kickFD = rawEventfd(t)
	if err := f.SetVringKick(0, q.kickFD); err != nil {
		t.Fatal(err)
	}
	read(4)
	if len(ref.errs) != 0 {
		t.Fatalf("refusals: %v", ref.errs)
	}
}

// countFDs returns the number of open descriptors of this process.
func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// mappingsOf counts this process's mappings whose name contains name.
func mappingsOf(t testing.TB, name string) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), name)
}

// closingDevice counts the Close a Backend owes each connection's device.
type closingDevice struct {
	*blk.Device
	closed *atomic.Int32
}

func (d closingDevice) Close() error {
	d.closed.Add(1)
	return nil
}

// settle waits, boundedly, for goroutines that have finished their work
// to exit, and returns the count.
func settle(want int) int {
	n := runtime.NumGoroutine()
	for i := 0; i < 200 && n > want; i++ {
		runtime.Gosched()
		time.Sleep(5 * time.Millisecond)
		n = runtime.NumGoroutine()
	}
	return n
}

// TestBackendReconnectNoLeaks serves a listener: a front-end does I/O and
// disconnects with the ring running; a second one connects and does I/O;
// Serve ends with its context. Every goroutine, descriptor and mapping
// of the back-end is gone afterwards.
func TestBackendReconnectNoLeaks(t *testing.T) {
	_, content, disk := rawImage(t, 1<<20)
	var ref refusals
	b := blkBackend(disk, blk.Config{NumQueues: 2}, &ref)
	var closed atomic.Int32
	b.NewDevice = func() (virtio.QueueServer, error) {
		d, err := blk.New(disk, blk.Config{NumQueues: 2})
		return closingDevice{d, &closed}, err
	}
	sock := filepath.Join(t.TempDir(), "vu.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	mem := guestRAM(t)
	const ramName = "vio-guest-ram"
	baseGoroutines, baseFDs, baseMaps := runtime.NumGoroutine(), countFDs(t), mappingsOf(t, ramName)

	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	for round := range 2 {
		f, err := Dial(sock, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		negotiate(t, f, mem, virtioFVersion1)
		q := setupQueue(t, f, mem, 0, 0x1000+uint64(round)*0x40000, false)
		u := q.do(t, [][]byte{blkHeader(blkTIn, uint64(round))}, []uint32{sector, 1})
		if u.Data[sector] != 0 || !bytes.Equal(u.Data[:sector], content[round*sector:(round+1)*sector]) {
			t.Fatalf("round %d: read wrong", round)
		}
		if n := mappingsOf(t, ramName); n <= baseMaps {
			t.Fatalf("round %d: the back-end has not mapped guest RAM (%d mappings)", round, n)
		}
		f.Close()
		closeQueueFDs(q)
	}
	cancel()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if n := settle(baseGoroutines); n > baseGoroutines {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines after Serve returned, %d before:\n%s", n, baseGoroutines, buf[:runtime.Stack(buf, true)])
	}
	if n := closed.Load(); n != 2 {
		t.Fatalf("%d devices closed after two connections", n)
	}
	// Serve closed the listener, which was open at the baseline.
	if n := countFDs(t); n != baseFDs-1 {
		t.Fatalf("%d descriptors open after Serve returned, %d before (the listener among them)", n, baseFDs)
	}
	if n := mappingsOf(t, ramName); n != baseMaps {
		t.Fatalf("%d guest RAM mappings after Serve returned, %d before", n, baseMaps)
	}
}

// BenchmarkBackendRead4K measures one 4 KiB read through vio's back-end
// (kick eventfd, virtio-blk over a raw file in the page cache, call
// eventfd), the counterpart of BenchmarkQSDRead4K.
func BenchmarkBackendRead4K(b *testing.B) {
	_, _, disk := rawImage(b, 1<<20)
	var ref refusals
	be := blkBackend(disk, blk.Config{}, &ref)
	a, c := socketPair(b)
	done := make(chan error, 1)
	go func() { done <- be.ServeConn(c) }()
	defer func() { a.Close(); <-done }()
	f := NewFrontend(a, 5*time.Second)
	mem := guestRAM(b)
	negotiate(b, f, mem, virtioFVersion1)
	q := setupQueue(b, f, mem, 0, 0x1000, false)
	b.SetBytes(4096)
	for i := 0; b.Loop(); i++ {
		u := q.do(b, [][]byte{blkHeader(blkTIn, uint64(i%256)*8)}, []uint32{4096, 1})
		if len(u.Data) != 4097 || u.Data[4096] != 0 {
			b.Fatalf("read: used len %d", u.Len)
		}
	}
}

// TestBackendTwoFrontends: with MaxConns 2, two front-ends are served at
// once, each by a device of its own over the one disk, and each sees what
// the other wrote.
func TestBackendTwoFrontends(t *testing.T) {
	_, _, disk := rawImage(t, 1<<20)
	var ref refusals
	b := blkBackend(disk, blk.Config{}, &ref)
	b.MaxConns = 2
	sock := filepath.Join(t.TempDir(), "vu.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- b.Serve(ctx, l) }()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Error(err)
		}
	}()
	var qs []*qsdBlk
	for i := range 2 {
		f, err := Dial(sock, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		mem := guestRAM(t)
		negotiate(t, f, mem, virtioFVersion1)
		qs = append(qs, setupQueue(t, f, mem, 0, 0x1000, false))
		d := bytes.Repeat([]byte{byte(0xc0 + i)}, sector)
		if u := qs[i].do(t, [][]byte{blkHeader(blkTOut, uint64(i)), d}, []uint32{1}); u.Data[0] != blk.StatusOK {
			t.Fatalf("front-end %d: write status %d", i, u.Data[0])
		}
	}
	for i, q := range qs {
		other := 1 - i
		u := q.do(t, [][]byte{blkHeader(blkTIn, uint64(other))}, []uint32{sector, 1})
		if u.Data[sector] != blk.StatusOK || u.Data[0] != byte(0xc0+other) {
			t.Fatalf("front-end %d reads %#x in front-end %d's sector", i, u.Data[0], other)
		}
	}
}

// TestBackendResetOwner: RESET_OWNER stops the rings and forgets the
// session (REPLY_ACK included), yet answers the front-end that asked for
// an acknowledgement; the front-end can then start over.
func TestBackendResetOwner(t *testing.T) {
	_, content, disk := rawImage(t, 1<<20)
	var ref refusals
	f, _ := serveOnPair(t, blkBackend(disk, blk.Config{}, &ref))
	mem := guestRAM(t)
	negotiate(t, f, mem, virtioFVersion1)
	q := setupQueue(t, f, mem, 0, 0x1000, false)
	if u := q.do(t, [][]byte{blkHeader(blkTIn, 1)}, []uint32{sector, 1}); u.Data[sector] != blk.StatusOK {
		t.Fatal("read")
	}
	if _, err := f.call(ResetOwner, nil, nil, false); err != nil {
		t.Fatalf("RESET_OWNER with NEED_REPLY: %v", err)
	}
	// Start over on a fresh ring layout.
	f.mu.Lock()
	f.protocol = 0 // the back-end forgot REPLY_ACK
	f.mu.Unlock()
	negotiate(t, f, mem, virtioFVersion1)
	q2 := setupQueue(t, f, mem, 0, 0x40000, false)
	u := q2.do(t, [][]byte{blkHeader(blkTIn, 2)}, []uint32{sector, 1})
	if u.Data[sector] != blk.StatusOK || !bytes.Equal(u.Data[:sector], content[2*sector:3*sector]) {
		t.Fatal("read after RESET_OWNER")
	}
}

// benchReadQD keeps depth 4 KiB reads in flight: each round makes depth
// requests available, kicks once and collects them all.
func benchReadQD(b *testing.B, q *qsdBlk, depth int) {
	b.SetBytes(4096 * int64(depth))
	for i := 0; b.Loop(); i++ {
		for k := range depth {
			if _, err := q.drv.Add([][]byte{blkHeader(blkTIn, uint64((i*depth+k)%256)*8)}, []uint32{4096, 1}); err != nil {
				b.Fatal(err)
			}
		}
		if q.drv.NeedsKick() {
			kick(b, q.kickFD)
		}
		for got := 0; got < depth; {
			u, ok, err := q.drv.GetUsed()
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				waitEvent(b, q.callFD)
				continue
			}
			if len(u.Data) != 4097 || u.Data[4096] != 0 {
				b.Fatalf("read: used len %d", u.Len)
			}
			got++
		}
	}
}

// BenchmarkBackendRead4KQD16 is BenchmarkBackendRead4K with 16 reads in
// flight; BenchmarkQSDRead4KQD16 is its qemu-storage-daemon counterpart.
func BenchmarkBackendRead4KQD16(b *testing.B) {
	_, _, disk := rawImage(b, 1<<20)
	var ref refusals
	be := blkBackend(disk, blk.Config{}, &ref)
	a, c := socketPair(b)
	done := make(chan error, 1)
	go func() { done <- be.ServeConn(c) }()
	defer func() { a.Close(); <-done }()
	f := NewFrontend(a, 5*time.Second)
	mem := guestRAM(b)
	negotiate(b, f, mem, virtioFVersion1)
	benchReadQD(b, setupQueue(b, f, mem, 0, 0x1000, false), 16)
}

func BenchmarkQSDRead4KQD16(b *testing.B) {
	q, _, _ := newQSDBlk(b, 1<<20)
	benchReadQD(b, q, 16)
}
