package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/mirror"
	"github.com/viovmm/vio/block/raw"
)

// TestDiskMirrorMigration: live storage migration through the VM's
// control: a disk mirrored over one image gets a second image attached by
// a node spec, syncs while data is being written, and the old image is
// removed; the new image then holds everything. Wrong requests are refused.
func TestDiskMirrorMigration(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.img"), filepath.Join(dir, "b.img")
	for _, p := range []string{a, b} {
		if err := os.WriteFile(p, make([]byte, 4<<20), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	root, err := graph.Parse([]byte(fmt.Sprintf(`{"node":"mirror","name":"m0","options":{"region":"64K"},"children":[{"node":"raw","path":%q}]}`, a)))
	if err != nil {
		t.Fatal(err)
	}
	v := &VM{graphs: graph.NewBuilder(graph.Options{}), log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	be, err := v.graphs.Open(graph.Disk{ID: "d0", Root: root, Cache: raw.Writeback})
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("migrate!"), 4<<20/8)
	if _, err := be.WriteAt(data[:2<<20], 0); err != nil {
		t.Fatal(err)
	}
	child, _ := graph.Parse([]byte(fmt.Sprintf(`{"node":"raw","path":%q}`, b)))
	st, err := v.DiskMirror(MirrorRequest{Node: "m0", Op: "attach", Child: child})
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Children) != 2 || st.Children[1].State == "absent" {
		t.Fatalf("status after attach: %+v", st)
	}
	// The guest keeps writing while the new image syncs.
	if _, err := be.WriteAt(data[2<<20:], 2<<20); err != nil {
		t.Fatal(err)
	}
	mirror.Of(v.graphs.Node("m0")).Wait()
	zero := 0
	if st, err = v.DiskMirror(MirrorRequest{Node: "m0", Op: "remove", Slot: &zero}); err != nil {
		t.Fatal(err)
	}
	if st.Children[0].State != "absent" || st.Children[1].State != "in-sync" {
		t.Fatalf("status after the migration: %+v", st.Children)
	}
	if err := be.Close(); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(b)
	if !bytes.Equal(got, data) {
		t.Fatal("the new image does not hold the disk's data")
	}

	for _, c := range []struct {
		req  MirrorRequest
		want error
	}{
		{MirrorRequest{Node: "nope", Op: "status"}, ErrNoNode},
		{MirrorRequest{Node: "m0", Op: "grow"}, ErrInvalidConfig},
		{MirrorRequest{Node: "m0", Op: "remove"}, ErrInvalidConfig},
		{MirrorRequest{Node: "m0", Op: "attach"}, ErrInvalidConfig},
	} {
		if _, err := v.DiskMirror(c.req); !errors.Is(err, c.want) {
			t.Errorf("%+v: %v, want %v", c.req, err, c.want)
		}
	}
}
