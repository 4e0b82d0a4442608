// Package debian boots a real Debian bookworm disk image as users run one:
// built by debootstrap (lab/debian), booted by vio from the disk alone with
// a cloud-init seed, and by QEMU with SeaBIOS and the image's own GRUB as
// the baseline, in one lab. Opt-in: `make test-distro` (VIO_DISTRO=1).
package debian

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/viovmm/vio/internal/suite"
	"github.com/viovmm/vio/lab/assets"
	debimage "github.com/viovmm/vio/lab/debian"
	"github.com/viovmm/vio/lab/labtest"
)

// vioBin is the vio binary under test, built on the host by TestMain and
// handed to the lab run through VIO_BIN; imagePath is the cached Debian
// image (never written: each boot gets an overlay), through
// VIO_DEBIAN_IMAGE.
var (
	vioBin    = os.Getenv("VIO_BIN")
	imagePath = os.Getenv("VIO_DEBIAN_IMAGE")
)

func TestMain(m *testing.M) {
	if os.Getenv("VIO_DISTRO") != "1" && !labtest.Inside() {
		// Opt-in: the first run debootstraps an image (minutes, network,
		// root), and two full systemd boots in nested TCG take a lab for
		// many minutes.
		fmt.Printf("%sa real Debian image booted by vio and QEMU: run it with make test-distro (VIO_DISTRO=1)\n", suite.LayerSkipPrefix)
		fmt.Println("PASS")
		os.Exit(0)
	}
	if vioBin == "" && !labtest.Inside() {
		dir, err := os.MkdirTemp("", "vio-debian-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		vioBin = filepath.Join(dir, "vio")
		if err := labtest.Build(vioBin, "../../cmd/vio"); err != nil {
			fmt.Fprintln(os.Stderr, "debian:", err)
			os.Exit(1)
		}
		os.Setenv("VIO_BIN", vioBin)
		// The image is built (or found in the cache) here on the host,
		// which has the network and a writable cache; the lab reads it
		// through its read-only view of the host's file system.
		info, err := debimage.Ensure(context.Background(), assets.DefaultDir(), "", func(s string) { fmt.Println("debian:", s) })
		if err != nil {
			fmt.Fprintln(os.Stderr, "debian:", err)
			os.Exit(1)
		}
		fmt.Printf("debian: image %s (kernel %s; debootstrap took %.0f s, the whole build %.0f s, on %s)\n",
			info.Image, info.Kernel, info.DebootstrapSec, info.BuildSeconds, info.Built)
		os.Setenv("VIO_DEBIAN_IMAGE", info.Image)
		imagePath = info.Image
		code := labtest.Run(m)
		os.RemoveAll(dir)
		os.Exit(code)
	}
	os.Exit(labtest.Run(m))
}
