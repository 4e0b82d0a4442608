package config

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/viovmm/vio/block/graph"
)

// RateLimitGroup is Cloud Hypervisor's rate_limit_groups entry: buckets
// shared by every disk that names the group (rate_limit_group, or a
// throttle node's "group" option).
type RateLimitGroup struct {
	ID                string                  `json:"id"`
	RateLimiterConfig graph.RateLimiterConfig `json:"rate_limiter_config"`
}

// RateLimitGroupMap returns the groups by id.
func (c *VM) RateLimitGroupMap() map[string]graph.RateLimiterConfig {
	m := map[string]graph.RateLimiterConfig{}
	for _, g := range c.RateLimitGroups {
		m[g.ID] = g.RateLimiterConfig
	}
	return m
}

// validateDiskGraphs checks the rate limit groups, each disk's
// path-or-graph choice and its throttle fields, and all graphs together
// (node names are unique across disks).
func (c *VM) validateDiskGraphs() error {
	groups := map[string]bool{}
	for i, g := range c.RateLimitGroups {
		if g.ID == "" {
			return fmt.Errorf("rate_limit_groups entry %d has no id", i)
		}
		if groups[g.ID] {
			return fmt.Errorf("rate_limit_groups: id %q is used twice", g.ID)
		}
		groups[g.ID] = true
		if g.RateLimiterConfig.Bandwidth == nil && g.RateLimiterConfig.Ops == nil {
			return fmt.Errorf("rate limit group %q has no limits: give its rate_limiter_config a bandwidth and/or an ops bucket", g.ID)
		}
		if _, err := g.RateLimiterConfig.Limits(); err != nil {
			return fmt.Errorf("rate limit group %q: %w", g.ID, err)
		}
	}
	var graphs []graph.Disk
	for i, d := range c.Disks {
		id := d.ID
		if id == "" {
			id = strconv.Itoa(i)
		}
		if d.RateLimiterConfig != nil {
			if d.RateLimitGroup != "" {
				return fmt.Errorf("disk %s: give either rate_limiter_config or rate_limit_group, not both", id)
			}
			if _, err := d.RateLimiterConfig.Limits(); err != nil {
				return fmt.Errorf("disk %s: rate_limiter_config: %w", id, err)
			}
		}
		if d.RateLimitGroup != "" && !groups[d.RateLimitGroup] {
			return fmt.Errorf("disk %s: rate_limit_group %q is not defined: add it to rate_limit_groups", id, d.RateLimitGroup)
		}
		if d.Graph == nil {
			continue
		}
		if d.Path != "" {
			return fmt.Errorf("disk %s: give either a path or a graph, not both (a graph's leaves name the images)", id)
		}
		if d.ImageType != "" && d.ImageType != ImageUnknown || d.AllowBacking {
			return fmt.Errorf("disk %s: image_type and allow_backing belong in the graph's leaves (node kind raw or qcow2, allow_backing on a qcow2 leaf)", id)
		}
		graphs = append(graphs, graph.Disk{ID: id, Root: d.Graph, ReadOnly: d.Readonly})
	}
	return graph.Validate(graphs, groups)
}

// parseThrottle parses the compact --disk throttle=bw:RATE+ops:RATE
// [+bw_burst:SIZE][+ops_burst:N] form: RATE bytes (with K, M, G suffixes)
// or requests per second, a bucket holding one second's worth, and an
// optional one-time burst on top.
func parseThrottle(v string) (*graph.RateLimiterConfig, error) {
	bad := func(why string) error {
		return fmt.Errorf("--disk: throttle=%q: %s; write it like throttle=bw:10M+ops:500 (bytes and requests per second; bw_burst:SIZE and ops_burst:N add a one-time burst)", v, why)
	}
	var c graph.RateLimiterConfig
	var bwBurst, opsBurst int64
	for _, part := range strings.Split(v, "+") {
		k, val, ok := strings.Cut(part, ":")
		if !ok {
			return nil, bad(fmt.Sprintf("%q is not key:value", part))
		}
		var n int64
		var err error
		if k == "ops" || k == "ops_burst" {
			n, err = strconv.ParseInt(val, 10, 64)
		} else {
			n, err = ParseSize(val)
		}
		if err != nil || n <= 0 {
			return nil, bad(fmt.Sprintf("%q is not a positive number", part))
		}
		switch k {
		case "bw":
			c.Bandwidth = &graph.TokenBucket{Size: n, RefillTime: 1000}
		case "ops":
			c.Ops = &graph.TokenBucket{Size: n, RefillTime: 1000}
		case "bw_burst":
			bwBurst = n
		case "ops_burst":
			opsBurst = n
		default:
			return nil, bad(fmt.Sprintf("unknown key %q (want bw, ops, bw_burst, ops_burst)", k))
		}
	}
	if bwBurst > 0 {
		if c.Bandwidth == nil {
			return nil, bad("bw_burst needs a bw rate")
		}
		c.Bandwidth.OneTimeBurst = bwBurst
	}
	if opsBurst > 0 {
		if c.Ops == nil {
			return nil, bad("ops_burst needs an ops rate")
		}
		c.Ops.OneTimeBurst = opsBurst
	}
	if c.Bandwidth == nil && c.Ops == nil {
		return nil, bad("no limit given")
	}
	return &c, nil
}

// chBucketKey sets one field of Cloud Hypervisor's --disk rate limiter
// keys (bw_size, bw_one_time_burst, bw_refill_time, ops_*) on d.
func chBucketKey(d *Disk, k, v string) error {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return fmt.Errorf("--disk: %s=%q: want a non-negative number", k, v)
	}
	if d.RateLimiterConfig == nil {
		d.RateLimiterConfig = &graph.RateLimiterConfig{}
	}
	b := &d.RateLimiterConfig.Bandwidth
	field := strings.TrimPrefix(k, "bw_")
	if strings.HasPrefix(k, "ops_") {
		b, field = &d.RateLimiterConfig.Ops, strings.TrimPrefix(k, "ops_")
	}
	if *b == nil {
		*b = &graph.TokenBucket{}
	}
	switch field {
	case "size":
		(*b).Size = n
	case "one_time_burst":
		(*b).OneTimeBurst = n
	case "refill_time":
		(*b).RefillTime = n
	default:
		return errors.New("unreachable")
	}
	return nil
}
