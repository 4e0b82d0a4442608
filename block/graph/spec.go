// Package graph builds a disk from a small tree of named nodes: leaves are
// formats and protocols (raw, qcow2, nbd), inner nodes are interposers
// (throttle, faults; crypt, mirror and journal are meant to join as more
// kinds) whose children are the back-ends they wrap. The tree is the disk's
// "graph" in the VM configuration:
//
//	{"node": "throttle", "name": "t0", "options": {"bandwidth": {...}},
//	 "children": [{"node": "qcow2", "path": "a.qcow2"}]}
//
// Validate checks a VM's graphs with one sentence per mistake; a Builder
// turns a checked graph into a block.Backend.
//
// Leaves always name their format: a graph never probes an image, so none
// of the probing rules of package image (a guest forging a qcow2 header in
// its raw disk) arise, and backing files stay confined as image.Open
// confines them unless the leaf says allow_backing.
package graph

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"strings"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/raw"
)

// Node is one node of a disk graph, as the configuration writes it.
type Node struct {
	// Kind is the node kind: raw, qcow2, nbd, throttle, faults.
	Kind string `json:"node"`
	// Name identifies the node (for messages and, later, run-time
	// control); optional, unique across the VM's disks when given.
	Name string `json:"name,omitempty"`
	// Path is a leaf's image file, or an NBD URI for an nbd leaf.
	Path string `json:"path,omitempty"`
	// ReadOnly opens this node and everything below it read-only. A
	// read-only node under a writable one is refused: the writes would
	// fail at the bottom instead of being refused at the top.
	ReadOnly bool `json:"readonly,omitempty"`
	// AllowBacking lets a qcow2 leaf follow backing files by absolute
	// path, "..", or NBD URI (see image.OpenOptions.AllowBacking).
	AllowBacking bool `json:"allow_backing,omitempty"`
	// Options are the kind's own settings (see each kind).
	Options json.RawMessage `json:"options,omitempty"`
	// Children are the back-ends an interposer wraps; leaves have none.
	Children []*Node `json:"children,omitempty"`
}

// Bounds that keep a hostile or mistaken configuration small.
const (
	MaxDepth = 8
	MaxNodes = 64
	// maxSpec bounds the JSON of one graph.
	maxSpec = 1 << 20
)

// Parse reads one graph from JSON, refusing unknown fields. It checks the
// shape only; Validate checks the meaning.
func Parse(data []byte) (*Node, error) {
	if len(data) > maxSpec {
		return nil, fmt.Errorf("disk graph: the description is larger than %d bytes", maxSpec)
	}
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	var n Node
	if err := d.Decode(&n); err != nil {
		return nil, fmt.Errorf("disk graph: %w", err)
	}
	if d.More() {
		return nil, errors.New("disk graph: text after the graph's closing brace")
	}
	return &n, nil
}

// Disk is one disk's graph as Validate sees it.
type Disk struct {
	ID       string // for messages
	Root     *Node
	ReadOnly bool          // the whole disk is read-only
	Cache    raw.CacheMode // for the leaves' image files
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// Validate checks the graphs of a VM's disks: node kinds, their options
// and children, names unique across all disks, no image used twice, no
// read-only node under a writable one, throttle groups that groups
// defines. It returns the first problem as one sentence.
func Validate(disks []Disk, groups map[string]bool) error {
	v := validator{names: map[string]string{}, paths: map[string]string{}, groups: groups}
	for _, d := range disks {
		if d.Root == nil {
			return fmt.Errorf("disk %s: the graph is empty: give a root node", d.ID)
		}
		v.disk = d.ID
		v.count = 0
		if err := v.node(d.Root, !d.ReadOnly, 1, ""); err != nil {
			return err
		}
	}
	return nil
}

type validator struct {
	disk   string
	count  int
	names  map[string]string // node name -> disk
	paths  map[string]string // leaf path -> node label
	groups map[string]bool
}

// label names a node in messages: by its name, or by kind and position.
func label(n *Node, pos string) string {
	if n.Name != "" {
		return fmt.Sprintf("%s node %q", n.Kind, n.Name)
	}
	if pos == "" {
		return fmt.Sprintf("root %s node", n.Kind)
	}
	return fmt.Sprintf("%s node at %s", n.Kind, pos)
}

func (v *validator) node(n *Node, writable bool, depth int, pos string) error {
	where := "disk " + v.disk
	if n == nil {
		return fmt.Errorf("%s: a child at %s is null: give a node object", where, pos)
	}
	v.count++
	if v.count > MaxNodes {
		return fmt.Errorf("%s: the graph has more than %d nodes", where, MaxNodes)
	}
	if depth > MaxDepth {
		return fmt.Errorf("%s: the graph is deeper than %d levels", where, MaxDepth)
	}
	k, ok := kinds[n.Kind]
	if !ok {
		if n.Kind == "" {
			return fmt.Errorf("%s: a node at %s has no kind: give \"node\" (%s)", where, posOrRoot(pos), kindList())
		}
		return fmt.Errorf("%s: node kind %q is unknown: want %s", where, n.Kind, kindList())
	}
	l := label(n, pos)
	if n.Name != "" {
		if !nameRE.MatchString(n.Name) {
			return fmt.Errorf("%s: node name %q: use letters, digits, '_', '.' and '-' (at most 64, starting with a letter or digit)", where, n.Name)
		}
		if other, dup := v.names[n.Name]; dup {
			return fmt.Errorf("%s: the node name %q is used twice (also in disk %s); names must be unique across the VM's disks", where, n.Name, other)
		}
		v.names[n.Name] = v.disk
	}
	if n.ReadOnly && writable && pos != "" {
		return fmt.Errorf("%s: %s is read-only under a writable parent: mark the parent (or the whole disk) read-only, or drop readonly here", where, l)
	}
	if n.ReadOnly {
		writable = false
	}
	if k.Leaf {
		if len(n.Children) > 0 {
			return fmt.Errorf("%s: %s is a leaf and cannot have children", where, l)
		}
		if n.Path == "" {
			return fmt.Errorf("%s: %s has no path: give the image file (or NBD URI) it opens", where, l)
		}
		if other, dup := v.paths[n.Path]; dup {
			return fmt.Errorf("%s: %s opens %s, which %s opens too; each image may be opened by one node only", where, l, n.Path, other)
		}
		v.paths[n.Path] = fmt.Sprintf("%s (disk %s)", l, v.disk)
	} else {
		if n.Path != "" {
			return fmt.Errorf("%s: %s is an interposer and takes no path: put the image in a leaf child", where, l)
		}
		if got := len(n.Children); got < k.MinChildren || k.MaxChildren > 0 && got > k.MaxChildren {
			return fmt.Errorf("%s: %s needs %s, it has %d", where, l, childCount(k), got)
		}
	}
	if n.AllowBacking && n.Kind != "qcow2" {
		return fmt.Errorf("%s: %s: allow_backing applies to qcow2 leaves only", where, l)
	}
	if k.Check != nil {
		if err := k.Check(n, v.groups); err != nil {
			return fmt.Errorf("%s: %s: %w", where, l, err)
		}
	} else if len(n.Options) > 0 && string(n.Options) != "null" && string(n.Options) != "{}" {
		return fmt.Errorf("%s: %s takes no options", where, l)
	}
	// Below a multipath, two connections to one export are two paths,
	// not one image opened twice: an NBD URI an earlier child's subtree
	// opened may be opened again by a later one.
	siblings := map[string]string{} // nbd URI -> what an earlier child's subtree recorded
	for i, c := range n.Children {
		var before map[string]string
		if k.SharedPaths {
			for uri, rec := range siblings {
				if v.paths[uri] == rec {
					delete(v.paths, uri)
				}
			}
			before = maps.Clone(v.paths)
		}
		if err := v.node(c, writable, depth+1, childPos(pos, n, i)); err != nil {
			return err
		}
		for uri, rec := range v.paths {
			if _, old := before[uri]; k.SharedPaths && !old && image.IsNBD(uri) {
				siblings[uri] = rec
			}
		}
	}
	for uri, rec := range siblings {
		v.paths[uri] = rec
	}
	return nil
}

func posOrRoot(pos string) string {
	if pos == "" {
		return "the root"
	}
	return pos
}

func childPos(pos string, parent *Node, i int) string {
	p := parent.Name
	if p == "" {
		p = parent.Kind
		if pos != "" {
			p = pos + "/" + p
		}
	}
	return fmt.Sprintf("%s.children[%d]", p, i)
}

func childCount(k *Kind) string {
	switch {
	case k.MinChildren == k.MaxChildren && k.MinChildren == 1:
		return "exactly one child"
	case k.MinChildren == k.MaxChildren:
		return fmt.Sprintf("exactly %d children", k.MinChildren)
	case k.MaxChildren == 0:
		return fmt.Sprintf("at least %d children", k.MinChildren)
	}
	return fmt.Sprintf("%d to %d children", k.MinChildren, k.MaxChildren)
}

// decodeOptions decodes a node's options strictly into v.
func decodeOptions(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(raw))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("options: %s", strings.TrimPrefix(err.Error(), "json: "))
	}
	return nil
}
