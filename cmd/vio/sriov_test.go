package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/viovmm/vio/sriov"
	"github.com/viovmm/vio/sriov/nvmevirt"
	"github.com/viovmm/vio/vfio"
)

func TestSRIOVArgs(t *testing.T) {
	if n, err := parseVFCount("2"); err != nil || n != 2 {
		t.Errorf("2: %d %v", n, err)
	}
	for _, bad := range []string{"0", "-1", "two", "02", ""} {
		if _, err := parseVFCount(bad); err == nil {
			t.Errorf("count %q accepted", bad)
		}
	}
	if n, err := parseVFIndex("0"); err != nil || n != 0 {
		t.Errorf("vf 0: %d %v", n, err)
	}
	if _, err := parseVFIndex("vf1"); err == nil || !strings.Contains(err.Error(), "give the VF's index from 0") {
		t.Errorf("vf1: %v", err)
	}
	changed := func(names ...string) func(string) bool {
		return func(n string) bool {
			for _, m := range names {
				if m == n {
					return true
				}
			}
			return false
		}
	}
	c, err := setFlags{mac: "52:54:00:00:00:01", vlan: "10", trust: "off", spoofchk: "on", rate: "100"}.config(changed("mac", "vlan", "trust", "spoofchk", "rate"))
	if err != nil || c.MAC.String() != "52:54:00:00:00:01" || *c.VLAN != 10 || *c.Trust || !*c.SpoofChk || *c.RateMbps != 100 {
		t.Errorf("all flags: %+v %v", c, err)
	}
	c, err = setFlags{vlan: "10"}.config(changed("trust"))
	if err == nil || !strings.Contains(err.Error(), "give on or off") {
		t.Errorf("--trust with no value: %+v %v", c, err)
	}
	if _, err := (setFlags{}).config(changed()); err == nil || !strings.HasPrefix(err.Error(), "nothing to set") {
		t.Errorf("no flags: %v", err)
	}
	old := euid
	euid = func() int { return 1000 }
	defer func() { euid = old }()
	if err := needRoot("enable"); err == nil || err.Error() != "vio sriov enable changes the host's PCI devices and needs root: run it as root (sudo vio sriov enable ...)" {
		t.Errorf("not root: %v", err)
	}
}

func TestPrintPFs(t *testing.T) {
	var b bytes.Buffer
	pfs := []sriov.PF{{BDF: "0000:01:00.0", Vendor: "0x1b36", Device: "0x0010", Driver: "nvme", Group: "10", TotalVFs: 2, NumVFs: 2, NVMe: "nvme0",
		VFs: []sriov.VF{
			{Index: 0, BDF: "0000:01:00.1", Driver: "vfio-pci", Group: "20", Secondary: &nvmevirt.Secondary{SCID: 1, Online: true, VFN: 1, NVQ: 2, NVI: 1},
				HeldBy: &vfio.Holder{PID: 42, Name: "/run/a.sock"}},
			{Index: 1, BDF: "0000:01:00.2", Group: "21", Secondary: &nvmevirt.Secondary{SCID: 2, VFN: 2}},
		}}}
	if err := printPFs(&b, pfs); err != nil {
		t.Fatal(err)
	}
	want := `DEVICE          DRIVER    IOMMU  VFS  DETAIL                          HELD BY
0000:01:00.0    nvme      10     2/2  1b36:0010 nvme0
  0000:01:00.1  vfio-pci  20     vf0  secondary 1 online, 2 VQ 1 VI   VM /run/a.sock (pid 42)
  0000:01:00.2  -         21     vf1  secondary 2 offline, 0 VQ 0 VI  -
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
	b.Reset()
	printPFs(&b, nil)
	if b.String() != "no SR-IOV physical functions on this host\n" {
		t.Errorf("none: %q", b.String())
	}
}
