package e2e

import (
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/viovmm/vio/lab/labtest"
)

// journalGuest is the guest half of TestJournal. Phase 1 writes files on
// the journalled ext4 disk (vda) and 1 MiB of random data over the undo
// disk (vdb), which it reads back; phase 2 deletes and rewrites files and
// adds one; every phase reports each file's checksum.
const journalGuest = `
phase=$(sed -n 's/.*vio\.phase=\([0-9]\).*/\1/p' /proc/cmdline)
mkdir -p /mnt /tmp
mount -t ext4 /dev/vda /mnt || { echo "VIO-J fail=mount"; poweroff -f; }
case $phase in
1)
	for i in 1 2 3 4 5; do head -c $((i*37000)) /dev/urandom > /mnt/f$i; done
	mkdir /mnt/d && head -c 5000 /dev/urandom > /mnt/d/inner
	head -c 1048576 /dev/urandom > /tmp/u
	w=$(sha256sum < /tmp/u | cut -d' ' -f1)
	dd if=/tmp/u of=/dev/vdb bs=65536 conv=fsync 2>/dev/null
	echo 3 > /proc/sys/vm/drop_caches
	r=$(head -c 1048576 /dev/vdb | sha256sum | cut -d' ' -f1)
	echo "VIO-J undo wrote=$w read=$r"
	;;
2)
	rm /mnt/f2 /mnt/f4 /mnt/d/inner
	head -c 9999 /dev/urandom > /mnt/f1
	head -c 80000 /dev/urandom > /mnt/g1
	;;
esac
sync
cd /mnt && find . -type f | sort | while read f; do echo "VIO-J file $f $(sha256sum < "$f" | cut -d' ' -f1)"; done
cd /
umount /mnt || echo "VIO-J fail=umount"
echo "VIO-J done phase=$phase"
poweroff -f
`

var (
	journalFile = regexp.MustCompile(`VIO-J file (\S+) ([0-9a-f]{64})`)
	journalUndo = regexp.MustCompile(`VIO-J undo wrote=(\w+) read=(\w+)`)
)

// TestJournal: time travel and an undo disk with a stock Linux guest, in
// three boots of one VM config. The ext4 disk is a journal over a raw
// image; the second disk is an undo disk over a raw image of random bytes.
// Boot 1 writes files and the undo disk; the host marks the journal
// offline; boot 2 deletes and rewrites files; the host reverts to the mark
// with vio image journal; boot 3 must see exactly boot 1's files, checksum
// for checksum. The undo disk's image is unchanged after every boot, though
// the guest read back what it wrote.
func TestJournal(t *testing.T) {
	dir := t.TempDir()
	base, log, undo := filepath.Join(dir, "base.img"), filepath.Join(dir, "base.journal"), filepath.Join(dir, "undo.img")
	run(t, "mkfs.ext4", "-q", "-F", base, "64M")
	run(t, "dd", "if=/dev/urandom", "of="+undo, "bs=1M", "count=4", "status=none")
	sum := func(f string) string { return strings.Fields(run(t, "sha256sum", f))[0] }
	baseSum, undoSum := sum(base), sum(undo)

	cfg := filepath.Join(dir, "vm.json")
	spec := fmt.Sprintf(`{"disks":[
		{"id":"d0","graph":{"node":"journal","name":"j0","options":{"log":%q},"children":[{"node":"raw","path":%q}]}},
		{"id":"d1","graph":{"node":"journal","options":{"undo":true},"children":[{"node":"raw","path":%q}]}}]}`, log, base, undo)
	if err := os.WriteFile(cfg, []byte(spec), 0o644); err != nil {
		t.Fatal(err)
	}
	initrd := labtest.Initramfs(t, journalGuest, "virtio_pci", "virtio_blk", "ext4")
	boot := func(phase int) (files map[string]string, console string) {
		t.Helper()
		args := vioArgs(t, initrd, "--config", cfg)
		for i, a := range args {
			if a == "--cmdline" {
				args[i+1] += fmt.Sprintf(" vio.phase=%d", phase)
			}
		}
		out, err := runVMM(t, 4*time.Minute, args...)
		if err != nil {
			t.Fatalf("boot %d: vio: %v\n%s", phase, err, out)
		}
		if !strings.Contains(out, fmt.Sprintf("VIO-J done phase=%d", phase)) || strings.Contains(out, "VIO-J fail") {
			t.Fatalf("boot %d: the guest did not finish its phase; console:\n%s", phase, out)
		}
		files = map[string]string{}
		for _, m := range journalFile.FindAllStringSubmatch(out, -1) {
			files[m[1]] = m[2]
		}
		if got := sum(undo); got != undoSum {
			t.Fatalf("boot %d changed the undo disk's image (sha256 %s, was %s)", phase, got, undoSum)
		}
		if got := sum(base); got != baseSum {
			t.Fatalf("boot %d wrote to the journalled disk's base image", phase)
		}
		return files, out
	}
	vioImage := func(args ...string) string {
		t.Helper()
		return run(t, vioBin, append([]string{"image", "journal"}, args...)...)
	}

	files1, out := boot(1)
	t.Logf("boot 1: %d files", len(files1))
	if len(files1) != 6 {
		t.Fatalf("boot 1 reported %d files, want 6:\n%s", len(files1), out)
	}
	m := journalUndo.FindStringSubmatch(out)
	if m == nil || m[1] != m[2] || m[1] == undoSum {
		t.Fatalf("the guest did not read back what it wrote to the undo disk: %v\n%s", m, out)
	}

	t.Log(vioImage("mark", "-f", "raw", base, log, "before"))
	files2, _ := boot(2)
	if maps.Equal(files1, files2) {
		t.Fatal("boot 2 changed no file: the test would prove nothing")
	}
	t.Logf("boot 2: files %v", slices.Sorted(maps.Keys(files2)))

	t.Log(vioImage("list", "-f", "raw", base, log))
	t.Log(vioImage("revert", "-f", "raw", base, log, "before"))
	files3, _ := boot(3)
	if !maps.Equal(files1, files3) {
		t.Fatalf("after the revert the guest sees\n%v\nwant the mark's\n%v", files3, files1)
	}
	t.Log(vioImage("list", "-f", "raw", base, log))
}
