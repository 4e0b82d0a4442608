package firewall_test

import (
	"strings"
	"testing"

	"github.com/viovmm/vio/netdev/firewall"
	"github.com/viovmm/vio/netdev/nettest"
)

// FuzzDecide: any frame, either way, is decided without a panic, and
// counted exactly once (by a rule, a default, or as malformed).
func FuzzDecide(f *testing.F) {
	f.Add(true, ipFrame(f, true, tcp(1, 22, true, false, false)))
	f.Add(false, ipFrame(f, false, tcp(22, 1, true, true, false)))
	f.Add(true, []byte{1, 2, 3})
	rs, err := firewall.Parse(strings.NewReader(rules))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in bool, b []byte) {
		a, _ := nettest.Pair(1)
		fw := firewall.New(a, rs)
		d := firewall.Out
		if in {
			d = firewall.In
		}
		fw.Decide(d, b)
		st := fw.Stats()
		total := st.DefaultIn.Packets + st.DefaultOut.Packets + st.Malformed
		for _, r := range st.Rules {
			total += r.Packets
		}
		if total != 1 {
			t.Fatalf("one frame counted %d times", total)
		}
	})
}

// FuzzParse: a rules file never panics the parser.
func FuzzParse(f *testing.F) {
	f.Add(rules)
	f.Add("allow in proto tcp dport 1-65535 state new,established smac 52:54:00:00:00:01")
	f.Fuzz(func(t *testing.T, s string) {
		rs, err := firewall.Parse(strings.NewReader(s))
		if err == nil && len(rs.Rules) > 4096 {
			t.Fatalf("%d rules", len(rs.Rules))
		}
	})
}
