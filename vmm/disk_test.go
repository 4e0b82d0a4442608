package vmm

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/config"
)

// hostileHeader is a qcow2 image (made by qemu-img, as an attacker
// would) whose backing file is the host file at backing, format raw.
func hostileHeader(t *testing.T, backing string) []byte {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("qemu-img not installed")
	}
	q := filepath.Join(t.TempDir(), "h.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", "-b", backing, "-F", "raw", q, "4M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v\n%s", err, out)
	}
	b, err := os.ReadFile(q)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func readDisk(t *testing.T, path string, d *config.Disk) []byte {
	t.Helper()
	be, err := openDisk(d, raw.Writeback, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer be.Close()
	got := make([]byte, be.Size())
	if _, err := be.ReadAt(got, 0); err != nil {
		t.Fatal(err)
	}
	return got
}

// TestDiskFormatPinnedAcrossReboot walks the finding through the function
// the VM builder calls: a writable raw disk given without a format is
// probed once and pinned; the guest's attempt to write a qcow2 header
// naming a host file is refused; and even with the header on the disk
// (written by anyone else), the open after the guest's reboot (from the
// pinned config) reads the guest's own bytes, never the host file's.
func TestDiskFormatPinnedAcrossReboot(t *testing.T) {
	shadow := filepath.Join(t.TempDir(), "shadow")
	os.WriteFile(shadow, bytes.Repeat([]byte("HOST-SECRET!"), 1<<19), 0o600)
	hdr := hostileHeader(t, shadow)
	path := filepath.Join(t.TempDir(), "guest.raw")
	os.WriteFile(path, make([]byte, 4<<20), 0o644)

	cfg := &config.VM{Disks: []config.Disk{{Path: path}}}
	d := &cfg.Disks[0]
	be, err := openDisk(d, raw.Writeback, func(m string) { t.Errorf("unexpected warning %q", m) })
	if err != nil {
		t.Fatal(err)
	}
	if d.ImageType != config.ImageRaw || !d.ImageTypeProbed {
		t.Fatalf("after the first open the config says %q (probed %v), want Raw pinned", d.ImageType, d.ImageTypeProbed)
	}
	// The guest writes the header through its disk.
	if _, err := be.WriteAt(hdr, 0); !errors.Is(err, image.ErrHeadGuarded) {
		t.Errorf("guest writing a qcow2 header at sector 0: %v, want ErrHeadGuarded", err)
	}
	be.Close()
	// Someone else puts it there anyway (an older vio, a tool).
	f, _ := os.OpenFile(path, os.O_WRONLY, 0)
	f.WriteAt(hdr, 0)
	f.Close()
	guest, _ := os.ReadFile(path)

	// Reboot: the VM is rebuilt from the same config.
	for boot := 2; boot <= 3; boot++ {
		be, err = openDisk(d, raw.Writeback, func(m string) { t.Errorf("boot %d: unexpected warning %q", boot, m) })
		if err != nil {
			t.Fatalf("boot %d: %v", boot, err)
		}
		got := make([]byte, be.Size())
		if _, err := be.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(got, []byte("HOST-SECRET")) || !bytes.Equal(got, guest) {
			t.Fatalf("boot %d: the disk does not read as the guest's own bytes", boot)
		}
		if _, err := be.WriteAt([]byte("QFI\xfb"), 0); !errors.Is(err, image.ErrHeadGuarded) {
			t.Errorf("boot %d: the guard is gone after the reboot: %v", boot, err)
		}
		be.Close()
	}

	// A new vio given the same disk without a format: probed as qcow2
	// now, and the host path refused.
	fresh := config.Disk{Path: path}
	var warned string
	if be, err := openDisk(&fresh, raw.Writeback, func(m string) { warned = m }); err == nil {
		be.Close()
		t.Fatal("a fresh open of the forged image followed its backing file")
	} else if !errors.Is(err, image.ErrBackingRefused) {
		t.Errorf("fresh open: %v, want ErrBackingRefused", err)
	}
	if !strings.Contains(warned, "format=qcow2") {
		t.Errorf("no warning to give format=qcow2 for a writable probed qcow2: %q", warned)
	}
	// Configured as raw: the guest's bytes.
	if got := readDisk(t, path, &config.Disk{Path: path, ImageType: config.ImageRaw}); !bytes.Equal(got, guest) {
		t.Error("format=raw does not read the guest's bytes")
	}
	// Read-only, no format: probed, the backing file refused, nothing pinned.
	ro := config.Disk{Path: path, Readonly: true}
	if be, err := openDisk(&ro, raw.Writeback, nil); !errors.Is(err, image.ErrBackingRefused) {
		if be != nil {
			be.Close()
		}
		t.Errorf("read-only probed: %v, want ErrBackingRefused", err)
	}
	if ro.ImageType != "" {
		t.Errorf("a read-only disk's format was pinned: %q", ro.ImageType)
	}
}

// TestDiskQcow2ProbedWarns: a writable qcow2 image given without a format
// opens as qcow2, with a warning, and is pinned.
func TestDiskQcow2ProbedWarns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.qcow2")
	if err := image.Create(path, image.CreateOptions{Size: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	d := config.Disk{Path: path}
	var warned []string
	be, err := openDisk(&d, raw.Writeback, func(m string) { warned = append(warned, m) })
	if err != nil {
		t.Fatal(err)
	}
	be.Close()
	if len(warned) != 1 || !strings.Contains(warned[0], "format=qcow2") || strings.Contains(warned[0], "\n") {
		t.Errorf("warnings %q, want one line asking for format=qcow2", warned)
	}
	if d.ImageType != config.ImageQcow2 || d.ImageTypeProbed {
		t.Errorf("pinned %q (guarded %v), want Qcow2", d.ImageType, d.ImageTypeProbed)
	}
	be, err = openDisk(&d, raw.Writeback, func(m string) { t.Errorf("warned again after pinning: %q", m) })
	if err != nil {
		t.Fatal(err)
	}
	be.Close()
}
