package vmm

import (
	"errors"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block/graph"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/block/throttle"
	"github.com/viovmm/vio/config"
)

// TestBuildDiskGraph: a graph disk comes out as its stack, and two plain
// disks naming one rate_limit_group share one throttle group.
func TestBuildDiskGraph(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for _, n := range []string{"a.img", "b.img", "c.img", "d.img"} {
		p := filepath.Join(dir, n)
		if err := image.Create(p, image.CreateOptions{Format: image.Raw, Size: 1 << 20}); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	cfg, err := config.Decode([]byte(`{"rate_limit_groups":[{"id":"g","rate_limiter_config":{"ops":{"size":1000,"refill_time":1000}}}]}`))
	if err != nil {
		t.Fatal(err)
	}
	v := &VM{cfg: cfg}
	root, err := graph.Parse([]byte(`{"node":"faults","options":{"rules":[{"offset":4096,"length":4096}]},"children":[{"node":"raw","path":"` + paths[0] + `"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	d0, err := v.buildDisk(&config.Disk{ID: "d0", Graph: root}, raw.Writeback, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d0.Close()
	if _, err := d0.ReadAt(make([]byte, 512), 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read in the failing range: %v", err)
	}
	if _, err := d0.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("read outside it: %v", err)
	}
	d1, err := v.buildDisk(&config.Disk{Path: paths[1], ImageType: config.ImageRaw, RateLimitGroup: "g"}, raw.Writeback, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	d2, err := v.buildDisk(&config.Disk{Path: paths[2], ImageType: config.ImageRaw, RateLimitGroup: "g"}, raw.Writeback, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d2.Close()
	t1, t2 := throttle.Of(d1), throttle.Of(d2)
	if t1 == nil || t2 == nil || t1.Group() != t2.Group() {
		t.Fatal("the two disks of group g do not share a throttle group")
	}
	// A bad group releases the image it opened.
	if _, err := v.buildDisk(&config.Disk{Path: paths[3], ImageType: config.ImageRaw, RateLimitGroup: "nope"}, raw.Writeback, nil); err == nil {
		t.Fatal("an undefined group was accepted")
	}
	f, err := image.Open(paths[3], image.OpenOptions{Format: image.Raw, Lock: true})
	if err != nil {
		t.Fatalf("the image stayed open after the failed build: %v", err)
	}
	f.Close()
}
