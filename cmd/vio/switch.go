package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/netdev/vswitch"
)

// `vio switch` runs a learning Ethernet switch whose ports are UNIX
// sockets speaking QEMU's -netdev stream framing (package netdev/vswitch
// has the logic): vio guests join with --net socket=PATH, QEMU guests with
// -netdev stream,addr.type=unix,addr.path=PATH. This file parses flags,
// opens the sockets and waits for a signal.

func init() { subcommands = append(subcommands, switchCommand) }

// switchPort is one --port: a socket of its own with a policy.
type switchPort struct {
	path string
	pc   vswitch.PortConfig
}

// parseSwitchPort parses name=N,path=P[,vlan=V][,mac=M][,ip=A][,rate=R][,anti_spoof=on|off].
func parseSwitchPort(spec string, antiSpoof bool) (switchPort, error) {
	sp := switchPort{pc: vswitch.PortConfig{AntiSpoof: antiSpoof}}
	for _, part := range strings.Split(spec, ",") {
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		if !ok {
			return sp, fmt.Errorf("--port %q: %q is not key=value", spec, part)
		}
		var err error
		switch k {
		case "name":
			sp.pc.Name = v
		case "path":
			sp.path = v
		case "vlan":
			// Atoi, not Sscan: that took "12abc" as 12 and "0x10" as 16.
			n, aerr := strconv.Atoi(v)
			if aerr != nil || n < 1 || n > 4094 || v != strconv.Itoa(n) {
				err = fmt.Errorf("--port %q: vlan %q: want a VLAN id from 1 to 4094", spec, v)
			}
			sp.pc.VLAN = uint16(n)
		case "mac":
			var m [6]byte
			if m, err = config.ParseMAC(v); err != nil {
				err = fmt.Errorf("--port %q: %v", spec, err)
			}
			sp.pc.MAC = m[:]
		case "ip":
			if sp.pc.IPv4, err = netip.ParseAddr(v); err != nil || !sp.pc.IPv4.Is4() {
				err = fmt.Errorf("--port %q: ip %q: want an IPv4 address such as 10.0.0.2", spec, v)
			}
		case "rate":
			if sp.pc.Rate, err = config.ParseSize(v); err != nil {
				err = fmt.Errorf("--port %q: rate: %v (bytes a second)", spec, err)
			}
		case "anti_spoof":
			switch v {
			case "on":
				sp.pc.AntiSpoof = true
			case "off":
				sp.pc.AntiSpoof = false
			default:
				err = fmt.Errorf("--port %q: anti_spoof=%q: want on or off", spec, v)
			}
		default:
			err = fmt.Errorf("--port %q: unknown key %q (want name, path, vlan, mac, ip, rate, anti_spoof)", spec, k)
		}
		if err != nil {
			return sp, err
		}
	}
	if sp.path == "" {
		return sp, fmt.Errorf("--port %q: give the port's socket with path=PATH", spec)
	}
	if (sp.pc.MAC != nil || sp.pc.IPv4.IsValid()) && !sp.pc.AntiSpoof {
		return sp, fmt.Errorf("--port %q: mac= and ip= are what anti-spoofing enforces: drop them or set anti_spoof=on", spec)
	}
	return sp, nil
}

func switchCommand() *cobra.Command {
	var listen, control string
	var ports []string
	var antiSpoof bool
	var age time.Duration
	var maxAddr int
	var floodRate int64
	c := &cobra.Command{
		Use:   "switch [--listen PATH] [--port SPEC]... [--control PATH]",
		Short: "Run a learning Ethernet switch on UNIX sockets (QEMU's stream framing) until interrupted",
		Long: `Run a learning Ethernet switch until interrupted (SIGINT, SIGTERM). Each
connection to a socket is a switch port; vio guests join with
--net socket=PATH, QEMU guests with
-netdev stream,id=n0,server=off,addr.type=unix,addr.path=PATH.

--listen PATH is a socket where any number of guests join VLAN 1 with the
default policy. Each --port SPEC is a socket of its own with a policy:
  name=NAME,path=PATH[,vlan=1-4094][,mac=MAC][,ip=IPV4][,rate=BYTES/s][,anti_spoof=on|off]
With anti-spoofing (on by default) a port's frames must come from its MAC
and its IPv4 address, configured with mac= and ip= or learned from its first
frames. rate= polices what the port sends (e.g. 10M: 10 MiB/s).
--control PATH answers every connection with the counters as JSON
(socat - UNIX-CONNECT:PATH). docs/network.md has the details.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if listen == "" && len(ports) == 0 {
				return errors.New("the switch has no socket: give --listen PATH (and/or --port name=N,path=PATH)")
			}
			var sps []switchPort
			if listen != "" {
				sps = append(sps, switchPort{path: listen, pc: vswitch.PortConfig{Name: "port", AntiSpoof: antiSpoof}})
			}
			for _, p := range ports {
				sp, err := parseSwitchPort(p, antiSpoof)
				if err != nil {
					return err
				}
				sps = append(sps, sp)
			}
			sw := vswitch.New(vswitch.Config{AgeTime: age, MaxAddresses: maxAddr, FloodRate: floodRate})
			defer sw.Close()
			var ls []net.Listener
			defer func() {
				for _, l := range ls {
					l.Close()
				}
			}()
			open := func(path string) (net.Listener, error) {
				if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
					os.Remove(path) // a stale socket of an earlier run
				}
				l, err := net.Listen("unix", path)
				if err != nil {
					return nil, fmt.Errorf("cannot listen on %s: %w", path, err)
				}
				ls = append(ls, l)
				return l, nil
			}
			errc := make(chan error, len(sps)+1)
			for _, sp := range sps {
				l, err := open(sp.path)
				if err != nil {
					return err
				}
				go func() { errc <- sw.Serve(l, sp.pc) }()
			}
			if control != "" {
				l, err := open(control)
				if err != nil {
					return err
				}
				go func() { errc <- sw.ServeControl(l) }()
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "vio switch: %d socket(s) ready\n", len(sps))
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			select {
			case <-ctx.Done():
				if !errors.Is(ctx.Err(), context.Canceled) {
					return ctx.Err()
				}
				return nil
			case err := <-errc:
				return err
			}
		},
	}
	f := c.Flags()
	f.StringVar(&listen, "listen", "", "UNIX socket where guests join VLAN 1 with the default policy")
	f.StringArrayVar(&ports, "port", nil, "a port socket with its policy: name=N,path=P[,vlan=V][,mac=M][,ip=A][,rate=R][,anti_spoof=on|off] (repeatable)")
	f.StringVar(&control, "control", "", "UNIX socket that answers with the counters as JSON")
	f.BoolVar(&antiSpoof, "anti-spoof", true, "check source MAC and IPv4 addresses on every port (per port: anti_spoof=)")
	f.DurationVar(&age, "age", 300*time.Second, "how long a learned address lives without traffic")
	f.IntVar(&maxAddr, "max-addresses", 4096, "size of the forwarding table")
	f.Int64Var(&floodRate, "flood-rate", 2000, "flooded frames a second allowed per port")
	return c
}
