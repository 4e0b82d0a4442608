package api_test

import (
	"strings"
	"testing"
)

// TestDiskMirrorEndpoint: vio.disk-mirror is routed, needs a node, and a
// VM that does not run answers 405; a machine without mirrors (the test
// double) 501. The operations themselves are tested in vmm.
func TestDiskMirrorEndpoint(t *testing.T) {
	v := startVMM(t)
	c := newSpecClient(t, v.sock)
	c.ok("PUT", "vm.create", kataCreateBody(v.kernel), 204)
	body := []byte(`{"node":"m0","op":"status"}`)
	if a := c.do("PUT", "vio.disk-mirror", body); a.status != 405 {
		t.Fatalf("before boot: %d %s", a.status, a.body)
	}
	c.ok("PUT", "vm.boot", nil, 204)
	if a := c.do("PUT", "vio.disk-mirror", []byte(`{"op":"status"}`)); a.status != 400 || !strings.Contains(a.errorSentence(), "node") {
		t.Fatalf("without a node: %d %s", a.status, a.body)
	}
	if a := c.do("PUT", "vio.disk-mirror", body); a.status != 501 {
		t.Fatalf("on the test double: %d %s", a.status, a.body)
	}
}
