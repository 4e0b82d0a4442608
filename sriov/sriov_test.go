package sriov

import (
	"errors"
	"strings"
	"testing"

	"github.com/viovmm/vio/sriov/nvmevirt"
	"github.com/viovmm/vio/vfio"
)

func TestList(t *testing.T) {
	k := newFakeKernel(t)
	pfs, err := k.host.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(pfs) != 2 || pfs[0].BDF != nvmePF || pfs[1].BDF != nicPF {
		t.Fatalf("PFs %+v, want the NVMe and the NIC (not the plain device)", pfs)
	}
	n := pfs[0]
	if n.Vendor != "0x1b36" || n.Device != "0x0010" || !n.IsNVMe() || n.Driver != "nvme" || n.Group != "10" ||
		n.TotalVFs != 2 || n.NumVFs != 0 || n.NVMe != "nvme0" || len(n.VFs) != 0 {
		t.Errorf("NVMe PF %+v", n)
	}
	if pfs[1].IsNVMe() || len(pfs[1].Netdevs) != 1 || pfs[1].Netdevs[0] != "enp2s0f0" || pfs[1].TotalVFs != 7 {
		t.Errorf("NIC PF %+v", pfs[1])
	}
	if err := k.host.Enable(nvmePF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	k.vm(4242, "/run/vm-a.sock", "21")
	pfs, err = k.host.List()
	if err != nil {
		t.Fatal(err)
	}
	vfs := pfs[0].VFs
	if len(vfs) != 2 || vfs[0].BDF != "0000:01:00.1" || vfs[1].BDF != "0000:01:00.2" || vfs[0].Index != 0 || vfs[1].Index != 1 {
		t.Fatalf("VFs %+v", vfs)
	}
	for i, v := range vfs {
		if v.Driver != "vfio-pci" || v.Group != []string{"20", "21"}[i] {
			t.Errorf("VF %d: %+v", i, v)
		}
		if v.Secondary == nil || !v.Secondary.Online || int(v.Secondary.VFN) != i+1 || v.Secondary.NVQ != 2 || v.Secondary.NVI != 1 {
			t.Errorf("VF %d's secondary: %+v", i, v.Secondary)
		}
	}
	if vfs[0].HeldBy != nil || vfs[1].HeldBy == nil || vfs[1].HeldBy.String() != "VM /run/vm-a.sock (pid 4242)" {
		t.Errorf("holders: %v %v", vfs[0].HeldBy, vfs[1].HeldBy)
	}
}

// TestEnableNVMe: the order of every write and admin command, which is
// what the NVMe spec and QEMU's model require: secondaries offline,
// the primary's flexible share lowered and the PF reset (QEMU gives the
// primary the whole pool at first), resources assigned while offline,
// autoprobe off before the VFs exist, then the VFs, then online, then
// vfio-pci.
func TestEnableNVMe(t *testing.T) {
	k := newFakeKernel(t)
	if err := k.host.Enable(nvmePF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	dev := "write bus/pci/devices/"
	want := []string{
		"nvme identify 0x14",
		"nvme identify 0x14", "nvme identify 0x15",
		"nvme offline 1", "nvme offline 2",
		"nvme identify 0x14",
		"nvme primary VQ 0", "nvme primary VI 0",
		dev + nvmePF + "/reset 1",
		"nvme identify 0x14",
		"nvme assign 1 VQ 2", "nvme assign 1 VI 1", "nvme assign 2 VQ 2", "nvme assign 2 VI 1",
		dev + nvmePF + "/sriov_drivers_autoprobe 0",
		dev + nvmePF + "/sriov_numvfs 2",
		"nvme identify 0x15",
		"nvme online 1", "nvme online 2",
		"modprobe vfio-pci", // the fake host starts without it
		dev + "0000:01:00.1/driver_override vfio-pci", "write bus/pci/drivers_probe 0000:01:00.1",
		dev + "0000:01:00.2/driver_override vfio-pci", "write bus/pci/drivers_probe 0000:01:00.2",
	}
	if strings.Join(k.log, "\n") != strings.Join(want, "\n") {
		t.Errorf("steps:\n%s\n\nwant:\n%s", strings.Join(k.log, "\n"), strings.Join(want, "\n"))
	}
	for _, s := range k.nvme.Secondaries {
		if !s.Online || s.NVQ != 2 || s.NVI != 1 {
			t.Errorf("secondary %+v", s)
		}
	}

	// Again with the VFs there and online: nothing to do.
	n := len(k.log)
	if err := k.host.Enable(nvmePF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, l := range k.since(n) {
		if !strings.HasPrefix(l, "nvme identify") {
			t.Errorf("a second enable changed something: %s", l)
		}
	}

	// A different count goes through 0, and the primary is not reset again.
	n = len(k.log)
	if err := k.host.Enable(nvmePF, 1, Options{}); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(k.since(n), "\n")
	if !strings.Contains(got, dev+nvmePF+"/sriov_numvfs 0\n") || strings.Contains(got, "reset") || !strings.Contains(got, "nvme online 1") {
		t.Errorf("1 VF after 2:\n%s", got)
	}
	if k.numVFs(nvmePF) != 1 {
		t.Errorf("numvfs %d", k.numVFs(nvmePF))
	}
}

func TestDisable(t *testing.T) {
	k := newFakeKernel(t)
	if err := k.host.Enable(nvmePF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	k.vm(77, "/run/b.sock", "20")
	n := len(k.log)
	err := k.host.Disable(nvmePF)
	if !errors.Is(err, vfio.ErrInUse) || err.Error() != "0000:01:00.1 is in use by VM /run/b.sock (pid 77): stop that VM first" {
		t.Errorf("disable with a VF held: %v", err)
	}
	if err := k.host.Enable(nvmePF, 1, Options{}); !errors.Is(err, vfio.ErrInUse) {
		t.Errorf("a new count with a VF held: %v", err)
	}
	for _, l := range k.since(n) {
		if strings.HasPrefix(l, "write") || strings.Contains(l, "offline") {
			t.Errorf("a refused change still did %s", l)
		}
	}
	k.file("proc/77/cmdline", "") // the VM gone: its /proc entry too
	if err := removeAll(k.path("proc/77")); err != nil {
		t.Fatal(err)
	}
	n = len(k.log)
	if err := k.host.Disable(nvmePF); err != nil {
		t.Fatal(err)
	}
	got := k.since(n)
	if len(got) < 2 || got[0] != "write bus/pci/devices/"+nvmePF+"/sriov_numvfs 0" {
		t.Errorf("disable: %q", got)
	}
	if k.numVFs(nvmePF) != 0 {
		t.Errorf("numvfs %d", k.numVFs(nvmePF))
	}
	for _, s := range k.nvme.Secondaries {
		if s.Online || s.NVQ != 0 || s.NVI != 0 {
			t.Errorf("secondary not released: %+v", s)
		}
	}
	n = len(k.log)
	if err := k.host.Disable(nvmePF); err != nil || len(k.since(n)) != 0 {
		t.Errorf("disable with no VFs: %v %q", err, k.since(n))
	}
}

// TestEnableNIC: a PF with no NVMe side: autoprobe off, VFs, vfio-pci
// (loaded by modprobe when missing).
func TestEnableNIC(t *testing.T) {
	k := newFakeKernel(t)
	if err := k.host.Enable(nicPF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	dev := "write bus/pci/devices/"
	want := []string{
		dev + nicPF + "/sriov_drivers_autoprobe 0", dev + nicPF + "/sriov_numvfs 2",
		"modprobe vfio-pci",
		dev + "0000:02:10.0/driver_override vfio-pci", "write bus/pci/drivers_probe 0000:02:10.0",
		dev + "0000:02:10.1/driver_override vfio-pci", "write bus/pci/drivers_probe 0000:02:10.1",
	}
	if strings.Join(k.log, "\n") != strings.Join(want, "\n") {
		t.Errorf("steps:\n%s\n\nwant:\n%s", strings.Join(k.log, "\n"), strings.Join(want, "\n"))
	}
}

// TestBindFromHostDriver: a VF a host driver took (autoprobe was on)
// is unbound from it between driver_override and the probe.
func TestBindFromHostDriver(t *testing.T) {
	k := newFakeKernel(t)
	k.mkdir("sys/bus/pci/drivers/vfio-pci")
	k.file("sys/bus/pci/devices/"+nicPF+"/sriov_numvfs", "1\n")
	k.device("0000:02:10.0", map[string]string{"class": "0x020000"}, "igbvf", "30")
	k.link("../0000:02:10.0", "sys/bus/pci/devices/"+nicPF+"/virtfn0")
	if err := k.host.Enable(nicPF, 1, Options{}); err != nil {
		t.Fatal(err)
	}
	want := "write bus/pci/devices/0000:02:10.0/driver_override vfio-pci\n" +
		"write bus/pci/devices/0000:02:10.0/driver/unbind 0000:02:10.0\n" +
		"write bus/pci/drivers_probe 0000:02:10.0"
	if got := strings.Join(k.log, "\n"); got != want {
		t.Errorf("steps:\n%s\nwant:\n%s", got, want)
	}
	n := len(k.log)
	if err := k.host.Return("0000:02:10.0"); err != nil {
		t.Fatal(err)
	}
	want = "write bus/pci/devices/0000:02:10.0/driver/unbind 0000:02:10.0\n" +
		"write bus/pci/devices/0000:02:10.0/driver_override \n" +
		"write bus/pci/drivers_probe 0000:02:10.0"
	if got := strings.Join(k.since(n), "\n"); got != want {
		t.Errorf("return:\n%s\nwant:\n%s", got, want)
	}
}

// TestRefusals: each mistake is one sentence saying what to do, and
// changes nothing.
func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(k *fakeKernel)
		bdf   string
		n     int
		o     Options
		want  string
	}{
		{"too many", nil, nvmePF, 3, Options{}, "0000:01:00.0 has at most 2 VFs (sriov_totalvfs), not 3"},
		{"zero", nil, nvmePF, 0, Options{}, "enable needs 1 or more VFs, not 0: vio sriov disable 0000:01:00.0 turns them off"},
		{"not sriov", nil, plain, 1, Options{}, "0000:00:03.0 is not an SR-IOV physical function (it has no sriov_totalvfs): vio sriov list shows the host's PFs"},
		{"no device", nil, "0000:09:00.0", 1, Options{}, "there is no PCI device 0000:09:00.0: lspci -D lists them"},
		{"no iommu", func(k *fakeKernel) { removeAll(k.path("sys/bus/pci/devices/" + nvmePF + "/iommu_group")) }, nvmePF, 1, Options{},
			"intel_iommu=on (Intel) or amd_iommu=on (AMD)"},
		{"nvme unbound", func(k *fakeKernel) { removeAll(k.path("sys/bus/pci/devices/" + nvmePF + "/driver")) }, nvmePF, 1, Options{},
			"0000:01:00.0 is an NVMe controller with no driver: its secondary controllers are managed through the host's nvme driver, so bind it first"},
		{"vq too few", nil, nvmePF, 2, Options{VQ: 1}, "each VF needs at least 2 (an admin and an I/O queue) queue resources (VQ, --vq), not 1"},
		{"vq above the max", nil, nvmePF, 1, Options{VQ: 3}, "0000:01:00.0 gives one VF at most 2 queue resources (VQ, --vq), not 3"},
		{"vi on a nic", nil, nicPF, 1, Options{VI: 1}, "--vq and --vi are NVMe resources, and 0000:02:00.0 is not an NVMe controller"},
		{"no vfio-pci", func(k *fakeKernel) { k.modprobeErr = errors.New("exit status 1: module vfio-pci not found") }, nicPF, 1, Options{},
			"the vfio-pci driver is not loaded and modprobe vfio-pci failed (exit status 1: module vfio-pci not found): install the kernel's vfio-pci module"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeKernel(t)
			if tc.setup != nil {
				tc.setup(k)
			}
			err := k.host.Enable(tc.bdf, tc.n, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v\nwant %q", err, tc.want)
			}
			if strings.Count(err.Error(), "\n") > 0 {
				t.Errorf("more than a line: %q", err)
			}
			if tc.name != "no vfio-pci" {
				for _, l := range k.log {
					if strings.HasPrefix(l, "write") || strings.HasPrefix(l, "nvme offline") {
						t.Errorf("a refused enable did %s", l)
					}
				}
			}
		})
	}
	if _, err := ParseBDF("01:00"); err == nil || err.Error() != `"01:00" is not a PCI address: give one like 0000:01:00.0 (lspci -D lists them)` {
		t.Errorf("bad address: %v", err)
	}
	if b, err := ParseBDF("01:00.1"); err != nil || b != "0000:01:00.1" {
		t.Errorf("short address: %q %v", b, err)
	}
	k := newFakeKernel(t)
	if err := k.host.Enable(nvmePF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	if err := k.host.Enable("0000:01:00.1", 1, Options{}); err == nil || !strings.Contains(err.Error(), "0000:01:00.1 is a virtual function (not an SR-IOV physical function): name its PF, 0000:01:00.0") {
		t.Errorf("a VF named: %v", err)
	}
}

// TestShare: the even split and its limits.
func TestShare(t *testing.T) {
	for _, tc := range []struct {
		asked, n, total, max, min int
		want                      int
		err                       string
	}{
		{0, 2, 4, 2, 2, 2, ""},
		{0, 1, 4, 2, 2, 2, ""}, // capped at the per-VF maximum
		{0, 1, 4, 0, 2, 4, ""}, // no maximum reported
		{0, 3, 4, 2, 2, 0, "enable at most 2 VFs"},
		{3, 2, 8, 0, 2, 3, ""},
		{5, 2, 8, 0, 2, 0, "not 5 for each of 2 VFs"},
	} {
		got, err := share("0000:01:00.0", 0, tc.asked, tc.n, tc.total, tc.max, tc.min)
		if got != tc.want || (err == nil) != (tc.err == "") || (err != nil && !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%+v: %d, %v", tc, got, err)
		}
	}
}

// TestNVMeFailures: a command the controller refuses stops enable with
// the step and the controller's reason, and a PF the kernel cannot reset
// is named before anything is sent that would need the reset.
func TestNVMeFailures(t *testing.T) {
	k := newFakeKernel(t)
	k.nvme.Fail = map[string]uint16{"online 2": 0x4120}
	err := k.host.Enable(nvmePF, 2, Options{})
	if err == nil || err.Error() != "0000:01:00.0: VF 2: nvme online 2: the controller refused it: invalid secondary controller state (resources are assigned only while offline; online needs resources and an enabled VF) (status 0x4120)" {
		t.Errorf("online refused: %v", err)
	}

	k = newFakeKernel(t)
	removeAll(k.path("sys/bus/pci/devices/" + nvmePF + "/reset"))
	err = k.host.Enable(nvmePF, 2, Options{})
	if err == nil || !strings.Contains(err.Error(), "gives up only when reset, and the kernel has no way to reset it") {
		t.Errorf("no reset: %v", err)
	}
	for _, l := range k.log {
		if strings.HasPrefix(l, "nvme assign") || strings.HasPrefix(l, "nvme primary") || strings.Contains(l, "sriov_numvfs") {
			t.Errorf("went on without a way to reset: %s", l)
		}
	}

	// Another secondary holds part of the pool: too little is left.
	k = newFakeKernel(t)
	k.nvme.Secondaries = append(k.nvme.Secondaries, nvmevirt.Secondary{SCID: 3, VFN: 3, NVQ: 2, NVI: 1})
	k.nvme.Caps.VQRFA, k.nvme.Caps.VIRFA = 2, 1
	err = k.host.Enable(nvmePF, 2, Options{})
	if err == nil || err.Error() != "0000:01:00.0's flexible VQ resources, less what other secondary controllers hold, fall short of what these VFs need by 2: ask for fewer VFs or fewer per VF (--vq, --vi)" {
		t.Errorf("pool short: %v", err)
	}
	for _, l := range k.log {
		if strings.HasPrefix(l, "nvme primary") {
			t.Errorf("sent %s though the pool is short", l)
		}
	}

	// The primary already gave up its flexible share: no reset.
	k = newFakeKernel(t)
	k.nvme.Caps.VQRFAP, k.nvme.Caps.VIRFAP = 0, 0
	if err := k.host.Enable(nvmePF, 2, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, l := range k.log {
		if strings.Contains(l, "reset") || strings.Contains(l, "primary") {
			t.Errorf("reset the PF with the pool free: %s", l)
		}
	}
}
