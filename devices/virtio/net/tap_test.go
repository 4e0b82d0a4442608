//go:build linux

package net_test

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	stdnet "net"
	"os/exec"
	"strings"
	"testing"
	"time"

	vnet "github.com/viovmm/vio/devices/virtio/net"
	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/tap"
)

var (
	guestMAC = stdnet.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	guestIP  = stdnet.IPv4(10, 9, 1, 2).To4()
	hostIP   = stdnet.IPv4(10, 9, 1, 1).To4()
)

// inNetns runs f on an OS thread inside a fresh network namespace, which
// it returns the name of. The TAP and sockets f makes stay in it.
func inNetns(t *testing.T, f func()) string {
	t.Helper()
	ns := nettest.Netns(t, "vionet")
	nettest.InNetns(t, ns, f)
	return ns
}

func csum(b []byte, sum uint32) uint16 {
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

func eth(dst stdnet.HardwareAddr, typ uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b, dst)
	copy(b[6:], guestMAC)
	binary.BigEndian.PutUint16(b[12:], typ)
	return append(b, payload...)
}

func ipv4(proto byte, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h[6] = 0x40 // DF
	h[8], h[9] = 64, proto
	copy(h[12:], guestIP)
	copy(h[16:], hostIP)
	binary.BigEndian.PutUint16(h[10:], csum(h, 0))
	return append(h, payload...)
}

// tcp builds a segment from the guest with a full checksum.
func tcp(sport, dport uint16, seq, ack uint32, flags byte, opts, data []byte) []byte {
	hl := 20 + len(opts)
	s := make([]byte, hl, hl+len(data))
	binary.BigEndian.PutUint16(s[0:], sport)
	binary.BigEndian.PutUint16(s[2:], dport)
	binary.BigEndian.PutUint32(s[4:], seq)
	binary.BigEndian.PutUint32(s[8:], ack)
	s[12] = byte(hl/4) << 4
	s[13] = flags
	binary.BigEndian.PutUint16(s[14:], 0xffff) // window (scaled)
	copy(s[20:], opts)
	s = append(s, data...)
	var pseudo uint32
	for _, w := range [][]byte{guestIP[:2], guestIP[2:], hostIP[:2], hostIP[2:]} {
		pseudo += uint32(binary.BigEndian.Uint16(w))
	}
	pseudo += 6 + uint32(len(s))
	binary.BigEndian.PutUint16(s[16:], csum(s, pseudo))
	return s
}

// recvPacket reads one packet from the receive queue, joining mergeable
// buffers, and posts as many fresh buffers as it consumed.
func (m *machine) recvPacket(t *testing.T) (netdev.Header, []byte) {
	t.Helper()
	first := m.used(t, m.rx, 1)[0]
	h := netdev.DecodeHeader(first.Data)
	pkt := first.Data
	if h.NumBuffers > 1 {
		for _, u := range m.used(t, m.rx, int(h.NumBuffers)-1) {
			pkt = append(pkt, u.Data...)
		}
	}
	m.post(t, int(h.NumBuffers), 4096)
	return h, pkt[netdev.HeaderSize:]
}

// TestTAPKernelTCP is a guest's TCP connection to the host kernel over a
// real TAP: handshake, then 256 KiB from a kernel socket to the guest. With
// GUEST_TSO4 negotiated, the device must set the TAP's offloads so that
// the kernel sends TSO super-frames, and spread them over mergeable
// buffers; the guest reassembles the stream and checks every byte. Then
// the guest sends 40 000 bytes as two TSO super-frames with partial
// checksums (HOST_TSO4, CSUM), which the kernel socket must receive.
func TestTAPKernelTCP(t *testing.T) {
	var tp *tap.Tap
	var ln stdnet.Listener
	var openErr error
	ns := inNetns(t, func() {
		if tp, openErr = tap.Open("vionet%d"); openErr != nil {
			return
		}
		ln, openErr = stdnet.Listen("tcp4", "0.0.0.0:0")
	})
	if openErr != nil {
		t.Fatal(openErr)
	}
	defer tp.Close()
	defer ln.Close()
	for _, args := range [][]string{
		{"-n", ns, "link", "set", tp.Name(), "up"},
		{"-n", ns, "addr", "add", "10.9.1.1/24", "dev", tp.Name()},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	m := newMachineOn(t, tp, vnet.Config{MAC: guestMAC})
	m.start(t, vnet.FeatureMAC|vnet.FeatureMrgRxbuf|vnet.FeatureCsum|vnet.FeatureGuestCsum|
		vnet.FeatureGuestTSO4|vnet.FeatureHostTSO4, true)
	m.post(t, 128, 4096)

	const total = 256 << 10
	data := make([]byte, total)
	for i := range data {
		data[i] = byte(i*13 + i>>8)
	}
	upload := make([]byte, 40000)
	for i := range upload {
		upload[i] = byte(i*7 + 3)
	}
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(wait))
		if _, err := c.Write(data); err != nil {
			served <- err
			return
		}
		// Then the guest's TSO frames the other way.
		up := make([]byte, len(upload))
		if _, err := io.ReadFull(c, up); err != nil {
			served <- err
			return
		}
		if !bytes.Equal(up, upload) {
			served <- fmt.Errorf("kernel received a different stream from the guest")
			return
		}
		served <- nil
	}()

	// ARP for the host.
	arp := make([]byte, 28)
	binary.BigEndian.PutUint16(arp[0:], 1)
	binary.BigEndian.PutUint16(arp[2:], 0x0800)
	arp[4], arp[5] = 6, 4
	binary.BigEndian.PutUint16(arp[6:], 1)
	copy(arp[8:], guestMAC)
	copy(arp[14:], guestIP)
	copy(arp[24:], hostIP)
	m.send(t, netdev.Header{}, eth(stdnet.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0x0806, arp), 12)
	var hostMAC stdnet.HardwareAddr
	deadline := time.Now().Add(wait)
	for hostMAC == nil {
		if time.Now().After(deadline) {
			t.Fatal("no ARP reply")
		}
		_, f := m.recvPacket(t)
		if len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 {
			hostMAC = append(hostMAC, f[22:28]...)
		}
	}

	port := uint16(ln.Addr().(*stdnet.TCPAddr).Port)
	const sport, iss = 40000, 1000
	// SYN with MSS 1460 and window scale 7 (a 8 MiB window).
	opts := []byte{2, 4, 0x05, 0xb4, 1, 3, 3, 7}
	m.send(t, netdev.Header{}, eth(hostMAC, 0x0800, ipv4(6, tcp(sport, port, iss, 0, 0x02, opts, nil))), 12)

	var rcvNxt uint32
	var got []byte
	var superFrames, merged int
	synAcked := false
	for len(got) < total {
		if time.Now().After(deadline) {
			t.Fatalf("received %d of %d bytes", len(got), total)
		}
		h, f := m.recvPacket(t)
		if len(f) < 54 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 6 {
			continue
		}
		ihl := int(f[14]&0xf) * 4
		ipEnd := min(14+int(binary.BigEndian.Uint16(f[16:])), len(f))
		seg := f[14+ihl : ipEnd]
		if binary.BigEndian.Uint16(seg[0:]) != port || binary.BigEndian.Uint16(seg[2:]) != sport {
			continue
		}
		seq, flags := binary.BigEndian.Uint32(seg[4:]), seg[13]
		if !synAcked {
			if flags&0x12 != 0x12 {
				t.Fatalf("expected SYN-ACK, flags %#x", flags)
			}
			synAcked = true
			rcvNxt = seq + 1
			m.send(t, netdev.Header{}, eth(hostMAC, 0x0800, ipv4(6, tcp(sport, port, iss+1, rcvNxt, 0x10, nil, nil))), 12)
			continue
		}
		payload := seg[int(seg[12]>>4)*4:]
		if len(payload) == 0 {
			continue
		}
		if h.GSOType&^netdev.GSOECN == netdev.GSOTCPv4 {
			superFrames++
			if h.GSOSize == 0 || len(payload) <= int(h.GSOSize) {
				t.Errorf("TSO frame of %d bytes with gso_size %d", len(payload), h.GSOSize)
			}
		}
		if h.NumBuffers > 1 {
			merged++
		}
		if seq == rcvNxt { // in order; retransmissions and gaps are skipped
			got = append(got, payload...)
			rcvNxt += uint32(len(payload))
		}
		m.send(t, netdev.Header{}, eth(hostMAC, 0x0800, ipv4(6, tcp(sport, port, iss+1, rcvNxt, 0x10, nil, nil))), 12)
	}
	// The guest sends its data as two TSO super-frames with the TCP
	// checksum left to the host, as Linux's virtio-net does.
	for k := 0; k < 2; k++ {
		chunk := upload[k*20000 : (k+1)*20000]
		seg := tcp(sport, port, iss+1+uint32(k*20000), rcvNxt, 0x18, nil, chunk)
		var pseudo uint32
		for _, w := range [][]byte{guestIP[:2], guestIP[2:], hostIP[:2], hostIP[2:]} {
			pseudo += uint32(binary.BigEndian.Uint16(w))
		}
		pseudo += 6 + uint32(len(seg))
		binary.BigEndian.PutUint16(seg[16:], ^csum(nil, pseudo))
		h := netdev.Header{Flags: netdev.FlagNeedsCsum, GSOType: netdev.GSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
		m.send(t, h, eth(hostMAC, 0x0800, ipv4(6, seg)), 30)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	// The device counts a frame after the back-end took it, which may be
	// after the kernel delivered it: wait for every transmit chain back.
	m.used(t, m.tx, m.tx.InFlight())
	if !bytes.Equal(got[:total], data) {
		t.Fatal("stream differs")
	}
	if superFrames == 0 || merged == 0 {
		t.Errorf("%d TSO frames, %d merged: offloads did not reach the kernel", superFrames, merged)
	}
	s := m.dev.Stats()
	t.Logf("%d TSO super-frames, %d spread over several buffers; stats %+v", superFrames, merged, s)
	if s.RxErrors != 0 || s.TxErrors != 0 || s.TxDropped != 0 || s.TxBytes < 40000 {
		t.Errorf("stats %+v", s)
	}
}

// TestTAPMultiQueueFlows: a device with 4 queue pairs on the 4 queues of
// a multi-queue TAP (tap.OpenQueues), driven by a guest that sets 4 pairs.
// The guest sends a UDP datagram of a flow of its own on each transmit
// queue; the host kernel receives all four and answers each. A
// multi-queue TAP sends a flow's frames back on the queue the flow last
// came from, so each answer must arrive on the receive queue of the pair
// that sent its question, and each pair's counters show one frame each
// way.
func TestTAPMultiQueueFlows(t *testing.T) {
	const pairs = 4
	var taps []*tap.Tap
	var conn stdnet.PacketConn
	var openErr error
	ns := inNetns(t, func() {
		if taps, openErr = tap.OpenQueues("viomq%d", pairs); openErr != nil {
			return
		}
		conn, openErr = stdnet.ListenPacket("udp4", "0.0.0.0:0")
	})
	if openErr != nil {
		t.Fatal(openErr)
	}
	for _, tp := range taps {
		defer tp.Close()
	}
	defer conn.Close()
	name := taps[0].Name()
	// No IPv6 (router solicitations would land on any queue) and a static
	// neighbour entry (no ARP): the answers are the only frames for the
	// guest.
	for _, args := range [][]string{
		{"netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv6.conf." + name + ".disable_ipv6=1"},
		{"-n", ns, "link", "set", name, "up"},
		{"-n", ns, "addr", "add", "10.9.1.1/24", "dev", name},
		{"-n", ns, "neigh", "add", guestIP.String(), "lladdr", guestMAC.String(), "dev", name},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	bes := make([]netdev.Backend, pairs)
	for i, tp := range taps {
		bes[i] = tp
	}
	m := newMachineOn(t, nil, vnet.Config{MAC: guestMAC}, bes...)
	qs := m.startQueues(t, vnet.FeatureCtrlVQ|vnet.FeatureMQ|vnet.FeatureMAC, 2*pairs+1)
	if ack := m.command(t, qs[2*pairs], 2*pairs, 4, 0, []byte{pairs, 0}); ack != 0 {
		t.Fatalf("%d pairs: ack %d", pairs, ack)
	}
	for i := range pairs {
		qs[2*i].Add(nil, []uint32{2048})
		m.guest.Kick(2 * i)
	}
	// The frames go to the TAP's own MAC, or the host's IP layer drops
	// them as another host's.
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/sys/class/net/"+name+"/address").Output()
	if err != nil {
		t.Fatalf("the TAP's MAC: %v", err)
	}
	hostMAC, err := stdnet.ParseMAC(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatal(err)
	}
	port := uint16(conn.LocalAddr().(*stdnet.UDPAddr).Port)
	for i := range pairs {
		dgram := make([]byte, 8, 8+16)
		binary.BigEndian.PutUint16(dgram[0:], uint16(41000+i))
		binary.BigEndian.PutUint16(dgram[2:], port)
		dgram = append(dgram, fmt.Sprintf("question %d", i)...)
		binary.BigEndian.PutUint16(dgram[4:], uint16(len(dgram))) // checksum 0: none, as IPv4 allows
		pkt := append(make([]byte, netdev.HeaderSize), eth(hostMAC, 0x0800, ipv4(17, dgram))...)
		tx := qs[2*i+1]
		if _, err := tx.Add([][]byte{pkt}, nil); err != nil {
			t.Fatal(err)
		}
		m.guest.Kick(2*i + 1)
	}
	conn.SetDeadline(time.Now().Add(wait))
	buf := make([]byte, 256)
	for range pairs {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("the host got no question: %v", err)
		}
		i := from.(*stdnet.UDPAddr).Port - 41000
		if string(buf[:n]) != fmt.Sprintf("question %d", i) {
			t.Fatalf("the host got %q from port %v", buf[:n], from)
		}
		if _, err := conn.WriteTo([]byte(fmt.Sprintf("answer %d", i)), from); err != nil {
			t.Fatal(err)
		}
	}
	for i := range pairs {
		u := m.used(t, qs[2*i], 1)[0]
		f := u.Data[netdev.HeaderSize:]
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != 17 {
			t.Fatalf("pair %d received a frame that is not the answer: % x", i, f)
		}
		ihl := int(f[14]&0xf) * 4
		udp := f[14+ihl:]
		if dport := binary.BigEndian.Uint16(udp[2:]); dport != uint16(41000+i) || string(udp[8:]) != fmt.Sprintf("answer %d", i) {
			t.Errorf("pair %d received the answer for port %d: %q", i, dport, udp[8:])
		}
	}
	for i := range pairs {
		m.used(t, qs[2*i+1], 1)
	}
	for i, q := range m.dev.QueueStats() {
		if q.RxFrames != 1 || q.TxFrames != 1 {
			t.Errorf("pair %d: %+v, want one frame each way", i, q)
		}
	}
}
