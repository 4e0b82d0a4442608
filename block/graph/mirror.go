package graph

import (
	"errors"
	"fmt"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/concat"
	"github.com/viovmm/vio/block/mirror"
	"github.com/viovmm/vio/block/stripe"
)

// Publisher receives the events of a graph's nodes (events.Monitor is
// one; the source is "disk" and the first property the node's name).
type Publisher interface {
	Publish(source, event string, kv ...string)
}

// MirrorOptions are a mirror node's options.
type MirrorOptions struct {
	// Log is the dirty-region log file (docs/disks.md); without one every
	// start copies children 1.. in full from child 0 unless assume_clean.
	Log string `json:"log,omitempty"`
	// Region is the bytes one log bit covers (a power of two, 4K to 1G;
	// default 1M, or the log's).
	Region Size `json:"region,omitempty"`
	// AssumeClean takes the children as identical when no log says
	// otherwise (disks created empty together, or copied while off).
	AssumeClean bool `json:"assume_clean,omitempty"`
}

func (o MirrorOptions) check() error {
	if o.Region != 0 {
		r := int64(o.Region)
		if r < mirror.MinRegion || r > mirror.MaxRegion || r&(r-1) != 0 {
			return fmt.Errorf("region %d: want a power of two from 4K to 1G", r)
		}
	}
	return nil
}

// StripeOptions are a stripe node's options.
type StripeOptions struct {
	// Chunk is the bytes each child holds in turn (a multiple of 512;
	// default 64K).
	Chunk Size `json:"chunk,omitempty"`
}

var kindMirror = &Kind{
	Name: "mirror", MinChildren: 1, MaxChildren: mirror.MaxSlots, SameSize: true,
	Check: func(n *Node, _ map[string]bool) error {
		var o MirrorOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return err
		}
		return o.check()
	},
	Open: func(b *Builder, n *Node, no NodeOptions, c []block.Backend) (block.Backend, error) {
		var o MirrorOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return nil, err
		}
		return mirror.NewBackend(c, mirror.Options{
			Log: o.Log, Region: int64(o.Region), AssumeClean: o.AssumeClean, ReadOnly: no.ReadOnly,
			Events: b.nodeEvents(n),
		})
	},
}

var kindConcat = &Kind{
	Name: "concat", MinChildren: 1, MaxChildren: concat.MaxChildren,
	Open: func(_ *Builder, _ *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) {
		return concat.New(c)
	},
}

var kindStripe = &Kind{
	Name: "stripe", MinChildren: 1, MaxChildren: stripe.MaxChildren,
	Check: func(n *Node, _ map[string]bool) error {
		var o StripeOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return err
		}
		if o.Chunk != 0 {
			return stripe.CheckChunk(int64(o.Chunk))
		}
		return nil
	},
	Open: func(_ *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) {
		var o StripeOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return nil, err
		}
		chunk := int64(o.Chunk)
		if chunk == 0 {
			chunk = stripe.DefaultChunk
		}
		return stripe.New(c, chunk)
	},
}

func init() {
	Register(kindMirror)
	Register(kindConcat)
	Register(kindStripe)
}

// nodeEvents returns the event hook of node n: source "disk", the event
// named after the node's kind ("mirror-child-failed"), with the node's
// name (or "(unnamed mirror)") first.
func (b *Builder) nodeEvents(n *Node) func(string, ...string) {
	p := b.opts.Events
	if p == nil {
		return nil
	}
	name := n.Name
	if name == "" {
		name = "(unnamed " + n.Kind + ")"
	}
	return func(ev string, kv ...string) {
		p.Publish("disk", n.Kind+"-"+ev, append([]string{"node", name}, kv...)...)
	}
}

// OpenChild opens a subtree meant to join node parent at run time (a new
// mirror child): it is validated against the names and images the
// Builder's disks already use and opened writable with cache.
func (b *Builder) OpenChild(n *Node, where string) (block.Backend, error) {
	if n == nil {
		return nil, errors.New("no child given: give a node object, e.g. {\"node\":\"raw\",\"path\":\"new.img\"}")
	}
	if err := Validate([]Disk{{ID: where, Root: n}}, b.opts.GroupNames()); err != nil {
		return nil, err
	}
	b.mu.Lock()
	for name := range b.nodes {
		if sub := findName(n, name); sub {
			b.mu.Unlock()
			return nil, fmt.Errorf("%s: the node name %q is already used by a disk of this VM", where, name)
		}
	}
	b.mu.Unlock()
	return b.open(n, false, where, b.opts.ChildCache)
}

func findName(n *Node, name string) bool {
	if n == nil {
		return false
	}
	if n.Name == name {
		return true
	}
	for _, c := range n.Children {
		if findName(c, name) {
			return true
		}
	}
	return false
}
