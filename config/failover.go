package config

import "fmt"

// validateFailover checks the failover pairs (docs/failover.md): a
// standby NIC is a virtio-net NIC vio serves and carries the MAC address
// the guest's net_failover pairs it by; a primary names an existing
// standby, and each standby has one primary at most.
func (c *VM) validateFailover() error {
	for i, n := range c.Net {
		if !n.Standby {
			continue
		}
		switch {
		case n.Model == NetE1000:
			return fmt.Errorf("net %d: standby=on is a virtio-net feature (VIRTIO_NET_F_STANDBY) an e1000 does not have: use model=virtio for the standby NIC", i)
		case n.VhostUser:
			return fmt.Errorf("net %d: a vhost-user NIC offers the features of its back-end, so vio cannot make it a standby: give the standby a TAP, user=on or socket= back-end", i)
		case n.VhostNet:
			return fmt.Errorf("net %d: a vhost-net NIC cannot be a standby yet (its feature set is the kernel's and vio's together, without VIRTIO_NET_F_STANDBY): drop vhost=on from the standby NIC", i)
		case n.MAC == "":
			return fmt.Errorf("net %d: a standby NIC needs mac= set to the MAC address of its pass-through primary, which the guest's net_failover pairs them by", i)
		}
	}
	seen := map[string]bool{}
	for _, d := range c.Devices {
		if seen[d.BDF()] {
			return fmt.Errorf("devices %s and %s name one host device: pass each device through once", d.BDF(), d.BDF())
		}
		seen[d.BDF()] = true
	}
	primaryOf := map[string]string{} // standby id → BDF of its primary
	for _, d := range c.Devices {
		if d.Failover == "" {
			continue
		}
		var standby *Net
		for i := range c.Net {
			if c.Net[i].ID == d.Failover {
				standby = &c.Net[i]
			}
		}
		switch {
		case standby == nil:
			return fmt.Errorf("device %s: failover=%s names no NIC: give the standby NIC id=%s and standby=on (--net tap=TAP,mac=MAC,id=%s,standby=on)", d.BDF(), d.Failover, d.Failover, d.Failover)
		case !standby.Standby:
			return fmt.Errorf("device %s: NIC %s is not a standby: add standby=on to it, so that the guest pairs the two under net_failover", d.BDF(), d.Failover)
		}
		if other, ok := primaryOf[d.Failover]; ok {
			return fmt.Errorf("devices %s and %s both name NIC %s as their standby, which pairs with one primary: give each primary a standby NIC of its own", other, d.BDF(), d.Failover)
		}
		primaryOf[d.Failover] = d.BDF()
	}
	return nil
}

// FailoverPrimaries returns the devices that are failover primaries.
func (c *VM) FailoverPrimaries() []Device {
	var out []Device
	for _, d := range c.Devices {
		if d.Failover != "" {
			out = append(out, d)
		}
	}
	return out
}
