package vmm

import (
	"fmt"

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
// The controller runs in legacy (compatibility) mode, as the PIIX's IDE
// function does on a PC: the ISA ports 0x1f0/0x3f6 and 0x170/0x376 and
// ISA IRQs 14 and 15, which the IOAPIC takes edge-triggered. That is
// cheaper for the guest than native mode's level-triggered INTA#: an edge
// interrupt's EOI goes through KVM's paravirtual EOI with no exit, while a
// level one costs the EOI's exit and Linux's read of the TMR (two exits per
// completion, measured with vio-bench emul -trace). Linux gives a
// legacy-mode function its fixed ports itself; ata_piix drives both modes.
func (v *VM) addIDE() error {
	cfg := ide.Config{Mode: ide.ModeLegacy}
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
	for ch, p := range [2]struct{ cmd, ctl uint64 }{{ide.PrimaryCmd, ide.PrimaryCtl}, {ide.SecondaryCmd, ide.SecondaryCtl}} {
		if err := v.pio.Register(p.cmd, ide.CmdBlockSize, c.CommandBlock(ch)); err != nil {
			return fmt.Errorf("ide: channel %d: %w", ch, err)
		}
		if err := v.pio.Register(p.ctl, ide.LegacyCtlSize, c.ControlBlock(ch)); err != nil {
			return fmt.Errorf("ide: channel %d: %w", ch, err)
		}
	}
	c.SetLegacyLines(isaLine{v.kvm, ide.PrimaryIRQ}, isaLine{v.kvm, ide.SecondaryIRQ})
	if err := v.pciRoot.Add(pci.BDF{Device: slot}, c); err != nil {
		return fmt.Errorf("ide: %w", err)
	}
	v.ide = c
	return nil
}
