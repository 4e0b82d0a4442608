package config

import (
	"strings"
	"testing"
)

func TestParseVsock(t *testing.T) {
	v, err := ParseVsock("cid=3,socket=/run/v.sock,id=vs0")
	if err != nil || v.CID != 3 || v.Socket != "/run/v.sock" || v.ID != "vs0" {
		t.Fatalf("%+v, %v", v, err)
	}
	for spec, want := range map[string]string{
		"cid=2,socket=/s":          "give cid=3 or more",
		"cid=-1,socket=/s":         "give cid=3 or more",
		"cid=4294967295,socket=/s": "below 4294967295",
		"cid=x,socket=/s":          "want a number",
		"socket=/s":                "cid= is missing",
		"cid=3":                    "socket= is missing",
		"cid=3,socket=/s,port=5":   `unknown key "port"`,
	} {
		if _, err := ParseVsock(spec); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want %q", spec, err, want)
		}
	}
}

// TestVsockConfig: the JSON form is Cloud Hypervisor's VsockConfig, now
// honoured (no warning) and checked.
func TestVsockConfig(t *testing.T) {
	c, err := Decode([]byte(`{"vsock": {"cid": 3, "socket": "/run/v.sock", "iommu": false, "id": "vsock0"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Vsock == nil || c.Vsock.CID != 3 || c.Vsock.Socket != "/run/v.sock" {
		t.Fatalf("%+v", c.Vsock)
	}
	for _, w := range c.Unimplemented() {
		if strings.Contains(w, "vsock") {
			t.Errorf("warning %q", w)
		}
	}
	if err := c.validateCompat(); err != nil {
		t.Fatal(err)
	}
	c.Vsock.CID = 1
	if err := c.validateCompat(); err == nil || !strings.Contains(err.Error(), "cid=3 or more") {
		t.Errorf("cid 1: %v", err)
	}
	c.Vsock.CID, c.Vsock.Socket = 3, ""
	if err := c.validateCompat(); err == nil || !strings.Contains(err.Error(), "socket=PATH") {
		t.Errorf("no socket: %v", err)
	}
}
