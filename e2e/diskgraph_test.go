package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// faultsGuest reads three ranges of its disk: before, inside and after the
// range the faults node fails, and reports dd's status for each, the
// kernel's I/O error lines and a checksum of the first 4 MiB.
const faultsGuest = `
dd if=/dev/vda of=/dev/null bs=4096 count=1024 2>/dev/null; echo "VIO-FAULTS head=$?"
dd if=/dev/vda of=/dev/null bs=4096 skip=1024 count=16 2>/dev/null; echo "VIO-FAULTS bad=$?"
dd if=/dev/vda of=/dev/null bs=4096 skip=1040 count=1008 2>/dev/null; echo "VIO-FAULTS tail=$?"
echo "VIO-FAULTS ioerr=$(dmesg | grep -c 'I/O error')"
echo "VIO-FAULTS sum=$(dd if=/dev/vda bs=4096 count=1024 2>/dev/null | sha256sum | cut -d' ' -f1)"
dmesg | grep 'I/O error' | head -3
poweroff -f
`

var faultsFact = regexp.MustCompile(`VIO-FAULTS (\w+)=(\S*)`)

// TestDiskGraphFaults: a disk given as a graph (faults over raw) in a
// config file; the guest's reads of the failed range end in an I/O error
// (dd fails, the kernel logs it), the rest of the disk reads fine.
func TestDiskGraphFaults(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.img")
	run(t, "dd", "if=/dev/urandom", "of="+img, "bs=1M", "count=8", "status=none")
	want := strings.Fields(run(t, "sh", "-c", "head -c 4194304 "+img+" | sha256sum"))[0]
	cfg := filepath.Join(dir, "vm.json")
	graph := fmt.Sprintf(`{"disks":[{"id":"d0","graph":{"node":"faults","name":"f0",
		"options":{"rules":[{"ops":"read","offset":"4M","length":"64K","error":"EIO"}]},
		"children":[{"node":"raw","path":%q}]}}]}`, img)
	if err := os.WriteFile(cfg, []byte(graph), 0o644); err != nil {
		t.Fatal(err)
	}
	initrd := labtest.Initramfs(t, faultsGuest, "virtio_pci", "virtio_blk")
	out, err := runVMM(t, 4*time.Minute, vioArgs(t, initrd, "--config", cfg)...)
	if err != nil {
		t.Fatalf("vio: %v\n%s", err, out)
	}
	facts := map[string]string{}
	for _, m := range faultsFact.FindAllStringSubmatch(out, -1) {
		facts[m[1]] = m[2]
	}
	t.Logf("guest: %v", facts)
	if len(facts) < 5 {
		t.Fatalf("guest did not report; console:\n%s", out)
	}
	if facts["head"] != "0" || facts["tail"] != "0" {
		t.Errorf("reads outside the failed range: head %s, tail %s; want 0 and 0\n%s", facts["head"], facts["tail"], out)
	}
	if facts["bad"] == "0" {
		t.Errorf("the read of the failed range succeeded\n%s", out)
	}
	if facts["ioerr"] == "0" || facts["ioerr"] == "" {
		t.Errorf("the kernel logged no I/O error\n%s", out)
	}
	if facts["sum"] != want {
		t.Errorf("guest read %s for the first 4 MiB, the image holds %s", facts["sum"], want)
	}
}
