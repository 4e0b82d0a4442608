package graph

import (
	"bytes"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/multipath"
	"github.com/viovmm/vio/block/nbd"
)

// Options are checked with one sentence each; two nbd leaves of one URI
// are two paths under a multipath and one image twice elsewhere.
func TestMultipathValidate(t *testing.T) {
	for _, c := range []struct{ graph, want string }{
		{`{"node":"multipath","children":[{"node":"nbd","path":"nbd://h/x"},{"node":"nbd","path":"nbd://h/x"}]}`, ""},
		{`{"node":"multipath","options":{"policy":"round-robin","timeout":"2s","probe_interval":"1s"},"children":[{"node":"raw","path":"a"}]}`, ""},
		{`{"node":"mirror","children":[{"node":"nbd","path":"nbd://h/x"},{"node":"nbd","path":"nbd://h/x"}]}`, "opened by one node only"},
		{`{"node":"mirror","children":[{"node":"nbd","path":"nbd://h/x"},{"node":"multipath","children":[{"node":"nbd","path":"nbd://h/x"}]}]}`, "opened by one node only"},
		{`{"node":"multipath","options":{"policy":"random"},"children":[{"node":"raw","path":"a"}]}`, `policy "random": want`},
		{`{"node":"multipath","options":{"timeout":"1us"},"children":[{"node":"raw","path":"a"}]}`, "below 1ms"},
		{`{"node":"multipath","options":{"probe_interval":"1ms"},"children":[{"node":"raw","path":"a"}]}`, "below 10ms"},
		{`{"node":"multipath","options":{"timeout":30},"children":[{"node":"raw","path":"a"}]}`, "want a string"},
		{`{"node":"multipath","options":{"retries":3},"children":[{"node":"raw","path":"a"}]}`, "retries"},
		{`{"node":"multipath","children":[]}`, "needs"},
	} {
		err := Validate([]Disk{{ID: "d0", Root: mustParse(t, c.graph)}}, nil)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%s: got %v, want %q", c.graph, err, c.want)
		}
	}
}

// A multipath of two connections to one export of vio's NBD server, from
// JSON: the named node reaches its status, a path that fails is reported
// with a "disk" event named after the kind, and the disk keeps working.
func TestMultipathGraph(t *testing.T) {
	dir := t.TempDir()
	img := mkimage(t, dir, "a.img", image.Raw, 1<<20)
	file, err := image.Open(img, image.OpenOptions{Format: image.Raw})
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	srv, err := nbd.NewServer(nbd.Export{Name: "x", Backend: file})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	defer func() { srv.Close(); <-served }()
	uri := "nbd://" + l.Addr().String() + "/x"
	var pub pubRecorder
	bl := NewBuilder(Options{Events: &pub})
	d, err := bl.Open(Disk{ID: "d0", Root: mustParse(t, fmt.Sprintf(`{"node":"multipath","name":"mp",
		"options":{"timeout":"10s"},
		"children":[{"node":"faults","name":"f0","options":{"rules":[{"ops":"write","error":"EIO","times":1}]},
		             "children":[{"node":"nbd","path":%q}]},
		            {"node":"nbd","path":%q}]}`, uri, uri))})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	m := multipath.Of(bl.Node("mp"))
	if m == nil {
		t.Fatal("multipath node not found")
	}
	p := bytes.Repeat([]byte{7}, 4096)
	if _, err := d.WriteAt(p, 4096); err != nil {
		t.Fatalf("write: %v", err)
	}
	if err := d.Flush(); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := file.ReadAt(got, 4096); err != nil || !bytes.Equal(got, p) {
		t.Fatalf("image: %v", err)
	}
	st := m.Status()
	if st.Policy != "failover" || st.Paths[0].State != "failed" || st.Paths[1].State != "active" || st.Paths[1].Reissued != 1 {
		t.Fatalf("status %+v", st)
	}
	if len(pub.evs) != 1 || !strings.HasPrefix(pub.evs[0], "disk multipath-path-failed [node mp path 0 op write") {
		t.Fatalf("events %q", pub.evs)
	}
	// The fault rule fired once: the probe takes path 0 back.
	if m.Probe() != 1 || m.Status().Paths[0].State != "active" {
		t.Fatalf("not taken back: %+v", m.Status())
	}
}
