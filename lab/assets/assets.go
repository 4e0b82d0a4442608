// Package assets fetches and caches what the lab boots: the Debian guest
// kernel with its modules and a static busybox, all from Debian packages.
//
// The cache is reused when present, so a second run needs no network and
// takes no time. Nothing is installed into the host system: packages are
// downloaded with apt-get and unpacked with dpkg-deb into the cache.
package assets

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// Assets says where the unpacked guest assets are.
type Assets struct {
	Dir           string // cache directory holding everything below
	KernelVersion string // e.g. "6.1.0-56-amd64"
	Kernel        string // bzImage
	ModulesDir    string // lib/modules/KernelVersion
	Busybox       string // static busybox binary
}

const manifestName = "assets.json"

// DefaultDir returns the cache directory: $VIO_LAB_CACHE, else
// $XDG_CACHE_HOME/vio-lab, else ~/.cache/vio-lab.
func DefaultDir() string {
	if d := os.Getenv("VIO_LAB_CACHE"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "vio-lab")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".cache", "vio-lab")
	}
	return filepath.Join(os.TempDir(), "vio-lab-cache")
}

// Load returns the assets recorded in dir without fetching anything. It
// fails if they were never fetched or a file has gone missing.
func Load(dir string) (*Assets, error) {
	b, err := os.ReadFile(filepath.Join(dir, manifestName))
	if err != nil {
		return nil, fmt.Errorf("lab assets not fetched into %s (run `go run ./cmd/vio-lab assets`): %w", dir, err)
	}
	var a Assets
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("lab assets manifest %s is corrupt: %w", filepath.Join(dir, manifestName), err)
	}
	for _, p := range []string{a.Kernel, a.ModulesDir, a.Busybox} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("lab assets in %s are incomplete: %w", dir, err)
		}
	}
	return &a, nil
}

// Ensure returns the assets in dir, fetching and unpacking them first if
// they are not there. log receives one line per step taken (may be nil).
func Ensure(ctx context.Context, dir string, log func(string)) (*Assets, error) {
	if a, err := Load(dir); err == nil {
		return a, nil
	}
	if log == nil {
		log = func(string) {}
	}
	for _, tool := range []string{"apt-get", "apt-cache", "dpkg-deb"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("the lab takes its guest kernel from Debian packages, but %s is not installed: run the lab on Debian 12", tool)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	kpkg, err := kernelPackage(ctx)
	if err != nil {
		return nil, err
	}
	dl := filepath.Join(dir, "debs")
	if err := os.MkdirAll(dl, 0o755); err != nil {
		return nil, err
	}
	log("downloading " + kpkg + " and busybox-static")
	if out, err := run(ctx, dl, "apt-get", "download", "-q", kpkg, "busybox-static"); err != nil {
		return nil, fmt.Errorf("apt-get download %s busybox-static failed (try `apt-get update` first): %w\n%s", kpkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	root := filepath.Join(dir, "root")
	if err := os.RemoveAll(root); err != nil {
		return nil, err
	}
	for _, deb := range debs {
		log("unpacking " + filepath.Base(deb))
		if out, err := run(ctx, dl, "dpkg-deb", "-x", deb, root); err != nil {
			return nil, fmt.Errorf("dpkg-deb -x %s: %w\n%s", deb, err, out)
		}
	}
	kver := strings.TrimPrefix(kpkg, "linux-image-")
	a := &Assets{
		Dir:           dir,
		KernelVersion: kver,
		Kernel:        filepath.Join(root, "boot", "vmlinuz-"+kver),
		ModulesDir:    filepath.Join(root, "lib", "modules", kver),
		Busybox:       filepath.Join(root, "bin", "busybox"),
	}
	b, _ := json.MarshalIndent(a, "", "  ")
	// Written last: its presence means the cache is complete.
	if err := os.WriteFile(filepath.Join(dir, manifestName), append(b, '\n'), 0o644); err != nil {
		return nil, err
	}
	for _, deb := range debs {
		os.Remove(deb)
	}
	return Load(dir)
}

var kernelDep = regexp.MustCompile(`Depends: (linux-image-[0-9][^\s]*-amd64)\b`)

// kernelPackage names the versioned package behind linux-image-amd64, the
// plain flavour (the cloud flavour lacks e1000 and MP tables).
func kernelPackage(ctx context.Context) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", "linux-image-amd64")
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-amd64: %w (run `apt-get update`)", err)
	}
	m := kernelDep.FindSubmatch(out)
	if m == nil {
		return "", errors.New("apt-cache knows no linux-image-amd64 kernel: run `apt-get update`")
	}
	return string(m[1]), nil
}

func run(ctx context.Context, dir, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	err := cmd.Run()
	return buf.Bytes(), err
}

// HostPackages are the Debian packages the lab needs on the host.
var HostPackages = []string{"qemu-system-x86", "qemu-utils", "cpio"}

// MissingHostTools reports which host commands the lab needs but cannot find,
// with the apt-get command that installs them ("" when nothing is missing).
func MissingHostTools() string {
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		return "apt-get install -y " + strings.Join(HostPackages, " ")
	}
	return ""
}
