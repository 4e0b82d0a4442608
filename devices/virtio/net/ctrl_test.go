package net_test

import (
	"bytes"
	"encoding/binary"
	stdnet "net"
	"testing"

	vnet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/virtio/queuetest"
	"github.com/viovmm/vio/virtio/virtiopci/virtiopcitest"
)

// startQueues negotiates feat and sets up n queues with small data areas,
// queue i on MSI-X vector i+1.
func (m *machine) startQueues(t *testing.T, feat uint64, n int) []*queuetest.Driver {
	t.Helper()
	g := m.guest
	if err := g.Negotiate(feat | virtio.FeatureVersion1 | virtio.FeatureEventIdx); err != nil {
		t.Fatal(err)
	}
	for v := 0; v <= n; v++ {
		g.ProgramMSIX(v, msiAddr, uint32(0x40+v))
	}
	g.EnableMSIX(true)
	g.SetConfigVector(0)
	var qs []*queuetest.Driver
	for i := range n {
		d, err := g.SetupQueue(virtiopcitest.QueueConfig{Index: i, Vector: uint16(i + 1), Base: queueBase + uint64(i)*0x200000, DataSize: 0x180000, EventIdx: true})
		if err != nil {
			t.Fatal(err)
		}
		qs = append(qs, d)
		m.vectors[d] = i + 1
	}
	g.SetStatus(virtio.StatusDriverOK)
	if s := g.Status(); s&virtio.StatusDriverOK == 0 || s&virtio.StatusDeviceNeedsReset != 0 {
		t.Fatalf("status %#x", s)
	}
	return qs
}

// command runs one control command and returns its ack.
func (m *machine) command(t *testing.T, ctrl *queuetest.Driver, idx int, class, cmd byte, data []byte) byte {
	t.Helper()
	if _, err := ctrl.Add([][]byte{{class, cmd}, data}, []uint32{1}); err != nil {
		t.Fatal(err)
	}
	if ctrl.NeedsKick() {
		m.guest.Kick(idx)
	}
	u := m.used(t, ctrl, 1)[0]
	if u.Len != 1 {
		t.Fatalf("ack length %d", u.Len)
	}
	return u.Data[0]
}

func TestControlQueue(t *testing.T) {
	m := newMachine(t, vnet.Config{MAC: stdnet.HardwareAddr{0x52, 0x54, 0, 0, 0, 1}})
	qs := m.startQueues(t, vnet.FeatureCtrlVQ|vnet.FeatureCtrlMAC|vnet.FeatureAnnounce|vnet.FeatureMAC|vnet.FeatureStatus, 3)
	ctrl := qs[2]
	newMAC := []byte{0x52, 0x54, 0, 0xaa, 0xbb, 0xcc}
	if ack := m.command(t, ctrl, 2, 1, 1, newMAC); ack != 0 {
		t.Fatalf("MAC_ADDR_SET ack %d", ack)
	}
	var cfg []byte
	for i := range 6 {
		cfg = append(cfg, byte(m.guest.ReadDeviceConfig(uint64(i), 1)))
	}
	if !bytes.Equal(cfg, newMAC) || !bytes.Equal(m.dev.MAC(), newMAC) {
		t.Errorf("MAC %x / %v after ADDR_SET", cfg, m.dev.MAC())
	}
	for _, c := range []struct {
		name       string
		class, cmd byte
		data       []byte
	}{
		{"multicast MAC", 1, 1, []byte{1, 0, 0x5e, 0, 0, 1}},
		{"short MAC", 1, 1, []byte{0x52, 0x54}},
		{"RX mode (not offered)", 0, 0, []byte{1}},
		{"MQ (not negotiated)", 4, 0, []byte{1, 0}},
		{"unknown class", 99, 0, nil},
	} {
		if ack := m.command(t, ctrl, 2, c.class, c.cmd, c.data); ack != 1 {
			t.Errorf("%s: ack %d", c.name, ack)
		}
	}
	// A header-only chain without an ack byte is returned empty.
	ctrl.Add([][]byte{{1, 1}}, nil)
	m.guest.Kick(2)
	if u := m.used(t, ctrl, 1)[0]; u.Len != 0 {
		t.Errorf("used len %d", u.Len)
	}
	// Announce: status bit and configuration interrupt; the ack clears it.
	for len(m.router.Messages()) > 0 {
		<-m.router.Messages()
	}
	if !m.dev.Announce() {
		t.Fatal("announce refused")
	}
	if msg, err := m.router.Wait(wait); err != nil || msg.Vector != 0 {
		t.Fatalf("config interrupt %+v %v", msg, err)
	}
	if st := m.guest.ReadDeviceConfig(6, 2); st != vnet.StatusLinkUp|vnet.StatusAnnounce {
		t.Errorf("status %#x", st)
	}
	if ack := m.command(t, ctrl, 2, 3, 0, nil); ack != 0 {
		t.Fatalf("ANNOUNCE_ACK ack %d", ack)
	}
	if st := m.guest.ReadDeviceConfig(6, 2); st != vnet.StatusLinkUp {
		t.Errorf("status after ack %#x", st)
	}
	if s := m.dev.Stats(); s.CtrlCommands != 8 || s.CtrlErrors != 6 {
		t.Errorf("stats %+v", s)
	}
}

func TestMultiQueue(t *testing.T) {
	a0, p0 := nettest.Pair(64)
	a1, p1 := nettest.Pair(64)
	m := newMachineOn(t, nil, vnet.Config{}, a0, a1)
	g := m.guest
	if f := g.DeviceFeatures(); f&vnet.FeatureMQ == 0 {
		t.Fatalf("MQ not offered: %#x", f)
	}
	if n := g.ReadDeviceConfig(8, 2); n != 2 {
		t.Fatalf("max_virtqueue_pairs %d", n)
	}
	qs := m.startQueues(t, vnet.FeatureCtrlVQ|vnet.FeatureMQ|vnet.FeatureMrgRxbuf, 5)
	if !a0.QueueEnabled() || a1.QueueEnabled() {
		t.Fatalf("before MQ_VQ_PAIRS_SET: queues enabled %v %v", a0.QueueEnabled(), a1.QueueEnabled())
	}
	for _, bad := range []uint16{0, 3} {
		if ack := m.command(t, qs[4], 4, 4, 0, binary.LittleEndian.AppendUint16(nil, bad)); ack != 1 {
			t.Errorf("%d pairs: ack %d", bad, ack)
		}
	}
	if ack := m.command(t, qs[4], 4, 4, 0, []byte{2, 0}); ack != 0 {
		t.Fatalf("2 pairs: ack %d", ack)
	}
	if !a1.QueueEnabled() {
		t.Error("second queue still disabled")
	}
	// Traffic on both pairs, each to its own back-end.
	for i, p := range []*nettest.Endpoint{p0, p1} {
		rx, tx := qs[2*i], qs[2*i+1]
		hb := make([]byte, netdev.HeaderSize)
		tx.Add([][]byte{hb, frame(i, 100)}, nil)
		g.Kick(2*i + 1)
		if _, f, err := p.Recv(wait); err != nil || !bytes.Equal(f, frame(i, 100)) {
			t.Fatalf("pair %d tx: %v", i, err)
		}
		rx.Add(nil, []uint32{2048})
		g.Kick(2 * i)
		p.Send(netdev.Header{}, frame(10+i, 200))
		if u := m.used(t, rx, 1)[0]; !bytes.Equal(u.Data[netdev.HeaderSize:], frame(10+i, 200)) {
			t.Fatalf("pair %d rx", i)
		}
	}
	if ack := m.command(t, qs[4], 4, 4, 0, []byte{1, 0}); ack != 0 || a1.QueueEnabled() {
		t.Errorf("back to 1 pair: ack %d, second queue enabled %v", ack, a1.QueueEnabled())
	}
}
