package graph

import (
	"errors"
	"fmt"
	"sync"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/block/throttle"
)

// Options configure a Builder: what every leaf is opened with, and the VM's
// throttle groups.
type Options struct {
	// Lock takes QEMU-compatible locks on the leaves' images, as a VM does.
	Lock bool
	// Groups are the VM's rate_limit_groups, by id.
	Groups map[string]RateLimiterConfig
	// Clock is the throttles' time source (nil: the system clock).
	Clock throttle.Clock
	// Events receives the nodes' events (a mirror's failed child); nil:
	// none.
	Events Publisher
	// ChildCache is the cache mode of leaves opened at run time
	// (OpenChild).
	ChildCache raw.CacheMode
}

// Builder opens the disks of one VM. It holds what the disks share (the
// throttle groups) and remembers named nodes for run-time control. Safe for
// concurrent use.
type Builder struct {
	opts Options

	mu     sync.Mutex
	groups map[string]*throttle.Group
	nodes  map[string]block.Backend
}

// NewBuilder returns a Builder.
func NewBuilder(o Options) *Builder {
	return &Builder{opts: o, groups: map[string]*throttle.Group{}, nodes: map[string]block.Backend{}}
}

// GroupNames returns the set of group ids opts defines, as Validate wants.
func (o Options) GroupNames() map[string]bool {
	m := map[string]bool{}
	for n := range o.Groups {
		m[n] = true
	}
	return m
}

// Open validates d's graph and opens it, leaves first. On error nothing
// stays open.
func (b *Builder) Open(d Disk) (block.Backend, error) {
	if err := Validate([]Disk{d}, b.opts.GroupNames()); err != nil {
		return nil, err
	}
	return b.open(d.Root, d.ReadOnly, "disk "+d.ID, d.Cache)
}

func (b *Builder) open(n *Node, ro bool, where string, cache raw.CacheMode) (block.Backend, error) {
	return b.openAs(n, NodeOptions{ReadOnly: ro, Cache: cache}, where)
}

func (b *Builder) openAs(n *Node, no NodeOptions, where string) (block.Backend, error) {
	ro, cache := no.ReadOnly, no.Cache
	k := kinds[n.Kind]
	ro = ro || n.ReadOnly
	var children []block.Backend
	closeAll := func() {
		for _, c := range children {
			c.Close()
		}
	}
	for _, c := range n.Children {
		cb, err := b.openAs(c, NodeOptions{ReadOnly: ro, Cache: cache, Path: no.Path || k.SharedPaths}, where)
		if err != nil {
			closeAll()
			return nil, err
		}
		children = append(children, cb)
		if !ro && reportsReadOnly(cb) {
			closeAll()
			return nil, fmt.Errorf("%s: %s is writable but its child %s opened read-only: mark it read-only", where, label(n, ""), label(c, ""))
		}
	}
	if k.SameSize {
		for i, c := range children[1:] {
			if c.Size() != children[0].Size() {
				closeAll()
				return nil, fmt.Errorf("%s: %s needs children of one size, but %s is %d bytes and %s is %d bytes",
					where, label(n, ""), label(n.Children[0], ""), children[0].Size(), label(n.Children[i+1], ""), c.Size())
			}
		}
	}
	be, err := k.Open(b, n, NodeOptions{ReadOnly: ro, Cache: cache, Path: no.Path}, children)
	if err != nil {
		closeAll()
		return nil, fmt.Errorf("%s: %s: %w", where, label(n, ""), err)
	}
	if n.Name != "" {
		b.mu.Lock()
		b.nodes[n.Name] = be
		b.mu.Unlock()
	}
	return be, nil
}

// NodeOptions are what a node is opened with besides its own fields.
type NodeOptions struct {
	ReadOnly bool          // the node or an ancestor (or the disk) is read-only
	Cache    raw.CacheMode // the disk's cache mode, for image files
	// Path: the node is one path of a multipath, which does failover
	// itself; an nbd leaf then keeps no replay buffer (replaying old
	// writes after a reconnect could overwrite what another path wrote
	// since).
	Path bool
}

func reportsReadOnly(b block.Backend) bool {
	r, ok := b.(block.ReadOnlyReporter)
	return ok && r.ReadOnly()
}

// Node returns the open back-end of the node with that name (use
// throttle.Of or faults.Of on it for the node's controls), or nil.
func (b *Builder) Node(name string) block.Backend {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nodes[name]
}

// Throttle wraps be in the throttle Cloud Hypervisor's per-disk fields ask
// for: a rate_limiter_config of its own, or a rate_limit_group. With
// neither it returns be unchanged. On error be is left open.
func (b *Builder) Throttle(be block.Backend, c *RateLimiterConfig, group string) (block.Backend, error) {
	switch {
	case c != nil && group != "":
		return nil, errors.New("give either rate_limiter_config or rate_limit_group, not both")
	case c != nil:
		return b.throttle(be, ThrottleOptions{RateLimiterConfig: *c})
	case group != "":
		return b.throttle(be, ThrottleOptions{Group: group})
	}
	return be, nil
}
