// Command vio-lab runs commands on a real, hardware-style KVM inside a
// software-emulated lab VM, for hosts whose /dev/kvm cannot boot Linux
// guests (see shared/LAB.md). It is a test rig beside vio.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/lab"
	"github.com/viovmm/vio/lab/assets"
	"github.com/viovmm/vio/lab/debian"
	"github.com/viovmm/vio/lab/initramfs"
)

func main() {
	root := &cobra.Command{
		Use:           "vio-lab",
		Short:         "Run commands with a real KVM inside an emulated-SVM lab VM",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(assetsCmd(), initramfsCmd(), execCmd(), debianImageCmd())
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := root.ExecuteContext(ctx)
	stop()
	var exit *lab.ExitError
	switch {
	case errors.As(err, &exit):
		os.Exit(exit.Code)
	case err != nil:
		fmt.Fprintln(os.Stderr, "vio-lab:", err)
		os.Exit(2)
	}
}

func assetsCmd() *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "assets",
		Short: "Fetch (once) the Debian guest kernel, modules and busybox; print where they are",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if missing := assets.MissingHostTools(); missing != "" {
				fmt.Fprintf(os.Stderr, "vio-lab: the lab needs QEMU on this host: run `%s`\n", missing)
			}
			a, err := assets.Ensure(c.Context(), dir, func(s string) { fmt.Fprintln(os.Stderr, "vio-lab:", s) })
			if err != nil {
				return err
			}
			fmt.Printf("cache:    %s\nkernel:   %s (%s)\nmodules:  %s\nbusybox:  %s\n",
				a.Dir, a.Kernel, a.KernelVersion, a.ModulesDir, a.Busybox)
			return nil
		},
	}
	c.Flags().StringVar(&dir, "cache", assets.DefaultDir(), "asset cache directory (env VIO_LAB_CACHE)")
	return c
}

func debianImageCmd() *cobra.Command {
	var out, dir, mirror string
	c := &cobra.Command{
		Use:   "debian-image -o FILE [--mirror URL]",
		Short: "Build (once, then from the cache) a Debian " + debian.Suite + " disk image that boots with GRUB or vio, and copy it to FILE",
		Long: `Builds a Debian ` + debian.Suite + ` disk image with debootstrap from the host's apt mirror:
Debian's kernel and initramfs, systemd, udev, cloud-init, dmidecode and GRUB
for BIOS boot, on a GPT disk (a BIOS boot partition and an ext4 root) in a
sparse raw file. The first build takes many minutes and needs root; the image
is cached (--cache) and later runs only copy it to FILE.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if out == "" {
				return errors.New("debian-image needs -o FILE, the image to write")
			}
			info, err := debian.Ensure(c.Context(), dir, mirror, func(s string) { fmt.Fprintln(os.Stderr, "vio-lab:", s) })
			if err != nil {
				return err
			}
			if err := debian.Copy(info.Image, out); err != nil {
				return err
			}
			fmt.Printf("image:     %s (raw, %d MiB, sparse)\nkernel:    %s\nroot UUID: %s\nboot it:   vio run --disk path=%s,format=raw --memory 1G --cloud-init user-data=USER-DATA\n",
				out, debian.SizeBytes>>20, info.Kernel, info.RootUUID, out)
			return nil
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "image file to write (a sparse copy of the cached image)")
	c.Flags().StringVar(&dir, "cache", assets.DefaultDir(), "cache directory (env VIO_LAB_CACHE)")
	c.Flags().StringVar(&mirror, "mirror", "", "Debian mirror URL (default: the host's, from /etc/apt/sources.list*)")
	return c
}

func initramfsCmd() *cobra.Command {
	var out, init string
	var modules []string
	var adds []string
	c := &cobra.Command{
		Use:   "initramfs -o OUT.cpio.gz --init PROGRAM [--modules a,b] [--add SRC[:DST]]... [-- ARGS]",
		Short: "Build a guest initramfs: busybox, kernel modules (with dependencies), files, and an init program",
		RunE: func(c *cobra.Command, args []string) error {
			if out == "" || init == "" {
				return errors.New("initramfs needs -o OUT.cpio.gz and --init PROGRAM")
			}
			a, err := assets.Ensure(c.Context(), assets.DefaultDir(), nil)
			if err != nil {
				return err
			}
			b := initramfs.New()
			b.Busybox(a.Busybox)
			if len(modules) > 0 {
				mods, err := initramfs.OpenModules(a.ModulesDir)
				if err != nil {
					return err
				}
				b.Modules(mods, modules...)
			}
			for _, spec := range adds {
				src, dst, ok := strings.Cut(spec, ":")
				if !ok {
					dst = src
				}
				if _, err := os.Stat(src); err != nil {
					return fmt.Errorf("--add %s: %w", spec, err)
				}
				b.Executable(dst, src)
			}
			if _, err := os.Stat(init); err != nil {
				return fmt.Errorf("--init: %w", err)
			}
			b.Executable("/sbin/vio-init", init)
			b.Init("/sbin/vio-init", args...)
			return b.WriteFile(out)
		},
	}
	c.Flags().StringVarP(&out, "output", "o", "", "initramfs file to write")
	c.Flags().StringVar(&init, "init", "", "program (script or binary) the guest runs as init")
	c.Flags().StringSliceVar(&modules, "modules", nil, "kernel modules to load first (comma-separated)")
	c.Flags().StringArrayVar(&adds, "add", nil, "host file to add, SRC or SRC:DST (dynamic executables bring their libraries)")
	return c
}

func execCmd() *cobra.Command {
	var cfg lab.Config
	var memory string
	var nvme []string
	var verbose bool
	c := &cobra.Command{
		Use:   "exec [flags] -- CMD [ARGS...]",
		Short: "Boot the lab VM, run CMD in it as root with a real /dev/kvm, and exit with its status",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			mib, err := parseMiB(memory)
			if err != nil {
				return err
			}
			cfg.MemoryMiB = mib
			for _, spec := range nvme {
				n, err := parseNVMe(spec)
				if err != nil {
					return err
				}
				cfg.NVMe = append(cfg.NVMe, n)
			}
			if verbose {
				cfg.Verbose = os.Stderr
			}
			return lab.Exec(c.Context(), cfg, args, os.Stdout, os.Stderr)
		},
	}
	f := c.Flags()
	f.IntVar(&cfg.CPUs, "cpus", 2, "vCPUs of the lab VM")
	f.StringVar(&memory, "memory", "4G", "RAM of the lab VM (e.g. 2048M, 4G)")
	f.BoolVar(&cfg.IOMMU, "iommu", false, "q35 machine with an emulated Intel IOMMU (for VFIO)")
	f.StringArrayVar(&nvme, "nvme", nil, "emulated NVMe controller: file=IMG[,size=64M][,vfs=N][,serial=S]")
	f.BoolVar(&cfg.NICPair, "nic-pair", false, "two NICs on one wire (implies --iommu): an e1000e ("+lab.NICPairPassMAC+") to pass through with vfio-pci, an e1000 ("+lab.NICPairPeerMAC+") for L1 (docs/failover.md)")
	f.DurationVar(&cfg.Timeout, "timeout", 10*time.Minute, "deadline for the whole run; L1 is killed on expiry")
	f.StringArrayVar(&cfg.Shares, "share", nil, "host directory to make writable in the lab (the working directory always is)")
	f.StringArrayVar(&cfg.Env, "env", nil, "KEY=VALUE for the command's environment")
	f.BoolVarP(&verbose, "verbose", "v", false, "copy the lab VM's console to stderr")
	return c
}

func parseMiB(s string) (int, error) {
	mult := 1
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1024, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		s = strings.TrimSuffix(s, "M")
	}
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("--memory %q: want a size such as 2048M or 4G", s)
	}
	return n * mult, nil
}

func parseNVMe(spec string) (lab.NVMe, error) {
	var n lab.NVMe
	for _, kv := range strings.Split(spec, ",") {
		k, v, _ := strings.Cut(kv, "=")
		var err error
		switch k {
		case "file":
			n.Image = v
		case "serial":
			n.Serial = v
		case "vfs":
			n.VFs, err = strconv.Atoi(v)
		case "size":
			var mib int
			mib, err = parseMiB(v)
			n.Size = int64(mib) << 20
		default:
			return n, fmt.Errorf("--nvme %q: unknown key %q (want file=, size=, vfs=, serial=)", spec, k)
		}
		if err != nil {
			return n, fmt.Errorf("--nvme %q: %v", spec, err)
		}
	}
	if n.Image == "" {
		return n, fmt.Errorf("--nvme %q: file=IMG is required", spec)
	}
	return n, nil
}
