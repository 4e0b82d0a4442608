//go:build linux

package vhostnet_test

import (
	"context"
	"encoding/binary"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/devices/virtio/vhostnet"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/vhost"
	"github.com/viovmm/vio/vhost/vhosttest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"

	vnet "github.com/viovmm/vio/devices/virtio/net"
)

const (
	msiAddr   = 0xfee00000
	queueBase = 0x100000
	wait      = 10 * time.Second // bounds a hang; never a synchronization
	// kernelOffer is what Linux 6.1's vhost-net reports.
	kernelOffer = virtio.FeatureVersion1 | virtio.FeatureEventIdx | virtio.FeatureIndirectDesc |
		vnet.FeatureMrgRxbuf | vhost.FLogAll | vhost.FNetVirtioNetHdr | 1<<24 /* NOTIFY_ON_EMPTY */ | 1<<27 /* ANY_LAYOUT */
)

// rig is a vhost-net NIC with two queue pairs on fake kernel instances,
// behind a virtio-pci transport a test guest drives.
type rig struct {
	dev     *vhostnet.Device
	kernels []*vhosttest.Kernel
	taps    []*nettest.Endpoint
	mc      *virtiopcitest.Machine
	qs      []*queuetest.Driver
}

func newRig(t *testing.T, mem *memory.Memory, offer uint64, deferred bool) *rig {
	t.Helper()
	r := &rig{}
	var bes []netdev.Backend
	for range 2 {
		e, _ := nettest.Pair(16)
		r.taps = append(r.taps, e)
		bes = append(bes, e)
	}
	taps := []vhostnet.TAP{vhosttest.TAP{FD: 101}, vhosttest.TAP{FD: 102}}
	dev, err := vhostnet.New(vhostnet.Config{
		Memory: mem, Backends: bes, Deferred: deferred,
		TAPs: func() []vhostnet.TAP { return taps },
		Open: func() (vhostnet.Kernel, error) {
			k := vhosttest.New(offer)
			r.kernels = append(r.kernels, k)
			return k, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	r.dev = dev
	r.mc = virtiopcitest.NewMachineOn(t, dev, mem, 64)
	return r
}

func newMem(t *testing.T) *memory.Memory {
	mem, err := memory.New([]memory.Layout{{GPA: 0, Size: 32 << 20}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	return mem
}

// start negotiates MQ and the control queue and enables all five queues,
// queue i on MSI-X vector i+1.
func (r *rig) start(t *testing.T) {
	t.Helper()
	g := r.mc.Guest
	if err := g.Negotiate(vnet.FeatureCtrlVQ | vnet.FeatureMQ | vnet.FeatureMrgRxbuf | vnet.FeatureMAC |
		virtio.FeatureVersion1 | virtio.FeatureEventIdx); err != nil {
		t.Fatal(err)
	}
	for v := 0; v <= 5; v++ {
		g.ProgramMSIX(v, msiAddr, uint32(0x40+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	for i := range 5 {
		d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: i, Vector: uint16(i + 1), Base: queueBase + uint64(i)*0x100000, DataSize: 0x80000, EventIdx: true})
		if err != nil {
			t.Fatal(err)
		}
		r.qs = append(r.qs, d)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x: %v", s, r.dev.Err())
	}
	r.dev.Stats() // the activation runs on the device's goroutine: wait for it
}

func TestFeatures(t *testing.T) {
	r := newRig(t, newMem(t), kernelOffer&^virtio.FeatureEventIdx, false)
	f := r.dev.Features()
	for _, c := range []struct {
		bit  uint64
		want bool
		name string
	}{
		{virtio.FeatureVersion1, true, "VERSION_1"},
		{virtio.FeatureIndirectDesc, true, "INDIRECT_DESC"},
		{virtio.FeatureEventIdx, false, "EVENT_IDX (the kernel lacks it here)"},
		{vnet.FeatureMrgRxbuf, true, "MRG_RXBUF"},
		{vnet.FeatureCtrlVQ, true, "CTRL_VQ (vio's)"},
		{vnet.FeatureMQ, true, "MQ (vio's)"},
		{vhost.FLogAll, false, "LOG_ALL (the kernel's, never the guest's)"},
		{vhost.FNetVirtioNetHdr, false, "VHOST_NET_F_VIRTIO_NET_HDR"},
		{virtio.FeatureRingPacked, false, "RING_PACKED"},
	} {
		if got := f&c.bit != 0; got != c.want {
			t.Errorf("%s offered %v, want %v (features %#x)", c.name, got, c.want, f)
		}
	}
	_, err := vhostnet.New(vhostnet.Config{
		Memory: newMem(t), Backends: []netdev.Backend{r.taps[0]}, TAPs: func() []vhostnet.TAP { return nil },
		Open: func() (vhostnet.Kernel, error) { return vhosttest.New(kernelOffer &^ virtio.FeatureVersion1), nil },
	})
	if err == nil || !strings.Contains(err.Error(), "VERSION_1") {
		t.Errorf("a kernel without VERSION_1: %v", err)
	}
}

// The rings go to the kernel on DRIVER_OK: the acknowledged features are
// the kernel's among the guest's, the memory table and ring addresses
// are vio's own addresses of guest RAM, the kick eventfds are the ones
// the transport's doorbells signal, and each ring's back-end is its
// pair's TAP queue. The control queue stays with vio.
func TestActivation(t *testing.T) {
	mem := newMem(t)
	r := newRig(t, mem, kernelOffer, false)
	r.start(t)
	region := mem.Regions()[0]
	for p, k := range r.kernels {
		feats, table, _ := k.State()
		if want := virtio.FeatureVersion1 | virtio.FeatureEventIdx | vnet.FeatureMrgRxbuf; feats != want {
			t.Errorf("pair %d: acknowledged %#x, want %#x", p, feats, want)
		}
		if len(table) != 1 || table[0].GuestAddr != 0 || table[0].Size != region.Size() || table[0].UserAddr != uint64(region.HostAddr()) {
			t.Errorf("pair %d: memory table %+v", p, table)
		}
		for ring := range 2 {
			q := 2*p + ring
			got := k.Ring(ring)
			cfg := r.qs[q].Config()
			if got.Num != cfg.Size || got.Base != 0 || got.Kick != r.dev.KickFD(q) || got.Call < 0 || got.Err < 0 {
				t.Errorf("queue %d: ring %+v", q, got)
			}
			if got.Addr.Desc != uint64(region.HostAddr())+cfg.DescTable || got.Addr.Used != uint64(region.HostAddr())+cfg.UsedRing ||
				got.Addr.Avail != uint64(region.HostAddr())+cfg.AvailRing || got.Addr.Flags != 0 {
				t.Errorf("queue %d: addresses %+v for rings at %+v", q, got.Addr, cfg)
			}
			if got.Backend != 101+p {
				t.Errorf("queue %d: back-end %d, want TAP queue %d", q, got.Backend, 101+p)
			}
		}
	}
	// The control queue: vio answers the pair count and switches the
	// TAP's queues.
	if _, err := r.qs[4].Add([][]byte{{4, 0}, {2, 0}}, []uint32{1}); err != nil {
		t.Fatal(err)
	}
	r.mc.Guest.Kick(4)
	deadline := time.Now().Add(wait)
	for r.qs[4].UsedIdx() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the control command was not answered")
		}
		time.Sleep(time.Millisecond) // polling guest memory, as a driver does
	}
	if !r.taps[1].QueueEnabled() {
		t.Error("the second TAP queue is off after the guest asked for 2 pairs")
	}
	if s := r.dev.Stats(); s.CtrlCommands != 1 || s.CtrlErrors != 0 || s.KernelPairs != 2 || s.DataPath != "vhost-net" {
		t.Errorf("stats %+v", s)
	}
	// With no irqfd, the kernel signals vio's eventfd, which raises the
	// queue's MSI-X vector through the transport.
	for len(r.mc.Router.Messages()) > 0 {
		<-r.mc.Router.Messages()
	}
	if r.dev.DirectCall(1) {
		t.Fatal("DirectCall without an irqfd")
	}
	signal(t, r.kernels[0].Ring(1).Call)
	if msg, err := r.mc.Router.Wait(wait); err != nil || msg.Vector != 2 {
		t.Fatalf("interrupt for queue 1: %+v %v", msg, err)
	}
	if s := r.dev.Stats(); s.ForwardedInterrupts != 1 {
		t.Errorf("forwarded interrupts %d, want 1", s.ForwardedInterrupts)
	}
	// A guest reset takes the rings back.
	if err := r.mc.Guest.Reset(); err != nil {
		t.Fatal(err)
	}
	for p, k := range r.kernels {
		for ring := range 2 {
			if b := k.Ring(ring).Backend; b != -1 {
				t.Errorf("pair %d ring %d still has back-end %d after a reset", p, ring, b)
			}
		}
	}
}

// Pause stops the rings where the kernel stands, and the state carries
// it: a device restored from it (Deferred) starts them there once it has
// the TAP (Take), and not before.
func TestPauseSaveRestore(t *testing.T) {
	mem := newMem(t)
	r := newRig(t, mem, kernelOffer, false)
	r.start(t)
	// The kernel's worker took and completed 3 receive buffers and 5
	// transmit frames of pair 0: the used indexes say so too.
	for q, n := range map[int]uint16{0: 3, 1: 5} {
		r.kernels[0].Advance(q, n)
		if err := mem.StoreUint16(r.qs[q].Config().UsedRing+2, n); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := r.dev.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if b := r.kernels[0].Ring(0).Backend; b != -1 {
		t.Fatalf("paused, but ring 0 has back-end %d", b)
	}
	st, err := r.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if st.Queues[0] != (vhostnet.QueueState{Running: true, Base: 3}) || st.Queues[1] != (vhostnet.QueueState{Running: true, Base: 5}) || st.Ctrl == nil {
		t.Fatalf("state %+v", st)
	}
	tst, err := r.mc.Transport.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	// Resume on the same device: the rings restart from the bases.
	r.dev.Resume()
	if k := r.kernels[0].Ring(1); k.Backend != 101 || k.Base != 5 || k.Attaches != 2 {
		t.Errorf("after resume ring 1: %+v", k)
	}
	if err := r.dev.Pause(ctx); err != nil {
		t.Fatal(err)
	}

	// A second device over the same RAM, as a restored VM's.
	r2 := newRig(t, mem, kernelOffer, true)
	if err := r2.mc.Transport.RestoreState(tst); err != nil {
		t.Fatal(err)
	}
	r2.dev.Stats()
	if k := r2.kernels[0].Ring(0); k.Attaches != 0 {
		t.Fatalf("a Deferred device started its rings before its state: %+v", k)
	}
	bad := st
	bad.Queues = append([]vhostnet.QueueState(nil), st.Queues...)
	bad.Queues[1].Base = 4
	if err := r2.dev.RestoreState(bad); err == nil || !strings.Contains(err.Error(), "used index") {
		t.Fatalf("a base that is not the used index: %v", err)
	}
	if err := r2.dev.RestoreState(st); err != nil {
		t.Fatal(err)
	}
	if k := r2.kernels[0].Ring(0); k.Attaches != 0 {
		t.Fatalf("rings started before Take: %+v", k)
	}
	if err := r2.dev.Take(); err != nil {
		t.Fatal(err)
	}
	for q, n := range map[int]uint16{0: 3, 1: 5} {
		if k := r2.kernels[0].Ring(q); k.Backend != 101 || k.Base != n {
			t.Errorf("restored ring %d: %+v, want base %d", q, k, n)
		}
	}
}

// A kernel that stops a ring short of the used index (entries taken and
// not completed) fails the pause: the state would lose them.
func TestPauseRefusesIncompleteRing(t *testing.T) {
	mem := newMem(t)
	r := newRig(t, mem, kernelOffer, false)
	r.start(t)
	r.kernels[0].Advance(1, 7)
	if err := mem.StoreUint16(r.qs[1].Config().UsedRing+2, 6); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := r.dev.Pause(ctx); err == nil || !strings.Contains(err.Error(), "not completed") {
		t.Fatalf("pause with an entry in flight: %v", err)
	}
}

// The dirty log: LOG_ALL and the used rings' logging go on and off on
// the running rings, and a kernel without LOG_ALL is refused.
func TestDirtyLog(t *testing.T) {
	mem := newMem(t)
	r := newRig(t, mem, kernelOffer, false)
	r.start(t)
	if err := r.dev.StartLog(32 << 20); err != nil {
		t.Fatal(err)
	}
	feats, _, base := r.kernels[1].State()
	if feats&vhost.FLogAll == 0 || base == 0 || r.kernels[1].Ring(0).Addr.Flags != vhost.VringFLog {
		t.Errorf("logging on: features %#x, log base %#x, ring flags %#x", feats, base, r.kernels[1].Ring(0).Addr.Flags)
	}
	if got := r.kernels[1].Ring(0).Addr.LogGuest; got != r.qs[2].Config().UsedRing {
		t.Errorf("used ring logged at %#x, want its guest address %#x", got, r.qs[2].Config().UsedRing)
	}
	r.dev.StopLog()
	if feats, _, _ := r.kernels[1].State(); feats&vhost.FLogAll != 0 || r.kernels[1].Ring(0).Addr.Flags != 0 {
		t.Errorf("logging off: features %#x, ring flags %#x", feats, r.kernels[1].Ring(0).Addr.Flags)
	}
	r2 := newRig(t, newMem(t), kernelOffer&^vhost.FLogAll, false)
	if err := r2.dev.CanLog(); err == nil || !strings.Contains(err.Error(), "VHOST_F_LOG_ALL") {
		t.Errorf("CanLog without LOG_ALL: %v", err)
	}
}

func signal(t *testing.T, fd int) {
	t.Helper()
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], 1)
	if _, err := unix.Write(fd, b[:]); err != nil {
		t.Fatal(err)
	}
}

// Rings that start while a migration logs (a resume, a destination's
// take) get the log before LOG_ALL, as the kernel requires.
func TestRingsStartLogging(t *testing.T) {
	r := newRig(t, newMem(t), kernelOffer, false)
	r.start(t)
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := r.dev.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.dev.StartLog(32 << 20); err != nil {
		t.Fatal(err)
	}
	r.dev.Resume()
	if err := r.dev.Err(); err != nil {
		t.Fatalf("resume while logging: %v", err)
	}
	feats, _, base := r.kernels[0].State()
	if k := r.kernels[0].Ring(0); k.Backend < 0 || feats&vhost.FLogAll == 0 || base == 0 || k.Addr.Flags != vhost.VringFLog {
		t.Errorf("resumed while logging: ring %+v, features %#x, log base %#x", k, feats, base)
	}
	r.dev.StopLog()
}
