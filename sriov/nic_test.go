package sriov

import (
	"strings"
	"testing"
)

func TestNetdev(t *testing.T) {
	k := newFakeKernel(t)
	if _, err := k.host.Netdev(nicPF, 0); err == nil || err.Error() != "0000:02:00.0 has no VFs: vio sriov enable 0000:02:00.0 N creates them" {
		t.Errorf("no VFs: %v", err)
	}
	if err := k.host.Enable(nicPF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	if dev, err := k.host.Netdev(nicPF, 1); err != nil || dev != "enp2s0f0" {
		t.Errorf("VF 1: %q %v", dev, err)
	}
	if _, err := k.host.Netdev(nicPF, 2); err == nil || err.Error() != "0000:02:00.0 has VFs 0 to 1, not 2" {
		t.Errorf("VF 2: %v", err)
	}
	if _, err := k.host.Netdev(nvmePF, 0); err == nil || !strings.Contains(err.Error(), "is an NVMe controller") {
		t.Errorf("an NVMe PF: %v", err)
	}
	removeAll(k.path("sys/bus/pci/devices/" + nicPF + "/net/enp2s0f0"))
	if _, err := k.host.Netdev(nicPF, 0); err == nil || !strings.Contains(err.Error(), "has no network interface") {
		t.Errorf("a NIC PF without its netdev: %v", err)
	}
	if err := k.host.Set(nicPF, 0, VFConfig{}); err == nil || !strings.HasPrefix(err.Error(), "nothing to set") {
		t.Errorf("empty set: %v", err)
	}
}

func TestParseVFArgs(t *testing.T) {
	if m, err := ParseMAC("52:54:00:12:34:56"); err != nil || m.String() != "52:54:00:12:34:56" {
		t.Errorf("mac: %v %v", m, err)
	}
	for _, bad := range []string{"52:54:00:12:34", "01:00:5e:00:00:01", "zz", "00:00:00:00:00:00:00:01"} {
		if _, err := ParseMAC(bad); err == nil {
			t.Errorf("mac %q accepted", bad)
		}
	}
	for in, want := range map[string]int{"0": 0, "1": 1, "4094": 4094} {
		if n, err := ParseVLAN(in); err != nil || n != want {
			t.Errorf("vlan %q: %d %v", in, n, err)
		}
	}
	for _, bad := range []string{"4095", "-1", "x", "010", ""} {
		if _, err := ParseVLAN(bad); err == nil {
			t.Errorf("vlan %q accepted", bad)
		}
	}
	if b, err := ParseOnOff("trust", "on"); err != nil || !b {
		t.Errorf("on: %v %v", b, err)
	}
	if _, err := ParseOnOff("trust", "yes"); err == nil || err.Error() != `--trust "yes": give on or off` {
		t.Errorf("yes: %v", err)
	}
	if n, err := ParseRate("1000"); err != nil || n != 1000 {
		t.Errorf("rate: %d %v", n, err)
	}
	for _, bad := range []string{"-5", "1e3", "1G", ""} {
		if _, err := ParseRate(bad); err == nil {
			t.Errorf("rate %q accepted", bad)
		}
	}
}
