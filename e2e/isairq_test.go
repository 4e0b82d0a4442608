package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// isaGuest prints the guest's interrupt table and the kernel's ACPI
// complaints, and what it logged about the FACS. The console is ttyS0 and
// /init's stdout, so the port is open and its IRQ requested while this
// runs.
const isaGuest = `
sed 's/^/VIO-IRQ /' /proc/interrupts
dmesg | grep -E 'ACPI.*(Error|Warning|Exception)|AE_[A-Z]|FACS' | sed 's/^/VIO-ACPI /'
echo VIO-GUEST-DONE
poweroff -f
`

// irqLine is a line of /proc/interrupts: "  4:  123  IO-APIC  4-edge  ttyS0"
// (one count per CPU; the guest has one).
var irqLine = regexp.MustCompile(`^\s*(\d+):\s+\d+\s+(\S+)\s+(\S+)\s+(.+?)\s*$`)

// facsListed is how the kernel lists the FACS among the tables.
var (
	facsListed   = regexp.MustCompile(`ACPI: FACS 0x[0-9A-F]+ 000040$`)
	facsReserved = regexp.MustCompile(`ACPI: Reserving FACS table memory at \[mem 0x[0-9a-f]+-0x[0-9a-f]+\]$`)
)

// TestISAInterrupts: on vio's full ACPI platform the ISA devices keep the
// IRQ numbers PC software assumes (issue 20: with hardware-reduced ACPI
// Linux numbered them dynamically, COM1 on 25, the i8042 on 26). The
// guest's /proc/interrupts must show COM1 on 4, the keyboard controller
// on 1 (and the mouse on 12 if it had an aux port, which vio's has not),
// the RTC on 8, each an IOAPIC input of the same number, edge-triggered,
// and the SCI ("acpi") on 9, level (fasteoi); and the kernel must have
// taken the tables without an ACPI error or warning, the FACS included.
func TestISAInterrupts(t *testing.T) {
	initrd := labtest.Initramfs(t, isaGuest)
	out, err := runVMM(t, 4*time.Minute, vioArgs(t, initrd)...)
	if err != nil || !strings.Contains(out, "VIO-GUEST-DONE") {
		t.Fatalf("vio: %v\n%s", err, out)
	}
	type irq struct{ num, chip, hw string }
	got := map[string]irq{} // by device name
	var table []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimRight(l, "\r")
		rest, ok := strings.CutPrefix(l, "VIO-IRQ ")
		if !ok {
			continue
		}
		table = append(table, rest)
		m := irqLine.FindStringSubmatch(rest)
		if m == nil {
			continue
		}
		for _, name := range strings.Split(m[4], ", ") {
			if prev, dup := got[name]; dup && prev.num != m[1] {
				t.Errorf("%s on IRQs %s and %s", name, prev.num, m[1])
			}
			got[name] = irq{m[1], m[2], m[3]}
		}
	}
	if len(table) == 0 {
		t.Fatalf("no /proc/interrupts from the guest:\n%s", out)
	}
	want := map[string]irq{
		"ttyS0": {"4", "IO-APIC", "4-edge"},
		"i8042": {"1", "IO-APIC", "1-edge"},
		"rtc0":  {"8", "IO-APIC", "8-edge"},
		"acpi":  {"9", "IO-APIC", "9-fasteoi"},
	}
	for name, w := range want {
		if g, ok := got[name]; !ok || g != w {
			t.Errorf("%s: IRQ %+v, want %+v", name, g, w)
		}
	}
	// The i8042 may appear twice (1 and 12) if a mouse port exists: 12
	// must then be the mouse's ISA IRQ too.
	for _, l := range table {
		if m := irqLine.FindStringSubmatch(l); m != nil && strings.Contains(m[4], "i8042") && m[1] != "1" &&
			!(m[1] == "12" && m[2] == "IO-APIC" && m[3] == "12-edge") {
			t.Errorf("i8042 on %q", l)
		}
	}
	var facs bool
	for _, l := range strings.Split(out, "\n") {
		rest, ok := strings.CutPrefix(strings.TrimRight(l, "\r"), "VIO-ACPI ")
		if !ok {
			continue
		}
		// The expected lines: the table listing ("ACPI: FACS
		// 0x00000000000FA080 000040") and its reservation, once per
		// pointer to it ("ACPI: Reserving FACS table memory at [mem
		// 0xfa080-0xfa0bf]").
		if facsListed.MatchString(rest) {
			facs = true
			continue
		}
		if facsReserved.MatchString(rest) {
			continue
		}
		t.Errorf("guest kernel: %s", rest)
	}
	if !facs {
		t.Errorf("the guest kernel did not list the FACS")
	}
	if t.Failed() {
		t.Logf("guest's /proc/interrupts:\n%s", strings.Join(table, "\n"))
	}
}
