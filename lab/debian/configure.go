package debian

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// grubCfgTemplate is the image's /boot/grub/grub.cfg, in the shape
// grub-mkconfig gives a Debian install with one kernel (no submenu):
// the serial terminal and a timeout of 0, as Debian's cloud images set
// GRUB_TERMINAL and GRUB_TIMEOUT. @UUID@ and @KVER@ are filled in.
const grubCfgTemplate = `#
# Written by vio's lab/debian image builder, in the shape grub-mkconfig
# gives a Debian install with one kernel.
#
set default="0"
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout_style=menu
set timeout=0
insmod part_gpt
insmod ext2
search --no-floppy --fs-uuid --set=root @UUID@

menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os --id 'gnulinux-simple-@UUID@' {
	insmod gzio
	insmod part_gpt
	insmod ext2
	search --no-floppy --fs-uuid --set=root @UUID@
	echo	'Loading Linux @KVER@ ...'
	linux	/boot/vmlinuz-@KVER@ root=UUID=@UUID@ ro console=ttyS0
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-@KVER@
}
`

// Locale is the system's locale, the one cloud-init sets by default.
const Locale = "en_US.UTF-8"

// defaultGrub is /etc/default/grub as it would be for the grub.cfg above,
// so that a user who installs grub-pc in the guest gets the same.
const defaultGrub = `GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0"
GRUB_TERMINAL="serial console"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
`

// GrubCfg is the grub.cfg written for the root file system uuid and
// kernel version kver.
func GrubCfg(uuid, kver string) string {
	return strings.NewReplacer("@UUID@", uuid, "@KVER@", kver).Replace(grubCfgTemplate)
}

// configure writes what an installer writes after the packages: fstab
// (root by UUID), the host name, apt's sources, an empty machine id (each
// boot of a copy makes its own), GRUB's configuration and modules, and
// checks the /vmlinuz and /initrd.img links the kernel package keeps.
func configure(root, mirror, kver, uuid string, log func(string)) error {
	files := map[string]string{
		"etc/fstab":            fmt.Sprintf("# <file system> <mount point> <type> <options> <dump> <pass>\nUUID=%s / ext4 errors=remount-ro 0 1\n", uuid),
		"etc/hostname":         "debian\n",
		"etc/hosts":            "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/apt/sources.list": fmt.Sprintf("deb %s %s main\n", mirror, Suite),
		"etc/machine-id":       "",
		"etc/locale.gen":       Locale + " UTF-8\n",
		"etc/default/locale":   "LANG=" + Locale + "\n",
		"etc/default/grub":     defaultGrub,
		"boot/grub/grub.cfg":   GrubCfg(uuid, kver),
	}
	for name, content := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			return err
		}
	}
	os.Remove(filepath.Join(root, "var/lib/dbus/machine-id"))
	// The installer's locale, generated now: cloud-init then finds the
	// locale it would set already in place and leaves it.
	if out, err := exec.Command("chroot", root, "locale-gen").CombinedOutput(); err != nil {
		return fmt.Errorf("locale-gen in the chroot: %v: %s", err, out)
	}
	// The downloaded packages are not part of an installed system.
	debs, _ := filepath.Glob(filepath.Join(root, "var/cache/apt/archives/*.deb"))
	for _, d := range debs {
		os.Remove(d)
	}
	// GRUB loads its modules from the prefix, /boot/grub/i386-pc, as
	// grub-install leaves them.
	src := filepath.Join(root, "usr/lib/grub/i386-pc")
	dst := filepath.Join(root, "boot/grub/i386-pc")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("the chroot has no GRUB for BIOS (grub-pc-bin): %w", err)
	}
	for _, e := range ents {
		if n := e.Name(); strings.HasSuffix(n, ".mod") || strings.HasSuffix(n, ".lst") {
			if err := copyFile(filepath.Join(src, n), filepath.Join(dst, n)); err != nil {
				return err
			}
		}
	}
	for link, target := range map[string]string{"vmlinuz": "boot/vmlinuz-" + kver, "initrd.img": "boot/initrd.img-" + kver} {
		p := filepath.Join(root, link)
		if _, err := os.Lstat(p); err == nil {
			continue
		}
		log(fmt.Sprintf("the kernel package left no /%s link; making it", link))
		if err := os.Symlink(target, p); err != nil {
			return err
		}
	}
	return nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// HostMirror returns the Debian mirror the host's apt uses for the
// release: the first source (one-line or deb822) whose suites include
// Suite itself.
func HostMirror() (string, error) {
	files, _ := filepath.Glob("/etc/apt/sources.list.d/*")
	files = append([]string{"/etc/apt/sources.list"}, files...)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var m string
		if strings.HasSuffix(f, ".sources") {
			m = mirrorDeb822(string(b))
		} else if strings.HasSuffix(f, ".list") {
			m = mirrorOneLine(string(b))
		}
		if m != "" {
			return m, nil
		}
	}
	return "", fmt.Errorf("no Debian %s mirror found in /etc/apt/sources.list or /etc/apt/sources.list.d: give one (--mirror URL)", Suite)
}

// mirrorOneLine finds a "deb URL bookworm ..." line.
func mirrorOneLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 0 && strings.HasPrefix(f[0], "#") {
			continue
		}
		// Options in brackets ([arch=amd64 signed-by=...]) come before the URL.
		for len(f) > 1 && strings.HasPrefix(f[1], "[") {
			end := 1
			for end < len(f) && !strings.HasSuffix(f[end], "]") {
				end++
			}
			f = append(f[:1], f[min(end+1, len(f)):]...)
		}
		if len(f) >= 3 && f[0] == "deb" && f[2] == Suite {
			return strings.TrimRight(f[1], "/")
		}
	}
	return ""
}

// mirrorDeb822 finds a stanza of "Types: deb" with Suite among its Suites.
func mirrorDeb822(s string) string {
	for _, stanza := range strings.Split(s, "\n\n") {
		fields := map[string]string{}
		for _, line := range strings.Split(stanza, "\n") {
			if strings.HasPrefix(line, "#") {
				continue
			}
			k, v, ok := strings.Cut(line, ":")
			if ok && !strings.HasPrefix(line, " ") {
				fields[strings.ToLower(strings.TrimSpace(k))] = strings.TrimSpace(v)
			}
		}
		if !hasField(fields["types"], "deb") || !hasField(fields["suites"], Suite) || strings.EqualFold(fields["enabled"], "no") {
			continue
		}
		if uris := strings.Fields(fields["uris"]); len(uris) > 0 {
			return strings.TrimRight(uris[0], "/")
		}
	}
	return ""
}

func hasField(list, want string) bool {
	for _, f := range strings.Fields(list) {
		if f == want {
			return true
		}
	}
	return false
}
