package vmm

import (
	"fmt"
	"os"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/devices/acpipm"
	"github.com/viovmm/vio/loader"
)

// parseKernel checks the kernel image before anything else is set up, so
// that a wrong file gets its own error rather than a KVM one.
// The file stays open until loadPayload has copied the kernel in.
func parseKernel(file string) (*loader.Kernel, *os.File, error) {
	kf, err := os.Open(file)
	if err != nil {
		return nil, nil, err
	}
	st, err := kf.Stat()
	if err == nil {
		var k *loader.Kernel
		if k, err = loader.Parse(kf, st.Size()); err == nil {
			return k, kf, nil
		}
	}
	kf.Close()
	return nil, nil, fmt.Errorf("kernel %s: %w", file, err)
}

// loadPayload puts kernel, initramfs, command line and the boot tables into
// guest memory and returns the 64-bit entry point.
func (v *VM) loadPayload() (uint64, error) {
	p := v.cfg.Payload
	k := v.kernel
	defer v.kernelFile.Close()
	info, err := k.Load(v.mem, loader.DefaultLoadAddr)
	if err != nil {
		return 0, fmt.Errorf("kernel %s: %w", p.Kernel, err)
	}
	bp := x86.BootParams{SetupHeader: k.Header.Raw, CmdlineAddr: x86.CmdlineAddr}
	if p.Initramfs != "" {
		f, err := os.Open(p.Initramfs)
		if err != nil {
			return 0, err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return 0, err
		}
		addr, err := k.LoadInitrd(v.mem, f, st.Size(), info.End)
		if err != nil {
			return 0, fmt.Errorf("initramfs %s: %w", p.Initramfs, err)
		}
		bp.RamdiskAddr, bp.RamdiskSize = addr, uint64(st.Size())
	}
	cmd := loader.NewCmdline(min(k.Header.CmdlineSize, x86.CmdlineMax-1))
	if err := cmd.Add(p.Cmdline); err != nil {
		return 0, fmt.Errorf("kernel command line: %w", err)
	}
	if err := cmd.Write(v.mem, x86.CmdlineAddr); err != nil {
		return 0, err
	}
	if bp.E820, err = x86.E820Map(ramLayout(v)); err != nil {
		return 0, err
	}
	if err := x86.WriteZeroPage(v.mem, bp); err != nil {
		return 0, err
	}
	// The MP table serves guests booted with acpi=off; ACPI is what
	// lets the guest power off (through devices/acpipm) and describes
	// the CPUs, the IOAPIC, the PCI root and the legacy devices.
	if err := x86.WriteMPTable(v.mem, x86.MPConfig{NumCPUs: v.cfg.CPUs.BootVCPUs}); err != nil {
		return 0, err
	}
	ac := acpi.Config{
		NumCPUs: v.cfg.CPUs.BootVCPUs,
		PM: acpi.PMRegisters{
			SleepControlPort: acpipm.SleepControlPort,
			SleepStatusPort:  acpipm.SleepStatusPort,
			ResetPort:        acpipm.ResetPort,
			ResetValue:       acpipm.ResetValue,
			S5SleepType:      acpipm.SleepTypeS5,
		},
		COM1:        true,
		PvPanicPort: acpipm.PvPanicPort,
		I8042:       true,
		RTC:         true,
	}
	acpiPCI(&ac)
	if _, err := acpi.Write(v.mem, ac); err != nil {
		return 0, err
	}
	v.log.Info("payload loaded", "kernel", p.Kernel, "protocol", k.Header.VersionString(),
		"entry", fmt.Sprintf("%#x", info.Entry64), "cmdline", cmd.String())
	return info.Entry64, nil
}
