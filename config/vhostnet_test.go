package config

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestParseNetVhost(t *testing.T) {
	for _, spec := range []string{"tap=tap0,vhost=on", "tap=tap0,vhost_net=on,queues=2"} {
		n, err := ParseNet(spec)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		if !n.VhostNet || n.Tap != "tap0" {
			t.Fatalf("%s: parsed %+v", spec, n)
		}
	}
	if n, err := ParseNet("tap=tap0,vhost=off"); err != nil || n.VhostNet {
		t.Fatalf("vhost=off: %+v %v", n, err)
	}
	for spec, want := range map[string]string{
		"user=on,vhost=on":                      "needs a TAP",
		"socket=/s,vhost=on":                    "needs a TAP",
		"socket=/a+/b,bond=balance,vhost=on":    "needs a TAP",
		"tap=t,vhost=on,model=e1000":            "drop model=e1000",
		"tap=t,vhost=on,pcap=/p":                "pass through vio",
		"tap=t,vhost=on,firewall=/f":            "pass through vio",
		"tap=t,vhost=on,ids=/i":                 "pass through vio",
		"tap=t,vhost=maybe":                     "want on or off",
		"vhost_user=on,socket=/s,vhost=on":      "give one of them",
		"tap=t,vhost=on,vhost_user=on,socket=/": "give one of them",
	} {
		if _, err := ParseNet(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseNet(%q): %v, want %q", spec, err, want)
		}
	}
}

func TestValidateVhostNetJSON(t *testing.T) {
	var n Net
	if err := json.Unmarshal([]byte(`{"tap":"tap0","vhost_net":true,"num_queues":4}`), &n); err != nil {
		t.Fatal(err)
	}
	if !n.VhostNet || n.QueuePairs() != 2 {
		t.Fatalf("%+v", n)
	}
	for _, c := range []struct {
		net  Net
		want string
	}{
		{Net{Tap: "t", VhostNet: true}, ""},
		{Net{TapFDs: []int{3}, VhostNet: true}, ""},
		{Net{User: &UserNet{}, VhostNet: true}, "needs a TAP"},
		{Net{Tap: "t", VhostNet: true, IOMMU: true}, "emulated IOMMU"},
		{Net{VhostUser: true, VhostSocket: "/s", VhostNet: true}, "exclude each other"},
	} {
		vm := VM{Memory: Memory{Size: 256 << 20, Shared: true}, Net: []Net{c.net}}
		err := vm.validateNets()
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%+v refused: %v", c.net, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%+v: %v, want %q", c.net, err, c.want)
		}
	}
}
