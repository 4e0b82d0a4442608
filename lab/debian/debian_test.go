package debian

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestMirrorOneLine(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"deb http://deb.debian.org/debian bookworm main\n", "http://deb.debian.org/debian"},
		{"# deb http://old.example/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian/ bookworm main contrib\n", "http://m.example/debian"},
		{"deb http://security.debian.org/debian-security bookworm-security main\n", ""},
		{"deb-src http://deb.debian.org/debian bookworm main\n", ""},
		{"deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n", ""},
	} {
		if got := mirrorOneLine(c.in); got != c.want {
			t.Errorf("mirrorOneLine(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestMirrorDeb822(t *testing.T) {
	// The shape of this project's machines' /etc/apt/sources.list.d/debian.sources.
	in := `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
`
	if got := mirrorDeb822(in); got != "http://deb.debian.org/debian" {
		t.Errorf("got %q", got)
	}
	for _, in := range []string{
		"Types: deb\nURIs: http://x/debian\nSuites: bookworm-security\n",
		"Types: deb-src\nURIs: http://x/debian\nSuites: bookworm\n",
		"Types: deb\nURIs: http://x/debian\nSuites: bookworm\nEnabled: no\n",
	} {
		if got := mirrorDeb822(in); got != "" {
			t.Errorf("mirrorDeb822(%q) = %q, want none", in, got)
		}
	}
}

// TestPatchGRUB checks the two sectors GRUB's BIOS boot path reads: the MBR
// keeps the disk's partition table and points at core.img's first sector,
// whose block list names the rest of core.img and then ends.
func TestPatchGRUB(t *testing.T) {
	boot := make([]byte, 512)
	for i := range boot {
		boot[i] = 0xcc
	}
	boot[510], boot[511] = 0x55, 0xaa
	mbr := make([]byte, 512)
	for i := bootTableStart; i < bootTableEnd; i++ {
		mbr[i] = byte(i)
	}
	core := make([]byte, 40*512)
	binary.LittleEndian.PutUint64(core[0x1f4:], 2) // diskboot.img's default
	binary.LittleEndian.PutUint16(core[0x1fe:], coreLoadSegment)
	if err := patchGRUB(boot, core, mbr, 2048); err != nil {
		t.Fatal(err)
	}
	if got := binary.LittleEndian.Uint64(boot[0x5c:]); got != 2048 {
		t.Errorf("kernel sector %d, want 2048", got)
	}
	if boot[0x64] != 0xff || boot[0x66] != 0x90 || boot[0x67] != 0x90 {
		t.Errorf("boot drive %#x, drive check % x", boot[0x64], boot[0x66:0x68])
	}
	if !bytes.Equal(boot[0x1b8:0x1fe], mbr[0x1b8:0x1fe]) {
		t.Error("the partition table was not kept")
	}
	if boot[0x5b] != 0xcc || boot[0x68] != 0xcc {
		t.Error("boot code outside the patched fields changed")
	}
	if s, n, seg := binary.LittleEndian.Uint64(core[0x1f4:]), binary.LittleEndian.Uint16(core[0x1fc:]), binary.LittleEndian.Uint16(core[0x1fe:]); s != 2049 || n != 39 || seg != 0x820 {
		t.Errorf("block list start %d, %d sectors, segment %#x; want 2049, 39, 0x820", s, n, seg)
	}
	bad := make([]byte, 2*512)
	if err := patchGRUB(boot, bad, mbr, 2048); err == nil || !strings.Contains(err.Error(), "diskboot") {
		t.Errorf("a core image without diskboot.img: %v", err)
	}
}

func TestGrubCfg(t *testing.T) {
	cfg := GrubCfg("1234-uuid", "6.1.0-99-amd64")
	for _, want := range []string{
		"set timeout=0",
		"linux\t/boot/vmlinuz-6.1.0-99-amd64 root=UUID=1234-uuid ro console=ttyS0",
		"initrd\t/boot/initrd.img-6.1.0-99-amd64",
	} {
		if !strings.Contains(cfg, want) {
			t.Errorf("grub.cfg lacks %q:\n%s", want, cfg)
		}
	}
	if strings.Contains(cfg, "@") {
		t.Errorf("grub.cfg has a placeholder left:\n%s", cfg)
	}
	if Key() != Key() || len(Key()) != 12 {
		t.Errorf("Key() = %q", Key())
	}
}
