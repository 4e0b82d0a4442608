package net_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	stdnet "net"
	"testing"

	vnet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/pci"
	"github.com/viovmm/vio/state"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// heldWrites is a back-end whose WriteFrames, once armed, announces
// itself and waits for release, and which reports each ReadFrames call
// on reading and each that returned packets on read.
type heldWrites struct {
	*nettest.Endpoint
	armed   chan struct{} // a token arms one write
	entered chan struct{}
	release chan struct{}
	reading chan struct{}
	read    chan struct{}
}

func newHeldWrites(e *nettest.Endpoint) *heldWrites {
	return &heldWrites{Endpoint: e, armed: make(chan struct{}, 1), entered: make(chan struct{}), release: make(chan struct{}),
		reading: make(chan struct{}, 64), read: make(chan struct{}, 64)}
}

func (h *heldWrites) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	h.reading <- struct{}{}
	n, err := h.Endpoint.ReadFrames(bufs, sizes)
	if n > 0 {
		h.read <- struct{}{}
	}
	return n, err
}

func (h *heldWrites) WriteFrames(frames [][][]byte) (int, error) {
	select {
	case <-h.armed:
		h.entered <- struct{}{}
		<-h.release
	default:
	}
	return h.Endpoint.WriteFrames(frames)
}

// ring returns the device's position in queue i's available ring, as the
// transport would save it.
func ring(t *testing.T, tr *virtiopci.Transport, i int) (nextAvail, nextUsed uint16) {
	t.Helper()
	s, err := tr.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	r := s.Queues[i].Ring
	if r == nil {
		t.Fatalf("queue %d not running", i)
	}
	return r.NextAvail, r.NextUsed
}

// saveRestore saves m's transport and device through an encoded file and
// restores them into a fresh device on be (and more, one back-end per
// further queue pair) over the same guest memory, which m then drives.
func saveRestore(t *testing.T, m *machine, be netdev.Backend, cfg vnet.Config, more ...netdev.Backend) {
	t.Helper()
	snap := state.New()
	if err := snap.Save("nic/pci", m.tr); err != nil {
		t.Fatal(err)
	}
	if err := snap.Save("nic/net", m.dev); err != nil {
		t.Fatal(err)
	}
	var file bytes.Buffer
	if err := snap.Encode(&file); err != nil {
		t.Fatal(err)
	}
	snap2, err := state.Decode(&file)
	if err != nil {
		t.Fatal(err)
	}
	dev2, err := vnet.NewMultiQueue(append([]netdev.Backend{be}, more...), cfg)
	if err != nil {
		t.Fatal(err)
	}
	m2 := virtiopcitest.NewMachineOn(t, dev2, m.mem, 4096)
	if err := snap2.Restore("nic/pci", m2.Transport); err != nil {
		t.Fatal(err)
	}
	if err := snap2.Restore("nic/net", dev2); err != nil {
		t.Fatal(err)
	}
	m2.Root.Resync()
	g2, err := virtiopcitest.Probe(m2.MMIO, m2.PIO, m.mem, pci.BDF{Device: 1})
	if err != nil {
		t.Fatal(err)
	}
	m.dev, m.tr, m.guest, m.router = dev2, m2.Transport, g2, m2.Router
	m.early = map[int]int{}
}

// TestPauseSaveRestore: a frame on the back-end when Pause is called is
// sent and its used entry written before Pause returns; the receive
// buffer the device held while waiting for the network goes back to the
// ring; nothing is taken while paused (a frame from the guest, one from
// the network); and a fresh device restored over the same guest memory
// carries on: every frame crosses exactly once, both ways.
func TestPauseSaveRestore(t *testing.T) {
	devEnd, peer := nettest.Pair(256)
	be := newHeldWrites(devEnd)
	mac := stdnet.HardwareAddr{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	m := newMachineOn(t, be, vnet.Config{MAC: mac})
	m.start(t, vnet.FeatureMrgRxbuf|vnet.FeatureMAC|vnet.FeatureStatus, true)
	m.dev.SetLink(false)
	m.post(t, 2, 2048)
	if err := peer.Send(netdev.Header{}, frame(0, 100)); err != nil {
		t.Fatal(err)
	}
	<-be.reading
	m.used(t, m.rx, 1)
	<-be.reading // the device holds the second buffer and waits for the network

	be.armed <- struct{}{}
	m.send(t, netdev.Header{}, frame(100, 80), 12)
	<-be.entered
	paused := make(chan error, 1)
	go func() { paused <- m.dev.Pause(context.Background()) }()
	select {
	case err := <-paused:
		t.Fatalf("Pause returned (%v) with a frame on the back-end", err)
	default:
	}
	close(be.release)
	if err := <-paused; err != nil {
		t.Fatal(err)
	}
	if m.tx.UsedIdx() != 1 {
		t.Fatal("Pause returned before the transmitted frame's used entry was written")
	}
	if _, f, err := peer.Recv(wait); err != nil || !bytes.Equal(f, frame(100, 80)) {
		t.Fatalf("frame transmitted at the pause: %v", err)
	}
	if a, u := ring(t, m.tr, vnet.RxQueue); a != 1 || u != 1 {
		t.Fatalf("rx ring at avail %d used %d: the held buffer was not handed back", a, u)
	}

	// While paused: the network sends, the guest sends. Neither moves.
	if err := peer.Send(netdev.Header{}, frame(1, 200)); err != nil {
		t.Fatal(err)
	}
	m.send(t, netdev.Header{}, frame(101, 90), 12)
	if devEnd.Queued() != 1 {
		t.Fatalf("%d frames waiting in the back-end, want 1", devEnd.Queued())
	}
	if a, _ := ring(t, m.tr, vnet.TxQueue); a != 1 {
		t.Fatalf("the paused device took a transmit chain (next avail %d)", a)
	}
	m.tx.GetUsed() // the driver reclaims the first frame's buffer

	saveRestore(t, m, be, vnet.Config{MAC: stdnet.HardwareAddr{0x52, 0x54, 0, 9, 9, 9}})
	if got := m.dev.MAC(); !bytes.Equal(got, mac) {
		t.Errorf("MAC %v after restore, want %v", got, mac)
	}
	if s := m.guest.ReadDeviceConfig(6, 2); s != 0 {
		t.Errorf("status %#x after restore, link was down", s)
	}
	// The restored device takes what waited: the guest's frame goes out,
	// the network's lands in the buffer handed back at the pause.
	if _, f, err := peer.Recv(wait); err != nil || !bytes.Equal(f, frame(101, 90)) {
		t.Fatalf("frame queued while paused: %v", err)
	}
	u := m.used(t, m.rx, 1)[0]
	if !bytes.Equal(u.Data[netdev.HeaderSize:], frame(1, 200)) {
		t.Fatal("wrong frame in the returned buffer")
	}
	m.used(t, m.tx, 1)
	// And both directions keep working, once each.
	m.post(t, 1, 2048)
	peer.Send(netdev.Header{}, frame(2, 300))
	if u := m.used(t, m.rx, 1)[0]; !bytes.Equal(u.Data[netdev.HeaderSize:], frame(2, 300)) {
		t.Fatal("frame after restore")
	}
	m.send(t, netdev.Header{}, frame(102, 70), 12)
	if _, f, err := peer.Recv(wait); err != nil || !bytes.Equal(f, frame(102, 70)) {
		t.Fatalf("frame after restore: %v", err)
	}
	m.used(t, m.tx, 1)
	if peer.Queued() != 0 || devEnd.Queued() != 0 || m.rx.InFlight() != 0 || m.tx.InFlight() != 0 {
		t.Errorf("left over: network %d, back-end %d, rx in flight %d, tx in flight %d",
			peer.Queued(), devEnd.Queued(), m.rx.InFlight(), m.tx.InFlight())
	}
	if s := m.dev.Stats(); s.RxFrames != 2 || s.TxFrames != 2 || s.RxDropped+s.RxErrors+s.TxErrors+s.RxUnused != 0 {
		t.Errorf("restored device stats %+v", s)
	}
}

// TestRestorePendingPackets: packets the device had read from the
// back-end but not delivered when paused travel in the snapshot and
// reach the guest of the restored device, in order, before newer ones.
func TestRestorePendingPackets(t *testing.T) {
	m := newMachine(t, vnet.Config{})
	m.start(t, 0, true)
	for i := range 3 {
		m.peer.Send(netdev.Header{}, frame(i, 500))
	}
	m.post(t, 1, 2048) // one buffer: the device reads all three, places one
	m.used(t, m.rx, 1)
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m.devEnd.Queued() != 0 {
		t.Fatal("the device did not read the batch")
	}
	b, err := m.dev.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	var s vnet.State
	if err := json.Unmarshal(b, &s); err != nil || len(s.RxPending) != 1 || len(s.RxPending[0]) != 2 {
		t.Fatalf("saved pending packets: %v, %d pairs", err, len(s.RxPending))
	}
	saveRestore(t, m, m.devEnd, vnet.Config{})
	m.peer.Send(netdev.Header{}, frame(3, 500))
	m.post(t, 3, 2048)
	for i, u := range m.used(t, m.rx, 3) {
		if !bytes.Equal(u.Data[netdev.HeaderSize:], frame(i+1, 500)) {
			t.Fatalf("packet %d after restore: seq %v", i, u.Data[netdev.HeaderSize+14:netdev.HeaderSize+18])
		}
	}
	if m.devEnd.Queued() != 0 || m.rx.InFlight() != 0 {
		t.Errorf("back-end %d, in flight %d", m.devEnd.Queued(), m.rx.InFlight())
	}
}

// TestMultiQueueSaveRestore: a device with 2 queue pairs, both in use,
// with packets read from pair 1's back-end and not yet delivered, is saved
// and restored into a fresh device: the pair count comes back (pair 1's
// back-end queue is on again), the pending packets reach pair 1's receive
// queue in order before newer ones, and both pairs carry on.
func TestMultiQueueSaveRestore(t *testing.T) {
	a0, p0 := nettest.Pair(64)
	a1, p1 := nettest.Pair(64)
	m := newMachineOn(t, nil, vnet.Config{}, a0, a1)
	qs := m.startQueues(t, vnet.FeatureCtrlVQ|vnet.FeatureMQ, 5)
	if ack := m.command(t, qs[4], 4, 4, 0, []byte{2, 0}); ack != 0 {
		t.Fatalf("2 pairs: ack %d", ack)
	}
	for i := range 3 {
		p1.Send(netdev.Header{}, frame(i, 500))
	}
	qs[2].Add(nil, []uint32{2048}) // one buffer: the device reads all three, places one
	m.guest.Kick(2)
	m.used(t, qs[2], 1)
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a1.Queued() != 0 {
		t.Fatal("the device did not read the batch")
	}
	b, err := m.dev.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	var s vnet.State
	if err := json.Unmarshal(b, &s); err != nil || s.Pairs != 2 || len(s.RxPending) != 2 || len(s.RxPending[0]) != 0 || len(s.RxPending[1]) != 2 {
		t.Fatalf("saved state: %v, %d pairs, pending %d", err, s.Pairs, len(s.RxPending))
	}
	// The fresh device's back-ends start with pair 1's queue off, as a
	// device that was just activated leaves it.
	a1.SetQueueEnabled(false)
	saveRestore(t, m, a0, vnet.Config{}, a1)
	if !a1.QueueEnabled() {
		t.Error("pair 1's back-end queue off after restoring 2 pairs in use")
	}
	p1.Send(netdev.Header{}, frame(3, 500))
	qs[2].Add(nil, []uint32{2048})
	qs[2].Add(nil, []uint32{2048})
	qs[2].Add(nil, []uint32{2048})
	m.guest.Kick(2)
	for i, u := range m.used(t, qs[2], 3) {
		if !bytes.Equal(u.Data[netdev.HeaderSize:], frame(i+1, 500)) {
			t.Fatalf("packet %d on pair 1 after restore: seq %v", i, u.Data[netdev.HeaderSize+14:netdev.HeaderSize+18])
		}
	}
	for i, p := range []*nettest.Endpoint{p0, p1} {
		tx := qs[2*i+1]
		tx.Add([][]byte{make([]byte, netdev.HeaderSize), frame(20+i, 100)}, nil)
		m.guest.Kick(2*i + 1)
		if _, f, err := p.Recv(wait); err != nil || !bytes.Equal(f, frame(20+i, 100)) {
			t.Fatalf("pair %d transmit after restore: %v", i, err)
		}
	}
	if q := m.dev.QueueStats(); q[1].RxFrames != 3 || q[0].TxFrames != 1 || q[1].TxFrames != 1 {
		t.Errorf("restored device's queue stats %+v", q)
	}
}

// TestPauseResumeMidFrame: a paused device hands back the buffers it took
// for a packet it could not finish placing (mergeable buffers, the guest
// posted too few), and places the packet whole after Resume.
func TestPauseResumeMidFrame(t *testing.T) {
	devEnd, peer := nettest.Pair(256)
	be := newHeldWrites(devEnd)
	m := newMachineOn(t, be, vnet.Config{})
	m.devEnd, m.peer = devEnd, peer
	m.start(t, vnet.FeatureMrgRxbuf, true)
	m.peer.Send(netdev.Header{}, frame(0, 3000)) // needs two 2 KiB buffers
	m.post(t, 1, 2048)
	// The device holds the buffer and the packet; it places the start of
	// the packet and waits for a second buffer (or is about to).
	<-be.read
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	if a, u := ring(t, m.tr, vnet.RxQueue); a != 0 || u != 0 {
		t.Fatalf("paused with rx avail %d used %d: the partly filled buffer was not handed back", a, u)
	}
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal("second Pause:", err)
	}
	m.post(t, 1, 2048)
	if a, _ := ring(t, m.tr, vnet.RxQueue); a != 0 {
		t.Fatal("the paused device took a buffer")
	}
	m.dev.Resume()
	us := m.used(t, m.rx, 2)
	pkt := append(append([]byte(nil), us[0].Data...), us[1].Data...)
	if h := netdev.DecodeHeader(pkt); h.NumBuffers != 2 || !bytes.Equal(pkt[netdev.HeaderSize:], frame(0, 3000)) {
		t.Fatalf("packet after Resume: %+v", h)
	}
	if s := m.dev.Stats(); s.RxFrames != 1 || s.RxUnused != 0 {
		t.Errorf("stats %+v", s)
	}
}

func TestSaveRunningRefused(t *testing.T) {
	m := newMachine(t, vnet.Config{})
	m.start(t, 0, true)
	if _, err := m.dev.MarshalState(); !errors.Is(err, state.ErrInFlight) {
		t.Fatalf("save of a running device: %v", err)
	}
}

// TestHostileRestore: every impossible State is an error and changes
// nothing.
func TestHostileRestore(t *testing.T) {
	m := newMachine(t, vnet.Config{MAC: stdnet.HardwareAddr{0x52, 0x54, 0, 1, 2, 3}})
	m.start(t, 0, true) // no MQ, no GUEST_ANNOUNCE
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	good, err := m.dev.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	huge := make([]byte, netdev.MaxPacketLen+1)
	for name, mod := range map[string]func(*vnet.State){
		"short MAC":         func(s *vnet.State) { s.MAC = "52:54:00:01:02" },
		"long MAC":          func(s *vnet.State) { s.MAC = "52:54:00:01:02:03:04:05" },
		"multicast MAC":     func(s *vnet.State) { s.MAC = "01:00:5e:00:00:01" },
		"no MAC":            func(s *vnet.State) { s.MAC = "" },
		"pairs 0":           func(s *vnet.State) { s.Pairs = 0 },
		"pairs > max":       func(s *vnet.State) { s.Pairs = 2 },
		"announce":          func(s *vnet.State) { s.Announce = true },
		"pending on pair 1": func(s *vnet.State) { s.RxPending = [][][]byte{nil, {make([]byte, 60)}} },
		"runt packet":       func(s *vnet.State) { s.RxPending = [][][]byte{{make([]byte, 5)}} },
		"huge packet":       func(s *vnet.State) { s.RxPending = [][][]byte{{huge}} },
		"too many packets":  func(s *vnet.State) { s.RxPending = [][][]byte{make([][]byte, 100)} },
		"standby":           func(s *vnet.State) { s.Standby = true }, // this device is not one
	} {
		s := good
		mod(&s)
		b, _ := json.Marshal(s)
		if err := m.dev.UnmarshalState(vnet.StateVersion, b); !errors.Is(err, state.ErrInvalid) && !errors.Is(err, state.ErrMismatch) {
			t.Errorf("%s: %v", name, err)
		}
	}
	b, _ := json.Marshal(good)
	if err := m.dev.UnmarshalState(vnet.StateVersion+1, b); !errors.Is(err, state.ErrNewer) {
		t.Errorf("newer version: %v", err)
	}
	if err := m.dev.UnmarshalState(0, b); !errors.Is(err, state.ErrCorrupt) {
		t.Errorf("version 0: %v", err)
	}
	if err := m.dev.UnmarshalState(1, []byte(`{"MAC":"52:54:00:01:02:03","Extra":1}`)); !errors.Is(err, state.ErrCorrupt) {
		t.Errorf("unknown field: %v", err)
	}
	if mac := m.dev.MAC().String(); mac != "52:54:00:01:02:03" {
		t.Errorf("a refused restore changed the MAC to %s", mac)
	}
	// Pending packets on a device that is not running.
	d, _ := vnet.New(m.devEnd, vnet.Config{})
	s := good
	s.RxPending = [][][]byte{{make([]byte, 60)}}
	if err := d.RestoreState(s); !errors.Is(err, state.ErrInvalid) {
		t.Errorf("pending packets on an inactive device: %v", err)
	}
	m.dev.Resume()
}

// TestStandbyState: a standby device offers VIRTIO_NET_F_STANDBY and says
// so in its state, which a standby device takes and a plain one refuses.
func TestStandbyState(t *testing.T) {
	e, _ := nettest.Pair(1)
	sb, err := vnet.New(e, vnet.Config{Standby: true})
	if err != nil {
		t.Fatal(err)
	}
	if sb.Features()&vnet.FeatureStandby == 0 {
		t.Fatalf("features %#x: no VIRTIO_NET_F_STANDBY", sb.Features())
	}
	b, err := sb.MarshalState()
	if err != nil {
		t.Fatal(err)
	}
	var s vnet.State
	if json.Unmarshal(b, &s); !s.Standby {
		t.Fatalf("the standby's state %s does not say so", b)
	}
	other, _ := vnet.New(e, vnet.Config{Standby: true})
	if err := other.UnmarshalState(vnet.StateVersion, b); err != nil {
		t.Errorf("a standby's state into a standby: %v", err)
	}
	plain, _ := vnet.New(e, vnet.Config{})
	if plain.Features()&vnet.FeatureStandby != 0 {
		t.Errorf("a plain device offers STANDBY")
	}
	if err := plain.UnmarshalState(vnet.StateVersion, b); !errors.Is(err, state.ErrMismatch) {
		t.Errorf("a standby's state into a plain device: %v, want a mismatch", err)
	}
}

func FuzzRestoreState(f *testing.F) {
	devEnd, _ := nettest.Pair(1)
	d, _ := vnet.New(devEnd, vnet.Config{})
	b, _ := d.MarshalState()
	f.Add(b)
	f.Add([]byte(`{"MAC":"52:54:00:01:02:03","Pairs":1,"RxPending":[["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		d, _ := vnet.New(devEnd, vnet.Config{})
		before := d.MAC().String()
		if err := d.UnmarshalState(vnet.StateVersion, data); err != nil && d.MAC().String() != before {
			t.Fatal("a refused restore changed the MAC")
		}
		var cfg [12]byte
		d.ReadConfig(0, cfg[:])
		if _, err := d.MarshalState(); err != nil {
			t.Fatal(err)
		}
	})
}

// TestRestoreMultiQueueBounds: on a device with 2 queue pairs and MQ
// negotiated, a state with 3 pairs in use or packets pending on a third
// pair is refused, and changes nothing; the state a single-queue device
// writes (one pair in use) loads, and so does 2.
func TestRestoreMultiQueueBounds(t *testing.T) {
	a0, _ := nettest.Pair(64)
	a1, _ := nettest.Pair(64)
	m := newMachineOn(t, nil, vnet.Config{}, a0, a1)
	qs := m.startQueues(t, vnet.FeatureCtrlVQ|vnet.FeatureMQ, 5)
	if ack := m.command(t, qs[4], 4, 4, 0, []byte{2, 0}); ack != 0 {
		t.Fatalf("2 pairs: ack %d", ack)
	}
	if err := m.dev.Pause(context.Background()); err != nil {
		t.Fatal(err)
	}
	defer m.dev.Resume()
	good, err := m.dev.SaveState()
	if err != nil || good.Pairs != 2 {
		t.Fatalf("saved %+v, %v", good, err)
	}
	for name, mod := range map[string]func(*vnet.State){
		"pairs 3":           func(s *vnet.State) { s.Pairs = 3 },
		"pairs 65535":       func(s *vnet.State) { s.Pairs = 0xffff },
		"pending on pair 2": func(s *vnet.State) { s.RxPending = [][][]byte{nil, nil, {make([]byte, 60)}} },
	} {
		s := good
		mod(&s)
		b, _ := json.Marshal(s)
		if err := m.dev.UnmarshalState(vnet.StateVersion, b); !errors.Is(err, state.ErrInvalid) && !errors.Is(err, state.ErrMismatch) {
			t.Errorf("%s: %v", name, err)
		}
		if !a1.QueueEnabled() {
			t.Errorf("%s: a refused restore switched pair 1's queue off", name)
		}
	}
	// What a single-queue device writes (version 1, as before multi-queue
	// counters existed: the format did not change).
	one := []byte(`{"MAC":"52:54:00:01:02:03","LinkUp":true,"Announce":false,"Pairs":1}`)
	if err := m.dev.UnmarshalState(1, one); err != nil {
		t.Fatal(err)
	}
	if a1.QueueEnabled() || m.dev.MAC().String() != "52:54:00:01:02:03" {
		t.Errorf("after a 1-pair state: pair 1's queue on %v, MAC %v", a1.QueueEnabled(), m.dev.MAC())
	}
	b, _ := json.Marshal(good)
	if err := m.dev.UnmarshalState(vnet.StateVersion, b); err != nil || !a1.QueueEnabled() {
		t.Errorf("2 pairs again: %v, pair 1's queue on %v", err, a1.QueueEnabled())
	}
}
