package graph

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
	"github.com/viovmm/vio/block/faults"
	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/throttle"
)

func mustParse(t *testing.T, s string) *Node {
	t.Helper()
	n, err := Parse([]byte(s))
	if err != nil {
		t.Fatalf("Parse(%s): %v", s, err)
	}
	return n
}

const bw = `{"bandwidth":{"size":1048576,"refill_time":1000}}`

// Every refusal, each with the words that say what is wrong.
func TestValidateRefusals(t *testing.T) {
	groups := map[string]bool{"g1": true}
	for _, c := range []struct {
		name  string
		disks []string // one graph per disk
		ro    bool
		want  string
	}{
		{"unknown kind", []string{`{"node":"vmdk","path":"a"}`}, false, `node kind "vmdk" is unknown: want crypt, faults, nbd, qcow2, raw, throttle`},
		{"no kind", []string{`{"path":"a"}`}, false, `has no kind`},
		{"throttle without options", []string{`{"node":"throttle","children":[{"node":"raw","path":"a"}]}`}, false, "no options"},
		{"throttle with empty options", []string{`{"node":"throttle","options":{},"children":[{"node":"raw","path":"a"}]}`}, false, "no options"},
		{"bucket without refill", []string{`{"node":"throttle","options":{"ops":{"size":10}},"children":[{"node":"raw","path":"a"}]}`}, false, "refill_time above zero"},
		{"bucket without size", []string{`{"node":"throttle","options":{"ops":{"refill_time":10}},"children":[{"node":"raw","path":"a"}]}`}, false, "size is missing"},
		{"unknown option", []string{`{"node":"throttle","options":{"bps":1},"children":[{"node":"raw","path":"a"}]}`}, false, `unknown field "bps"`},
		{"undefined group", []string{`{"node":"throttle","options":{"group":"g9"},"children":[{"node":"raw","path":"a"}]}`}, false, `group "g9" is not defined`},
		{"group and buckets", []string{`{"node":"throttle","options":{"group":"g1","ops":{"size":1,"refill_time":1}},"children":[{"node":"raw","path":"a"}]}`}, false, "either a group or buckets"},
		{"name twice in a disk", []string{`{"node":"throttle","name":"x","options":` + bw + `,"children":[{"node":"raw","name":"x","path":"a"}]}`}, false, `the node name "x" is used twice`},
		{"name twice across disks", []string{`{"node":"raw","name":"x","path":"a"}`, `{"node":"raw","name":"x","path":"b"}`}, false, `the node name "x" is used twice (also in disk d0)`},
		{"bad name", []string{`{"node":"raw","name":"a b","path":"a"}`}, false, `node name "a b"`},
		{"read-only child under writable parent", []string{`{"node":"throttle","options":` + bw + `,"children":[{"node":"raw","path":"a","readonly":true}]}`}, false, "read-only under a writable parent"},
		{"leaf with children", []string{`{"node":"raw","path":"a","children":[{"node":"raw","path":"b"}]}`}, false, "is a leaf and cannot have children"},
		{"leaf without path", []string{`{"node":"qcow2"}`}, false, "has no path"},
		{"interposer with path", []string{`{"node":"faults","path":"a","children":[{"node":"raw","path":"b"}]}`}, false, "takes no path"},
		{"interposer without child", []string{`{"node":"faults"}`}, false, "needs exactly one child, it has 0"},
		{"interposer with two children", []string{`{"node":"faults","children":[{"node":"raw","path":"a"},{"node":"raw","path":"b"}]}`}, false, "needs exactly one child, it has 2"},
		{"image used twice", []string{`{"node":"raw","path":"a"}`, `{"node":"raw","path":"a"}`}, false, "opens a, which root raw node (disk d0) opens too"},
		{"allow_backing on raw", []string{`{"node":"raw","path":"a","allow_backing":true}`}, false, "allow_backing applies to qcow2 leaves only"},
		{"nbd without URI", []string{`{"node":"nbd","path":"/tmp/x"}`}, false, "is not an NBD URI"},
		{"leaf options", []string{`{"node":"raw","path":"a","options":{"x":1}}`}, false, "takes no options"},
		{"bad fault probability", []string{`{"node":"faults","options":{"rules":[{"probability":2}]},"children":[{"node":"raw","path":"a"}]}`}, false, "probability 2"},
		{"bad fault error", []string{`{"node":"faults","options":{"rules":[{"error":"EWHAT"}]},"children":[{"node":"raw","path":"a"}]}`}, false, `error "EWHAT"`},
		{"bad fault ops", []string{`{"node":"faults","options":{"rules":[{"ops":"erase"}]},"children":[{"node":"raw","path":"a"}]}`}, false, `request kind "erase"`},
		{"bad fault delay", []string{`{"node":"faults","options":{"rules":[{"delay":"soon"}]},"children":[{"node":"raw","path":"a"}]}`}, false, `duration "soon"`},
		{"bad fault size", []string{`{"node":"faults","options":{"rules":[{"offset":"lots"}]},"children":[{"node":"raw","path":"a"}]}`}, false, `invalid size "lots"`},
		{"null child", []string{`{"node":"faults","children":[null]}`}, false, "is null"},
		{"too deep", []string{deep(MaxDepth + 1)}, false, "deeper than 8 levels"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var disks []Disk
			for i, s := range c.disks {
				disks = append(disks, Disk{ID: fmt.Sprintf("d%d", i), Root: mustParse(t, s), ReadOnly: c.ro})
			}
			err := Validate(disks, groups)
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not contain %q", err, c.want)
			}
			if strings.Count(strings.TrimSuffix(err.Error(), "."), ". ") > 0 {
				t.Errorf("more than one sentence: %q", err)
			}
		})
	}
}

func deep(n int) string {
	s := `{"node":"raw","path":"a"}`
	for range n - 1 {
		s = `{"node":"faults","children":[` + s + `]}`
	}
	return s
}

func TestValidateAccepts(t *testing.T) {
	ok := []string{
		`{"node":"raw","path":"a"}`,
		`{"node":"qcow2","path":"a","allow_backing":true}`,
		`{"node":"nbd","path":"nbd://localhost/x"}`,
		`{"node":"throttle","name":"t0","options":` + bw + `,"children":[{"node":"qcow2","path":"a.qcow2"}]}`,
		`{"node":"throttle","options":{"group":"g1"},"children":[{"node":"raw","path":"a"}]}`,
		`{"node":"faults","children":[{"node":"raw","path":"a"}]}`,
		`{"node":"faults","options":{"seed":3,"rules":[{"ops":"read","offset":"1M","length":4096,"error":"ENOSPC"},{"delay":"1ms","delay_max":"2ms"},{"torn":512,"nth":4}]},"children":[{"node":"raw","path":"a"}]}`,
		// A read-only parent may have a read-only child; a read-only disk
		// makes every node read-only.
		`{"node":"faults","readonly":true,"children":[{"node":"raw","path":"a","readonly":true}]}`,
		deep(MaxDepth),
	}
	for _, s := range ok {
		if err := Validate([]Disk{{ID: "d0", Root: mustParse(t, s)}}, map[string]bool{"g1": true}); err != nil {
			t.Errorf("%s: %v", s, err)
		}
	}
	ro := `{"node":"faults","children":[{"node":"raw","path":"a","readonly":true}]}`
	if err := Validate([]Disk{{ID: "d0", Root: mustParse(t, ro), ReadOnly: true}}, nil); err != nil {
		t.Errorf("read-only disk: %v", err)
	}
}

func TestParseRefusals(t *testing.T) {
	for _, s := range []string{
		`{"node":"raw","path":"a","colour":"red"}`,
		`{"node":"raw","path":"a"} {}`,
		`{"node":`,
		`[]`,
	} {
		if _, err := Parse([]byte(s)); err == nil {
			t.Errorf("Parse(%s) accepted", s)
		}
	}
}

func TestTooManyNodes(t *testing.T) {
	// A wide tree through a test kind with many children.
	Register(&Kind{Name: "test-wide", MinChildren: 1, Open: func(b *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) { return c[0], nil }})
	defer delete(kinds, "test-wide")
	var kids []string
	for i := range MaxNodes {
		kids = append(kids, fmt.Sprintf(`{"node":"raw","path":"p%d"}`, i))
	}
	s := `{"node":"test-wide","children":[` + strings.Join(kids, ",") + `]}`
	if err := Validate([]Disk{{ID: "d0", Root: mustParse(t, s)}}, nil); err == nil || !strings.Contains(err.Error(), "more than 64 nodes") {
		t.Fatalf("%v", err)
	}
}

// image makes a raw or qcow2 image of size bytes in dir.
func mkimage(t *testing.T, dir, name, format string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := image.Create(p, image.CreateOptions{Format: format, Size: size}); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestBuildStack(t *testing.T) {
	dir := t.TempDir()
	q := mkimage(t, dir, "a.qcow2", image.Qcow2, 4<<20)
	r := mkimage(t, dir, "b.img", image.Raw, 1<<20)
	b := NewBuilder(Options{Lock: true, Groups: map[string]RateLimiterConfig{
		"shared": {Ops: &TokenBucket{Size: 1000, RefillTime: 1000}},
	}})
	d0, err := b.Open(Disk{ID: "d0", Root: mustParse(t, `{"node":"faults","name":"f0","options":{"rules":[{"offset":4096,"length":4096,"ops":"read"}]},
		"children":[{"node":"throttle","name":"t0","options":{"group":"shared"},"children":[{"node":"qcow2","path":"`+q+`"}]}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	defer d0.Close()
	d1, err := b.Open(Disk{ID: "d1", Root: mustParse(t, `{"node":"throttle","name":"t1","options":{"group":"shared"},"children":[{"node":"raw","path":"`+r+`"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	defer d1.Close()
	if d0.Size() != 4<<20 || d1.Size() != 1<<20 {
		t.Fatalf("sizes %d %d", d0.Size(), d1.Size())
	}
	// The stack works: data round-trips, the fault hits its range only.
	p := bytes.Repeat([]byte{7}, 8192)
	if _, err := d0.WriteAt(p, 0); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4096)
	if _, err := d0.ReadAt(got, 0); err != nil || !bytes.Equal(got, p[:4096]) {
		t.Fatalf("read outside the fault: %v", err)
	}
	if _, err := d0.ReadAt(got, 4096); !errors.Is(err, syscall.EIO) {
		t.Fatalf("read in the fault's range: %v, want EIO", err)
	}
	// qcow2 offers discard and write zeroes, and so does the stack.
	if _, ok := d0.(block.ZeroWriter); !ok {
		t.Error("the stack hides the qcow2 leaf's WriteZeroes")
	}
	// Named nodes are reachable, and both throttles share one group.
	if faults.Of(b.Node("f0")) == nil || throttle.Of(b.Node("t0")) == nil {
		t.Fatal("named nodes not found")
	}
	if throttle.Of(b.Node("t0")).Group() != throttle.Of(b.Node("t1")).Group() {
		t.Fatal("two throttles naming one group got different groups")
	}
	// The leaf is locked like a VM's disk.
	if _, err := image.Open(q, image.OpenOptions{Format: image.Qcow2, Lock: true}); err == nil {
		t.Fatal("the graph's leaf is not locked")
	}
}

func TestBuildReadOnly(t *testing.T) {
	dir := t.TempDir()
	r := mkimage(t, dir, "b.img", image.Raw, 1<<20)
	b := NewBuilder(Options{})
	d, err := b.Open(Disk{ID: "d0", ReadOnly: true, Root: mustParse(t, `{"node":"faults","children":[{"node":"raw","path":"`+r+`"}]}`)})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !reportsReadOnly(d) {
		t.Fatal("a read-only disk's stack does not report read-only")
	}
	if _, err := d.WriteAt([]byte{1}, 0); !errors.Is(err, block.ErrReadOnly) {
		t.Fatalf("write to a read-only stack: %v", err)
	}
}

func TestBuildFailsCleanly(t *testing.T) {
	dir := t.TempDir()
	r := mkimage(t, dir, "b.img", image.Raw, 1<<20)
	b := NewBuilder(Options{Lock: true})
	// The second leaf is missing: the first, opened already, must be
	// closed again (its lock released).
	Register(&Kind{Name: "test-pair", MinChildren: 2, MaxChildren: 2, Open: func(b *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) { return c[0], nil }})
	defer delete(kinds, "test-pair")
	_, err := b.Open(Disk{ID: "d0", Root: mustParse(t, `{"node":"test-pair","children":[{"node":"raw","path":"`+r+`"},{"node":"raw","path":"`+filepath.Join(dir, "missing")+`"}]}`)})
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("%v", err)
	}
	f, err := image.Open(r, image.OpenOptions{Format: image.Raw, Lock: true})
	if err != nil {
		t.Fatalf("the first leaf stayed open: %v", err)
	}
	f.Close()
}

func TestBuildSizeMismatch(t *testing.T) {
	Register(&Kind{Name: "test-mirror", MinChildren: 2, SameSize: true, Open: func(b *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) { return c[0], nil }})
	defer delete(kinds, "test-mirror")
	dir := t.TempDir()
	a := mkimage(t, dir, "a.img", image.Raw, 1<<20)
	c := mkimage(t, dir, "c.img", image.Raw, 2<<20)
	_, err := NewBuilder(Options{}).Open(Disk{ID: "d0", Root: mustParse(t, `{"node":"test-mirror","name":"m","children":[{"node":"raw","name":"a","path":"`+a+`"},{"node":"raw","name":"c","path":"`+c+`"}]}`)})
	if err == nil || !strings.Contains(err.Error(), `needs children of one size, but raw node "a" is 1048576 bytes and raw node "c" is 2097152 bytes`) {
		t.Fatalf("%v", err)
	}
}

func TestBuildReadOnlyChildAtRunTime(t *testing.T) {
	Register(&Kind{Name: "test-ro", Leaf: true, Open: func(*Builder, *Node, NodeOptions, []block.Backend) (block.Backend, error) {
		return roMem{blocktest.NewMem(4096)}, nil
	}})
	defer delete(kinds, "test-ro")
	_, err := NewBuilder(Options{}).Open(Disk{ID: "d0", Root: mustParse(t, `{"node":"faults","children":[{"node":"test-ro","path":"x"}]}`)})
	if err == nil || !strings.Contains(err.Error(), "opened read-only") {
		t.Fatalf("%v", err)
	}
}

type roMem struct{ *blocktest.Mem }

func (roMem) ReadOnly() bool { return true }

func TestCloudHypervisorThrottle(t *testing.T) {
	b := NewBuilder(Options{Groups: map[string]RateLimiterConfig{"g": {Bandwidth: &TokenBucket{Size: 100, RefillTime: 10}}}})
	m := blocktest.NewMem(4096)
	same, err := b.Throttle(m, nil, "")
	if err != nil || same != block.Backend(m) {
		t.Fatal("no limits should leave the back-end alone")
	}
	th, err := b.Throttle(m, &RateLimiterConfig{Ops: &TokenBucket{Size: 5, OneTimeBurst: 10, RefillTime: 100}}, "")
	if err != nil {
		t.Fatal(err)
	}
	if l := throttle.Of(th).Group().Limits(); l.Ops.Size != 5 || l.Ops.OneTimeBurst != 10 || l.Ops.RefillTime.Milliseconds() != 100 {
		t.Fatalf("limits %+v", l)
	}
	if _, err := b.Throttle(m, &RateLimiterConfig{}, "g"); err == nil {
		t.Fatal("both a config and a group were accepted")
	}
	if _, err := b.Throttle(m, nil, "nope"); err == nil || !strings.Contains(err.Error(), "rate_limit_groups") {
		t.Fatalf("undefined group: %v", err)
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}

func TestDescribe(t *testing.T) {
	dir := t.TempDir()
	q := mkimage(t, dir, "a.qcow2", image.Qcow2, 4<<20)
	root := mustParse(t, `{"node":"throttle","name":"t0","options":{"group":"vm-group"},"children":[{"node":"faults","children":[{"node":"qcow2","path":"`+q+`"}]}]}`)
	in, err := Describe(root, false)
	if err != nil {
		t.Fatal(err)
	}
	if in.Size != 4<<20 || in.Kind != "throttle" || in.Children[0].Children[0].Image == nil || in.Children[0].Children[0].Image.Format != image.Qcow2 {
		t.Fatalf("%+v", in)
	}
	var out bytes.Buffer
	in.Print(&out)
	for _, want := range []string{"virtual size: 4194304", `throttle "t0" options {"group":"vm-group"}`, "    qcow2 " + q} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
