//go:build linux

package tap_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/tap"
)

const wait = 10 * time.Second // bounds a hang; never a synchronization

var (
	guestMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	guestIP  = net.IPv4(10, 9, 0, 2).To4()
	hostIP   = net.IPv4(10, 9, 0, 1).To4()
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

func checksum(b []byte, sum uint32) uint16 {
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

func ether(dst net.HardwareAddr, typ uint16, payload []byte) []byte {
	b := make([]byte, 14, 14+len(payload))
	copy(b, dst)
	copy(b[6:], guestMAC)
	binary.BigEndian.PutUint16(b[12:], typ)
	return append(b, payload...)
}

func arpRequest() []byte {
	a := make([]byte, 28)
	binary.BigEndian.PutUint16(a[0:], 1)      // Ethernet
	binary.BigEndian.PutUint16(a[2:], 0x0800) // IPv4
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1) // request
	copy(a[8:], guestMAC)
	copy(a[14:], guestIP)
	copy(a[24:], hostIP)
	return ether(net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, 0x0806, a)
}

func ipv4(proto byte, payload []byte) []byte {
	h := make([]byte, 20, 20+len(payload))
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
	h[8], h[9] = 64, proto
	copy(h[12:], guestIP)
	copy(h[16:], hostIP)
	binary.BigEndian.PutUint16(h[10:], checksum(h, 0))
	return append(h, payload...)
}

// recvMatching reads frames until match accepts one (the kernel also sends
// IPv6 router solicitations and the like on a fresh link).
func recvMatching(t *testing.T, tp *tap.Tap, match func(netdev.Header, []byte) bool) (netdev.Header, []byte) {
	t.Helper()
	if err := tp.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	bufs := [][]byte{make([]byte, netdev.MaxPacketLen), make([]byte, netdev.MaxPacketLen)}
	sizes := make([]int, 2)
	for {
		n, err := tp.ReadFrames(bufs, sizes)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			h := netdev.DecodeHeader(bufs[i])
			if f := bufs[i][netdev.HeaderSize:sizes[i]]; match(h, f) {
				return h, append([]byte(nil), f...)
			}
		}
	}
}

func send(t *testing.T, tp *tap.Tap, h netdev.Header, frame []byte) {
	t.Helper()
	hb := make([]byte, netdev.HeaderSize)
	h.Encode(hb)
	// Split the frame in two buffers: WriteFrames gathers.
	if n, err := tp.WriteFrames([][][]byte{{hb, frame[:10], frame[10:]}}); n != 1 || err != nil {
		t.Fatalf("WriteFrames: %d %v", n, err)
	}
}

// TestKernelAnswers plays a guest on a TAP in a fresh network namespace:
// the kernel's ARP, ICMP and UDP answers prove that frames cross in both
// directions with their virtio-net headers.
func TestKernelAnswers(t *testing.T) {
	ns := nettest.Netns(t, "viotap")
	var tp *tap.Tap
	var sock net.PacketConn
	var openErr error
	nettest.InNetns(t, ns, func() {
		if tp, openErr = tap.Open("viotap%d"); openErr != nil {
			return
		}
		sock, openErr = net.ListenPacket("udp4", ":0")
	})
	if openErr != nil {
		t.Fatal(openErr)
	}
	defer tp.Close()
	defer sock.Close()
	if tp.Offloads()&netdev.OffloadTSO4 == 0 {
		t.Errorf("offloads %#x", tp.Offloads())
	}
	ip(t, "-n", ns, "link", "set", tp.Name(), "up")
	ip(t, "-n", ns, "addr", "add", "10.9.0.1/24", "dev", tp.Name())

	// ARP: who has 10.9.0.1?
	send(t, tp, netdev.Header{}, arpRequest())
	_, reply := recvMatching(t, tp, func(_ netdev.Header, f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2
	})
	hostMAC := net.HardwareAddr(reply[22:28])
	if !bytes.Equal(reply[28:32], hostIP) || !bytes.Equal(reply[:6], guestMAC) || !bytes.Equal(reply[32:38], guestMAC) {
		t.Fatalf("ARP reply % x", reply[:42])
	}

	// ICMP echo, checksums computed by the "guest".
	icmp := make([]byte, 8+32)
	icmp[0] = 8
	binary.BigEndian.PutUint16(icmp[4:], 0x1234)
	binary.BigEndian.PutUint16(icmp[6:], 7)
	copy(icmp[8:], "vio tap test payload 0123456789")
	binary.BigEndian.PutUint16(icmp[2:], checksum(icmp, 0))
	send(t, tp, netdev.Header{}, ether(hostMAC, 0x0800, ipv4(1, icmp)))
	_, echo := recvMatching(t, tp, func(_ netdev.Header, f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 1 && f[34] == 0
	})
	if binary.BigEndian.Uint16(echo[38:]) != 0x1234 || !bytes.Equal(echo[42:], icmp[8:]) {
		t.Fatalf("echo reply % x", echo)
	}

	// UDP with the checksum left to the host (NEEDS_CSUM), as a guest
	// with checksum offload sends it.
	port := sock.LocalAddr().(*net.UDPAddr).Port
	payload := []byte("hello from the guest side")
	udp := make([]byte, 8+len(payload))
	binary.BigEndian.PutUint16(udp[0:], 4242)
	binary.BigEndian.PutUint16(udp[2:], uint16(port))
	binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
	copy(udp[8:], payload)
	// Partial checksum: the pseudo-header sum, not inverted.
	var pseudo uint32
	for _, w := range [][]byte{guestIP[:2], guestIP[2:], hostIP[:2], hostIP[2:]} {
		pseudo += uint32(binary.BigEndian.Uint16(w))
	}
	pseudo += 17 + uint32(len(udp))
	binary.BigEndian.PutUint16(udp[6:], ^checksum(nil, pseudo))
	send(t, tp, netdev.Header{Flags: netdev.FlagNeedsCsum, CsumStart: 34, CsumOffset: 6}, ether(hostMAC, 0x0800, ipv4(17, udp)))
	sock.SetReadDeadline(time.Now().Add(wait))
	buf := make([]byte, 100)
	n, from, err := sock.ReadFrom(buf)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(buf[:n], payload) || from.(*net.UDPAddr).Port != 4242 {
		t.Fatalf("socket got %q from %v", buf[:n], from)
	}

	// And back, with checksum offload towards the guest allowed.
	if err := tp.SetRecvOffloads(netdev.OffloadCsum | netdev.OffloadTSO4); err != nil {
		t.Fatal(err)
	}
	if _, err := sock.WriteTo([]byte("hello guest"), &net.UDPAddr{IP: guestIP, Port: 4242}); err != nil {
		t.Fatal(err)
	}
	h, f := recvMatching(t, tp, func(_ netdev.Header, f []byte) bool {
		return len(f) >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0800 && f[23] == 17
	})
	if string(f[42:]) != "hello guest" || binary.BigEndian.Uint16(f[36:]) != 4242 {
		t.Fatalf("UDP to guest: % x", f)
	}
	if err := h.Check(len(f), netdev.OffloadCsum); err != nil {
		t.Errorf("kernel's header %+v: %v", h, err)
	}

	// A header the kernel refuses fails that frame only.
	bad := netdev.Header{GSOType: netdev.GSOTCPv4, GSOSize: 0}
	hb := make([]byte, netdev.HeaderSize)
	bad.Encode(hb)
	good := make([]byte, netdev.HeaderSize)
	n, err = tp.WriteFrames([][][]byte{{hb, ether(hostMAC, 0x0800, ipv4(6, make([]byte, 20)))}, {good, arpRequest()}})
	if n != 0 || err == nil || errors.Is(err, netdev.ErrClosed) {
		t.Errorf("bad GSO header: %d, %v", n, err)
	}

	// Close unblocks a reader.
	done := make(chan error, 1)
	tp.SetReadDeadline(time.Time{})
	go func() {
		for {
			if _, err := tp.ReadFrames([][]byte{make([]byte, netdev.MaxPacketLen)}, []int{0}); err != nil {
				done <- err
				return
			}
		}
	}()
	tp.Close()
	select {
	case err := <-done:
		if !errors.Is(err, netdev.ErrClosed) {
			t.Errorf("read after close: %v", err)
		}
	case <-time.After(wait):
		t.Fatal("Close did not unblock ReadFrames")
	}
}

func TestDeadline(t *testing.T) {
	ns := nettest.Netns(t, "viotap")
	var tp *tap.Tap
	var err error
	nettest.InNetns(t, ns, func() { tp, err = tap.Open("viotap%d") })
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Close()
	// The link is down: nothing arrives, and the deadline ends the read.
	tp.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err = tp.ReadFrames([][]byte{make([]byte, netdev.MaxPacketLen)}, []int{0})
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("got %v", err)
	}
	// Multi-queue: a second TAP with two queues.
	var qs []*tap.Tap
	nettest.InNetns(t, ns, func() { qs, err = tap.OpenQueues("viomq%d", 2) })
	if err != nil {
		t.Fatal(err)
	}
	if len(qs) != 2 || qs[0].Name() != qs[1].Name() {
		t.Errorf("queues %v", qs)
	}
	// Detach and re-attach the second queue (TUNSETQUEUE).
	for _, on := range []bool{false, true, true} {
		if err := qs[1].SetQueueEnabled(on); err != nil {
			t.Errorf("SetQueueEnabled(%v): %v", on, err)
		}
	}
	if err := tp.SetQueueEnabled(false); err == nil {
		t.Error("a single-queue TAP accepted being disabled")
	}
	for _, q := range qs {
		q.Close()
	}
}
