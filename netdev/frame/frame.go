// Package frame decodes the headers of an Ethernet frame that switching
// and filtering decisions need: Ethernet and one 802.1Q tag, ARP, IPv4
// and IPv6 (with its extension headers), and the first bytes of TCP, UDP,
// ICMP and ICMPv6. Frames come from guests and peers, so everything is
// bounds-checked: a frame too short for a header it announces is an
// error, and Parse never reads outside the slice.
package frame

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// EtherTypes.
const (
	TypeIPv4 = 0x0800
	TypeARP  = 0x0806
	TypeVLAN = 0x8100
	TypeIPv6 = 0x86dd
)

// IP protocol numbers.
const (
	ProtoICMP   = 1
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoICMPv6 = 58
)

// TCP flags.
const (
	TCPFin = 0x01
	TCPSyn = 0x02
	TCPRst = 0x04
	TCPAck = 0x10
)

// ErrTruncated reports a frame too short for a header it announces or a
// header field that points outside it.
var ErrTruncated = errors.New("frame: truncated or malformed header")

// Frame is what Parse found. Fields of layers the frame does not have are
// zero.
type Frame struct {
	Dst, Src  [6]byte
	Tagged    bool   // an 802.1Q tag followed the source address
	VLAN      uint16 // its VLAN id
	EtherType uint16 // after the tag, if any

	// ARP (Ethernet/IPv4 only).
	ARPOp        uint16
	ARPSenderMAC [6]byte
	ARPSender    netip.Addr
	ARPTarget    netip.Addr

	// IPv4 or IPv6.
	SrcIP, DstIP netip.Addr
	Proto        uint8 // the upper-layer protocol (after IPv6 extension headers)
	// Fragment is set for an IP fragment other than the first: it
	// carries no transport header, so no ports.
	Fragment bool

	// TCP and UDP.
	HasPorts         bool
	SrcPort, DstPort uint16
	TCPFlags         uint8

	// ICMP and ICMPv6.
	HasICMP  bool
	ICMPType uint8
	ICMPCode uint8
}

// IsIP reports whether the frame carries IPv4 or IPv6.
func (f *Frame) IsIP() bool { return f.SrcIP.IsValid() }

func truncated(what string, need, have int) error {
	return fmt.Errorf("%w: %s needs %d bytes, %d left", ErrTruncated, what, need, have)
}

// maxExtHeaders bounds the walk of IPv6 extension headers (each is at
// least 8 bytes, so a 64 KiB frame could chain 8000 of them).
const maxExtHeaders = 8

// Parse decodes b. The error says which header was cut short; the Frame
// holds what was decoded before it.
func Parse(b []byte) (Frame, error) {
	var f Frame
	if len(b) < 14 {
		return f, truncated("Ethernet header", 14, len(b))
	}
	copy(f.Dst[:], b[0:6])
	copy(f.Src[:], b[6:12])
	f.EtherType = binary.BigEndian.Uint16(b[12:])
	p := b[14:]
	if f.EtherType == TypeVLAN {
		if len(p) < 4 {
			return f, truncated("802.1Q tag", 4, len(p))
		}
		f.Tagged = true
		f.VLAN = binary.BigEndian.Uint16(p) & 0x0fff
		f.EtherType = binary.BigEndian.Uint16(p[2:])
		p = p[4:]
	}
	switch f.EtherType {
	case TypeARP:
		return f, f.parseARP(p)
	case TypeIPv4:
		return f, f.parseIPv4(p)
	case TypeIPv6:
		return f, f.parseIPv6(p)
	}
	return f, nil
}

func (f *Frame) parseARP(p []byte) error {
	if len(p) < 8 {
		return truncated("ARP header", 8, len(p))
	}
	htype, ptype := binary.BigEndian.Uint16(p), binary.BigEndian.Uint16(p[2:])
	hlen, plen := p[4], p[5]
	if htype != 1 || ptype != TypeIPv4 || hlen != 6 || plen != 4 {
		return nil // not Ethernet/IPv4 ARP: nothing more to decode
	}
	if len(p) < 28 {
		return truncated("ARP body", 28, len(p))
	}
	f.ARPOp = binary.BigEndian.Uint16(p[6:])
	copy(f.ARPSenderMAC[:], p[8:14])
	f.ARPSender = netip.AddrFrom4([4]byte(p[14:18]))
	f.ARPTarget = netip.AddrFrom4([4]byte(p[24:28]))
	return nil
}

func (f *Frame) parseIPv4(p []byte) error {
	if len(p) < 20 {
		return truncated("IPv4 header", 20, len(p))
	}
	if p[0]>>4 != 4 {
		return fmt.Errorf("%w: IPv4 header with version %d", ErrTruncated, p[0]>>4)
	}
	ihl := int(p[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(p[2:]))
	if ihl < 20 || ihl > len(p) {
		return truncated("IPv4 header with options", ihl, len(p))
	}
	if total < ihl {
		return fmt.Errorf("%w: IPv4 total length %d below header length %d", ErrTruncated, total, ihl)
	}
	// A frame may be padded beyond the datagram (Ethernet's 60-byte
	// minimum), never cut short of it.
	if total > len(p) {
		return truncated("IPv4 datagram", total, len(p))
	}
	f.SrcIP = netip.AddrFrom4([4]byte(p[12:16]))
	f.DstIP = netip.AddrFrom4([4]byte(p[16:20]))
	f.Proto = p[9]
	frag := binary.BigEndian.Uint16(p[6:]) & 0x1fff
	if frag != 0 {
		f.Fragment = true
		return nil
	}
	return f.parseL4(p[ihl:total])
}

func (f *Frame) parseIPv6(p []byte) error {
	if len(p) < 40 {
		return truncated("IPv6 header", 40, len(p))
	}
	if p[0]>>4 != 6 {
		return fmt.Errorf("%w: IPv6 header with version %d", ErrTruncated, p[0]>>4)
	}
	plen := int(binary.BigEndian.Uint16(p[4:]))
	if 40+plen > len(p) {
		return truncated("IPv6 payload", 40+plen, len(p))
	}
	f.SrcIP = netip.AddrFrom16([16]byte(p[8:24]))
	f.DstIP = netip.AddrFrom16([16]byte(p[24:40]))
	next := p[6]
	q := p[40 : 40+plen]
	for range maxExtHeaders {
		switch next {
		case 0, 43, 60: // hop-by-hop, routing, destination options
			if len(q) < 8 {
				return truncated("IPv6 extension header", 8, len(q))
			}
			n := (int(q[1]) + 1) * 8
			if n > len(q) {
				return truncated("IPv6 extension header", n, len(q))
			}
			next, q = q[0], q[n:]
		case 51: // authentication header: length in 4-byte units, minus 2
			if len(q) < 8 {
				return truncated("IPv6 AH", 8, len(q))
			}
			n := (int(q[1]) + 2) * 4
			if n > len(q) {
				return truncated("IPv6 AH", n, len(q))
			}
			next, q = q[0], q[n:]
		case 44: // fragment
			if len(q) < 8 {
				return truncated("IPv6 fragment header", 8, len(q))
			}
			off := binary.BigEndian.Uint16(q[2:]) >> 3
			next, q = q[0], q[8:]
			if off != 0 {
				f.Proto, f.Fragment = next, true
				return nil
			}
		default:
			f.Proto = next
			return f.parseL4(q)
		}
	}
	return fmt.Errorf("%w: more than %d IPv6 extension headers", ErrTruncated, maxExtHeaders)
}

func (f *Frame) parseL4(q []byte) error {
	switch f.Proto {
	case ProtoTCP:
		if len(q) < 20 {
			return truncated("TCP header", 20, len(q))
		}
		f.HasPorts = true
		f.SrcPort, f.DstPort = binary.BigEndian.Uint16(q), binary.BigEndian.Uint16(q[2:])
		f.TCPFlags = q[13]
	case ProtoUDP:
		if len(q) < 8 {
			return truncated("UDP header", 8, len(q))
		}
		f.HasPorts = true
		f.SrcPort, f.DstPort = binary.BigEndian.Uint16(q), binary.BigEndian.Uint16(q[2:])
	case ProtoICMP, ProtoICMPv6:
		if len(q) < 4 {
			return truncated("ICMP header", 4, len(q))
		}
		f.HasICMP = true
		f.ICMPType, f.ICMPCode = q[0], q[1]
	}
	return nil
}
