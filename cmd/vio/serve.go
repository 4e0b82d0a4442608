package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/events"
	"github.com/viovmm/vio/vmm"
)

func init() { subcommands = append(subcommands, serveCommand) }

// serveFlags are the flags of `vio serve`, which the root command takes
// too: Kata Containers starts its VMM as `BINARY --api-socket PATH`.
type serveFlags struct {
	socket   string
	verbose  int
	allowPVM bool
	seccomp  string
	obs      observeFlags
	sandbox  sandboxFlags
}

func (f *serveFlags) add(c *cobra.Command) {
	fl := c.Flags()
	fl.StringVar(&f.socket, "api-socket", "", "serve the REST API (Cloud Hypervisor's) on this UNIX socket")
	fl.CountVarP(&f.verbose, "verbose", "v", "log what vio does to stderr (-vv: more)")
	fl.BoolVar(&f.allowPVM, "allow-pvm", false, "run even on a PVM-only KVM (standard guests run ~1000x slower)")
	fl.MarkHidden("allow-pvm")
	// Cloud Hypervisor's flag, which Kata may pass: true, false or log,
	// the same as --sandbox=on, off or log.
	fl.StringVar(&f.seccomp, "seccomp", "", "Cloud Hypervisor's form of --sandbox: true, false or log")
	fl.MarkHidden("seccomp")
	f.obs.add(fl)
	f.sandbox.add(fl)
}

func serveCommand() *cobra.Command {
	var f serveFlags
	c := &cobra.Command{
		Use:   "serve --api-socket PATH",
		Short: "Serve the REST API and run the VM it creates",
		Long: `Serve Cloud Hypervisor's REST API on a UNIX socket (mode 0600, same user only).
There is no VM until a client sends vm.create; vmm.shutdown ends vio. The guest's
serial console, if it is Tty, goes to stdout. See docs/api.md.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error { return serve(c.Context(), f) },
	}
	f.add(c)
	return c
}

func logger(verbose int) *slog.Logger {
	level := slog.LevelWarn
	switch {
	case verbose == 1:
		level = slog.LevelInfo
	case verbose > 1:
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

// serve runs an API server with no VM until vmm.shutdown, SIGINT or
// SIGTERM.
func serve(ctx context.Context, f serveFlags) error {
	if f.socket == "" {
		return fmt.Errorf("no --api-socket given: name the UNIX socket to serve the API on, e.g. --api-socket /run/vio.sock")
	}
	log := logger(f.verbose)
	if f.seccomp != "" {
		f.sandbox.mode = f.seccomp
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	// No terminal input: a served VMM is driven by its API, not a user.
	mon := events.NewMonitor()
	stdio, opts := vmm.IO{Stdout: os.Stdout}, vmm.Options{AllowPVM: f.allowPVM, Log: log, Events: mon}
	ctl := vmm.NewController(vmm.Builder(stdio, opts), log)
	ctl.SetRestore(vmm.Restorer(stdio, opts))
	ctl.SetReceive(vmm.Receiver(stdio, opts))
	defer ctl.Delete()
	ctl.SetEvents(mon)
	stopObs, err := f.obs.start(ctl, mon, log)
	if err != nil {
		return err
	}
	defer func() { ctl.Delete(); stopObs() }()
	l, err := api.Listen(f.socket, log)
	if err != nil {
		return err
	}
	// Confined before the first request: every VM it builds is built
	// under the sandbox, as a guest reboot's is in vio run.
	if err := f.sandbox.confine(servePolicy(f.socket, f.obs, f.sandbox.allow), log); err != nil {
		l.Close()
		return err
	}
	srv := api.NewServer(ctl, log)
	srv.SetEvents(mon)
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	log.Info("serving the API", "socket", f.socket)
	return srv.Serve(l)
}
