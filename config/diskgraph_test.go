package config

import (
	"strings"
	"testing"
)

func TestParseDiskThrottle(t *testing.T) {
	d, err := ParseDisk("path=a.img,throttle=bw:10M+ops:500+bw_burst:1G")
	if err != nil {
		t.Fatal(err)
	}
	c := d.RateLimiterConfig
	if c == nil || c.Bandwidth == nil || c.Ops == nil {
		t.Fatalf("%+v", c)
	}
	if b := *c.Bandwidth; b.Size != 10<<20 || b.RefillTime != 1000 || b.OneTimeBurst != 1<<30 {
		t.Errorf("bandwidth %+v", b)
	}
	if o := *c.Ops; o.Size != 500 || o.RefillTime != 1000 || o.OneTimeBurst != 0 {
		t.Errorf("ops %+v", o)
	}
	// Cloud Hypervisor's keys.
	d, err = ParseDisk("path=a.img,bw_size=1000,bw_refill_time=100,ops_size=5,ops_one_time_burst=7,ops_refill_time=10")
	if err != nil {
		t.Fatal(err)
	}
	if b, o := *d.RateLimiterConfig.Bandwidth, *d.RateLimiterConfig.Ops; b.Size != 1000 || b.RefillTime != 100 || o.Size != 5 || o.OneTimeBurst != 7 || o.RefillTime != 10 {
		t.Errorf("%+v %+v", b, o)
	}
	if d, err = ParseDisk("path=a.img,rate_limit_group=g"); err != nil || d.RateLimitGroup != "g" {
		t.Fatalf("%+v %v", d, err)
	}
	for spec, want := range map[string]string{
		"path=a,throttle=bw":                `"bw" is not key:value`,
		"path=a,throttle=bw:fast":           `"bw:fast" is not a positive number`,
		"path=a,throttle=iops:5":            `unknown key "iops"`,
		"path=a,throttle=ops:5+bw_burst:1M": "bw_burst needs a bw rate",
		"path=a,bw_size=-1":                 "bw_size",
	} {
		if _, err := ParseDisk(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseDisk(%q): %v, want an error about %q", spec, err, want)
		}
	}
}

func TestDiskGraphConfig(t *testing.T) {
	c, err := Decode([]byte(`{
		"rate_limit_groups": [{"id": "g1", "rate_limiter_config": {"bandwidth": {"size": 1048576, "refill_time": 1000}}}],
		"disks": [
			{"id": "d0", "graph": {"node": "throttle", "name": "t0", "options": {"group": "g1"},
				"children": [{"node": "faults", "name": "f0", "options": {"rules": [{"offset": "1M", "length": "1M", "ops": "read"}]},
					"children": [{"node": "qcow2", "path": "a.qcow2"}]}]}},
			{"path": "b.img", "rate_limit_group": "g1"},
			{"path": "c.img", "rate_limiter_config": {"ops": {"size": 100, "refill_time": 1000}}}
		]}`))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.validateDiskGraphs(); err != nil {
		t.Fatal(err)
	}
	if g := c.RateLimitGroupMap()["g1"]; g.Bandwidth == nil || g.Bandwidth.Size != 1<<20 {
		t.Fatalf("group %+v", g)
	}
	// The graph survives Clone (the VM rebuilt on reboot uses a clone).
	if cl := c.Clone(); cl.Disks[0].Graph == nil || cl.Disks[0].Graph.Children[0].Name != "f0" {
		t.Fatal("Clone lost the graph")
	}
	for _, c := range []struct{ json, want string }{
		{`{"disks":[{"path":"a","graph":{"node":"raw","path":"b"}}]}`, "either a path or a graph"},
		{`{"disks":[{"image_type":"Raw","graph":{"node":"raw","path":"b"}}]}`, "belong in the graph's leaves"},
		{`{"disks":[{"path":"a","rate_limit_group":"nope"}]}`, `rate_limit_group "nope" is not defined`},
		{`{"disks":[{"path":"a","rate_limit_group":"g","rate_limiter_config":{"ops":{"size":1,"refill_time":1}}}],"rate_limit_groups":[{"id":"g","rate_limiter_config":{"ops":{"size":1,"refill_time":1}}}]}`, "not both"},
		{`{"disks":[{"path":"a","rate_limiter_config":{"ops":{"size":1}}}]}`, "refill_time above zero"},
		{`{"rate_limit_groups":[{"id":"g","rate_limiter_config":{}}]}`, `group "g" has no limits`},
		{`{"rate_limit_groups":[{"id":"g","rate_limiter_config":{"ops":{"size":1,"refill_time":1}}},{"id":"g","rate_limiter_config":{"ops":{"size":1,"refill_time":1}}}]}`, "used twice"},
		{`{"disks":[{"graph":{"node":"raw","name":"x","path":"a"}},{"graph":{"node":"raw","name":"x","path":"b"}}]}`, `the node name "x" is used twice`},
		{`{"disks":[{"graph":{"node":"throttle","children":[{"node":"raw","path":"a"}]}}]}`, "no options"},
	} {
		cfg, err := Decode([]byte(c.json))
		if err != nil {
			t.Fatalf("%s: %v", c.json, err)
		}
		if err := cfg.validateDiskGraphs(); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error about %q", c.json, err, c.want)
		}
	}
}
