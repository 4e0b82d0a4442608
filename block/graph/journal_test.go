package graph

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/journal"
)

func TestJournalKindRefusals(t *testing.T) {
	for _, c := range []struct{ spec, want string }{
		{`{"node":"journal","children":[{"node":"raw","path":"a"}]}`, "no log"},
		{`{"node":"journal","options":{"log":"l","keep_points":-1},"children":[{"node":"raw","path":"a"}]}`, "keep_points -1"},
		{`{"node":"journal","options":{"log":"l","keep_age":"soon"},"children":[{"node":"raw","path":"a"}]}`, `duration "soon"`},
		{`{"node":"journal","options":{"log":"l","undo":"on"},"children":[{"node":"raw","path":"a"}]}`, "undo"},
		{`{"node":"journal","options":{"log":"l"}}`, "needs exactly one child"},
	} {
		err := Validate([]Disk{{ID: "d0", Root: mustParse(t, c.spec)}}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error saying %q", c.spec, err, c.want)
		}
	}
}

// TestJournalKind: a journal node over a raw leaf keeps the leaf as it
// was, its operations are reachable by the node's name, and an undo node
// leaves its leaf untouched.
func TestJournalKind(t *testing.T) {
	dir := t.TempDir()
	r := mkimage(t, dir, "base.img", image.Raw, 1<<20)
	u := mkimage(t, dir, "undo.img", image.Raw, 1<<20)
	log := filepath.Join(dir, "base.journal")
	b := NewBuilder(Options{Lock: true})
	d0, err := b.Open(Disk{ID: "d0", Root: mustParse(t, `{"node":"journal","name":"j0","options":{"log":"`+log+`","keep_points":8,"max_log":"64M"},
		"children":[{"node":"raw","path":"`+r+`"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	d1, err := b.Open(Disk{ID: "d1", Root: mustParse(t, `{"node":"journal","options":{"undo":true},"children":[{"node":"raw","path":"`+u+`"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := d0.(block.Discarder); !ok {
		t.Error("a journal node does not offer discard")
	}
	one := bytes.Repeat([]byte{1}, 4096)
	d0.WriteAt(one, 0)
	d1.WriteAt(one, 0)
	d0.Flush()
	j := journal.Of(b.Node("j0"))
	if j == nil {
		t.Fatal("the journal node's operations are not reachable by its name")
	}
	if _, err := j.Mark("before"); err != nil {
		t.Fatal(err)
	}
	d0.WriteAt(bytes.Repeat([]byte{2}, 4096), 0)
	if err := j.Revert("before"); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	d0.ReadAt(got, 0)
	if !bytes.Equal(got, one) {
		t.Fatal("revert through the graph did not bring the mark back")
	}
	if err := d0.Close(); err != nil {
		t.Fatal(err)
	}
	if err := d1.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{r, u} {
		data, _ := os.ReadFile(p)
		if !bytes.Equal(data, make([]byte, 1<<20)) {
			t.Errorf("%s changed under its journal", p)
		}
	}
	if _, err := os.Stat(log); err != nil {
		t.Errorf("the journal's log is missing: %v", err)
	}
}

func TestScratchDirs(t *testing.T) {
	root := &Node{Kind: "mirror", Children: []*Node{
		{Kind: "journal", Options: []byte(`{"log":"/var/lib/vio/d0.jlog"}`), Children: []*Node{{Kind: "raw", Path: "/a"}}},
		{Kind: "journal", Options: []byte(`{"undo":true}`), Children: []*Node{{Kind: "raw", Path: "/b"}}},
		{Kind: "raw", Path: "/c"},
	}}
	got := ScratchDirs(root)
	want := []string{"/var/lib/vio", os.TempDir()}
	if !slices.Equal(got, want) {
		t.Fatalf("ScratchDirs = %q, want %q", got, want)
	}
	if d := ScratchDirs(&Node{Kind: "raw", Path: "/x"}); len(d) != 0 {
		t.Fatalf("a raw disk has scratch directories %q", d)
	}
}
