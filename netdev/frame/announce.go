package frame

import "encoding/binary"

// TypeRARP is the EtherType of Reverse ARP (RFC 903).
const TypeRARP = 0x8035

// RARP returns the frame a NIC sends to tell the switches on its link
// where its MAC address is now: a broadcast Reverse ARP request from mac
// for mac, padded to Ethernet's 60-byte minimum, as QEMU's self-announce
// after a migration. Nothing answers it; its source address is what a
// learning switch (a Linux bridge) records, moving the address to the
// port it came in on.
func RARP(mac [6]byte) []byte {
	b := make([]byte, 60)
	copy(b[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(b[6:12], mac[:])
	binary.BigEndian.PutUint16(b[12:], TypeRARP)
	p := b[14:]
	binary.BigEndian.PutUint16(p[0:], 1)        // hardware: Ethernet
	binary.BigEndian.PutUint16(p[2:], TypeIPv4) // protocol: IPv4
	p[4], p[5] = 6, 4                           // address lengths
	binary.BigEndian.PutUint16(p[6:], 3)        // reverse request
	copy(p[8:14], mac[:])                       // sender hardware address
	copy(p[18:24], mac[:])                      // target hardware address
	return b
}
