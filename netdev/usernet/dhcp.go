package usernet

import (
	"encoding/binary"
	"net"
	"net/netip"
)

// The DHCP server answers the guest's DHCP messages at the link layer,
// before the stack sees them: a client without an address sends from
// 0.0.0.0 to 255.255.255.255 and expects replies addressed by MAC, which a
// socket in the stack cannot express. One address is handed out (the
// guest's), to whichever client asks: a back-end serves one NIC.
//
// Everything the guest sends is parsed with explicit bounds; a frame that
// is not a well-formed DHCP request to us is not ours, and goes on to the
// stack (which drops it, nobody listens on port 67 there).

// Protocol constants (RFC 791, 768, 2131, 2132).
const (
	etherTypeIPv4 = 0x0800
	etherTypeARP  = 0x0806
	ethHdrLen     = 14
	ipv4MinHdr    = 20
	udpHdrLen     = 8
	protoICMP     = 1
	protoUDP      = 17

	dhcpServerPort = 67
	dhcpClientPort = 68
	bootpFixedLen  = 236 // up to and including the file field
	bootpMinLen    = 300 // what a reply is padded to: BOOTP's size, some clients insist

	dhcpDiscover = 1
	dhcpOffer    = 2
	dhcpRequest  = 3
	dhcpDecline  = 4
	dhcpAck      = 5
	dhcpNak      = 6
	dhcpRelease  = 7
	dhcpInform   = 8

	optPad         = 0
	optSubnetMask  = 1
	optRouter      = 3
	optDNS         = 6
	optBroadcast   = 28
	optRequestedIP = 50
	optLeaseTime   = 51
	optMsgType     = 53
	optServerID    = 54
	optEnd         = 255

	leaseSeconds = 24 * 3600
)

var dhcpMagic = [4]byte{99, 130, 83, 99}

// dhcpRequestMsg is what the server needs of a client's message.
type dhcpRequestMsg struct {
	srcMAC    net.HardwareAddr // the frame's source
	dstIP     netip.Addr       // the datagram's destination
	xid       [4]byte
	flags     uint16
	ciaddr    [4]byte
	chaddr    [16]byte
	msgType   byte
	requested netip.Addr // option 50, if any
	serverID  netip.Addr // option 54, if any
}

// parseDHCP returns the DHCP request a frame carries, if it is an IPv4
// UDP datagram from port 68 to port 67 holding a BOOTREQUEST from an
// Ethernet client with a DHCP message type. Checksums are verified.
func parseDHCP(frame []byte) (dhcpRequestMsg, bool) {
	var m dhcpRequestMsg
	udp, ip, ok := parseUDPv4(frame)
	if !ok {
		return m, false
	}
	// To the limited broadcast or to us (renewals are unicast); the
	// caller checks "us".
	m.dstIP = netip.AddrFrom4([4]byte(ip[16:20]))
	if binary.BigEndian.Uint16(udp[0:]) != dhcpClientPort || binary.BigEndian.Uint16(udp[2:]) != dhcpServerPort {
		return m, false
	}
	b := udp[udpHdrLen:]
	if len(b) < bootpFixedLen+len(dhcpMagic) {
		return m, false
	}
	// op BOOTREQUEST, htype Ethernet, hlen 6.
	if b[0] != 1 || b[1] != 1 || b[2] != 6 {
		return m, false
	}
	if [4]byte(b[bootpFixedLen:bootpFixedLen+4]) != dhcpMagic {
		return m, false
	}
	m.srcMAC = net.HardwareAddr(frame[6:12])
	copy(m.xid[:], b[4:8])
	m.flags = binary.BigEndian.Uint16(b[10:])
	copy(m.ciaddr[:], b[12:16])
	copy(m.chaddr[:], b[28:44])
	opts := b[bootpFixedLen+4:]
	for i := 0; i < len(opts); {
		code := opts[i]
		if code == optEnd {
			break
		}
		if code == optPad {
			i++
			continue
		}
		if i+1 >= len(opts) {
			return m, false
		}
		n := int(opts[i+1])
		if i+2+n > len(opts) {
			return m, false
		}
		v := opts[i+2 : i+2+n]
		switch code {
		case optMsgType:
			if n == 1 {
				m.msgType = v[0]
			}
		case optRequestedIP:
			if n == 4 {
				m.requested = netip.AddrFrom4([4]byte(v))
			}
		case optServerID:
			if n == 4 {
				m.serverID = netip.AddrFrom4([4]byte(v))
			}
		}
		i += 2 + n
	}
	if m.msgType == 0 {
		return m, false // plain BOOTP: not served
	}
	return m, true
}

// parseUDPv4 returns the UDP datagram (header and payload, trimmed to the
// UDP length) of an untagged Ethernet frame carrying an unfragmented IPv4
// packet, and the IPv4 header, if every length and checksum is right.
func parseUDPv4(frame []byte) (udp, ip []byte, ok bool) {
	ip, proto, ok := parseIPv4(frame)
	if !ok || proto != protoUDP {
		return nil, nil, false
	}
	ihl := int(ip[0]&0xf) * 4
	payload := ip[ihl:]
	if len(payload) < udpHdrLen {
		return nil, nil, false
	}
	ulen := int(binary.BigEndian.Uint16(payload[4:]))
	if ulen < udpHdrLen || ulen > len(payload) {
		return nil, nil, false
	}
	payload = payload[:ulen]
	if binary.BigEndian.Uint16(payload[6:]) != 0 {
		if ^checksum(payload, pseudoHeaderSum(ip[12:16], ip[16:20], protoUDP, ulen)) != 0 {
			return nil, nil, false
		}
	}
	return payload, ip, true
}

// parseIPv4 returns the IPv4 packet of an untagged Ethernet frame (trimmed
// to its total length) and its protocol, if it is unfragmented and its
// header is well-formed with a valid checksum.
func parseIPv4(frame []byte) (ip []byte, proto byte, ok bool) {
	if len(frame) < ethHdrLen+ipv4MinHdr || binary.BigEndian.Uint16(frame[12:]) != etherTypeIPv4 {
		return nil, 0, false
	}
	ip = frame[ethHdrLen:]
	if ip[0]>>4 != 4 {
		return nil, 0, false
	}
	ihl := int(ip[0]&0xf) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < ipv4MinHdr || total < ihl || total > len(ip) {
		return nil, 0, false
	}
	ip = ip[:total]
	// More-fragments set or a fragment offset: not a whole datagram.
	if binary.BigEndian.Uint16(ip[6:])&0x3fff != 0 {
		return nil, 0, false
	}
	if ^checksum(ip[:ihl], 0) != 0 {
		return nil, 0, false
	}
	return ip, ip[9], true
}

// dhcpReply builds the Ethernet frame answering m, or returns nil when m
// gets no answer (a REQUEST for another server, RELEASE, DECLINE, a
// message type a server does not receive).
func dhcpReply(a *addrs, m dhcpRequestMsg) []byte {
	var typ byte
	yiaddr := a.guest
	switch m.msgType {
	case dhcpDiscover:
		typ = dhcpOffer
	case dhcpRequest:
		if m.serverID.IsValid() && m.serverID != a.gateway {
			return nil // the client took another server's offer
		}
		want := m.requested
		if !want.IsValid() {
			want = netip.AddrFrom4(m.ciaddr) // renewing or rebinding
		}
		typ = dhcpAck
		if want != a.guest {
			typ = dhcpNak
		}
	case dhcpInform:
		typ, yiaddr = dhcpAck, netip.IPv4Unspecified()
	default:
		return nil
	}

	// BOOTP body.
	body := make([]byte, bootpMinLen)
	body[0], body[1], body[2] = 2, 1, 6 // BOOTREPLY, Ethernet, 6-byte addresses
	copy(body[4:8], m.xid[:])
	binary.BigEndian.PutUint16(body[10:], m.flags&0x8000)
	if m.msgType == dhcpInform || (m.msgType == dhcpRequest && typ == dhcpAck) {
		copy(body[12:16], m.ciaddr[:])
	}
	if typ != dhcpNak {
		y := yiaddr.As4()
		copy(body[16:20], y[:])
	}
	copy(body[28:44], m.chaddr[:])
	copy(body[bootpFixedLen:], dhcpMagic[:])
	o := body[bootpFixedLen+4 : bootpFixedLen+4]
	gw, dns := a.gateway.As4(), a.dns.As4()
	o = append(o, optMsgType, 1, typ, optServerID, 4, gw[0], gw[1], gw[2], gw[3])
	if typ != dhcpNak {
		if m.msgType != dhcpInform {
			o = append(o, optLeaseTime, 4, 0, 0, 0, 0)
			binary.BigEndian.PutUint32(o[len(o)-4:], leaseSeconds)
		}
		bc := a.broadcast.As4()
		o = append(o, optSubnetMask, 4, a.mask[0], a.mask[1], a.mask[2], a.mask[3],
			optRouter, 4, gw[0], gw[1], gw[2], gw[3],
			optBroadcast, 4, bc[0], bc[1], bc[2], bc[3])
		if a.upstream.IsValid() {
			o = append(o, optDNS, 4, dns[0], dns[1], dns[2], dns[3])
		}
	}
	o = append(o, optEnd)
	if n := bootpFixedLen + 4 + len(o); n > len(body) {
		body = body[:n]
	}

	// Addressing (RFC 2131 section 4.1): to ciaddr if the client has one,
	// broadcast if it asked for it or for a NAK, else to yiaddr by MAC.
	dstMAC := net.HardwareAddr(m.chaddr[:6])
	var dstIP [4]byte
	switch {
	case typ == dhcpNak || m.flags&0x8000 != 0:
		dstIP = [4]byte{255, 255, 255, 255}
		dstMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	case m.ciaddr != [4]byte{}:
		dstIP, dstMAC = m.ciaddr, m.srcMAC
	default:
		dstIP = yiaddr.As4()
	}
	return udpFrame(a.gatewayMAC, dstMAC, gw, dstIP, dhcpServerPort, dhcpClientPort, body)
}

// udpFrame builds an Ethernet frame holding an IPv4 UDP datagram, with
// both checksums.
func udpFrame(srcMAC, dstMAC net.HardwareAddr, src, dst [4]byte, sport, dport uint16, payload []byte) []byte {
	ulen := udpHdrLen + len(payload)
	f := make([]byte, ethHdrLen+ipv4MinHdr+ulen)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], etherTypeIPv4)
	ip := f[ethHdrLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipv4MinHdr+ulen))
	ip[8] = 64 // TTL
	ip[9] = protoUDP
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:], ^checksum(ip[:ipv4MinHdr], 0))
	u := ip[ipv4MinHdr:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(ulen))
	copy(u[udpHdrLen:], payload)
	c := ^checksum(u, pseudoHeaderSum(src[:], dst[:], protoUDP, ulen))
	if c == 0 {
		c = 0xffff // zero means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return f
}

// checksum returns the ones' complement sum of b (RFC 1071) folded to
// 16 bits, starting from initial; the Internet checksum is its complement.
func checksum(b []byte, initial uint16) uint16 {
	s := uint32(initial)
	for len(b) >= 2 {
		s += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint32(b[0]) << 8
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return uint16(s)
}

// pseudoHeaderSum is the folded sum of the IPv4 pseudo-header.
func pseudoHeaderSum(src, dst []byte, proto byte, length int) uint16 {
	var ph [12]byte
	copy(ph[0:4], src)
	copy(ph[4:8], dst)
	ph[9] = proto
	binary.BigEndian.PutUint16(ph[10:], uint16(length))
	return checksum(ph[:], 0)
}
