package graph

import (
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/faults"
	"github.com/viovmm/vio/block/image"
)

// Size is a byte count written as a JSON number or as a string with a
// suffix ("1M", "4K").
type Size int64

func (s *Size) UnmarshalJSON(b []byte) error {
	var n int64
	if err := json.Unmarshal(b, &n); err == nil {
		if n < 0 {
			return fmt.Errorf("size %d is negative", n)
		}
		*s = Size(n)
		return nil
	}
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("size %s: want a number of bytes or a string like \"4M\"", b)
	}
	n, err := image.ParseSize(str)
	if err != nil {
		return err
	}
	*s = Size(n)
	return nil
}

// Duration is written as a Go duration string ("10ms", "1.5s").
type Duration time.Duration

func (d *Duration) UnmarshalJSON(b []byte) error {
	var str string
	if err := json.Unmarshal(b, &str); err != nil {
		return fmt.Errorf("duration %s: want a string like \"10ms\"", b)
	}
	v, err := time.ParseDuration(str)
	if err != nil || v < 0 {
		return fmt.Errorf("duration %q: want a non-negative duration like \"10ms\" or \"1.5s\"", str)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(strconv.Quote(time.Duration(d).String())), nil
}

// FaultRule is a faults.Rule in JSON.
type FaultRule struct {
	Name        string   `json:"name,omitempty"`
	Ops         string   `json:"ops,omitempty"` // "read", "write+flush", ...
	Offset      Size     `json:"offset,omitempty"`
	Length      Size     `json:"length,omitempty"`
	Nth         uint64   `json:"nth,omitempty"`
	Times       uint64   `json:"times,omitempty"`
	Probability float64  `json:"probability,omitempty"`
	Error       string   `json:"error,omitempty"` // EIO, ENOSPC, ...
	Delay       Duration `json:"delay,omitempty"`
	DelayMax    Duration `json:"delay_max,omitempty"`
	Torn        Size     `json:"torn,omitempty"`
	FailStop    bool     `json:"fail_stop,omitempty"`
}

// Rule converts r.
func (r FaultRule) Rule() (faults.Rule, error) {
	out := faults.Rule{
		Name: r.Name, Offset: int64(r.Offset), Length: int64(r.Length), Nth: r.Nth, Times: r.Times,
		Probability: r.Probability, Delay: time.Duration(r.Delay), DelayMax: time.Duration(r.DelayMax),
		Torn: int64(r.Torn), FailStop: r.FailStop,
	}
	var err error
	if r.Ops != "" {
		if out.Ops, err = faults.ParseOps(r.Ops); err != nil {
			return out, err
		}
	}
	if r.Error != "" {
		if out.Errno, err = faults.ParseErrno(r.Error); err != nil {
			return out, err
		}
	}
	return out, nil
}

// FaultsOptions are a faults node's options. A faults node with no rule
// passes everything through (rules can come at run time).
type FaultsOptions struct {
	Seed  uint64      `json:"seed,omitempty"`
	Rules []FaultRule `json:"rules,omitempty"`
}

func (o FaultsOptions) rules() ([]faults.Rule, error) {
	var rs []faults.Rule
	for _, fr := range o.Rules {
		r, err := fr.Rule()
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return rs, nil
}

var kindFaults = &Kind{
	Name: "faults", MinChildren: 1, MaxChildren: 1,
	Check: func(n *Node, _ map[string]bool) error {
		var o FaultsOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return err
		}
		rs, err := o.rules()
		if err != nil {
			return err
		}
		// The node's own validation, on a throw-away node.
		return faults.NewNode(nil, 0).SetRules(rs)
	},
	Open: func(b *Builder, n *Node, _ NodeOptions, c []block.Backend) (block.Backend, error) {
		var o FaultsOptions
		if err := decodeOptions(n.Options, &o); err != nil {
			return nil, err
		}
		rs, err := o.rules()
		if err != nil {
			return nil, err
		}
		f := faults.New(c[0], o.Seed)
		if err := faults.Of(f).SetRules(rs); err != nil {
			return nil, err
		}
		return f, nil
	},
}
