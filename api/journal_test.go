package api_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/journal"
)

// TestDiskJournalEndpoint: vio.disk-journal runs a journal's operations on
// a running VM's journal node by name: mark, revert, list; a bad request
// is 400 with a sentence, a missing node 404, a VM that does not run 405.
func TestDiskJournalEndpoint(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	list := []byte(`{"node":"j0","op":"list"}`)
	if a := c.do("PUT", "vio.disk-journal", list); a.status != 405 {
		t.Fatalf("vio.disk-journal before boot: %d %s", a.status, a.body)
	}
	c.ok("PUT", "vm.boot", nil, 204)
	j, err := journal.OpenJournal(blocktest.NewMem(64<<10), filepath.Join(t.TempDir(), "j.log"), journal.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	v.builder.Last().SetJournal("j0", j)
	j.WriteAt([]byte("one"), 0)
	status := func(body string) journal.Status {
		t.Helper()
		a := c.do("PUT", "vio.disk-journal", []byte(body))
		if a.status != 200 {
			t.Fatalf("vio.disk-journal %s: %d %s", body, a.status, a.body)
		}
		var st journal.Status
		if err := json.Unmarshal(a.body, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := status(`{"node":"j0","op":"mark","name":"first"}`)
	if p := st.Points[len(st.Points)-1]; p.Name != "first" || !p.Current {
		t.Fatalf("after mark: %+v", st.Points)
	}
	j.WriteAt([]byte("two"), 0)
	status(`{"node":"j0","op":"revert","point":"first"}`)
	got := make([]byte, 3)
	j.ReadAt(got, 0)
	if string(got) != "one" {
		t.Fatalf("after the revert the disk holds %q", got)
	}
	if st := status(string(list)); len(st.Points) != 3 {
		t.Fatalf("list: %+v, want the base, the mark and the point the revert made", st.Points)
	}
	for body, want := range map[string]int{
		`{"node":"j0","op":"rewind"}`:                400,
		`{"node":"j0","op":"revert","point":"nope"}`: 400,
		`{"node":"j0","op":"mark","name":"9lives"}`:  400,
		`{"op":"list"}`:                  400,
		`{"node":"missing","op":"list"}`: 404,
	} {
		a := c.do("PUT", "vio.disk-journal", []byte(body))
		if a.status != want {
			t.Errorf("%s: %d %s, want %d", body, a.status, a.body, want)
		}
		if a.status == 400 && strings.TrimSpace(a.errorSentence()) == "" {
			t.Errorf("%s: no sentence", body)
		}
	}
}
