package e1000

import "encoding/binary"

// sum16 adds b as big-endian 16-bit words (an odd last byte is the high
// half of a word) to s, without folding.
func sum16(s uint64, b []byte) uint64 {
	for len(b) >= 8 {
		s += uint64(binary.BigEndian.Uint16(b)) + uint64(binary.BigEndian.Uint16(b[2:])) +
			uint64(binary.BigEndian.Uint16(b[4:])) + uint64(binary.BigEndian.Uint16(b[6:]))
		b = b[8:]
	}
	for len(b) >= 2 {
		s += uint64(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		s += uint64(b[0]) << 8
	}
	return s
}

// fold reduces a sum to 16 bits with end-around carries.
func fold(s uint64) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// insertChecksum does what the hardware does for a checksum context: it
// sums pkt[start:end+1] (end 0: to the end of the packet) as it is, with
// whatever partial sum the driver left in the checksum field, plus extra,
// and stores the complement at off. Offsets outside the packet leave it
// unchanged: the hardware would send garbage, vio sends the frame as the
// guest built it. zeroAs0xFFFF applies UDP's rule that a computed 0 is
// sent as 0xFFFF.
func insertChecksum(pkt []byte, start, end, off int, extra uint64, zeroAs0xFFFF bool) {
	if end == 0 || end >= len(pkt) {
		end = len(pkt) - 1
	}
	if start >= len(pkt) || end < start || off+2 > len(pkt) {
		return
	}
	c := ^fold(sum16(extra, pkt[start:end+1]))
	if c == 0 && zeroAs0xFFFF {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(pkt[off:], c)
}
