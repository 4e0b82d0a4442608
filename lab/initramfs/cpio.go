// Package initramfs builds Linux initramfs images (gzipped cpio "newc"
// archives) for lab guests: busybox, kernel modules loaded in dependency
// order, extra files and dynamic executables with their shared libraries,
// and a program to run as the guest's init.
package initramfs

import (
	"fmt"
	"io"
)

// cpioWriter writes the "newc" (SVR4, no CRC) cpio format the kernel's
// initramfs unpacker reads: a 110-byte ASCII header, the NUL-terminated
// name padded to 4 bytes, then the data padded to 4 bytes.
type cpioWriter struct {
	w   io.Writer
	ino uint32
	err error
}

const (
	modeDir     = 0o040000
	modeFile    = 0o100000
	modeSymlink = 0o120000
)

func (c *cpioWriter) pad(n int) {
	if c.err != nil {
		return
	}
	if p := (4 - n%4) % 4; p > 0 {
		_, c.err = c.w.Write(make([]byte, p))
	}
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == modeDir {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	if _, c.err = io.WriteString(c.w, hdr+name+"\x00"); c.err != nil {
		return
	}
	c.pad(len(hdr) + len(name) + 1)
	if len(data) > 0 && c.err == nil {
		_, c.err = c.w.Write(data)
		c.pad(len(data))
	}
}

func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, nil)
	return c.err
}
