package vmm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/config"
	virtionet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/migration"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/tap"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// These tests migrate real VMs (as migrate_disk_internal_test.go does)
// with a virtio NIC on a real, persistent TAP of this host, between two
// Controllers of this process: a single-queue TAP takes one descriptor,
// so the destination can only attach it once the source has closed its
// own, as between two processes. The test plays the guest's virtio-net
// driver (virtiopcitest, through the VM's own configuration ports, MMIO
// bus and RAM: the synthetic kernel only halts) and the host's side of
// the link (a UDP socket on the TAP's address).

const nicWait = 10 * time.Second // bounds a hang; never a synchronization

var nicGuestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x4e, 0x49, 0x43}

// tapHost is a TAP device the test made, and the host's end of it.
type tapHost struct {
	name            string
	mac             net.HardwareAddr
	hostIP, guestIP net.IP
	sock            *net.UDPConn // on hostIP
	port            int
	guestPort       int
}

var tapSeq int

// newTAP creates a persistent TAP (as ip tuntap add does) in this
// network namespace, with the host's address and a permanent neighbour
// entry for the guest's, IPv6 off (its chatter would take the guest's
// receive buffers), up; it is deleted at cleanup. Names and addresses
// carry the process id: other test processes may make theirs meanwhile.
func newTAP(t *testing.T) *tapHost {
	t.Helper()
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no TAP devices here: %v", err)
	}
	tapSeq++
	pid := os.Getpid()
	h := &tapHost{
		name:    fmt.Sprintf("viomg%d%c", pid%10000000, 'a'+tapSeq%26),
		hostIP:  net.IPv4(10, byte(pid>>8), byte(pid), 1).To4(),
		guestIP: net.IPv4(10, byte(pid>>8), byte(pid), 2).To4(),
	}
	link := &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: h.name}, Mode: netlink.TUNTAP_MODE_TAP}
	if err := netlink.LinkAdd(link); err != nil {
		t.Fatalf("creating TAP %s: %v", h.name, err)
	}
	t.Cleanup(func() { netlink.LinkDel(link) })
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+h.name+"/disable_ipv6", []byte("1"), 0); err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: h.hostIP, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(link); err != nil {
		t.Fatal(err)
	}
	l, err := netlink.LinkByName(h.name)
	if err != nil {
		t.Fatal(err)
	}
	h.mac = l.Attrs().HardwareAddr
	if err := netlink.NeighAdd(&netlink.Neigh{LinkIndex: l.Attrs().Index, State: netlink.NUD_PERMANENT, IP: h.guestIP, HardwareAddr: nicGuestMAC}); err != nil {
		t.Fatal(err)
	}
	if h.sock, err = net.ListenUDP("udp4", &net.UDPAddr{IP: h.hostIP}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.sock.Close() })
	h.port = h.sock.LocalAddr().(*net.UDPAddr).Port
	h.guestPort = 4242
	return h
}

// attachable says whether another process could attach the TAP now (it
// closes what it opened), and if not why.
func (h *tapHost) attachable() error {
	tp, err := tap.Open(h.name)
	if err != nil {
		return err
	}
	return tp.Close()
}

func (h *tapHost) wantHeld(t *testing.T, who string) {
	t.Helper()
	if err := h.attachable(); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("attaching the TAP while %s should hold it: %v, want EBUSY", who, err)
	}
}

// nicRig is a diskRig whose VM also has a virtio NIC on a TAP.
func newNICRig(t *testing.T) (*diskRig, *tapHost) {
	t.Helper()
	h := newTAP(t)
	r := newDiskRig(t, false)
	r.cfg.Net = []config.Net{{ID: "n0", Tap: h.name, MAC: nicGuestMAC.String()}}
	return r, h
}

// Ring addresses in guest RAM (32 MiB), clear of the synthetic kernel.
const (
	nicRxBase = 16 << 20
	nicTxBase = 20 << 20
	nicData   = 1 << 20
	nicRxBufs = 32
	nicBufLen = 2048
)

// nicGuest plays the guest's virtio-net driver.
type nicGuest struct {
	g      *virtiopcitest.Guest
	rx, tx *queuetest.Driver
}

// nicSlot returns the PCI slot of the VM's NIC n0.
func nicSlot(t *testing.T, v *VM) uint8 {
	t.Helper()
	v.hp.mu.Lock()
	defer v.hp.mu.Unlock()
	for _, d := range v.pciDevices {
		if d.hp != nil && d.hp.id == "n0" {
			return d.hp.slot
		}
	}
	t.Fatal("the VM has no NIC n0")
	return 0
}

// driveNIC brings the NIC up as Linux's virtio_net would, negotiating
// checksum offload both ways (so the TAP must hand the guest the host's
// datagrams with partial checksums), and posts receive buffers.
func driveNIC(t *testing.T, v *VM) *nicGuest {
	t.Helper()
	g, err := virtiopcitest.Probe(v.mmio, v.pio, v.mem, pci.BDF{Device: nicSlot(t, v)})
	if err != nil {
		t.Fatal(err)
	}
	feat := virtio.FeatureVersion1 | virtionet.FeatureMAC | virtionet.FeatureCsum | virtionet.FeatureGuestCsum
	if g.DeviceFeatures()&feat != feat {
		t.Fatalf("the NIC offers %#x, want %#x", g.DeviceFeatures(), feat)
	}
	if err := g.Negotiate(feat); err != nil {
		t.Fatal(err)
	}
	n := &nicGuest{g: g}
	if n.rx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: virtionet.RxQueue, Vector: virtiopci.NoVector, Size: 64, Base: nicRxBase, DataSize: nicData}); err != nil {
		t.Fatal(err)
	}
	if n.tx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: virtionet.TxQueue, Vector: virtiopci.NoVector, Size: 64, Base: nicTxBase, DataSize: nicData}); err != nil {
		t.Fatal(err)
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("the NIC's status is %#x", s)
	}
	for range nicRxBufs {
		if _, err := n.rx.Add(nil, []uint32{nicBufLen}); err != nil {
			t.Fatal(err)
		}
	}
	g.Kick(virtionet.RxQueue)
	return n
}

// queueFrame makes a UDP datagram from the guest to the host's socket
// available on the transmit queue, without a kick: the device only finds
// it when it polls the ring, as a restored device does when it starts.
func (n *nicGuest) queueFrame(t *testing.T, h *tapHost, payload string) {
	t.Helper()
	udp := make([]byte, 8, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], uint16(h.guestPort))
	binary.BigEndian.PutUint16(udp[2:], uint16(h.port))
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload)))
	udp = append(udp, payload...) // checksum 0: none, which IPv4 allows
	ip := make([]byte, 20, 20+len(udp))
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(20+len(udp)))
	ip[8], ip[9] = 64, 17
	copy(ip[12:], h.guestIP)
	copy(ip[16:], h.hostIP)
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	frame := append(append(append(append([]byte(nil), h.mac...), nicGuestMAC...), 0x08, 0x00), append(ip, udp...)...)
	if _, err := n.tx.Add([][]byte{make([]byte, netdev.HeaderSize), frame}, nil); err != nil {
		t.Fatal(err)
	}
}

// hostReceives waits for the guest's datagram with payload at the host's
// socket.
func (h *tapHost) hostReceives(t *testing.T, payload string) {
	t.Helper()
	buf := make([]byte, 2048)
	h.sock.SetReadDeadline(time.Now().Add(nicWait))
	for {
		k, from, err := h.sock.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("waiting for the guest's %q at the host: %v", payload, err)
		}
		if string(buf[:k]) == payload && from.IP.Equal(h.guestIP) {
			return
		}
	}
}

// guestReceives sends datagrams with payload from the host to the guest
// until find reports one in the guest's receive buffers. It sends more
// than once: a TAP just attached comes up asynchronously (carrier on,
// then the kernel's link watch activates its queue), and what the host
// sends before is dropped, as what it sends while no one holds the TAP.
func (h *tapHost) guestReceives(t *testing.T, payload string, find func() (netdev.Header, bool)) netdev.Header {
	t.Helper()
	for deadline := time.Now().Add(nicWait); time.Now().Before(deadline); {
		if _, err := h.sock.WriteToUDP([]byte(payload), &net.UDPAddr{IP: h.guestIP, Port: h.guestPort}); err != nil {
			t.Fatal(err)
		}
		for tick := time.Now().Add(100 * time.Millisecond); time.Now().Before(tick); time.Sleep(5 * time.Millisecond) {
			if hdr, ok := find(); ok {
				return hdr
			}
		}
	}
	t.Fatalf("the host's %q never reached the guest", payload)
	return netdev.Header{}
}

// isDatagram reports whether a received packet (header and frame) is a
// UDP datagram carrying payload, and returns its header.
func isDatagram(pkt []byte, payload string) (netdev.Header, bool) {
	if len(pkt) < netdev.HeaderSize+42 {
		return netdev.Header{}, false
	}
	f := pkt[netdev.HeaderSize:]
	if f[12] != 0x08 || f[13] != 0 || f[23] != 17 || string(f[42:]) != payload {
		return netdev.Header{}, false
	}
	return netdev.DecodeHeader(pkt), true
}

// viaDriver finds payload among the used receive buffers, through the
// driver (the VM whose RAM it drives).
func (n *nicGuest) viaDriver(payload string) func() (netdev.Header, bool) {
	return func() (netdev.Header, bool) {
		for {
			u, ok, err := n.rx.GetUsed()
			if err != nil || !ok {
				return netdev.Header{}, false
			}
			if hdr, ok := isDatagram(u.Data, payload); ok {
				return hdr, true
			}
		}
	}
}

// inRAM finds payload among the used receive buffers of the ring n set
// up, read straight from mem: another VM's RAM, a migration's
// destination, whose ring is the one the driver set up at the source.
func (n *nicGuest) inRAM(mem *memory.Memory, payload string) func() (netdev.Header, bool) {
	q := n.rx.Config()
	return func() (netdev.Header, bool) {
		idx, err := mem.LoadUint16(q.UsedRing + 2)
		if err != nil {
			return netdev.Header{}, false
		}
		for i := uint16(0); i != idx; i++ {
			elem := q.UsedRing + 4 + 8*uint64(i%q.Size)
			id, err1 := mem.LoadUint32(elem)
			l, err2 := mem.LoadUint32(elem + 4)
			var d [8]byte
			_, err3 := mem.ReadAt(d[:], int64(q.DescTable+16*uint64(id%uint32(q.Size))))
			if err1 != nil || err2 != nil || err3 != nil || l > nicBufLen {
				continue
			}
			pkt, err := mem.Slice(binary.LittleEndian.Uint64(d[:]), uint64(l))
			if err != nil {
				continue
			}
			if hdr, ok := isDatagram(pkt, payload); ok {
				return hdr, true
			}
		}
		return netdev.Header{}, false
	}
}

func wantPartialChecksum(t *testing.T, hdr netdev.Header, who string) {
	t.Helper()
	if hdr.Flags&netdev.FlagNeedsCsum == 0 {
		t.Fatalf("%s got the host's datagram with header %+v: the TAP was not told that the guest takes partial checksums", who, hdr)
	}
}

// nicOf returns the VM's NIC handoff n0.
func nicOf(t *testing.T, v *VM) vmNIC {
	t.Helper()
	for _, n := range v.nicHandoffs() {
		if n.id == "n0" {
			return n
		}
	}
	t.Fatal("the VM has no TAP NIC n0")
	return vmNIC{}
}

// A VM migrates with a virtio NIC on a persistent single-queue TAP (and
// its two disks). While the source runs, nobody else can attach the TAP
// (EBUSY) and the host's datagrams reach its guest with partial checksums
// (the guest negotiated checksum offload). The destination builds its NIC
// without the TAP (the source still holds it while the destination is
// built); when it takes the disks the TAP is free; afterwards it holds
// the TAP: a frame the guest had queued at the source before the
// switchover (never kicked, so the source's device never sent it) leaves
// from the destination, and a datagram the host sends after the
// switchover reaches the destination's device, with a partial checksum
// too: the destination's TAP got the offloads the restored guest had
// negotiated.
func TestMigrationHandsTAPOver(t *testing.T) {
	r, h := newNICRig(t)
	src := r.source(t)
	sv := vmOf(t, src)
	h.wantHeld(t, "the running source")
	ng := driveNIC(t, sv)
	wantPartialChecksum(t, h.guestReceives(t, "to the source", ng.viaDriver("to the source")), "the source")
	ng.queueFrame(t, h, "queued at the source")

	var builtChecked, took bool
	dst := destination(t, func(dv *VM) {
		if err := h.attachable(); !errors.Is(err, unix.EBUSY) {
			t.Errorf("the source does not hold the TAP while the destination is built: %v", err)
		}
		if n := nicOf(t, dv); n.h.Active() {
			t.Error("the destination attached the TAP at build time")
		}
		builtChecked = true
	}, func(m IncomingMachine) error {
		if err := h.attachable(); err != nil {
			t.Errorf("the TAP when the destination takes it (the source should have closed it): %v", err)
			return err
		}
		took = true
		return m.TakeResources()
	})
	sendErr, recvErr := migrate(t, r.dir, src, dst, false, nil)
	if sendErr != nil || recvErr != nil {
		t.Fatalf("send: %v; receive: %v", sendErr, recvErr)
	}
	if !builtChecked || !took {
		t.Fatalf("the destination's hooks did not run (built %v, took %v)", builtChecked, took)
	}
	wantControllerState(t, src, StateShutdown, "the source")
	wantControllerState(t, dst, StateRunning, "the destination")
	dv := vmOf(t, dst)
	if !nicOf(t, dv).h.Active() {
		t.Fatal("the destination's NIC has no TAP")
	}
	h.wantHeld(t, "the destination")
	h.hostReceives(t, "queued at the source")
	wantPartialChecksum(t, h.guestReceives(t, "to the destination", ng.inRAM(dv.mem, "to the destination")), "the destination")
	r.wantLocked(t, "the destination")
	if err := dst.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := h.attachable(); err != nil {
		t.Fatalf("the TAP after the destination stopped: %v", err)
	}
}

// A migration that fails after the source closed its TAP (the destination
// refuses to run the VM) leaves the source running with its TAP attached
// again, its guest receiving with the offloads it negotiated.
func TestMigrationFailsSourceKeepsTAP(t *testing.T) {
	r, h := newNICRig(t)
	src := r.source(t)
	sv := vmOf(t, src)
	ng := driveNIC(t, sv)
	released := false
	dst := destination(t, nil, func(IncomingMachine) error {
		released = h.attachable() == nil
		return errors.New("refused by the test")
	})
	sendErr, _ := migrate(t, r.dir, src, dst, false, nil)
	if sendErr == nil || !strings.Contains(sendErr.Error(), "refused by the test") {
		t.Fatalf("the source: %v", sendErr)
	}
	if !released {
		t.Fatal("the source did not close its TAP at the switchover")
	}
	wantControllerState(t, src, StateRunning, "the source")
	wantControllerState(t, dst, NoVM, "the destination")
	if !nicOf(t, sv).h.Active() {
		t.Fatal("the source's NIC has no TAP after the failed migration")
	}
	h.wantHeld(t, "the source after the failed migration")
	r.wantLocked(t, "the source after the failed migration")
	wantPartialChecksum(t, h.guestReceives(t, "after the failed migration", ng.viaDriver("after the failed migration")), "the source")
}

// A destination that cannot attach the TAP (another process took it in
// between) fails the migration, saying so; the source attaches again and
// runs.
func TestMigrationDestinationCannotAttachTAP(t *testing.T) {
	r, h := newNICRig(t)
	src := r.source(t)
	dst := destination(t, nil, func(m IncomingMachine) error {
		other, err := tap.Open(h.name)
		if err != nil {
			t.Errorf("the source did not close its TAP: %v", err)
			return err
		}
		defer other.Close() // before the source hears "failed"
		return m.TakeResources()
	})
	sendErr, recvErr := migrate(t, r.dir, src, dst, false, nil)
	if recvErr == nil || !strings.Contains(recvErr.Error(), "the destination cannot open the VM's TAP devices (NIC n0: ") || !errors.Is(recvErr, unix.EBUSY) {
		t.Fatalf("the destination: %v", recvErr)
	}
	if sendErr == nil || !errors.Is(sendErr, migration.ErrDestination) {
		t.Fatalf("the source: %v", sendErr)
	}
	wantControllerState(t, src, StateRunning, "the source")
	h.wantHeld(t, "the source after the failed migration")
	r.wantLocked(t, "the source after the failed migration")
}

// A source that cannot attach its TAP again when the migration fails
// (another process holds it) stays paused and says so; vm.resume attaches
// it first, failing while the other holds on and succeeding once it lets
// go.
func TestMigrationSourceCannotTakeTAPBack(t *testing.T) {
	r, h := newNICRig(t)
	src := r.source(t)
	sv := vmOf(t, src)
	var other *tap.Tap
	dst := destination(t, nil, func(IncomingMachine) error {
		var err error
		if other, err = tap.Open(h.name); err != nil {
			t.Errorf("the source did not close its TAP: %v", err)
		}
		return errors.New("refused by the test")
	})
	sendErr, _ := migrate(t, r.dir, src, dst, false, nil)
	if other == nil {
		t.Fatal("the destination's hook did not run or could not attach")
	}
	if sendErr == nil || !strings.Contains(sendErr.Error(), "the VM stays paused here because its TAP devices could not be opened again") || !strings.Contains(sendErr.Error(), "NIC n0: ") {
		t.Fatalf("the source: %v", sendErr)
	}
	wantControllerState(t, src, StatePaused, "the source")
	if err := src.Resume(); err == nil || !strings.Contains(err.Error(), "the TAP devices a migration released could not be opened again") {
		t.Fatalf("vm.resume while another holds the TAP: %v", err)
	}
	wantControllerState(t, src, StatePaused, "the source")
	other.Close()
	if err := src.Resume(); err != nil {
		t.Fatalf("vm.resume once the TAP is free: %v", err)
	}
	wantControllerState(t, src, StateRunning, "the source")
	h.wantHeld(t, "the resumed source")
	if !nicOf(t, sv).h.Active() {
		t.Fatal("the resumed source's NIC has no TAP")
	}
}

// A TAP that is not persistent (vio created it: the name did not exist)
// would vanish if the source closed it, so the source keeps it: a
// destination on the same host cannot attach it and the migration fails,
// the source running on with its TAP, which still exists.
func TestMigrationKeepsTransientTAP(t *testing.T) {
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		t.Skipf("no TAP devices here: %v", err)
	}
	r := newDiskRig(t, false)
	name := fmt.Sprintf("viomt%d", os.Getpid()%10000000)
	r.cfg.Net = []config.Net{{ID: "n0", Tap: name}}
	src := r.source(t)
	sendErr, recvErr := migrate(t, r.dir, src, destination(t, nil, nil), false, nil)
	if recvErr == nil || !errors.Is(recvErr, unix.EBUSY) || sendErr == nil {
		t.Fatalf("send: %v; receive: %v; want the destination's attach refused (EBUSY)", sendErr, recvErr)
	}
	wantControllerState(t, src, StateRunning, "the source")
	if !nicOf(t, vmOf(t, src)).h.Active() {
		t.Fatal("the source let its TAP go")
	}
	if _, err := netlink.LinkByName(name); err != nil {
		t.Fatalf("the source's TAP is gone: %v", err)
	}
	if _, err := tap.Open(name); !errors.Is(err, unix.EBUSY) {
		t.Fatalf("attaching the source's TAP: %v, want EBUSY", err)
	}
}

// A migration whose outcome the source cannot know (the connection breaks
// after everything was sent) leaves the source paused with its TAP
// closed, since the destination may run the guest on it, as here it does:
// vm.resume at the source fails on the destination's TAP (EBUSY) until
// the destination stops, then attaches it and runs.
func TestMigrationOutcomeUnknownKeepsTAPReleased(t *testing.T) {
	r, h := newNICRig(t)
	src := r.source(t)
	var p *proxy
	dst := destination(t, nil, func(m IncomingMachine) error {
		p.cut() // the source hears nothing from here on
		return m.TakeResources()
	})
	sendErr, recvErr := migrate(t, r.dir, src, dst, false, func(to string) string {
		p = newProxy(t, filepath.Join(r.dir, "proxy.sock"), to)
		return p.addr
	})
	if !errors.Is(sendErr, migration.ErrOutcomeUnknown) || recvErr != nil {
		t.Fatalf("send: %v, want the outcome unknown; receive: %v", sendErr, recvErr)
	}
	wantControllerState(t, src, StatePaused, "the source")
	h.wantHeld(t, "the destination")
	if err := src.Resume(); err == nil || !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), "check that it does not run at the migration's destination") {
		t.Fatalf("vm.resume at the source while the destination runs: %v", err)
	}
	wantControllerState(t, src, StatePaused, "the source")
	if err := dst.Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := src.Resume(); err != nil {
		t.Fatalf("vm.resume at the source once the destination is gone: %v", err)
	}
	wantControllerState(t, src, StateRunning, "the source")
	h.wantHeld(t, "the resumed source")
}

// NICs on other back-ends are not handed over: each side has its own (a
// user-mode network here), and the VM migrates with them as before.
func TestMigrationWithUserNetwork(t *testing.T) {
	r := newDiskRig(t, false)
	r.cfg.Net = []config.Net{{ID: "u0", User: &config.UserNet{}}}
	src := r.source(t)
	if n := vmOf(t, src).nicHandoffs(); len(n) != 0 {
		t.Fatalf("a user-mode NIC has a TAP handoff: %v", n)
	}
	if sendErr, recvErr := migrate(t, r.dir, src, destination(t, nil, nil), false, nil); sendErr != nil || recvErr != nil {
		t.Fatalf("send: %v; receive: %v", sendErr, recvErr)
	}
}
