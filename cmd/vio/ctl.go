package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/api"
	"github.com/viovmm/vio/config"
	"github.com/viovmm/vio/vmm"
)

func init() { subcommands = append(subcommands, ctlCommand) }

// ctlVerbs maps each `vio ctl` verb to its request and the line printed
// when the answer has no body.
var ctlVerbs = map[string]struct {
	method, endpoint, done string
}{
	"ping":           {http.MethodGet, "vmm.ping", ""},
	"info":           {http.MethodGet, "vm.info", ""},
	"counters":       {http.MethodGet, "vm.counters", ""},
	"create":         {http.MethodPut, "vm.create", "VM created"},
	"boot":           {http.MethodPut, "vm.boot", "VM booted"},
	"pause":          {http.MethodPut, "vm.pause", "VM paused"},
	"resume":         {http.MethodPut, "vm.resume", "VM resumed"},
	"shutdown":       {http.MethodPut, "vm.shutdown", "VM shut down"},
	"reboot":         {http.MethodPut, "vm.reboot", "VM rebooted"},
	"power-button":   {http.MethodPut, "vm.power-button", "power button pressed; an ACPI-aware guest shuts down and powers off"},
	"delete":         {http.MethodPut, "vm.delete", "VM deleted"},
	"shutdown-vmm":   {http.MethodPut, "vmm.shutdown", "VMM shut down"},
	"snapshot":       {http.MethodPut, "vm.snapshot", "snapshot written"},
	"restore":        {http.MethodPut, "vm.restore", "VM restored (paused: send resume to run it)"},
	"balloon":        {http.MethodGet, "vm.counters", ""},
	"resize-balloon": {http.MethodPut, "vm.resize", "balloon target set; the guest inflates or deflates in its own time (watch: vio ctl balloon)"},
	"add-disk":       {http.MethodPut, "vm.add-disk", "disk added to the config (it joins the guest at boot)"},
	"add-net":        {http.MethodPut, "vm.add-net", "NIC added to the config (it joins the guest at boot)"},
	"remove-device":  {http.MethodPut, "vm.remove-device", "device removed"},
	"add-device":     {http.MethodPut, "vm.add-device", "pass-through device added to the config (it joins the guest at boot)"},
}

func init() {
	ctlVerbs["send-migration"] = struct{ method, endpoint, done string }{http.MethodPut, "vm.send-migration", "VM migrated: it runs at the destination now"}
	ctlVerbs["receive-migration"] = struct{ method, endpoint, done string }{http.MethodPut, "vm.receive-migration", "migration received: the VM runs here"}
}

func ctlCommand() *cobra.Command {
	var socket string
	var timeout time.Duration
	var prefault bool
	var tlsDir string
	var local bool
	var copyDisks string
	var diskPaths, devicePaths []string
	var unplugTimeout time.Duration
	c := &cobra.Command{
		Use:   "ctl --api-socket PATH ping|info|counters|create FILE|boot|pause|resume|snapshot URL|restore URL|send-migration URL|receive-migration URL|add-disk SPEC|add-net SPEC|add-vsock SPEC|add-device SPEC|remove-device ID|resize-balloon SIZE|balloon|power-button|shutdown|reboot|delete|shutdown-vmm",
		Short: "Send one request to a vio (or Cloud Hypervisor) API socket",
		Long: `Send one request to the REST API of a running vio (vio serve, vio run --api-socket)
and print the JSON answer or a one-line message. create FILE sends a JSON VM config.
snapshot file:///DIR writes the paused VM to a new or empty directory; restore
file:///DIR (to a vio with no VM) restores one, paused. See docs/snapshot.md.
receive-migration tcp:HOST:PORT|unix:PATH (to a vio with no VM) waits for a live
migration, which send-migration URL on the source's vio starts; both return when
the VM runs at the destination. --tls-dir DIR runs it over mutual TLS (tcp: only;
DIR holds ca-cert.pem and server-cert.pem/server-key.pem on the receiving side,
ca-cert.pem and client-cert.pem/client-key.pem on the sending side).
send-migration --local unix:PATH migrates to a vio on the same host by passing
guest RAM's memfd instead of copying it (the VM must run with --memory
shared=on). send-migration --copy-disks all|ID,ID copies disks that are not on
storage both hosts see into the destination's own images (created empty, of the
same size, beforehand); receive-migration --disk-path ID=PATH puts a copied disk
at another path there. A VM with failover primaries (docs/failover.md) unplugs
them first (send-migration --unplug-timeout, default 10s); the destination plugs
the device at the same address there, or the one receive-migration
--device-path ID=/sys/bus/pci/devices/BDF names (ID=none: none). See
docs/migration.md.
resize-balloon SIZE asks the guest to give up SIZE of its RAM (0: all back);
balloon shows the balloon's counters and the guest's memory statistics
(docs/balloon.md).

add-disk and add-net take the --disk and --net flags' syntax (path=IMG,id=d1;
tap=NAME,mac=...); on a booted VM they hot-plug and print the device's id and
address. add-device takes the --device flag's syntax
(path=/sys/bus/pci/devices/BDF,id=vf0[,failover=NETID]) and passes a host
device through. remove-device ID removes one (docs/api.md, "Hot plug").`,
		Args: cobra.RangeArgs(1, 2),
		RunE: func(c *cobra.Command, args []string) error {
			if socket == "" {
				return errors.New("no --api-socket given: name the socket the VMM serves its API on")
			}
			verb, ok := ctlVerbs[args[0]]
			if !ok {
				return fmt.Errorf("unknown request %q: want ping, info, counters, create FILE, boot, pause, resume, snapshot URL, restore URL, send-migration URL, receive-migration URL, add-disk SPEC, add-net SPEC, add-vsock SPEC, add-device SPEC, remove-device ID, resize-balloon SIZE, balloon, power-button, shutdown, reboot, delete or shutdown-vmm", args[0])
			}
			var body []byte
			switch {
			case args[0] == "create" && len(args) == 2:
				b, err := os.ReadFile(args[1])
				if err != nil {
					return fmt.Errorf("config file: %w", err)
				}
				body = b
			case args[0] == "create":
				return errors.New("create needs a JSON VM config file: vio ctl --api-socket PATH create vm.json")
			case (args[0] == "snapshot" || args[0] == "restore") && len(args) == 2:
				field := map[string]string{"snapshot": "destination_url", "restore": "source_url"}[args[0]]
				b, _ := json.Marshal(map[string]any{field: args[1]})
				if args[0] == "restore" && prefault {
					b, _ = json.Marshal(map[string]any{field: args[1], "prefault": true})
				}
				body = b
			case args[0] == "snapshot" || args[0] == "restore":
				return fmt.Errorf("%s needs a snapshot directory as a URL: vio ctl --api-socket PATH %s file:///var/lib/vio/snap1", args[0], args[0])
			case (args[0] == "send-migration" || args[0] == "receive-migration") && len(args) == 2:
				field := map[string]string{"send-migration": "destination_url", "receive-migration": "receiver_url"}[args[0]]
				req := map[string]any{field: args[1]}
				if tlsDir != "" {
					req["tls_dir"] = tlsDir
				}
				if local {
					if args[0] != "send-migration" {
						return errors.New("--local is for send-migration: the receiver learns it from the stream")
					}
					req["local"] = true
				}
				if copyDisks != "" {
					if args[0] != "send-migration" {
						return errors.New("--copy-disks is for send-migration; the receiver names other paths with --disk-path ID=PATH")
					}
					if copyDisks == "all" {
						req["copy_disks"] = true
					} else {
						req["copy_disks"] = strings.Split(copyDisks, ",")
					}
				}
				if len(diskPaths) > 0 {
					if args[0] != "receive-migration" {
						return errors.New("--disk-path is for receive-migration: it names where a copied disk goes on the destination")
					}
					m := map[string]string{}
					for _, kv := range diskPaths {
						id, p, ok := strings.Cut(kv, "=")
						if !ok || id == "" || p == "" {
							return fmt.Errorf("--disk-path %q: write ID=PATH, such as disk0=/var/lib/vio/disk0.raw", kv)
						}
						m[id] = p
					}
					req["disk_paths"] = m
				}
				if len(devicePaths) > 0 {
					if args[0] != "receive-migration" {
						return errors.New("--device-path is for receive-migration: it names the host device a failover primary gets on the destination")
					}
					m := map[string]string{}
					for _, kv := range devicePaths {
						id, p, ok := strings.Cut(kv, "=")
						if !ok || id == "" || p == "" {
							return fmt.Errorf("--device-path %q: write ID=/sys/bus/pci/devices/BDF (or ID=none), such as vf0=/sys/bus/pci/devices/0000:03:00.2", kv)
						}
						m[id] = p
					}
					req["device_paths"] = m
				}
				if c.Flags().Changed("unplug-timeout") {
					if args[0] != "send-migration" {
						return errors.New("--unplug-timeout is for send-migration: it bounds the wait for the guest to release its failover primaries")
					}
					secs := int64(unplugTimeout / time.Second)
					if unplugTimeout%time.Second != 0 || secs < 1 {
						return fmt.Errorf("--unplug-timeout %v: give whole seconds, at least 1s", unplugTimeout)
					}
					req["unplug_timeout_s"] = secs
				}
				body, _ = json.Marshal(req)
				if !c.Flags().Changed("timeout") {
					timeout = 24 * time.Hour // a migration takes as long as it takes
				}
			case args[0] == "send-migration" || args[0] == "receive-migration":
				return fmt.Errorf("%s needs a migration URL: vio ctl --api-socket PATH %s tcp:HOST:PORT (or unix:/path/to/socket)", args[0], args[0])
			case args[0] == "resize-balloon" && len(args) == 2:
				n, err := config.ParseSize(args[1])
				if err != nil {
					return fmt.Errorf("resize-balloon: %w", err)
				}
				body, _ = json.Marshal(map[string]any{"desired_balloon": n})
			case args[0] == "resize-balloon":
				return errors.New("resize-balloon needs the memory the guest should give up: vio ctl --api-socket PATH resize-balloon 256M (0 gives it all back)")
			case args[0] == "add-disk" && len(args) == 2:
				d, err := config.ParseDisk(args[1])
				if err != nil {
					return err
				}
				body, _ = json.Marshal(d)
			case args[0] == "add-net" && len(args) == 2:
				n, err := config.ParseNet(args[1])
				if err != nil {
					return err
				}
				body, _ = json.Marshal(n)
			case args[0] == "add-vsock" && len(args) == 2:
				vs, err := config.ParseVsock(args[1])
				if err != nil {
					return err
				}
				body, _ = json.Marshal(vs)
			case args[0] == "add-device" && len(args) == 2:
				d, err := config.ParseDevice(args[1])
				if err != nil {
					return err
				}
				body, _ = json.Marshal(d)
			case args[0] == "remove-device" && len(args) == 2:
				body, _ = json.Marshal(map[string]string{"id": args[1]})
			case args[0] == "add-disk" || args[0] == "add-net" || args[0] == "add-vsock" || args[0] == "add-device" || args[0] == "remove-device":
				return fmt.Errorf("%s needs an argument: vio ctl --api-socket PATH add-disk path=IMG,id=d1 | add-net tap=NAME,id=n1 | add-device path=/sys/bus/pci/devices/BDF,id=vf0 | remove-device d1", args[0])
			case len(args) == 2:
				return fmt.Errorf("%s takes no argument", args[0])
			}
			ctx, cancel := context.WithTimeout(c.Context(), timeout)
			defer cancel()
			cl := api.NewClient(socket)
			defer cl.Close()
			out, err := cl.Do(ctx, verb.method, verb.endpoint, body)
			if err != nil {
				var se *api.StatusError
				if errors.As(err, &se) {
					return errors.New(se.Msg)
				}
				return fmt.Errorf("cannot reach the API at %s: %w", socket, err)
			}
			if args[0] == "balloon" {
				if out, err = balloonCounters(out); err != nil {
					return err
				}
			}
			w := c.OutOrStdout()
			if len(bytes.TrimSpace(out)) == 0 {
				fmt.Fprintln(w, verb.done)
				return nil
			}
			var pretty bytes.Buffer
			if json.Indent(&pretty, out, "", "  ") != nil {
				_, err = w.Write(out)
				return err
			}
			fmt.Fprintln(w, strings.TrimSpace(pretty.String()))
			return nil
		},
	}
	c.Flags().StringVar(&socket, "api-socket", "", "the VMM's API socket")
	c.Flags().DurationVar(&timeout, "timeout", time.Minute, "give up after this long")
	c.Flags().BoolVar(&prefault, "prefault", false, "restore: read all of guest RAM before the guest runs, not as it touches it")
	c.Flags().BoolVar(&local, "local", false, "send-migration: pass guest RAM's memfd to a vio on this host (unix: URL; the VM runs with --memory shared=on) instead of copying it")
	c.Flags().StringVar(&copyDisks, "copy-disks", "", "send-migration: copy these disks (all, or ID,ID) into the destination's own images: for disks not on shared storage")
	c.Flags().StringArrayVar(&diskPaths, "disk-path", nil, "receive-migration: ID=PATH puts copied disk ID at PATH here (repeatable)")
	c.Flags().StringArrayVar(&devicePaths, "device-path", nil, "receive-migration: ID=/sys/bus/pci/devices/BDF plugs that host device as failover primary ID here (ID=none: none; default: the source's address)")
	c.Flags().DurationVar(&unplugTimeout, "unplug-timeout", vmm.DefaultUnplugWait, "send-migration: how long the guest may take to release its failover primaries before the migration is refused")
	c.Flags().StringVar(&tlsDir, "tls-dir", "", "send-migration, receive-migration: migrate over mutual TLS with the credentials in this directory (tcp: URLs only)")
	return c
}

// balloonCounters picks the balloon's entry out of a vm.counters answer.
func balloonCounters(counters []byte) ([]byte, error) {
	var all map[string]json.RawMessage
	if err := json.Unmarshal(counters, &all); err != nil {
		return nil, fmt.Errorf("the VMM's counters do not parse: %w", err)
	}
	b, ok := all["balloon"]
	if !ok {
		return nil, errors.New("the VM has no balloon (or is not running): create it with one, e.g. vio run --balloon size=0")
	}
	return b, nil
}
