package balloon_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/viovmm/vio/devices/virtio/balloon"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const (
	msiAddr = 0xfee00000
	wait    = 10 * time.Second // bounds a hang; never a synchronization

	// Guest RAM: two regions with a hole between, as below and above 4 GiB.
	ram0, ram0Size = 0, 8 << 20
	ram1, ram1Size = 16 << 20, 4 << 20
	// Pages the tests give away: clear of the rings and data areas.
	pages = 4 << 20
)

type rig struct {
	t   *testing.T
	mem *memory.Memory
	dev *balloon.Device
	m   *virtiopcitest.Machine
	q   []*queuetest.Driver // by queue index
}

func newRig(t *testing.T, cfg balloon.Config) *rig {
	t.Helper()
	mem, err := memory.New([]memory.Layout{{GPA: ram0, Size: ram0Size}, {GPA: ram1, Size: ram1Size}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	dev := balloon.New(mem, cfg)
	return &rig{t: t, mem: mem, dev: dev, m: virtiopcitest.NewMachineOn(t, dev, mem, 256)}
}

// start negotiates features (balloon bits; the transport's are added),
// sets up n queues with MSI-X vector i+1 for queue i and 0 for
// configuration changes, and sets DRIVER_OK.
func (r *rig) start(features uint64, n int) {
	t, g := r.t, r.m.Guest
	t.Helper()
	if err := g.Negotiate(virtio.FeatureVersion1 | features); err != nil {
		t.Fatal(err)
	}
	for v := range g.MSIXVectors() {
		g.ProgramMSIX(v, msiAddr, uint32(0x30+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	for i := range n {
		d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: i, Size: 64, Vector: uint16(i + 1), Base: 0x10000 + uint64(i)*0x80000, DataSize: 0x60000})
		if err != nil {
			t.Fatal(err)
		}
		r.q = append(r.q, d)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x", s)
	}
}

// msi waits for the next interrupt and checks its vector.
func (r *rig) msi(vector int) {
	r.t.Helper()
	m, err := r.m.Router.Wait(wait)
	if err != nil {
		r.t.Fatal(err)
	}
	if m.Vector != vector {
		r.t.Fatalf("MSI-X vector %d, want %d", m.Vector, vector)
	}
}

// send makes a chain of readable buffers available on queue i, kicks, and
// waits for it to come back with length 0.
func (r *rig) send(i int, bufs ...[]byte) {
	r.t.Helper()
	if _, err := r.q[i].Add(bufs, nil); err != nil {
		r.t.Fatal(err)
	}
	r.m.Guest.Kick(i)
	r.msi(i + 1)
	u, ok, err := r.q[i].GetUsed()
	if err != nil || !ok {
		r.t.Fatalf("queue %d: no used entry (%v)", i, err)
	}
	if u.Len != 0 {
		r.t.Fatalf("queue %d: used length %d, want 0", i, u.Len)
	}
}

func pfnList(pfns ...uint32) []byte {
	b := make([]byte, 4*len(pfns))
	for i, p := range pfns {
		binary.LittleEndian.PutUint32(b[4*i:], p)
	}
	return b
}

// fill writes a non-zero pattern over [gpa, gpa+n).
func (r *rig) fill(gpa, n uint64) {
	r.t.Helper()
	if _, err := r.mem.WriteAt(bytes.Repeat([]byte{0x5a}, int(n)), int64(gpa)); err != nil {
		r.t.Fatal(err)
	}
}

// zeroPages returns which of the 4 KiB pages of [gpa, gpa+n) read as zeros.
func (r *rig) zeroPages(gpa, n uint64) []bool {
	r.t.Helper()
	var z []bool
	page := make([]byte, balloon.PageSize)
	for a := gpa; a < gpa+n; a += balloon.PageSize {
		if _, err := r.mem.ReadAt(page, int64(a)); err != nil {
			r.t.Fatal(err)
		}
		z = append(z, bytes.Equal(page, make([]byte, balloon.PageSize)))
	}
	return z
}

// TestInflateReleasesListedPages: inflating releases exactly the pages
// listed that are guest RAM (they read as zeros afterwards, the others
// keep their bytes), in runs that never cross the hole between regions;
// numbers outside RAM are counted and skipped; deflate releases nothing.
func TestInflateReleasesListedPages(t *testing.T) {
	r := newRig(t, balloon.Config{})
	r.start(balloon.FeatureStatsVQ, 3)
	r.fill(pages, 16*balloon.PageSize)
	lastOf0 := uint64(ram0+ram0Size)/balloon.PageSize - 1
	r.fill(lastOf0*balloon.PageSize, balloon.PageSize)
	r.fill(ram1, 2*balloon.PageSize)
	base := uint32(pages / balloon.PageSize)
	// Unsorted, with a duplicate, a run across the end of region 0 into
	// the hole, the first pages of region 1, and numbers outside RAM.
	r.send(0, pfnList(base+5, base+1, base+2, base+3, base+2, base+9,
		uint32(lastOf0), uint32(lastOf0+1), 0xffffffff, uint32(ram1/balloon.PageSize)), pfnList(uint32(ram1/balloon.PageSize+1)))
	got := r.zeroPages(pages, 16*balloon.PageSize)
	for i, z := range got {
		want := i == 1 || i == 2 || i == 3 || i == 5 || i == 9
		if z != want {
			t.Errorf("page %d released=%v, want %v", i, z, want)
		}
	}
	if z := r.zeroPages(lastOf0*balloon.PageSize, balloon.PageSize); !z[0] {
		t.Error("the last page of region 0 was not released")
	}
	if z := r.zeroPages(ram1, 3*balloon.PageSize); !z[0] || !z[1] {
		t.Errorf("region 1's first pages released: %v", z)
	}
	s := r.dev.Stats()
	if s.InflatedPages != 11 || s.BadPFNs != 2 || s.ReleasedBytes != 8*balloon.PageSize || s.BadRequests != 0 || s.ReleaseErrors != 0 {
		t.Errorf("stats after inflate %+v", s)
	}

	// Deflate: counted, nothing changes in memory.
	r.fill(pages, balloon.PageSize)
	r.send(1, pfnList(base, base+1))
	if z := r.zeroPages(pages, balloon.PageSize); z[0] {
		t.Error("deflate released a page")
	}
	if s := r.dev.Stats(); s.DeflatedPages != 2 || s.ReleasedBytes != 8*balloon.PageSize {
		t.Errorf("stats after deflate %+v", s)
	}
}

// TestHostileRequests: odd lengths, a flood of numbers past the
// per-request limit and empty requests are answered and counted; the
// device keeps serving.
func TestHostileRequests(t *testing.T) {
	r := newRig(t, balloon.Config{})
	r.start(balloon.FeatureStatsVQ, 3)
	base := uint32(pages / balloon.PageSize)
	r.fill(pages, 2*balloon.PageSize)
	r.send(0, append(pfnList(base), 0xee, 0xee)) // a trailing half entry
	s := r.dev.Stats()
	if s.InflatedPages != 1 || s.BadRequests != 1 {
		t.Errorf("after a ragged request: %+v", s)
	}
	// More numbers than one request may carry: the rest is ignored.
	many := make([]uint32, balloon.MaxPFNsPerRequest+5)
	for i := range many {
		many[i] = 0xfffffff0
	}
	many[len(many)-1] = base + 1
	r.send(0, pfnList(many...))
	s = r.dev.Stats()
	if s.InflatedPages != 1+balloon.MaxPFNsPerRequest || s.BadPFNs != balloon.MaxPFNsPerRequest+5 {
		t.Errorf("after a flood: %+v", s)
	}
	if z := r.zeroPages(pages, 2*balloon.PageSize); !z[0] || z[1] {
		t.Errorf("released %v: want only the first page (the second came past the limit)", z)
	}
	r.send(1, []byte{1, 2, 3})
	if s := r.dev.Stats(); s.BadRequests != 2 {
		t.Errorf("after a ragged deflate: %+v", s)
	}
}

// TestTargetAndActual: the host's target reaches the config space with a
// configuration change interrupt; the driver's actual comes back.
func TestTargetAndActual(t *testing.T) {
	r := newRig(t, balloon.Config{})
	if err := r.dev.SetTarget(1 << 20); err != nil { // before the driver: no interrupt
		t.Fatal(err)
	}
	r.start(balloon.FeatureStatsVQ, 3)
	if v := r.m.Guest.ReadDeviceConfig(0, 4); v != 256 {
		t.Fatalf("num_pages %d, want 256", v)
	}
	if err := r.dev.SetTarget(128<<20 + 100); err != nil {
		t.Fatal(err)
	}
	r.msi(0)
	if v := r.m.Guest.ReadDeviceConfig(0, 4); v != 128<<8 {
		t.Fatalf("num_pages %d, want %d", v, 128<<8)
	}
	r.m.Guest.WriteDeviceConfig(0, 4, 7) // not the driver's to write
	r.m.Guest.WriteDeviceConfig(4, 4, 1000)
	target, actual := r.dev.Target()
	if target != 128<<20 || actual != 1000*balloon.PageSize {
		t.Errorf("target %d actual %d", target, actual)
	}
	if err := r.dev.SetTarget(1 << 50); err == nil {
		t.Error("a 1 PiB target was accepted")
	}
	if s := r.dev.Stats(); s.TargetBytes != 128<<20 || s.ActualBytes != 1000*balloon.PageSize {
		t.Errorf("stats %+v", s)
	}
}

func statBuf(kv ...uint64) []byte {
	var b []byte
	for i := 0; i+1 < len(kv); i += 2 {
		e := make([]byte, 10)
		binary.LittleEndian.PutUint16(e, uint16(kv[i]))
		binary.LittleEndian.PutUint64(e[2:], kv[i+1])
		b = append(b, e...)
	}
	return b
}

// TestStatsQueue: the driver lends a buffer of statistics, the device
// keeps it; RequestStats hands it back, the driver refills it, and the
// new values show. Unknown tags are skipped.
func TestStatsQueue(t *testing.T) {
	r := newRig(t, balloon.Config{})
	r.start(balloon.FeatureStatsVQ, 3)
	const statsQ = 2
	if _, err := r.q[statsQ].Add([][]byte{statBuf(4, 100<<20, 5, 500<<20, 999, 1)}, nil); err != nil {
		t.Fatal(err)
	}
	r.m.Guest.Kick(statsQ)
	// The device keeps the buffer: wait until the statistics show.
	r.waitStatsUpdates(t, 1)
	s := r.dev.Stats()
	if s.Guest["free_memory"] != 100<<20 || s.Guest["total_memory"] != 500<<20 || len(s.Guest) != 2 {
		t.Errorf("guest stats %v", s.Guest)
	}
	if r.q[statsQ].UsedIdx() != 0 {
		t.Fatal("the device returned the stats buffer unasked")
	}
	r.dev.RequestStats()
	r.msi(statsQ + 1)
	if _, ok, err := r.q[statsQ].GetUsed(); !ok || err != nil {
		t.Fatalf("stats buffer not returned: %v", err)
	}
	r.q[statsQ].Add([][]byte{statBuf(4, 50<<20)}, nil)
	r.m.Guest.Kick(statsQ)
	r.waitStatsUpdates(t, 2)
	if s := r.dev.Stats(); s.Guest["free_memory"] != 50<<20 || s.Guest["total_memory"] != 500<<20 {
		t.Errorf("guest stats after refresh %v", s.Guest)
	}
}

// report makes a chain of device-writable buffers at the given guest
// ranges available on queue i (raw descriptors: the pages are the
// message), kicks and waits for it to come back with length 0.
func (r *rig) report(i int, ranges ...[2]uint64) {
	r.t.Helper()
	d := r.q[i]
	for k, rg := range ranges {
		if !d.Reserve(uint16(k)) {
			r.t.Fatalf("descriptor %d taken", k)
		}
		x := queuetest.Desc{Addr: rg[0], Len: uint32(rg[1]), Flags: queuetest.FlagWrite}
		if k+1 < len(ranges) {
			x.Flags |= queuetest.FlagNext
			x.Next = uint16(k + 1)
		}
		d.WriteDesc(uint16(k), x)
	}
	before := d.UsedIdx()
	d.Publish(0)
	r.m.Guest.Kick(i)
	r.msi(i + 1)
	if d.UsedIdx() != before+1 {
		r.t.Fatal("report not returned")
	}
}

// TestFreePageReporting: reported ranges are released; the queue is the
// one after the statistics queue when both are negotiated, and takes its
// place when statistics are not (Linux numbers only negotiated queues).
func TestFreePageReporting(t *testing.T) {
	for _, c := range []struct {
		name     string
		features uint64
		queue    int
	}{
		{"with-stats", balloon.FeatureStatsVQ | balloon.FeatureReporting, 3},
		{"without-stats", balloon.FeatureReporting, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, balloon.Config{FreePageReporting: true})
			if r.dev.Features()&balloon.FeatureReporting == 0 {
				t.Fatal("reporting not offered")
			}
			r.start(c.features, c.queue+1)
			r.fill(pages, 2<<20)
			r.fill(ram1, 2<<20)
			r.report(c.queue, [2]uint64{pages, 1 << 20}, [2]uint64{pages + 1<<20 + 0x800, 0x2800}, [2]uint64{ram1, 2 << 20})
			z := r.zeroPages(pages, 2<<20)
			for i, released := range z {
				// The second range starts mid-page: only its whole pages
				// (1 MiB + 4 KiB, + 8 KiB) go.
				want := i < 256 || i == 257 || i == 258
				if released != want {
					t.Errorf("page %d released=%v, want %v", i, released, want)
				}
			}
			if z := r.zeroPages(ram1, 2<<20); !z[0] || !z[511] {
				t.Error("region 1's range was not released")
			}
			s := r.dev.Stats()
			if s.ReportedBytes != 1<<20+0x2000+2<<20 || s.BadRequests != 1 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// TestPauseHandsBackStats: a pause returns the lent statistics buffer, so
// that the transport can be saved with nothing in flight; the state
// round-trips.
func TestPauseHandsBackStats(t *testing.T) {
	r := newRig(t, balloon.Config{})
	r.start(balloon.FeatureStatsVQ, 3)
	r.q[2].Add([][]byte{statBuf(4, 1)}, nil)
	r.m.Guest.Kick(2)
	r.waitStatsUpdates(t, 1)
	r.dev.SetTarget(64 << 20)
	r.msi(0)
	r.m.Guest.WriteDeviceConfig(4, 4, 77)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := r.dev.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := r.m.Transport.SaveState(); err != nil {
		t.Fatalf("transport save while paused: %v", err)
	}
	b, err := r.dev.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	r.dev.Resume()

	other := balloon.New(r.mem, balloon.Config{})
	if err := other.UnmarshalState(balloon.StateVersion, b); err != nil {
		t.Fatal(err)
	}
	if target, actual := other.Target(); target != 64<<20 || actual != 77*balloon.PageSize {
		t.Errorf("restored target %d actual %d", target, actual)
	}
	if err := other.UnmarshalState(balloon.StateVersion+1, b); err == nil {
		t.Error("a newer state version was accepted")
	}
}

// waitStatsUpdates waits (up to wait) until the device goroutine has
// taken n statistics buffers from the guest.
func (r *rig) waitStatsUpdates(t *testing.T, n uint64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for r.dev.Stats().StatsUpdates < n {
		if time.Now().After(deadline) {
			t.Fatalf("statistics update %d never arrived", n)
		}
		time.Sleep(time.Millisecond) // polling a counter the device goroutine sets
	}
}
