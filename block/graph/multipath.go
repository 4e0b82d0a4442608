package graph

import (
	"fmt"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/multipath"
)

// MultipathOptions are a multipath node's options.
type MultipathOptions struct {
	// Policy is "failover" (default: one active path, the others stand
	// by) or "round-robin" (requests spread over every healthy path).
	Policy string `json:"policy,omitempty"`
	// Timeout is how long a path may leave a request unanswered before
	// it is taken out and the request re-issued elsewhere (default 30s).
	Timeout Duration `json:"timeout,omitempty"`
	// ProbeInterval is how often failed paths are probed (default 5s).
	ProbeInterval Duration `json:"probe_interval,omitempty"`
}

// Bounds that keep a typo from making a path useless or a probe storm.
const (
	minMultipathTimeout = time.Millisecond
	minProbeInterval    = 10 * time.Millisecond
)

// DefaultMultipathTimeout is a multipath node's timeout when its options
// give none: long enough for a busy server, short enough that a stalled
// one does not look like a hung disk to the guest.
const DefaultMultipathTimeout = 30 * time.Second

func (o MultipathOptions) check() (multipath.Options, error) {
	p, err := multipath.ParsePolicy(o.Policy)
	if err != nil {
		return multipath.Options{}, err
	}
	if t := time.Duration(o.Timeout); t != 0 && t < minMultipathTimeout {
		return multipath.Options{}, fmt.Errorf("timeout %v is below 1ms: give a duration like \"30s\"", t)
	}
	if pi := time.Duration(o.ProbeInterval); pi != 0 && pi < minProbeInterval {
		return multipath.Options{}, fmt.Errorf("probe_interval %v is below 10ms: give a duration like \"5s\"", pi)
	}
	t := time.Duration(o.Timeout)
	if t == 0 {
		t = DefaultMultipathTimeout
	}
	return multipath.Options{Policy: p, Timeout: t, ProbeInterval: time.Duration(o.ProbeInterval)}, nil
}

func multipathOptions(n *Node) (multipath.Options, error) {
	var o MultipathOptions
	if err := decodeOptions(n.Options, &o); err != nil {
		return multipath.Options{}, err
	}
	return o.check()
}

var kindMultipath = &Kind{
	Name: "multipath", MinChildren: 1, MaxChildren: multipath.MaxPaths, SameSize: true, SharedPaths: true,
	Check: func(n *Node, _ map[string]bool) error {
		_, err := multipathOptions(n)
		return err
	},
	Open: func(b *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) {
		o, err := multipathOptions(n)
		if err != nil {
			return nil, err
		}
		o.Events = b.nodeEvents(n)
		return multipath.NewBackend(c, o)
	},
}

func init() { Register(kindMultipath) }
