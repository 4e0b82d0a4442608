package sriov

import (
	"fmt"
	"net"
	"path/filepath"
	"strconv"
)

// VFConfig is what `vio sriov set` changes on a NIC's VF; nil fields are
// left as they are. The PF's driver applies it: the VF's guest cannot
// change its MAC, leave its VLAN or spoof addresses unless allowed.
type VFConfig struct {
	MAC      net.HardwareAddr
	VLAN     *int  // 0 takes the VF off VLANs
	SpoofChk *bool // the PF drops frames with a source MAC not the VF's
	Trust    *bool // the VF may change its MAC and go promiscuous
	RateMbps *int  // the VF's transmit cap, Mbit/s (0: none)
}

// Empty reports whether the config changes nothing.
func (c VFConfig) Empty() bool {
	return c.MAC == nil && c.VLAN == nil && c.SpoofChk == nil && c.Trust == nil && c.RateMbps == nil
}

// ParseMAC parses a VF's MAC: six bytes, unicast (the VF's own address).
func ParseMAC(s string) (net.HardwareAddr, error) {
	m, err := net.ParseMAC(s)
	if err != nil || len(m) != 6 {
		return nil, fmt.Errorf("--mac %q is not a MAC address: give six bytes like 52:54:00:12:34:56", s)
	}
	if m[0]&1 != 0 {
		return nil, fmt.Errorf("--mac %s is a multicast address: a VF needs a unicast one (the first byte even, like 52:...)", s)
	}
	return m, nil
}

// ParseVLAN parses a VLAN id: 1 to 4094, or 0 for none.
func ParseVLAN(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 4094 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("--vlan %q: give a VLAN id from 1 to 4094, or 0 for none", s)
	}
	return n, nil
}

// ParseOnOff parses the value of an on|off flag.
func ParseOnOff(flag, s string) (bool, error) {
	switch s {
	case "on":
		return true, nil
	case "off":
		return false, nil
	}
	return false, fmt.Errorf("--%s %q: give on or off", flag, s)
}

// ParseRate parses a transmit cap in Mbit/s (0: none).
func ParseRate(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 1<<30 || strconv.Itoa(n) != s {
		return 0, fmt.Errorf("--rate %q: give the VF's transmit cap in Mbit/s as a whole number (0 for none)", s)
	}
	return n, nil
}

// Netdev returns the network interface of NIC PF pf, through which the
// kernel configures its VFs, after checking that VF vf exists.
func (h *Host) Netdev(pf string, vf int) (string, error) {
	p, err := h.Get(pf)
	if err != nil {
		return "", err
	}
	if len(p.Netdevs) == 0 {
		if p.IsNVMe() {
			return "", fmt.Errorf("%s is an NVMe controller: vio sriov set configures a NIC's VFs (an NVMe VF's resources are set by vio sriov enable --vq/--vi)", pf)
		}
		return "", fmt.Errorf("%s has no network interface (nothing in %s): vio sriov set needs the PF bound to its network driver", pf, filepath.Join(h.devices(), pf, "net"))
	}
	if len(p.Netdevs) > 1 {
		// One PF with several ports: VFs belong to the PF, and any of its
		// interfaces reaches them; the kernel's ip link does the same.
		h.logf("%s has interfaces %v: using %s", pf, p.Netdevs, p.Netdevs[0])
	}
	if vf < 0 || vf >= p.NumVFs {
		if p.NumVFs == 0 {
			return "", fmt.Errorf("%s has no VFs: vio sriov enable %s N creates them", pf, pf)
		}
		return "", fmt.Errorf("%s has VFs 0 to %d, not %d", pf, p.NumVFs-1, vf)
	}
	return p.Netdevs[0], nil
}

// Set configures VF vf of NIC PF pf through the PF's netdev.
func (h *Host) Set(pf string, vf int, c VFConfig) error {
	if c.Empty() {
		return fmt.Errorf("nothing to set: give --mac, --vlan, --spoofchk, --trust or --rate")
	}
	dev, err := h.Netdev(pf, vf)
	if err != nil {
		return err
	}
	return setVF(dev, vf, c)
}
