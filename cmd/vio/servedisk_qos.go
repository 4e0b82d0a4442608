package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/viovmm/vio/block"
	"github.com/viovmm/vio/block/qos"
	"github.com/viovmm/vio/devices/virtio/blk"
	"github.com/viovmm/vio/qos/mclock"
	"github.com/viovmm/vio/qos/qosctl"
	"github.com/viovmm/vio/vhostuser"
	"github.com/viovmm/vio/virtio"
)

// vio serve-disk with several sockets and cross-VM QoS: each --socket is
// one VM (the way QEMU and Cloud Hypervisor users give each VM a socket
// of its own) and one client of an mClock scheduler (package block/qos)
// that every request to the disk goes through. The settings come from
// --qos-default and each socket's r=,w=,l= keys, and change at run time
// over --control (package qos/qosctl). See docs/vhost-user.md.

// servedSocket is one --socket PATH[,name=N][,r=IOPS][,w=N][,l=IOPS].
type servedSocket struct {
	path, name string
	qos        string // the r=,w=,l= keys, for qosctl.ParseParams
	params     mclock.Params
}

// qosFlags are serve-disk's QoS flags.
type qosFlags struct {
	def     string // --qos-default
	control string // --control
	depth   int    // --qos-depth
}

// parseServedSockets reads the --socket values and their QoS keys over
// --qos-default, and says whether QoS is on: with more than one socket,
// any QoS key, --qos-default or --control.
func parseServedSockets(args []string, f qosFlags) ([]servedSocket, bool, error) {
	if len(args) == 0 {
		return nil, false, errors.New("--socket PATH is required: the UNIX socket the front-end connects to, e.g. --socket /run/vm1-disk.sock")
	}
	def, err := qosctl.ParseParams(f.def, mclock.Params{Weight: 1})
	if err != nil {
		return nil, false, fmt.Errorf("--qos-default %s: %w", f.def, err)
	}
	on := len(args) > 1 || f.def != "" || f.control != ""
	var out []servedSocket
	seen := map[string]bool{}
	for _, a := range args {
		parts := strings.Split(a, ",")
		s := servedSocket{path: parts[0], name: parts[0]}
		if s.path == "" {
			return nil, false, fmt.Errorf("--socket %q: the path comes first, e.g. --socket /run/vm1-disk.sock,r=100,w=2", a)
		}
		var keys []string
		for _, kv := range parts[1:] {
			if v, ok := strings.CutPrefix(kv, "name="); ok {
				if v == "" {
					return nil, false, fmt.Errorf("--socket %s: name= needs a name, e.g. name=vm1", a)
				}
				s.name = v
				continue
			}
			keys = append(keys, kv)
		}
		s.qos = strings.Join(keys, ",")
		if s.qos != "" || s.name != s.path {
			on = true
		}
		if s.params, err = qosctl.ParseParams(s.qos, def); err != nil {
			return nil, false, fmt.Errorf("--socket %s: %w", a, err)
		}
		if seen["p"+s.path] {
			return nil, false, fmt.Errorf("--socket %s is given twice; give each VM a socket of its own", s.path)
		}
		if seen["n"+s.name] {
			return nil, false, fmt.Errorf("--socket %s: the name %s is taken by another socket; give each a name= of its own", a, s.name)
		}
		seen["p"+s.path], seen["n"+s.name] = true, true
		out = append(out, s)
	}
	if f.depth < 1 {
		return nil, false, fmt.Errorf("--qos-depth %d: give the number of requests the disk should have at once, at least 1 (default %d)", f.depth, qos.DefaultDepth)
	}
	return out, on, nil
}

// checkFree refuses, before the disk is opened, socket paths that exist.
func checkFree(socks []servedSocket, f qosFlags) error {
	for _, s := range socks {
		if err := free("--socket", s.path); err != nil {
			return err
		}
	}
	if f.control != "" {
		return free("--control", f.control)
	}
	return nil
}

func free(flag, path string) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("%s %s already exists: remove it if no back-end serves it any more, or choose another path", flag, path)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s %s: %w", flag, path, err)
	}
	return nil
}

// listenPrivate creates a UNIX socket at path only this user can reach.
func listenPrivate(flag, path string) (*net.UnixListener, error) {
	if err := free(flag, path); err != nil {
		return nil, err
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restricting %s to this user: %w", path, err)
	}
	return l, nil
}

// serveSockets serves be on every socket until ctx ends: through one
// scheduler when withQoS, each socket then being a client of its own.
func serveSockets(ctx context.Context, be block.Backend, bcfg blk.Config, socks []servedSocket, withQoS bool, f qosFlags, maxConns int, log *slog.Logger) error {
	var shared *qos.Shared
	if withQoS {
		var err error
		if shared, err = qos.NewShared(be, qos.Config{Depth: f.depth}); err != nil {
			return err
		}
		defer shared.Close()
		for _, s := range socks {
			if err := shared.SetClient(s.name, s.params); err != nil {
				return fmt.Errorf("--socket %s: %w", s.path, err)
			}
		}
	}
	var ls []*net.UnixListener
	defer func() {
		for _, l := range ls {
			l.Close() // also removes the socket file
		}
	}()
	for _, s := range socks {
		l, err := listenPrivate("--socket", s.path)
		if err != nil {
			return err
		}
		ls = append(ls, l)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make([]error, len(socks)+1)
	if f.control != "" {
		l, err := listenPrivate("--control", f.control)
		if err != nil {
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer l.Close()
			if err := qosctl.Serve(ctx, l, shared); err != nil {
				errs[len(socks)] = fmt.Errorf("control socket: %w", err)
				cancel()
			}
		}()
	}
	for i, s := range socks {
		newDevice := func() (virtio.QueueServer, error) { return blk.New(be, bcfg) }
		if shared != nil {
			newDevice = func() (virtio.QueueServer, error) {
				d, err := shared.Disk(s.name)
				if err != nil {
					return nil, err
				}
				return blk.New(d, bcfg)
			}
		}
		b := &vhostuser.Backend{
			NewDevice: newDevice,
			MaxConns:  maxConns,
			Log:       log.With("socket", s.path),
			OnError: func(req vhostuser.Request, err error) {
				log.Info("vhost-user request refused", "socket", s.path, "request", req, "err", err)
			},
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := b.Serve(ctx, ls[i]); err != nil {
				errs[i] = fmt.Errorf("--socket %s: %w", s.path, err)
				cancel() // one socket failing stops the daemon
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}
