package vswitch_test

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/nettest"
	"github.com/viovmm/vio/netdev/vswitch"
)

const wait = 10 * time.Second // bounds a hang; never a synchronization

// clock is a manual clock for aging and rates.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func mac(i byte) [6]byte { return [6]byte{0x52, 0x54, 0, 0, 0, i} }

var bcast = [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

// eth builds a frame with payload tag (so a receiver can tell frames
// apart) and an EtherType no check looks into.
func eth(dst, src [6]byte, tag string) []byte {
	b := make([]byte, 60)
	copy(b, dst[:])
	copy(b[6:], src[:])
	binary.BigEndian.PutUint16(b[12:], 0x88b5)
	copy(b[14:], tag)
	return b
}

func arp(src [6]byte, sender, target netip.Addr) []byte {
	b := make([]byte, 42)
	copy(b, bcast[:])
	copy(b[6:], src[:])
	binary.BigEndian.PutUint16(b[12:], 0x0806)
	a := b[14:]
	binary.BigEndian.PutUint16(a[0:], 1)
	binary.BigEndian.PutUint16(a[2:], 0x0800)
	a[4], a[5] = 6, 4
	binary.BigEndian.PutUint16(a[6:], 1)
	copy(a[8:], src[:])
	s4, t4 := sender.As4(), target.As4()
	copy(a[14:], s4[:])
	copy(a[24:], t4[:])
	return b
}

func ipv4(dst, src [6]byte, from, to netip.Addr) []byte {
	b := make([]byte, 14+20+8)
	copy(b, dst[:])
	copy(b[6:], src[:])
	binary.BigEndian.PutUint16(b[12:], 0x0800)
	ip := b[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], 28)
	ip[8], ip[9] = 64, 17
	f4, t4 := from.As4(), to.As4()
	copy(ip[12:], f4[:])
	copy(ip[16:], t4[:])
	binary.BigEndian.PutUint16(ip[20:], 1000)
	binary.BigEndian.PutUint16(ip[22:], 2000)
	binary.BigEndian.PutUint16(ip[24:], 8)
	return b
}

type guest struct {
	t  *testing.T
	ep *nettest.Endpoint
	p  *vswitch.Port
}

func plug(t *testing.T, sw *vswitch.Switch, pc vswitch.PortConfig) *guest {
	t.Helper()
	a, b := nettest.Pair(4096)
	p, err := sw.AddPort(a, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return &guest{t, b, p}
}

func (g *guest) send(f []byte) {
	g.t.Helper()
	if err := g.ep.Send(netdev.Header{}, f); err != nil {
		g.t.Fatal(err)
	}
}

func (g *guest) recv() []byte {
	g.t.Helper()
	_, f, err := g.ep.Recv(wait)
	if err != nil {
		g.t.Fatalf("%s: %v", g.p.Name(), err)
	}
	return f
}

// expect reads the next frame and checks it is want.
func (g *guest) expect(want []byte) {
	g.t.Helper()
	if got := g.recv(); !bytes.Equal(got, want) {
		g.t.Fatalf("%s got %x..., want %x...", g.p.Name(), got[:20], want[:20])
	}
}

// Frames through the switch pass in order from one port, so a marker sent
// after a frame proves, when it arrives first, that the frame did not.

func TestLearningAndVLANs(t *testing.T) {
	sw := vswitch.New(vswitch.Config{})
	defer sw.Close()
	a := plug(t, sw, vswitch.PortConfig{Name: "a"})
	b := plug(t, sw, vswitch.PortConfig{Name: "b"})
	c := plug(t, sw, vswitch.PortConfig{Name: "c"})
	d := plug(t, sw, vswitch.PortConfig{Name: "d", VLAN: 20})
	e := plug(t, sw, vswitch.PortConfig{Name: "e", VLAN: 20})

	// A broadcast reaches the VLAN's other ports, not the sender, not
	// another VLAN.
	hello := eth(bcast, mac(1), "a: who is there")
	a.send(hello)
	b.expect(hello)
	c.expect(hello)
	marker := eth(bcast, mac(5), "e: marker")
	e.send(marker)
	d.expect(marker) // not hello: VLAN 20 never saw it

	// b answers a by unicast: a known address goes to its port alone.
	reply := eth(mac(1), mac(2), "b: here")
	b.send(reply)
	a.expect(reply)
	m2 := eth(bcast, mac(2), "b: marker")
	b.send(m2)
	c.expect(m2) // not reply
	a.expect(m2)

	// An unknown unicast floods within the VLAN.
	unk := eth(mac(9), mac(3), "c: to nobody")
	c.send(unk)
	a.expect(unk)
	b.expect(unk)

	// The same MAC in another VLAN is another station: d's frame to
	// mac(1) in VLAN 20 is unknown there, so it floods to e only.
	x := eth(mac(1), mac(4), "d: to mac 1 in vlan 20")
	d.send(x)
	e.expect(x)

	// A tagged frame from an access port is dropped.
	tagged := eth(bcast, mac(1), "")
	tagged = append(tagged[:12:12], append([]byte{0x81, 0, 0, 20}, eth(bcast, mac(1), "tagged")[12:]...)...)
	a.send(tagged)
	m3 := eth(bcast, mac(1), "a: marker")
	a.send(m3)
	b.expect(m3)
	if s := a.p.Stats(); s.TaggedDropped != 1 {
		t.Fatalf("a: %+v", s)
	}
}

func TestAntiSpoof(t *testing.T) {
	sw := vswitch.New(vswitch.Config{})
	defer sw.Close()
	ipA, ipB := netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2")
	// a learns, b is configured.
	a := plug(t, sw, vswitch.PortConfig{Name: "a", AntiSpoof: true})
	b := plug(t, sw, vswitch.PortConfig{Name: "b", AntiSpoof: true, MAC: net.HardwareAddr{0x52, 0x54, 0, 0, 0, 2}, IPv4: ipB})
	watch := plug(t, sw, vswitch.PortConfig{Name: "watch"})

	pass := func(g *guest, f []byte) {
		t.Helper()
		g.send(f)
		watch.expect(f)
	}
	// A dropped frame is followed by a passing one from the same port,
	// which must be the next one watch sees.
	drop := func(g *guest, f []byte) {
		t.Helper()
		g.send(f)
	}
	// A DHCP-style frame from 0.0.0.0 passes and teaches nothing.
	pass(a, ipv4(bcast, mac(1), netip.IPv4Unspecified(), netip.MustParseAddr("255.255.255.255")))
	pass(a, arp(mac(1), ipA, ipB)) // learns 10.0.0.1
	drop(a, eth(bcast, mac(7), "a as mac 7"))
	drop(a, arp(mac(1), ipB, ipA))                                     // ARP claiming b's address
	drop(a, ipv4(bcast, mac(1), ipB, ipA))                             // IPv4 from b's address
	drop(b, eth(bcast, mac(1), "b as a"))                              // b is configured as mac 2
	drop(b, ipv4(bcast, mac(2), netip.MustParseAddr("10.0.0.9"), ipA)) // b is configured as 10.0.0.2
	pass(b, ipv4(bcast, mac(2), ipB, ipA))
	pass(a, ipv4(bcast, mac(1), ipA, ipB))
	sa, sb := a.p.Stats(), b.p.Stats()
	if sa.SpoofDropped != 3 || sb.SpoofDropped != 2 {
		t.Fatalf("spoof drops: a %d, b %d; want 3 and 2", sa.SpoofDropped, sb.SpoofDropped)
	}
	if sa.MAC != "52:54:00:00:00:01" || sa.IPv4 != "10.0.0.1" {
		t.Fatalf("a learned %s %s", sa.MAC, sa.IPv4)
	}
}

func TestRateAndFloodLimits(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	sw := vswitch.New(vswitch.Config{Now: clk.now, FloodRate: 100})
	defer sw.Close()
	a := plug(t, sw, vswitch.PortConfig{Name: "a", Rate: 100000}) // 100 kB/s, bursts of 64 KiB
	b := plug(t, sw, vswitch.PortConfig{Name: "b"})
	b.send(eth(bcast, mac(2), "b: learn me"))
	a.expect(eth(bcast, mac(2), "b: learn me"))

	// Clock stopped: a can send its burst and no more.
	f := make([]byte, 1000)
	copy(f, eth(mac(2), mac(1), "a: data"))
	for range 100 {
		a.send(f)
	}
	got := 0
	for got < 65 {
		b.expect(f)
		got++
	}
	marker := eth(mac(2), mac(1), "a: marker")
	clk.add(time.Second) // 100 kB more
	a.send(marker)
	b.expect(marker)
	if s := a.p.Stats(); s.RateDropped != 100-65 {
		t.Fatalf("rate drops %d, want 35 (64 KiB of 1000-byte frames pass)", s.RateDropped)
	}

	// Flooding: 100/s, bursts of 10; b floods 30 frames at a stopped
	// clock, a sees 10.
	for i := range 30 {
		b.send(eth(bcast, mac(2), string(rune('A'+i))))
	}
	for i := range 10 {
		a.expect(eth(bcast, mac(2), string(rune('A'+i))))
	}
	m := eth(mac(1), mac(2), "b: unicast marker")
	b.send(m)
	a.expect(m)
	if s := b.p.Stats(); s.FloodDropped != 20 {
		t.Fatalf("flood drops %d, want 20", s.FloodDropped)
	}
}

func TestAgingAndRemoval(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	sw := vswitch.New(vswitch.Config{Now: clk.now, AgeTime: time.Minute})
	defer sw.Close()
	a := plug(t, sw, vswitch.PortConfig{Name: "a"})
	b := plug(t, sw, vswitch.PortConfig{Name: "b"})
	c := plug(t, sw, vswitch.PortConfig{Name: "c"})
	b.send(eth(bcast, mac(2), "b"))
	a.recv()
	c.recv()
	u := eth(mac(2), mac(1), "a to b, known")
	a.send(u)
	b.expect(u)
	clk.add(2 * time.Minute) // b's address ages out
	u2 := eth(mac(2), mac(1), "a to b, aged")
	a.send(u2)
	c.expect(u2) // flooded again
	b.expect(u2)
	if n := sw.Stats().Addresses; n != 1 {
		t.Fatalf("%d addresses after the sweep, want 1 (a's)", n)
	}

	// A port whose back-end goes away leaves the switch and its
	// addresses with it.
	a.ep.Close()
	sw.RemovePort(a.p)
	select {
	case <-a.p.Done():
	case <-time.After(wait):
		t.Fatal("port not removed")
	}
	st := sw.Stats()
	if len(st.Ports) != 3 || st.Addresses != 0 {
		t.Fatalf("after removal: %+v", st)
	}
	// The gone port's counters stay, marked disconnected, so a peer that
	// has exited can still be accounted for.
	for _, ps := range st.Ports {
		if ps.Connected != (ps.Name != "a") {
			t.Errorf("port %s: connected %v", ps.Name, ps.Connected)
		}
		if ps.Name == "a" && (ps.FramesIn != 2 || ps.FramesOut != 1) {
			t.Errorf("removed port a kept %+v, want 2 frames in and 1 out", ps)
		}
	}
}

func TestBadConfig(t *testing.T) {
	sw := vswitch.New(vswitch.Config{})
	defer sw.Close()
	for _, pc := range []vswitch.PortConfig{
		{VLAN: 4095},
		{MAC: net.HardwareAddr{1, 0, 0, 0, 0, 1}},
		{IPv4: netip.MustParseAddr("fd00::1")},
		{Rate: -1},
	} {
		x, _ := nettest.Pair(1)
		if _, err := sw.AddPort(x, pc); err == nil {
			t.Errorf("%+v accepted", pc)
		}
	}
}
