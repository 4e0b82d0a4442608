package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

const (
	sriovVFs    = 4
	sriovOffset = 1 << 20 // where the guest writes each VF's pattern
	sriovImage  = 4 << 20
)

// sriovGuest enables the PF's VFs through sysfs as an administrator
// would, finds each VF's disk, writes a pattern of its own on all of them
// at once, resets one VF (FLR) while another keeps writing, and disables
// the VFs again.
var sriovGuest = `
check() { if [ "$2" = 0 ]; then echo "CHECK $1 ok $3"; else echo "CHECK $1 fail $3"; fi; }
pf=$(basename "$(readlink -f /sys/block/vda/device/..)")
echo "VIO-SRIOV pf=$pf total=$(cat /sys/bus/pci/devices/$pf/sriov_totalvfs)"
echo ` + fmt.Sprint(sriovVFs) + ` > /sys/bus/pci/devices/$pf/sriov_numvfs; check enable $?
# Each VF's disk: the block device under the VF's virtio device.
vfdisk() { ls /sys/bus/pci/devices/$1/virtio*/block 2>/dev/null | head -1; }
i=0; while [ -z "$(vfdisk $(basename "$(readlink /sys/bus/pci/devices/$pf/virtfn` + fmt.Sprint(sriovVFs-1) + `)"))" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
n=0; for n in $(seq 0 ` + fmt.Sprint(sriovVFs-1) + `); do
	vf=$(basename "$(readlink /sys/bus/pci/devices/$pf/virtfn$n)")
	eval vf$n=$vf
	eval disk$n=$(vfdisk $vf)
	echo "VIO-SRIOV vf$n=$vf disk=$(vfdisk $vf) driver=$(basename "$(readlink /sys/bus/pci/devices/$vf/driver)") reset=$(cat /sys/bus/pci/devices/$vf/reset_method 2>/dev/null)"
done
# All VFs at once, each its own pattern.
for n in $(seq 0 ` + fmt.Sprint(sriovVFs-1) + `); do
	eval d=\$disk$n
	( yes "VF-$n-DATA" | head -c 65536 > /tmp/p$n; dd if=/tmp/p$n of=/dev/$d bs=4096 seek=` + fmt.Sprint(sriovOffset/4096) + ` conv=fsync 2>/dev/null; echo $? > /tmp/rc$n ) &
done
wait
for n in $(seq 0 ` + fmt.Sprint(sriovVFs-1) + `); do
	eval d=\$disk$n
	dd if=/dev/$d bs=4096 skip=` + fmt.Sprint(sriovOffset/4096) + ` count=16 2>/dev/null > /tmp/r$n
	cmp -s /tmp/p$n /tmp/r$n; check vf$n-data $(( $? + $(cat /tmp/rc$n) ))
done
# FLR of VF 1, unbound from its driver, while VF 0 keeps writing.
echo $vf1 > /sys/bus/pci/drivers/virtio-pci/unbind; check unbind $?
# 40 writes of 64 KiB, 32 KiB apart from 2 MiB on: within the 4 MiB image.
( i=0; while [ $i -lt 40 ]; do dd if=/tmp/p0 of=/dev/$disk0 bs=4096 seek=$((512 + i*8)) conv=fsync 2>/dev/null || exit 1; i=$((i+1)); done ) &
busy=$!
echo 1 > /sys/bus/pci/devices/$vf1/reset; check flr $?
wait $busy; check vf0-during-flr $?
dd if=/dev/$disk0 bs=4096 skip=$((512 + 39*8)) count=16 2>/dev/null | cmp -s /tmp/p0 -; check vf0-after-flr $?
echo $vf1 > /sys/bus/pci/drivers/virtio-pci/bind; check rebind $?
i=0; while [ -z "$(vfdisk $vf1)" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
d=$(vfdisk $vf1); dd if=/dev/$d bs=4096 skip=` + fmt.Sprint(sriovOffset/4096) + ` count=16 2>/dev/null | cmp -s /tmp/p1 -; check vf1-after-flr $? "$d"
echo 0 > /sys/bus/pci/devices/$pf/sriov_numvfs; check disable $?
left=$(ls -d /sys/bus/pci/devices/$pf/virtfn* 2>/dev/null | wc -l)
[ "$left" = 0 ]; check vfs-gone $? "$left left"
echo "VIO-SRIOV disks-after=$(ls /sys/block | grep vd | tr '\n' ' ')"
dmesg | grep -i -E 'sr-?iov|virtfn|VF' | head -10 | sed 's/^/VIO-DMESG /'
echo VIO-GUEST-DONE
poweroff -f
`

// TestSRIOV: a virtio-blk physical function with four virtual functions,
// each on an image of its own (--disk path=PF,vfs=A+B+C+D). A stock Linux
// guest enables them with sriov_numvfs: each VF gets its own virtio-blk
// driver instance and disk; the four are written at once and each image
// holds only its own VF's data; a Function Level Reset of one VF (through
// sysfs, unbound) leaves another's writes undisturbed, and the reset VF
// works again once rebound; disabling the VFs removes them cleanly.
func TestSRIOV(t *testing.T) {
	dir := t.TempDir()
	pf := filepath.Join(dir, "pf.img")
	if err := os.WriteFile(pf, bytes.Repeat([]byte("PF"), sriovImage/2), 0o644); err != nil {
		t.Fatal(err)
	}
	var vfs []string
	for n := range sriovVFs {
		p := filepath.Join(dir, fmt.Sprintf("vf%d.img", n))
		if err := os.WriteFile(p, make([]byte, sriovImage), 0o644); err != nil {
			t.Fatal(err)
		}
		vfs = append(vfs, p)
	}
	initrd := labtest.Initramfs(t, sriovGuest, "virtio_pci", "virtio_blk")
	log, stderr := runSerial(t, 5*time.Minute, vioArgs(t, initrd,
		"--disk", "path="+pf+",vfs="+strings.Join(vfs, "+"))...)
	r := readReport(t, log, "VIO-SRIOV", "VIO-DMESG")
	checks := []string{"enable", "unbind", "flr", "vf0-during-flr", "vf0-after-flr", "rebind", "vf1-after-flr", "disable", "vfs-gone"}
	for n := range sriovVFs {
		checks = append(checks, fmt.Sprintf("vf%d-data", n))
	}
	r.expect(t, checks...)
	if t.Failed() {
		t.Logf("vio:\n%s", stderr)
	}
	// Each image holds its own VF's pattern, and only it.
	for n, p := range vfs {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		want := []byte(fmt.Sprintf("VF-%d-DATA\n", n))
		if !bytes.HasPrefix(b[sriovOffset:], want) {
			t.Errorf("vf%d.img at %d: %q, want %q", n, sriovOffset, b[sriovOffset:sriovOffset+16], want)
		}
		for m := range sriovVFs {
			if m != n && bytes.Contains(b, []byte(fmt.Sprintf("VF-%d-DATA", m))) {
				t.Errorf("vf%d.img holds VF %d's data", n, m)
			}
		}
	}
	if b, err := os.ReadFile(pf); err != nil || !bytes.Equal(b, bytes.Repeat([]byte("PF"), sriovImage/2)) {
		t.Errorf("the PF's image changed (%v)", err)
	}
}
