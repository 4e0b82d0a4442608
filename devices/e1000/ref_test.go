package e1000_test

// refChecksum is an Internet checksum written independently of the
// device's: byte pairs summed into a 32-bit accumulator, folded at the
// end, complemented; init is a partial sum to include (a pseudo-header).
func refChecksum(init uint32, b []byte) uint16 {
	s := init
	for i := 0; i < len(b); i++ {
		if i%2 == 0 {
			s += uint32(b[i]) << 8
		} else {
			s += uint32(b[i])
		}
	}
	for s > 0xffff {
		s = s>>16 + s&0xffff
	}
	return ^uint16(s)
}

// pseudo4 is the IPv4 pseudo-header sum for protocol proto and length n.
func pseudo4(src, dst []byte, proto byte, n int) uint32 {
	var s uint32
	for _, a := range [][]byte{src, dst} {
		s += uint32(a[0])<<8 | uint32(a[1])
		s += uint32(a[2])<<8 | uint32(a[3])
	}
	return s + uint32(proto) + uint32(n)
}
