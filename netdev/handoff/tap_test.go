//go:build linux

package handoff_test

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/handoff"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/tap"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

// whileDetached is sent while no one holds the TAP.
const whileDetached = "sent while nobody holds the TAP"

// udpTo sends datagrams with payload s from sock to the guest's address
// until q delivers one (skipping the kernel's IPv6 chatter on the link),
// and returns its header. It sends more than once because a TAP's link
// comes up asynchronously when it is attached (carrier on, then the
// kernel's link watch activates its queue): a datagram sent in between
// is dropped, as on a cable plugged in a moment before.
func udpTo(t *testing.T, sock net.PacketConn, q netdev.Backend, s string) netdev.Header {
	t.Helper()
	defer q.SetReadDeadline(time.Time{})
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); {
		if _, err := sock.WriteTo([]byte(s), &net.UDPAddr{IP: net.IPv4(10, 9, 1, 2), Port: 4242}); err != nil {
			t.Fatal(err)
		}
		q.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		for {
			p, err := read(q)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatalf("waiting for the host's datagram: %v", err)
			}
			f := p[netdev.HeaderSize:]
			if len(f) <= 42 || f[12] != 0x08 || f[13] != 0 || f[23] != 17 {
				continue
			}
			switch string(f[42:]) {
			case s:
				return netdev.DecodeHeader(p)
			case whileDetached:
				t.Fatalf("%q was kept for the next attach; the kernel should drop it", whileDetached)
			}
		}
	}
	t.Fatalf("%q never arrived", s)
	return netdev.Header{}
}

// Two NICs on one persistent single-queue TAP, as a migration's source and
// destination on one host: only the one attached holds it (the other's
// attach is EBUSY), the TAP changes hands by Detach and Attach, and each
// attach applies what that NIC's front-end asked (the receive offloads its
// guest negotiated: with checksum offload the kernel hands over the
// host's datagrams with their checksums left partial, without it
// complete).
func TestTAPChangesHands(t *testing.T) {
	ns := nettest.Netns(t, "viohand")
	const name = "viohf0"
	ip(t, "-n", ns, "tuntap", "add", name, "mode", "tap")
	ip(t, "-n", ns, "addr", "add", "10.9.1.1/24", "dev", name)
	ip(t, "-n", ns, "link", "set", name, "up")
	ip(t, "-n", ns, "neigh", "add", "10.9.1.2", "lladdr", "52:54:00:12:34:56", "dev", name, "nud", "permanent")
	open := func() ([]netdev.Backend, error) {
		var tp *tap.Tap
		var err error
		nettest.InNetns(t, ns, func() { tp, err = tap.Open(name) })
		if err != nil {
			return nil, err
		}
		return []netdev.Backend{tp}, nil
	}
	var sock net.PacketConn
	var err error
	nettest.InNetns(t, ns, func() { sock, err = net.ListenPacket("udp4", "10.9.1.1:0") })
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	expect := func(q netdev.Backend, s string, partial bool) {
		t.Helper()
		if h := udpTo(t, sock, q, s); (h.Flags&netdev.FlagNeedsCsum != 0) != partial {
			t.Fatalf("%q arrived with header %+v; want a partial checksum: %v", s, h, partial)
		}
	}

	bes, err := open()
	if err != nil {
		t.Fatal(err)
	}
	src, err := handoff.New(bes, open)
	if err != nil {
		t.Fatal(err)
	}
	sq := src.Queues()[0]
	defer sq.Close()
	if got := src.Facts(); got.Queues != 1 || got.Offloads&tap.BaseOffloads != tap.BaseOffloads {
		t.Fatalf("facts %+v", got)
	}
	expect(sq, "to the source", false)

	dst, err := handoff.NewDetached(handoff.Facts{Queues: 1, Offloads: tap.BaseOffloads}, open)
	if err != nil {
		t.Fatal(err)
	}
	dq := dst.Queues()[0]
	defer dq.Close()
	// The destination's guest negotiated checksum offload (its restore
	// set it while nothing was attached).
	if err := dq.(netdev.Offloader).SetRecvOffloads(netdev.OffloadCsum | netdev.OffloadTSO4); err != nil {
		t.Fatal(err)
	}
	if err := dst.Attach(); !errors.Is(err, unix.EBUSY) || dst.Active() {
		t.Fatalf("attaching the TAP the source holds: %v, want EBUSY", err)
	}
	if err := src.Detach(); err != nil {
		t.Fatal(err)
	}
	// The kernel drops what the host sends meanwhile (the TAP has no
	// carrier): TCP would retransmit it.
	if _, err := sock.WriteTo([]byte(whileDetached), &net.UDPAddr{IP: net.IPv4(10, 9, 1, 2), Port: 4242}); err != nil {
		t.Fatal(err)
	}
	if err := dst.Attach(); err != nil {
		t.Fatal(err)
	}
	if p, err := dst.Inner()[0].(*tap.Tap).Persistent(); err != nil || !p {
		t.Fatalf("the TAP attached by the destination: persistent %v, %v", p, err)
	}
	if err := src.Attach(); !errors.Is(err, unix.EBUSY) || src.Active() {
		t.Fatalf("the source attaching the TAP the destination holds: %v, want EBUSY", err)
	}
	expect(dq, "to the destination", true)

	// And back: the source's own settings (no offloads) come back with it.
	if err := dst.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := src.Attach(); err != nil {
		t.Fatal(err)
	}
	expect(sq, "back to the source", false)
}

// A multi-queue TAP changes hands with all its queues, and each attach
// applies the queue switches that side's front-end asked for: the source's
// guest uses one of two pairs (its second queue detached), the
// destination's, restored while nothing was attached, uses both. The
// kernel's count of the TAP's queues (its rx-N directories in sysfs) shows
// what is attached and enabled.
func TestTAPMultiQueueChangesHands(t *testing.T) {
	ns := nettest.Netns(t, "viohmq")
	const name = "viohmq0"
	ip(t, "-n", ns, "tuntap", "add", name, "mode", "tap", "multi_queue")
	open := func() ([]netdev.Backend, error) {
		var taps []*tap.Tap
		var err error
		nettest.InNetns(t, ns, func() { taps, err = tap.OpenQueues(name, 2) })
		if err != nil {
			return nil, err
		}
		return []netdev.Backend{taps[0], taps[1]}, nil
	}
	queues := func() string {
		t.Helper()
		out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", "ls -d /sys/class/net/"+name+"/queues/rx-* | wc -l").Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(out))
	}
	bes, err := open()
	if err != nil {
		t.Fatal(err)
	}
	src, err := handoff.New(bes, open)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range src.Queues() {
		defer q.Close()
	}
	if got := src.Facts().Queues; got != 2 {
		t.Fatalf("facts: %d queues", got)
	}
	if n := queues(); n != "2" {
		t.Fatalf("%s queues with both attached", n)
	}
	if err := src.Queues()[1].(netdev.QueueSwitch).SetQueueEnabled(false); err != nil {
		t.Fatal(err)
	}
	if n := queues(); n != "1" {
		t.Fatalf("%s queues with the source's second detached", n)
	}

	dst, err := handoff.NewDetached(handoff.Facts{Queues: 2, Offloads: tap.BaseOffloads}, open)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range dst.Queues() {
		defer q.Close()
		if err := q.(netdev.QueueSwitch).SetQueueEnabled(true); err != nil {
			t.Fatal(err)
		}
	}
	if err := src.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := dst.Attach(); err != nil {
		t.Fatal(err)
	}
	if n := queues(); n != "2" {
		t.Fatalf("%s queues after the destination, using both pairs, attached", n)
	}
	if err := dst.Detach(); err != nil {
		t.Fatal(err)
	}
	if err := src.Attach(); err != nil {
		t.Fatal(err)
	}
	if n := queues(); n != "1" {
		t.Fatalf("%s queues after the source, using one pair, took the TAP back", n)
	}
}
