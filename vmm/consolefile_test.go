package vmm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/config"
)

// TestConsoleFileAcrossReboots: the first VM of a process empties its
// console file; the VM a reboot builds continues it.
func TestConsoleFileAcrossReboots(t *testing.T) {
	f := filepath.Join(t.TempDir(), "serial.log")
	if err := os.WriteFile(f, []byte("an earlier run\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := config.Console{Mode: config.ModeFile, File: f}
	for _, line := range []string{"first boot\n", "after the reboot\n"} {
		v := &VM{}
		out, _, err := consoleStreams(v, c, IO{})
		if err != nil {
			t.Fatal(err)
		}
		out.Write([]byte(line))
		for _, c := range v.closers {
			c.Close()
		}
	}
	if b, _ := os.ReadFile(f); string(b) != "first boot\nafter the reboot\n" {
		t.Errorf("console file %q", b)
	}
}
