package e2e

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/viovmm/vio/lab/labtest"
)

// The marks the guest of TestQEMUServeDisk writes with dd, each 1 MiB of a
// line repeated (as busybox's yes | head -c makes it): one before fio,
// through the first serve-disk, one after, through the restarted one.
// Both lie past fio's 8 MiB.
const (
	serveDiskMarkLen  = 1 << 20
	serveDiskMarkAOff = 32 << 20
	serveDiskMarkBOff = 40 << 20
	serveDiskFioBytes = 8 << 20
)

// serveDiskMark is the line of mark which ("A" or "B") for nonce.
func serveDiskMark(which, nonce string) string { return "VIO-QEMU-VU " + which + " " + nonce }

// qemuServeDiskGuest is vhostUserGuest with the marks around its fio
// rounds and, at the end, the SHA-256 of fio's region as the guest reads
// it (O_DIRECT, so from the back-end): FIOSUM. The nonce comes from the
// kernel command line (vu.nonce=), so that an image left from another run
// cannot pass.
var qemuServeDiskGuest = vhostUserFioGuest(
	fmt.Sprintf(`nonce=$(sed -n 's/.*vu.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
mark() { yes "VIO-QEMU-VU $1 $nonce" | head -c %d > /tmp/mark; dd if=/tmp/mark of=/dev/vda bs=%d seek=$2 oflag=direct conv=fsync 2>/tmp/dd.log; check mark-$1 $? "$(tail -1 /tmp/dd.log)"; }
mark A %d
`, serveDiskMarkLen, serveDiskMarkLen, serveDiskMarkAOff/serveDiskMarkLen),
	fmt.Sprintf(`mark B %d
echo "FIOSUM $(dd if=/dev/vda bs=1048576 count=%d iflag=direct 2>/dev/null | sha256sum | cut -d' ' -f1)"
`, serveDiskMarkBOff/serveDiskMarkLen, serveDiskFioBytes>>20))

// TestQEMUServeDisk is vio's back-end under QEMU's front-end with a
// booted Linux guest (vhostuser/qemu_test.go drives QEMU's front-end with
// qtest only): QEMU 7.2's vhost-user-blk-pci on `vio serve-disk`'s socket,
// guest RAM a shared memfd, the chardev reconnecting. The guest runs
// vhostUserGuest's fio --verify rounds at iodepth 16; after the first,
// serve-disk is SIGKILLed and started again on the same socket, and
// QEMU reconnects and hands the new one its inflight region, so the
// requests the dead one had taken are redone: every round must end with
// err=0. Then the host reads the image file itself: the marks the guest
// wrote before and after the restart must be there, and fio's region must
// hash as the guest read it at the end.
func TestQEMUServeDisk(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("qemu-system-x86_64 is not installed: run scripts/setup-host")
	}
	dir := t.TempDir()
	img := filepath.Join(dir, "vu.raw")
	sock := filepath.Join(dir, "vu.sock")
	a := labtest.Assets(t)
	initrd, tools := labtest.Guest{
		Script:   qemuServeDiskGuest,
		Modules:  []string{"virtio_pci", "virtio_blk"},
		Programs: []string{"/usr/bin/fio"},
	}.Build(t)
	const depth = 16
	iops := map[string]string{}
	for attempt := 1; ; attempt++ {
		run(t, "rm", "-f", img)
		run(t, "truncate", "-s", "64M", img)
		var n [8]byte
		rand.Read(n[:])
		nonce := hex.EncodeToString(n[:])
		mem := strconv.Itoa(guestMemMiB) + "M"
		qargs := []string{qemu, "-enable-kvm", "-cpu", "host", "-smp", "2", "-m", mem,
			"-nodefaults", "-display", "none", "-no-reboot", "-serial", "stdio",
			"-kernel", a.Kernel, "-initrd", initrd,
			"-append", "console=ttyS0 panic=-1 quiet vu.depth=" + strconv.Itoa(depth) + " vu.nonce=" + nonce,
			// A vhost-user back-end maps guest RAM: it must be a shared
			// file (here a memfd), not QEMU's private anonymous memory.
			"-object", "memory-backend-memfd,id=mem,size=" + mem + ",share=on", "-machine", "memory-backend=mem",
			// reconnect=1: QEMU connects again (every second) when the
			// back-end goes, which the restart needs; it also waits so
			// for the first serve-disk to listen.
			"-chardev", "socket,id=c0,path=" + sock + ",reconnect=1",
			// The served disk first: the guest's tools disk is its
			// last virtio disk.
			"-device", "vhost-user-blk-pci,chardev=c0,num-queues=1",
			"-drive", "file=" + tools + ",if=none,id=d1,format=raw,readonly=on", "-device", "virtio-blk-pci,drive=d1"}
		r, stall := killRestartRun(t, "serve-disk under QEMU", startServeDisk, depth, img, sock, qargs, iops)
		if stall == "" {
			if !t.Failed() {
				checkServedImage(t, img, nonce, r)
			}
			t.Logf("fio randwrite 4k IOPS under QEMU on vio serve-disk (the last round): %s", iops["serve-disk under QEMU"])
			return
		}
		if attempt == 2 {
			t.Fatalf("the lab hazard hit twice in a row (%s)", stall)
		}
		// The nested lab's hazards (see TestVhostUserFrontend): once
		// more, on a fresh image and nonce.
		t.Logf("lab hazard: %s; running once more on a fresh image", stall)
	}
}

// checkServedImage reads what the guest wrote through serve-disk from the
// image file: both marks, and fio's region as the guest last read it.
// serve-disk wrote with pwrite (cache=writeback), so the file shows it
// even though the last serve-disk may not have been stopped yet.
func checkServedImage(t *testing.T, img, nonce string, r guestReport) {
	t.Helper()
	r.expect(t, "mark-A", "mark-B")
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, m := range []struct {
		which string
		off   int64
	}{{"A", serveDiskMarkAOff}, {"B", serveDiskMarkBOff}} {
		line := serveDiskMark(m.which, nonce) + "\n"
		want := bytes.Repeat([]byte(line), serveDiskMarkLen/len(line)+1)[:serveDiskMarkLen]
		got := make([]byte, serveDiskMarkLen)
		if _, err := f.ReadAt(got, m.off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			i := 0
			for i < len(got) && got[i] == want[i] {
				i++
			}
			t.Errorf("mark %s at %d MiB: the image differs from what the guest wrote from byte %d on: %q", m.which, m.off>>20, i, got[i:min(i+40, len(got))])
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, serveDiskFioBytes)); err != nil {
		t.Fatal(err)
	}
	host := hex.EncodeToString(h.Sum(nil))
	if guest := r.value("FIOSUM"); guest != host {
		t.Errorf("fio's %d MiB: the image file hashes %s, the guest read %q", serveDiskFioBytes>>20, host, guest)
	} else if !t.Failed() {
		t.Logf("fio's %d MiB in the image file hash as the guest read them (%s); marks A and B in place", serveDiskFioBytes>>20, host[:16])
	}
}
