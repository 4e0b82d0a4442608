package main

import (
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/block/qos"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/devices/virtio/blk"
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
	var diskSpec string
	var sockets []string
	qf := qosFlags{depth: qos.DefaultDepth}
	var queues, maxConns, verbose int
	c := &cobra.Command{
		Use:   "serve-disk --socket PATH[,r=,w=,l=] [--socket ...] --disk SPEC",
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
    -device vhost-user-blk-pci,chardev=vu,num-queues=1 ...

Several VMs sharing one disk get a socket each, and a share of the disk:
every request goes through one mClock scheduler in which each socket is a
client with a reservation (r=, IOPS it is guaranteed), a weight (w=, its
share of what the reservations leave) and a limit (l=, IOPS it never
exceeds), changeable at run time over --control:

  vio serve-disk --disk path=shared.raw --max-connections 1 \
    --socket /run/vm1.sock,r=300,w=1 --socket /run/vm2.sock,w=2 \
    --socket /run/vm3.sock,w=1,l=200 --control /run/disk-qos.sock
  echo '{"op":"set","client":"/run/vm3.sock","limit":400}' | socat - UNIX-CONNECT:/run/disk-qos.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			socks, withQoS, err := parseServedSockets(sockets, qf)
			if err != nil {
				return err
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
			if err := checkFree(socks, qf); err != nil {
				return err
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
			log := logger(verbose)
			on := make([]string, len(socks))
			for k, sk := range socks {
				on[k] = sk.path
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "vio: serving %s (%d bytes%s, %d queues) as vhost-user-blk on %s%s\n",
				diskName(&d), be.Size(), map[bool]string{true: ", read-only"}[bcfg.ReadOnly], bcfg.NumQueues, strings.Join(on, ", "),
				map[bool]string{true: " with QoS"}[withQoS])
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if err := serveSockets(ctx, be, bcfg, socks, withQoS, qf, maxConns, log); err != nil {
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
	fl.StringArrayVar(&sockets, "socket", nil, "UNIX socket to listen on, PATH[,name=N][,r=IOPS,w=N,l=IOPS] (created, mode 0600; removed on exit); repeat for one socket per VM")
	fl.StringVar(&qf.def, "qos-default", "", "QoS of every socket that gives no r=,w=,l= of its own: r=IOPS (reservation),w=N (weight),l=IOPS (limit); default w=1")
	fl.StringVar(&qf.control, "control", "", "UNIX socket for QoS statistics and run-time changes, one JSON request a line (see docs/vhost-user.md)")
	fl.IntVar(&qf.depth, "qos-depth", qos.DefaultDepth, "with QoS: requests the disk has at once (its queue depth); the scheduler orders the rest")
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
