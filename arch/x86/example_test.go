package x86_test

import (
	"bytes"
	"fmt"
	"log"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/loader"
	"github.com/viovmm/vio/loader/loadertest"
	"github.com/viovmm/vio/memory"
)

// Example shows the order in which a vmm prepares a Linux boot: memory
// map, kernel, initrd, command line, zero page, MP table, then the vCPU
// state. Host CPUID would come from KVM_GET_SUPPORTED_CPUID.
func Example() {
	const ram = 256 << 20
	layout, err := x86.RAMLayout(ram)
	if err != nil {
		log.Fatal(err)
	}
	mem, err := memory.New(layout)
	if err != nil {
		log.Fatal(err)
	}
	defer mem.Close()

	img := loadertest.BzImage(loadertest.Default()) // os.Open("bzImage") in real life
	kernel, err := loader.Parse(bytes.NewReader(img), int64(len(img)))
	if err != nil {
		log.Fatal(err)
	}
	info, err := kernel.Load(mem, loader.DefaultLoadAddr)
	if err != nil {
		log.Fatal(err)
	}
	initrd := []byte("070701...")
	initrdAddr, err := kernel.LoadInitrd(mem, bytes.NewReader(initrd), int64(len(initrd)), info.End)
	if err != nil {
		log.Fatal(err)
	}
	cmdline := loader.NewCmdline(min(kernel.Header.CmdlineSize, x86.CmdlineMax-1))
	if err := cmdline.Add("console=ttyS0 reboot=k panic=1"); err != nil {
		log.Fatal(err)
	}
	if err := cmdline.Write(mem, x86.CmdlineAddr); err != nil {
		log.Fatal(err)
	}
	e820, err := x86.E820Map(layout)
	if err != nil {
		log.Fatal(err)
	}
	if err := x86.WriteZeroPage(mem, x86.BootParams{
		SetupHeader: kernel.Header.Raw,
		CmdlineAddr: x86.CmdlineAddr,
		RamdiskAddr: initrdAddr,
		RamdiskSize: uint64(len(initrd)),
		E820:        e820,
	}); err != nil {
		log.Fatal(err)
	}
	if err := x86.WriteMPTable(mem, x86.MPConfig{NumCPUs: 2}); err != nil {
		log.Fatal(err)
	}
	sregs, err := x86.SetupLongMode(mem) // the same for every vCPU
	if err != nil {
		log.Fatal(err)
	}
	regs := x86.BootRegs(info.Entry64) // the boot vCPU only; APs wait for INIT/SIPI
	fmt.Printf("entry %#x rsi %#x cr3 %#x initrd %#x\n", regs.Rip, regs.Rsi, sregs.Cr3, initrdAddr)
	// Output: entry 0x100200 rsi 0x7000 cr3 0x9000 initrd 0xffff000
}
