package net_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"
	"testing"
	"time"

	vnet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/memory"
	"github.com/viovmm/vio/netdev"
	vframe "github.com/viovmm/vio/netdev/frame"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/pci/pcitest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

const (
	msiAddr   = 0xfee00000
	queueBase = 0x100000
	queueSpan = 0x800000
	dataSize  = 0x700000
	wait      = 10 * time.Second // bounds a hang; never a synchronization
)

type machine struct {
	mem    *memory.Memory
	router *pcitest.Router
	dev    *vnet.Device
	tr     *virtiopci.Transport
	guest  *virtiopcitest.Guest
	rx, tx *queuetest.Driver
	// devEnd is the back-end the device uses; peer plays the network.
	devEnd, peer *nettest.Endpoint
	// vectors maps each queue to its MSI-X vector; early counts
	// interrupts received while waiting for another vector.
	vectors map[*queuetest.Driver]int
	early   map[int]int
}

func newMachine(t testing.TB, cfg vnet.Config) *machine {
	t.Helper()
	devEnd, peer := nettest.Pair(256)
	m := newMachineOn(t, devEnd, cfg)
	m.devEnd, m.peer = devEnd, peer
	return m
}

// newMachineOn makes a machine whose device uses be, or the queue pairs
// more if be is nil.
func newMachineOn(t testing.TB, be netdev.Backend, cfg vnet.Config, more ...netdev.Backend) *machine {
	t.Helper()
	if be != nil {
		more = append([]netdev.Backend{be}, more...)
	}
	dev, err := vnet.NewMultiQueue(more, cfg)
	if err != nil {
		t.Fatal(err)
	}
	mc := virtiopcitest.NewMachine(t, dev, 32<<20, 4096)
	return &machine{mem: mc.Mem, router: mc.Router, dev: dev, tr: mc.Transport, guest: mc.Guest,
		vectors: map[*queuetest.Driver]int{}, early: map[int]int{}}
}

// start negotiates feat and sets up both queues: vector 1 for receive, 2
// for transmit.
func (m *machine) start(t testing.TB, feat uint64, eventIdx bool) {
	t.Helper()
	g := m.guest
	feat |= virtio.FeatureVersion1 | virtio.FeatureIndirectDesc
	if eventIdx {
		feat |= virtio.FeatureEventIdx
	}
	if err := g.Negotiate(feat); err != nil {
		t.Fatal(err)
	}
	for v := range 3 {
		g.ProgramMSIX(v, msiAddr, uint32(0x40+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	var err error
	if m.rx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: vnet.RxQueue, Vector: 1, Base: queueBase, DataSize: dataSize, EventIdx: eventIdx}); err != nil {
		t.Fatal(err)
	}
	if m.tx, err = g.SetupQueue(virtiopcitest.QueueConfig{Index: vnet.TxQueue, Vector: 2, Base: queueBase + queueSpan, DataSize: dataSize, EventIdx: eventIdx}); err != nil {
		t.Fatal(err)
	}
	m.vectors[m.rx], m.vectors[m.tx] = 1, 2
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x", s)
	}
}

// post makes n receive buffers of size bytes available.
func (m *machine) post(t testing.TB, n int, size uint32) {
	t.Helper()
	for range n {
		if _, err := m.rx.Add(nil, []uint32{size}); err != nil {
			t.Fatal(err)
		}
	}
	if m.rx.NeedsKick() {
		m.guest.Kick(vnet.RxQueue)
	}
}

// send transmits one packet (header and frame, split after split bytes).
func (m *machine) send(t *testing.T, h netdev.Header, frame []byte, split int) {
	t.Helper()
	hb := make([]byte, netdev.HeaderSize)
	h.Encode(hb)
	pkt := append(hb, frame...)
	if _, err := m.tx.Add([][]byte{pkt[:split], pkt[split:]}, nil); err != nil {
		t.Fatal(err)
	}
	if m.tx.NeedsKick() {
		m.guest.Kick(vnet.TxQueue)
	}
}

// used waits for n used entries of d. Between them it waits for d's
// interrupt and nothing else, so a device that fails to interrupt fails
// the test; interrupts of other queues seen meanwhile are kept for later.
func (m *machine) used(t testing.TB, d *queuetest.Driver, n int) []queuetest.Used {
	t.Helper()
	vec, ok := m.vectors[d]
	if !ok {
		t.Fatal("queue without a vector")
	}
	var us []queuetest.Used
	deadline := time.Now().Add(wait)
	for len(us) < n {
		u, ok, err := d.GetUsed()
		if err != nil {
			t.Fatal(err)
		}
		if ok {
			us = append(us, u)
			continue
		}
		if m.early[vec] > 0 {
			m.early[vec]--
			continue
		}
		msg, err := m.router.Wait(time.Until(deadline))
		if err != nil {
			t.Fatalf("%d of %d used entries, no interrupt on vector %d: %v", len(us), n, vec, err)
		}
		if msg.Vector != vec {
			m.early[msg.Vector]++
		}
	}
	return us
}

func frame(seq int, n int) []byte {
	f := make([]byte, n)
	copy(f, []byte{0x52, 0x54, 0, 0, 0, 1, 0x52, 0x54, 0, 0, 0, 2, 0x08, 0x00})
	for i := 14; i < n; i++ {
		f[i] = byte(seq*7 + i)
	}
	if n >= 18 {
		binary.BigEndian.PutUint32(f[14:], uint32(seq))
	}
	return f
}

func TestConfigAndFeatures(t *testing.T) {
	mac := stdnet.HardwareAddr{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	m := newMachine(t, vnet.Config{MAC: mac, MTU: 9000})
	g := m.guest
	if id := g.CF8.Read(g.BDF, 0, 4); id != 0x1041<<16|0x1af4 {
		t.Fatalf("id %#x", id)
	}
	f := g.DeviceFeatures()
	for _, want := range []uint64{vnet.FeatureMAC, vnet.FeatureStatus, vnet.FeatureMrgRxbuf, vnet.FeatureMTU,
		vnet.FeatureCsum, vnet.FeatureGuestCsum, vnet.FeatureHostTSO4, vnet.FeatureHostTSO6, vnet.FeatureGuestTSO4,
		vnet.FeatureGuestTSO6, vnet.FeatureHostECN, vnet.FeatureGuestECN, virtio.FeatureEventIdx, virtio.FeatureIndirectDesc} {
		if f&want == 0 {
			t.Errorf("feature %#x not offered", want)
		}
	}
	if f&vnet.FeatureCtrlVQ == 0 || f&vnet.FeatureAnnounce == 0 || f&vnet.FeatureCtrlMAC == 0 {
		t.Errorf("control queue features not offered: %#x", f)
	}
	if f&(vnet.FeatureHostUFO|vnet.FeatureGuestUFO|vnet.FeatureMQ|vnet.FeatureCtrlRx|vnet.FeatureCtrlVLAN) != 0 {
		t.Errorf("offered %#x", f)
	}
	var got stdnet.HardwareAddr
	for i := range 6 {
		got = append(got, byte(g.ReadDeviceConfig(uint64(i), 1)))
	}
	if !bytes.Equal(got, mac) {
		t.Errorf("mac %v", got)
	}
	if s := g.ReadDeviceConfig(6, 2); s != vnet.StatusLinkUp {
		t.Errorf("status %#x", s)
	}
	if mtu := g.ReadDeviceConfig(10, 2); mtu != 9000 {
		t.Errorf("mtu %d", mtu)
	}
	// A link change while active raises the configuration interrupt.
	m.start(t, vnet.FeatureStatus|vnet.FeatureMAC, true)
	m.dev.SetLink(false)
	if msg, err := m.router.Wait(wait); err != nil || msg.Vector != 0 {
		t.Fatalf("config interrupt %+v %v", msg, err)
	}
	if s := g.ReadDeviceConfig(6, 2); s != 0 {
		t.Errorf("status after link down %#x", s)
	}
	if _, err := vnet.New(m.devEnd, vnet.Config{MAC: stdnet.HardwareAddr{1, 2, 3, 4, 5, 6}}); err == nil {
		t.Error("multicast MAC accepted")
	}
	// Without an Offloader-capable back-end, no offloads are offered.
	d, _ := vnet.New(plain{m.devEnd}, vnet.Config{})
	if d.Features()&(vnet.FeatureCsum|vnet.FeatureGuestCsum|vnet.FeatureHostTSO4) != 0 {
		t.Errorf("offloads offered without an Offloader: %#x", d.Features())
	}
	if mac := d.MAC(); mac[0]&3 != 2 {
		t.Errorf("random MAC %v is not unicast and locally administered", mac)
	}
}

// plain hides the Offloader of a back-end.
type plain struct{ netdev.Backend }

func TestFramesBothWays(t *testing.T) {
	for _, eventIdx := range []bool{false, true} {
		t.Run(fmt.Sprint("eventIdx=", eventIdx), func(t *testing.T) {
			m := newMachine(t, vnet.Config{})
			m.start(t, vnet.FeatureMAC|vnet.FeatureCsum|vnet.FeatureGuestCsum, eventIdx)
			if o, ok := m.devEnd.RecvOffloads(); !ok || o != netdev.OffloadCsum {
				t.Errorf("back-end told %#x (%v), guest accepts checksum offload only", o, ok)
			}
			// Guest to network, with a checksum left to the host.
			csum := netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 6}
			for i := range 5 {
				m.send(t, csum, frame(i, 60+i*100), 5+i)
			}
			for i := range 5 {
				h, f, err := m.peer.Recv(wait)
				if err != nil {
					t.Fatal(err)
				}
				if h != csum || !bytes.Equal(f, frame(i, 60+i*100)) {
					t.Fatalf("frame %d: header %+v, %d bytes", i, h, len(f))
				}
			}
			for _, u := range m.used(t, m.tx, 5) {
				if u.Len != 0 {
					t.Errorf("tx used len %d", u.Len)
				}
			}
			// Network to guest.
			m.post(t, 8, 2048)
			for i := range 3 {
				if err := m.peer.Send(netdev.Header{Flags: netdev.FlagDataValid}, frame(i, 1514)); err != nil {
					t.Fatal(err)
				}
			}
			for i, u := range m.used(t, m.rx, 3) {
				if int(u.Len) != netdev.HeaderSize+1514 {
					t.Fatalf("rx used len %d", u.Len)
				}
				h := netdev.DecodeHeader(u.Data)
				if h.NumBuffers != 1 || h.Flags != netdev.FlagDataValid || !bytes.Equal(u.Data[netdev.HeaderSize:], frame(i, 1514)) {
					t.Fatalf("rx %d: header %+v", i, h)
				}
			}
			s := m.dev.Stats()
			if s.TxFrames != 5 || s.RxFrames != 3 || s.RxBytes != 3*1514 || s.TxErrors+s.RxErrors+s.RxDropped+s.TxDropped != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// TestMergeableGSO delivers a 64 KiB TSO frame to a guest with mergeable
// 4 KiB buffers, and one from the guest to the network.
func TestMergeableGSO(t *testing.T) {
	m := newMachine(t, vnet.Config{})
	feat := vnet.FeatureMrgRxbuf | vnet.FeatureCsum | vnet.FeatureGuestCsum | vnet.FeatureGuestTSO4 | vnet.FeatureHostTSO4
	m.start(t, feat, true)
	if o, _ := m.devEnd.RecvOffloads(); o != netdev.OffloadCsum|netdev.OffloadTSO4 {
		t.Errorf("recv offloads %#x", o)
	}
	m.post(t, 20, 4096)
	big := frame(1, 65000)
	tso := netdev.Header{Flags: netdev.FlagNeedsCsum, GSOType: netdev.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
	if err := m.peer.Send(tso, big); err != nil {
		t.Fatal(err)
	}
	need := (netdev.HeaderSize + len(big) + 4095) / 4096
	us := m.used(t, m.rx, need)
	var all []byte
	for i, u := range us {
		if i < need-1 && u.Len != 4096 {
			t.Errorf("buffer %d: %d bytes", i, u.Len)
		}
		all = append(all, u.Data...)
	}
	h := netdev.DecodeHeader(all)
	want := tso
	want.NumBuffers = uint16(need)
	if h != want {
		t.Errorf("header %+v, want %+v", h, want)
	}
	if !bytes.Equal(all[netdev.HeaderSize:], big) {
		t.Error("merged frame differs")
	}
	// A small frame after it takes one buffer.
	m.peer.Send(netdev.Header{}, frame(2, 100))
	u := m.used(t, m.rx, 1)[0]
	if h := netdev.DecodeHeader(u.Data); h.NumBuffers != 1 || !bytes.Equal(u.Data[netdev.HeaderSize:], frame(2, 100)) {
		t.Errorf("small frame: %+v", h)
	}
	// Guest to network: a TSO frame in an indirect chain of 17 pieces.
	hb := make([]byte, netdev.HeaderSize)
	tso.Encode(hb)
	pieces := [][]byte{hb}
	for off := 0; off < len(big); off += 4000 {
		pieces = append(pieces, big[off:min(off+4000, len(big))])
	}
	if _, err := m.tx.AddIndirect(pieces, nil); err != nil {
		t.Fatal(err)
	}
	m.guest.Kick(vnet.TxQueue)
	gh, gf, err := m.peer.Recv(wait)
	if err != nil || gh != tso || !bytes.Equal(gf, big) {
		t.Fatalf("TSO from guest: %+v %d bytes %v", gh, len(gf), err)
	}
	if s := m.dev.Stats(); s.RxMerged != 1 || s.RxFrames != 2 || s.TxFrames != 1 {
		t.Errorf("stats %+v", s)
	}
}

// TestRxBackpressure: with no receive buffers, frames wait in the
// back-end instead of being dropped, and all arrive in order once the
// guest posts buffers, also when a frame must wait in the middle of being
// spread over buffers.
func TestRxBackpressure(t *testing.T) {
	m := newMachine(t, vnet.Config{})
	m.start(t, vnet.FeatureMrgRxbuf, true)
	const frames = 40
	for i := range frames {
		if err := m.peer.Send(netdev.Header{}, frame(i, 3000)); err != nil {
			t.Fatal(err)
		}
	}
	// Each 3012-byte packet needs two 2 KiB buffers. Post an odd number,
	// so that a frame is left half placed.
	m.post(t, 5, 2048)
	got := m.used(t, m.rx, 4)
	if r := m.devEnd.Reads(); r == 0 {
		t.Fatal("device never read from the back-end")
	}
	// The ring is empty now; more frames than a batch stay queued in
	// the back-end, the rest in the device.
	if q := m.devEnd.Queued(); q < frames-2-8 {
		t.Errorf("only %d frames left in the back-end", q)
	}
	for len(got) < 2*frames {
		m.post(t, 7, 2048)
		got = append(got, m.used(t, m.rx, min(2*frames-len(got), 7))...)
	}
	for i := range frames {
		a, b := got[2*i], got[2*i+1]
		h := netdev.DecodeHeader(a.Data)
		pkt := append(append([]byte(nil), a.Data...), b.Data...)
		if h.NumBuffers != 2 || !bytes.Equal(pkt[netdev.HeaderSize:], frame(i, 3000)) {
			t.Fatalf("frame %d: header %+v, seq %d", i, h, binary.BigEndian.Uint32(pkt[netdev.HeaderSize+14:]))
		}
	}
	s := m.dev.Stats()
	if s.RxFrames != frames || s.RxDropped+s.RxErrors != 0 || m.devEnd.Dropped() != 0 || s.RxWaits == 0 {
		t.Errorf("stats %+v, back-end dropped %d", s, m.devEnd.Dropped())
	}
}

func TestBadTxHeaders(t *testing.T) {
	m := newMachine(t, vnet.Config{})
	m.start(t, vnet.FeatureCsum|vnet.FeatureHostTSO4, false)
	tso6 := netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv6, HdrLen: 74, GSOSize: 1400, CsumStart: 54, CsumOffset: 16}
	for _, c := range []struct {
		name string
		h    netdev.Header
		n    int
	}{
		{"TSO6 not negotiated", tso6, 9000},
		{"UFO", netdev.Header{GSOType: netdev.GSOUDP, GSOSize: 1400}, 9000},
		{"ECN not negotiated", netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv4 | netdev.GSOECN, GSOSize: 1400, CsumStart: 34, CsumOffset: 16}, 9000},
		{"gso_size 0", netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv4, CsumStart: 34, CsumOffset: 16}, 9000},
		{"checksum outside frame", netdev.Header{Flags: 1, CsumStart: 100, CsumOffset: 6}, 60},
		{"runt", netdev.Header{}, 10},
		{"giant", netdev.Header{}, netdev.MaxFrameLen + 1},
	} {
		m.send(t, c.h, frame(0, c.n), 3)
	}
	// A chain shorter than a header.
	if _, err := m.tx.Add([][]byte{make([]byte, 8)}, nil); err != nil {
		t.Fatal(err)
	}
	// And a good frame behind them all.
	m.send(t, netdev.Header{}, frame(9, 80), 12)
	h, f, err := m.peer.Recv(wait)
	if err != nil || h != (netdev.Header{}) || !bytes.Equal(f, frame(9, 80)) {
		t.Fatalf("good frame: %+v %v", h, err)
	}
	m.used(t, m.tx, 9)
	if m.peer.Queued() != 0 {
		t.Errorf("%d bad frames reached the network", m.peer.Queued())
	}
	if s := m.dev.Stats(); s.TxErrors != 8 || s.TxFrames != 1 {
		t.Errorf("stats %+v", s)
	}
	// A frame the back-end refuses is dropped and counted; the next goes.
	m.devEnd.FailNextWrite(errors.New("refused"))
	m.send(t, netdev.Header{}, frame(10, 80), 12)
	m.used(t, m.tx, 1)
	m.send(t, netdev.Header{}, frame(11, 80), 12)
	if _, f, err := m.peer.Recv(wait); err != nil || !bytes.Equal(f, frame(11, 80)) {
		t.Fatalf("after refused frame: %v", err)
	}
	if s := m.dev.Stats(); s.TxDropped != 1 {
		t.Errorf("stats %+v", s)
	}
	if st := m.guest.Status(); st&virtio.StatusDeviceNeedsReset != 0 {
		t.Errorf("status %#x", st)
	}
}

// TestBadRxFrames: frames the guest did not negotiate, or that do not fit
// its buffers, are dropped without losing the buffer or the frames behind.
func TestBadRxFrames(t *testing.T) {
	m := newMachine(t, vnet.Config{})
	m.start(t, 0, true) // no offloads, no mergeable buffers
	if o, ok := m.devEnd.RecvOffloads(); !ok || o != 0 {
		t.Errorf("recv offloads %#x %v", o, ok)
	}
	m.post(t, 2, 1600)
	m.peer.Send(netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 6}, frame(0, 100))
	m.peer.Send(netdev.Header{Flags: 1, GSOType: netdev.GSOTCPv4, GSOSize: 1448, HdrLen: 54, CsumStart: 34, CsumOffset: 16}, frame(1, 9000))
	m.peer.Send(netdev.Header{}, frame(2, 3000)) // larger than the buffers
	m.peer.WriteFrames([][][]byte{{make([]byte, netdev.HeaderSize), make([]byte, 5)}})
	m.peer.Send(netdev.Header{Flags: netdev.FlagDataValid}, frame(3, 200))
	m.peer.Send(netdev.Header{}, frame(4, 1500))
	us := m.used(t, m.rx, 2)
	for i, u := range us {
		h := netdev.DecodeHeader(u.Data)
		if h != (netdev.Header{NumBuffers: 1}) || !bytes.Equal(u.Data[netdev.HeaderSize:], frame(3+i, []int{200, 1500}[i])) {
			t.Errorf("rx %d: %+v", i, h)
		}
	}
	if s := m.dev.Stats(); s.RxErrors != 4 || s.RxFrames != 2 {
		t.Errorf("stats %+v", s)
	}
}

// TestResetWhileReading: a reset ends the receive goroutine blocked in
// the back-end, and the device works after reactivation.
func TestResetWhileReading(t *testing.T) {
	m := newMachine(t, vnet.Config{})
	m.start(t, vnet.FeatureMrgRxbuf, true)
	m.post(t, 4, 2048)
	// The device now waits in ReadFrames. Prove it: a frame arrives.
	m.peer.Send(netdev.Header{}, frame(0, 100))
	m.used(t, m.rx, 1)
	done := make(chan error, 1)
	go func() { done <- m.guest.Reset() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(wait):
		t.Fatal("reset hangs while the device waits for frames")
	}
	m.start(t, vnet.FeatureMrgRxbuf, true)
	m.post(t, 4, 2048)
	m.peer.Send(netdev.Header{}, frame(1, 100))
	if u := m.used(t, m.rx, 1)[0]; !bytes.Equal(u.Data[netdev.HeaderSize:], frame(1, 100)) {
		t.Error("wrong frame after reset")
	}
	m.send(t, netdev.Header{}, frame(2, 64), 12)
	if _, f, err := m.peer.Recv(wait); err != nil || !bytes.Equal(f, frame(2, 64)) {
		t.Fatalf("tx after reset: %v", err)
	}
}

// TestSelfAnnounce: SelfAnnounce puts a RARP broadcast from the device's
// MAC address on the back-end, between the guest's frames, which arrive
// whole and in order.
func TestSelfAnnounce(t *testing.T) {
	mac := stdnet.HardwareAddr{0x52, 0x54, 0, 0xfa, 0x11, 0x0e}
	m := newMachine(t, vnet.Config{MAC: mac, Standby: true})
	m.start(t, vnet.FeatureMAC, false)
	const n = 40
	done := make(chan error, 1)
	go func() {
		for range 5 {
			if err := m.dev.SelfAnnounce(); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range n {
		m.send(t, netdev.Header{}, frame(i, 100), 12)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	guest, rarps := 0, 0
	for guest < n || rarps < 5 {
		h, f, err := m.peer.Recv(wait)
		if err != nil {
			t.Fatalf("%d guest frames and %d announcements so far: %v", guest, rarps, err)
		}
		if bytes.Equal(f, vframe.RARP([6]byte(mac))) {
			if h != (netdev.Header{}) {
				t.Errorf("announcement header %+v", h)
			}
			rarps++
			continue
		}
		if !bytes.Equal(f, frame(guest, 100)) {
			t.Fatalf("frame %d of the guest arrived as % x", guest, f[:18])
		}
		guest++
	}
}
