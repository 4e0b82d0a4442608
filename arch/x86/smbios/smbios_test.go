package smbios

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/arch/x86"
)

var sample = Info{
	Manufacturer: "Example Corp", Product: "Test Box", Version: "1.2", Serial: "ds=nocloud;h=vm1",
	SKU: "sku-7", Family: "boxes", AssetTag: "tag-9",
	UUID:       [16]byte{0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef},
	OEMStrings: []string{"io.systemd.credential:x=1", "second"},
	NumCPUs:    2, MemBytes: 5 << 30,
}

// dump lays the tables out as dmidecode --dump-bin writes them: the
// entry point at 0, the structure table at 0x20.
func dump(t *testing.T, info Info) string {
	t.Helper()
	const tableOff = 0x20
	b, err := Table(info, 0)
	if err != nil {
		t.Fatal(err)
	}
	ep := append([]byte{}, b[:entryPointSize]...)
	binary.LittleEndian.PutUint64(ep[16:], tableOff)
	ep[5] = 0
	ep[5] = checksum(ep)
	img := append(append(ep, make([]byte, tableOff-entryPointSize)...), b[entryPointSize:]...)
	f := filepath.Join(t.TempDir(), "dmi.bin")
	if err := os.WriteFile(f, img, 0o644); err != nil {
		t.Fatal(err)
	}
	return f
}

// TestDmidecode reads the tables with dmidecode, the tool users run, as the
// oracle.
func TestDmidecode(t *testing.T) {
	if _, err := exec.LookPath("dmidecode"); err != nil {
		t.Fatal("dmidecode is not installed: run scripts/setup-host")
	}
	f := dump(t, sample)
	for _, c := range []struct{ keyword, want string }{
		{"system-manufacturer", "Example Corp"},
		{"system-product-name", "Test Box"},
		{"system-version", "1.2"},
		{"system-serial-number", "ds=nocloud;h=vm1"},
		{"system-uuid", "01234567-89ab-cdef-0123-456789abcdef"},
		{"system-sku-number", "sku-7"},
		{"system-family", "boxes"},
		{"baseboard-manufacturer", "Example Corp"},
		{"chassis-asset-tag", "tag-9"},
		{"bios-vendor", DefaultBIOSVendor},
		{"bios-release-date", DefaultBIOSDate},
	} {
		out, err := exec.Command("dmidecode", "--from-dump", f, "-s", c.keyword).CombinedOutput()
		if got := strings.TrimSpace(lastLine(string(out))); err != nil || got != c.want {
			t.Errorf("dmidecode -s %s: %q (%v), want %q\n%s", c.keyword, got, err, c.want, out)
		}
	}
	out, err := exec.Command("dmidecode", "--from-dump", f).CombinedOutput()
	if err != nil {
		t.Fatalf("dmidecode: %v\n%s", err, out)
	}
	text := string(out)
	for _, want := range []string{
		"SMBIOS 3.0.0 present.",
		"System is a virtual machine",
		"Socket Designation: CPU 0", "Socket Designation: CPU 1",
		"Maximum Capacity: 5 GB",
		"Size: 5 GB",
		"String 1: io.systemd.credential:x=1", "String 2: second",
		"System Boot Information",
		"End Of Table",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("dmidecode output lacks %q", want)
		}
	}
	for _, bad := range []string{"Invalid", "invalid", "Unknown Type", "<OUT OF SPEC>", "Bad"} {
		if strings.Contains(text, bad) {
			t.Errorf("dmidecode found something %q:\n%s", bad, text)
		}
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

func TestEntryPoint(t *testing.T) {
	const addr = 0xf2000
	b, err := Table(Info{NumCPUs: 1, MemBytes: 1 << 30}, addr)
	if err != nil {
		t.Fatal(err)
	}
	ep := b[:entryPointSize]
	if string(ep[:5]) != "_SM3_" || checksum(ep) != 0 {
		t.Errorf("entry point %x: bad anchor or checksum", ep)
	}
	if got := binary.LittleEndian.Uint64(ep[16:]); got != addr+entryPointSize {
		t.Errorf("table address %#x, want %#x", got, addr+entryPointSize)
	}
	if got := binary.LittleEndian.Uint32(ep[12:]); int(got) != len(b)-entryPointSize {
		t.Errorf("table size %d, want %d", got, len(b)-entryPointSize)
	}
	if !bytes.HasSuffix(b, []byte{typeEndOfTable, 4, 0, 0, 0, 0}[:2]) && !bytes.Contains(b, []byte{typeEndOfTable, 4}) {
		t.Error("no end-of-table structure")
	}
	if _, err := Table(Info{NumCPUs: 1}, addr+1); err == nil {
		t.Error("a misaligned entry point was accepted")
	}
}

func TestRefusals(t *testing.T) {
	for name, info := range map[string]Info{
		"no CPUs":           {},
		"control character": {NumCPUs: 1, Serial: "a\x00b"},
		"newline":           {NumCPUs: 1, Product: "a\nb"},
		"long string":       {NumCPUs: 1, Family: strings.Repeat("x", MaxString+1)},
		"too many OEM":      {NumCPUs: 1, OEMStrings: make([]string, MaxOEMStrings+1)},
		"too many CPUs":     {NumCPUs: 256},
	} {
		if _, err := Table(info, 0xf2000); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseUUID(t *testing.T) {
	u, err := ParseUUID("01234567-89AB-cdef-0123-456789abcdef")
	if err != nil || u != sample.UUID {
		t.Errorf("ParseUUID: %x, %v", u, err)
	}
	for _, bad := range []string{"", "01234567-89ab-cdef-0123-456789abcde", "0123456789abcdef0123456789abcdef", "01234567-89ab-cdef-0123-456789abcdeg", "0123456-789ab-cdef-0123-456789abcdef"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) accepted", bad)
		}
	}
}

// FuzzTable: whatever the configuration, Table either refuses it or
// produces a table whose structures chain to the end-of-table marker.
func FuzzTable(f *testing.F) {
	f.Add("vio", "box", "ds=nocloud", "oem", 1, uint64(1<<30))
	f.Fuzz(func(t *testing.T, mfr, product, serial, oem string, cpus int, mem uint64) {
		b, err := Table(Info{Manufacturer: mfr, Product: product, Serial: serial, OEMStrings: []string{oem}, NumCPUs: cpus, MemBytes: mem}, 0xf2000)
		if err != nil {
			return
		}
		tbl := b[entryPointSize:]
		for off := 0; ; {
			if off+4 > len(tbl) {
				t.Fatalf("structure at %d runs past the table", off)
			}
			typ, n := tbl[off], int(tbl[off+1])
			i := bytes.Index(tbl[off+n:], []byte{0, 0})
			if n < 4 || i < 0 {
				t.Fatalf("structure at %d: length %d, no string-set end", off, n)
			}
			off += n + i + 2
			if typ == typeEndOfTable {
				if off != len(tbl) {
					t.Fatalf("end of table at %d of %d", off, len(tbl))
				}
				return
			}
		}
	})
}

// TestLargestFits: the largest table the limits allow fits the room the
// x86 layout gives SMBIOS.
func TestLargestFits(t *testing.T) {
	long := strings.Repeat("x", MaxString)
	info := Info{Manufacturer: long, Product: long, Version: long, Serial: long, SKU: long, Family: long, AssetTag: long,
		BIOSVendor: long, BIOSVersion: long, BIOSDate: long, NumCPUs: 255, MemBytes: 1 << 46}
	for range MaxOEMStrings {
		info.OEMStrings = append(info.OEMStrings, long)
	}
	b, err := Table(info, x86.SMBIOSAddr)
	if err != nil {
		t.Fatal(err)
	}
	if end := x86.SMBIOSAddr + uint64(len(b)); end > x86.SMBIOSEnd {
		t.Errorf("the largest SMBIOS table ends at %#x, past SMBIOSEnd %#x", end, x86.SMBIOSEnd)
	}
}
