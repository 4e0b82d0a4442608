package image

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/nbd"
)

// TestOpenNBD: a disk given as an NBD URI opens through the NBD client,
// reads and writes reach the export, and read-only is honoured.
func TestOpenNBD(t *testing.T) {
	mem := blocktest.NewMem(1 << 20)
	srv, err := nbd.NewServer(nbd.Export{Name: "disk", Backend: mem})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := nbd.Listen("unix:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	uri := "nbd+unix:///disk?socket=" + sock

	d, err := Open(uri, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if d.Size() != 1<<20 {
		t.Errorf("size %d", d.Size())
	}
	msg := []byte("through nbd")
	if _, err := d.WriteAt(msg, 4096); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := mem.ReadAt(got, 4096); err != nil || !bytes.Equal(got, msg) {
		t.Errorf("export holds %q, want %q (%v)", got, msg, err)
	}
	d.Close()

	ro, err := Open(uri, OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	if _, err := ro.WriteAt(msg, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Errorf("write to a read-only NBD disk: %v", err)
	}
	if _, err := Open(uri, OpenOptions{Format: "qcow2"}); err == nil {
		t.Error("qcow2 over NBD accepted")
	}
	if _, err := Open("nbd+unix:///nope?socket="+sock, OpenOptions{}); err == nil {
		t.Error("an unknown export opened")
	}
}
