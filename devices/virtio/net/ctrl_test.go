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
	// Each pair counted its own frame each way.
	qst := m.dev.QueueStats()
	if len(qst) != 2 {
		t.Fatalf("%d queue pairs in QueueStats", len(qst))
	}
	for i, q := range qst {
		if q.TxFrames != 1 || q.TxBytes != 100 || q.RxFrames != 1 || q.RxBytes != 200 || q.RxInterrupts == 0 || q.TxInterrupts == 0 {
			t.Errorf("pair %d: %+v", i, q)
		}
	}
	if st := m.dev.Stats(); st.TxFrames != 2 || st.RxFrames != 2 {
		t.Errorf("device stats %+v", st)
	}
}

// mqCommands are malformed or unsupported MQ commands a guest may send to
// a device with 2 pairs: each is refused (VIRTIO_NET_ERR) and changes
// nothing.
var mqCommands = []struct {
	name string
	cmd  byte
	data []byte
}{
	{"0 pairs", 0, []byte{0, 0}},
	{"3 pairs", 0, []byte{3, 0}},
	{"65535 pairs", 0, []byte{0xff, 0xff}},
	{"short", 0, []byte{2}},
	{"no data", 0, nil},
	{"RSS config (not offered)", 1, []byte{1, 0, 0, 0, 0, 0, 0, 0}},
	{"hash config (not offered)", 2, []byte{1, 0, 0, 0}},
}

// countingSwitch counts what the device asks of a queue's switch.
type countingSwitch struct {
	*nettest.Endpoint
	switches int
}

func (c *countingSwitch) SetQueueEnabled(on bool) error {
	c.switches++
	return c.Endpoint.SetQueueEnabled(on)
}

// Until the driver sets the pair count, and after it lowers it, a pair's
// receive queue gets nothing even with buffers posted (spec 5.1.6.5.5):
// the frame waits in the back-end and arrives once the pair is in use.
// Bad MQ commands are refused, and the same count twice switches no
// back-end queue again.
func TestMultiQueueIdlePairs(t *testing.T) {
	a0, p0 := nettest.Pair(64)
	a1, p1 := nettest.Pair(64)
	sw := &countingSwitch{Endpoint: a1}
	m := newMachineOn(t, nil, vnet.Config{}, a0, sw)
	qs := m.startQueues(t, vnet.FeatureCtrlVQ|vnet.FeatureMQ|vnet.FeatureMrgRxbuf, 5)
	ctrl := qs[4]
	rx0, rx1 := qs[0], qs[2]
	rx1.Add(nil, []uint32{2048})
	m.guest.Kick(2)
	p1.Send(netdev.Header{}, frame(1, 100))
	// Round trips on pair 0 and refused commands let the device run;
	// pair 1's frame must still be in its back-end, unread. A receive
	// goroutine that did not wait for its pair takes the frame meanwhile
	// in about two runs of three (it runs concurrently; removing the gate
	// fails this test 32 times in 50); FuzzRxChains' seed 3 checks the
	// same on one goroutine, and fails every time without the gate.
	for k := range 20 {
		rx0.Add(nil, []uint32{2048})
		m.guest.Kick(0)
		p0.Send(netdev.Header{}, frame(k, 100))
		if u := m.used(t, rx0, 1)[0]; !bytes.Equal(u.Data[netdev.HeaderSize:], frame(k, 100)) {
			t.Fatal("pair 0 rx")
		}
		if a1.Queued() != 1 {
			t.Fatalf("before VQ_PAIRS_SET: pair 1's back-end holds %d frames, want 1", a1.Queued())
		}
	}
	for _, c := range mqCommands {
		if ack := m.command(t, ctrl, 4, 4, c.cmd, c.data); ack != 1 {
			t.Errorf("%s: ack %d", c.name, ack)
		}
	}
	if a1.Queued() != 1 || m.dev.QueueStats()[1].RxFrames != 0 {
		t.Fatalf("before VQ_PAIRS_SET: pair 1's back-end holds %d frames, its queue got %d", a1.Queued(), m.dev.QueueStats()[1].RxFrames)
	}
	before := sw.switches
	if ack := m.command(t, ctrl, 4, 4, 0, []byte{2, 0}); ack != 0 {
		t.Fatalf("2 pairs: ack %d", ack)
	}
	if u := m.used(t, rx1, 1)[0]; !bytes.Equal(u.Data[netdev.HeaderSize:], frame(1, 100)) {
		t.Fatal("pair 1 rx after VQ_PAIRS_SET")
	}
	if ack := m.command(t, ctrl, 4, 4, 0, []byte{2, 0}); ack != 0 {
		t.Fatalf("2 pairs again: ack %d", ack)
	}
	if sw.switches != before+1 {
		t.Errorf("pair 1's queue switched %d times for two identical commands, want once", sw.switches-before)
	}
	// Back to one pair: pair 1 takes nothing more.
	if ack := m.command(t, ctrl, 4, 4, 0, []byte{1, 0}); ack != 0 {
		t.Fatalf("1 pair: ack %d", ack)
	}
	rx1.Add(nil, []uint32{2048})
	m.guest.Kick(2)
	p1.Send(netdev.Header{}, frame(2, 100))
	rx0.Add(nil, []uint32{2048})
	m.guest.Kick(0)
	p0.Send(netdev.Header{}, frame(3, 100))
	m.used(t, rx0, 1)
	if got := m.dev.QueueStats()[1].RxFrames; got != 1 {
		t.Errorf("pair 1 received %d frames while out of use, want only the first", got)
	}
	if ack := m.command(t, ctrl, 4, 4, 0, []byte{2, 0}); ack != 0 {
		t.Fatalf("2 pairs once more: ack %d", ack)
	}
	if u := m.used(t, rx1, 1)[0]; !bytes.Equal(u.Data[netdev.HeaderSize:], frame(2, 100)) {
		t.Fatal("pair 1's held frame after the pairs came back")
	}
	if st := m.dev.Stats(); st.CtrlErrors != uint64(len(mqCommands)) {
		t.Errorf("%d commands refused, want %d", st.CtrlErrors, len(mqCommands))
	}
}

// With ExternalQueues (vhost-net serves the data queues) the device serves
// only the control queue: MQ commands still switch the back-ends' queues,
// and a frame the guest queues for sending is left to whoever serves the
// transmit queue.
func TestExternalQueues(t *testing.T) {
	a0, p0 := nettest.Pair(64)
	a1, _ := nettest.Pair(64)
	m := newMachineOn(t, nil, vnet.Config{ExternalQueues: true}, a0, a1)
	qs := m.startQueues(t, vnet.FeatureCtrlVQ|vnet.FeatureMQ|vnet.FeatureMrgRxbuf, 5)
	tx := qs[1]
	tx.Add([][]byte{make([]byte, netdev.HeaderSize), frame(1, 100)}, nil)
	m.guest.Kick(1)
	if ack := m.command(t, qs[4], 4, 4, 0, []byte{2, 0}); ack != 0 {
		t.Fatalf("2 pairs: ack %d", ack)
	}
	if !a0.QueueEnabled() || !a1.QueueEnabled() {
		t.Errorf("queues enabled %v %v after 2 pairs", a0.QueueEnabled(), a1.QueueEnabled())
	}
	if used := tx.UsedIdx(); used != 0 {
		t.Errorf("the device served the transmit queue it was told is served elsewhere: used index %d", used)
	}
	if _, _, err := p0.Recv(0); err == nil {
		t.Errorf("a frame reached the back-end")
	}
	if st := m.dev.Stats(); st.TxFrames != 0 || st.CtrlCommands != 1 {
		t.Errorf("stats %+v", st)
	}
}
