package config

import (
	"encoding/json"
	"os"
	"strings"
	"testing"
)

func TestParseNetUser(t *testing.T) {
	n, err := ParseNet("user=on,net=10.9.0.0/24,hostfwd=tcp:127.0.0.1:2222-:22+udp::5353-:53,mac=52:54:00:12:34:56,model=e1000")
	if err != nil {
		t.Fatal(err)
	}
	if n.Tap != "" || n.User == nil || n.User.Net != "10.9.0.0/24" || n.Model != NetE1000 ||
		len(n.User.HostFwd) != 2 || n.User.HostFwd[0] != "tcp:127.0.0.1:2222-:22" || n.User.HostFwd[1] != "udp::5353-:53" {
		t.Fatalf("%+v %+v", n, n.User)
	}
	if n, err := ParseNet("user=on"); err != nil || n.User == nil {
		t.Fatalf("user=on: %+v %v", n, err)
	}
	for bad, why := range map[string]string{
		"user=on,tap=t":        "more than one back-end",
		"user=off":             "give tap=NAME",
		"tap=t,hostfwd=::1-:2": "add user=on",
		"user=maybe":           "want on or off",
		"net=10.0.2.0/24":      "add user=on",
	} {
		if _, err := ParseNet(bad); err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("ParseNet(%q): %v, want %q", bad, err, why)
		}
	}
	// The JSON shape: a "user" object beside Cloud Hypervisor's keys.
	var c VM
	if err := json.Unmarshal([]byte(`{"net":[{"user":{"net":"10.0.2.0/24","hostfwd":["tcp::2222-:22"]},"mac":"52:54:00:12:34:56"}]}`), &c); err != nil {
		t.Fatal(err)
	}
	if len(c.Net) != 1 || c.Net[0].User == nil || c.Net[0].User.HostFwd[0] != "tcp::2222-:22" {
		t.Fatalf("%+v", c.Net)
	}
}

func TestValidateNetBackend(t *testing.T) {
	kernel := t.TempDir() + "/k"
	if err := writeFile(kernel); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		n    Net
		want string
	}{
		{Net{}, "no back-end"},
		{Net{Tap: "t", User: &UserNet{}}, "more than one back-end"},
		{Net{User: &UserNet{}}, ""},
	} {
		cfg := Default()
		cfg.Payload.Kernel = kernel
		cfg.Net = []Net{c.n}
		err := cfg.Validate()
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.n, err, c.want)
		}
	}
}

func writeFile(p string) error { return os.WriteFile(p, []byte("x"), 0o644) }
