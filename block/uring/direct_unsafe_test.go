package uring

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// alignedBuf returns n bytes aligned to align, as O_DIRECT wants.
func alignedBuf(n, align int) []byte {
	b := make([]byte, n+align)
	skip := (align - int(uintptr(unsafe.Pointer(&b[0]))%uintptr(align))) % align
	return b[skip : skip+n]
}

// TestDirectRead reads through O_DIRECT what pwrite wrote via the cache.
func TestDirectRead(t *testing.T) {
	q := newQueue(t, 4)
	path := filepath.Join(t.TempDir(), "direct")
	want := bytes.Repeat([]byte("0123456789abcdef"), 4096/16*4)
	if err := os.WriteFile(path, want, 0o600); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if errors.Is(err, syscall.EINVAL) {
		t.Skipf("the temp filesystem refuses O_DIRECT: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf := alignedBuf(len(want), 4096)
	n, err := q.ReadAt(fd, buf, 0)
	if errors.Is(err, syscall.EINVAL) {
		t.Skipf("O_DIRECT read through io_uring refused on this filesystem: %v", err)
	}
	if err != nil || n != len(want) || !bytes.Equal(buf, want) {
		t.Fatalf("O_DIRECT read = %d, %v, equal %v", n, err, bytes.Equal(buf, want))
	}
	// Misaligned offset: the kernel's EINVAL comes back wrapped.
	if _, err := q.ReadAt(fd, buf[:4096], 1); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("misaligned O_DIRECT read: %v, want EINVAL", err)
	}
}
