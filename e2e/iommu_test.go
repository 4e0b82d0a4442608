package e2e

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// iommuGuest checks that Linux's intel-iommu driver took vio's emulated
// VT-d unit and put the virtio disk behind it, then runs fio --verify on
// that disk (every request's buffers mapped and unmapped through the
// IOMMU: iommu.strict=1 invalidates at each unmap) and reports.
const iommuGuest = `
echo "VIO-IOMMU dmar=$(ls /sys/class/iommu 2>/dev/null | tr '\n' ' ')"
echo "VIO-IOMMU groups=$(ls /sys/kernel/iommu_groups 2>/dev/null | wc -l)"
dev=$(basename "$(readlink -f /sys/block/vda/device/..)")
echo "VIO-IOMMU vda-pci=$dev"
echo "VIO-IOMMU vda-group=$(basename "$(readlink /sys/bus/pci/devices/$dev/iommu_group 2>/dev/null)")"
echo "VIO-IOMMU strict=$(dmesg | grep -c 'invalidation policy: strict')"
echo "VIO-IOMMU enabled=$(dmesg | grep -c -E 'DMAR: (IOMMU enabled|Intel\(R\) Virtualization Technology for Directed I/O)')"
fio --name=iommu --filename=/dev/vda --size=8M --rw=randwrite --bs=4k --ioengine=psync --direct=1 \
	--verify=crc32c --do_verify=1 --verify_fatal=1 --numjobs=1 > /tmp/fio.log 2>&1
echo "VIO-IOMMU fio=$?"
echo "VIO-IOMMU ioerr=$(dmesg | grep -c 'I/O error')"
echo "VIO-IOMMU faults=$(dmesg | grep -c -i 'DMAR.*fault')"
dmesg | grep -i -E 'DMAR|iommu' | head -20 | sed 's/^/VIO-DMESG /'
tail -3 /tmp/fio.log
poweroff -f
`

var iommuFact = regexp.MustCompile(`VIO-IOMMU ([\w-]+)=(\S*)`)

// TestIOMMU: a stock Debian guest booted with intel_iommu=on iommu.strict=1
// on a VM with --iommu finds vio's emulated VT-d unit (DMAR table,
// /sys/class/iommu/dmar0), puts its virtio disk in an IOMMU group, and runs
// fio --verify on it through DMA remapping with no I/O error and no DMAR
// fault.
func TestIOMMU(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "disk.img")
	run(t, "truncate", "-s", "16M", disk)
	initrd, tools := labtest.Guest{
		Script:   iommuGuest,
		Modules:  []string{"virtio_pci", "virtio_blk"},
		Programs: []string{"/usr/bin/fio"},
	}.Build(t)
	out, err := runVMM(t, 6*time.Minute, vioArgs(t, initrd, "--iommu",
		"--cmdline", "console=ttyS0 panic=-1 quiet intel_iommu=on iommu.strict=1",
		"--disk", "path="+disk, "--disk", "path="+tools+",readonly=on")...)
	if err != nil {
		t.Fatalf("vio: %v\n%s", err, out)
	}
	facts := map[string]string{}
	for _, m := range iommuFact.FindAllStringSubmatch(out, -1) {
		facts[m[1]] = m[2]
	}
	t.Logf("guest: %v", facts)
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "VIO-DMESG ") {
			t.Log(strings.TrimPrefix(l, "VIO-DMESG "))
		}
	}
	if facts["dmar"] != "dmar0" || facts["enabled"] == "0" || facts["enabled"] == "" {
		t.Fatalf("the guest did not take the IOMMU: %v\n%s", facts, out)
	}
	if facts["strict"] != "1" {
		t.Errorf("the guest's IOMMU is not in strict mode (every unmap invalidated at once): %v", facts)
	}
	if facts["groups"] == "0" || facts["vda-group"] == "" {
		t.Errorf("the virtio disk is in no IOMMU group: %v", facts)
	}
	if facts["fio"] != "0" || facts["ioerr"] != "0" || facts["faults"] != "0" {
		t.Fatalf("I/O through the IOMMU failed: %v\n%s", facts, out)
	}
}
