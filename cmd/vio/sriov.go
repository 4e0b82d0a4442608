package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/viovmm/vio/sriov"
)

// `vio sriov` manages SR-IOV on the host (package sriov has the logic,
// docs/vfio.md "SR-IOV: vio sriov" the story): list PFs and VFs with the
// VM holding each, enable VFs ready for --device, disable them, and set
// a NIC VF's MAC, VLAN and policies. This file parses arguments and
// prints.

func init() { subcommands = append(subcommands, sriovCommand) }

// euid is os.Geteuid, replaced in tests.
var euid = os.Geteuid

// needRoot refuses verbs that write sysfs when not root.
func needRoot(verb string) error {
	if euid() != 0 {
		return fmt.Errorf("vio sriov %s changes the host's PCI devices and needs root: run it as root (sudo vio sriov %s ...)", verb, verb)
	}
	return nil
}

// parseVFCount parses the N of `enable PF N`.
func parseVFCount(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("%q is not a number of VFs: give 1 or more (vio sriov disable PF turns them off)", s)
	}
	return n, nil
}

// parseVFIndex parses the VF of `set PF VF`: its number from 0, as
// ip link's vf and the PF's virtfnN count.
func parseVFIndex(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("%q is not a VF number: give the VF's index from 0, as vio sriov list shows it (vf0, vf1, ...)", s)
	}
	return n, nil
}

// setFlags are `set`'s flags as given; only those set change anything.
type setFlags struct {
	mac, vlan, spoofchk, trust, rate string
}

func (f setFlags) config(changed func(string) bool) (sriov.VFConfig, error) {
	var c sriov.VFConfig
	var err error
	if changed("mac") {
		if c.MAC, err = sriov.ParseMAC(f.mac); err != nil {
			return c, err
		}
	}
	if changed("vlan") {
		v, err := sriov.ParseVLAN(f.vlan)
		if err != nil {
			return c, err
		}
		c.VLAN = &v
	}
	for _, b := range []struct {
		name, val string
		dst       **bool
	}{{"spoofchk", f.spoofchk, &c.SpoofChk}, {"trust", f.trust, &c.Trust}} {
		if changed(b.name) {
			v, err := sriov.ParseOnOff(b.name, b.val)
			if err != nil {
				return c, err
			}
			*b.dst = &v
		}
	}
	if changed("rate") {
		v, err := sriov.ParseRate(f.rate)
		if err != nil {
			return c, err
		}
		c.RateMbps = &v
	}
	if c.Empty() {
		return c, errors.New("nothing to set: give --mac, --vlan, --spoofchk, --trust or --rate")
	}
	return c, nil
}

// printPFs writes the table `vio sriov list` shows: each PF, then its
// VFs indented under it.
func printPFs(w io.Writer, pfs []sriov.PF) error {
	if len(pfs) == 0 {
		_, err := fmt.Fprintln(w, "no SR-IOV physical functions on this host")
		return err
	}
	var buf strings.Builder
	tw := tabwriter.NewWriter(&buf, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DEVICE\tDRIVER\tIOMMU\tVFS\tDETAIL\tHELD BY")
	for _, p := range pfs {
		detail := strings.TrimPrefix(p.Vendor, "0x") + ":" + strings.TrimPrefix(p.Device, "0x")
		if p.NVMe != "" {
			detail += " " + p.NVMe
		}
		if len(p.Netdevs) > 0 {
			detail += " " + strings.Join(p.Netdevs, ",")
		}
		if p.NVMeNote != "" {
			detail += " (secondaries: " + p.NVMeNote + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t\n", p.BDF, dash(p.Driver), dash(p.Group), p.NumVFs, p.TotalVFs, detail)
		for _, v := range p.VFs {
			d := ""
			if s := v.Secondary; s != nil {
				state := "offline"
				if s.Online {
					state = "online"
				}
				d = fmt.Sprintf("secondary %d %s, %d VQ %d VI", s.SCID, state, s.NVQ, s.NVI)
			}
			held := "-"
			if v.HeldBy != nil {
				held = v.HeldBy.String()
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\tvf%d\t%s\t%s\n", v.BDF, dash(v.Driver), dash(v.Group), v.Index, d, held)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, l := range strings.SplitAfter(buf.String(), "\n") {
		// A PF's row has no HELD BY: no padding after its last cell.
		if _, err := io.WriteString(w, strings.TrimRight(l, " \n")+strings.Repeat("\n", strings.Count(l, "\n"))); err != nil {
			return err
		}
	}
	return nil
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sriovCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "sriov list|enable|disable|set",
		Short: "Manage SR-IOV virtual functions on the host for pass-through (--device)",
		Long: `Manage SR-IOV on the host (docs/vfio.md, "SR-IOV: vio sriov"):

  vio sriov list [--json]          PFs, their VFs, each VF's driver, IOMMU group and the VM holding it
  vio sriov enable PF N [--vq N] [--vi N]
                                   N VFs, bound to vfio-pci; an NVMe PF's secondary
                                   controllers resourced and online
  vio sriov disable PF             no VFs (refused while a VM holds one)
  vio sriov set PF VF [--mac M] [--vlan N] [--spoofchk on|off] [--trust on|off] [--rate MBPS]
                                   a NIC VF's settings, through the PF's driver

Then give a VF to a guest: vio run ... --device path=/sys/bus/pci/devices/VF`,
		Args: cobra.NoArgs,
	}
	host := func(cmd *cobra.Command) *sriov.Host { return &sriov.Host{Log: cmd.ErrOrStderr()} }

	var asJSON bool
	list := &cobra.Command{
		Use:   "list [--json]",
		Short: "List SR-IOV PFs and VFs, with the VM holding each VF",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			pfs, err := host(cmd).List()
			if err != nil {
				return err
			}
			if asJSON {
				if pfs == nil {
					pfs = []sriov.PF{}
				}
				e := json.NewEncoder(cmd.OutOrStdout())
				e.SetIndent("", "  ")
				return e.Encode(pfs)
			}
			return printPFs(cmd.OutOrStdout(), pfs)
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")

	var o sriov.Options
	enable := &cobra.Command{
		Use:   "enable PF N [--vq N] [--vi N]",
		Short: "Create N VFs of a PF, bound to vfio-pci and ready for --device",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pf, err := sriov.ParseBDF(args[0])
			if err != nil {
				return err
			}
			n, err := parseVFCount(args[1])
			if err != nil {
				return err
			}
			if err := needRoot("enable"); err != nil {
				return err
			}
			return host(cmd).Enable(pf, n, o)
		},
	}
	enable.Flags().IntVar(&o.VQ, "vq", 0, "NVMe: queue resources per VF (default: the flexible pool split evenly, at least 2)")
	enable.Flags().IntVar(&o.VI, "vi", 0, "NVMe: interrupt resources per VF (default: the flexible pool split evenly, at least 1)")

	disable := &cobra.Command{
		Use:   "disable PF",
		Short: "Remove a PF's VFs (refused while a VM holds one)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pf, err := sriov.ParseBDF(args[0])
			if err != nil {
				return err
			}
			if err := needRoot("disable"); err != nil {
				return err
			}
			return host(cmd).Disable(pf)
		},
	}

	var sf setFlags
	set := &cobra.Command{
		Use:   "set PF VF [--mac M] [--vlan N] [--spoofchk on|off] [--trust on|off] [--rate MBPS]",
		Short: "Set a NIC VF's MAC, VLAN, spoof checking, trust and transmit rate",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			pf, err := sriov.ParseBDF(args[0])
			if err != nil {
				return err
			}
			vf, err := parseVFIndex(args[1])
			if err != nil {
				return err
			}
			cfg, err := sf.config(func(n string) bool { return cmd.Flags().Changed(n) })
			if err != nil {
				return err
			}
			if err := needRoot("set"); err != nil {
				return err
			}
			return host(cmd).Set(pf, vf, cfg)
		},
	}
	f := set.Flags()
	f.StringVar(&sf.mac, "mac", "", "the VF's MAC address")
	f.StringVar(&sf.vlan, "vlan", "", "the VF's VLAN id (0: none)")
	f.StringVar(&sf.spoofchk, "spoofchk", "", "on|off: drop the VF's frames from other source MACs")
	f.StringVar(&sf.trust, "trust", "", "on|off: let the VF change its MAC and go promiscuous")
	f.StringVar(&sf.rate, "rate", "", "the VF's transmit cap in Mbit/s (0: none)")

	c.AddCommand(list, enable, disable, set)
	return c
}
