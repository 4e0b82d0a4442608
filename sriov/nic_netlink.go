package sriov

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// setVF applies c to VF vf of the PF's interface dev over rtnetlink
// (IFLA_VF_* attributes, what `ip link set DEV vf N ...` sends). It needs
// a NIC with SR-IOV to run against, which the lab has none of (QEMU 7.2
// has no igb), so only the argument handling around it is tested.
func setVF(dev string, vf int, c VFConfig) error {
	link, err := netlink.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("interface %s: %w", dev, err)
	}
	step := func(what string, err error) error {
		if err != nil {
			return fmt.Errorf("%s vf %d: setting %s: %w (the PF's driver may not support it)", dev, vf, what, err)
		}
		return nil
	}
	if c.MAC != nil {
		if err := step("the MAC", netlink.LinkSetVfHardwareAddr(link, vf, c.MAC)); err != nil {
			return err
		}
	}
	if c.VLAN != nil {
		if err := step("the VLAN", netlink.LinkSetVfVlan(link, vf, *c.VLAN)); err != nil {
			return err
		}
	}
	if c.SpoofChk != nil {
		if err := step("spoof checking", netlink.LinkSetVfSpoofchk(link, vf, *c.SpoofChk)); err != nil {
			return err
		}
	}
	if c.Trust != nil {
		if err := step("trust", netlink.LinkSetVfTrust(link, vf, *c.Trust)); err != nil {
			return err
		}
	}
	if c.RateMbps != nil {
		if err := step("the rate", netlink.LinkSetVfRate(link, vf, 0, *c.RateMbps)); err != nil {
			return err
		}
	}
	return nil
}
