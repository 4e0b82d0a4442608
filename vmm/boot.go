package vmm

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/devices/acpipm"
	"github.com/viovmm/vio/iommu/vtd"
	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/memory"
)

// kernelImage is what the boot needs of a kernel, whether a bzImage or an
// uncompressed ELF vmlinux (which skips the decompressor, as Firecracker
// boots).
type kernelImage struct {
	file        io.Closer // open from New until the payload is loaded
	name        string    // for messages: the file, or where on a disk
	load        func(*memory.Memory) (loader.LoadInfo, error)
	setupHeader []byte // for the zero page
	cmdlineSize uint32
	initrdLimit uint64
	// From a disk image (see diskboot.go): its initramfs and the command
	// line to use instead of the payload's.
	initrd     io.ReaderAt
	initrdSize int64
	initrdName string
	cmdline    *string
}

// elfCmdlineSize is Linux's COMMAND_LINE_SIZE on x86, which an ELF kernel
// has no header field to tell.
const elfCmdlineSize = 2048

// parseKernel checks the kernel image before anything else is set up, so
// that a wrong file gets its own error rather than a KVM one.
func parseKernel(file string) (*kernelImage, error) {
	kf, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	st, err := kf.Stat()
	if err != nil {
		kf.Close()
		return nil, err
	}
	k, err := parseKernelFrom(kf, st.Size())
	if err != nil {
		kf.Close()
		return nil, fmt.Errorf("kernel %s: %w", file, err)
	}
	k.file, k.name = kf, file
	return k, nil
}

// parseKernelFrom parses a bzImage or ELF vmlinux of size bytes read
// from kf.
func parseKernelFrom(kf io.ReaderAt, size int64) (*kernelImage, error) {
	k, err := loader.Parse(kf, size)
	if err == nil {
		return &kernelImage{
			load:        func(m *memory.Memory) (loader.LoadInfo, error) { return k.Load(m, loader.DefaultLoadAddr) },
			setupHeader: k.Header.Raw,
			cmdlineSize: k.Header.CmdlineSize,
			initrdLimit: k.Header.InitrdLimit(),
		}, nil
	}
	if errors.Is(err, loader.ErrNotBzImage) {
		e, elfErr := loader.ParseELF(kf, size)
		if elfErr == nil {
			return &kernelImage{
				load:        e.Load,
				setupHeader: loader.ELFSetupHeader(elfCmdlineSize),
				cmdlineSize: elfCmdlineSize,
				initrdLimit: 0x7fffffff,
			}, nil
		}
		var magic [4]byte
		if _, rerr := kf.ReadAt(magic[:], 0); rerr == nil && string(magic[:]) == "\x7fELF" {
			err = elfErr // an ELF file that is not a kernel: say why
		}
	}
	return nil, err
}

// loadPayload puts kernel, initramfs, command line and the boot tables into
// guest memory and returns the 64-bit entry point.
func (v *VM) loadPayload() (uint64, error) {
	p := v.cfg.Payload
	k := v.kernel
	if k.file != nil {
		defer k.file.Close()
	}
	info, err := k.load(v.mem)
	if err != nil {
		return 0, fmt.Errorf("kernel %s: %w", k.name, err)
	}
	bp := x86.BootParams{SetupHeader: k.setupHeader, CmdlineAddr: x86.CmdlineAddr}
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
		addr, err := loader.LoadInitrd(v.mem, f, st.Size(), info.End, k.initrdLimit)
		if err != nil {
			return 0, fmt.Errorf("initramfs %s: %w", p.Initramfs, err)
		}
		bp.RamdiskAddr, bp.RamdiskSize = addr, uint64(st.Size())
	} else if k.initrd != nil {
		addr, err := loader.LoadInitrd(v.mem, k.initrd, k.initrdSize, info.End, k.initrdLimit)
		if err != nil {
			return 0, fmt.Errorf("initramfs %s: %w", k.initrdName, err)
		}
		bp.RamdiskAddr, bp.RamdiskSize = addr, uint64(k.initrdSize)
	}
	cmdline := p.Cmdline
	if k.cmdline != nil {
		cmdline = *k.cmdline
	}
	cmd := loader.NewCmdline(min(k.cmdlineSize, x86.CmdlineMax-1))
	if err := cmd.Add(cmdline); err != nil {
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
	if err := x86.WriteMPTable(v.mem, x86.MPConfig{NumCPUs: v.cfg.CPUs.BootVCPUs, PCIInterrupts: v.intx}); err != nil {
		return 0, err
	}
	if err := v.writeSMBIOS(); err != nil {
		return 0, err
	}
	ac := acpi.Config{
		NumCPUs: v.cfg.CPUs.BootVCPUs,
		PM: acpi.PMRegisters{
			PM1EventPort:   acpipm.PM1EventPort,
			PM1ControlPort: acpipm.PM1ControlPort,
			GPE0Port:       acpipm.GPE0Port,
			ResetPort:      acpipm.ResetPort,
			ResetValue:     acpipm.ResetValue,
			S5SleepType:    acpipm.SleepTypeS5,
		},
		COM1:        true,
		PvPanicPort: acpipm.PvPanicPort,
		I8042:       true,
		RTC:         true,
	}
	acpiPCI(&ac)
	ac.PCIInterrupts = v.intx
	if v.iommu != nil {
		ac.Extra = append(ac.Extra, vtd.DMARTable(iommuBase))
	}
	if _, err := acpi.Write(v.mem, ac); err != nil {
		return 0, err
	}
	v.log.Info("payload loaded", "kernel", k.name, "entry", fmt.Sprintf("%#x", info.Entry64), "cmdline", cmd.String())
	return info.Entry64, nil
}
