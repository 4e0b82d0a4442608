package vhostuser

import "unsafe"

// wordsOf views a page-aligned mapping as little-endian 64-bit words
// (x86 is little-endian, so bit p%64 of word p/64 is bit p%8 of byte p/8,
// the log's layout).
func wordsOf(b []byte) []uint64 {
	if len(b) < 8 {
		return nil
	}
	return unsafe.Slice((*uint64)(unsafe.Pointer(&b[0])), len(b)/8)
}
