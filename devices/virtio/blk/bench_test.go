package blk_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"syscall"
	"testing"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/kvm"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/ringpoll"
)

// BenchmarkRead4K runs 4 KiB reads through the whole transport, 64 in
// flight on one queue (the guest side is queuetest, so its cost is
// included), and reports interrupts and notifications per request: with
// EVENT_IDX and batched completions both stay well below one.
func BenchmarkRead4K(b *testing.B) {
	be := blocktest.NewMem(64 << 20)
	m := newMachine(b, be, blk.Config{})
	m.start(b, 0, true)
	d := m.queues[0]
	hdrs := make([][]byte, 64)
	for i := range hdrs {
		hdrs[i] = header(blk.TypeIn, uint64(i*8))
	}
	b.SetBytes(4096)
	b.ReportAllocs()
	b.ResetTimer()
	for done := 0; done < b.N; {
		n := min(64, b.N-done)
		for i := range n {
			if _, err := d.AddIndirect([][]byte{hdrs[i]}, []uint32{4096, 1}); err != nil {
				b.Fatal(err)
			}
		}
		if d.NeedsKick() {
			m.guest.Kick(0)
		}
		m.collect(b, 0, n)
		done += n
	}
	b.StopTimer()
	s := m.dev.Stats()
	b.ReportMetric(float64(s.Interrupts)/float64(b.N), "irqs/op")
	b.ReportMetric(float64(s.Notifications)/float64(b.N), "kicks/op")
}

// BenchmarkRandRead runs random 4 KiB reads from a raw file whose data is
// in the host's page cache, with 1 and with 32 requests kept in flight:
// the driver side submits a new read for each completion and otherwise
// waits for an interrupt. Each fast path is measured on and off: "off" is
// the path without shortcuts (every read to a worker and back through the
// queue's goroutine), "inline" and "direct" one shortcut each, "on" both
// (the default), "poll" both with adaptive polling.
//
// Two drivers: "vcpu" plays the guest on a thread of its own, as vio
// runs a vCPU: it holds its own P, sleeps in the kernel until an eventfd
// signals the interrupt (irqfd) and kicks by signalling an eventfd that a
// goroutine waits on through the netpoller and passes to the queue
// (ioeventfd, as vmm does); the queue is served as vio serves a vhost-user
// ring (ServeQueue). "transport" is a goroutine driving the device through
// the virtio-pci transport, waiting on the test router's channel.
//
// Per request it reports the process's voluntary context switches (a
// thread that went to sleep: each hand-off to a sleeping goroutine, and
// the guest's own halt), notifications, interrupts, and how requests took
// each path.
func BenchmarkRandRead(b *testing.B) {
	path := filepath.Join(b.TempDir(), "disk.raw")
	const size = 64 << 20
	f, err := raw.Create(path, size, raw.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	// Written, so that every block is in the page cache (a hole is not).
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, size), 0); err != nil {
		b.Fatal(err)
	}
	variants := []struct {
		name string
		cfg  blk.Config
	}{
		{"off", blk.Config{NoInlineReads: true, NoDirectCompletion: true}},
		{"inline", blk.Config{NoDirectCompletion: true}},
		{"direct", blk.Config{NoInlineReads: true}},
		{"on", blk.Config{}},
		{"poll", blk.Config{Poll: ringpoll.Config{Mode: ringpoll.Adaptive}}},
	}
	for _, driver := range []string{"vcpu", "transport"} {
		for _, qd := range []int{1, 32} {
			for _, v := range variants {
				b.Run(fmt.Sprintf("%s/qd%d/%s", driver, qd, v.name), func(b *testing.B) {
					b.Setenv("VIO_BLK_INLINE", "")
					b.Setenv("VIO_BLK_DIRECT_COMPLETE", "")
					if driver == "vcpu" {
						randReadVCPU(b, f, qd, v.cfg)
					} else {
						randRead(b, f, qd, v.cfg)
					}
				})
			}
		}
	}
}

// readSlots lays out qd reusable request buffers in d's data area and
// returns a function that makes a random 4 KiB read of disk sectors
// available in slot i.
func readSlots(b *testing.B, mem *memory.Memory, d *queuetest.Driver, qd int, sectors uint64) func(i int) uint16 {
	type slot struct{ hdr, data, status uint64 }
	slots := make([]slot, qd)
	for i := range slots {
		s := &slots[i]
		var err error
		if s.hdr, err = d.Alloc(blk.HeaderSize); err == nil {
			if s.data, err = d.Alloc(4096); err == nil {
				s.status, err = d.Alloc(1)
			}
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	return func(i int) uint16 {
		s := slots[i]
		if _, err := mem.WriteAt(header(blk.TypeIn, rng.Uint64N(sectors/8)*8), int64(s.hdr)); err != nil {
			b.Fatal(err)
		}
		h, err := d.AddChain([]queuetest.Desc{
			{Addr: s.hdr, Len: blk.HeaderSize},
			{Addr: s.data, Len: 4096, Flags: queuetest.FlagWrite},
			{Addr: s.status, Len: 1, Flags: queuetest.FlagWrite},
		})
		if err != nil {
			b.Fatal(err)
		}
		return h
	}
}

// schedCount reads how many times goroutines went from runnable to
// running, as the runtime samples it: one transition in 8 lands in its
// scheduling-latency histogram, so 8 times the count estimates the
// goroutine wake-ups (hand-offs, and the yields of a poll).
func schedCount() uint64 {
	s := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(s)
	var n uint64
	for _, c := range s[0].Value.Float64Histogram().Counts {
		n += c
	}
	return 8 * n
}

// wakeups is what a run cost in thread and goroutine wake-ups.
type wakeups struct {
	vcsw  int64  // the process's voluntary context switches
	sched uint64 // goroutine schedulings (schedCount)
}

// countWakeups returns a function that measures the wake-ups since. In
// between the garbage collector is off: the driver side allocates (each
// used entry's data is copied out), and a collection's own workers and
// the stop of the world it needs would swamp the device's wake-ups and
// add their time to a few requests.
func countWakeups() func() wakeups {
	runtime.GC()
	gc := debug.SetGCPercent(-1)
	var ru0 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	s0 := schedCount()
	return func() wakeups {
		var ru1 syscall.Rusage
		syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		w := wakeups{vcsw: ru1.Nvcsw - ru0.Nvcsw, sched: schedCount() - s0}
		debug.SetGCPercent(gc)
		return w
	}
}

// reportRandRead reports the counters of a run: the device's, the
// queue's interrupts, and the wake-ups.
func reportRandRead(b *testing.B, s blk.Stats, irqs uint64, w wakeups, poll bool) {
	n := float64(b.N)
	b.ReportMetric(float64(w.vcsw)/n, "vcsw/op")
	b.ReportMetric(float64(w.sched)/n, "gsched/op")
	b.ReportMetric(float64(s.Notifications)/n, "kicks/op")
	b.ReportMetric(float64(irqs)/n, "irqs/op")
	b.ReportMetric(float64(s.InlineReads)/n, "inline/op")
	b.ReportMetric(float64(s.DirectCompletions)/n, "direct/op")
	if poll {
		b.ReportMetric(float64(s.PolledChains)/n, "polled/op")
		b.ReportMetric(float64(s.PollTime.Nanoseconds())/n, "pollns/op")
	}
}

// randReadVCPU is BenchmarkRandRead's "vcpu" driver.
func randReadVCPU(b *testing.B, be block.Backend, qd int, cfg blk.Config) {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 16 << 20}})
	if err != nil {
		b.Fatal(err)
	}
	defer mem.Close()
	feat := virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc | blk.FeatureFlush
	d, err := queuetest.New(mem, 0x10000, 256, 1<<20, true)
	if err != nil {
		b.Fatal(err)
	}
	q, err := virtio.NewQueue(mem, d.Config(), 256, feat)
	if err != nil {
		b.Fatal(err)
	}
	irqfd, err := kvm.NewEventFD()
	if err != nil {
		b.Fatal(err)
	}
	defer irqfd.Close()
	kickfd, err := kvm.NewEventFD()
	if err != nil {
		b.Fatal(err)
	}
	kicker := make(chan struct{})
	go func() { // vmm's ioeventfd goroutine
		defer close(kicker)
		for {
			if _, err := kickfd.Wait(); err != nil {
				return
			}
			q.Kick()
		}
	}()
	defer func() { kickfd.Close(); <-kicker }()
	q.SetInterrupt(irqfd)
	dev, err := blk.New(be, cfg)
	if err != nil {
		b.Fatal(err)
	}
	sq, err := dev.ServeQueue(0, q, feat)
	if err != nil {
		b.Fatal(err)
	}
	defer sq.Stop()
	submit := readSlots(b, mem, d, qd, uint64(be.Size())/512)

	// The guest runs on a thread of its own holding its own P, as a vCPU
	// does (GOMAXPROCS one up while it runs).
	errc := make(chan error, 1)
	var w wakeups
	b.SetBytes(4096)
	b.ResetTimer()
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + 1)
		defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) - 1)
		since := countWakeups()
		errc <- vcpuGuest(d, q, irqfd.FD(), kickfd.FD(), submit, qd, b.N)
		w = since()
		close(errc)
	}()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	<-errc
	b.StopTimer()
	reportRandRead(b, dev.Stats(), q.Stats().Interrupts, w, cfg.Poll.Mode != ringpoll.Off)
}

// vcpuGuest keeps qd reads in flight until n have completed.
func vcpuGuest(d *queuetest.Driver, q *virtio.Queue, irqfd, kickfd int, submit func(int) uint16, qd, n int) error {
	slotOf := map[uint16]int{}
	submitted := 0
	for i := range min(qd, n) {
		slotOf[submit(i)] = i
		submitted++
	}
	for done := 0; done < n; {
		if d.NeedsKick() {
			if err := vcpuNotify(kickfd); err != nil {
				return err
			}
		}
		got := false
		for {
			u, ok, err := d.GetUsed()
			if err != nil {
				return err
			}
			if !ok {
				break
			}
			if u.Len != 4097 || u.Data[4096] != blk.StatusOK {
				return fmt.Errorf("read failed: %d bytes, status %d", u.Len, u.Data[len(u.Data)-1])
			}
			got = true
			done++
			i := slotOf[u.ID]
			delete(slotOf, u.ID)
			if submitted < n {
				slotOf[submit(i)] = i
				submitted++
			}
		}
		if !got && done < n {
			if err := vcpuHalt(irqfd, int(wait/time.Millisecond)); err != nil {
				return fmt.Errorf("%d of %d done: %w", done, n, err)
			}
		}
	}
	return nil
}

// randRead is BenchmarkRandRead's "transport" driver.
func randRead(b *testing.B, be block.Backend, qd int, cfg blk.Config) {
	m := newMachine(b, be, cfg)
	m.start(b, 0, true)
	d := m.queues[0]
	submit := readSlots(b, m.mem, d, qd, uint64(be.Size())/512)
	slotOf := map[uint16]int{}
	submitted := 0
	b.SetBytes(4096)
	b.ResetTimer()
	since := countWakeups()
	for i := range min(qd, b.N) {
		slotOf[submit(i)] = i
		submitted++
	}
	for done := 0; done < b.N; {
		if d.NeedsKick() {
			m.guest.Kick(0)
		}
		u, ok, err := d.GetUsed()
		if err != nil {
			b.Fatal(err)
		}
		if !ok {
			if _, err := m.router.Wait(wait); err != nil {
				b.Fatalf("waiting for completions (%d of %d done): %v", done, b.N, err)
			}
			continue
		}
		if u.Len != 4097 || u.Data[4096] != blk.StatusOK {
			b.Fatalf("read failed: %d bytes, status %d", u.Len, u.Data[len(u.Data)-1])
		}
		done++
		i := slotOf[u.ID]
		delete(slotOf, u.ID)
		if submitted < b.N {
			slotOf[submit(i)] = i
			submitted++
		}
	}
	w := since()
	b.StopTimer()
	s := m.dev.Stats()
	reportRandRead(b, s, s.Interrupts, w, cfg.Poll.Mode != ringpoll.Off)
}
