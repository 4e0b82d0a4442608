package sriov

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/viovmm/vio/sriov/nvmevirt"
	"github.com/viovmm/vio/sriov/nvmevirt/nvmefake"
)

// fakeKernel is a sysfs tree laid out as the kernel does for PCI devices
// with SR-IOV, with Host.Write playing the kernel's side of each write
// (VFs appearing on sriov_numvfs, drivers binding on drivers_probe), an
// NVMe PF's controller modelled by nvmefake, and a /proc to put VMs in.
// Every write and every admin command lands in log, in order.
type fakeKernel struct {
	t    *testing.T
	root string
	log  []string
	nvme *nvmefake.Controller
	host *Host
	// modprobed is set by the fake modprobe, which makes vfio-pci
	// appear unless modprobeErr is set.
	modprobed   bool
	modprobeErr error
}

const (
	nvmePF = "0000:01:00.0"
	nicPF  = "0000:02:00.0"
	plain  = "0000:00:03.0"
)

func newFakeKernel(t *testing.T) *fakeKernel {
	t.Helper()
	k := &fakeKernel{t: t, root: t.TempDir(), nvme: nvmefake.New(2)}
	k.nvme.VFsEnabled = func() int { return k.numVFs(nvmePF) }
	for _, d := range []string{"sys/bus/pci/devices", "sys/bus/pci/drivers/nvme", "sys/bus/pci/drivers/igb",
		"sys/bus/pci/drivers/igbvf", "sys/bus/pci/drivers/virtio-pci", "proc", "dev"} {
		k.mkdir(d)
	}
	k.device(nvmePF, map[string]string{"vendor": "0x1b36", "device": "0x0010", "class": "0x010802",
		"sriov_totalvfs": "2", "sriov_numvfs": "0", "sriov_drivers_autoprobe": "1", "reset": ""}, "nvme", "10")
	k.mkdir("sys/bus/pci/devices/" + nvmePF + "/nvme/nvme0")
	k.file("sys/bus/pci/devices/"+nvmePF+"/nvme/nvme0/state", "live\n")
	k.device(nicPF, map[string]string{"vendor": "0x8086", "device": "0x10c9", "class": "0x020000",
		"sriov_totalvfs": "7", "sriov_numvfs": "0", "sriov_drivers_autoprobe": "1"}, "igb", "11")
	k.mkdir("sys/bus/pci/devices/" + nicPF + "/net/enp2s0f0")
	k.device(plain, map[string]string{"vendor": "0x1af4", "device": "0x1001", "class": "0x010000"}, "virtio-pci", "3")
	k.host = &Host{
		Sys: k.path("sys"), Proc: k.path("proc"), Dev: k.path("dev"),
		Write: k.write,
		Modprobe: func(m string) error {
			k.log = append(k.log, "modprobe "+m)
			k.modprobed = true
			if k.modprobeErr != nil {
				return k.modprobeErr
			}
			k.mkdir("sys/bus/pci/drivers/" + m)
			return nil
		},
		OpenNVMe: func(path string) (NVMeController, error) {
			if path != k.path("dev/nvme0") {
				return nil, fmt.Errorf("open %s: no such device", path)
			}
			return recorder{k}, nil
		},
	}
	return k
}

// recorder is the NVMe controller as the Host sees it: nvmefake, its
// commands logged with the sysfs writes.
type recorder struct{ k *fakeKernel }

func (r recorder) Submit(c *nvmevirt.Command) error {
	err := r.k.nvme.Submit(c)
	r.k.log = append(r.k.log, "nvme "+r.k.nvme.Log[len(r.k.nvme.Log)-1])
	return err
}

func (r recorder) Close() error { return nil }

func (k *fakeKernel) path(rel string) string { return filepath.Join(k.root, rel) }

func (k *fakeKernel) mkdir(rel string) {
	k.t.Helper()
	if err := os.MkdirAll(k.path(rel), 0o755); err != nil {
		k.t.Fatal(err)
	}
}

func (k *fakeKernel) file(rel, v string) {
	k.t.Helper()
	if err := os.WriteFile(k.path(rel), []byte(v), 0o644); err != nil {
		k.t.Fatal(err)
	}
}

func (k *fakeKernel) link(target, rel string) {
	k.t.Helper()
	os.Remove(k.path(rel))
	if err := os.Symlink(target, k.path(rel)); err != nil {
		k.t.Fatal(err)
	}
}

func (k *fakeKernel) read(rel string) string {
	b, _ := os.ReadFile(k.path(rel))
	return strings.TrimSpace(string(b))
}

// device makes a PCI device directory with its attribute files, driver
// link (when driver is set) and IOMMU group link (when group is set).
func (k *fakeKernel) device(bdf string, attrs map[string]string, driver, group string) {
	dir := "sys/bus/pci/devices/" + bdf
	k.mkdir(dir)
	for n, v := range attrs {
		k.file(dir+"/"+n, v+"\n")
	}
	if driver != "" {
		k.link("../../../bus/pci/drivers/"+driver, dir+"/driver")
	}
	if group != "" {
		k.mkdir("sys/kernel/iommu_groups/" + group)
		k.link("../../../kernel/iommu_groups/"+group, dir+"/iommu_group")
	}
}

func (k *fakeKernel) numVFs(pf string) int {
	n, _ := strconv.Atoi(k.read("sys/bus/pci/devices/" + pf + "/sriov_numvfs"))
	return n
}

// vfBDF is where the fake puts VF i of a PF: the NVMe PF's after it on
// its bus (as QEMU's are), the NIC's on device 0x10.
func vfBDF(pf string, i int) string {
	if pf == nvmePF {
		return fmt.Sprintf("0000:01:00.%d", i+1)
	}
	return fmt.Sprintf("0000:02:10.%d", i)
}

// write is the kernel's side of a sysfs write.
func (k *fakeKernel) write(path, value string) error {
	rel, err := filepath.Rel(k.path("sys"), path)
	if err != nil || strings.HasPrefix(rel, "..") {
		k.t.Fatalf("a write outside sysfs: %s", path)
	}
	k.log = append(k.log, "write "+rel+" "+strings.TrimSpace(value))
	parts := strings.Split(rel, "/")
	attr := parts[len(parts)-1]
	if rel == "bus/pci/drivers_probe" {
		dev := "sys/bus/pci/devices/" + value
		if drv := k.read(dev + "/driver_override"); drv != "" {
			if _, err := os.Stat(k.path("sys/bus/pci/drivers/" + drv)); err == nil {
				k.link("../../../bus/pci/drivers/"+drv, dev+"/driver")
			}
		}
		return nil
	}
	if len(parts) < 5 || parts[2] != "devices" {
		k.t.Fatalf("unexpected write to %s", rel)
	}
	bdf := parts[3]
	dev := "sys/bus/pci/devices/" + bdf
	switch attr {
	case "sriov_numvfs":
		n, err := strconv.Atoi(value)
		if err != nil {
			return syscall.EINVAL
		}
		cur := k.numVFs(bdf)
		if n > 0 && cur > 0 {
			return syscall.EBUSY // the kernel changes the count only from 0
		}
		for i := 0; i < cur; i++ {
			os.RemoveAll(k.path("sys/bus/pci/devices/" + vfBDF(bdf, i)))
			os.Remove(k.path(dev + "/virtfn" + strconv.Itoa(i)))
		}
		if n == 0 && bdf == nvmePF {
			k.nvme.VFsDisabled()
		}
		driver := "" // sriov_drivers_autoprobe=0: no driver probes the VFs
		if k.read(dev+"/sriov_drivers_autoprobe") != "0" {
			driver = map[string]string{nvmePF: "nvme", nicPF: "igbvf"}[bdf]
		}
		for i := 0; i < n; i++ {
			v := vfBDF(bdf, i)
			k.device(v, map[string]string{"vendor": "0x1b36", "class": "0x010802"}, driver, strconv.Itoa(map[string]int{nvmePF: 20, nicPF: 30}[bdf]+i))
			k.link("../"+bdf, "sys/bus/pci/devices/"+v+"/physfn")
			k.link("../"+v, dev+"/virtfn"+strconv.Itoa(i))
		}
		k.file(dev+"/sriov_numvfs", value+"\n")
	case "sriov_drivers_autoprobe", "driver_override":
		k.file(dev+"/"+attr, value)
	case "unbind":
		os.Remove(k.path(dev + "/driver"))
	case "reset":
		if bdf == nvmePF {
			k.nvme.FunctionReset()
		}
	default:
		k.t.Fatalf("unexpected write to %s", rel)
	}
	return nil
}

// vm puts a process in /proc with group's /dev/vfio file open.
func (k *fakeKernel) vm(pid int, socket, group string) {
	d := "proc/" + strconv.Itoa(pid)
	k.mkdir(d + "/fd")
	k.file(d+"/cmdline", "vio\x00run\x00--api-socket\x00"+socket+"\x00")
	k.link("/dev/vfio/"+group, d+"/fd/7")
}

// since returns the log entries after the first n.
func (k *fakeKernel) since(n int) []string { return append([]string(nil), k.log[n:]...) }
