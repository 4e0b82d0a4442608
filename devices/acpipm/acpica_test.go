package acpipm_test

import (
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/viovmm/vio/arch/x86"
	"github.com/viovmm/vio/arch/x86/acpi"
	"github.com/viovmm/vio/bus"
	"github.com/viovmm/vio/devices/acpipm"
	"github.com/viovmm/vio/memory"
)

// The vmm wires the tables to the device with these values.
var pmConfig = acpi.PMRegisters{
	PM1EventPort:   acpipm.PM1EventPort,
	PM1ControlPort: acpipm.PM1ControlPort,
	GPE0Port:       acpipm.GPE0Port,
	ResetPort:      acpipm.ResetPort,
	ResetValue:     acpipm.ResetValue,
	S5SleepType:    acpipm.SleepTypeS5,
}

// writeTables builds the tables for a 2-CPU guest and stores each one
// (DSDT, FADT, MADT) in dir as a file, for ACPICA's tools.
func writeTables(t *testing.T, dir string) []string {
	t.Helper()
	layout, err := x86.RAMLayout(x86.MinRAM)
	if err != nil {
		t.Fatal(err)
	}
	mem, err := memory.New(layout)
	if err != nil {
		t.Fatal(err)
	}
	rsdp, err := acpi.Write(mem, acpi.Config{NumCPUs: 2, PM: pmConfig, COM1: true, PvPanicPort: acpipm.PvPanicPort,
		PCIHotplug: &acpi.PCIHotplug{Port: 0xae00, GPE: 1}})
	if err != nil {
		t.Fatal(err)
	}
	le := binary.LittleEndian
	read := func(addr uint64) []byte {
		h := make([]byte, 36)
		if _, err := mem.ReadAt(h, int64(addr)); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, le.Uint32(h[4:]))
		if _, err := mem.ReadAt(b, int64(addr)); err != nil {
			t.Fatal(err)
		}
		return b
	}
	r := make([]byte, 36)
	if _, err := mem.ReadAt(r, int64(rsdp)); err != nil {
		t.Fatal(err)
	}
	xsdt := read(le.Uint64(r[24:]))
	var files []string
	save := func(b []byte) {
		f := filepath.Join(dir, strings.ToLower(string(b[:4]))+".dat")
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	for off := 36; off < len(xsdt); off += 8 {
		b := read(le.Uint64(xsdt[off:]))
		save(b)
		if string(b[:4]) == "FACP" {
			save(read(le.Uint64(b[140:])))
		}
	}
	return files
}

// ioLine is one register access ACPICA's debug output reports.
var ioLine = regexp.MustCompile(`Hw(Write|Read)\s*: (?:Wrote|Read):\s+([0-9A-F]+) width\s+(\d+)\s+(?:to|from) ([0-9A-F]+) \(SystemIO\)`)

// TestACPICAPowerOff runs ACPICA's sleep sequence for S5 (acpiexec's
// "sleep 5", which calls AcpiEnterSleepStatePrep and AcpiEnterSleepState
// like Linux's acpi_power_off) on the tables built with this package's
// port numbers, records the port accesses ACPICA makes, and replays them
// on the device: it must power off exactly once, on the write of SLP_EN
// to PM1_CNT, with the SCI low by then (ACPICA clears every status bit and
// disables the GPEs before it sleeps).
func TestACPICAPowerOff(t *testing.T) {
	acpiexec, err := exec.LookPath("acpiexec")
	if err != nil {
		t.Skipf("acpiexec not installed (apt-get install acpica-tools): %v", err)
	}
	dir := t.TempDir()
	files := writeTables(t, dir)
	// Debug level 0x4000000 makes ACPICA log each register access.
	cmd := exec.Command(acpiexec, append([]string{"-x", "0x4000000", "-b", "sleep 5"}, files...)...)
	cmd.Dir = dir
	outb, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("acpiexec: %v\n%s", err, outb)
	}
	out := string(outb)
	start := strings.Index(out, "Going to sleep (S5)")
	end := strings.Index(out, "Wake: Prepare to return from sleep")
	if start < 0 || end < start {
		t.Fatalf("no S5 sleep sequence in acpiexec output:\n%s", out)
	}
	var c counts
	sci := &line{}
	d := acpipm.New(acpipm.Config{PowerOff: func() { c.off++ }, Reset: func() { c.reset++ }, SCI: sci})
	b := bus.New("pio")
	if err := b.Register(acpipm.PortAddr, acpipm.Size, d); err != nil {
		t.Fatal(err)
	}
	// A guest that has the power button and hot plug enabled and an
	// event of each pending: ACPICA's way to sleep clears every status
	// and disables the GPEs, so the SCI must be low by the end.
	b.Write(acpipm.PM1EventPort+2, []byte{0, acpipm.PowerButton >> 8})
	b.Write(acpipm.GPE0Port+1, []byte{1 << 1})
	d.PressPowerButton()
	d.RaiseGPE(1)
	if !sci.high() {
		t.Fatal("SCI low with two enabled events pending")
	}
	// ACPICA accesses the PM1 registers 16 bits at a time and GPE
	// registers a byte at a time, as the FADT describes them.
	widths := map[uint64]int{acpipm.PM1EventPort: 16, acpipm.PM1EventPort + 2: 16, acpipm.PM1ControlPort: 16,
		acpipm.GPE0Port: 8, acpipm.GPE0Port + 1: 8, acpipm.ResetPort: 8}
	var log []string
	for _, m := range ioLine.FindAllStringSubmatch(out[start:end], -1) {
		val, _ := strconv.ParseUint(m[2], 16, 64)
		width, _ := strconv.Atoi(m[3])
		port, _ := strconv.ParseUint(m[4], 16, 16)
		if w, ok := widths[port]; !ok || w != width {
			t.Errorf("ACPICA accessed port %#x with %d bits; want a register's start with its width (%v)", port, width, widths)
			continue
		}
		data := make([]byte, width/8)
		for i := range data {
			data[i] = byte(val >> (8 * i))
		}
		before := c.off
		if m[1] == "Write" {
			if !b.Write(port, data) {
				t.Errorf("ACPICA wrote %#x to port %#x, which the device does not decode", val, port)
			}
		} else {
			if !b.Read(port, data) {
				t.Errorf("ACPICA read port %#x, which the device does not decode", port)
			}
			if port == acpipm.PM1EventPort && data[1]&(acpipm.WakeStatus>>8) != 0 {
				t.Errorf("WAK_STS set after S5: Linux would return from power-off")
			}
		}
		if c.off != before && (m[1] != "Write" || port != acpipm.PM1ControlPort) {
			t.Errorf("powered off on %s", m[0])
		}
		log = append(log, m[1]+" "+m[2]+" "+m[4])
		if c.off != 0 {
			// The VMM stops the guest here. acpiexec's simulated
			// machine goes on to "wake up", which a powered-off
			// guest never does.
			break
		}
	}
	if sci.high() {
		t.Errorf("ACPICA's accesses %q left the SCI high", log)
	}

	if c.off != 1 || c.reset != 0 {
		t.Fatalf("ACPICA's accesses %q: %d poweroffs, %d resets; want 1 and 0", log, c.off, c.reset)
	}
}
