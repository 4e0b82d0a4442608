package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseBalloon(t *testing.T) {
	b, err := ParseBalloon("size=128M,deflate_on_oom=on,free_page_reporting=on,id=b0")
	if err != nil || b.Size != 128<<20 || !b.DeflateOnOOM || !b.FreePageReporting || b.ID != "b0" {
		t.Fatalf("ParseBalloon: %+v %v", b, err)
	}
	if b, err := ParseBalloon("size=0"); err != nil || b.Size != 0 || b.DeflateOnOOM || b.FreePageReporting {
		t.Errorf("size=0: %+v %v", b, err)
	}
	for _, bad := range []string{"", "deflate_on_oom=on", "size=1G,deflate_on_oom=maybe", "size=x", "size=1G,colour=red", "size=1G,size=2G"} {
		if _, err := ParseBalloon(bad); err == nil {
			t.Errorf("ParseBalloon(%q) accepted", bad)
		}
	}
}

func TestBalloonJSONAndValidate(t *testing.T) {
	c, err := Decode([]byte(`{"payload":{"kernel":"k"},"memory":{"size":536870912},"balloon":{"size":0,"deflate_on_oom":true,"free_page_reporting":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if b := c.Balloon; b == nil || !b.DeflateOnOOM || !b.FreePageReporting {
		t.Fatalf("balloon %+v", c.Balloon)
	}
	if b := c.Clone().Balloon; b == nil || !b.FreePageReporting {
		t.Errorf("Clone lost the balloon: %+v", b)
	}
	dir := t.TempDir()
	kernel := filepath.Join(dir, "k")
	os.WriteFile(kernel, []byte("x"), 0o644)
	for _, x := range []struct {
		b    Balloon
		want string
	}{
		{Balloon{Size: -1}, "negative"},
		{Balloon{Size: 1 << 30}, "more than the guest's 512M"},
		{Balloon{PCISegment: 1}, "segment"},
	} {
		cfg := Default()
		cfg.Payload.Kernel = kernel
		cfg.Balloon = &x.b
		if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), x.want) {
			t.Errorf("%+v: want an error about %q, got %v", x.b, x.want, err)
		}
	}
	cfg := Default()
	cfg.Payload.Kernel = kernel
	cfg.Balloon = &Balloon{Size: 256 << 20}
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
}
