package graph

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/viovmm/vio/block/image"
)

// Info describes a graph for `vio image info --graph`: each node, with the
// image information of its leaves and the size of the whole disk.
type Info struct {
	Kind     string          `json:"node"`
	Name     string          `json:"name,omitempty"`
	Options  json.RawMessage `json:"options,omitempty"`
	Image    *image.Info     `json:"image,omitempty"` // raw and qcow2 leaves
	Path     string          `json:"path,omitempty"`  // nbd leaves
	Children []*Info         `json:"children,omitempty"`
	// Size is the disk's size as the root presents it (root only).
	Size int64 `json:"virtual-size,omitempty"`
}

// Describe validates root, describes its leaves and opens the whole graph
// read-only to learn its size. Throttle groups the graph names are taken as
// unlimited (a tool does not need the VM's limits to read a disk).
func Describe(root *Node, allowBacking bool) (*Info, error) {
	groups := map[string]RateLimiterConfig{}
	collectGroups(root, groups)
	b := NewBuilder(Options{Lock: true, Groups: groups})
	be, err := b.Open(Disk{ID: "(graph)", Root: root, ReadOnly: true})
	if err != nil {
		return nil, err
	}
	size := be.Size()
	be.Close()
	info, err := describe(root, allowBacking)
	if err != nil {
		return nil, err
	}
	info.Size = size
	return info, nil
}

func collectGroups(n *Node, groups map[string]RateLimiterConfig) {
	if n == nil {
		return
	}
	if n.Kind == "throttle" {
		var o ThrottleOptions
		if decodeOptions(n.Options, &o) == nil && o.Group != "" {
			groups[o.Group] = RateLimiterConfig{}
		}
	}
	for _, c := range n.Children {
		collectGroups(c, groups)
	}
}

func describe(n *Node, allowBacking bool) (*Info, error) {
	in := &Info{Kind: n.Kind, Name: n.Name, Options: n.Options}
	switch n.Kind {
	case image.Raw, image.Qcow2:
		ii, err := image.GetInfo(n.Path, image.ToolOptions{Format: n.Kind, AllowBacking: n.AllowBacking || allowBacking})
		if err != nil {
			return nil, err
		}
		in.Image = ii
	case "nbd":
		in.Path = n.Path
	}
	for _, c := range n.Children {
		ci, err := describe(c, allowBacking)
		if err != nil {
			return nil, err
		}
		in.Children = append(in.Children, ci)
	}
	return in, nil
}

// Print writes in as an indented tree.
func (in *Info) Print(w io.Writer) {
	fmt.Fprintf(w, "disk graph, virtual size: %d bytes\n", in.Size)
	in.print(w, "")
}

func (in *Info) print(w io.Writer, indent string) {
	var b strings.Builder
	b.WriteString(indent + in.Kind)
	if in.Name != "" {
		fmt.Fprintf(&b, " %q", in.Name)
	}
	if in.Image != nil {
		fmt.Fprintf(&b, " %s (virtual size %d, on disk %d", in.Image.Filename, in.Image.VirtualSize, in.Image.ActualSize)
		if in.Image.BackingFile != "" {
			fmt.Fprintf(&b, ", backing file %s", in.Image.BackingFile)
		}
		b.WriteString(")")
	}
	if in.Path != "" {
		b.WriteString(" " + in.Path)
	}
	if !noOptions(in.Options) {
		var compact bytes.Buffer
		if err := json.Compact(&compact, in.Options); err == nil {
			b.WriteString(" options " + compact.String())
		}
	}
	fmt.Fprintln(w, b.String())
	for _, c := range in.Children {
		c.print(w, indent+"  ")
	}
}
