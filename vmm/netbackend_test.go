package vmm

import (
	"strings"
	"testing"

	"github.com/viovmm/vio/config"
)

func TestUserNetConfig(t *testing.T) {
	c, err := userNetConfig(&config.UserNet{Net: "10.9.0.0/24", HostFwd: []string{"tcp:127.0.0.1:2222-:22", "udp::5353-:53"}})
	if err != nil {
		t.Fatal(err)
	}
	if c.Prefix.String() != "10.9.0.0/24" || len(c.HostFwds) != 2 || c.HostFwds[0].Host.String() != "127.0.0.1:2222" || !c.HostFwds[1].UDP {
		t.Fatalf("%+v", c)
	}
	for _, bad := range []config.UserNet{{Net: "10.0.2.0"}, {HostFwd: []string{"tcp:2222:22"}}} {
		if _, err := userNetConfig(&bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	// A user-mode network opens without privileges and closes with the VM.
	var v VM
	be, err := v.netBackend(config.Net{User: &config.UserNet{HostFwd: []string{"tcp:127.0.0.1:0-:22"}}})
	if err != nil {
		t.Fatal(err)
	}
	if len(v.closers) != 1 || v.closers[0] != be {
		t.Fatalf("closers %v", v.closers)
	}
	be.Close()
	if _, err := v.netBackend(config.Net{User: &config.UserNet{Net: "10.0.0.0/30"}}); err == nil || !strings.Contains(err.Error(), "prefix length") {
		t.Errorf("tiny network: %v", err)
	}
}
