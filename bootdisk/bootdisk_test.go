package bootdisk_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/viovmm/vio/block/image"
	"github.com/viovmm/vio/bootdisk"
	"github.com/viovmm/vio/bootdisk/bootdisktest"
	"github.com/viovmm/vio/bootdisk/partition"
)

const rootUUID = "5b1f8c2e-1111-4000-8000-000000000001"

// Fake kernels and initrds: the finder does not look inside them (the
// loader does), so recognisable bytes are enough here.
var (
	kernelBytes = bytes.Repeat([]byte("KERNEL-6.1."), 50000)
	initrdBytes = bytes.Repeat([]byte("INITRD"), 123457)
)

func grubCfg(uuid, prefix string) string {
	return `set default="0"
menuentry 'Distro Linux' --class distro $menuentry_id_option 'simple' {
	insmod ext2
	set root='hd0,gpt1'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root --hint-bios=hd0,gpt2 ` + uuid + `
	else
	  search --no-floppy --fs-uuid --set=root ` + uuid + `
	fi
	linux	` + prefix + `/vmlinuz-6.1.0-vio root=UUID=` + rootUUID + ` ro quiet vio.marker="a b"
	initrd	` + prefix + `/initrd.img-6.1.0-vio
}
`
}

func open(t *testing.T, path string) (io.ReaderAt, int64) {
	t.Helper()
	be, err := image.Open(path, image.OpenOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { be.Close() })
	return be, be.Size()
}

func readAll(t *testing.T, r io.ReaderAt, n int64) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := r.ReadAt(b, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return b
}

func check(t *testing.T, b *bootdisk.Boot, cmdline string, wantInitrd []byte) {
	t.Helper()
	if b.Cmdline != cmdline {
		t.Errorf("cmdline %q, want %q", b.Cmdline, cmdline)
	}
	if !bytes.Equal(readAll(t, b.Kernel, b.KernelSize), kernelBytes) {
		t.Errorf("kernel (%s) differs from what was put on the disk", b.KernelPath)
	}
	if wantInitrd == nil {
		if b.Initrd != nil {
			t.Errorf("an initrd (%s) where none was expected", b.InitrdPath)
		}
		return
	}
	if b.Initrd == nil || !bytes.Equal(readAll(t, b.Initrd, b.InitrdSize), wantInitrd) {
		t.Errorf("initrd (%s) differs from what was put on the disk", b.InitrdPath)
	}
}

// TestGPTGrub: a GPT disk with an (unformatted) EFI system partition and
// an ext4 root holding /boot and grub.cfg, as a distribution's cloud image
// has; read raw and as qcow2 through block/image.
func TestGPTGrub(t *testing.T) {
	bootdisktest.Need(t, "qemu-img")
	root := t.TempDir()
	bootdisktest.WriteTree(t, root, map[string]string{
		"boot/grub/grub.cfg":          grubCfg(rootUUID, "/boot"),
		"boot/vmlinuz-6.1.0-vio":      string(kernelBytes),
		"boot/initrd.img-6.1.0-vio":   string(initrdBytes),
		"vmlinuz":                     "->boot/vmlinuz-6.1.0-vio",
		"etc/os-release":              "ID=distro\n",
		"boot/vmlinuz-5.10.0-old-vio": "old",
	})
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	bootdisktest.Build(t, img, "gpt", []bootdisktest.Part{
		{Type: partition.TypeESP, SizeMiB: 2},
		{Type: partition.TypeLinux, SizeMiB: 24, Root: root, Mkfs: []string{"-U", rootUUID}},
	})
	qcow := filepath.Join(dir, "disk.qcow2")
	bootdisktest.Run(t, "qemu-img", "convert", "-O", "qcow2", img, qcow)
	for _, path := range []string{img, qcow} {
		t.Run(filepath.Ext(path), func(t *testing.T) {
			r, size := open(t, path)
			b, err := bootdisk.Find(r, size, bootdisk.Options{})
			if err != nil {
				t.Fatal(err)
			}
			check(t, b, `root=UUID=`+rootUUID+` ro quiet vio.marker="a b"`, initrdBytes)
			if want := `partition 2: /boot/grub/grub.cfg entry "Distro Linux"`; b.Source != want {
				t.Errorf("source %q, want %q", b.Source, want)
			}
		})
	}
}

// TestMBRSeparateBoot: an MBR disk with /boot on its own partition (so
// grub.cfg is at /grub/grub.cfg and its paths have no /boot) and the root
// file system on a logical partition; two initrds (microcode first), which
// are concatenated on a 4-byte boundary as GRUB does.
func TestMBRSeparateBoot(t *testing.T) {
	const bootUUID = "5b1f8c2e-2222-4000-8000-000000000002"
	boot, root := t.TempDir(), t.TempDir()
	cfg := strings.Replace(grubCfg(bootUUID, ""), "initrd.img-6.1.0-vio", "ucode.img /initrd.img-6.1.0-vio", 1)
	bootdisktest.WriteTree(t, boot, map[string]string{
		"grub/grub.cfg":        cfg,
		"vmlinuz-6.1.0-vio":    string(kernelBytes),
		"initrd.img-6.1.0-vio": string(initrdBytes),
		"ucode.img":            "UCODE",
	})
	bootdisktest.WriteTree(t, root, map[string]string{"etc/fstab": "#\n"})
	img := filepath.Join(t.TempDir(), "disk.img")
	bootdisktest.Build(t, img, "dos", []bootdisktest.Part{
		{Type: "83", SizeMiB: 16, Root: boot, Mkfs: []string{"-U", bootUUID}},
		{Type: "83", SizeMiB: 8, Root: root, Mkfs: []string{"-U", rootUUID}, Logical: true},
	})
	r, size := open(t, img)
	b, err := bootdisk.Find(r, size, bootdisk.Options{})
	if err != nil {
		t.Fatal(err)
	}
	check(t, b, `root=UUID=`+rootUUID+` ro quiet vio.marker="a b"`, append([]byte("UCODE\x00\x00\x00"), initrdBytes...))
}

// TestLinks: a bare ext4 file system (no partition table, no grub.cfg)
// with Debian's /vmlinuz and /initrd.img links boots with root=UUID= of
// that file system; a grub.cfg that cannot be followed falls back to the
// links with a note; without an initrd there is a note too.
func TestLinks(t *testing.T) {
	for _, c := range []struct {
		name   string
		files  map[string]string
		note   string
		initrd []byte
	}{
		{"links", map[string]string{}, "", initrdBytes},
		{"boot-links", map[string]string{"vmlinuz": "", "initrd.img": "", "boot/vmlinuz": "->vmlinuz-6.1.0-vio", "boot/initrd.img": "->initrd.img-6.1.0-vio"}, "", initrdBytes},
		{"bad-grub", map[string]string{"boot/grub/grub.cfg": "menuentry x { chainloader +1 }"}, "chain-loads", initrdBytes},
		{"no-initrd", map[string]string{"initrd.img": ""}, "without an initramfs", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			files := map[string]string{
				"boot/vmlinuz-6.1.0-vio":    string(kernelBytes),
				"boot/initrd.img-6.1.0-vio": string(initrdBytes),
				"vmlinuz":                   "->boot/vmlinuz-6.1.0-vio",
				"initrd.img":                "->boot/initrd.img-6.1.0-vio",
				"etc/hostname":              "x\n",
			}
			for k, v := range c.files {
				if v == "" {
					delete(files, k)
				} else {
					files[k] = v
				}
			}
			root := t.TempDir()
			bootdisktest.WriteTree(t, root, files)
			img := filepath.Join(t.TempDir(), "fs.img")
			bootdisktest.Mkfs(t, img, 0, 16, root, "-U", rootUUID)
			r, size := open(t, img)
			b, err := bootdisk.Find(r, size, bootdisk.Options{})
			if err != nil {
				t.Fatal(err)
			}
			check(t, b, "root=UUID="+rootUUID+" ro", c.initrd)
			notes := strings.Join(b.Notes, "; ")
			if c.note == "" && notes != "" || !strings.Contains(notes, c.note) {
				t.Errorf("notes %q, want %q", notes, c.note)
			}
		})
	}
}

// TestNothingBootable: each disk that cannot be booted gets a sentence
// that says why.
func TestNothingBootable(t *testing.T) {
	dir := t.TempDir()
	empty := t.TempDir()
	bootdisktest.WriteTree(t, empty, map[string]string{"etc/hostname": "x\n"})
	cases := []struct {
		name, want string
		build      func(path string)
	}{
		{"zeroes", "no partition table and no ext2/3/4 file system", func(p string) { os.WriteFile(p, make([]byte, 4<<20), 0o644) }},
		{"gpt-no-fs", "none of its GPT partitions holds an ext2/3/4 file system: 1 (an EFI system partition), 2 (no ext2/3/4 file system)", func(p string) {
			bootdisktest.Build(t, p, "gpt", []bootdisktest.Part{{Type: partition.TypeESP, SizeMiB: 1}, {Type: partition.TypeLinux, SizeMiB: 1}})
		}},
		{"no-kernel", "no /boot/grub/grub.cfg and no /vmlinuz or /boot/vmlinuz on partition 1", func(p string) {
			bootdisktest.Build(t, p, "gpt", []bootdisktest.Part{{Type: partition.TypeLinux, SizeMiB: 8, Root: empty}})
		}},
		{"grub-missing-kernel", `entry "Distro Linux": kernel /boot/vmlinuz-6.1.0-vio on partition 1: /boot/vmlinuz-6.1.0-vio: no such file`, func(p string) {
			r := t.TempDir()
			bootdisktest.WriteTree(t, r, map[string]string{"boot/grub/grub.cfg": grubCfg(rootUUID, "/boot")})
			bootdisktest.Build(t, p, "gpt", []bootdisktest.Part{{Type: partition.TypeLinux, SizeMiB: 8, Root: r, Mkfs: []string{"-U", rootUUID}}})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := filepath.Join(dir, c.name)
			c.build(p)
			r, size := open(t, p)
			_, err := bootdisk.Find(r, size, bootdisk.Options{})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want one containing %q", err, c.want)
			}
		})
	}
	// Limits: a kernel bigger than allowed is refused with its size.
	root := t.TempDir()
	bootdisktest.WriteTree(t, root, map[string]string{"vmlinuz": string(kernelBytes)})
	p := filepath.Join(dir, "big")
	bootdisktest.Mkfs(t, p, 0, 8, root)
	r, size := open(t, p)
	if _, err := bootdisk.Find(r, size, bootdisk.Options{MaxKernel: 1000}); err == nil || !strings.Contains(err.Error(), "more than") {
		t.Fatalf("kernel over the limit: %v", err)
	}
	if _, err := bootdisk.Find(r, size, bootdisk.Options{}); err != nil && errors.Is(err, bootdisk.ErrNotBootable) {
		t.Fatalf("kernel within the limit: %v", err)
	}
}

func TestCmdline(t *testing.T) {
	for _, c := range [][3]string{
		{"root=/dev/vda ro", "", "root=/dev/vda ro console=ttyS0"},
		{"root=/dev/vda console=tty0", "", "root=/dev/vda console=tty0"},
		{"root=/dev/vda -- console=x", "init.x=1", "root=/dev/vda -- console=x console=ttyS0 init.x=1"},
		{"", "a=b", "console=ttyS0 a=b"},
	} {
		if got := bootdisk.Cmdline(c[0], c[1]); got != c[2] {
			t.Errorf("Cmdline(%q, %q) = %q, want %q", c[0], c[1], got, c[2])
		}
	}
}

// FuzzFind runs the whole finder over mutations of a small real disk.
func FuzzFind(f *testing.F) {
	if b, err := os.ReadFile("testdata/disk.img"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		boot, err := bootdisk.Find(bytes.NewReader(b), int64(len(b)), bootdisk.Options{MaxKernel: 1 << 20, MaxInitrd: 1 << 20})
		if err != nil {
			return
		}
		k := make([]byte, boot.KernelSize)
		boot.Kernel.ReadAt(k, 0)
		if boot.Initrd != nil {
			i := make([]byte, boot.InitrdSize)
			boot.Initrd.ReadAt(i, 0)
		}
	})
}
