// Package vswitch is a learning Ethernet switch whose ports are
// netdev.Backends: a socket.Conn per connection for `vio switch` (each a
// vio or QEMU guest), or any other back-end in-process.
//
// Per port: an access VLAN (frames enter and leave untagged; a tagged
// frame from a port is dropped), anti-spoofing (the port's MAC and IPv4
// address are configured or learned from its first frames; frames from
// another source MAC, and ARP or IPv4 claiming another address, are
// dropped), a policing rate limit on what the port sends, and counters.
//
// Forwarding: the source address is learned per VLAN; a unicast frame to
// a known address goes to its port, anything else is flooded to the
// VLAN's other ports. Learned addresses age out; the table has a bounded
// size (when full, new addresses are not learned and their frames are
// flooded); flooding is policed per ingress port, so one port's broadcast
// storm cannot saturate the others. Every port has a bounded output queue
// drained by its own goroutine: a port that does not read loses its own
// frames (counted) and never slows the switch or the other ports.
package vswitch

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/frame"
	"github.com/viovmm/vio/tokenbucket"
)

// Config tunes a switch. Zero fields take the defaults.
type Config struct {
	// AgeTime is how long a learned address lives without traffic from
	// it (default 300 s, as in Linux's bridge).
	AgeTime time.Duration
	// MaxAddresses bounds the forwarding table (default 4096).
	MaxAddresses int
	// FloodRate is how many flooded frames a second one port may cause
	// (default 2000, bursts of 200).
	FloodRate int64
	// QueueLen is each port's output queue, in frames (default 512).
	QueueLen int
	// Now is the clock (tests pass their own); default time.Now.
	Now func() time.Time
}

// PortConfig is one port's policy.
type PortConfig struct {
	// Name identifies the port in counters (default "portN").
	Name string
	// VLAN is the port's access VLAN, 1-4094 (0 means 1).
	VLAN uint16
	// AntiSpoof turns on source checking: frames must come from MAC and,
	// for ARP and IPv4, from IPv4. Each that is not configured is learned
	// from the first frame that shows one (IPv4 0.0.0.0, as in a DHCP
	// request or an ARP probe, is always allowed and never learned).
	AntiSpoof bool
	MAC       net.HardwareAddr
	IPv4      netip.Addr
	// Rate polices what the port sends, in bytes a second (0: no limit).
	Rate int64
}

// PortStats are one port's counters. "In" is from the port into the
// switch, "Out" from the switch to the port.
type PortStats struct {
	Name string `json:"name"`
	// Connected is false for a port whose peer has gone: the switch keeps
	// its last counters (the newest maxDeparted such ports), as a real
	// switch keeps a port's counters while its link is down, so a peer
	// that exits can still be accounted for.
	Connected     bool   `json:"connected"`
	VLAN          uint16 `json:"vlan"`
	MAC           string `json:"mac,omitempty"`
	IPv4          string `json:"ipv4,omitempty"`
	FramesIn      uint64 `json:"frames_in"`
	BytesIn       uint64 `json:"bytes_in"`
	FramesOut     uint64 `json:"frames_out"`
	BytesOut      uint64 `json:"bytes_out"`
	SpoofDropped  uint64 `json:"spoof_dropped"`
	RateDropped   uint64 `json:"rate_dropped"`
	FloodDropped  uint64 `json:"flood_dropped"`
	TaggedDropped uint64 `json:"tagged_dropped"`
	BadDropped    uint64 `json:"bad_dropped"`
	QueueDropped  uint64 `json:"queue_dropped"` // output queue full
	Flooded       uint64 `json:"flooded"`
}

// Stats are the switch's counters.
type Stats struct {
	Ports     []PortStats `json:"ports"`
	Addresses int         `json:"addresses"`
	Unlearned uint64      `json:"unlearned"` // addresses not learned: table full
}

type fdbKey struct {
	vlan uint16
	mac  [6]byte
}

type fdbEntry struct {
	port *Port
	seen time.Time
}

// Switch is a running switch.
type Switch struct {
	cfg Config

	mu        sync.Mutex // guards the fields below
	ports     map[*Port]struct{}
	fdb       map[fdbKey]fdbEntry
	nextID    int
	departed  []PortStats // last counters of removed ports, oldest first
	closed    bool
	lastSweep time.Time

	unlearned atomic.Uint64
	wg        sync.WaitGroup
}

// Port is a switch port.
type Port struct {
	sw    *Switch
	be    netdev.Backend
	name  string
	vlan  uint16
	spoof bool
	rate  *tokenbucket.Bucket
	flood *tokenbucket.Bucket
	out   chan []byte
	done  chan struct{}
	once  sync.Once

	mu   sync.Mutex // guards mac and ip
	mac  [6]byte    // zero: not yet known
	ip   netip.Addr // invalid: not yet known
	hasM bool

	framesIn, bytesIn, framesOut, bytesOut                         atomic.Uint64
	spoofDrop, rateDrop, floodDrop, taggedDrop, badDrop, queueDrop atomic.Uint64
	flooded                                                        atomic.Uint64
}

// ErrClosed is returned by AddPort on a closed switch.
var ErrClosed = errors.New("vswitch: switch closed")

// New returns a switch with no ports.
func New(c Config) *Switch {
	if c.AgeTime <= 0 {
		c.AgeTime = 300 * time.Second
	}
	if c.MaxAddresses <= 0 {
		c.MaxAddresses = 4096
	}
	if c.FloodRate <= 0 {
		c.FloodRate = 2000
	}
	if c.QueueLen <= 0 {
		c.QueueLen = 512
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return &Switch{cfg: c, ports: map[*Port]struct{}{}, fdb: map[fdbKey]fdbEntry{}}
}

// AddPort attaches be with policy pc. The switch owns be from now on: it
// closes it when the port is removed (be failing, RemovePort or Close).
func (s *Switch) AddPort(be netdev.Backend, pc PortConfig) (*Port, error) {
	if pc.VLAN == 0 {
		pc.VLAN = 1
	}
	if pc.VLAN > 4094 {
		be.Close()
		return nil, fmt.Errorf("vswitch: VLAN %d: want 1 to 4094", pc.VLAN)
	}
	if pc.MAC != nil && (len(pc.MAC) != 6 || pc.MAC[0]&1 != 0) {
		be.Close()
		return nil, fmt.Errorf("vswitch: port MAC %v is not a unicast Ethernet address", pc.MAC)
	}
	if pc.IPv4.IsValid() && !pc.IPv4.Is4() {
		be.Close()
		return nil, fmt.Errorf("vswitch: port address %v is not IPv4", pc.IPv4)
	}
	if pc.Rate < 0 {
		be.Close()
		return nil, fmt.Errorf("vswitch: rate %d is negative", pc.Rate)
	}
	now := s.cfg.Now()
	p := &Port{
		sw: s, be: be, vlan: pc.VLAN, spoof: pc.AntiSpoof,
		rate:  tokenbucket.New(tokenbucket.PerSecond(pc.Rate, 64<<10), now),
		flood: tokenbucket.New(tokenbucket.PerSecond(s.cfg.FloodRate, s.cfg.FloodRate/10), now),
		out:   make(chan []byte, s.cfg.QueueLen),
		done:  make(chan struct{}),
		ip:    pc.IPv4,
	}
	if pc.MAC != nil {
		p.mac, p.hasM = [6]byte(pc.MAC), true
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		be.Close()
		return nil, ErrClosed
	}
	s.nextID++
	p.name = pc.Name
	if p.name == "" {
		p.name = fmt.Sprintf("port%d", s.nextID)
	}
	s.ports[p] = struct{}{}
	s.wg.Add(2)
	s.mu.Unlock()
	go p.readLoop()
	go p.writeLoop()
	return p, nil
}

// Name returns the port's name.
func (p *Port) Name() string { return p.name }

// Done is closed when the port has been removed.
func (p *Port) Done() <-chan struct{} { return p.done }

// RemovePort detaches p and closes its back-end.
func (s *Switch) RemovePort(p *Port) { p.remove() }

func (p *Port) remove() {
	p.once.Do(func() {
		s := p.sw
		s.mu.Lock()
		delete(s.ports, p)
		if len(s.departed) == maxDeparted {
			s.departed = append(s.departed[:0], s.departed[1:]...)
		}
		s.departed = append(s.departed, p.Stats())
		for k, e := range s.fdb {
			if e.port == p {
				delete(s.fdb, k)
			}
		}
		s.mu.Unlock()
		close(p.done)
		p.be.Close()
	})
}

// Close removes every port and waits for the switch's goroutines.
func (s *Switch) Close() error {
	s.mu.Lock()
	s.closed = true
	ports := make([]*Port, 0, len(s.ports))
	for p := range s.ports {
		ports = append(ports, p)
	}
	s.mu.Unlock()
	for _, p := range ports {
		p.remove()
	}
	s.wg.Wait()
	return nil
}

// maxDeparted bounds how many removed ports' counters the switch keeps.
const maxDeparted = 64

const batch = 16

func (p *Port) readLoop() {
	defer p.sw.wg.Done()
	defer p.remove()
	bufs := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, netdev.MaxPacketLen)
	}
	sizes := make([]int, batch)
	for {
		n, err := p.be.ReadFrames(bufs, sizes)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue
			}
			return // closed, or the peer is gone for good
		}
		for i := range n {
			p.sw.ingress(p, bufs[i][:sizes[i]])
		}
	}
}

func (p *Port) writeLoop() {
	defer p.sw.wg.Done()
	frames := make([][][]byte, 0, batch)
	for {
		var pkt []byte
		select {
		case <-p.done:
			return
		case pkt = <-p.out:
		}
		frames = frames[:0]
		frames = append(frames, [][]byte{pkt})
		for more := true; more && len(frames) < batch; {
			select {
			case pkt = <-p.out:
				frames = append(frames, [][]byte{pkt})
			default:
				more = false
			}
		}
		for sent := 0; sent < len(frames); {
			n, err := p.be.WriteFrames(frames[sent:])
			for _, f := range frames[sent : sent+n] {
				p.framesOut.Add(1)
				p.bytesOut.Add(uint64(len(f[0]) - netdev.HeaderSize))
			}
			sent += n
			if err == nil {
				break
			}
			if errors.Is(err, netdev.ErrClosed) {
				return
			}
			p.queueDrop.Add(1) // frames[sent] alone was refused
			sent++
		}
		clear(frames)
	}
}

// ingress handles one packet (virtio-net header and frame) from p.
func (s *Switch) ingress(p *Port, pkt []byte) {
	if len(pkt) < netdev.HeaderSize+netdev.MinFrameLen {
		p.badDrop.Add(1)
		return
	}
	if h := netdev.DecodeHeader(pkt); h.GSOType != netdev.GSONone || h.Flags&netdev.FlagNeedsCsum != 0 {
		// Ports offer no offloads: every frame must be complete, since
		// it may leave through a port that cannot finish it.
		p.badDrop.Add(1)
		return
	}
	fr := pkt[netdev.HeaderSize:]
	f, err := frame.Parse(fr)
	if err != nil && (f.EtherType == frame.TypeARP || f.EtherType == frame.TypeIPv4) && p.spoof {
		// A malformed ARP or IPv4 frame cannot be checked: drop it.
		p.badDrop.Add(1)
		return
	}
	p.framesIn.Add(1)
	p.bytesIn.Add(uint64(len(fr)))
	if f.Tagged {
		p.taggedDrop.Add(1)
		return
	}
	if f.Src[0]&1 != 0 {
		p.spoofDrop.Add(1) // a multicast source address is never legitimate
		return
	}
	if p.spoof && !p.checkSource(&f) {
		p.spoofDrop.Add(1)
		return
	}
	now := s.cfg.Now()
	if !p.rate.Allow(int64(len(fr)), now) {
		p.rateDrop.Add(1)
		return
	}
	// The packet buffer is reused by the reader: the ports get a copy,
	// shared between them (nobody writes to it).
	cp := make([]byte, len(pkt))
	copy(cp, pkt)
	cp[0], cp[1] = 0, 0 // flags and GSO type; the rest are zero already

	s.mu.Lock()
	s.sweepLocked(now)
	key := fdbKey{p.vlan, f.Src}
	if _, ok := s.fdb[key]; ok || len(s.fdb) < s.cfg.MaxAddresses {
		s.fdb[key] = fdbEntry{port: p, seen: now}
	} else {
		s.unlearned.Add(1)
	}
	var dst *Port
	if f.Dst[0]&1 == 0 {
		if e, ok := s.fdb[fdbKey{p.vlan, f.Dst}]; ok && now.Sub(e.seen) < s.cfg.AgeTime {
			dst = e.port
		}
	}
	if dst != nil {
		s.mu.Unlock()
		if dst != p {
			dst.enqueue(cp)
		}
		return
	}
	var targets []*Port
	for q := range s.ports {
		if q != p && q.vlan == p.vlan {
			targets = append(targets, q)
		}
	}
	s.mu.Unlock()
	if len(targets) == 0 {
		return
	}
	if !p.flood.Allow(1, now) {
		p.floodDrop.Add(1)
		return
	}
	p.flooded.Add(1)
	for _, q := range targets {
		q.enqueue(cp)
	}
}

// sweepLocked forgets aged addresses, at most once per tenth of the age
// time (lookups check the age themselves).
func (s *Switch) sweepLocked(now time.Time) {
	if now.Sub(s.lastSweep) < s.cfg.AgeTime/10 {
		return
	}
	s.lastSweep = now
	for k, e := range s.fdb {
		if now.Sub(e.seen) >= s.cfg.AgeTime {
			delete(s.fdb, k)
		}
	}
}

func (q *Port) enqueue(pkt []byte) {
	select {
	case q.out <- pkt:
	default:
		q.queueDrop.Add(1)
	}
}

// checkSource applies anti-spoofing to a frame from p, learning the
// port's MAC and IPv4 address from the first frames that show them.
func (p *Port) checkSource(f *frame.Frame) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.hasM {
		p.mac, p.hasM = f.Src, true
	}
	if f.Src != p.mac {
		return false
	}
	var claim netip.Addr
	switch f.EtherType {
	case frame.TypeARP:
		if f.ARPOp == 0 {
			return false // not Ethernet/IPv4 ARP: nothing a guest needs
		}
		if f.ARPSenderMAC != p.mac {
			return false
		}
		claim = f.ARPSender
	case frame.TypeIPv4:
		claim = f.SrcIP
	default:
		return true
	}
	if claim.IsUnspecified() {
		return true
	}
	if !p.ip.IsValid() {
		if claim.IsMulticast() || claim == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
			return false
		}
		p.ip = claim
		return true
	}
	return claim == p.ip
}

// Stats returns the counters of every port, sorted by name: connected
// ports and the newest removed ones (Connected false).
func (s *Switch) Stats() Stats {
	s.mu.Lock()
	st := Stats{Ports: []PortStats{}, Addresses: len(s.fdb), Unlearned: s.unlearned.Load()}
	for p := range s.ports {
		ps := p.Stats()
		ps.Connected = true
		st.Ports = append(st.Ports, ps)
	}
	st.Ports = append(st.Ports, s.departed...)
	s.mu.Unlock()
	sort.Slice(st.Ports, func(i, j int) bool { return st.Ports[i].Name < st.Ports[j].Name })
	return st
}

// Stats returns the port's counters.
func (p *Port) Stats() PortStats {
	p.mu.Lock()
	ps := PortStats{Name: p.name, VLAN: p.vlan}
	if p.hasM {
		ps.MAC = net.HardwareAddr(p.mac[:]).String()
	}
	if p.ip.IsValid() {
		ps.IPv4 = p.ip.String()
	}
	p.mu.Unlock()
	ps.FramesIn, ps.BytesIn = p.framesIn.Load(), p.bytesIn.Load()
	ps.FramesOut, ps.BytesOut = p.framesOut.Load(), p.bytesOut.Load()
	ps.SpoofDropped, ps.RateDropped, ps.FloodDropped = p.spoofDrop.Load(), p.rateDrop.Load(), p.floodDrop.Load()
	ps.TaggedDropped, ps.BadDropped, ps.QueueDropped = p.taggedDrop.Load(), p.badDrop.Load(), p.queueDrop.Load()
	ps.Flooded = p.flooded.Load()
	return ps
}
