package e2e

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
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
# Guest-side pass-through: vdb goes to vfio-pci and a user-space driver.
dev=$(basename "$(readlink -f /sys/block/vdb/device/..)")
echo "VIO-IOMMU vdb-group=$(basename "$(readlink /sys/bus/pci/devices/$dev/iommu_group 2>/dev/null)")"
echo vfio-pci > /sys/bus/pci/devices/$dev/driver_override
echo $dev > /sys/bus/pci/devices/$dev/driver/unbind
echo $dev > /sys/bus/pci/drivers_probe
echo "VIO-IOMMU vdb-driver=$(basename "$(readlink /sys/bus/pci/devices/$dev/driver)")"
# vio's VT-d unit does not remap interrupts, which type1 wants unless told.
echo 1 > /sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts
%s $dev %d %d
echo "VIO-IOMMU vfio-rc=$?"
dmesg | grep -i 'DMAR.*fault\|fault addr' | tail -5 | sed 's/^/VIO-FAULT /'
poweroff -f
`

// The sectors of the pass-through disk that the host fills and the
// guest's user-space driver writes.
const vfioHostSector, vfioWriteSector = 4096, 2048

// vfioBlk is the guest's user-space virtio-blk driver over VFIO
// (testdata/vfioblk), built static by TestMain.
var vfioBlk = os.Getenv("VIO_VFIOBLK")

var iommuFact = regexp.MustCompile(`VIO-IOMMU ([\w-]+)=(\S*)`)

// TestIOMMU: a stock Debian guest booted with intel_iommu=on iommu.strict=1
// on a VM with --iommu finds vio's emulated VT-d unit (DMAR table,
// /sys/class/iommu/dmar0), puts its virtio disk in an IOMMU group, and runs
// fio --verify on it through DMA remapping with no I/O error and no DMAR
// fault.
//
// Then guest-side pass-through: the guest binds its second virtio disk to
// vfio-pci and drives it from user space (testdata/vfioblk): it reads what
// the host wrote, writes what the host then finds in the image, and makes
// the hostile request, a buffer at an address its IOMMU domain does not
// map (a page of its own, which a device bypassing the IOMMU would
// overwrite): the page stays intact, the guest's IOMMU driver reports the
// DMAR fault, and the device works again after a reset.
func TestIOMMU(t *testing.T) {
	if vfioBlk == "" {
		t.Fatal("VIO_VFIOBLK is not set: run this package with go test, whose TestMain builds the guest program")
	}
	dir := t.TempDir()
	disk, pass := filepath.Join(dir, "disk.img"), filepath.Join(dir, "pass.img")
	run(t, "truncate", "-s", "16M", disk)
	hostData := bytes.Repeat([]byte("HOST-DATA-FOR-VFIO/"), 4096/19+1)[:4096]
	img := make([]byte, 4<<20)
	copy(img[vfioHostSector*512:], hostData)
	if err := os.WriteFile(pass, img, 0o644); err != nil {
		t.Fatal(err)
	}
	initrd, tools := labtest.Guest{
		Script:   fmt.Sprintf(iommuGuest, vfioBlk, vfioHostSector, vfioWriteSector),
		Modules:  []string{"virtio_pci", "virtio_blk", "vfio", "vfio_iommu_type1", "vfio_pci"},
		Programs: []string{"/usr/bin/fio", vfioBlk},
	}.Build(t)
	out, err := runVMM(t, 9*time.Minute, vioArgs(t, initrd, "--iommu",
		"--cmdline", "console=ttyS0 panic=-1 quiet intel_iommu=on iommu.strict=1",
		"--disk", "path="+disk, "--disk", "path="+pass, "--disk", "path="+tools+",readonly=on")...)
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

	// Guest-side pass-through.
	vf := map[string]string{}
	for _, m := range regexp.MustCompile(`VIO-VFIO ([\w-]+)=(.*)`).FindAllStringSubmatch(out, -1) {
		vf[m[1]] = strings.TrimSpace(m[2])
	}
	t.Logf("user-space driver: %v", vf)
	var faults []string
	for _, l := range strings.Split(out, "\n") {
		if f, ok := strings.CutPrefix(l, "VIO-FAULT "); ok {
			faults = append(faults, f)
			t.Log("guest's IOMMU driver: " + f)
		}
	}
	if facts["vdb-driver"] != "vfio-pci" || facts["vfio-rc"] != "0" || vf["done"] != "ok" {
		t.Fatalf("the guest's user-space driver did not finish (driver %q, exit %q, error %q):\n%s",
			facts["vdb-driver"], facts["vfio-rc"], vf["error"], out)
	}
	short := func(b []byte) string { h := sha256.Sum256(b); return fmt.Sprintf("%x", h[:8]) }
	if vf["host-sha"] != short(hostData) {
		t.Errorf("the guest read %q (sha %s) at sector %d, not what the host wrote (sha %s)", vf["host-data"], vf["host-sha"], vfioHostSector, short(hostData))
	}
	got, err := os.ReadFile(pass)
	if err != nil {
		t.Fatal(err)
	}
	if s := short(got[vfioWriteSector*512 : vfioWriteSector*512+4096]); s != vf["wrote-sha"] {
		t.Errorf("the image holds sha %s at sector %d, the guest wrote sha %s", s, vfioWriteSector, vf["wrote-sha"])
	}
	if vf["readback"] != "ok" || vf["after-reset"] != "ok" {
		t.Errorf("the guest read back other data: readback %q, after the reset %q", vf["readback"], vf["after-reset"])
	}
	if vf["canary"] != "ok" {
		t.Errorf("the device wrote to the guest page at %s, which the IOMMU does not map for it", vf["hostile-iova"])
	}
	if vf["hostile"] == "completed" {
		t.Errorf("the request with an unmapped buffer (%s) completed", vf["hostile-iova"])
	}
	// The page is page-aligned, and the fault record holds its page.
	if !strings.Contains(strings.Join(faults, "\n"), "fault addr "+vf["hostile-iova"]+" ") {
		t.Errorf("the guest saw no DMAR fault at the page of %s: %q", vf["hostile-iova"], faults)
	}
}
