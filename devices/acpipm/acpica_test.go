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
	SleepControlPort: acpipm.SleepControlPort,
	SleepStatusPort:  acpipm.SleepStatusPort,
	ResetPort:        acpipm.ResetPort,
	ResetValue:       acpipm.ResetValue,
	S5SleepType:      acpipm.SleepTypeS5,
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
	rsdp, err := acpi.Write(mem, acpi.Config{NumCPUs: 2, PM: pmConfig, COM1: true, PvPanicPort: acpipm.PvPanicPort})
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
// on the device: it must power off exactly once, on the SLEEP_CONTROL
// write.
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
	d := acpipm.New(acpipm.Config{PowerOff: func() { c.off++ }, Reset: func() { c.reset++ }})
	b := bus.New("pio")
	if err := b.Register(acpipm.PortAddr, acpipm.Size, d); err != nil {
		t.Fatal(err)
	}
	var log []string
	for _, m := range ioLine.FindAllStringSubmatch(out[start:end], -1) {
		val, _ := strconv.ParseUint(m[2], 16, 64)
		width, _ := strconv.Atoi(m[3])
		port, _ := strconv.ParseUint(m[4], 16, 16)
		if width != 8 {
			t.Errorf("ACPICA accessed port %#x with %d bits; the registers are bytes", port, width)
		}
		before := c.off
		if m[1] == "Write" {
			if !b.Write(port, []byte{byte(val)}) {
				t.Errorf("ACPICA wrote %#x to port %#x, which the device does not decode", val, port)
			}
		} else {
			v := []byte{0}
			if !b.Read(port, v) {
				t.Errorf("ACPICA read port %#x, which the device does not decode", port)
			}
			if v[0]&acpipm.WakeStatus != 0 {
				t.Errorf("WAK_STS set after S5: Linux would return from power-off")
			}
		}
		if c.off != before && (m[1] != "Write" || port != acpipm.SleepControlPort) {
			t.Errorf("powered off on %s", m[0])
		}
		log = append(log, m[1]+" "+m[2]+" "+m[4])
	}
	if c.off != 1 || c.reset != 0 {
		t.Fatalf("ACPICA's accesses %q: %d poweroffs, %d resets; want 1 and 0", log, c.off, c.reset)
	}
}
