package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/viovmm/vio/internal/demo"
	"github.com/viovmm/vio/lab/labtest"
)

// TestDemo runs `make demo`'s VM as the demo does and needs every step
// confirmed from the host side.
func TestDemo(t *testing.T) {
	p, err := demo.Prepare(labtest.Assets(t), t.TempDir(), demo.Modules)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := demo.Run(context.Background(), p, vioBin, &out); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	for _, want := range []string{"the same as the guest's", "received", "demo passed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out.String())
		}
	}
}

// TestDemoSabotaged: a demo whose guest cannot mount its disk (the module
// that serves ext2 left out) must fail, naming the disk step, instead of
// printing success.
func TestDemoSabotaged(t *testing.T) {
	mods := slices.DeleteFunc(slices.Clone(demo.Modules), func(m string) bool { return m == "ext4" })
	p, err := demo.Prepare(labtest.Assets(t), t.TempDir(), mods)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	err = demo.Run(context.Background(), p, vioBin, &out)
	if err == nil {
		t.Fatalf("the sabotaged demo passed:\n%s", out.String())
	}
	if !strings.Contains(err.Error(), `"disk"`) || !strings.Contains(err.Error(), "mount") {
		t.Errorf("error %q does not name the disk step's mount", err)
	}
	if strings.Contains(out.String(), "demo passed") {
		t.Errorf("the sabotaged demo claimed success:\n%s", out.String())
	}
}
