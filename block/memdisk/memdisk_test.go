package memdisk_test

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/memdisk"
)

func TestDisk(t *testing.T) {
	d := memdisk.New([]byte("0123456789"))
	if d.Size() != 10 {
		t.Fatalf("size %d", d.Size())
	}
	p := make([]byte, 4)
	if n, err := d.ReadAt(p, 3); n != 4 || err != nil || string(p) != "3456" {
		t.Errorf("ReadAt(3) = %d %v %q", n, err, p)
	}
	if n, err := d.ReadAt(p, 8); n != 2 || err != io.EOF || !bytes.Equal(p[:2], []byte("89")) {
		t.Errorf("read past the end = %d %v", n, err)
	}
	if n, err := d.ReadAt(p, 10); n != 0 || err != io.EOF {
		t.Errorf("read at the end = %d %v", n, err)
	}
	if _, err := d.ReadAt(p, -1); err == nil {
		t.Error("negative offset accepted")
	}
	if _, err := d.WriteAt(p, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("write: %v, want ErrReadOnly", err)
	}
	if err := d.Flush(); err != nil {
		t.Error(err)
	}
	d.Close()
	if _, err := d.ReadAt(p, 0); !errors.Is(err, block.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
	if err := d.Flush(); !errors.Is(err, block.ErrClosed) {
		t.Errorf("flush after Close: %v", err)
	}
}
