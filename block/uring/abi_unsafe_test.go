package uring

import (
	"testing"
	"unsafe"
)

// TestABILayout pins the Go structs to the sizes and offsets of
// <linux/io_uring.h>; a mismatch would make the kernel read garbage.
func TestABILayout(t *testing.T) {
	var s sqe
	var c cqe
	var p params
	checks := []struct {
		name      string
		got, want uintptr
	}{
		{"sizeof(io_uring_sqe)", unsafe.Sizeof(s), 64},
		{"sqe.fd", unsafe.Offsetof(s.fd), 4},
		{"sqe.off", unsafe.Offsetof(s.off), 8},
		{"sqe.addr", unsafe.Offsetof(s.addr), 16},
		{"sqe.len", unsafe.Offsetof(s.len), 24},
		{"sqe.rw_flags", unsafe.Offsetof(s.opFlags), 28},
		{"sqe.user_data", unsafe.Offsetof(s.userData), 32},
		{"sqe.buf_index", unsafe.Offsetof(s.bufIndex), 40},
		{"sqe.personality", unsafe.Offsetof(s.personality), 42},
		{"sqe.splice_fd_in", unsafe.Offsetof(s.spliceFdIn), 44},
		{"sqe.addr3", unsafe.Offsetof(s.addr3), 48},
		{"sizeof(io_uring_cqe)", unsafe.Sizeof(c), 16},
		{"cqe.res", unsafe.Offsetof(c.res), 8},
		{"cqe.flags", unsafe.Offsetof(c.flags), 12},
		{"sizeof(io_sqring_offsets)", unsafe.Sizeof(p.sqOff), 40},
		{"sq_off.array", unsafe.Offsetof(p.sqOff.array), 24},
		{"sizeof(io_cqring_offsets)", unsafe.Sizeof(p.cqOff), 40},
		{"cq_off.cqes", unsafe.Offsetof(p.cqOff.cqes), 20},
		{"sizeof(io_uring_params)", unsafe.Sizeof(p), 120},
		{"params.features", unsafe.Offsetof(p.features), 20},
		{"params.sq_off", unsafe.Offsetof(p.sqOff), 40},
		{"params.cq_off", unsafe.Offsetof(p.cqOff), 80},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}
