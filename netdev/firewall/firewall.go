// Package firewall is a stateful packet filter interposed between a NIC
// and its back-end. Rules (see Parse) match on direction, MAC addresses,
// IPv4/IPv6 prefixes, protocol, ports and connection state; the first
// rule that matches decides, and a default action per direction decides
// the rest. Every rule and default counts the frames and bytes it
// decided.
//
// Connection tracking: a frame that is allowed creates (or refreshes) an
// entry for its flow (protocol, the guest's address and port, the peer's
// address and port); frames of that flow in either direction are then
// "state established". TCP entries end on a reset or after 10 minutes
// idle, others after 60 seconds idle. The table is bounded: when it is
// full (expired entries are swept first), new flows are not tracked,
// which is counted, so their replies meet the rules as new frames.
//
// Frames are hostile: one whose headers do not parse is dropped and
// counted, whatever the rules say.
package firewall

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/viovmm/vio/netdev"
	"github.com/viovmm/vio/netdev/filter"
	"github.com/viovmm/vio/netdev/frame"
)

// Timeouts and bounds of connection tracking.
const (
	tcpTimeout   = 10 * time.Minute
	otherTimeout = 60 * time.Second
	maxFlows     = 65536
)

// RuleStats are one rule's counters.
type RuleStats struct {
	Line    int    `json:"line"`
	Rule    string `json:"rule"`
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Stats are the firewall's counters.
type Stats struct {
	Rules          []RuleStats `json:"rules"`
	DefaultIn      RuleStats   `json:"default_in"`
	DefaultOut     RuleStats   `json:"default_out"`
	Malformed      uint64      `json:"malformed"`
	Flows          int         `json:"flows"`
	FlowsUntracked uint64      `json:"flows_untracked"`
}

type counter struct{ packets, bytes atomic.Uint64 }

func (c *counter) add(n int) { c.packets.Add(1); c.bytes.Add(uint64(n)) }

type flowKey struct {
	proto       uint8
	guest, peer netip.AddrPort
}

// Firewall is the interposer.
type Firewall struct {
	filter.Base
	rs       *Ruleset
	counts   []counter
	defIn    counter
	defOut   counter
	bad      atomic.Uint64
	untraced atomic.Uint64
	now      func() time.Time

	mu        sync.Mutex // guards flows and lastSweep
	flows     map[flowKey]time.Time
	lastSweep time.Time

	wbuf []byte // WriteFrames' scratch (one writer at a time)
	widx []int
}

var _ netdev.Backend = (*Firewall)(nil)

// New wraps inner with rules rs. Closing the firewall closes inner.
func New(inner netdev.Backend, rs *Ruleset) *Firewall {
	return &Firewall{
		Base: filter.Base{Inner: inner}, rs: rs,
		counts: make([]counter, len(rs.Rules)),
		flows:  map[flowKey]time.Time{},
		now:    time.Now,
	}
}

// WriteFrames filters frames from the guest.
func (fw *Firewall) WriteFrames(frames [][][]byte) (int, error) {
	n, idx, err := filter.WriteKept(fw.Inner, frames, func(i int) bool {
		var pkt []byte
		pkt, fw.wbuf = filter.Linear(frames[i], fw.wbuf)
		if len(pkt) < netdev.HeaderSize {
			fw.bad.Add(1)
			return false
		}
		return fw.Decide(Out, pkt[netdev.HeaderSize:])
	}, fw.widx)
	fw.widx = idx
	return n, err
}

// ReadFrames filters frames to the guest; it returns only when at least
// one passed (or on an error).
func (fw *Firewall) ReadFrames(bufs [][]byte, sizes []int) (int, error) {
	for {
		n, err := fw.Inner.ReadFrames(bufs, sizes)
		if err != nil {
			return n, err
		}
		m := filter.Compact(bufs, sizes, n, func(i int) bool {
			if sizes[i] < netdev.HeaderSize {
				fw.bad.Add(1)
				return false
			}
			return fw.Decide(In, bufs[i][netdev.HeaderSize:sizes[i]])
		})
		if m > 0 {
			return m, nil
		}
	}
}

// Decide reports whether a frame (without its virtio-net header) going in
// direction d passes, counting it and tracking its flow.
func (fw *Firewall) Decide(d Dir, b []byte) bool {
	f, err := frame.Parse(b)
	if err != nil {
		fw.bad.Add(1)
		return false
	}
	key, tracked := flowOf(d, &f)
	now := fw.now()
	state := uint8(StateNew)
	if tracked {
		fw.mu.Lock()
		if exp, ok := fw.flows[key]; ok && now.Before(exp) {
			state = StateEstablished
		}
		fw.mu.Unlock()
	}
	act := Allow
	decided := false
	for i := range fw.rs.Rules {
		r := &fw.rs.Rules[i]
		if r.match(d, &f, state) {
			fw.counts[i].add(len(b))
			act, decided = r.Action, true
			break
		}
	}
	if !decided {
		if d == In {
			act = fw.rs.DefaultIn
			fw.defIn.add(len(b))
		} else {
			act = fw.rs.DefaultOut
			fw.defOut.add(len(b))
		}
	}
	if act == Allow && tracked {
		fw.track(key, &f, now)
	}
	return act == Allow
}

// flowOf returns the flow of an IP frame, oriented from the guest.
func flowOf(d Dir, f *frame.Frame) (flowKey, bool) {
	if !f.IsIP() {
		return flowKey{}, false
	}
	src := netip.AddrPortFrom(f.SrcIP, f.SrcPort)
	dst := netip.AddrPortFrom(f.DstIP, f.DstPort)
	if !f.HasPorts {
		src, dst = netip.AddrPortFrom(f.SrcIP, 0), netip.AddrPortFrom(f.DstIP, 0)
	}
	if d == Out {
		return flowKey{f.Proto, src, dst}, true
	}
	return flowKey{f.Proto, dst, src}, true
}

func (fw *Firewall) track(key flowKey, f *frame.Frame, now time.Time) {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if f.Proto == frame.ProtoTCP && f.TCPFlags&frame.TCPRst != 0 {
		delete(fw.flows, key)
		return
	}
	timeout := otherTimeout
	if f.Proto == frame.ProtoTCP {
		timeout = tcpTimeout
	}
	if _, ok := fw.flows[key]; !ok && len(fw.flows) >= maxFlows {
		if now.Sub(fw.lastSweep) > time.Second {
			fw.lastSweep = now
			for k, exp := range fw.flows {
				if !now.Before(exp) {
					delete(fw.flows, k)
				}
			}
		}
		if len(fw.flows) >= maxFlows {
			fw.untraced.Add(1)
			return
		}
	}
	fw.flows[key] = now.Add(timeout)
}

func (r *Rule) match(d Dir, f *frame.Frame, state uint8) bool {
	if r.Dir&d == 0 {
		return false
	}
	if r.states != 0 && r.states&state == 0 {
		return false
	}
	if r.srcMAC != nil && *r.srcMAC != f.Src || r.dstMAC != nil && *r.dstMAC != f.Dst {
		return false
	}
	switch r.proto {
	case protoAny:
	case protoARP:
		if f.EtherType != frame.TypeARP {
			return false
		}
	case protoIPv4:
		if f.EtherType != frame.TypeIPv4 {
			return false
		}
	case protoIPv6:
		if f.EtherType != frame.TypeIPv6 {
			return false
		}
	case frame.ProtoICMP:
		if f.EtherType != frame.TypeIPv4 || f.Proto != frame.ProtoICMP {
			return false
		}
	case frame.ProtoICMPv6:
		if f.EtherType != frame.TypeIPv6 || f.Proto != frame.ProtoICMPv6 {
			return false
		}
	default:
		if !f.IsIP() || int(f.Proto) != r.proto {
			return false
		}
	}
	if r.src.IsValid() && (!f.IsIP() || !r.src.Contains(f.SrcIP)) {
		return false
	}
	if r.dst.IsValid() && (!f.IsIP() || !r.dst.Contains(f.DstIP)) {
		return false
	}
	if r.icmpType >= 0 && (!f.HasICMP || int(f.ICMPType) != r.icmpType) {
		return false
	}
	if r.sport.set || r.dport.set {
		// A non-first fragment has no ports: it cannot match a rule
		// that asks for them.
		if !f.HasPorts || !r.sport.match(f.SrcPort) || !r.dport.match(f.DstPort) {
			return false
		}
	}
	return true
}

// Stats returns the counters.
func (fw *Firewall) Stats() Stats {
	st := Stats{
		DefaultIn:      RuleStats{Rule: "default in " + fw.rs.DefaultIn.String(), Packets: fw.defIn.packets.Load(), Bytes: fw.defIn.bytes.Load()},
		DefaultOut:     RuleStats{Rule: "default out " + fw.rs.DefaultOut.String(), Packets: fw.defOut.packets.Load(), Bytes: fw.defOut.bytes.Load()},
		Malformed:      fw.bad.Load(),
		FlowsUntracked: fw.untraced.Load(),
	}
	for i, r := range fw.rs.Rules {
		st.Rules = append(st.Rules, RuleStats{Line: r.Line, Rule: r.Text, Packets: fw.counts[i].packets.Load(), Bytes: fw.counts[i].bytes.Load()})
	}
	fw.mu.Lock()
	st.Flows = len(fw.flows)
	fw.mu.Unlock()
	return st
}
