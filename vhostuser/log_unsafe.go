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

// Addr returns the host virtual address of the log's bitmap, for a
// consumer in this process's address space: the kernel's vhost
// (VHOST_SET_LOG_BASE) marks pages in it through this mapping. It stays
// valid until Close.
func (l *DirtyLog) Addr() uint64 { return uint64(uintptr(unsafe.Pointer(&l.data[0]))) }
