package vmm

import (
	"fmt"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/block/raw"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/ide"
	"github.com/viovmm/vio/pci"
)

// isIDE reports whether a disk is an emulated IDE drive rather than a
// virtio-blk one.
func isIDE(d *config.Disk) bool { return d.Iface == config.DiskIDE || d.Iface == config.DiskCDROM }

// idePositions is the order drives fill the controller: a master on each
// channel first (hda, hdc), then the slaves, so two drives never share a
// cable unless there are more than two.
var idePositions = [config.MaxIDE]int{0, 2, 1, 3}

// addIDE puts one PIIX4 IDE function with every iface=ide/cdrom disk on the
// next free slot, when there is any.
//
// The controller runs in native mode, its INTA# routed like the e1000's
// (IOAPIC input 16 + slot mod 8, described by the DSDT's _PRT): a
// native-mode function gets its IRQ from the PCI core, with nothing to
// declare. (Legacy mode, which needs ISA IRQs 14 and 15, could not work
// while vio's ACPI platform was hardware-reduced, where Linux gives ISA
// IRQs no fixed numbers; it now could, but nothing needs it.)
func (v *VM) addIDE() error {
	cfg := ide.Config{Mode: ide.ModeNative}
	n := 0
	for i := range v.cfg.Disks {
		d := &v.cfg.Disks[i]
		if !isIDE(d) {
			continue
		}
		if n >= len(idePositions) {
			return fmt.Errorf("disk %d (%s): at most %d IDE drives", i, d.Path, config.MaxIDE)
		}
		drive := ide.Drive{Kind: ide.Disk, ReadOnly: d.Readonly, Serial: d.Serial}
		if d.Iface == config.DiskCDROM {
			drive.Kind = ide.CDROM
			d.Readonly = true
		}
		if d.Path != "" {
			mode := d.Cache
			if d.Direct && mode == "" {
				mode = "none"
			}
			cache, err := raw.ParseCacheMode(mode)
			if mode == "" {
				cache, err = raw.ParseCacheMode("writeback")
			}
			if err != nil {
				return fmt.Errorf("disk %d (%s): %w", i, d.Path, err)
			}
			be, err := openDisk(d, cache, func(msg string) { v.log.Warn(msg) })
			if err != nil {
				return fmt.Errorf("disk %d (%s): %w", i, d.Path, err)
			}
			v.closers = append(v.closers, be)
			drive.Backend = be
		}
		cfg.Drives[idePositions[n]] = drive
		n++
	}
	if n == 0 {
		return nil
	}
	slot, err := v.nextSlot("ide")
	if err != nil {
		return err
	}
	c, err := ide.New(v.dmaFor(slot), cfg)
	if err != nil {
		v.freeSlot(slot)
		return err
	}
	// Closers run in reverse: the controller stops before its images close.
	v.closers = append(v.closers, c)
	gsi := intxGSI(slot, 0)
	c.SetINTxLine(isaLine{v.kvm, uint32(gsi)})
	c.SetBytes(pci.RegInterruptLine, []byte{gsi})
	if err := v.pciRoot.Add(pci.BDF{Device: slot}, c); err != nil {
		return fmt.Errorf("ide: %w", err)
	}
	v.intx = append(v.intx, x86.PCIInterrupt{Device: slot, Pin: 0, IOAPICPin: gsi})
	v.ide = c
	return nil
}
