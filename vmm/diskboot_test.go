package vmm

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/bootdisk/bootdisktest"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/loader/loadertest"
)

// TestKernelFromDisk: with no kernel in the payload, the boot disk's
// grub.cfg entry gives the kernel (parsed by the loader like --kernel's),
// the initramfs and the command line, to which console=ttyS0 and the
// user's --cmdline are added; a disk with nothing to boot is one sentence.
func TestKernelFromDisk(t *testing.T) {
	bootdisktest.Need(t, "mkfs.ext4", "qemu-img")
	root := t.TempDir()
	bootdisktest.WriteTree(t, root, map[string]string{
		"boot/vmlinuz-x":     string(loadertest.BzImage(loadertest.Default())),
		"boot/initrd.img-x":  "INITRD",
		"boot/grub/grub.cfg": "menuentry 'X' {\n linux /boot/vmlinuz-x root=/dev/vda ro\n initrd /boot/initrd.img-x\n}\n",
	})
	dir := t.TempDir()
	raw := filepath.Join(dir, "fs.img")
	bootdisktest.Mkfs(t, raw, 0, 8, root)
	qcow := filepath.Join(dir, "fs.qcow2")
	bootdisktest.Run(t, "qemu-img", "convert", "-O", "qcow2", raw, qcow)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, c := range []struct {
		name, path, format, cmdline, want string
	}{
		{"raw-probed", raw, "", config.DefaultCmdline, "root=/dev/vda ro console=ttyS0"},
		{"qcow2-given", qcow, config.ImageQcow2, "init=/bin/sh", "root=/dev/vda ro console=ttyS0 init=/bin/sh"},
		{"qcow2-probed", qcow, "", "", "root=/dev/vda ro console=ttyS0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := config.Default()
			cfg.Payload.Cmdline = c.cmdline
			cfg.Disks = []config.Disk{{Path: c.path, ImageType: c.format}}
			v := &VM{cfg: cfg, log: log}
			k, err := v.kernelFromDisk()
			if err != nil {
				t.Fatal(err)
			}
			if k.cmdline == nil || *k.cmdline != c.want {
				t.Errorf("cmdline %v, want %q", k.cmdline, c.want)
			}
			if k.initrdSize != 6 || !strings.Contains(k.name, "/boot/vmlinuz-x") {
				t.Errorf("kernel %q, initrd of %d bytes", k.name, k.initrdSize)
			}
		})
	}
	cfg := config.Default()
	empty := filepath.Join(dir, "empty.img")
	bootdisktest.Mkfs(t, empty, 0, 8, t.TempDir())
	cfg.Disks = []config.Disk{{Path: empty}}
	v := &VM{cfg: cfg, log: log}
	if _, err := v.kernelFromDisk(); err == nil || !strings.Contains(err.Error(), "found no kernel to boot on disk") {
		t.Errorf("empty disk: %v", err)
	}
}
