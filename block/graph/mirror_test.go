package graph

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/viovmm/vio/block/faults"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/mirror"
)

type pubRecorder struct {
	mu  sync.Mutex
	evs []string
}

func (p *pubRecorder) Publish(source, event string, kv ...string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.evs = append(p.evs, fmt.Sprint(source, " ", event, " ", kv))
}

// A mirror of two faults-wrapped raw leaves, with a log, from JSON: the
// named nodes reach their controls, a child that fail-stops is dropped
// with a "disk" event naming the mirror, and the disk keeps working.
func TestMirrorGraph(t *testing.T) {
	dir := t.TempDir()
	a := mkimage(t, dir, "a.img", image.Raw, 4<<20)
	b := mkimage(t, dir, "b.img", image.Raw, 4<<20)
	var pub pubRecorder
	bl := NewBuilder(Options{Lock: true, Events: &pub})
	d, err := bl.Open(Disk{ID: "d0", Root: mustParse(t, fmt.Sprintf(`{"node":"mirror","name":"m0",
		"options":{"log":%q,"region":"64K","assume_clean":true},
		"children":[{"node":"faults","name":"fa","children":[{"node":"raw","path":%q}]},
		            {"node":"faults","name":"fb","children":[{"node":"raw","path":%q}]}]}`, filepath.Join(dir, "m.log"), a, b))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m := mirror.Of(bl.Node("m0"))
	if m == nil || faults.Of(bl.Node("fb")) == nil {
		t.Fatal("named nodes not found")
	}
	faults.Of(bl.Node("fb")).FailStop()
	p := bytes.Repeat([]byte{9}, 4096)
	if _, err := d.WriteAt(p, 8192); err != nil {
		t.Fatalf("write with one child gone: %v", err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	if st := m.Status(); st.Children[1].State != "failed" {
		t.Fatalf("status %+v", st.Children)
	}
	if len(pub.evs) != 1 || !strings.HasPrefix(pub.evs[0], "disk mirror-child-failed [node m0 slot 1") {
		t.Fatalf("events %q", pub.evs)
	}
	// A new leaf joins at run time through the Builder and syncs.
	c := mkimage(t, dir, "c.img", image.Raw, 4<<20)
	be, err := bl.OpenChild(mustParse(t, fmt.Sprintf(`{"node":"raw","path":%q}`, c)), "disk d0 mirror m0")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Attach(-1, be); err != nil {
		t.Fatal(err)
	}
	m.Wait()
	if st := m.Status(); st.Children[2].State != "in-sync" {
		t.Fatalf("status %+v", st.Children)
	}
	// A name already used in the VM is refused for a run-time child.
	if _, err := bl.OpenChild(mustParse(t, fmt.Sprintf(`{"node":"raw","name":"fa","path":%q}`, c+"x")), "here"); err == nil {
		t.Error("a duplicate node name accepted")
	}
}

func TestConcatStripeGraph(t *testing.T) {
	dir := t.TempDir()
	a := mkimage(t, dir, "a.img", image.Raw, 1<<20)
	b := mkimage(t, dir, "b.img", image.Raw, 3<<20)
	c := mkimage(t, dir, "c.img", image.Raw, 1<<20)
	e := mkimage(t, dir, "e.img", image.Raw, 1<<20+1000)
	bl := NewBuilder(Options{Lock: true})
	cat, err := bl.Open(Disk{ID: "d0", Root: mustParse(t, fmt.Sprintf(`{"node":"concat","children":[{"node":"raw","path":%q},{"node":"raw","path":%q}]}`, a, b))})
	if err != nil {
		t.Fatal(err)
	}
	defer cat.Close()
	if cat.Size() != 4<<20 {
		t.Fatalf("concat size %d", cat.Size())
	}
	st, err := bl.Open(Disk{ID: "d1", Root: mustParse(t, fmt.Sprintf(`{"node":"stripe","options":{"chunk":"128K"},"children":[{"node":"raw","path":%q},{"node":"raw","path":%q}]}`, c, e))})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if st.Size() != 2<<20 {
		t.Fatalf("stripe size %d", st.Size())
	}
}

func TestMirrorStripeRefusals(t *testing.T) {
	for _, c := range []struct{ spec, want string }{
		{`{"node":"stripe","options":{"chunk":1000},"children":[{"node":"raw","path":"a"}]}`, "chunk size 1000: want a multiple of 512"},
		{`{"node":"mirror","options":{"region":"3K"},"children":[{"node":"raw","path":"a"}]}`, "region 3072: want a power of two"},
		{`{"node":"mirror","options":{"logg":"x"},"children":[{"node":"raw","path":"a"}]}`, `unknown field "logg"`},
		{`{"node":"mirror","children":[]}`, "needs 1 to 8 children"},
		{`{"node":"concat"}`, "needs 1 to 64 children"},
	} {
		err := Validate([]Disk{{ID: "d0", Root: mustParse(t, c.spec)}}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", c.spec, err, c.want)
		}
	}
	// Children of different sizes under a mirror: refused when opened,
	// naming both.
	dir := t.TempDir()
	a := mkimage(t, dir, "a.img", image.Raw, 1<<20)
	b := mkimage(t, dir, "b.img", image.Raw, 2<<20)
	_, err := NewBuilder(Options{}).Open(Disk{ID: "d0", Root: mustParse(t, fmt.Sprintf(`{"node":"mirror","children":[{"node":"raw","path":%q},{"node":"raw","path":%q}]}`, a, b))})
	if err == nil || !strings.Contains(err.Error(), "needs children of one size") {
		t.Fatalf("%v", err)
	}
}
