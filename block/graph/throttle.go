package graph

import (
	"errors"
	"fmt"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/throttle"
)

// TokenBucket is a bucket as Cloud Hypervisor's and Firecracker's JSON
// write it: Size tokens, refilled in RefillTime milliseconds, plus a
// one-time burst (see throttle.Bucket).
type TokenBucket struct {
	Size         int64 `json:"size"`
	OneTimeBurst int64 `json:"one_time_burst,omitempty"`
	RefillTime   int64 `json:"refill_time"`
}

// RateLimiterConfig is Cloud Hypervisor's rate_limiter_config: a bytes
// bucket and an ops bucket, either optional.
type RateLimiterConfig struct {
	Bandwidth *TokenBucket `json:"bandwidth,omitempty"`
	Ops       *TokenBucket `json:"ops,omitempty"`
}

// Limits converts c, checking it.
func (c RateLimiterConfig) Limits() (throttle.Limits, error) {
	conv := func(what string, t *TokenBucket) (throttle.Bucket, error) {
		if t == nil {
			return throttle.Bucket{}, nil
		}
		if t.RefillTime < 0 || t.RefillTime > int64(time.Duration(1<<62)/time.Millisecond) {
			return throttle.Bucket{}, fmt.Errorf("%s bucket: refill_time %d ms is out of range", what, t.RefillTime)
		}
		if t.Size == 0 {
			return throttle.Bucket{}, fmt.Errorf("%s bucket: size is missing or 0: give the bucket's size (%s), or leave the bucket out", what, map[string]string{"bandwidth": "bytes", "ops": "requests"}[what])
		}
		return throttle.Bucket{Size: t.Size, OneTimeBurst: t.OneTimeBurst, RefillTime: time.Duration(t.RefillTime) * time.Millisecond}, nil
	}
	bw, err := conv("bandwidth", c.Bandwidth)
	if err != nil {
		return throttle.Limits{}, err
	}
	ops, err := conv("ops", c.Ops)
	if err != nil {
		return throttle.Limits{}, err
	}
	l := throttle.Limits{Bandwidth: bw, Ops: ops}
	return l, l.Validate()
}

// ThrottleOptions are a throttle node's options: its own buckets, or the
// name of a group (rate_limit_groups in the VM config) whose buckets it
// shares with the other disks naming it.
type ThrottleOptions struct {
	RateLimiterConfig
	Group string `json:"group,omitempty"`
}

func (o *ThrottleOptions) check(groups map[string]bool) error {
	own := o.Bandwidth != nil || o.Ops != nil
	switch {
	case o.Group != "" && own:
		return errors.New("give either a group or buckets (bandwidth, ops), not both")
	case o.Group != "":
		if !groups[o.Group] {
			return fmt.Errorf("group %q is not defined: add it to rate_limit_groups", o.Group)
		}
		return nil
	case !own:
		return errors.New("no limits: give options with a bandwidth and/or an ops bucket, or a group")
	}
	_, err := o.Limits()
	return err
}

var kindThrottle = &Kind{
	Name: "throttle", MinChildren: 1, MaxChildren: 1,
	Check: func(n *Node, groups map[string]bool) error {
		if noOptions(n.Options) {
			return errors.New("no options: give a bandwidth and/or an ops bucket, or a group")
		}
		var o ThrottleOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return err
		}
		return o.check(groups)
	},
	Open: func(b *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) {
		var o ThrottleOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return nil, err
		}
		return b.throttle(c[0], o)
	},
}

// throttle wraps child in a throttle with o's limits or group.
func (b *Builder) throttle(child block.Backend, o ThrottleOptions) (block.Backend, error) {
	if o.Group != "" {
		g, err := b.Group(o.Group)
		if err != nil {
			return nil, err
		}
		return throttle.NewInGroup(child, g), nil
	}
	l, err := o.Limits()
	if err != nil {
		return nil, err
	}
	return throttle.New(child, l, b.opts.Clock)
}

// Group returns the VM's throttle group of that name, made on first use
// from the limits the Builder was given.
func (b *Builder) Group(name string) (*throttle.Group, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if g, ok := b.groups[name]; ok {
		return g, nil
	}
	cfg, ok := b.opts.Groups[name]
	if !ok {
		return nil, fmt.Errorf("throttle group %q is not defined: add it to rate_limit_groups", name)
	}
	l, err := cfg.Limits()
	if err != nil {
		return nil, fmt.Errorf("rate limit group %q: %w", name, err)
	}
	g, err := throttle.NewGroup(name, l, b.opts.Clock)
	if err != nil {
		return nil, err
	}
	b.groups[name] = g
	return g, nil
}
