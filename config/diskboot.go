package config

import "errors"

// BootDisk returns the index of the disk vio boots when the payload names
// no kernel (the first disk that is not a CD-ROM and has an image), or -1.
func (c *VM) BootDisk() int {
	for i, d := range c.Disks {
		if d.Path != "" && d.Iface != DiskCDROM {
			return i
		}
	}
	return -1
}

// validateDiskBoot checks a payload without a kernel: vio then boots the
// kernel a disk image carries (docs/distro.md).
func (c *VM) validateDiskBoot() error {
	if c.Payload.Kernel != "" {
		return nil
	}
	if c.BootDisk() < 0 {
		return errors.New("no kernel given: pass --kernel with a Linux bzImage (e.g. /boot/vmlinuz-*), or a --disk with a distribution's image to boot the kernel it carries")
	}
	if c.Payload.Initramfs != "" {
		return errors.New("--initrd without --kernel: a disk image boots its own initramfs; give --kernel too to boot your own pair")
	}
	return nil
}
