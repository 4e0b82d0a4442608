package api_test

import (
	"strings"
	"testing"

	"github.com/viovmm/vio/vmm"
)

// TestResizeBalloon: a VM created with a balloon (Cloud Hypervisor's
// BalloonConfig) takes vm.resize's desired_balloon before and after boot;
// vm.info shows the size; a size above guest RAM is a 400 and changes
// nothing. Every request and answer is checked against the description.
func TestResizeBalloon(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	body := strings.Replace(string(kataCreateBody(v.kernel)), `"iommu": false, "watchdog"`,
		`"balloon": {"size": 0, "deflate_on_oom": true, "free_page_reporting": true}, "iommu": false, "watchdog"`, 1)
	c.ok("PUT", "vm.create", []byte(body), 204)
	c.ok("PUT", "vm.resize", []byte(`{"desired_balloon": 67108864}`), 204)
	cfg := c.state(vmm.StateCreated)
	if b, _ := cfg["balloon"].(map[string]any); b["size"] != 67108864.0 || b["free_page_reporting"] != true {
		t.Fatalf("vm.info balloon %v", cfg["balloon"])
	}
	c.ok("PUT", "vm.boot", nil, 204)
	m := v.builder.Last()
	if m.Config.Balloon == nil || m.Config.Balloon.Size != 64<<20 || !m.Config.Balloon.DeflateOnOOM {
		t.Fatalf("booted with balloon %+v", m.Config.Balloon)
	}
	c.ok("PUT", "vm.resize", []byte(`{"desired_balloon": 134217728}`), 204)
	if m.BalloonSize() != 128<<20 {
		t.Fatalf("the running VM got %d", m.BalloonSize())
	}
	if a := c.do("PUT", "vm.resize", []byte(`{"desired_balloon": 536870912}`)); a.status != 400 || !strings.Contains(a.errorSentence(), "more than the guest's 256M") {
		t.Fatalf("oversized balloon: %d %s", a.status, a.body)
	}
	if m.BalloonSize() != 128<<20 {
		t.Fatalf("a refused resize changed the balloon to %d", m.BalloonSize())
	}
	if b, _ := c.state(vmm.StateRunning)["balloon"].(map[string]any); b["size"] != 134217728.0 {
		t.Errorf("vm.info balloon after resize %v", b)
	}
}
