package main

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/vmm"
)

func init() { subcommands = append(subcommands, runCommand) }

func runCommand() *cobra.Command {
	var (
		file, memory, serial, console, onReboot string
		apiSocket, restore, vsockSpec           string
		prefault                                bool
		disks, nets, devices                    []string
		balloonSpec, platformSpec               string
		cloudInitSpec                           string
		shutdownTimeout                         time.Duration
		cpus                                    int
		verbose, allowPVM, stats                bool
		obs                                     observeFlags
		sb                                      sandboxFlags
		jailSpec                                string
	)
	cfg := config.Default()
	c := &cobra.Command{
		Use:   "run (--kernel BZIMAGE [--initrd FILE] | --disk path=IMAGE) [--cmdline S] [--cpus N] [--memory SIZE] [flags]",
		Short: "Boot a Linux guest",
		Long: `Boot a Linux guest from a bzImage, or, with no --kernel, the kernel and
initramfs a distribution's disk image carries (its grub.cfg's default entry or
its /vmlinuz links; see docs/distro.md). The serial console is on stdin/stdout
unless --serial says otherwise; press Ctrl-A then x to stop the VM from a terminal.
Flags override what --config FILE (a JSON VM config) says.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if restore != "" {
				var bad string
				c.Flags().Visit(func(f *pflag.Flag) {
					if !restoreFlags[f.Name] && bad == "" {
						bad = f.Name
					}
				})
				if bad != "" {
					return fmt.Errorf("--restore takes the VM's config from the snapshot: drop --%s", bad)
				}
				return run(c, nil, runOptions{shutdownTimeout: shutdownTimeout, verbose: verbose, allowPVM: allowPVM, stats: stats, apiSocket: apiSocket, restore: restore, prefault: prefault, obs: obs, sandbox: sb, jail: jailSpec})
			}
			if file != "" {
				loaded, err := config.Load(file)
				if err != nil {
					return err
				}
				*cfg = *loaded
			}
			f := c.Flags()
			if f.Changed("kernel") || file == "" {
				cfg.Payload.Kernel, _ = f.GetString("kernel")
			}
			if f.Changed("initrd") {
				cfg.Payload.Initramfs, _ = f.GetString("initrd")
			}
			if f.Changed("cmdline") {
				cfg.Payload.Cmdline, _ = f.GetString("cmdline")
			}
			if f.Changed("cpus") {
				cfg.CPUs.BootVCPUs = cpus
			}
			if f.Changed("memory") {
				m, err := config.ParseMemory(memory)
				if err != nil {
					return err
				}
				cfg.Memory.Size, cfg.Memory.Shared = m.Size, m.Shared
			}
			if f.Changed("serial") {
				s, err := config.ParseConsole("serial", serial)
				if err != nil {
					return err
				}
				cfg.Serial = s
			}
			if f.Changed("console") {
				s, err := config.ParseConsole("console", console)
				if err != nil {
					return err
				}
				cfg.Console = s
			}
			if iommu, _ := f.GetBool("iommu"); iommu {
				cfg.IOMMU = true
			}
			if rng, _ := f.GetBool("rng"); rng {
				cfg.RNG = &config.RNG{Src: "/dev/urandom"}
			}
			if f.Changed("balloon") {
				b, err := config.ParseBalloon(balloonSpec)
				if err != nil {
					return err
				}
				cfg.Balloon = b
			}
			if f.Changed("platform") {
				p, err := config.ParsePlatform(platformSpec)
				if err != nil {
					return err
				}
				if cfg.Platform != nil {
					p.NumPCISegments, p.OEMStrings = cfg.Platform.NumPCISegments, cfg.Platform.OEMStrings
				}
				cfg.Platform = p
			}
			if f.Changed("vsock") {
				vs, err := config.ParseVsock(vsockSpec)
				if err != nil {
					return err
				}
				cfg.Vsock = &vs
			}
			if f.Changed("cloud-init") {
				ci, err := config.ParseCloudInit(cloudInitSpec)
				if err != nil {
					return err
				}
				cfg.CloudInit = ci
			}
			if f.Changed("on-reboot") {
				cfg.OnReboot = onReboot
			}
			for _, d := range disks {
				disk, err := config.ParseDisk(d)
				if err != nil {
					return err
				}
				cfg.Disks = append(cfg.Disks, disk)
			}
			for _, spec := range devices {
				d, err := config.ParseDevice(spec)
				if err != nil {
					return err
				}
				cfg.Devices = append(cfg.Devices, d)
			}
			for _, n := range nets {
				net, err := config.ParseNet(n)
				if err != nil {
					return err
				}
				cfg.Net = append(cfg.Net, net)
			}
			if jailSpec != "" && len(cfg.Devices) > 0 {
				return fmt.Errorf("--jail with a pass-through --device is not supported yet: the jail has no /dev/vfio; drop one of them")
			}
			return run(c, cfg, runOptions{shutdownTimeout: shutdownTimeout, verbose: verbose, allowPVM: allowPVM, stats: stats, apiSocket: apiSocket, restore: restore, prefault: prefault, obs: obs, sandbox: sb, jail: jailSpec})
		},
	}
	f := c.Flags()
	f.StringVar(&file, "config", "", "JSON VM config file (Cloud Hypervisor VmConfig shape)")
	f.String("kernel", "", "Linux bzImage to boot (none: boot the first disk's own kernel, see docs/distro.md)")
	f.String("initrd", "", "initramfs to load")
	f.String("cmdline", config.DefaultCmdline, "kernel command line (booting a disk's own kernel: parameters added to the image's)")
	f.IntVar(&cpus, "cpus", 1, "number of vCPUs")
	f.StringVar(&memory, "memory", "512M", "guest RAM: SIZE or size=SIZE[,shared=on] (shared: memfd-backed, for vhost-user and migration)")
	f.StringVar(&serial, "serial", "tty", "serial console: tty, off, null, file=PATH, socket=PATH")
	f.StringVar(&console, "console", "off", "virtio console: tty, off, null, file=PATH, socket=PATH")
	f.StringVar(&onReboot, "on-reboot", "restart", "what a guest reboot does: restart or exit")
	f.StringArrayVar(&disks, "disk", nil, "disk: path=FILE[,iface=virtio|ide|cdrom][,format=raw|qcow2][,readonly=on][,cache=MODE][,serial=S][,backing=allow] (repeatable; see docs/disks.md)")
	f.StringArrayVar(&devices, "device", nil, "host PCI device to pass through with VFIO: path=/sys/bus/pci/devices/DDDD:BB:DD.F[,id=ID] (bound to vfio-pci; repeatable; docs/vfio.md)")
	f.StringArrayVar(&nets, "net", nil, "NIC: tap=NAME, user=on[,net=CIDR][,hostfwd=FWD[+FWD]][,dns_upstream=ADDR[:PORT]] or socket=PATH|tcp:HOST:PORT (socket=A+B,bond=active-backup|balance for a bond), with [,firewall=FILE][,pcap=FILE][,ids=SOCK[,ids_mode=ips]][,mac=MAC][,model=virtio|e1000][,queues=N (queue pairs, on a TAP)][,vhost=on (the kernel's vhost-net, on a TAP)] (repeatable; docs/network.md)")
	f.Bool("rng", false, "add a virtio-rng device fed by the host's getrandom")
	f.Bool("iommu", false, "put every PCI device behind an emulated Intel VT-d IOMMU (the guest needs intel_iommu=on; see docs/iommu.md)")
	f.StringVar(&platformSpec, "platform", "", "the machine's SMBIOS identity: serial_number=S,uuid=U,manufacturer=M,product_name=P,version=V,family=F,sku_number=K,asset_tag=T (see docs/devices.md)")
	f.StringVar(&cloudInitSpec, "cloud-init", "", "attach a cloud-init NoCloud seed disk: user-data=FILE[,meta-data=FILE][,network-config=FILE] (see docs/distro.md)")
	f.StringVar(&balloonSpec, "balloon", "", "virtio-balloon: size=SIZE[,deflate_on_oom=on][,free_page_reporting=on] (see docs/balloon.md)")
	f.StringVar(&vsockSpec, "vsock", "", "virtio-vsock device: cid=CID,socket=PATH (host side on a UNIX socket; see docs/vsock.md)")
	f.DurationVar(&shutdownTimeout, "shutdown-timeout", 30*time.Second, "on SIGINT/SIGTERM, press the guest's ACPI power button and wait this long for it to power off before stopping it hard (exit status 1); 0 stops it at once")
	f.BoolVar(&stats, "stats", false, "print per-vCPU and per-device counters (JSON, stderr) when the guest stops")
	f.StringVar(&apiSocket, "api-socket", "", "also serve the REST API for this VM on a UNIX socket (see docs/api.md)")
	f.StringVar(&restore, "restore", "", "run the VM of a snapshot (file:///DIR, see docs/snapshot.md) instead of booting one")
	f.BoolVar(&prefault, "prefault", false, "with --restore: read all of guest RAM before the guest runs, not as it touches it")
	f.BoolVarP(&verbose, "verbose", "v", false, "log what vio does to stderr")
	f.BoolVar(&allowPVM, "allow-pvm", false, "run even on a PVM-only KVM (standard guests run ~1000x slower)")
	f.MarkHidden("allow-pvm")
	obs.add(f)
	sb.add(f)
	f.StringVar(&jailSpec, "jail", "", "run jailed once the VM is built, as Firecracker's jailer does: new mount, PID, IPC and UTS namespaces, a root holding only the VM's files, as this unprivileged user (uid=N,gid=N[,dir=PATH]; needs root; see docs/security.md)")
	return c
}

// stopOnSignal answers the first SIGINT or SIGTERM: with a shutdown
// timeout it presses the guest's ACPI power button and gives the guest that
// long to shut down and power off, as a PC's power button would (a second
// signal, or Ctrl-A x, stops it at once); with none it stops the guest at
// once. It returns the error vio should exit with if the guest had to be
// stopped hard: a power cut must not look like success.
func stopOnSignal(ctl *vmm.Controller, sig os.Signal, more <-chan os.Signal, quit <-chan struct{}, timeout time.Duration) error {
	why := "stopped by " + sig.String()
	if timeout <= 0 {
		ctl.Stop(why)
		return nil
	}
	now := make(chan struct{})
	done := make(chan struct{})
	defer close(done)
	go func() {
		select {
		case <-more:
		case <-quit:
		case <-done:
			return
		}
		close(now)
	}()
	fmt.Fprintf(os.Stderr, "vio: %s: pressed the guest's power button; waiting up to %v for it to power off (signal again to stop it at once)\n", sig, timeout)
	if err := ctl.StopGracefully(timeout, why, now); err != nil {
		return exitError{code: 1, msg: err.Error()}
	}
	return nil
}

// restoreFlags are the flags that go with --restore: everything else
// describes the VM, which comes from the snapshot.
var restoreFlags = map[string]bool{
	"restore": true, "prefault": true, "api-socket": true, "stats": true, "verbose": true, "allow-pvm": true,
	"shutdown-timeout": true, "event-monitor": true, "metrics": true,
	"sandbox": true, "sandbox-allow": true, "jail": true,
}

type runOptions struct {
	shutdownTimeout          time.Duration
	verbose, allowPVM, stats bool
	apiSocket                string
	restore                  string // a snapshot URL: restore instead of boot
	prefault                 bool
	obs                      observeFlags
	sandbox                  sandboxFlags
	jail                     string // --jail's spec
}

// run boots cfg and waits until the guest stops for good (poweroff, panic,
// a reboot with --on-reboot=exit, vm.shutdown or vmm.shutdown through the
// API, SIGINT/SIGTERM).
func run(c *cobra.Command, cfg *config.VM, o runOptions) error {
	if did, err := jailed(o.jail); did {
		return err // the jailed child ran the VM
	}
	level := slog.LevelWarn
	if o.verbose {
		level = slog.LevelInfo
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// The first SIGINT or SIGTERM shuts the guest down gracefully (see
	// stopOnSignal); Ctrl-A x on the console stops it at once.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	quit := make(chan struct{})
	var quitOnce sync.Once
	stop := func() { quitOnce.Do(func() { close(quit) }) }

	if o.restore != "" {
		// The console wiring depends on the saved config; a bad URL or
		// snapshot is reported by the restore itself.
		if saved, err := vmm.ReadSnapshotConfig(strings.TrimPrefix(o.restore, "file://")); err == nil {
			cfg = saved
		} else {
			cfg = config.Default()
		}
	}
	stdio := vmm.IO{Stdout: os.Stdout}
	if cfg.Serial.Mode == config.ModeTty || cfg.Serial.Mode == "" || cfg.Console.Mode == config.ModeTty {
		in, restore, err := terminalInput(os.Stdin, stop)
		if err != nil {
			return err
		}
		defer restore()
		stdio.Stdin = in
	}
	mon := events.NewMonitor()
	opts := vmm.Options{AllowPVM: o.allowPVM, Log: log, Events: mon}
	if o.stats {
		opts.Stats = os.Stderr
	}
	stdio = vmm.ShareInput(stdio) // one reader of stdin for every VM a reboot or restore makes
	ctl := vmm.NewController(vmm.Builder(stdio, opts), log)
	ctl.SetRestore(vmm.Restorer(stdio, opts))
	ctl.SetReceive(vmm.Receiver(stdio, opts))
	defer ctl.Delete()
	ctl.SetEvents(mon)
	stopObs, err := o.obs.start(ctl, mon, log)
	if err != nil {
		return err
	}
	defer func() { ctl.Delete(); stopObs() }()
	if o.restore == "" {
		if err := ctl.Create(cfg); err != nil {
			return err
		}
	}
	if o.apiSocket != "" {
		l, err := api.Listen(o.apiSocket, log)
		if err != nil {
			return err
		}
		srv := api.NewServer(ctl, log)
		srv.SetEvents(mon)
		go srv.Serve(l)
		defer srv.Close()
	}
	// Confined once the VM is built (what it opened is known, and a
	// rebuild after a guest reboot opens the same) and before its vCPUs
	// start: the guest never runs an instruction unconfined.
	ctl.SetBeforeStart(func() error { return o.confine(cfg, log) })
	if o.restore != "" {
		if err := ctl.Restore(o.restore, vmm.RestoreOptions{Prefault: o.prefault}); err != nil {
			return err
		}
		if err := ctl.Resume(); err != nil {
			return err
		}
	} else {
		if err := ctl.Boot(); err != nil {
			return err
		}
	}
	var hard error
	select {
	case <-ctl.Stopped():
	case <-quit:
		ctl.Stop("stopped from the console (Ctrl-A x)")
	case sig := <-sigs:
		hard = stopOnSignal(ctl, sig, sigs, quit, o.shutdownTimeout)
	}
	exit, err := ctl.LastExit()
	if err != nil {
		return err
	}
	if hard != nil && exit.Reason == vmm.ExitStopped {
		return hard
	}
	switch exit.Reason {
	case vmm.ExitPoweroff, vmm.ExitStopped:
		return nil
	case vmm.ExitReboot:
		// Say how: a triple fault is a crash the guest could not report,
		// and its registers are all there is to go on.
		fmt.Fprintf(os.Stderr, "vio: guest rebooted (%s); exiting as --on-reboot=exit asks\n", cmp.Or(exit.Detail, "no detail"))
		return nil
	case vmm.ExitPanic:
		return exitError{code: 3, msg: "guest kernel panicked: " + exit.Detail}
	}
	return errors.New("guest stopped: " + exit.Detail)
}
