package main

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
	"github.com/viovmm/vio/vmm"
)

// `vio serve-disk --socket PATH --disk SPEC` serves a disk as a
// vhost-user-blk back-end, as qemu-storage-daemon's vhost-user-blk export
// does: QEMU (vhost-user-blk-pci), Cloud Hypervisor or vio connect to the
// socket and the guest's requests run in this process. The work lives in
// package vhostuser (Backend) and vmm.OpenServedDisk; this file wires
// flags to them. See docs/vhost-user.md.

func init() { subcommands = append(subcommands, serveDiskCommand) }

func serveDiskCommand() *cobra.Command {
	var socket, diskSpec string
	var queues, maxConns, verbose int
	c := &cobra.Command{
		Use:   "serve-disk --socket PATH --disk SPEC",
		Short: "Serve a disk to QEMU, Cloud Hypervisor or vio as a vhost-user-blk back-end",
		Long: `Serve a disk as a vhost-user-blk back-end on a UNIX socket until interrupted
(SIGINT, SIGTERM), then stop the rings, flush the disk and close it.

SPEC takes the keys of vio run's --disk (path=FILE, format=raw|qcow2,
readonly=on, cache=MODE, serial=S, num_queues=N, queue_size=N, throttle=...,
bw_*/ops_* rate limits, journal=LOG, encrypt=on,...), so any disk vio can
attach to its own guests can be served to another VMM. The socket is created
with mode 0600: the front-end must run as the same user.

A front-end that disconnects (a VMM that exits or restarts) can connect
again; at most --max-connections front-ends are served at once, each with a
device of its own over the same disk (give more than 1 only to front-ends
that share the disk safely, such as a cluster file system or read-only
disks). For example, with QEMU:

  vio serve-disk --socket /run/vm1-disk.sock --disk path=disk.qcow2,format=qcow2 &
  qemu-system-x86_64 -object memory-backend-memfd,id=mem,size=1G,share=on \
    -machine memory-backend=mem -chardev socket,id=vu,path=/run/vm1-disk.sock \
    -device vhost-user-blk-pci,chardev=vu,num-queues=1 ...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if socket == "" {
				return errors.New("--socket PATH is required: the UNIX socket the front-end connects to, e.g. --socket /run/vm1-disk.sock")
			}
			if diskSpec == "" {
				return errors.New("--disk SPEC is required, e.g. --disk path=disk.raw,format=raw")
			}
			if queues < 1 || queues > blk.MaxNumQueues {
				return fmt.Errorf("--num-queues %d: give 1 to %d", queues, blk.MaxNumQueues)
			}
			if maxConns < 1 {
				return fmt.Errorf("--max-connections %d: give at least 1", maxConns)
			}
			d, err := config.ParseDisk(diskSpec)
			if err != nil {
				return err
			}
			if d.Path == "" && d.Graph == nil {
				return errors.New("--disk needs path=FILE: a served disk cannot be an empty drive")
			}
			if _, err := os.Lstat(socket); err == nil {
				return fmt.Errorf("--socket %s already exists: remove it if no back-end serves it any more, or choose another path", socket)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("--socket %s: %w", socket, err)
			}
			warn := func(msg string) { fmt.Fprintln(cmd.ErrOrStderr(), "vio: warning: "+msg) }
			be, bcfg, err := vmm.OpenServedDisk(&d, queues, warn)
			if err != nil {
				return fmt.Errorf("opening the disk: %w", err)
			}
			defer be.Close()
			bcfg.OnBackendError = func(op string, err error) {
				fmt.Fprintf(cmd.ErrOrStderr(), "vio: disk %s failed: %v\n", op, err)
			}
			// Check the configuration once, before anyone connects.
			if _, err := blk.New(be, bcfg); err != nil {
				return err
			}
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
			if err != nil {
				return fmt.Errorf("listening on %s: %w", socket, err)
			}
			defer l.Close() // also removes the socket file
			if err := os.Chmod(socket, 0o600); err != nil {
				return fmt.Errorf("restricting %s to this user: %w", socket, err)
			}
			log := logger(verbose)
			b := &vhostuser.Backend{
				NewDevice: func() (virtio.QueueServer, error) { return blk.New(be, bcfg) },
				MaxConns:  maxConns,
				Log:       log,
				OnError: func(req vhostuser.Request, err error) {
					log.Info("vhost-user request refused", "request", req, "err", err)
				},
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "vio: serving %s (%d bytes%s, %d queues) as vhost-user-blk on %s\n",
				diskName(&d), be.Size(), map[bool]string{true: ", read-only"}[bcfg.ReadOnly], bcfg.NumQueues, socket)
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := b.Serve(ctx, l); err != nil {
				return err
			}
			// Every ring has stopped: what the guests wrote is on the disk
			// or in its cache; flush the cache before closing.
			if err := be.Flush(); err != nil {
				return fmt.Errorf("flushing the disk: %w", err)
			}
			return nil
		},
	}
	fl := c.Flags()
	fl.StringVar(&socket, "socket", "", "UNIX socket to listen on (created, mode 0600; removed on exit)")
	fl.StringVar(&diskSpec, "disk", "", "the disk, with vio run's --disk keys: path=FILE[,format=raw|qcow2][,readonly=on][,cache=MODE]...")
	fl.IntVar(&queues, "num-queues", 1, "request queues offered, when the --disk spec has no num_queues")
	fl.IntVar(&maxConns, "max-connections", 1, "front-ends served at once, each a device of its own over the disk; more wait")
	fl.CountVarP(&verbose, "verbose", "v", "log connections and refused requests to stderr (-vv: more)")
	return c
}

func diskName(d *config.Disk) string {
	if d.Path != "" {
		return d.Path
	}
	return "the disk graph"
}
