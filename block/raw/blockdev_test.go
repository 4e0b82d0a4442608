package raw

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/blocktest"
)

// loopDevice attaches a new sparse file of size bytes to a loop device
// with the given logical sector size, or skips the test where that is not
// possible (not root, no loop driver, a container).
func loopDevice(t *testing.T, size int64, sector int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("loop devices need root")
	}
	path := filepath.Join(t.TempDir(), "backing")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "-f", "--show", "--sector-size", strconv.Itoa(sector), path).CombinedOutput()
	if err != nil {
		t.Skipf("cannot attach a loop device: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
	return dev
}

func TestBlockDeviceConformance(t *testing.T) {
	for _, m := range []CacheMode{Writeback, None} {
		t.Run(m.String(), func(t *testing.T) {
			blocktest.Run(t, func(t *testing.T, size int64) block.Backend {
				f, err := Open(loopDevice(t, size, 512), Options{Cache: m})
				if err != nil {
					t.Fatal(err)
				}
				if !f.IsBlockDevice() {
					t.Fatal("a loop device is not reported as a block device")
				}
				return f
			})
		})
	}
}

// TestBlockDevice4K checks that O_DIRECT on a device with 4 KiB logical
// sectors detects the alignment and bounces unaligned requests.
func TestBlockDevice4K(t *testing.T) {
	dev := loopDevice(t, 1<<20, 4096)
	f, err := Open(dev, Options{Cache: None})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if f.Alignment() != 4096 {
		t.Errorf("Alignment() = %d, want 4096", f.Alignment())
	}
	p := bytes.Repeat([]byte("0123456789"), 100)
	if _, err := f.WriteAt(p, 5000); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 1200)
	if _, err := f.ReadAt(got, 4900); err != nil {
		t.Fatal(err)
	}
	want := append(append(make([]byte, 100), p...), make([]byte, 100)...)
	if !bytes.Equal(got, want) {
		t.Error("unaligned round trip through 4K O_DIRECT differs")
	}
}
