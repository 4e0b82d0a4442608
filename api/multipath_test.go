package api_test

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/multipath"
)

// brokenPath is a path whose reads fail, as a cut NBD connection's do.
type brokenPath struct{ block.Backend }

func (brokenPath) ReadAt(p []byte, off int64) (int, error) {
	return 0, errors.New("connection reset by peer")
}

// TestDiskMultipathEndpoint: vio.disk-multipath reports a running VM's
// multipath node by name: after a read that path 0 failed, path 0 is
// failed with its error and path 1 is active and served the read again; a
// request without a node is 400 with a sentence, a missing node 404, a VM
// that does not run 405.
func TestDiskMultipathEndpoint(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	body := []byte(`{"node":"mp0"}`)
	if a := c.do("PUT", "vio.disk-multipath", body); a.status != 405 {
		t.Fatalf("vio.disk-multipath before boot: %d %s", a.status, a.body)
	}
	c.ok("PUT", "vm.boot", nil, 204)
	mp, err := multipath.New([]block.Backend{brokenPath{blocktest.NewMem(64 << 10)}, blocktest.NewMem(64 << 10)},
		multipath.Options{ProbeInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer mp.Close()
	v.builder.Last().SetMultipath("mp0", mp)
	if _, err := mp.ReadAt(make([]byte, 512), 0); err != nil {
		t.Fatalf("a read with one good path left: %v", err)
	}
	a := c.do("PUT", "vio.disk-multipath", body)
	if a.status != 200 {
		t.Fatalf("vio.disk-multipath: %d %s", a.status, a.body)
	}
	var st multipath.Status
	if err := json.Unmarshal(a.body, &st); err != nil {
		t.Fatal(err)
	}
	if st.Policy != "failover" || len(st.Paths) != 2 {
		t.Fatalf("status %+v, want failover over 2 paths", st)
	}
	if p := st.Paths[0]; p.State != "failed" || p.Failures != 1 || p.Error == "" {
		t.Errorf("path 0: %+v, want failed once with its error", p)
	}
	if p := st.Paths[1]; p.State != "active" || p.Reissued != 1 {
		t.Errorf("path 1: %+v, want active, having served the re-issued read", p)
	}
	for body, want := range map[string]int{
		`{}`:                 400,
		`{"node":"missing"}`: 404,
	} {
		a := c.do("PUT", "vio.disk-multipath", []byte(body))
		if a.status != want {
			t.Errorf("%s: %d %s, want %d", body, a.status, a.body, want)
		}
		if a.status == 400 && a.errorSentence() == "" {
			t.Errorf("%s: no sentence", body)
		}
	}
}
