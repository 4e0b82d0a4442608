package vmm

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/bootdisk"
	"github.com/viovmm/vio/config"
)

// kernelFromDisk boots a distribution's disk image as shipped: with no
// kernel in the payload, the boot disk's own kernel, initramfs and command
// line (grub.cfg's default entry or the /vmlinuz links; see package
// bootdisk and docs/distro.md).
//
// The image is opened read-only under the same format rules as the disk
// itself (its pinned or given format, else probed, which a read-only open
// may do), and the kernel and initramfs are copied out into memory before
// it is closed again: the disk device opens it writable and locked right
// after, and the copy is bounded (bootdisk's limits, and the initramfs to
// half of guest RAM, which it must fit in anyway).
func (v *VM) kernelFromDisk() (*kernelImage, error) {
	i := v.cfg.BootDisk()
	d := &v.cfg.Disks[i]
	opts := image.OpenOptions{ReadOnly: true, Lock: true, AllowBacking: d.AllowBacking}
	switch d.ImageType {
	case config.ImageRaw:
		opts.Format = image.Raw
	case config.ImageQcow2:
		opts.Format = image.Qcow2
	}
	be, err := image.Open(d.Path, opts)
	if err != nil {
		return nil, fmt.Errorf("no kernel given, and disk %d (%s) cannot be read to find one: %w", i, d.Path, err)
	}
	defer be.Close()
	b, err := bootdisk.Find(be, be.Size(), bootdisk.Options{MaxInitrd: min(bootdisk.DefaultMaxInitrd, v.cfg.Memory.Size/2)})
	if err != nil {
		return nil, fmt.Errorf("no kernel given, and vio found no kernel to boot on disk %s: %w (give --kernel, --initrd and --cmdline to boot it another way)", d.Path, err)
	}
	for _, n := range b.Notes {
		v.log.Warn("boot disk "+d.Path+": "+n, "source", b.Source)
	}
	kb, err := readAll(b.Kernel, b.KernelSize)
	if err != nil {
		return nil, fmt.Errorf("disk %s: reading kernel %s: %w", d.Path, b.KernelPath, err)
	}
	k, err := parseKernelFrom(bytes.NewReader(kb), int64(len(kb)))
	if err != nil {
		return nil, fmt.Errorf("disk %s: kernel %s (from %s): %w", d.Path, b.KernelPath, b.Source, err)
	}
	k.name = d.Path + ": " + b.KernelPath
	if b.Initrd != nil {
		ib, err := readAll(b.Initrd, b.InitrdSize)
		if err != nil {
			return nil, fmt.Errorf("disk %s: reading initramfs %s: %w", d.Path, b.InitrdPath, err)
		}
		k.initrd, k.initrdSize, k.initrdName = bytes.NewReader(ib), int64(len(ib)), d.Path+": "+b.InitrdPath
	}
	cmdline := bootdisk.Cmdline(b.Cmdline, userCmdline(v.cfg.Payload.Cmdline))
	k.cmdline = &cmdline
	v.log.Info("booting the kernel of a disk image", "disk", d.Path, "from", b.Source,
		"kernel", b.KernelPath, "initramfs", b.InitrdPath, "cmdline", cmdline)
	return k, nil
}

// userCmdline is what the user added to a disk's own command line: the
// payload's, unless it is vio's default (which is for kernels booted with
// --kernel and would only repeat console=ttyS0).
func userCmdline(c string) string {
	if strings.TrimSpace(c) == config.DefaultCmdline {
		return ""
	}
	return c
}

func readAll(r io.ReaderAt, n int64) ([]byte, error) {
	b := make([]byte, n)
	if m, err := r.ReadAt(b, 0); int64(m) < n {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	return b, nil
}
