// Package debian builds a real Debian disk image, as a user would install
// one, for tests that boot a distribution the way users run it: debootstrap
// of bookworm from the host's configured mirror (Debian's own kernel,
// initramfs, systemd, udev and cloud-init, installed by their packages in
// a chroot), an ext4 root made with `mkfs.ext4 -d` (no mount), and GRUB
// for BIOS boot on a GPT disk in a sparse raw file, so that both vio (which
// reads grub.cfg itself) and QEMU with SeaBIOS (which runs GRUB) boot it.
//
// The finished image is cached in the lab's cache directory under a name
// keyed on the recipe, written atomically: a second run is instant, and a
// half-built image is never seen. Building needs root (debootstrap, chroot)
// and a few host tools: debootstrap, mkfs.ext4 (e2fsprogs) and sfdisk
// (fdisk); GRUB's image tools come from the chroot's own grub-pc-bin.
package debian

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Suite is the Debian release the image holds.
const Suite = "bookworm"

// Packages are installed by debootstrap on top of its minbase variant.
// debootstrap does not resolve virtual packages: python3-cffi-backend
// provides the python3-cffi-backend-api-* that python3-cryptography (for
// cloud-init) depends on. minbase leaves out what an installed Debian
// has: without dbus there is no systemd-logind, and so nothing acts on
// the ACPI power button; without locales cloud-init's locale module fails
// (update-locale refuses the en_US.UTF-8 it sets).
var Packages = []string{
	"systemd-sysv", "udev", "dbus", "linux-image-amd64", "initramfs-tools", "cloud-init",
	"dmidecode", "e2fsprogs", "grub-pc-bin", "python3-cffi-backend", "locales",
}

// The disk's layout: a GPT with GRUB's BIOS boot partition (where its core
// image lives) and the ext4 root filling the rest.
const (
	SizeBytes       = 3 << 30 // the raw file; sparse, so only what is written takes space
	biosBootStart   = 2048    // sectors
	biosBootSectors = 2048
	// RootStart is the root partition's offset in bytes (partition 2).
	RootStart = (biosBootStart + biosBootSectors) * 512
)

// RootPartition is the root file system's partition number, GRUB's gpt2.
const RootPartition = 2

// recipeVersion changes whenever the build changes in a way the recipe's
// other parts do not show; it is part of the cache key.
const recipeVersion = "1"

// Info describes a built image; it is kept next to it as NAME.json.
type Info struct {
	Image          string  `json:"image"`
	Suite          string  `json:"suite"`
	Mirror         string  `json:"mirror"`
	Kernel         string  `json:"kernel"` // the kernel's version, e.g. 6.1.0-41-amd64
	RootUUID       string  `json:"root_uuid"`
	Built          string  `json:"built"`
	BuildSeconds   float64 `json:"build_seconds"`
	DebootstrapSec float64 `json:"debootstrap_seconds"`
}

// Key is the cache key of the recipe: what is installed and how the disk
// is laid out and made bootable. The mirror is not part of it (any mirror
// serves the same release).
func Key() string {
	h := sha256.New()
	fmt.Fprintf(h, "v%s\n%s\n%s\n%d\n%d+%d\n%s\n", recipeVersion, Suite, strings.Join(Packages, ","),
		SizeBytes, biosBootStart, biosBootSectors, grubCfgTemplate)
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// CachedPath is where the image of the current recipe is kept in dir.
func CachedPath(dir string) string {
	return filepath.Join(dir, "debian-"+Suite+"-"+Key()+".img")
}

// LoadInfo reads the description kept next to image.
func LoadInfo(image string) (*Info, error) {
	b, err := os.ReadFile(strings.TrimSuffix(image, ".img") + ".json")
	if err != nil {
		return nil, err
	}
	var info Info
	if err := json.Unmarshal(b, &info); err != nil {
		return nil, fmt.Errorf("%s: %w", image, err)
	}
	return &info, nil
}

// Ensure returns the cached image of the current recipe in dir, building it
// first if it is missing (which takes many minutes: debootstrap downloads
// and installs a few hundred packages). mirror "" means the host's
// configured Debian mirror. log gets progress lines (nil: none). Callers
// must not write the returned image: boot a copy (Copy) or an overlay.
func Ensure(ctx context.Context, dir, mirror string, log func(string)) (*Info, error) {
	if log == nil {
		log = func(string) {}
	}
	final := CachedPath(dir)
	if info, err := LoadInfo(final); err == nil {
		if _, err := os.Stat(final); err == nil {
			return info, nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// One builder at a time: a second one waits, then finds the image.
	unlock, err := lock(filepath.Join(dir, "debian.lock"), log)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if info, err := LoadInfo(final); err == nil {
		if _, err := os.Stat(final); err == nil {
			return info, nil
		}
	}
	if mirror == "" {
		if mirror, err = HostMirror(); err != nil {
			return nil, err
		}
	}
	if err := checkHost(); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(dir, "debian-build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	log(fmt.Sprintf("building the Debian %s image (recipe %s) from %s in %s; debootstrap takes many minutes", Suite, Key(), mirror, tmp))
	info, err := build(ctx, tmp, filepath.Join(dir, "debootstrap-debs"), mirror, log)
	if err != nil {
		return nil, err
	}
	info.Image = final
	b, err := json.MarshalIndent(info, "", "  ")
	if err != nil {
		return nil, err
	}
	// The description first, the image last: an image present is complete.
	if err := os.WriteFile(filepath.Join(tmp, "info.json"), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(tmp, "info.json"), strings.TrimSuffix(final, ".img")+".json"); err != nil {
		return nil, err
	}
	if err := os.Rename(filepath.Join(tmp, "disk.img"), final); err != nil {
		return nil, err
	}
	log(fmt.Sprintf("image ready: %s (kernel %s, built in %.0f s)", final, info.Kernel, info.BuildSeconds))
	return info, nil
}

// checkHost says in one sentence what the build lacks on this host.
func checkHost() error {
	if os.Geteuid() != 0 {
		return errors.New("building the Debian image needs root (debootstrap installs packages into a chroot): run it as root")
	}
	var missing []string
	for _, t := range []struct{ bin, pkg string }{{"debootstrap", "debootstrap"}, {"mkfs.ext4", "e2fsprogs"}, {"sfdisk", "fdisk"}} {
		if _, err := exec.LookPath(t.bin); err != nil {
			missing = append(missing, t.pkg)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("building the Debian image needs %s: run `apt-get install %s` (or scripts/setup-host)",
			strings.Join(missing, ", "), strings.Join(missing, " "))
	}
	return nil
}

// lock takes an exclusive flock on path, saying so if it has to wait.
func lock(path string, log func(string)) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		log("another process is building the Debian image; waiting for it")
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
			f.Close()
			return nil, err
		}
	}
	return func() { f.Close() }, nil
}

// build makes the image in tmp/disk.img.
func build(ctx context.Context, tmp, debs, mirror string, log func(string)) (*Info, error) {
	start := time.Now()
	root := filepath.Join(tmp, "root")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	args := []string{"--variant=minbase", "--include=" + strings.Join(Packages, ","),
		"--cache-dir=" + debs, Suite, root, mirror}
	log("debootstrap " + strings.Join(args, " "))
	if err := runLogged(ctx, log, "debootstrap", args...); err != nil {
		if b, rerr := os.ReadFile(filepath.Join(root, "debootstrap", "debootstrap.log")); rerr == nil {
			err = fmt.Errorf("%w; the end of debootstrap.log:\n%s", err, tail(string(b), 30))
		}
		return nil, err
	}
	debootstrapTime := time.Since(start)
	log(fmt.Sprintf("debootstrap done in %v", debootstrapTime.Round(time.Second)))

	kver, err := kernelVersion(root)
	if err != nil {
		return nil, err
	}
	uuid, err := newUUID()
	if err != nil {
		return nil, err
	}
	if err := configure(root, mirror, kver, uuid, log); err != nil {
		return nil, err
	}
	core, boot, err := grubImages(ctx, root)
	if err != nil {
		return nil, err
	}
	img := filepath.Join(tmp, "disk.img")
	log("making the GPT disk and its ext4 root with mkfs.ext4 -d")
	if err := makeDisk(ctx, img, root, uuid); err != nil {
		return nil, err
	}
	log("installing GRUB for BIOS boot (boot.img in the MBR, core.img in the BIOS boot partition)")
	if err := installGRUB(img, boot, core); err != nil {
		return nil, err
	}
	return &Info{
		Suite: Suite, Mirror: mirror, Kernel: kver, RootUUID: uuid,
		Built: time.Now().UTC().Format(time.RFC3339), BuildSeconds: time.Since(start).Seconds(),
		DebootstrapSec: debootstrapTime.Seconds(),
	}, nil
}

// runLogged runs a long command, passing on its warnings and errors at
// once and its latest progress line every 30 s, so that a build of many
// minutes shows it is alive without printing thousands of lines.
func runLogged(ctx context.Context, log func(string), name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C")
	r, w := io.Pipe()
	cmd.Stdout, cmd.Stderr = w, w
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	var mu sync.Mutex
	var last string
	var lines []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			line := sc.Text()
			mu.Lock()
			last = line
			lines = append(lines, line)
			if len(lines) > 40 {
				lines = lines[1:]
			}
			mu.Unlock()
			if strings.HasPrefix(line, "W:") || strings.HasPrefix(line, "E:") {
				log(name + ": " + line)
			}
		}
	}()
	start := time.Now()
	tick := time.NewTicker(30 * time.Second)
	defer tick.Stop()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); w.Close() }()
	for {
		select {
		case <-tick.C:
			mu.Lock()
			l := last
			mu.Unlock()
			log(fmt.Sprintf("%s: %v: %s", name, time.Since(start).Round(time.Second), l))
		case err := <-exited:
			<-done
			if err != nil {
				return fmt.Errorf("%s failed (%v); its last lines:\n%s", name, err, strings.Join(lines, "\n"))
			}
			return nil
		}
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// kernelVersion is the version of the one kernel the chroot's
// linux-image-amd64 installed.
func kernelVersion(root string) (string, error) {
	ks, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(ks) != 1 {
		return "", fmt.Errorf("want one kernel in the chroot's /boot, found %d", len(ks))
	}
	kver := strings.TrimPrefix(filepath.Base(ks[0]), "vmlinuz-")
	if _, err := os.Stat(filepath.Join(root, "boot", "initrd.img-"+kver)); err != nil {
		return "", fmt.Errorf("the kernel package made no initramfs (initramfs-tools): %w", err)
	}
	return kver, nil
}

func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16]), nil
}
