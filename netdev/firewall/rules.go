package firewall

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Dir is a direction relative to the guest.
type Dir uint8

// Directions.
const (
	Out Dir = 1 << iota // from the guest to the network
	In                  // from the network to the guest
	Any = Out | In
)

func (d Dir) String() string {
	switch d {
	case Out:
		return "out"
	case In:
		return "in"
	}
	return "any"
}

// Action is what a rule does with a frame it matches.
type Action uint8

// Actions.
const (
	Allow Action = iota
	Drop
)

func (a Action) String() string {
	if a == Drop {
		return "drop"
	}
	return "allow"
}

// States a rule may ask for.
const (
	StateNew         = 1 << iota // no tracked connection yet
	StateEstablished             // part of a tracked connection, either way
)

// Protocol classes beyond IP protocol numbers.
const (
	protoAny  = -1
	protoARP  = -2 // EtherType ARP
	protoIPv4 = -3 // any IPv4
	protoIPv6 = -4 // any IPv6
)

// Rule is one line of a rules file.
type Rule struct {
	Line   int
	Text   string
	Action Action
	Dir    Dir
	proto  int // an IP protocol number, or one of the proto* classes
	// icmpv4 and icmpv6 are the same number space per IP version:
	// "icmp" means protocol 1 over IPv4, "icmpv6" 58 over IPv6.
	src, dst       netip.Prefix
	srcMAC, dstMAC *[6]byte
	sport, dport   portRange
	icmpType       int // -1: any
	states         uint8
}

type portRange struct {
	lo, hi uint16
	set    bool
}

func (p portRange) match(v uint16) bool { return !p.set || v >= p.lo && v <= p.hi }

// Ruleset is a parsed rules file: rules in order (the first that matches
// decides) and a default action per direction.
type Ruleset struct {
	Rules      []Rule
	DefaultIn  Action
	DefaultOut Action
}

// Load reads a rules file.
func Load(path string) (*Ruleset, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("firewall rules: %w", err)
	}
	defer f.Close()
	rs, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("firewall rules %s: %w", path, err)
	}
	return rs, nil
}

// maxRules bounds a rules file (each frame walks the list).
const maxRules = 4096

// Parse reads rules, one per line ('#' starts a comment):
//
//	default in|out|any allow|drop
//	allow|drop [in|out|any] [proto P] [src ADDR[/LEN]] [dst ADDR[/LEN]]
//	           [sport N[-M]] [dport N[-M]] [icmp-type N] [smac MAC] [dmac MAC]
//	           [state new|established[,...]]
//
// P is tcp, udp, icmp, icmpv6, arp, ipv4, ipv6 or a protocol number. A
// rule without a direction applies to both. Defaults are allow both ways.
func Parse(r io.Reader) (*Ruleset, error) {
	rs := &Ruleset{}
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if i := strings.IndexByte(text, '#'); i >= 0 {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		if f[0] == "default" {
			if len(f) != 3 {
				return nil, fmt.Errorf("line %d: want default in|out|any allow|drop", line)
			}
			d, ok := parseDir(f[1])
			a, ok2 := parseAction(f[2])
			if !ok || !ok2 {
				return nil, fmt.Errorf("line %d: want default in|out|any allow|drop", line)
			}
			if d&In != 0 {
				rs.DefaultIn = a
			}
			if d&Out != 0 {
				rs.DefaultOut = a
			}
			continue
		}
		rule, err := parseRule(f)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", line, err)
		}
		rule.Line, rule.Text = line, strings.Join(f, " ")
		if len(rs.Rules) == maxRules {
			return nil, fmt.Errorf("line %d: more than %d rules", line, maxRules)
		}
		rs.Rules = append(rs.Rules, rule)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return rs, nil
}

func parseDir(s string) (Dir, bool) {
	switch s {
	case "in":
		return In, true
	case "out":
		return Out, true
	case "any":
		return Any, true
	}
	return 0, false
}

func parseAction(s string) (Action, bool) {
	switch s {
	case "allow", "accept", "pass":
		return Allow, true
	case "drop", "deny":
		return Drop, true
	}
	return 0, false
}

func parseRule(f []string) (Rule, error) {
	r := Rule{Dir: Any, proto: protoAny, icmpType: -1}
	a, ok := parseAction(f[0])
	if !ok {
		return r, fmt.Errorf("%q: a rule starts with allow, drop or default", f[0])
	}
	r.Action = a
	f = f[1:]
	if len(f) > 0 {
		if d, ok := parseDir(f[0]); ok {
			r.Dir, f = d, f[1:]
		}
	}
	seen := map[string]bool{}
	for len(f) > 0 {
		key := f[0]
		if len(f) < 2 {
			return r, fmt.Errorf("%s needs a value", key)
		}
		if seen[key] {
			return r, fmt.Errorf("%s given twice", key)
		}
		seen[key] = true
		v := f[1]
		f = f[2:]
		var err error
		switch key {
		case "proto":
			r.proto, err = parseProto(v)
		case "src":
			r.src, err = parsePrefix(v)
		case "dst":
			r.dst, err = parsePrefix(v)
		case "sport":
			r.sport, err = parsePorts(v)
		case "dport":
			r.dport, err = parsePorts(v)
		case "icmp-type":
			n, perr := strconv.Atoi(v)
			if perr != nil || n < 0 || n > 255 {
				err = fmt.Errorf("icmp-type %q: want a number up to 255 (8: echo request, 0: echo reply, 3: unreachable)", v)
			}
			r.icmpType = n
		case "smac":
			r.srcMAC, err = parseMAC(v)
		case "dmac":
			r.dstMAC, err = parseMAC(v)
		case "state":
			for _, s := range strings.Split(v, ",") {
				switch s {
				case "new":
					r.states |= StateNew
				case "established":
					r.states |= StateEstablished
				default:
					err = fmt.Errorf("state %q: want new or established", s)
				}
			}
		default:
			err = fmt.Errorf("unknown match %q (want proto, src, dst, sport, dport, icmp-type, smac, dmac, state)", key)
		}
		if err != nil {
			return r, err
		}
	}
	if r.icmpType >= 0 && r.proto != 1 && r.proto != 58 {
		return r, fmt.Errorf("icmp-type needs proto icmp or proto icmpv6")
	}
	if (r.sport.set || r.dport.set) && r.proto != 6 && r.proto != 17 {
		return r, fmt.Errorf("ports need proto tcp or proto udp")
	}
	if r.src.IsValid() && r.dst.IsValid() && r.src.Addr().Is4() != r.dst.Addr().Is4() {
		return r, fmt.Errorf("src and dst are of different IP versions: the rule could never match")
	}
	return r, nil
}

func parseProto(v string) (int, error) {
	switch v {
	case "tcp":
		return 6, nil
	case "udp":
		return 17, nil
	case "icmp":
		return 1, nil
	case "icmpv6":
		return 58, nil
	case "arp":
		return protoARP, nil
	case "ip", "ipv4":
		return protoIPv4, nil
	case "ipv6":
		return protoIPv6, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 255 {
		return 0, fmt.Errorf("proto %q: want tcp, udp, icmp, icmpv6, arp, ipv4, ipv6 or a number up to 255", v)
	}
	return n, nil
}

func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return p, fmt.Errorf("%q: want an address or address/length", v)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q: want an address or address/length", v)
	}
	return netip.PrefixFrom(a.Unmap(), a.BitLen()), nil
}

func parsePorts(v string) (portRange, error) {
	lo, hi, isRange := strings.Cut(v, "-")
	a, err := strconv.ParseUint(lo, 10, 16)
	b := a
	if err == nil && isRange {
		b, err = strconv.ParseUint(hi, 10, 16)
	}
	if err != nil || b < a {
		return portRange{}, fmt.Errorf("port %q: want N or N-M, 0 to 65535", v)
	}
	return portRange{uint16(a), uint16(b), true}, nil
}

func parseMAC(v string) (*[6]byte, error) {
	m, err := net.ParseMAC(v)
	if err != nil || len(m) != 6 {
		return nil, fmt.Errorf("MAC %q: want six hex bytes like 52:54:00:12:34:56", v)
	}
	a := [6]byte(m)
	return &a, nil
}
