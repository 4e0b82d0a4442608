package acpi_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/viovmm/vio/arch/x86/acpi"
)

// These tests hand the tables to ACPICA's own tools (Debian package
// acpica-tools): iasl disassembles each table and compiles the result
// back, and acpiexec loads the whole set into the ACPICA core that Linux
// also uses and evaluates objects in the namespace.

func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s not installed (apt-get install acpica-tools): %v", name, err)
	}
	return p
}

// dumpTables writes every table of cfg to dir as <sig>.dat and returns
// the file names.
func dumpTables(t *testing.T, dir string, cfg acpi.Config) map[string]string {
	t.Helper()
	mem := newMem(t)
	rsdp, err := acpi.Write(mem, cfg)
	if err != nil {
		t.Fatal(err)
	}
	p, err := parse(mem, rsdp)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	// The FACS too: it has no XSDT entry, only the FADT points at it.
	facs, err := facsOf(p)
	if err != nil {
		t.Fatal(err)
	}
	all := append([]table{p.dsdt, facs}, func() (ts []table) {
		for _, s := range p.order {
			ts = append(ts, p.byName[s])
		}
		return
	}()...)
	for _, tb := range all {
		f := filepath.Join(dir, strings.ToLower(tb.sig())+".dat")
		if err := os.WriteFile(f, tb.b, 0o644); err != nil {
			t.Fatal(err)
		}
		files[tb.sig()] = f
	}
	return files
}

// facsOf reads the FACS the FADT names.
func facsOf(p *parsed) (table, error) {
	addr := uint64(le.Uint32(p.byName["FACP"].b[36:]))
	b := make([]byte, 64)
	if _, err := p.mem.ReadAt(b, int64(addr)); err != nil {
		return table{}, err
	}
	return table{addr: addr, b: b}, nil
}

func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// iaslProblems matches iasl's diagnostics.
var iaslProblems = regexp.MustCompile(`(?m)^.*\b(Error|Warning|Remark)\b\s+\d+.*$|Incorrect checksum|Invalid`)

// TestIASL disassembles every table with iasl -d, checks the disassembler
// reports nothing wrong, then recompiles the disassembly and requires the
// same bytes back (apart from the compiler ID fields and checksum, which
// iasl rewrites).
func TestIASL(t *testing.T) {
	iasl := needTool(t, "iasl")
	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			files := dumpTables(t, dir, cfg)
			for sig, f := range files {
				out := run(t, dir, iasl, "-d", f)
				dsl := strings.TrimSuffix(f, ".dat") + ".dsl"
				text, err := os.ReadFile(dsl)
				if err != nil {
					t.Fatalf("%s: no disassembly: %v\n%s", sig, err, out)
				}
				if m := iaslProblems.FindAllString(out+string(text), -1); len(m) > 0 {
					t.Errorf("%s: iasl -d reports %q", sig, m)
				}
				// Recompile into another directory.
				rdir := filepath.Join(dir, "re-"+sig)
				if err := os.Mkdir(rdir, 0o755); err != nil {
					t.Fatal(err)
				}
				// -on: keep name paths as written; iasl would
				// otherwise shorten \_SB_.PHPR.PCEJ to ^^^.PHPR.PCEJ.
				out = run(t, dir, iasl, "-on", "-p", filepath.Join(rdir, "out"), dsl)
				if m := iaslProblems.FindAllString(out, -1); len(m) > 0 {
					t.Errorf("%s: recompiling the disassembly: %q", sig, m)
				}
				got, err := os.ReadFile(filepath.Join(rdir, "out.aml"))
				if err != nil {
					got, err = os.ReadFile(filepath.Join(rdir, "out.dat"))
				}
				if err != nil {
					ents, _ := os.ReadDir(rdir)
					t.Fatalf("%s: no recompiled table (%v): %v\n%s", sig, ents, err, out)
				}
				orig, _ := os.ReadFile(f)
				if !sameTable(orig, got) {
					t.Errorf("%s: recompiled disassembly differs:\nours % x\niasl % x", sig, orig, got)
				}
				if sig == "DSDT" && testing.Verbose() {
					t.Logf("%s", text)
				}
			}
		})
	}
}

// sameTable compares two tables, ignoring the checksum and the creator
// ID and revision, which iasl sets to its own.
func sameTable(a, b []byte) bool {
	if len(a) != len(b) || len(a) < 36 {
		return false
	}
	mask := func(x []byte) []byte {
		y := bytes.Clone(x)
		y[9] = 0
		clear(y[28:36])
		return y
	}
	return bytes.Equal(mask(a), mask(b))
}

// acpiProblems matches the complaints of the ACPICA core.
var acpiProblems = regexp.MustCompile(`(?m)^.*(ACPI (BIOS )?(Error|Warning|Exception)|AE_[A-Z_]+).*$`)

// On a full (not hardware-reduced) FADT acpiexec runs its own hardware
// self-test (aetests.c), written for its built-in test tables: it sets
// ARB_DIS in PM2_CNT, installs handlers for GPEs 9, 0x19 and 101 and
// reads the PM timer. vio has no PM2 block, eight GPEs and no PM timer,
// so exactly these calls fail; anything else it says is a finding.
var (
	aetestsProblem  = regexp.MustCompile(`Unexpected AE_[A-Z_]+ from (Acpi\w+) \(aetests-\d+\)`)
	aetestsExpected = "AcpiWriteBitRegister AcpiReadBitRegister AcpiSetupGpeForWake AcpiInstallGpeHandler AcpiEnableGpe " +
		"AcpiInstallGpeHandler AcpiEnableGpe AcpiDisableGpe AcpiGetTimer AcpiGetTimerDuration"
)

// TestACPIExec loads the tables into acpiexec, the ACPICA core as a
// user program: it parses the FADT as Linux does, loads the DSDT into a
// namespace, checks predefined names (_HID, _CRS, _S5 ...) for their
// types as it evaluates them, and complains about anything wrong.
func TestACPIExec(t *testing.T) {
	acpiexec := needTool(t, "acpiexec")
	for name, cfg := range configs {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			files := dumpTables(t, dir, cfg)
			var args []string
			for sig, f := range files {
				if sig != "XSDT" {
					args = append(args, filepath.Base(f))
				}
			}
			eval := []string{`evaluate \_S5`, `evaluate \_SB.PCI0._HID`, `evaluate \_SB.PCI0._CRS`, `evaluate \_SB.PCI0._UID`, `evaluate \_SB.PCI0._BBN`}
			if cfg.ECAM != nil {
				eval = append(eval, `evaluate \_SB.PCI0._CID`, `evaluate \_SB.ECAM._CRS`)
			}
			if cfg.COM1 {
				eval = append(eval, `evaluate \_SB.COM1._HID`, `evaluate \_SB.COM1._CRS`)
			}
			if cfg.PvPanicPort != 0 {
				eval = append(eval, `evaluate \_SB.PEVT._HID`, `evaluate \_SB.PEVT._CRS`)
			}
			if cfg.I8042 {
				eval = append(eval, `evaluate \_SB.KBD._HID`, `evaluate \_SB.KBD._CRS`)
			}
			if cfg.RTC {
				eval = append(eval, `evaluate \_SB.RTC._HID`, `evaluate \_SB.RTC._CRS`)
			}
			if h := cfg.PCIHotplug; h != nil {
				// Run the hot-plug path as the OS would: the GPE's
				// method (PCNT reads the registers, notifies the
				// slots), and a slot's eject, which writes B0EJ.
				eval = append(eval, `evaluate \_SB.PHPR._CRS`,
					fmt.Sprintf(`evaluate \_GPE._E%02X`, h.GPE), `evaluate \_SB.PCI0.S03._EJ0 1`)
			}
			out := run(t, dir, acpiexec, append([]string{"-b", strings.Join(eval, ";")}, args...)...)
			var selfTest []string
			for _, m := range acpiProblems.FindAllString(out, -1) {
				if s := aetestsProblem.FindStringSubmatch(m); s != nil {
					selfTest = append(selfTest, s[1])
				} else {
					t.Errorf("acpiexec complains: %q", m)
				}
			}
			if got := strings.Join(selfTest, " "); got != aetestsExpected {
				t.Errorf("acpiexec's self-test complains about %q, want only %q (what it expects of hardware vio has not)", got, aetestsExpected)
			}
			if !strings.Contains(out, "1 ACPI AML tables successfully acquired and loaded") {
				t.Errorf("DSDT not loaded:\n%s", out)
			}
			// A method that returns nothing (_EVT, _EJ0) ends with
			// "No object was returned from evaluation of".
			if n := strings.Count(out, "Evaluation of ") + strings.Count(out, "returned from evaluation of "); n != len(eval) {
				t.Errorf("%d of %d evaluations returned:\n%s", n, len(eval), out)
			}
			s5 := regexp.MustCompile(`(?s)Evaluating \\_S5.*?Contains 2 Elements:\s*\[Integer\] = ([0-9A-F]+)\s*\[Integer\] = 0+\n`).FindStringSubmatch(out)
			if s5 == nil || strings.TrimLeft(s5[1], "0") != strings.TrimLeft(fmt.Sprintf("%X", cfg.PM.S5SleepType), "0") {
				t.Errorf(`\_S5 evaluates to %q, want {%d, 0}`, s5, cfg.PM.S5SleepType)
			}
		})
	}
}
