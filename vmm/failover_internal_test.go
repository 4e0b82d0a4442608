package vmm

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/pcihp"
	"github.com/viovmm/vio/devices/vfiopci/vfiopcitest"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/frame"
	"github.com/viovmm/vio/netdev/socket"
)

// These tests pass fake host devices (vfiopcitest) through to real VMs
// (the synthetic guest only halts) and play the guest's ACPI hot-plug
// handler on the VM's own registers: on each hot-plug event they read
// PCIU and PCID as the guest's \_GPE._E01 does and, unless told to hold
// on, write each slot asked for to B0EJ, as the guest's _EJ0 does once
// its driver let the device go. Source and destination share one fake
// host, as two vio processes of one lab machine share its devices.

const (
	primaryBDF = "0000:00:05.0"
	otherBDF   = "0000:00:06.0"
	standbyMAC = "52:54:00:fa:11:0e"
)

func devPath(bdf string) string { return "/sys/bus/pci/devices/" + bdf }

// hpGuest is the guest's ACPI hot-plug handler, for every VM it is given.
type hpGuest struct {
	t      *testing.T
	wake   chan *VM
	mu     sync.Mutex
	hold   bool               // do not answer eject requests
	plugs  map[*VM][]uint8    // slots each VM announced (PCIU)
	ejects map[*VM][]uint8    // slots each VM asked to eject (PCID)
	asked  map[*VM]chan uint8 // eject requests, as they are read
	ups    map[*VM]chan uint8 // plugs, as they are read
}

func newHPGuest(t *testing.T) *hpGuest {
	g := &hpGuest{t: t, wake: make(chan *VM, 16), plugs: map[*VM][]uint8{}, ejects: map[*VM][]uint8{},
		asked: map[*VM]chan uint8{}, ups: map[*VM]chan uint8{}}
	done := make(chan struct{})
	t.Cleanup(func() { close(done) })
	go func() {
		for {
			select {
			case v := <-g.wake:
				g.handle(v)
			case <-done:
				return
			}
		}
	}()
	return g
}

// event is the VMs' hotplugEvent hook. It never blocks the VM: the
// registers keep their bits until read, so one wake-up covers any
// number of events.
func (g *hpGuest) event(v *VM) {
	select {
	case g.wake <- v:
	default:
	}
}

// chanOf returns v's channel in m, made on first use.
func (g *hpGuest) chanOf(m map[*VM]chan uint8, v *VM) chan uint8 {
	g.mu.Lock()
	defer g.mu.Unlock()
	c := m[v]
	if c == nil {
		c = make(chan uint8, 32)
		m[v] = c
	}
	return c
}

// waitPlug waits until v's guest has read that slot came up.
func (g *hpGuest) waitPlug(t *testing.T, v *VM, slot uint8, what string) {
	t.Helper()
	timeout := time.NewTimer(nicWait) // bounds a hang
	defer timeout.Stop()
	for {
		select {
		case s := <-g.chanOf(g.ups, v):
			if s == slot {
				return
			}
		case <-timeout.C:
			t.Fatalf("%s: the guest was never told that slot %d has a device (it saw %v)", what, slot, g.plugged(v))
		}
	}
}

func (g *hpGuest) handle(v *VM) {
	var b [4]byte
	v.pio.Read(hotplugPort+pcihp.RegUp, b[:])
	up := binary.LittleEndian.Uint32(b[:])
	v.pio.Read(hotplugPort+pcihp.RegDown, b[:])
	down := binary.LittleEndian.Uint32(b[:])
	g.mu.Lock()
	hold := g.hold
	for s := uint8(1); s < 32; s++ {
		if up&(1<<s) != 0 {
			g.plugs[v] = append(g.plugs[v], s)
		}
		if down&(1<<s) != 0 {
			g.ejects[v] = append(g.ejects[v], s)
		}
	}
	g.mu.Unlock()
	for s := uint8(1); s < 32; s++ {
		if down&(1<<s) != 0 {
			g.chanOf(g.asked, v) <- s
		}
		if up&(1<<s) != 0 {
			g.chanOf(g.ups, v) <- s
		}
	}
	if down != 0 && !hold {
		binary.LittleEndian.PutUint32(b[:], down)
		v.pio.Write(hotplugPort+pcihp.RegEject, b[:])
	}
}

func (g *hpGuest) setHold(h bool) {
	g.mu.Lock()
	g.hold = h
	g.mu.Unlock()
}

// plugged returns the slots v announced to the guest so far.
func (g *hpGuest) plugged(v *VM) []uint8 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.plugs[v])
}

// failoverRig is a VM config with a virtio-net standby on user-mode
// networking and a fake NIC as its primary, and the fake host.
type failoverRig struct {
	dir   string
	cfg   *config.VM
	host  *vfiopcitest.Host
	guest *hpGuest
	opts  Options
}

func newFailoverRig(t *testing.T) *failoverRig {
	t.Helper()
	dir := t.TempDir()
	lo := loadertest.Default()
	lo.Entry64 = idleEntry
	kernel := filepath.Join(dir, "bzImage")
	if err := os.WriteFile(kernel, loadertest.BzImage(lo), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default()
	cfg.Payload.Kernel = kernel
	cfg.Memory.Size = config.MinMemory
	cfg.Serial.Mode = config.ModeOff
	cfg.Net = []config.Net{{ID: "sb", User: &config.UserNet{}, MAC: standbyMAC, Standby: true}}
	cfg.Devices = []config.Device{{ID: "vf0", Path: devPath(primaryBDF), Failover: "sb"}}
	r := &failoverRig{dir: dir, cfg: cfg, host: &vfiopcitest.Host{}, guest: newHPGuest(t)}
	r.host.Add(primaryBDF, vfiopcitest.ClassEthernet)
	r.host.Add(otherBDF, vfiopcitest.ClassEthernet)
	r.opts = testOpts
	r.opts.openHost = r.host.Open
	r.opts.hotplugEvent = r.guest.event
	return r
}

func (r *failoverRig) controller(t *testing.T) *Controller {
	t.Helper()
	c := NewController(Builder(IO{}, r.opts), nil)
	c.SetReceive(Receiver(IO{}, r.opts))
	t.Cleanup(func() { c.Shutdown(); c.Delete() })
	return c
}

// boot boots the rig's config in a new Controller.
func (r *failoverRig) boot(t *testing.T) *Controller {
	t.Helper()
	c := r.controller(t)
	if err := c.Create(r.cfg.Clone()); err != nil {
		t.Fatal(err)
	}
	if err := c.Boot(); err != nil {
		if errors.Is(err, ErrNoKVM) {
			t.Skip("no /dev/kvm here")
		}
		t.Fatal(err)
	}
	return c
}

// wantEvents checks the fake host's record.
func (r *failoverRig) wantEvents(t *testing.T, what string, want ...string) {
	t.Helper()
	if got := r.host.Events(); !slices.Equal(got, want) {
		t.Fatalf("%s: the host saw %q, want %q", what, got, want)
	}
}

// receiveAt has dst wait for a migration with req (its URL set here)
// and returns the socket once it listens, and its result.
func receiveAt(t *testing.T, ctx context.Context, dir string, dst *Controller, req ReceiveMigration) (string, <-chan error, *events.Subscription) {
	t.Helper()
	mon := events.NewMonitor()
	sub := mon.Subscribe(64)
	dst.SetEvents(mon)
	sock := filepath.Join(dir, fmt.Sprintf("mig%d.sock", time.Now().UnixNano()))
	req.ReceiverURL = "unix:" + sock
	recv := make(chan error, 1)
	go func() { recv <- dst.ReceiveMigration(ctx, req) }()
	for {
		select {
		case e := <-sub.Events():
			if e.Event == "receiving-migration" {
				return sock, recv, sub
			}
		case err := <-recv:
			t.Fatalf("the destination stopped before it listened: %v", err)
		case <-ctx.Done():
			t.Fatal("the destination never listened")
		}
	}
}

// drain returns the events sub has queued, by name.
func drain(sub *events.Subscription) map[string]map[string]string {
	out := map[string]map[string]string{}
	for {
		select {
		case e := <-sub.Events():
			out[e.Event] = e.Properties
		default:
			return out
		}
	}
}

// A VM whose NIC is a pass-through device with a virtio-net standby
// migrates: the source asks its guest to release the primary and waits
// for it, resets and closes the host device, and only then migrates; the
// destination plugs the same host device in again once the guest runs
// there, announcing it through hot plug; its config lists the primary.
func TestFailoverMigration(t *testing.T) {
	r := newFailoverRig(t)
	src := r.boot(t)
	sv := vmOf(t, src)
	r.wantEvents(t, "at boot", "open "+primaryBDF, "reset "+primaryBDF)
	if ps := sv.primaries(); len(ps) != 1 || ps[0].cfg.ID != "vf0" {
		t.Fatalf("the source's primaries: %v", ps)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dst := r.controller(t)
	sock, recv, sub := receiveAt(t, ctx, r.dir, dst, ReceiveMigration{})
	srcMon := events.NewMonitor()
	srcSub := srcMon.Subscribe(64)
	src.SetEvents(srcMon)
	if err := src.SendMigration(ctx, SendMigration{DestinationURL: "unix:" + sock}); err != nil {
		t.Fatalf("SendMigration: %v", err)
	}
	if err := <-recv; err != nil {
		t.Fatalf("ReceiveMigration: %v", err)
	}
	// Released by the source (reset, closed) before the destination
	// opened it: one device, as two processes of one host see it.
	r.wantEvents(t, "after the migration", "open "+primaryBDF, "reset "+primaryBDF, "reset "+primaryBDF, "close "+primaryBDF,
		"open "+primaryBDF, "reset "+primaryBDF)
	if ev := drain(srcSub); ev["device-removed"]["id"] != "vf0" || ev["device-removed"]["reason"] != "migration" {
		t.Errorf("the source's events: %v", ev)
	}
	dv := vmOf(t, dst)
	ps := dv.primaries()
	if len(ps) != 1 || ps[0].cfg.Path != devPath(primaryBDF) {
		t.Fatalf("the destination's primaries: %v", ps)
	}
	r.guest.waitPlug(t, dv, ps[0].hp.slot, "the destination")
	if ev := drain(sub); ev["device-added"]["id"] != "vf0" || ev["device-added"]["bdf"] != bdfString(ps[0].hp.slot) {
		t.Errorf("the destination's events: %v", ev)
	}
	info, _ := dst.Info()
	if len(info.Config.Devices) != 1 || info.Config.Devices[0].ID != "vf0" || info.Config.Devices[0].Failover != "sb" {
		t.Errorf("the destination's config has devices %+v", info.Config.Devices)
	}
	wantControllerState(t, src, StateShutdown, "the source")
	// The plug did not count as a change of the VM's devices: it can
	// migrate on.
	if err := dv.hotplugChanged("migrate"); err != nil {
		t.Errorf("after the primary was plugged back: %v", err)
	}
}

// A guest that does not release its primary in time: the migration is
// refused with a sentence naming the device, the eject request is
// withdrawn (the guest is told the slot has its device), and the VM runs
// on here with the device plugged, never closed.
func TestFailoverMigrationNotReleased(t *testing.T) {
	r := newFailoverRig(t)
	src := r.boot(t)
	sv := vmOf(t, src)
	r.guest.setHold(true)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dst := r.controller(t)
	rctx, rcancel := context.WithCancel(ctx)
	sock, recv, _ := receiveAt(t, rctx, r.dir, dst, ReceiveMigration{})
	err := src.SendMigration(ctx, SendMigration{DestinationURL: "unix:" + sock, UnplugWait: 50 * time.Millisecond})
	if !errors.Is(err, ErrNotReleased) || !strings.Contains(err.Error(), "did not release pass-through device vf0 ("+primaryBDF+"), the failover primary of NIC sb") {
		t.Fatalf("SendMigration with a guest that holds on: %v", err)
	}
	rcancel()
	<-recv
	wantControllerState(t, src, StateRunning, "the source")
	ps := sv.primaries()
	if len(ps) != 1 {
		t.Fatalf("the primary left the source: %v", ps)
	}
	r.guest.waitPlug(t, sv, ps[0].hp.slot, "after the withdrawal")
	r.wantEvents(t, "after the refusal", "open "+primaryBDF, "reset "+primaryBDF)
	// The guest answers late: the request was withdrawn, so the device
	// stays.
	r.guest.setHold(false)
	var b [4]byte
	binary.LittleEndian.PutUint32(b[:], 1<<ps[0].hp.slot)
	sv.pio.Write(hotplugPort+pcihp.RegEject, b[:])
	if len(sv.primaries()) != 1 {
		t.Fatal("a late eject after the withdrawal took the device")
	}
}

// The destination plugs the device that device_paths names; a name that
// is no failover primary fails the migration, and the source plugs its
// primary in again and runs on.
func TestFailoverMigrationDevicePaths(t *testing.T) {
	r := newFailoverRig(t)
	src := r.boot(t)
	sv := vmOf(t, src)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	bad := r.controller(t)
	sock, recv, _ := receiveAt(t, ctx, r.dir, bad, ReceiveMigration{DevicePaths: map[string]string{"vf9": devPath(otherBDF)}})
	err := src.SendMigration(ctx, SendMigration{DestinationURL: "unix:" + sock})
	rerr := <-recv
	if err == nil || rerr == nil || !strings.Contains(rerr.Error(), `device_paths names "vf9", which is not a failover primary of the migrated VM (its primaries: vf0)`) {
		t.Fatalf("a device_paths name that is no primary: send %v, receive %v", err, rerr)
	}
	wantControllerState(t, src, StateRunning, "the source after the failed migration")
	ps := sv.primaries()
	if len(ps) != 1 {
		t.Fatalf("the source's primary was not plugged in again: %v", ps)
	}
	r.guest.waitPlug(t, sv, ps[0].hp.slot, "the source after the failed migration")
	r.wantEvents(t, "after the failed migration", "open "+primaryBDF, "reset "+primaryBDF, "reset "+primaryBDF, "close "+primaryBDF,
		"open "+primaryBDF, "reset "+primaryBDF)

	dst := r.controller(t)
	sock, recv, _ = receiveAt(t, ctx, r.dir, dst, ReceiveMigration{DevicePaths: map[string]string{"vf0": devPath(otherBDF)}})
	if err := src.SendMigration(ctx, SendMigration{DestinationURL: "unix:" + sock}); err != nil {
		t.Fatal(err)
	}
	if err := <-recv; err != nil {
		t.Fatal(err)
	}
	dps := vmOf(t, dst).primaries()
	if len(dps) != 1 || dps[0].cfg.BDF() != otherBDF {
		t.Fatalf("the destination's primaries: %v, want %s", dps, otherBDF)
	}
	info, _ := dst.Info()
	if info.Config.Devices[0].Path != devPath(otherBDF) {
		t.Errorf("the destination's config names %s, want the device plugged", info.Config.Devices[0].Path)
	}
}

// A destination that cannot plug the primary (its device is in use
// here) runs the guest on its standby, says so in an event, and drops
// the primary from its config, so that vm.add-device can plug another.
func TestFailoverMigrationPlugFails(t *testing.T) {
	r := newFailoverRig(t)
	src := r.boot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dst := r.controller(t)
	r.host.Fail(otherBDF, errors.New("vfio: the device is in use by VM x (pid 1): stop that VM first"))
	sock, recv, sub := receiveAt(t, ctx, r.dir, dst, ReceiveMigration{DevicePaths: map[string]string{"vf0": devPath(otherBDF)}})
	if err := src.SendMigration(ctx, SendMigration{DestinationURL: "unix:" + sock}); err != nil {
		t.Fatal(err)
	}
	if err := <-recv; err != nil {
		t.Fatal(err)
	}
	wantControllerState(t, dst, StateRunning, "the destination")
	if ps := vmOf(t, dst).primaries(); len(ps) != 0 {
		t.Fatalf("the destination has primaries %v", ps)
	}
	if ev := drain(sub)["device-add-failed"]; ev["id"] != "vf0" || !strings.Contains(ev["error"], "in use") {
		t.Errorf("device-add-failed: %v", ev)
	}
	info, _ := dst.Info()
	if len(info.Config.Devices) != 0 {
		t.Errorf("the destination's config keeps %+v", info.Config.Devices)
	}
	if _, err := dst.AddDevice(config.Device{ID: "vf0", Path: devPath(primaryBDF), Failover: "sb"}); err != nil {
		t.Errorf("vm.add-device of another primary: %v", err)
	}
}

// Pass-through hot plug: vm.add-device plugs a host device into the
// running guest (announced through hot plug), vm.remove-device asks the
// guest to release it and, once it has, resets and closes the host
// device; refusals are one sentence each.
func TestPassthroughHotplug(t *testing.T) {
	r := newFailoverRig(t)
	r.cfg.Devices = nil
	r.cfg.Net = append(r.cfg.Net, config.Net{ID: "sb2", User: &config.UserNet{}, MAC: "52:54:00:fa:11:0f", Standby: true})
	// The standby on a stream socket, where the test sees its frames.
	link := filepath.Join(r.dir, "link.sock")
	l, err := net.Listen("unix", link)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	r.cfg.Net[0].User, r.cfg.Net[0].Socket = nil, link
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			accepted <- c
		}
	}()
	r.host.Add("0000:00:07.0", vfiopcitest.ClassNVMe)
	c := r.boot(t)
	c2 := c
	v := vmOf(t, c)
	info, err := c.AddDevice(config.Device{ID: "vf0", Path: devPath(primaryBDF), Failover: "sb"})
	if err != nil {
		t.Fatal(err)
	}
	ps := v.primaries()
	if len(ps) != 1 || info.BDF != bdfString(ps[0].hp.slot) {
		t.Fatalf("AddDevice: %+v, primaries %v", info, ps)
	}
	r.guest.waitPlug(t, v, ps[0].hp.slot, "vm.add-device")
	for _, c := range []struct {
		d    config.Device
		want string
	}{
		{config.Device{ID: "x", Path: devPath("0000:00:07.0"), Failover: "sb2"}, "0000:00:07.0 is not a network controller (PCI class 0x01)"},
		{config.Device{ID: "y", Path: devPath(otherBDF), Failover: "nope"}, "failover=nope names no NIC"},
		{config.Device{ID: "vf0", Path: devPath(otherBDF)}, `two devices have id "vf0"`},
		{config.Device{ID: "z", Path: devPath("0000:00:09.0")}, "no such device"},
		{config.Device{ID: "w", Path: devPath(primaryBDF)}, "devices 0000:00:05.0 and 0000:00:05.0 name one host device"},
	} {
		if _, err := c2.AddDevice(c.d); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("AddDevice %+v: %v, want %q", c.d, err, c.want)
		}
	}
	if err := c.RemoveDevice("sb"); err == nil || !strings.Contains(err.Error(), "cannot remove NIC sb: it is the standby of failover primary vf0") {
		t.Errorf("removing the standby of a plugged primary: %v", err)
	}
	// A snapshot names what to do with the primary.
	if err := c.Pause(); err != nil {
		t.Fatal(err)
	}
	if err := c.Snapshot("file://" + filepath.Join(r.dir, "snap")); !errors.Is(err, ErrNotSaveable) || !strings.Contains(err.Error(), "remove it (vm.remove-device vf0") {
		t.Errorf("snapshot with a primary plugged: %v", err)
	}
	if err := c.Resume(); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveDevice("vf0"); err != nil {
		t.Fatal(err)
	}
	// The standby announced the guest's MAC address as the primary left.
	var conn net.Conn
	select {
	case conn = <-accepted:
	case <-time.After(nicWait): // bounds a hang
		t.Fatal("the standby never connected to its socket")
	}
	defer conn.Close()
	conn.SetReadDeadline(time.Now().Add(nicWait))
	mac, _ := config.ParseMAC(standbyMAC)
	buf := make([]byte, netdev.MaxFrameLen)
	for i := range announceRounds {
		n, err := socket.ReadFrame(conn, buf, 0)
		if err != nil {
			t.Fatalf("announcement %d: %v", i, err)
		}
		if !bytes.Equal(buf[:n], frame.RARP(mac)) {
			t.Fatalf("the standby sent % x, want a RARP announcement of %s", buf[:n], standbyMAC)
		}
	}
	// The NVMe refused as a primary was released at once.
	r.wantEvents(t, "after the removal", "open "+primaryBDF, "reset "+primaryBDF, "open 0000:00:07.0", "reset 0000:00:07.0",
		"reset 0000:00:07.0", "close 0000:00:07.0", "reset "+primaryBDF, "close "+primaryBDF)
	if len(v.primaries()) != 0 {
		t.Fatal("the primary stays after its removal")
	}
	info2, _ := c.Info()
	if len(info2.Config.Devices) != 0 {
		t.Errorf("the config keeps %+v", info2.Config.Devices)
	}
	if err := v.hotplugChanged("snapshot"); err != nil {
		t.Errorf("a pass-through device's coming and going counts as a change: %v", err)
	}
}

// A VM with a pass-through device that is not a failover primary
// refuses to migrate, naming it, before anything is unplugged.
func TestMigrationRefusesOtherPassthrough(t *testing.T) {
	r := newFailoverRig(t)
	r.cfg.Devices = append(r.cfg.Devices, config.Device{ID: "nv", Path: devPath(otherBDF)})
	src := r.boot(t)
	err := src.SendMigration(context.Background(), SendMigration{DestinationURL: "unix:" + filepath.Join(r.dir, "none.sock")})
	if !errors.Is(err, ErrNotSaveable) || !strings.Contains(err.Error(), "pass-through device nv ("+otherBDF+") keeps its state in hardware") {
		t.Fatalf("migrating with a plain pass-through device: %v", err)
	}
	r.wantEvents(t, "after the refusal", "open "+primaryBDF, "reset "+primaryBDF, "open "+otherBDF, "reset "+otherBDF)
}
